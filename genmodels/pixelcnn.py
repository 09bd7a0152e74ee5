"""Gated PixelCNN (family "pixelcnn"): van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders", unconditional, for small grey images.

One file, one family: the config, the gated layers, the exact likelihood, the sampler and the
export hooks. Images crossing the interface are N x C x H x W floats in [0, 1].

Pixels (config ``pixels``):
- "binary": x is binarised with a STATIC threshold, b = 1[x > threshold] (threshold 0.5: uint8
  value >= 128 -> 1), and each b is Bernoulli(sigmoid(logit)). nll() is exact, in nats per image,
  for that binarised image: sum over pixels of the binary cross-entropy. (The 81.3 nats anchor of
  van den Oord et al. is on the Salakhutdinov-Murray binarised MNIST, a different binarisation.)
- "256": x is quantised to k = round(255 x) in 0..255 and each k is a 256-way categorical (softmax
  over logits). nll() is the exact discrete NLL of the 8-bit image, in nats per image.
With C > 1 the C values of one pixel are modelled independently given the previous pixels (no
R -> G -> B masking inside a pixel): still an exact, normalised likelihood; exact autoregression for
C = 1 (MNIST).

Network. Zero padding stands for pixels outside the image (the network input is the binarised or
quantised value in [0, 1], so padding reads as black). Each gated layer l has
- a vertical stack: a (k//2+1) x k convolution over rows i-k//2..i (padding above and at the sides,
  never below), gate tanh(a) * sigmoid(b): v at row i sees input rows <= i;
- a link: a 1x1 convolution of the vertical pre-activation SHIFTED DOWN one row (row 0 gets zeros; no
  bias, so row 0 gets exactly zero), added to the horizontal pre-activation: row i sees rows < i;
- a horizontal stack: a 1 x (k//2+1) convolution over columns j-k//2..j (layer 0: 1 x (k0//2) over
  columns j-k0//2..j-1, i.e. mask "A", the current pixel excluded), gate, a 1x1 convolution and a
  residual connection (layers >= 1).
The vertical stack's receptive field grows up and to both sides, the horizontal one to the left,
so no blind spot (the original PixelCNN's masked 3x3 misses the pixels above-right). The output
head is ReLU -> 1x1 -> ReLU -> 1x1 over the last horizontal features: logit at (i, j) depends
exactly on the pixels before (i, j) in raster order (tests/test_pixelcnn.py checks it).

Fast sampling (Ramachandran et al. 2017, "Fast generation for convolutional autoregressive
models"). A plain loop runs the whole network H*W times. Here the same weights also run as two
incremental steps that only compute what a new pixel changes:
- ``row`` (once per image row): the vertical stack for the row just completed, from the last
  k0//2+1 image rows and a cache of the previous k//2 rows of every layer's vertical features;
  returns every layer's link term (the "conditioning") for the next row, and the updated cache;
- ``pixel`` (once per pixel): the horizontal stack for one column, from the k0//2 pixels to its
  left, the row's conditioning at that column and a cache of the previous k//2 columns of every
  layer's horizontal features; returns the pixel's logits and the updated cache.
So a sample costs about one network evaluation instead of H*W of them. sample() uses these steps,
and serving exports them as ONNX graphs next to the full "logits" graph (see sampler()).

Sampling rule (identical in sample() and serving/sampler_autoregressive.py): one uniform
u ~ U[0, 1) per pixel and channel, all drawn up front (N x C x H x W, float32, torch.rand /
numpy rng.random); in float64, binary: x = 1 if u < sigmoid(logit) else 0; "256": inverse CDF,
k = #{k' < 255 : cdf(k') <= u * cdf(255)} with cdf the cumulative sum of exp(logits - max),
x = k / 255.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contracts.samplers import AutoregressiveSpec, PixelCache, Uniforms
from genmodels.base import LikelihoodModel, ModelConfig, OnnxGraph, arch, training
from genmodels.pixelcnn_export import ExportLogits, onnx_shapes


@dataclass
class PixelCNNConfig(ModelConfig):
    pixels: str = "binary"          # "binary" (Bernoulli of x > threshold) | "256" (256-way categorical)
    threshold: float = arch(0.5, gt=0, lt=1)          # binary only: the static binarisation threshold
    channels: int = arch(16, ge=1)              # feature maps of each stack (p)
    # gated layers (>= 2); the first uses first_kernel and mask A. 12 layers see 14 rows up (6 saw 8 of 28): on
    # mnist5k seed 1 (10 epochs, the domain classifier's FID over the real floor) 6 layers drew 178x with 6 of 10
    # classes (rejected), 12 layers 138x with 7, bits/dim 0.131 -> 0.125, at ~2x the time per epoch
    layers: int = arch(12, ge=2)
    kernel: int = arch(3, ge=3)                 # odd >= 3: vertical (k//2+1) x k, horizontal 1 x (k//2+1)
    first_kernel: int = arch(7, ge=3)           # odd >= 3: the first layer's k
    head_channels: int = arch(64, ge=1)         # the hidden 1x1 layer of the output head
    lr: float = training(2e-3)
    lr_decay: float = training(0.9995, gt=0, le=1)      # per-step exponential decay of the learning rate
    grad_clip: float = training(1.0, ge=0)        # max global gradient norm (0 = none); the loss is in nats/image, norms
                                    # run ~100-400 on MNIST, so 1.0 rescales every step (Adam on unit-norm
                                    # gradients, which trained stably)
    batch_size: int = training(32)          # training defaults the trainer reads (overridable there)
    epochs: int = training(10)

    def __post_init__(self):
        super().__post_init__()
        self.pixels = str(self.pixels)  # YAML may give 256 as an int
        if self.pixels not in ("binary", "256"):
            raise ValueError(f"pixels must be 'binary' or '256', got {self.pixels!r}")
        for name in ("kernel", "first_kernel"):
            k = getattr(self, name)
            if k < 3 or k % 2 == 0:
                raise ValueError(f"{name} must be odd and >= 3, got {k}")

    @property
    def categories(self) -> int:
        return 2 if self.pixels == "binary" else 256


def _gate(t: torch.Tensor) -> torch.Tensor:
    """Gated activation over dim 1: 2p channels -> p, tanh(first half) * sigmoid(second half)."""
    a, b = t.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer: vertical stack, link, horizontal stack (full-image form in forward)."""

    def __init__(self, c_in: int, p: int, k: int, first: bool):
        super().__init__()
        self.k, self.first = k, first
        self.v_conv = nn.Conv2d(c_in, 2 * p, (k // 2 + 1, k))                  # rows i-k//2..i, cols j-k//2..j+k//2
        self.link = nn.Conv2d(2 * p, 2 * p, 1, bias=False)                     # no bias: row 0 gets exactly 0
        self.h_conv = nn.Conv2d(c_in, 2 * p, (1, k // 2 if first else k // 2 + 1))
        self.h_out = nn.Conv2d(p, p, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.k // 2
        vc = self.v_conv(F.pad(v, (r, r, r, 0)))                 # N x 2p x H x W, row i sees rows <= i
        cond = self.link(F.pad(vc, (0, 0, 1, 0))[:, :, :-1])     # shifted down: row i sees rows < i
        hc = self.h_conv(F.pad(h, (r, 0)))                       # cols j-r..j (first: W+1 wide)
        if self.first:
            hc = hc[..., :-1]                                    # cols j-r..j-1: mask A
        hg = self.h_out(_gate(hc + cond))                        # N x p x H x W
        return _gate(vc), hg if self.first else hg + h


class _Net(nn.Module):
    def __init__(self, cfg: PixelCNNConfig):
        super().__init__()
        c, p = cfg.image_shape[0], cfg.channels
        self.layers = nn.ModuleList(
            [GatedLayer(c, p, cfg.first_kernel, True)] + [GatedLayer(p, p, cfg.kernel, False) for _ in range(cfg.layers - 1)])
        k = 1 if cfg.pixels == "binary" else 256
        self.head1 = nn.Conv2d(p, cfg.head_channels, 1)
        self.head2 = nn.Conv2d(cfg.head_channels, c * k, 1)

    def head(self, h: torch.Tensor) -> torch.Tensor:  # N x p x ... -> N x C*K x ...
        return self.head2(F.relu(self.head1(F.relu(h))))

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:  # N x C x H x W network input -> N x C*K x H x W
        v = h = x_in
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)


def _linear_of(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A convolution applied at one position as a matrix: weight (out, in * kh * kw), bias."""
    return conv.weight.flatten(1), conv.bias


class _Prep(nn.Module):
    """Network input from images in [0, 1]: binarised (x > t) or quantised round(255 x) / 255."""

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__()
        self.binary, self.threshold = cfg.pixels == "binary", float(cfg.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return (x > self.threshold).to(x.dtype)
        return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


class _Logits(nn.Module):
    """The exported "logits" graph: x (N x C x H x W in [0, 1]) -> per-pixel logits.

    binary: N x C x H x W (Bernoulli logits); "256": N x C x H x W x 256. The height axis is
    dynamic: the network is causal, so logits of rows 0..r from x[:, :, :r+1] equal those of the
    full image.
    """

    def __init__(self, net: _Net, prep: _Prep, channels: int, binary: bool):
        super().__init__()
        self.net, self.prep, self.c, self.binary = net, prep, channels, binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.prep(x))
        if self.binary:
            return out
        return out.unflatten(1, (self.c, 256)).permute(0, 1, 3, 4, 2)


class _RowStep(nn.Module):
    """The "row" graph: vertical stack for the row just completed (r-1), conditioning for row r.

    x_rows: N x C x (k0//2+1) x W, image rows r-1-k0//2..r-1 (zeros above the image);
    v_hist: N x (L-1) x p x (k//2) x W, vertical features of layers 0..L-2 at rows r-1-k//2..r-2.
    -> cond: N x L x 2p x W (each layer's link term for row r), v_hist for the next row.
    """

    def __init__(self, net: _Net, prep: _Prep):
        super().__init__()
        self.net, self.prep = net, prep

    def forward(self, x_rows: torch.Tensor, v_hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.prep(x_rows)
        conds, news = [], []
        n_layers = len(self.net.layers)
        for i, layer in enumerate(self.net.layers):
            if i > 0:
                v = torch.cat([v_hist[:, i - 1], v], dim=2)            # N x p x (k//2+1) x W
            r = layer.k // 2
            # the conv's own (symmetric) padding, not F.pad: no Pad node in the graph, ORT keeps its conv layout
            vc = F.conv2d(v, layer.v_conv.weight, layer.v_conv.bias, padding=(0, r))   # N x 2p x 1 x W
            conds.append(layer.link(vc)[:, :, 0])                       # N x 2p x W
            v = _gate(vc)                                               # N x p x 1 x W
            if i < n_layers - 1:
                news.append(v)
        new = torch.stack(news, dim=1)                                  # N x (L-1) x p x 1 x W
        v_next = torch.cat([v_hist[:, :, :, 1:], new], dim=3) if v_hist.shape[3] > 1 else new
        return torch.stack(conds, dim=1), v_next


class _PixelStep(nn.Module):
    """The "pixel" graph: horizontal stack and head for one pixel (r, j).

    cond: N x L x 2p (row r's conditioning at column j); x_left: N x C x (k0//2), image pixels
    (r, j-k0//2..j-1) (zeros left of the image); h_hist: N x (L-1) x p x (k//2), horizontal
    features of layers 0..L-2 at columns j-k//2..j-1.
    -> logits (N x C, or N x C x 256), h_hist for the next column.
    """

    def __init__(self, net: _Net, prep: _Prep, channels: int, binary: bool):
        super().__init__()
        self.net, self.prep, self.c, self.binary = net, prep, channels, binary

    def forward(self, cond: torch.Tensor, x_left: torch.Tensor, h_hist: torch.Tensor):
        h = self.prep(x_left).flatten(1)                                # N x C*(k0//2)
        news = []
        n_layers = len(self.net.layers)
        for i, layer in enumerate(self.net.layers):
            if i > 0:
                window = torch.cat([h_hist[:, i - 1], h.unsqueeze(2)], dim=2).flatten(1)  # N x p*(k//2+1)
            else:
                window = h
            w, b = _linear_of(layer.h_conv)
            hc = F.linear(window, w, b) + cond[:, i]                    # N x 2p
            w, b = _linear_of(layer.h_out)
            hg = F.linear(_gate(hc), w, b)                              # N x p
            h = hg if i == 0 else hg + h
            if i < n_layers - 1:
                news.append(h)
        w1, b1 = _linear_of(self.net.head1)
        w2, b2 = _linear_of(self.net.head2)
        out = F.linear(F.relu(F.linear(F.relu(h), w1, b1)), w2, b2)   # N x C*K
        if not self.binary:
            out = out.unflatten(1, (self.c, 256))
        new = torch.stack(news, dim=1).unsqueeze(3)                     # N x (L-1) x p x 1
        h_next = torch.cat([h_hist[..., 1:], new], dim=3) if h_hist.shape[3] > 1 else new
        return out, h_next


def draw_pixels(logits: torch.Tensor, u: torch.Tensor, binary: bool) -> torch.Tensor:
    """Pixel values from logits and uniforms (see the module docstring; mirrored in NumPy by serving).

    logits: N x C (binary) or N x C x 256; u: N x C in [0, 1) -> N x C in {0, 1} or {k / 255}.
    """
    u = u.double()
    if binary:
        return (u < torch.sigmoid(logits.double())).to(torch.float32)
    lg = logits.double()
    cdf = torch.cumsum(torch.exp(lg - lg.amax(-1, keepdim=True)), dim=-1)
    k = (cdf[..., :-1] <= (u * cdf[..., -1]).unsqueeze(-1)).sum(-1)
    return k.to(torch.float32) / 255.0


class PixelCNN(LikelihoodModel):
    family: ClassVar[str] = "pixelcnn"
    config_class: ClassVar[type[ModelConfig]] = PixelCNNConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"nll", "score"})

    def __init__(self, config: PixelCNNConfig):
        super().__init__(config)
        with torch.random.fork_rng(devices=[]):  # same config -> same weights; global RNG untouched
            torch.manual_seed(config.seed)
            self.net = _Net(config)
        self.prep = _Prep(config)
        self._opt = torch.optim.Adam(self.parameters(), lr=config.lr, fused=True)
        self._sched = torch.optim.lr_scheduler.ExponentialLR(self._opt, gamma=config.lr_decay)

    @property
    def binary(self) -> bool:
        return self.config.pixels == "binary"

    @property
    def nll_variant(self) -> str:
        c, h, w = self.config.image_shape
        size = f"{h}x{w}" if c == 1 else f"{c}x{h}x{w}"
        if self.binary:
            return f"binarized {size} (static threshold {self.config.threshold:g}), exact"
        return f"8-bit {size} (256-way categorical), exact"

    # --- the model -------------------------------------------------------------------------
    def _targets(self, x: torch.Tensor) -> torch.Tensor:
        """binary: float 0/1 (N x C x H x W); "256": int64 k in 0..255."""
        if self.binary:
            return (x > self.config.threshold).to(x.dtype)
        return torch.round(x.clamp(0.0, 1.0) * 255.0).long()

    def nll_per_image(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) in nats, summed over pixels: N x C x H x W in [0, 1] -> N (differentiable)."""
        out = self.net(self.prep(x))                                   # N x C*K x H x W
        t = self._targets(x)
        if self.binary:
            return F.binary_cross_entropy_with_logits(out, t, reduction="none").flatten(1).sum(1)
        n, c = x.shape[:2]
        logits = out.unflatten(1, (c, 256)).transpose(1, 2)            # N x 256 x C x H x W
        return F.cross_entropy(logits, t, reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits: N x C x H x W (binary) or N x C x H x W x 256."""
        self.eval()
        return _Logits(self.net, self.prep, self.config.image_shape[0], self.binary)(x.to(self.device))

    # --- training --------------------------------------------------------------------------
    def training_nll(self, x: torch.Tensor) -> torch.Tensor:
        return self.nll_per_image(x)

    # --- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def nll(self, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Exact -log p(x) in nats per image (N); binary: of the binarised image (x > threshold)."""
        self.eval()
        return torch.cat([self.nll_per_image(xb.to(self.device)) for xb in x.split(chunk)])

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score = nll (nats per image): one network pass, cheap."""
        return self.nll(x)

    def _steps(self) -> tuple[_RowStep, _PixelStep]:
        c = self.config.image_shape[0]
        return _RowStep(self.net, self.prep), _PixelStep(self.net, self.prep, c, self.binary)

    def _state_shapes(self, n: int) -> dict[str, tuple[int, ...]]:
        cfg = self.config
        c, _, w = cfg.image_shape
        L, p, r, r0 = cfg.layers, cfg.channels, cfg.kernel // 2, cfg.first_kernel // 2
        return {"x_rows": (n, c, r0 + 1, w), "v_hist": (n, L - 1, p, r, w),
                "cond": (n, L, 2 * p), "x_left": (n, c, r0), "h_hist": (n, L - 1, p, r)}

    @torch.no_grad()
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """Images from given uniforms (N x C x H x W in [0, 1)), pixel by pixel in raster order."""
        self.eval()
        u = u.to(self.device)
        n, c, h, w = u.shape
        if (c, h, w) != tuple(self.config.image_shape):
            raise ValueError(f"uniforms of shape {tuple(u.shape)} for images {self.config.image_shape}")
        row, pixel = self._steps()
        shapes = self._state_shapes(n)
        r0 = self.config.first_kernel // 2
        img = torch.zeros(n, c, h + r0, w + r0, device=self.device)   # zero padding above and left
        v_hist = torch.zeros(shapes["v_hist"], device=self.device)
        cond = torch.zeros(n, self.config.layers, 2 * self.config.channels, w, device=self.device)
        for i in range(h):
            if i > 0:
                cond, v_hist = row(img[:, :, i - 1:i + r0, r0:], v_hist)
            h_hist = torch.zeros(shapes["h_hist"], device=self.device)
            for j in range(w):
                logits, h_hist = pixel(cond[..., j], img[:, :, i + r0, j:j + r0], h_hist)
                img[:, :, i + r0, j + r0] = draw_pixels(logits, u[:, :, i, j], self.binary)
        return img[:, :, r0:, r0:].contiguous()

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **sampling: Any) -> torch.Tensor:
        """N x C x H x W in {0, 1} (binary) or {k / 255}; uniforms drawn up front with torch.rand."""
        self.sampling_spec(sampling)  # the autoregressive sampler takes no option yet: any is an error
        # draw on the generator's device, then move: a CPU generator gives the same u on any device
        u = torch.rand((n, *self.config.image_shape), generator=generator,
                       device=generator.device if generator is not None else self.device)
        return self.sample_from_uniforms(u)

    # --- export / serving ------------------------------------------------------------------
    def onnx_graphs(self) -> list[OnnxGraph]:
        c, h, w = self.config.image_shape
        dev = self.device
        row, pixel = self._steps()
        s = self._state_shapes(2)  # batch 2: dynamo must not specialise on 1
        full = _Logits(self.net, self.prep, c, self.binary).eval()
        batch = {0: "batch"}
        return [
            # exported in the form ONNX Runtime runs fast (genmodels/pixelcnn_export.py), checked against full
            OnnxGraph(name="logits", module=ExportLogits(full).eval(), reference=full, onnx_pass=onnx_shapes,
                      example_inputs=(torch.zeros(2, c, h, w, device=dev),), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch", 2: "height"}, "logits": {0: "batch", 2: "height"}}),
            OnnxGraph(name="row", module=row.eval(),
                      example_inputs=(torch.zeros(s["x_rows"], device=dev), torch.zeros(s["v_hist"], device=dev)),
                      input_names=["x_rows", "v_hist"], output_names=["cond", "v_hist_next"],
                      dynamic_axes={k: batch for k in ("x_rows", "v_hist", "cond", "v_hist_next")}),
            OnnxGraph(name="pixel", module=pixel.eval(),
                      example_inputs=(torch.zeros(s["cond"], device=dev), torch.zeros(s["x_left"], device=dev),
                                      torch.zeros(s["h_hist"], device=dev)),
                      input_names=["cond", "x_left", "h_hist"], output_names=["logits", "h_hist_next"],
                      dynamic_axes={k: batch for k in ("cond", "x_left", "h_hist", "logits", "h_hist_next")}),
        ]

    def sampler(self) -> AutoregressiveSpec:
        cfg = self.config
        s = self._state_shapes(1)
        cache = PixelCache(row_graph="row", pixel_graph="pixel", row_window=s["x_rows"][2], left_window=s["x_left"][2],
                           layers=cfg.layers, channels=cfg.channels, history=cfg.kernel // 2)
        return AutoregressiveSpec(graph="logits", input="x", output="logits", pixels=cfg.pixels,
                                  categories=cfg.categories, uniforms=Uniforms(shape=tuple(cfg.image_shape)),
                                  cache=cache, conditional=False)
