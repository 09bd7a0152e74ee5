"""Metrics of the tokens modality (evaluation/text_metrics.py, evaluation/text_classifier.py and the tokens
metrics of evaluation/suite/): each on hand-checkable inputs, the Fréchet floor, the ordering of anomaly
sets under a model that knows the data, the character CNN's determinism and cache, and the checks that
refuse settings the data cannot satisfy. The model is a class-conditional bigram written here (the family
interface for tokens: sample -> ids in the stored layout, nll in nats per predicted token, score = NLL per
text); the data are the first census names of the `names` package, prepared by hand as TEXT.md says."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from contracts.data import DataSpec
from contracts.errors import ConfigError
from contracts.modalities.tokens import BOS, EOS, PAD, build_vocab, tokenizer
from evaluation import text_metrics as tm
from evaluation.suite.base import EvalContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ("female", "male", "surname")


# ---- a prepared names data set and a bigram model, by hand -------------------------------------------
def census(per_class: int = 300) -> tuple[list[str], list[int]]:
    import names

    folder = Path(names.__file__).parent
    texts, labels, seen = [], [], set()
    for label, file in enumerate(("dist.female.first", "dist.male.first", "dist.all.last")):
        lines = (folder / file).read_text().splitlines()
        kept = [w.split()[0].capitalize() for w in lines if w.strip()]
        kept = [w for w in kept if w not in seen][:per_class]
        seen.update(kept)
        texts += kept
        labels += [label] * len(kept)
    return texts, labels


class Data:
    """The PreparedDataset interface over in-memory splits (every 5th text to the test split)."""

    def __init__(self, texts, labels, max_len=16):
        self.vocab = build_vocab(texts)
        self.shape = (max_len + 2,)
        ids = tokenizer(self.vocab).encode_batch(texts, max_len + 2)
        y = np.asarray(labels, dtype=np.int64)
        test = np.arange(len(texts)) % 5 == 4
        self.splits = {"train": (ids[~test], y[~test]), "test": (ids[test], y[test])}
        self.name, self.sha256, self.num_classes = "names", "ab" * 32, len(CLASSES)
        self.spec = DataSpec(modality="tokens", shape=self.shape, dtype="int32", value_range=(0, len(self.vocab) - 1),
                             num_classes=3, class_names=CLASSES, vocab=self.vocab)
        self.meta = {**self.spec.to_dict(), "name": self.name, "data_sha256": self.sha256}

    def load(self, split):
        return self.splits[split]


class Bigram(torch.nn.Module):
    """P(next | previous, class) from add-0.001 counts of the train split; nll/score are label-free (counts of
    every class pooled). ``replay``: sample returns the first test texts instead (a perfect model)."""

    capabilities = frozenset({"nll", "score", "conditional"})

    def __init__(self, data: Data, trained: bool = True, replay: np.ndarray | None = None, nll_scalar=False):
        super().__init__()
        self.config = SimpleNamespace(data=data.spec, num_classes=3)
        self.device, self.replay, self.nll_scalar = torch.device("cpu"), replay, nll_scalar
        v = len(data.vocab)
        counts = torch.full((3, v, v), 1e-3, dtype=torch.float64)
        counts[:, :, BOS] = counts[:, :, PAD] = 0.0  # never predicted
        x, y = data.load("train")
        if trained:
            for row, label in zip(x, y):
                n = int((row != PAD).sum())
                for a, b in zip(row[:n - 1], row[1:n]):
                    counts[label, a, b] += 1
        self.cond = (counts / counts.sum(-1, keepdim=True)).log()
        pooled = counts.sum(0)
        self.logp = (pooled / pooled.sum(-1, keepdim=True)).log()

    def sample(self, n, labels=None, generator=None, **sampling):
        if self.replay is not None:
            return torch.from_numpy(self.replay[:n].astype(np.int64))
        T = self.config.data.shape[0]
        labels = torch.arange(n) % 3 if labels is None else labels
        out = torch.full((n, T), PAD, dtype=torch.long)
        out[:, 0] = BOS
        done = torch.zeros(n, dtype=torch.bool)
        for t in range(1, T):
            probs = self.cond[labels, out[:, t - 1]].exp()
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1) if t < T - 1 else torch.full((n,), EOS)
            out[:, t] = torch.where(done, torch.full_like(nxt, PAD), nxt)
            done |= nxt == EOS
        return out

    def _token_nll(self, ids):
        ids = ids.long()
        mask = ids[:, 1:] != PAD
        lp = torch.where(mask, -self.logp[ids[:, :-1], ids[:, 1:]], 0.0)
        return lp.sum(1), mask.sum(1)

    def score(self, ids):
        return self._token_nll(ids)[0]

    def nll(self, ids):
        total, count = self._token_nll(ids)
        return total.sum() / count.sum() if self.nll_scalar else total / count


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = Data(*census())
    out.clf_dir = tmp_path_factory.mktemp("text-classifier")  # one classifier for the module's contexts
    return out


def make_ctx(tmp_path, model, data, **settings):
    from pipelines.evaluate import _settings

    ev = _settings({"evaluation": {"num_samples": 120, "classifier": {"epochs": 10}, **settings}})
    (tmp_path / "plots").mkdir(exist_ok=True)
    return EvalContext(model, data, ev, torch.device("cpu"), tmp_path / "plots", data.clf_dir,
                       caption="bigram · seed 0")


def run(ctx, names):
    from pipelines.evaluate import run_metrics

    metrics, skipped = run_metrics(ctx, names)
    return {k: v["value"] for k, v in metrics.items()}, skipped


# ---- pure functions, exact ------------------------------------------------------------------------
def test_memorization_on_a_small_list():
    got = tm.memorization(["Anna", "Bob", "Anna", "Zed"], ["Anna", "Carl"], ["Zed", "Carl"])
    assert got == {"copy_rate": 0.5, "novelty": 0.5, "unique_rate": 0.75, "novel_real_rate": 0.25}
    assert tm.memorization(["anna"], ["Anna"])["copy_rate"] == 0.0  # exact, case-sensitive
    with pytest.raises(ValueError):
        tm.memorization([], ["Anna"])


def test_distinct_n_counts_character_ngrams():
    assert tm.distinct_n(["abab"], 1) == 2 / 4 and tm.distinct_n(["abab"], 2) == 2 / 3
    assert tm.distinct_n(["abab"], 3) == 1.0 and tm.distinct_n(["abab", "abab"], 3) == 2 / 4
    assert tm.distinct_n(["a", ""], 2) == 0.0  # no bigram at all
    assert tm.distinct_n(["ab", "cd"], 2) == 1.0


def test_length_kl_is_zero_for_equal_distributions_and_smoothed_otherwise():
    assert tm.length_kl(["ab", "c", "def"], ["xyz", "q", "rs"], 4) == 0.0
    # lengths 1 vs 2, max_len 2: counts [0,1,0] and [0,0,1], +0.5 each -> p = [.5,1.5,.5]/2.5, q = [.5,.5,1.5]/2.5
    p, q = np.array([0.2, 0.6, 0.2]), np.array([0.2, 0.2, 0.6])
    assert tm.length_kl(["a"], ["bb"], 2) == pytest.approx(float((p * np.log(p / q)).sum()), abs=1e-15)
    assert tm.length_kl(["a" * 30], ["b" * 9], 8) == 0.0  # longer than max_len: the last bin


def test_corruptions_keep_lengths_and_drop_unchanged_texts():
    rng = np.random.default_rng(0)
    texts = ["Anna", "Otto", "Bob", "Maria", "X"]
    assert tm.corrupt(texts, "reversed", rng, "ab") == ["annA", "ottO", "boB", "airaM"]
    assert tm.corrupt(["anna", "x"], "reversed", rng, "ab") == []  # palindromes, one character
    for text in texts:
        shuffled = tm.corrupt([text], "shuffled", rng, "ab")
        assert shuffled == [] or (sorted(shuffled[0]) == sorted(text) and shuffled[0] != text)
    random = tm.corrupt(texts, "random", rng, "ab")
    assert [len(r) for r in random] == [len(t) for t in texts if len(t) and any(c not in "ab" for c in t)]
    assert set("".join(random)) <= {"a", "b"}
    with pytest.raises(ValueError, match="unknown corruption 'upper'"):
        tm.corrupt(texts, "upper", rng, "ab")


# ---- the metrics through the evaluation context -----------------------------------------------------
def test_bits_per_char_matches_a_hand_computed_total(tmp_path, data):
    model = Bigram(data)
    values, _ = run(make_ctx(tmp_path, model, data), ["bits_per_char"])
    x, _ = data.load("test")
    total = chars = 0
    for row in x:  # -log2 p of every predicted token, <eos> included, over characters + one <eos>
        text = tokenizer(data.vocab).decode(row)
        ids = [BOS, *tokenizer(data.vocab).encode(text), EOS]
        total += sum(-float(model.logp[a, b]) for a, b in zip(ids, ids[1:]))
        chars += len(text) + 1
    assert values["bits_per_char"] == pytest.approx(total / chars / math.log(2), rel=1e-12)
    assert values["nats_per_char"] == pytest.approx(total / chars, rel=1e-12)
    scalar, _ = run(make_ctx(tmp_path, Bigram(data, nll_scalar=True), data), ["bits_per_char"])
    assert scalar["bits_per_char"] == pytest.approx(values["bits_per_char"], rel=1e-12)
    untrained, _ = run(make_ctx(tmp_path, Bigram(data, trained=False), data), ["bits_per_char"])
    assert untrained["bits_per_char"] > values["bits_per_char"] + 1


def test_frechet_floor_replay_and_noise(tmp_path, data):
    """A model replaying the floor's n test texts sits exactly on the floor (ratio 1); the bigram above it;
    an untrained bigram (uniform characters) far above."""
    test = data.load("test")[0]
    floor_texts = test[np.sort(np.random.default_rng(0).permutation(len(test))[:120])]  # the seeded reference
    replay, _ = run(make_ctx(tmp_path, Bigram(data, replay=floor_texts), data), ["frechet_text"])
    assert replay["frechet_text_real_floor"] > 0 and replay["frechet_text_ratio"] == pytest.approx(1.0, abs=1e-9)
    bigram, _ = run(make_ctx(tmp_path, Bigram(data), data), ["frechet_text", "classifier_accuracy"])
    noise, _ = run(make_ctx(tmp_path, Bigram(data, trained=False), data), ["frechet_text"])
    assert bigram["frechet_text_real_floor"] == replay["frechet_text_real_floor"]  # same features, cached classifier
    assert 1.0 < bigram["frechet_text_ratio"] < noise["frechet_text_ratio"]
    assert bigram["classifier_test_accuracy"] > 0.6
    assert bigram["frechet_text_ratio"] == pytest.approx(bigram["frechet_text"] / bigram["frechet_text_real_floor"])


def test_the_default_set_for_tokens(tmp_path, data):
    from evaluation.suite import default_metrics

    names = default_metrics("tokens")
    assert set(names) == {"classifier_accuracy", "conditional_accuracy", "bits_per_char", "frechet_text", "novelty",
                          "distinct_n", "length_kl", "text_anomaly", "sample_table"}
    ctx = make_ctx(tmp_path, Bigram(data), data)
    values, skipped = run(ctx, names)
    assert skipped == {}
    samples = tm.sample_texts(ctx)
    assert values["copy_rate"] == tm.memorization(samples, tm.split_texts(ctx, "train"))["copy_rate"]
    assert values["novelty"] == 1 - values["copy_rate"] and 0 < values["novelty"] < 1
    assert values["distinct_2"] == tm.distinct_n(samples, 2)
    assert 0 <= values["length_kl_real_floor"] < values["length_kl"] < 3
    assert 1 / 3 < values["conditional_accuracy"] <= 1 and 0.5 < values["conditional_accuracy_real_floor"] <= 1
    # anomaly sets ordered as the bigram sees them: random characters worst, shuffled next, reversed mildest
    assert values["anomaly_random_auroc"] > 0.95
    assert values["anomaly_random_auroc"] > values["anomaly_shuffled_auroc"] > 0.6
    assert values["anomaly_reversed_auroc"] > 0.55 and values["anomaly_auroc"] > 0.7
    table = (tmp_path / "plots" / "samples.md").read_text()
    assert table.startswith("*bigram · seed 0*") and "| female | male | surname |" in table
    assert samples[0] in table and samples[1] in table and samples[2] in table  # classes in turn: one per column
    assert {p.name for p in ctx.pngs} == {"samples.md", "roc.png", "score_histograms.png"}


def test_holdout_classes_are_an_anomaly_set(tmp_path, data):
    ctx = make_ctx(tmp_path, Bigram(data), data, text_anomaly={"kinds": []})
    ctx.holdout = [2]
    values, _ = run(ctx, ["text_anomaly"])
    assert set(values) == {"anomaly_holdout_classes_auroc", "anomaly_holdout_classes_aupr",
                           "anomaly_holdout_classes_tpr_at_threshold", "anomaly_auroc", "anomaly_aupr",
                           "anomaly_tpr_at_threshold", "anomaly_threshold"}


@pytest.mark.parametrize("settings,holdout,message", [
    ({"text_anomaly": {"kinds": ["noise"]}}, [], "evaluation.text_anomaly.kinds: unknown corruption 'noise'; known: "
                                                 "shuffled, random, reversed"),
    ({"text_anomaly": {"kinds": []}}, [], "evaluation.text_anomaly.kinds: is empty and train.holdout_classes is empty"),
    ({"text_anomaly": {"max_texts": 3}}, [], "evaluation.text_anomaly.max_texts: 3 normal test text(s) of names"),
    ({"text_anomaly": {"fpr": 1}}, [], "evaluation.text_anomaly.fpr: expected a number in [0, 1), got 1"),
    ({"bits_per_char": {"max_texts": 0}}, [], "evaluation.bits_per_char.max_texts: expected an integer >= 1 or null"),
    ({"num_samples": 1}, [], "evaluation.num_samples: frechet_text compares covariances"),
    ({}, [5], "train.holdout_classes: class 5 has 0 texts in the test split of names"),
    ({"num_samples": 0}, [], "evaluation.num_samples: novelty needs at least 1 sample: 0 capped at the test split's "
                             "180 texts leaves 0"),
])
def test_settings_the_data_cannot_satisfy_fail_before_anything_runs(tmp_path, data, settings, holdout, message):
    from pipelines.evaluate import plan_metrics

    class Refuse(Bigram):
        def sample(self, *a, **k):
            raise AssertionError("sampled before the checks")

        score = nll = sample

    ctx = make_ctx(tmp_path, Refuse(data), data, **settings)
    ctx.holdout = holdout
    with pytest.raises(ConfigError) as err:
        plan_metrics(ctx, ["bits_per_char", "novelty", "frechet_text", "text_anomaly"])
    assert str(err.value).startswith(message)
    assert "classifier" not in ctx.__dict__


def test_image_metrics_refuse_tokens_data_in_one_line(tmp_path, data):
    from pipelines.evaluate import plan_metrics

    ctx = make_ctx(tmp_path, Bigram(data), data)
    with pytest.raises(ConfigError) as err:
        plan_metrics(ctx, ["fid"])
    assert str(err.value) == ("evaluation.metrics: fid is a metric of image data and names holds tokens: leave fid "
                              "out of evaluation.metrics (null runs the tokens defaults)")


# ---- the character CNN --------------------------------------------------------------------------------
def test_text_classifier_is_deterministic_and_cached(tmp_path, data):
    from evaluation import text_classifier as tc

    (x, y), (tx, ty) = data.load("train"), data.load("test")
    kwargs = dict(test_images=tx, test_labels=ty, seed=3, epochs=2)
    a, info_a = tc.load_or_train_classifier(tmp_path / "a", data.sha256, x, y, 3, **kwargs)
    b, info_b = tc.load_or_train_classifier(tmp_path / "b", data.sha256, x, y, 3, **kwargs)
    assert not info_a["cached"] and not info_b["cached"]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    again, info = tc.load_or_train_classifier(tmp_path / "a", data.sha256, None, None, 3, seed=3, epochs=2)
    assert info["cached"] and info["test_accuracy"] == info_a["test_accuracy"]
    assert np.array_equal(tc.extract(again, tx)[0], tc.extract(a, tx)[0])
    other, info = tc.load_or_train_classifier(tmp_path / "a", data.sha256, x, y, 3, **{**kwargs, "seed": 4})
    assert not info["cached"]  # other settings: retrained
    feats, logits = tc.extract(a, np.array([[BOS, EOS] + [PAD] * 16, [BOS, 250, 251, EOS] + [PAD] * 14]))
    assert feats.shape == (2, 64) and logits.shape == (2, 3) and np.isfinite(feats).all()  # unseen ids: one row
    assert tc.input_problem((18,)) is None and "token id sequences" in tc.input_problem((1, 8, 8), "x")


# ---- strings where images were: the pyfunc model's output ---------------------------------------------
def test_pyfunc_returns_records_for_a_records_modality_and_arrays_otherwise(data, monkeypatch):
    from contracts.modalities import image, tokens
    from serving import pyfunc

    ids = tokenizer(data.vocab).encode_batch(["Maya", "Castillo", "Ünal"], data.shape[0])  # Ü: byte tokens
    out = pyfunc.present(tokens, data.spec, ids, np.array([0, 2, -1]))
    assert list(out.columns) == ["label", "class", "text"] and list(out["text"]) == ["Maya", "Castillo", "Ünal"]
    assert list(out["class"]) == ["female", "surname", None] and out["label"].tolist() == [0, 2, None]
    assert out.to_json(orient="records").startswith('[{"label":0,"class":"female","text":"Maya"}')
    images = np.zeros((2, 1, 8, 8), np.uint8)
    assert pyfunc.present(image, DataSpec.image((1, 8, 8)), images, np.array([-1, -1])) is images
    # the signature says so (tokens registered by its modality module; here by hand)
    monkeypatch.setattr(pyfunc, "get_modality", lambda name: {"tokens": tokens, "image": image}[name])
    raw = {"modality": "tokens", "sample_shape": list(data.shape), "dtype": "int32", "num_classes": 3,
           "class_names": list(CLASSES), "vocab": list(data.vocab)}
    sig = pyfunc.signature(raw).outputs.to_dict()
    assert [c["name"] for c in sig] == ["label", "class", "text"] and sig[2]["type"] == "string"
    assert pyfunc.signature({"image_shape": [1, 8, 8], "num_classes": 0}).outputs.to_dict()[0]["type"] == "tensor"


# ---- the gate: text families through the configurable checks (no text code in pipelines/gate.py) ------
def test_text_versions_are_gated_on_their_own_metrics():
    from pipelines.gate import gate_decision, rejection_text

    registry = {"checks": [{"metric": "bits_per_char", "max": 3.4}, {"metric": "frechet_text_ratio", "max": 10},
                           {"metric": "novelty", "min": 0.3}, {"metric": "copy_rate", "max": 0.7},
                           {"metric": "conditional_accuracy", "min": 0.5, "required": False}],
                "primary_metric": "bits_per_char", "direction": "minimize"}

    def tags(**metrics):
        return {"validated": "true", "parity_max_abs_error": "1e-06",
                **{f"metric.{k}": str(v) for k, v in metrics.items()}}

    good = dict(bits_per_char=2.9, frechet_text_ratio=4.0, novelty=0.6, copy_rate=0.4, conditional_accuracy=0.66)
    assert gate_decision(tags(**good), None, registry)["promoted"]
    bigram = {**good, "bits_per_char": 3.61, "frechet_text_ratio": 38.6}
    decision = gate_decision(tags(**bigram), None, registry)
    assert rejection_text(decision) == "bits_per_char 3.61 > 3.4; frechet_text_ratio 38.6 > 10"
    memorizer = {**good, "novelty": 0.0, "copy_rate": 1.0}
    assert rejection_text(gate_decision(tags(**memorizer), None, registry)) == "novelty 0 < 0.3; copy_rate 1 > 0.7"
    better = gate_decision(tags(**{**good, "bits_per_char": 2.8}), tags(**good), registry)
    worse = gate_decision(tags(**{**good, "bits_per_char": 3.0}), tags(**good), registry)
    assert better["promoted"] and not worse["promoted"]  # the champion comparison on bits/char


def test_sample_table_of_an_unconditional_model_has_one_column():
    from evaluation.suite.sample_table import CELL_CHARS, markdown_table

    recs = [{"label": None, "class": None, "text": t} for t in ["Ann", "", "x" * 60, "a\nb"]]
    lines = markdown_table(recs, []).splitlines()
    assert lines[:2] == ["| sample |", "|---|"]
    assert lines[2:] == ["| Ann |", "| (empty) |", f"| {'x' * (CELL_CHARS - 1)}… |", "| a⏎b |"]
