"""The tokens modality's data side: tokenizer, the `names` and `text:` sources, validation (Great Expectations),
bad input as one `path:LINE` error, and JSONL shards through the generator (resume, refusal)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from contracts.data import DataSpec
from contracts.errors import ConfigError, DataError
from contracts.modalities import get_modality
from contracts.modalities import tokens as tk
from tests.conftest import REPO, run_cli


# --- tokenizer ---------------------------------------------------------------------------------------------
def test_tokenizer_round_trip_with_byte_fallback_and_control_characters():
    vocab = tk.build_vocab(["abc", "a\tb"])
    tok = tk.tokenizer(vocab)
    assert vocab[:3] == tk.SPECIALS and tok.chars == ("\t", "a", "b", "c") and tok.size == 3 + 4 + 256
    for text in ["abc", "", "zürich ☃ 𝄞", "a\x00b\x07", "a\tb\nc", "\ufeff"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode(tok.encode_batch([text], len(ids) + 2)[0]) == text
    # unseen characters are their UTF-8 bytes: one token per byte
    assert tok.encode("é") == [tok.byte0 + 0xC3, tok.byte0 + 0xA9]
    assert tok.decode([tk.BOS, tok.byte0 + 0xC3, tk.EOS, 5]) == "\ufffd"  # a torn sequence, then nothing after <eos>
    with pytest.raises(ValueError, match="needs 5 tokens"):
        tok.encode_batch(["abc"], 4)


# --- names -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def names_raw():
    from pipelines.text_sources import load_names

    return load_names()


def test_names_counts_classes_and_grouped_split(names_raw):
    from pipelines.text_sources import NAMES_FILES, load_names, names_dir

    raw = names_raw
    lines = [sum(1 for line in (names_dir() / f).read_text().splitlines() if line.strip()) for f in NAMES_FILES]
    per_class = np.bincount(raw.train_labels, minlength=3) + np.bincount(raw.test_labels, minlength=3)
    assert per_class.tolist() == lines and sum(lines) > 90_000
    assert raw.class_names == ["female", "male", "surname"] and raw.modality == "tokens"
    tok = tk.tokenizer(raw.vocab)
    train, test = tok.decode_batch(raw.train_images), tok.decode_batch(raw.test_images)
    assert not set(train) & set(test)                       # grouped by text: nothing in both
    assert all(t == t.lower() and t for t in train[:1000])  # lowercased as makemore does
    assert raw.train_images.shape[1] == max(map(len, train + test)) + 2 == raw.meta["text"]["max_len"] + 2
    # stratified: about 10 % of each class in test
    share = np.bincount(raw.test_labels, minlength=3) / per_class
    assert np.all(np.abs(share - 0.1) < 0.01), share
    from importlib.metadata import version

    from pipelines.sources import source_fingerprint

    assert source_fingerprint("names") == {"source": "names", "package": "names", "version": version("names")}
    again = load_names()
    assert np.array_equal(again.test_images, raw.test_images) and np.array_equal(again.train_labels, raw.train_labels)


def test_grouped_split_keeps_a_text_on_one_side():
    from pipelines.text_sources import grouped_split

    texts = ["a", "b", "c", "d", "a", "b", "e", "f"] * 3
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 3)
    mask = grouped_split(texts, labels, 0.5, 0)
    for t in set(texts):
        sides = {bool(m) for x, m in zip(texts, mask) if x == t}
        assert len(sides) == 1
    assert mask.any() and not mask.all()
    assert np.array_equal(mask, grouped_split(texts, labels, 0.5, 0))


# --- text:<path> -------------------------------------------------------------------------------------------
def _params(source: str, **text) -> dict:
    return {"data": {"source": source, "name": "t", "test_fraction": 0.25, "seed": 0, "text": text},
            "validation": {"min_train_samples": 10, "min_test_samples": 2}}


def _words(n: int = 60) -> list[str]:
    rng = np.random.default_rng(1)
    return ["".join(rng.choice(list("abcdefgh"), size=rng.integers(3, 9))) + str(i) for i in range(n)]


def test_text_lines_labelled_lines_class_folders_and_windows(tmp_path):
    from pipelines.sources import default_name, load_source, source_fingerprint

    words = _words()
    f = tmp_path / "lines.txt"
    f.write_text("\n".join(words[:30]) + "\n\n  \r\n" + "\r\n".join(words[30:]) + "\n", encoding="utf-8")
    raw = load_source(f"text:{f}", tmp_path, data=_params(f"text:{f}")["data"])
    tok = tk.tokenizer(raw.vocab)
    got = tok.decode_batch(raw.train_images) + tok.decode_batch(raw.test_images)
    assert sorted(got) == sorted(words) and len(raw.test_labels) == 15
    assert raw.class_names == ["lines"] and set(raw.train_labels) == {0}
    assert default_name(f"text:{f}") == "text-lines.txt"
    assert source_fingerprint(f"text:{f}")["files"][0]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()

    lab = tmp_path / "lab.txt"
    lab.write_text("".join(f"{'ab'[i % 2]}x\t{w}\n" for i, w in enumerate(words)))
    raw = load_source(f"text:{lab}", tmp_path, data=_params(f"text:{lab}")["data"])
    assert raw.class_names == ["ax", "bx"]
    tok = tk.tokenizer(raw.vocab)
    pairs = set(zip(tok.decode_batch(raw.train_images), raw.train_labels.tolist()))
    assert (words[0], 0) in pairs or (words[0], 0) in set(zip(tok.decode_batch(raw.test_images), raw.test_labels.tolist()))

    root = tmp_path / "classes"
    for name, part in (("poems", words[:30]), ("prose", words[30:])):
        (root / name).mkdir(parents=True)
        (root / name / "a.txt").write_text("\n".join(part))
    raw = load_source(f"text:{root}", tmp_path, data=_params(f"text:{root}")["data"])
    assert raw.class_names == ["poems", "prose"] and np.bincount(raw.train_labels).tolist() == [22, 22]
    assert len(source_fingerprint(f"text:{root}")["files"]) == 2

    run = tmp_path / "running.txt"
    run.write_text("the quick brown fox\njumps over the lazy dog\n" * 5)
    raw = load_source(f"text:{run}", tmp_path, data=_params(f"text:{run}", window=8)["data"])
    tok = tk.tokenizer(raw.vocab)
    windows = tok.decode_batch(raw.train_images) + tok.decode_batch(raw.test_images)
    assert raw.train_images.shape[1] == 10 and max(map(len, windows)) == 8 and "\n" in tok.chars
    assert raw.meta["text"]["kind"] == "windows" and raw.meta["text"]["stride"] == 8
    # a window longer than the text gives one window: the error names the window, not the test fraction
    with pytest.raises(ConfigError, match=r"data.text.window: 10000 characters make 1 distinct window\(s\) of .*"
                                          r"running.txt \(its longest file: 220 characters\); use a smaller window"):
        load_source(f"text:{run}", tmp_path, data=_params(f"text:{run}", window=10000)["data"])


def test_prepare_and_validate_text_lines(tmp_path):
    from pipelines.prepare import prepare, prepared_dir
    from pipelines.validate import validate

    f = tmp_path / "w.txt"
    f.write_text("\n".join(_words()) + "\n")
    params = _params(f"text:{f}")
    out = prepare(params, tmp_path)
    meta = json.loads((prepared_dir(tmp_path, params) / "meta.json").read_text())
    assert meta["modality"] == "tokens" and meta["dtype"] == "int32" and meta["shape"] == [out["shape"][0]]
    assert meta["value_range"] == [0, len(meta["vocab"]) - 1] and meta["vocab"][:3] == ["<pad>", "<bos>", "<eos>"]
    assert meta["text"]["max_len"] + 2 == meta["shape"][0] and len(meta["data_sha256"]) == 64
    first = (prepared_dir(tmp_path, params) / "train.npz").read_bytes()
    prepare(params, tmp_path)
    assert (prepared_dir(tmp_path, params) / "train.npz").read_bytes() == first  # deterministic bytes
    report = validate(params, tmp_path)
    checks = json.loads(Path(report["report"]).read_text())["checks"]
    columns = {c.get("column") for c in checks}
    assert {"well_formed", "valid_utf8", "bad_control", "length", "hash", "covered"} <= columns
    assert any(c["name"] == "expect_column_quantile_values_to_be_between" and c["split"] == "test" for c in checks)


def test_validation_fails_on_duplicates_coverage_and_control_characters(tmp_path):
    """Prepared data written another way (not through the source's checks): the expectations catch it."""
    from pipelines.dataset import SPLITS, data_sha256, sha256_file, write_npz_deterministic
    from pipelines.errors import ValidationFailed
    from pipelines.validate import validate

    train_texts = ["abc"] * 40 + [f"ab{i}" for i in range(40)]
    test_texts = ["xyz\x01", "cab", "bca", "éa", "cc", "ba"] * 3
    vocab = tk.build_vocab(train_texts)
    tok = tk.tokenizer(vocab)
    folder = tmp_path / "data" / "prepared" / "bad"
    folder.mkdir(parents=True)
    hashes = {}
    for split, texts in zip(SPLITS, (train_texts, test_texts)):
        write_npz_deterministic(folder / f"{split}.npz", {"tokens": tok.encode_batch(texts, 8),
                                                          "labels": np.zeros(len(texts), np.int64)})
        hashes[f"{split}.npz"] = sha256_file(folder / f"{split}.npz")
    meta = {"name": "bad", **DataSpec(modality="tokens", shape=(8,), dtype="int32", value_range=(0, len(vocab) - 1),
                                      num_classes=1, class_names=("t",), vocab=vocab).to_dict(),
            "files": hashes, "data_sha256": data_sha256(hashes), "counts": {}}
    (folder / "meta.json").write_text(json.dumps(meta))
    params = {"data": {"name": "bad"}, "validation": {"min_train_samples": 10, "min_test_samples": 2}}
    with pytest.raises(ValidationFailed) as err:
        validate(params, tmp_path, folder)
    text = str(err.value)
    assert "train expect_column_proportion_of_unique_values_to_be_between(hash)" in text   # 40 x "abc"
    assert "test expect_column_mean_to_be_between(covered)" in text                         # x, y, z, é unseen
    assert "test expect_column_values_to_be_between(bad_control)" in text                  # U+0001
    assert "test expect_column_values_to_be_between(valid_utf8)" not in text


# --- bad input: one line naming file and line, nothing written -----------------------------------------------
BAD = [
    ("binary.txt", b"abc\ndef\x00\x01\x02", "binary.txt:2: NUL byte: a binary file? text sources read UTF-8 text"),
    ("latin1.txt", "ok\nZ\xfcrich\n".encode("latin-1"),
     "latin1.txt:2: not valid UTF-8 (byte 0xfc at column 2); save the file as UTF-8"),
    ("empty-lines.txt", b"\n  \n\r\n\n", "empty-lines.txt:1: lines 1-4 are all empty: no text"),
    ("long.txt", b"short\n" + b"x" * 300 + b"\n",
     "long.txt:2: a line of 300 characters, over 256 (the limit when data.text.max_len is null; set "
     "data.text.max_len, or use data.text.window for running text)"),
    ("bell.txt", b"one\ntwo\x07\n", "bell.txt:2: control character U+0007 at column 4; text may hold tabs and "
                                    "line breaks only"),
    ("zero.txt", b"", "zero.txt: is empty (0 bytes): no text"),
]


@pytest.mark.parametrize("name,body,message", BAD, ids=[b[0] for b in BAD])
def test_bad_text_input_names_file_and_line(tmp_path, name, body, message):
    from pipelines.prepare import prepare

    f = tmp_path / name
    f.write_bytes(body)
    with pytest.raises(DataError) as err:
        prepare(_params(f"text:{f}"), tmp_path)
    assert str(err.value) == f"{tmp_path}/{message}"
    assert not (tmp_path / "data" / "prepared").exists() or not any((tmp_path / "data" / "prepared").iterdir())


def test_max_len_and_settings_errors(tmp_path):
    from pipelines.settings import validate_settings
    from pipelines.text_sources import TextOptions, load_text

    f = tmp_path / "w.txt"
    f.write_text("abc\nabcdefgh\n")
    with pytest.raises(DataError, match=r"w.txt:2: a line of 8 characters, over 5 \(raise data.text.max_len"):
        load_text(f, TextOptions(max_len=5))
    with pytest.raises(ConfigError, match="data.text.windw: unknown setting; did you mean 'window'"):
        validate_settings({"data": {"text": {"windw": 4}}})
    # settings that would be ignored are errors too
    with pytest.raises(ConfigError, match="data.text.stride: 5 needs data.text.window"):
        validate_settings({"data": {"source": "text:x.txt", "text": {"stride": 5}}})
    with pytest.raises(ConfigError, match="data.text.window: applies to text:<path> sources only, and data.source "
                                          "is 'names'; remove it or use a text: source"):
        validate_settings({"data": {"source": "names", "text": {"window": 16}}})
    validate_settings({"data": {"source": "text:x.txt", "text": {"window": 16, "stride": 4}}})
    with pytest.raises(ConfigError, match="validation.tokens.max_duplicate_rate: expected a number in"):
        validate_settings({"validation": {"tokens": {"max_duplicate_rate": 2}}})


@pytest.mark.slow
def test_cli_prints_one_error_line(tmp_path):
    """The CLI's side of a bad text file (about 5 s: a genforge process): one line, exit 1, no prepared folder."""
    f = tmp_path / "bin.txt"
    f.write_bytes(b"a\nb\nc\x00")
    (tmp_path / "params.yaml").write_text((REPO / "params-names.yaml").read_text())
    proc = run_cli(["stage", "prepare", "--set", f"data.source=text:{f}", "--set", "data.name=bin",
                    "--set", "model.families=[vae]"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {f}:3: NUL byte: a binary file? text sources read UTF-8 text"]
    assert not (tmp_path / "data" / "prepared" / "bin").exists()


# --- serving: JSONL shards through the generator -----------------------------------------------------------
VOCAB = tk.build_vocab("abcdefghij")
T = 8


def _ids(n: int, rng: np.random.Generator, labels) -> np.ndarray:
    """What the test model samples: <bos>, 1..6 letters, <eos>, <pad>s (ids as int64)."""
    out = np.zeros((n, T), np.int64)
    for i in range(n):
        k = int(rng.integers(1, T - 1))
        out[i, 0], out[i, k + 1] = tk.BOS, tk.EOS
        out[i, 1:k + 1] = rng.integers(3, 13, size=k) + (0 if labels is None else int(labels[i]))
    return out


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    """A model folder whose sampler draws ids in numpy and passes them through a real ONNX Identity graph."""
    import onnx
    from onnx import TensorProto, helper

    from contracts.samplers import SamplerSpec, register_spec
    from serving.samplers import register

    @register_spec
    @dataclass(frozen=True, kw_only=True)
    class TestTokensSpec(SamplerSpec):
        kind: ClassVar[str] = "test_tokens"
        graph: str
        conditional: bool = True

    @register("test_tokens")
    def sample(spec, sessions, n, rng, labels):
        ids = _ids(n, rng, labels).astype(np.float32)
        return sessions[spec.graph].run(None, {"x": ids})[0].astype(np.int64)

    folder = tmp_path_factory.mktemp("token-model")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", T])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", T])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "table.onnx")
    spec = {"kind": "test_tokens", "graph": "table", "conditional": True, "format": "genforge.sampler/1",
            "modality": "tokens", "sample_shape": [T], "dtype": "int32", "num_classes": 2,
            "class_names": ["low", "high"], "vocab": list(VOCAB),
            "graphs": {"table": {"file": "table.onnx", "sha256": hashlib.sha256((folder / "table.onnx")
                                                                               .read_bytes()).hexdigest()}}}
    (folder / "sampler.json").write_text(json.dumps(spec))
    yield folder
    # the test kind leaves the registries with the module, so suites that list every kind see only real ones
    from contracts.samplers import SPEC_KINDS
    from serving.samplers import SAMPLERS

    SPEC_KINDS.pop("test_tokens", None)
    SAMPLERS.pop("test_tokens", None)


def test_generator_writes_jsonl_shards_preview_and_text_files(token_model, tmp_path):
    from serving.generator import generate, iter_samples

    m = generate(token_model, 10, 3, tmp_path / "g", batch_size=4, png=True, provider="cpu")
    assert [s["file"] for s in m["shards"]] == [f"shards/shard-{k:05d}.jsonl" for k in range(3)]
    assert m["preview"] == "preview.txt" and m["png"] == {"dir": "txt", "count": 10} and m["vocab"] == list(VOCAB)
    records = [json.loads(line) for k in range(3)
               for line in (tmp_path / "g" / "shards" / f"shard-{k:05d}.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(10))
    assert [r["label"] for r in records] == [i % 2 for i in range(10)]
    assert [r["class"] for r in records] == [("low", "high")[i % 2] for i in range(10)]
    # the texts are the sampler's ids decoded; the shards read back as those ids
    expect = np.concatenate([_ids(c, np.random.default_rng([3, k]), np.arange(4 * k, 4 * k + c) % 2)
                             for k, c in enumerate((4, 4, 2))])
    assert [r["text"] for r in records] == tk.tokenizer(VOCAB).decode_batch(expect)
    assert np.array_equal(np.concatenate([x for x, _ in iter_samples(tmp_path / "g")]), expect)
    preview = (tmp_path / "g" / "preview.txt").read_text().splitlines()
    assert preview[:2] == [f"low\t{records[0]['text']}", f"high\t{records[1]['text']}"]
    assert (tmp_path / "g" / "txt" / "0000003.txt").read_text() == records[3]["text"] + "\n"


def test_generator_resumes_token_shards_and_refuses_another_job(token_model, tmp_path):
    from serving.generator import GenerationError, generate

    out = tmp_path / "r"
    generate(token_model, 10, 0, out, batch_size=4, label="high", provider="cpu")
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    (out / "shards" / "shard-00001.jsonl").unlink()                          # lost
    (out / "shards" / "shard-00002.jsonl").write_bytes(b'{"index": 8')       # torn
    (out / "shards" / ".shard-00002.jsonl.tmp-99999").write_bytes(b"junk")   # a killed run's temp file
    m = generate(token_model, 10, 0, out, batch_size=4, label="high", provider="cpu")
    assert m["run"]["generated_shards"] == 2 and m["run"]["reused_shards"] == 1
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before
    for entry in m["shards"]:
        assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    with pytest.raises(GenerationError, match="holds another generation job"):
        generate(token_model, 10, 1, out, batch_size=4, label="high", provider="cpu")


def test_modality_interface_for_both(tmp_path):
    image, tokens = get_modality("image"), get_modality("tokens")
    assert (image.SHARD_SUFFIX, image.PREVIEW_NAME, image.FILES_DIR) == (".npz", "preview.png", "png")
    assert (tokens.SHARD_SUFFIX, tokens.PREVIEW_NAME, tokens.FILES_DIR) == (".jsonl", "preview.txt", "txt")
    x = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2)
    back, labels = image.read_shard(image.shard_bytes(x, np.array([3, -1])))
    assert np.array_equal(back, x) and labels.tolist() == [3, -1]
    spec = DataSpec(modality="tokens", shape=(6,), dtype="int32", value_range=(0, len(VOCAB) - 1), num_classes=0,
                    vocab=VOCAB)
    ids = tk.tokenizer(VOCAB).encode_batch(["abc", "j"], 6)
    body = tokens.shard_bytes(ids, np.array([-1, -1]), spec, start=5)
    assert body.decode().splitlines()[1] == '{"index": 6, "label": null, "class": null, "text": "j"}'
    back, labels = tokens.read_shard(body, spec)
    assert np.array_equal(back, ids) and labels.tolist() == [-1, -1]


@pytest.mark.slow
def test_names_chain_data_stages_with_params_names(tmp_path):
    """`genforge stage source|prepare|validate --params params-names.yaml` on the full names data (about 30 s)."""
    families = ["--set", "model.families=[vae]"]  # the text families live in genmodels once merged
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())  # the project root: outputs land here
    (tmp_path / "params-names.yaml").write_text((REPO / "params-names.yaml").read_text())
    for stage in ("source", "prepare", "validate"):
        run_cli(["stage", stage, "--params", "params-names.yaml", *families], tmp_path, check=True)
    meta = json.loads((tmp_path / "data" / "prepared" / "names" / "meta.json").read_text())
    assert meta["counts"] == {"train": 84854, "test": 9439} and meta["shape"] == [15] and len(meta["vocab"]) == 285
    report = json.loads((tmp_path / "reports" / "names" / "validation.json").read_text())
    assert report["success"] and report["data_sha256"] == meta["data_sha256"] and report["leaked_images"] == 0
