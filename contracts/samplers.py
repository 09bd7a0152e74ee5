"""Typed sampler specs: how serving runs a model's ONNX graphs (the content of ``sampler.json``).

stdlib + numpy only. A family's ``sampler()`` returns one of these; export writes ``spec.to_json()``
plus the keys it owns (``EXPORT_KEYS``: format, family, the data it produces (modality, sample_shape, image_shape,
num_classes, class_names, dtype), graphs, parity);
serving reads the file back with ``SamplerSpec.from_json(dict)``, which ignores those keys and
validates the rest. Every problem is a ``SamplerSpecError`` (a ``ServingError``, and a ValueError
for callers written before the error hierarchy). The JSON keys are exactly those of the untyped
dicts written before (format ``genforge.sampler/1``), so every exported model and registry version
still loads; the ``format`` key export writes is the version, no other version key is added.

Kinds: ``direct``, ``ddim`` (DDIM and DPM-Solver++, its option ``sampler``), ``autoregressive``,
``flow``, ``token_autoregressive``. A new kind is one more ``@register_spec`` dataclass here plus its loop
in ``serving/``.

Sampling options. Each kind names its generate-time options in ``SAMPLING`` (option name -> JSON
key), e.g. ddim ``{"steps": "sample_steps", "eta": "eta", "clip": "clip", "sampler": "sampler", ...}``: the values in the file
are the model's defaults; ``spec.with_sampling(steps=20)`` gives the spec a run uses, validated the
same way. An option a kind does not take is an error naming the options it does take.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from contracts.errors import ServingError

EXPORT_KEYS = ("format", "family", "image_shape", "num_classes", "graphs", "parity", "modality", "sample_shape",
               "class_names", "dtype", "vocab")
RESERVED_KINDS = ("dpmpp",)  # named by the model contract, no spec class yet
SPEC_KINDS: dict[str, type["SamplerSpec"]] = {}


class SamplerSpecError(ServingError, ValueError):
    """sampler.json (or a family's sampler()) does not describe a runnable sampler: unknown kind,
    missing or unknown keys, a value of the wrong type or range, a graph the model does not hold."""


def register_spec(cls: type["SamplerSpec"]) -> type["SamplerSpec"]:
    """Class decorator: make ``cls`` the spec of ``cls.kind`` for ``SamplerSpec.from_json``."""
    SPEC_KINDS[cls.kind] = cls
    return cls


# --- value checks (each raises SamplerSpecError naming the kind and the key) -----------------
def _fail(kind: str, msg: str):
    raise SamplerSpecError(f"{kind} sampler: {msg}" if kind else msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _name(kind: str, key: str, v: Any, optional: bool = False) -> None:
    if not ((optional and v is None) or (isinstance(v, str) and v)):
        _fail(kind, f"{key} must be a non-empty string{' or null' if optional else ''}, got {v!r}")


def _flag(kind: str, key: str, v: Any) -> None:
    if not isinstance(v, bool):
        _fail(kind, f"{key} must be true or false, got {v!r}")


def _choice(kind: str, key: str, v: Any, known: tuple[str, ...]) -> None:
    if v not in known:
        _fail(kind, f"{key} {v!r} is not implemented (known: {', '.join(known)})")


def _shape(kind: str, key: str, v: Any, ndim: int | None = None) -> tuple[int, ...]:
    if not (isinstance(v, (list, tuple)) and all(_is_int(s) and s > 0 for s in v)
            and (ndim is None or len(v) == ndim)):
        what = "[C, H, W]" if ndim == 3 else "a list"
        _fail(kind, f"{key} must be {what} of positive ints, got {v!r}")
    return tuple(v)


def _pos_int(kind: str, key: str, v: Any) -> None:
    if not (_is_int(v) and v > 0):
        _fail(kind, f"{key} must be a positive int, got {v!r}")


def _keys(kind: str, where: str, data: Any, fields: tuple[str, ...], required: set[str]) -> dict[str, Any]:
    """The JSON object ``data`` checked to hold the required and only known keys."""
    if not isinstance(data, Mapping):
        _fail(kind, f"{where} must be a JSON object, got {data!r}")
    missing, unknown = sorted(required - set(data)), sorted(set(data) - set(fields))
    if missing:
        _fail(kind, f"{where} is missing {', '.join(map(repr, missing))}")
    if unknown:
        _fail(kind, f"{where} has unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(fields)})")
    return dict(data)


class _Part:
    """JSON for frozen dataclasses: fields in order, ``None`` optional fields omitted unless in ``_NULLS``."""

    _NULLS: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.name not in self._NULLS or self._omit(f.name, v):
                continue
            out[f.name] = v.to_json() if isinstance(v, _Part) else list(v) if isinstance(v, tuple) else v
        return out

    def _omit(self, name: str, value: Any) -> bool:
        return False

    @classmethod
    def from_json(cls, where: str, data: Any) -> Any:
        """The part from its JSON object (``where`` names it in errors)."""
        fields, req = cls._fields()
        return cls(**_keys("", where, data, fields, req))

    @classmethod
    def _fields(cls) -> tuple[tuple[str, ...], set[str]]:
        fs = dataclasses.fields(cls)
        req = {f.name for f in fs if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        return tuple(f.name for f in fs), req


@dataclass(frozen=True, kw_only=True)
class Noise(_Part):
    """Noise input of a graph: float32 N x ``shape`` drawn from ``distribution`` (normal | uniform in [low, high))."""

    name: str
    shape: tuple[int, ...]
    distribution: str = "normal"
    low: float | None = None    # uniform only; omitted = 0
    high: float | None = None   # uniform only; omitted = 1

    def __post_init__(self) -> None:
        _name("", "noise.name", self.name)
        _choice("", "noise distribution", self.distribution, ("normal", "uniform"))
        object.__setattr__(self, "shape", _shape("", "noise.shape", self.shape))
        for key in ("low", "high"):
            v = getattr(self, key)
            if v is not None:
                if not (_is_number(v) and self.distribution == "uniform"):
                    _fail("", f"noise.{key} must be a number, and only with distribution 'uniform', got {v!r}")
                object.__setattr__(self, key, float(v))

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """float32 noise of shape (n, *shape): ``standard_normal(dtype=float32)`` or ``random(dtype=float32)``
        scaled to [low, high), straight from ``rng`` (same generator state, same noise on every machine)."""
        shape = (n, *self.shape)
        if self.distribution == "normal":
            return rng.standard_normal(shape, dtype=np.float32)
        x = rng.random(shape, dtype=np.float32)
        low = 0.0 if self.low is None else self.low
        high = 1.0 if self.high is None else self.high
        if (low, high) != (0.0, 1.0):
            x *= np.float32(high - low)
            x += np.float32(low)
        return x


@dataclass(frozen=True, kw_only=True)
class SamplerSpec(_Part):
    """Base of every spec: the JSON object of one sampler kind (see the module docstring)."""

    kind: ClassVar[str] = ""
    SAMPLING: ClassVar[dict[str, str]] = {}   # generate-time option name -> field (JSON key)
    _PARTS: ClassVar[dict[str, type]] = {"noise": Noise}  # nested JSON objects and their classes

    # subclasses declare their fields (graph, conditional, ...) in the order of their JSON keys

    def __post_init__(self) -> None:
        _name(self.kind, "graph", self.graph)
        _flag(self.kind, "conditional", self.conditional)
        self._validate()

    def _validate(self) -> None:
        """Kind-specific checks; raise SamplerSpecError via _fail."""

    def _set(self, name: str, value: Any) -> None:  # normalise a field of the frozen dataclass
        object.__setattr__(self, name, value)

    # --- JSON --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The sampler.json object (without the keys export adds), keys in the historic order."""
        return {"kind": self.kind, **super().to_json()}

    @staticmethod
    def from_json(data: Any) -> "SamplerSpec":
        """The typed spec of a sampler.json object; ``EXPORT_KEYS`` are ignored. Raises SamplerSpecError."""
        if not isinstance(data, Mapping) or not isinstance(data.get("kind"), str):
            raise SamplerSpecError("sampler spec has no 'kind'")
        kind = data["kind"]
        cls = SPEC_KINDS.get(kind)
        if cls is None:
            hint = " (reserved by the model contract, not implemented yet)" if kind in RESERVED_KINDS else ""
            raise SamplerSpecError(f"unknown sampler kind {kind!r}{hint}; known: {', '.join(sorted(SPEC_KINDS))}")
        fields, req = cls._fields()
        body = {k: v for k, v in data.items() if k != "kind" and k not in EXPORT_KEYS}
        body = _keys(kind, "spec", body, fields, req)
        try:
            for key, part in cls._PARTS.items():
                if body.get(key) is not None:
                    body[key] = part.from_json(key, body[key])
        except SamplerSpecError as e:
            raise SamplerSpecError(f"{kind} sampler: {e}") from None
        return cls(**body)

    # --- graphs and sampling options ---------------------------------------------------------
    def graphs_used(self) -> tuple[str, ...]:
        """Names of the graphs the loop runs."""
        return (self.graph,)

    def check_graphs(self, names: Iterable[str]) -> None:
        """Raise SamplerSpecError unless every graph the sampler runs is among ``names``."""
        names = set(names)
        for g in self.graphs_used():
            if g not in names:
                raise SamplerSpecError(f"{self.kind} sampler names graph {g!r}, the model has {sorted(names)}")

    def sampling_defaults(self) -> dict[str, Any]:
        """{option: value} the spec samples with, e.g. {"steps": 50, "eta": 0.0, "clip": True}."""
        return {opt: getattr(self, key) for opt, key in self.SAMPLING.items()}

    def with_sampling(self, **options: Any) -> "SamplerSpec":
        """This spec with some sampling options changed (None values are skipped); validated."""
        options = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(options) - set(self.SAMPLING))
        if unknown:
            takes = ", ".join(self.SAMPLING) or "none"
            raise SamplerSpecError(f"the {self.kind} sampler takes no option {', '.join(map(repr, unknown))} "
                                   f"(its options: {takes})")
        if not options:
            return self
        return dataclasses.replace(self, **{self.SAMPLING[k]: v for k, v in options.items()})


def as_spec(spec: "SamplerSpec | Mapping[str, Any]") -> SamplerSpec:
    """A typed spec from a typed spec or a sampler.json dict (validated)."""
    return spec if isinstance(spec, SamplerSpec) else SamplerSpec.from_json(spec)


# --- the kinds -------------------------------------------------------------------------------
@register_spec
@dataclass(frozen=True, kw_only=True)
class DirectSpec(SamplerSpec):
    """noise -> image in one graph call (VAE decoder, GAN generator); conditional graphs also take
    int64 labels (N) as ``labels_input``; ``output`` None = the graph's first output."""

    kind: ClassVar[str] = "direct"
    graph: str
    noise: Noise
    conditional: bool = False
    labels_input: str = "labels"
    output: str | None = None

    def _validate(self) -> None:
        if not isinstance(self.noise, Noise):
            _fail(self.kind, f"noise must be {{name, shape, distribution}}, got {self.noise!r}")
        _name(self.kind, "labels_input", self.labels_input)
        _name(self.kind, "output", self.output, optional=True)

    def _omit(self, name: str, value: Any) -> bool:
        return name == "labels_input" and not self.conditional and value == "labels"


@register_spec
@dataclass(frozen=True, kw_only=True)
class DDIMSpec(SamplerSpec):
    """DDIM or DPM-Solver++ over an epsilon-predicting denoiser graph (x float32 N x C x H x W, t int64 N
    [, labels int64 N when conditional]) -> eps.

    ``alphas_cumprod`` is the training schedule (T floats in (0, 1), non-increasing); ``sample_steps``
    (option ``steps``, 1..T), ``eta`` (>= 0, ddim only), ``clip`` (predicted x0 to [-1, 1]), ``sampler``
    (``contracts.diffusion.SAMPLERS``; a file without the key reads as "ddim") and, for conditional
    denoisers, ``guidance_scale`` (option ``guidance_scale``, >= 0; 0 unconditional, 1 conditional,
    ``contracts.diffusion.guided_eps``) and ``guidance_min_t`` (int in [0, T-1]: guided only at steps with
    t >= it, ``contracts.diffusion.guided_at``; absent or 0: every step; w = 0 and 1 ignore it) are
    sampling defaults. A conditional denoiser takes
    ``labels_input``; ``null_label`` (the class count) is the "no label" class it was trained with.
    """

    kind: ClassVar[str] = "ddim"
    SAMPLING: ClassVar[dict[str, str]] = {"steps": "sample_steps", "eta": "eta", "clip": "clip", "sampler": "sampler",
                                          "guidance_scale": "guidance_scale", "guidance_min_t": "guidance_min_t"}
    graph: str
    noise: Noise
    timestep_input: str = "t"
    output: str | None = None
    conditional: bool = False
    prediction: str = "epsilon"
    timesteps: int | None = None            # None: len(alphas_cumprod)
    sample_steps: int
    timestep_spacing: str = "trailing"
    eta: float = 0.0
    clip: bool = True
    schedule: str | None = None             # the beta schedule's name, for the record
    alphas_cumprod: tuple[float, ...]
    sampler: str = "ddim"                   # the update rule: "ddim" | "dpmpp_2m"
    labels_input: str | None = None         # conditional: the graph's int64 label input ("labels")
    null_label: int | None = None           # conditional: the unconditional class (= num_classes)
    guidance_scale: float | None = None     # conditional: classifier-free guidance w
    guidance_min_t: int | None = None       # conditional: guided only at t >= this (None: every step)

    def _validate(self) -> None:
        from contracts.diffusion import SAMPLERS

        k = self.kind
        if not isinstance(self.noise, Noise) or self.noise.distribution != "normal" or len(self.noise.shape) != 3:
            _fail(k, f"noise must be normal with shape [C, H, W], got {self.noise!r}")
        _name(k, "timestep_input", self.timestep_input)
        _name(k, "output", self.output, optional=True)
        _name(k, "schedule", self.schedule, optional=True)
        self._validate_labels()
        _choice(k, "prediction", self.prediction, ("epsilon",))
        _choice(k, "timestep_spacing", self.timestep_spacing, ("trailing",))
        acp = self.alphas_cumprod
        if not isinstance(acp, (list, tuple)) or not acp or not all(_is_number(a) and 0.0 < a < 1.0 for a in acp):
            _fail(k, "alphas_cumprod must be a non-empty list of floats in (0, 1)")
        if any(b > a for a, b in zip(acp, acp[1:])):
            _fail(k, "alphas_cumprod must be non-increasing")
        self._set("alphas_cumprod", tuple(float(a) for a in acp))
        if self.timesteps is None:
            self._set("timesteps", len(acp))
        if self.timesteps != len(acp):
            _fail(k, f"timesteps={self.timesteps!r} but alphas_cumprod has {len(acp)} entries")
        if not (_is_int(self.sample_steps) and 1 <= self.sample_steps <= len(acp)):
            _fail(k, f"sample_steps (option steps) must be an int in [1, {len(acp)}], got {self.sample_steps!r}")
        if not (_is_number(self.eta) and self.eta >= 0):
            _fail(k, f"eta must be a number >= 0, got {self.eta!r}")
        self._set("eta", float(self.eta))
        _flag(k, "clip", self.clip)
        _choice(k, "sampler", self.sampler, SAMPLERS)
        if self.sampler != "ddim" and self.eta != 0.0:
            _fail(k, f"eta={self.eta:g} applies to sampler 'ddim' only ({self.sampler} is deterministic): "
                     f"choose sampler ddim (--sampler ddim) or eta 0")
        if self.guidance_min_t is not None and not (_is_int(self.guidance_min_t)
                                                    and 0 <= self.guidance_min_t < len(acp)):
            _fail(k, f"guidance_min_t must be an int in [0, {len(acp) - 1}] (guided at timesteps t >= it; "
                     f"0: every step), got {self.guidance_min_t!r}")

    def _validate_labels(self) -> None:
        k = self.kind
        if not self.conditional:
            for name in ("guidance_scale", "guidance_min_t"):
                if getattr(self, name) is not None:
                    _fail(k, f"{name} applies to conditional models only (this one is unconditional)")
            if self.labels_input is not None or self.null_label is not None:
                _fail(k, "labels_input and null_label need conditional: true")
            return
        _name(k, "labels_input", self.labels_input)
        if not (_is_int(self.null_label) and self.null_label > 0):
            _fail(k, f"null_label must be a positive int (the class count), got {self.null_label!r}")
        if not (_is_number(self.guidance_scale) and self.guidance_scale >= 0):
            _fail(k, f"guidance_scale must be a number >= 0 (0 unconditional, 1 conditional), "
                     f"got {self.guidance_scale!r}")
        self._set("guidance_scale", float(self.guidance_scale))

    def _omit(self, name: str, value: Any) -> bool:
        return name == "sampler" and value == "ddim"  # files before samplers existed: the same bytes

    def sampling_defaults(self) -> dict[str, Any]:
        out = super().sampling_defaults()
        if not self.conditional:
            del out["guidance_scale"]
        if out["guidance_min_t"] is None:
            del out["guidance_min_t"]
        return out


@dataclass(frozen=True, kw_only=True)
class Uniforms(_Part):
    """One float32 uniform per pixel and channel, ``shape`` [C, H, W], consumed in raster order."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    order: str = "raster"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _shape("", "uniforms.shape", self.shape, 3))
        _choice("", "uniforms.dtype", self.dtype, ("float32",))
        _choice("", "uniforms.order", self.order, ("raster",))


@dataclass(frozen=True, kw_only=True)
class PixelCache(_Part):
    """The cached loop's step graphs: ``row_graph`` once per row, ``pixel_graph`` once per pixel."""

    row_graph: str
    pixel_graph: str
    row_window: int
    left_window: int
    layers: int
    channels: int
    history: int

    def __post_init__(self) -> None:
        for key in ("row_graph", "pixel_graph"):
            _name("", f"cache.{key}", getattr(self, key))
        for key in ("row_window", "left_window", "layers", "channels", "history"):
            _pos_int("", f"cache.{key}", getattr(self, key))
        if self.row_window != self.left_window + 1 or self.layers < 2:
            _fail("", "cache needs row_window = left_window + 1, layers >= 2")


@register_spec
@dataclass(frozen=True, kw_only=True)
class AutoregressiveSpec(SamplerSpec):
    """Pixels one at a time in raster order over a ``logits`` graph (x N x C x h x W -> logits), or,
    with ``cache``, over its row/pixel step graphs. ``pixels``: "binary" (2 categories) | "256"."""

    kind: ClassVar[str] = "autoregressive"
    _PARTS: ClassVar[dict[str, type]] = {"uniforms": Uniforms, "cache": PixelCache}
    _NULLS: ClassVar[tuple[str, ...]] = ("cache",)
    graph: str
    input: str = "x"
    output: str = "logits"
    pixels: str
    categories: int | None = None           # None: 2 (binary) or 256
    uniforms: Uniforms
    cache: PixelCache | None = None
    conditional: bool = False

    def _validate(self) -> None:
        k = self.kind
        _name(k, "input", self.input)
        _name(k, "output", self.output)
        if self.pixels not in ("binary", "256"):
            _fail(k, f"pixels must be 'binary' or '256', got {self.pixels!r}")
        want = 2 if self.pixels == "binary" else 256
        if self.categories is None:
            self._set("categories", want)
        if self.categories != want or not _is_int(self.categories):
            _fail(k, f"categories must be {want} for pixels {self.pixels!r}, got {self.categories!r}")
        if not isinstance(self.uniforms, Uniforms):
            _fail(k, f"uniforms must be {{shape, dtype, order}}, got {self.uniforms!r}")
        if self.cache is not None:
            if not isinstance(self.cache, PixelCache):
                _fail(k, f"cache must be an object or null, got {self.cache!r}")
        if self.conditional:
            _fail(k, "conditional models are not supported")

    def graphs_used(self) -> tuple[str, ...]:
        extra = (self.cache.row_graph, self.cache.pixel_graph) if self.cache else ()
        return (self.graph, *extra)


@register_spec
@dataclass(frozen=True, kw_only=True)
class FlowSpec(SamplerSpec):
    """z ~ N(0, I) (float32 N x C x H x W) scaled by ``temperature`` (option, > 0; 1 = the model's own
    distribution, omitted from the JSON) through the flow's inverse graph."""

    kind: ClassVar[str] = "flow"
    SAMPLING: ClassVar[dict[str, str]] = {"temperature": "temperature"}
    graph: str
    output: str | None = None
    noise: Noise
    temperature: float = 1.0
    conditional: bool = False

    def _validate(self) -> None:
        k = self.kind
        _name(k, "output", self.output, optional=True)
        if not isinstance(self.noise, Noise) or self.noise.distribution != "normal" or len(self.noise.shape) != 3:
            _fail(k, f"noise must be normal with shape [C, H, W], got {self.noise!r}")
        if not (_is_number(self.temperature) and self.temperature > 0):
            _fail(k, f"temperature must be a number > 0, got {self.temperature!r}")
        self._set("temperature", float(self.temperature))
        if self.conditional:
            _fail(k, "conditional models are not supported")

    def _omit(self, name: str, value: Any) -> bool:
        return name == "temperature" and value == 1.0


@register_spec
@dataclass(frozen=True, kw_only=True)
class TokenAutoregressiveSpec(SamplerSpec):
    """Token ids one at a time over a ``prefill`` graph and a one-token ``decode`` step graph with a cache
    (``serving/sampler_tokens.py``; the rule: ``contracts.token_sampling``).

    Graphs. ``prefill``: ``tokens`` int64 N x L (+ ``labels`` int64 N when it has that input) -> ``logits``
    float N x L x V and the state outputs. ``graph`` (the decode step): ``token`` int64 N x 1 + the state
    inputs (+ ``labels`` when it has that input) -> ``logits`` N x V and the state outputs. ``state`` pairs
    each state input with the output that replaces it after a step (``[["past_key_0", "present_key_0"],
    ["past_value_0", "present_value_0"], ...]`` for a transformer's KV cache, one key and one value per layer,
    N x heads x P x head_dim, ``cache_shape`` [layers, heads, head_dim]; ``[["h", "h_next"], ["c", "c_next"]]``
    for an LSTM, N x layers x hidden; ``[]`` for a bigram table). ``cache`` names the layout: "kv" (the caches
    grow by one position per step: N x heads x P x head_dim in, P + 1 out), "kv_static" (preallocated to the
    stored length: N x heads x T x head_dim in and out, prefill's zero after the prefix; the decode graph also
    takes ``position_input``, the int64 scalar position P of the new token, writes its key and value there and
    attends to 0..P; the loop binds each output to its input's buffer, so a graph whose attention writes in
    place (ONNX Runtime's GroupQueryAttention) copies nothing per token), "rnn", "none"; ``cache_shape`` is
    recorded for readers.

    Sequences: ``length`` T stored positions, ``<bos>`` (``bos``) first, ``<eos>`` (``eos``) then ``<pad>``
    (``pad``); ``vocab_size`` V. Sampling options (defaults here, overridable per run): ``temperature`` > 0,
    ``top_k`` (int >= 1 or null), ``top_p`` (in (0, 1] or null), ``max_len`` (characters before the forced
    ``<eos>``, 1..T-2).
    """

    kind: ClassVar[str] = "token_autoregressive"
    SAMPLING: ClassVar[dict[str, str]] = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
                                          "max_len": "max_len"}
    _NULLS: ClassVar[tuple[str, ...]] = ("top_k", "top_p")
    graph: str = "decode"
    prefill: str = "prefill"
    tokens_input: str = "tokens"
    token_input: str = "token"
    labels_input: str = "labels"
    position_input: str = "position"       # cache "kv_static" only
    output: str = "logits"
    state: tuple[tuple[str, str], ...] = ()
    cache: str = "none"
    cache_shape: tuple[int, ...] = ()       # the state's shape after batch and before/without the length axis
    vocab_size: int
    length: int
    bos: int = 1
    eos: int = 2
    pad: int = 0
    conditional: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_len: int | None = None              # None: length - 2

    def _validate(self) -> None:
        k = self.kind
        for key in ("prefill", "tokens_input", "token_input", "labels_input", "position_input", "output"):
            _name(k, key, getattr(self, key))
        _choice(k, "cache", self.cache, ("kv", "kv_static", "rnn", "none"))
        state = self.state
        if not isinstance(state, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) and s for s in p) for p in state):
            _fail(k, f"state must be a list of [input, output] name pairs, got {state!r}")
        self._set("state", tuple((str(a), str(b)) for a, b in state))
        if (self.cache == "none") != (not self.state):
            _fail(k, f"cache {self.cache!r} with state {list(self.state)!r}: a cache needs state pairs, 'none' none")
        if not isinstance(self.cache_shape, (list, tuple)) or not all(_is_int(s) and s > 0 for s in self.cache_shape):
            _fail(k, f"cache_shape must be a list of positive ints, got {self.cache_shape!r}")
        self._set("cache_shape", tuple(self.cache_shape))
        _pos_int(k, "vocab_size", self.vocab_size)
        if not (_is_int(self.length) and self.length >= 3):
            _fail(k, f"length must be an int >= 3, got {self.length!r}")
        for key in ("bos", "eos", "pad"):
            v = getattr(self, key)
            if not (_is_int(v) and 0 <= v < self.vocab_size):
                _fail(k, f"{key} must be a token id in [0, {self.vocab_size}), got {v!r}")
        if len({self.bos, self.eos, self.pad}) != 3:
            _fail(k, "bos, eos and pad must be three different ids")
        if not (_is_number(self.temperature) and self.temperature > 0):
            _fail(k, f"temperature must be a number > 0, got {self.temperature!r}")
        self._set("temperature", float(self.temperature))
        if self.top_k is not None and not (_is_int(self.top_k) and self.top_k >= 1):
            _fail(k, f"top_k must be an int >= 1 or null, got {self.top_k!r}")
        if self.top_p is not None:
            if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
                _fail(k, f"top_p must be a number in (0, 1] or null, got {self.top_p!r}")
            self._set("top_p", float(self.top_p))
        if self.max_len is None:
            self._set("max_len", self.length - 2)
        if not (_is_int(self.max_len) and 1 <= self.max_len <= self.length - 2):
            _fail(k, f"max_len must be an int in [1, {self.length - 2}] (the stored length {self.length} minus "
                     f"<bos> and <eos>), got {self.max_len!r}")

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["state"] = [list(p) for p in self.state]
        return out

    def graphs_used(self) -> tuple[str, ...]:
        return (self.graph, self.prefill)
