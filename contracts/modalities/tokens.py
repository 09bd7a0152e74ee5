"""The tokens modality: character-level text stored as int32 N x T token ids, the same ids inside models.

Layout of one stored sample (``T = max_len + 2``): ``<bos>``, the text's tokens, ``<eos>``, then ``<pad>``
up to T. Token ids: 0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>``, then one id per character seen when the
vocabulary was built (sorted by code point), then the 256 byte tokens ``<0x00>`` .. ``<0xFF>``: a character
outside the vocabulary is encoded as the tokens of its UTF-8 bytes (the byte fallback of SentencePiece,
Kudo & Richardson 2018), so any string can be encoded and scored and decoding inverts encoding exactly.

- stored -> model: int64 ids, same shape (``to_model``); model -> stored: int32 (``from_model``)
- the vocabulary is ``DataSpec.vocab`` (``meta.json: vocab``): the token strings in id order; prepare builds it
  from the train split (pipelines/text_sources.py), so test characters train lacks are byte tokens
- validation: one summary row per sample (label, text hash, length, well-formed layout, valid UTF-8, characters
  outside the vocabulary, control characters) and expectations on it with the ``validation.tokens`` thresholds;
  the shared ones (row counts, labels, class shares, leakage by text hash) are the stage's own
- serving: shards are JSONL (``shard_bytes``/``read_shard``: one ``{"index", "label", "class", "text"}`` record a
  line), the preview is ``preview.txt`` (``<class>\t<text>`` lines), ``--png`` writes ``txt/NNNNNNN.txt``

numpy only (never torch): serving decodes with it.
"""
from __future__ import annotations

import hashlib
import json
import unicodedata
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np

SAMPLE_KEY = "tokens"        # the array name in train.npz / test.npz
FILE_SUFFIX = ".txt"         # one file per sample (`genforge generate --png` writes txt/NNNNNNN.txt for tokens)

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


def build_vocab(texts: Iterable[str]) -> tuple[str, ...]:
    """The vocabulary of `texts`: the specials, every character they use (by code point), the byte tokens."""
    chars = sorted({c for text in texts for c in text})
    return SPECIALS + tuple(chars) + BYTE_TOKENS


class Tokenizer:
    """Character-level tokenizer over a vocabulary built by ``build_vocab`` (ids as in the module docstring).

    ``encode(text)`` -> list of ids without specials; ``decode(ids)`` -> str (stops at ``<eos>``, skips
    ``<bos>``/``<pad>``, joins runs of byte tokens as UTF-8 with U+FFFD for invalid sequences).
    """

    def __init__(self, vocab: Sequence[str]):
        self.vocab = tuple(vocab)
        if self.vocab[:3] != SPECIALS or self.vocab[-256:] != BYTE_TOKENS:
            raise ValueError("a tokens vocabulary starts with <pad> <bos> <eos> and ends with the 256 byte tokens")
        self.index = {tok: i for i, tok in enumerate(self.vocab[3:-256], start=3)}
        self.byte0 = len(self.vocab) - 256

    @property
    def size(self) -> int:
        return len(self.vocab)

    @property
    def chars(self) -> tuple[str, ...]:
        return self.vocab[3:-256]

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for c in text:
            i = self.index.get(c)
            if i is None:
                out.extend(self.byte0 + b for b in c.encode("utf-8"))
            else:
                out.append(i)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        parts: list[str] = []
        pending = bytearray()
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            if i >= self.byte0:
                pending.append(i - self.byte0)
                continue
            if pending:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            parts.append(self.vocab[i])
        if pending:
            parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)

    def encode_batch(self, texts: Sequence[str], length: int) -> np.ndarray:
        """int32 N x `length`: ``<bos>`` ids ``<eos>`` ``<pad>``...; ValueError naming the first text too long."""
        out = np.full((len(texts), length), PAD, dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [BOS, *self.encode(text), EOS]
            if len(ids) > length:
                raise ValueError(f"text {row} ({text[:40]!r}) needs {len(ids)} tokens, more than {length}")
            out[row, :len(ids)] = ids
        return out

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids)]


def tokenizer(vocab: Sequence[str]) -> Tokenizer:
    """A cached ``Tokenizer`` for a vocabulary (``DataSpec.vocab``, or the list in ``meta.json``)."""
    return _cached_tokenizer(tuple(vocab))


@lru_cache(maxsize=8)
def _cached_tokenizer(vocab: tuple[str, ...]) -> Tokenizer:
    return Tokenizer(vocab)


def to_model(stored: np.ndarray) -> np.ndarray:
    """int32 N x T ids -> int64 N x T (the dtype embedding layers take)."""
    return stored.astype(np.int64)


def from_model(x: np.ndarray) -> np.ndarray:
    """Model output ids N x T -> int32 N x T."""
    return np.asarray(x).astype(np.int32)


def check_stored(samples: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """Why stored samples do not have the layout of the spec (None when they do): N x T."""
    if samples.ndim != 2 or tuple(samples.shape[1:]) != tuple(shape):
        return f"expected N x {' x '.join(map(str, shape))} token ids, got {list(samples.shape)}"
    return None


def to_records(samples: np.ndarray, labels: np.ndarray, vocab: Sequence[str],
               class_names: Sequence[str] = ()) -> list[dict]:
    """Samples as JSON-ready records, in order: ``{"label": int | None, "class": str | None, "text": str}``
    (label -1 or no classes: None). What JSONL shards, the pyfunc model and the model card show."""
    tok = tokenizer(tuple(vocab))
    out = []
    for ids, label in zip(np.asarray(samples), np.asarray(labels)):
        label = int(label)
        known = 0 <= label < len(class_names)
        out.append({"label": label if label >= 0 else None, "class": class_names[label] if known else None,
                    "text": tok.decode(ids)})
    return out


# --- validation ------------------------------------------------------------------------------------------
def _well_formed(ids: np.ndarray, size: int) -> np.ndarray:
    """Per row of N x T ids: <bos>, ids of characters or bytes, <eos>, then only <pad>; every id inside the
    vocabulary (bool N)."""
    n, t = ids.shape
    if n == 0 or t < 2:
        return np.zeros(n, dtype=bool)
    is_eos = ids == EOS
    end = is_eos.argmax(axis=1)[:, None]
    pos = np.arange(t)[None, :]
    body_ok = ((ids > EOS) | ~((pos >= 1) & (pos < end))).all(axis=1)
    tail_ok = ((ids == PAD) | ~(pos > end)).all(axis=1)
    in_range = ((ids >= 0) & (ids < size)).all(axis=1)
    return (ids[:, 0] == BOS) & is_eos.any(axis=1) & body_ok & tail_ok & in_range


def _inspect(row: np.ndarray, tok: Tokenizer) -> tuple[str, int, bool]:
    """(text, characters spelled with byte tokens, whether every byte run is valid UTF-8) of one stored row."""
    size, byte0 = tok.size, tok.byte0
    parts: list[str] = []
    pending = bytearray()
    oov, valid = 0, True

    def flush() -> None:
        nonlocal oov, valid
        if pending:
            try:
                text = pending.decode("utf-8")
            except UnicodeDecodeError:
                valid = False
                text = pending.decode("utf-8", errors="replace")
            oov += len(text)
            parts.append(text)
            pending.clear()

    vocab = tok.vocab
    for i in row.tolist():
        if i == EOS:
            break
        if i <= BOS or i >= size:  # <pad>, <bos>, ids outside the vocabulary (well_formed reports them)
            continue
        if i >= byte0:
            pending.append(i - byte0)
            continue
        if pending:
            flush()
        parts.append(vocab[i])
    flush()
    return "".join(parts), oov, valid


def summary_table(samples: np.ndarray, labels: np.ndarray, spec=None) -> dict[str, Any]:
    """Columns of the per-sample summary validation runs its expectations on (one row per sample):

    - ``label``; ``hash``: blake2b-128 of the decoded text's UTF-8 (the label is not part of it, so one text in
      train and test is a leak whatever its classes); ``length``: characters; ``tokens``: ids before padding
    - ``well_formed`` 1/0: ``<bos>``, text ids, ``<eos>``, padding, every id inside the vocabulary
    - ``valid_utf8`` 1/0: every run of byte tokens decodes as UTF-8
    - ``oov``: characters spelled with byte tokens (not in the vocabulary, which prepare builds from the train
      split); ``covered`` 1/0: no such character
    - ``bad_control``: NUL or control characters (Unicode Cc) that are not in the vocabulary

    ``spec``: the ``DataSpec`` (its ``vocab``). Raises ValueError without a tokens vocabulary.
    """
    if spec is None or not getattr(spec, "vocab", None):
        raise ValueError("the tokens summary table needs the data's DataSpec with its vocabulary")
    tok = tokenizer(tuple(spec.vocab))
    known = set(tok.chars)
    samples = np.asarray(samples)
    cols: dict[str, Any] = {k: [] for k in ("hash", "length", "valid_utf8", "oov", "covered", "bad_control")}
    if samples.ndim != 2:
        raise ValueError(f"expected N x T token ids, got shape {list(samples.shape)}")
    for row in samples:
        text, oov, valid = _inspect(row, tok)
        cols["hash"].append(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest())
        cols["length"].append(len(text))
        cols["valid_utf8"].append(int(valid))
        cols["oov"].append(oov)
        cols["covered"].append(int(oov == 0))
        cols["bad_control"].append(0 if text.isprintable() else
                                   sum(1 for c in text if c == "\x00" or (c not in known and _is_control(c))))
    cols["tokens"] = (samples != PAD).sum(axis=1)
    cols["well_formed"] = _well_formed(samples, tok.size)
    out: dict[str, Any] = {"label": np.asarray(labels).astype(np.int64)}
    for k in ("hash", "length", "tokens", "well_formed", "valid_utf8", "oov", "covered", "bad_control"):
        out[k] = cols[k] if k == "hash" else np.asarray(cols[k], dtype=np.int64)
    return out


def _is_control(c: str) -> bool:
    return unicodedata.category(c) == "Cc"


# `validation.tokens` defaults (pipelines/validate.py DEFAULTS; the settings schema declares the same): lengths in
# characters (max null: what the stored layout holds), shares in [0, 1], min_class_share replaces the image one
VALIDATION_DEFAULTS = {"min_length": 1, "max_length": None, "max_duplicate_rate": 0.05, "min_vocab_coverage": 0.99,
                       "max_length_shift": 0.25, "min_class_share": 0.01}


def validation_thresholds(thresholds: dict[str, Any]) -> dict[str, Any]:
    """The thresholds validation applies to tokens data: the top level with ``validation.tokens`` over it
    (its ``min_class_share`` replaces the image default)."""
    flat = {k: v for k, v in thresholds.items() if not isinstance(v, dict)}
    return {**flat, **(thresholds.get("tokens") or {})}


def expectations(thresholds: dict[str, Any], reference: dict[str, Any] | None = None
                 ) -> list[tuple[str, dict[str, Any]]]:
    """The tokens expectations, as (Great Expectations class name, kwargs) on the summary table of one split.

    ``thresholds`` (``validation`` with ``validation.tokens`` laid over it, every key present: the stage merges
    VALIDATION_DEFAULTS): ``min_length``/``max_length``
    (characters; max null: what the layout holds), ``max_duplicate_rate`` (share of rows whose text repeats an
    earlier row of the split), ``min_vocab_coverage`` (share of rows whose every character is in the
    vocabulary), ``max_length_shift`` (the 5/50/95 % length quantiles within this relative distance of the
    ``reference`` split's, when one is given: the test split against train).
    """
    t = validation_thresholds(thresholds) if isinstance(thresholds.get("tokens"), dict) else thresholds
    out: list[tuple[str, dict[str, Any]]] = [
        ("ExpectColumnValuesToBeBetween", {"column": "well_formed", "min_value": 1, "max_value": 1}),
        ("ExpectColumnValuesToBeBetween", {"column": "valid_utf8", "min_value": 1, "max_value": 1}),
        ("ExpectColumnValuesToBeBetween", {"column": "bad_control", "min_value": 0, "max_value": 0}),
        ("ExpectColumnValuesToBeBetween", {"column": "length", "min_value": int(t["min_length"]),
                                           "max_value": t["max_length"]}),
        ("ExpectColumnProportionOfUniqueValuesToBeBetween",
         {"column": "hash", "min_value": max(0.0, 1.0 - float(t["max_duplicate_rate"])), "max_value": 1.0}),
        ("ExpectColumnMeanToBeBetween", {"column": "covered", "min_value": float(t["min_vocab_coverage"]),
                                         "max_value": 1.0}),
    ]
    lengths = None if reference is None else np.asarray(reference.get("length", []), dtype=np.float64)
    if lengths is not None and lengths.size:
        shift = float(t["max_length_shift"])
        qs = (0.05, 0.5, 0.95)
        ranges = [[float(np.floor(q * (1 - shift))) - 1, float(np.ceil(q * (1 + shift))) + 1]
                  for q in np.quantile(lengths, qs)]
        out.append(("ExpectColumnQuantileValuesToBeBetween",
                    {"column": "length", "quantile_ranges": {"quantiles": list(qs), "value_ranges": ranges}}))
    return out


# --- serving: shards, previews, files ------------------------------------------------------------------------
SHARD_SUFFIX = ".jsonl"      # serving's shards: one JSON record per line
PREVIEW_NAME = "preview.txt"
FILES_DIR = "txt"            # `genforge generate --png`: txt/NNNNNNN.txt


def _spec_vocab(spec) -> tuple[str, ...]:
    vocab = getattr(spec, "vocab", None)
    if not vocab:
        raise ValueError("tokens shards, previews and files need the data's DataSpec with its vocabulary")
    return tuple(vocab)


def shard_bytes(samples: np.ndarray, labels: np.ndarray, spec=None, start: int = 0) -> bytes:
    """A JSONL shard: per sample ``{"index": start + i, "label": int | null, "class": str | null, "text": str}``
    (``to_records`` plus the job's sample index), UTF-8, one line each, ``\\n``-terminated; deterministic bytes."""
    records = to_records(samples, labels, _spec_vocab(spec), tuple(getattr(spec, "class_names", ()) or ()))
    lines = [json.dumps({"index": int(start) + i, **r}, ensure_ascii=False) for i, r in enumerate(records)]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def read_shard(data: bytes, spec=None) -> tuple[np.ndarray, np.ndarray]:
    """(int32 N x T ids, int64 labels N; -1 for null) of a JSONL shard: each text encoded again with the
    vocabulary into the stored layout (cut at T, the ``<eos>`` dropped when it does not fit, as a sample that
    reached the maximum length is stored). The ids equal the generated ones whenever the text decoded without
    loss (no invalid UTF-8 from byte tokens). Raises ValueError for a line that is not a record."""
    tok = tokenizer(_spec_vocab(spec))
    length = int(spec.shape[0])
    texts, labels = [], []
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ValueError(f"line {n} is not a record with a text")
        texts.append(rec["text"])
        labels.append(-1 if rec.get("label") is None else int(rec["label"]))
    out = np.full((len(texts), length), PAD, dtype=np.int32)
    for row, text in enumerate(texts):
        ids = [BOS, *tok.encode(text), EOS][:length]
        out[row, :len(ids)] = ids
    return out, np.asarray(labels, dtype=np.int64)


def write_preview(samples: Iterable[np.ndarray], shape: tuple[int, ...] = (), columns: int = 8, pad: int = 2, *,
                  spec=None, labels: Iterable[int] | None = None) -> bytes:
    """UTF-8 text, one sample a line: ``<class>\\t<text>`` (just the text without classes); control characters
    and line breaks inside a text are shown escaped (``\\n``) so one line stays one sample. ``columns``/``pad``
    are the image grid's and ignored."""
    vocab = _spec_vocab(spec)
    names = tuple(getattr(spec, "class_names", ()) or ())
    samples = list(samples)
    labels = list(labels) if labels is not None else [-1] * len(samples)
    lines = []
    for r in to_records(np.asarray(samples).reshape(len(samples), -1), np.asarray(labels, dtype=np.int64),
                        vocab, names):
        text = "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c for c in r["text"])
        lines.append(f"{r['class']}\t{text}" if r["class"] is not None else text)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def write_files(sample: np.ndarray, *, spec=None) -> bytes:
    """One sample as the bytes of its own file: the decoded text, UTF-8, with a final newline."""
    return (tokenizer(_spec_vocab(spec)).decode(sample) + "\n").encode("utf-8")
