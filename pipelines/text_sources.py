"""Text sources of the tokens modality: `names` (the embedded default) and `text:<path>` (a user's files).

Both return a `sources.RawDataset` already split and tokenized (`contracts.modalities.tokens`): the vocabulary
is built from the train split only, so a character that only the test split has is stored as its UTF-8 byte
tokens and validation can measure how much of test the train vocabulary covers.

- `names`: the US-census lists shipped in the `names` package (0.3.0: dist.female.first 4,275,
  dist.male.first 1,219, dist.all.last 88,799 names), lowercased as makemore does, three classes in the order
  female, male, surname. Its split is fixed, as mnist5k's is: per class, 10 % of its distinct names by a
  permutation of `default_rng(0)`, grouped by text (below); `data.test_fraction` and `data.seed` do not apply.
- `text:<path>`: a UTF-8 file, or a folder of files (read in path order; hidden files skipped), or a folder of
  one sub-folder per class. One sample per non-empty line, optionally `label<TAB>text` lines
  (`data.text.labelled`), or with `data.text.window` fixed-length windows of each file's running text
  (`data.text.stride` apart; line breaks kept as characters). Split by `data.test_fraction` and `data.seed`.

Splits are grouped by text: every distinct text goes to train or to test as a whole (stratified by the first
class it appears in, classes in label order, texts in code-point order, a seeded permutation per class), so no
sample of test is also in train.

Bad input is a `DataError` naming the file and line, `path:LINE: problem`, raised before prepare writes
anything: a NUL byte (a binary file), invalid UTF-8, a control character, a file with no text, a line longer
than `data.text.max_len`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from contracts.errors import ConfigError, DataError, GenforgeError
from contracts.modalities.tokens import build_vocab, tokenizer

NAMES_FILES = ("dist.female.first", "dist.male.first", "dist.all.last")
NAMES_CLASSES = ("female", "male", "surname")
NAMES_TEST_FRACTION, NAMES_SEED = 0.1, 0
LINE_LIMIT = 256          # the longest line accepted when data.text.max_len is null
# control characters (Unicode Cc) a text may not hold: all but tab and line feed; CR only before LF
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")


@dataclass(frozen=True)
class TextOptions:
    """`data.text.*` plus the split settings (pipelines.settings.sections.TextSettings has the same defaults)."""

    max_len: int | None = None
    window: int | None = None
    stride: int | None = None
    labelled: Any = "auto"
    lowercase: bool | None = None
    test_fraction: float = 0.2
    seed: int = 0

    @classmethod
    def from_params(cls, data: Mapping[str, Any] | None) -> "TextOptions":
        data = data or {}
        text = data.get("text") or {}
        return cls(max_len=text.get("max_len"), window=text.get("window"), stride=text.get("stride"),
                   labelled=text.get("labelled", "auto"), lowercase=text.get("lowercase"),
                   test_fraction=float(data.get("test_fraction", 0.2)), seed=int(data.get("seed", 0)))


@dataclass
class Sample:
    text: str
    label: int
    where: str                # "path:LINE" for errors


# ---- names ----------------------------------------------------------------------------------------------
def names_dir() -> Path:
    try:
        import names
    except ImportError:
        raise GenforgeError("data.source names needs the `names` package (pip install names==0.3.0)") from None
    return Path(names.__file__).parent


def load_names(options: TextOptions | None = None):
    """The `names` source (module docstring): RawDataset of int32 N x (max_len + 2) token ids."""
    options = options or TextOptions()
    lower = True if options.lowercase is None else bool(options.lowercase)
    folder = names_dir()
    samples: list[Sample] = []
    for label, file in enumerate(NAMES_FILES):
        path = folder / file
        for n, line in enumerate(_read_text(path).split("\n"), start=1):
            fields = line.split()
            if fields:
                samples.append(Sample(fields[0].lower() if lower else fields[0], label, f"{path}:{n}"))
    _check_lengths(samples, options.max_len)
    mask = grouped_split([s.text for s in samples], np.array([s.label for s in samples]), NAMES_TEST_FRACTION,
                         NAMES_SEED)
    extra = {"kind": "names", "lowercase": lower, "test_fraction": NAMES_TEST_FRACTION, "seed": NAMES_SEED,
             "files": list(NAMES_FILES)}
    return tokenize("names", samples, mask, list(NAMES_CLASSES), options.max_len, extra)


# ---- text:<path> ----------------------------------------------------------------------------------------
def load_text(path: Path, options: TextOptions | None = None):
    """The `text:<path>` source (module docstring). Raises DataError (file:line) / ConfigError (data.text.*)."""
    options = options or TextOptions()
    if not path.exists():
        raise DataError(path, "does not exist; text:<path> takes a UTF-8 file or a folder of them")
    if options.window is not None and options.labelled is True:
        raise ConfigError("data.text.labelled", "label<TAB>text lines and data.text.window exclude each other")
    if options.window is not None and options.max_len is not None and options.max_len < options.window:
        raise ConfigError("data.text.max_len", f"{options.max_len} is below data.text.window {options.window}")
    files_by_class = _class_files(path)
    folders = len(files_by_class) > 1 or next(iter(files_by_class)) is not None
    if folders and options.labelled is True:
        raise ConfigError("data.text.labelled", f"{path} has one sub-folder per class: the folders are the labels")
    texts = {f: _read_text(f) for files in files_by_class.values() for f in files}
    lower = bool(options.lowercase)
    samples: list[Sample] = []
    if options.window is not None:
        stride = options.stride or options.window
        for label, files in enumerate(files_by_class.values()):
            for f in files:
                samples += _windows(f, texts[f], label, options.window, stride, lower)
        class_names = [c or _stem(path) for c in files_by_class]
    else:
        lines = {f: _lines(f, texts[f]) for f in texts}
        labelled = (not folders and all("\t" in t for f in lines for t, _ in lines[f])
                    if options.labelled == "auto" else bool(options.labelled))
        if labelled:
            samples, class_names = _labelled(lines)
        else:
            class_names = [c or _stem(path) for c in files_by_class]
            for label, files in enumerate(files_by_class.values()):
                samples += [Sample(t.lower() if lower else t, label, f"{f}:{n}") for f in files for t, n in lines[f]]
        _check_lengths(samples, options.max_len)
    mask = grouped_split([s.text for s in samples], np.array([s.label for s in samples]), options.test_fraction,
                         options.seed)
    distinct = len(set(s.text for s in samples))
    if options.window is not None and distinct < 2:  # the split cannot help: the text gives one window
        longest = max((len(t) for t in texts.values()), default=0)
        raise ConfigError("data.text.window", f"{options.window} characters make {distinct} distinct window(s) of "
                                              f"{path} (its longest file: {longest} characters); use a smaller window")
    if not mask.any() or mask.all():
        raise DataError(path, f"the {'test' if not mask.any() else 'train'} split would be empty "
                              f"({len(set(s.text for s in samples))} distinct texts); "
                              f"{'raise' if not mask.any() else 'lower'} data.test_fraction ({options.test_fraction})")
    extra = {"kind": "windows" if options.window else "lines", "lowercase": lower,
             "test_fraction": options.test_fraction, "seed": options.seed, "files": len(texts),
             **({"window": options.window, "stride": options.stride or options.window} if options.window else {})}
    max_len = options.max_len if options.window is None else max(options.window, options.max_len or 0)
    return tokenize(f"text:{path}", samples, mask, class_names, max_len, extra)


def _stem(path: Path) -> str:
    return path.stem if path.is_file() else path.resolve().name or "text"


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _class_files(path: Path) -> dict[str | None, list[Path]]:
    """{class folder name or None: its files}: a file; a folder of files; a folder of class sub-folders."""
    if path.is_file():
        return {None: [path]}
    if not path.is_dir():
        raise DataError(path, "is neither a file nor a folder")
    entries = _visible(path)
    dirs = [p for p in entries if p.is_dir()]
    if not dirs:
        files = [p for p in entries if p.is_file()]
        if not files:
            raise DataError(path, "holds no files")
        return {None: files}
    stray = [p.name for p in entries if not p.is_dir()]
    if stray:
        raise DataError(path / stray[0], "a file beside class sub-folders: put every file in its class folder")
    from pipelines.sources import class_order

    out: dict[str | None, list[Path]] = {}
    for name in class_order([d.name for d in dirs]):
        files = sorted(p for p in (path / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(path / name, "empty class folder: no text files")
        out[name] = files
    return out


def _read_text(path: Path) -> str:
    """A file's text, checked: UTF-8 (a BOM dropped), no NUL, no control characters but tab and line breaks."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from exc
    if not data:
        raise DataError(path, "is empty (0 bytes): no text")

    def line_of(offset: int) -> int:
        return data.count(b"\n", 0, offset) + 1

    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path}:{line_of(nul)}", "NUL byte: a binary file? text sources read UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        col = exc.start - data.rfind(b"\n", 0, exc.start)
        raise DataError(f"{path}:{line_of(exc.start)}",
                        f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}); save the file as UTF-8") \
            from None
    text = text.removeprefix("\ufeff")
    bad = _CONTROL.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - text.rfind("\n", 0, bad.start())
        raise DataError(f"{path}:{line}", f"control character U+{ord(bad.group()[0]):04X} at column {col}; "
                                          f"text may hold tabs and line breaks only")
    return text


def _lines(path: Path, text: str) -> list[tuple[str, int]]:
    """(line, number) of each line with text (a final CR dropped); DataError when there is none."""
    raw = text.split("\n")
    out = [(line.removesuffix("\r"), n) for n, line in enumerate(raw, start=1) if line.strip()]
    if not out:
        count = len(text.splitlines()) or 1  # lines as `wc -l` / an editor count them (no phantom after the last \n)
        raise DataError(f"{path}:1", f"lines 1-{count} are all empty: no text")
    return out


def _labelled(lines: dict[Path, list[tuple[str, int]]]) -> tuple[list[Sample], list[str]]:
    """`label<TAB>text` lines -> samples with class indices (classes in `class_order`)."""
    from pipelines.sources import class_order

    parsed = []
    for f, rows in lines.items():
        for t, n in rows:
            label, tab, body = t.partition("\t")
            if not tab or not label.strip():
                raise DataError(f"{f}:{n}", "no `label<TAB>` in front of the text (data.text.labelled is on)")
            if not body.strip():
                raise DataError(f"{f}:{n}", f"label {label.strip()!r} but no text after the tab")
            parsed.append((label.strip(), body, f"{f}:{n}"))
    names = class_order(sorted({p[0] for p in parsed}))
    index = {c: i for i, c in enumerate(names)}
    return [Sample(body, index[label], where) for label, body, where in parsed], names


def _windows(path: Path, text: str, label: int, window: int, stride: int, lower: bool) -> list[Sample]:
    """Windows of `window` characters, `stride` apart, of a file's running text (CRLF read as LF); the last
    may be shorter; windows of whitespace only are skipped."""
    text = text.replace("\r\n", "\n")
    if lower:
        text = text.lower()
    if not text.strip():
        raise DataError(f"{path}:1", "holds only whitespace: no text")
    return [Sample(text[i:i + window], label, str(path))
            for i in range(0, len(text), stride) if text[i:i + window].strip()]


def _check_lengths(samples: list[Sample], max_len: int | None) -> None:
    """Every text within `max_len` characters (null: LINE_LIMIT); DataError at the first longer one."""
    limit = max_len or LINE_LIMIT
    for s in samples:
        if len(s.text) > limit:
            fix = ("raise data.text.max_len" if max_len else
                   "the limit when data.text.max_len is null; set data.text.max_len")
            raise DataError(s.where, f"a line of {len(s.text)} characters, over {limit} ({fix}, "
                                     f"or use data.text.window for running text)")


# ---- split and tokenize ----------------------------------------------------------------------------------
def grouped_split(texts: list[str], labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask grouped by text (module docstring): per class in label order, the first
    round(n * test_fraction) of a `default_rng(seed)` permutation of the distinct texts whose first class it is."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("data.test_fraction", f"must be in (0, 1), got {test_fraction}")
    first: dict[str, int] = {}
    for t, lb in zip(texts, labels.tolist()):
        first[t] = min(lb, first.get(t, lb))
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for c in sorted(set(first.values())):
        group = sorted(t for t, lb in first.items() if lb == c)
        take = int(round(len(group) * test_fraction))
        test.update(group[i] for i in rng.permutation(len(group))[:take])
    return np.fromiter((t in test for t in texts), dtype=bool, count=len(texts))


def tokenize(source: str, samples: list[Sample], test_mask: np.ndarray, class_names: list[str],
             max_len: int | None, extra: dict[str, Any]):
    """The RawDataset of split samples: vocabulary from the train texts, ids int32 N x T in the stored layout,
    T = max_len + 2 with max_len the longest sample in tokens (at least the given one)."""
    from pipelines.sources import RawDataset

    train = [s for s, m in zip(samples, test_mask) if not m]
    test = [s for s, m in zip(samples, test_mask) if m]
    vocab = build_vocab(s.text for s in train)
    tok = tokenizer(vocab)
    longest = max(len(tok.encode(s.text)) for s in samples)
    length = max(longest, max_len or 0) + 2

    def arrays(part: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
        return tok.encode_batch([s.text for s in part], length), np.array([s.label for s in part], dtype=np.int64)

    return RawDataset(source, *arrays(train), *arrays(test), list(class_names), modality="tokens", vocab=vocab,
                      meta={"text": {**extra, "max_len": length - 2}})
