"""PixelCNN's exported "logits" graph in the form ONNX Runtime runs fast: same function, same trained
weights, rearranged at export time (the model, its training and its checkpoints are unchanged).

Why. ONNX Runtime's CPU provider runs convolutions in a blocked channel layout (NCHWc, 16 channels a
block on AVX-512) and keeps that layout only across the ops its NCHWc transformer knows (Conv, pooling,
Concat, Add/Sum, Mul, Relu/Sigmoid/Tanh); around any other op (Pad, Slice, Split) it converts back and
forth (ReorderOutput / ReorderInput). The model's own forward (genmodels/pixelcnn.py ``GatedLayer``) pads
explicitly (``F.pad``), shifts the vertical stack down with a pad and a crop, crops the mask-A column and
splits the gate's channels (``chunk(2)``), so its graph spent about half of ORT's time in reorders, Pads
and Slices. And the transformer keeps an elementwise Mul (the gate's tanh(a) * sigmoid(b)) in NCHWc only
when it can prove both inputs have the same shape; with a dynamic height it needs each tensor's symbolic
shape in the ONNX file.

What ``ExportLogits`` does instead (every conv below is ONE ONNX Conv, its zero padding in the Conv's own
``pads`` [top, left, bottom, right], see ``_PaddedConv``); r = k // 2, p = channels, a/b = the tanh and
sigmoid halves of the gate:
- vertical stack: two (r+1) x k convs (a and b halves of ``v_conv``), pads [r, r, 0, r];
- link of the vertical stack shifted down one row: the 1x1 link (no bias) as one p -> p conv per
  (output half, input half), no Concat, then the shift as a depthwise 2 x 1 conv with weights [1; 0]
  and pads [1, 0, 0, 0]: row i = link(vc)[i-1], row 0 = 0 exactly (a 2 x 1 dense conv with weights
  [W_link; 0] does the same in one conv but doubles the link's multiply-adds, +20 % of the graph's
  FLOPs: measured 4-5 % slower); ORT adds the convs' outputs inside the convs (fused Conv+Sum);
- horizontal stack: 1 x (r+1) convs with pads [0, r, 0, 0]; mask A (layer 0, 1 x r over columns
  j-r..j-1) as a 1 x (r+1) conv whose last column is 0;
- gate tanh(a) * sigmoid(b) on the two halves, no Split;
- "256" pixels, one image channel: the head's last 1x1 conv as a MatMul on channels-last features
  (N x 1 x H x W x (M+1) @ (M+1) x 256, M = head_channels, the bias as row M against a constant-one
  channel of the first head conv), so the output is written in its N x 1 x H x W x 256 layout directly
  instead of a 256-channel conv, a layout reorder and a Transpose (+15% samples/s in that mode).
``onnx_shapes`` then writes every intermediate tensor's symbolic shape (batch x C x height x W) into the
file (onnxruntime's symbolic shape inference) so the NCHWc transformer sees equal shapes.

Measured (benchmarks/graph_speed.py, default config, batch 256; README-PROPOSAL.md): one layout reorder
left (the output); binary: ORT 1.5-1.6x torch.compile of the model's own forward at 1 and 2 threads
(was 0.81-0.99x); "256": 1.4x (was 0.84-0.95x). (ORT's own PadFusion would fold the model's zero Pads
into the Convs, but skips the TorchScript exporter's Pads: their empty optional constant_value input
reads as non-constant to it; and it would leave the Slices and the Split.)
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class _PaddedConv(torch.autograd.Function):
    """conv2d (stride 1, no dilation, one group) of x zero-padded by ``pads`` = (top, left, bottom, right).

    Runs as ``F.pad`` + ``F.conv2d`` in PyTorch; the TorchScript ONNX exporter emits ONE Conv whose
    ``pads`` attribute holds the (asymmetric) padding, where ``F.pad`` would give a Pad node.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pads, groups):  # noqa: D102
        top, left, bottom, right = pads
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, groups=groups)

    @staticmethod
    def symbolic(g, x, weight, bias, pads, groups):  # noqa: D102
        kh, kw = weight.type().sizes()[2:]
        args = [x, weight] if bias is None or bias.node().mustBeNone() else [x, weight, bias]
        return g.op("Conv", *args, kernel_shape_i=[kh, kw], pads_i=list(pads), strides_i=[1, 1],
                    dilations_i=[1, 1], group_i=groups)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pads: tuple[int, int, int, int],
          groups: int = 1):
    return _PaddedConv.apply(x, weight, bias, pads, groups)


class _ExportLayer(nn.Module):
    """One ``GatedLayer`` (full-image form) rearranged as above; weights copied as buffers."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.first = layer.first
        self.r = layer.k // 2
        p = self.p = layer.h_out.out_channels
        wv, bv = layer.v_conv.weight.detach(), layer.v_conv.bias.detach()           # 2p x C x (r+1) x k
        wl = layer.link.weight.detach()                                             # 2p x 2p x 1 x 1
        shift = torch.zeros_like(wl[:p, :1]).repeat(1, 1, 2, 1)                      # p x 1 x 2 x 1, depthwise
        shift[:, :, 0] = 1.0                                                        # rows i-1, i: [1; 0]
        self.register_buffer("shift", shift)
        wh, bh = layer.h_conv.weight.detach(), layer.h_conv.bias.detach()           # 2p x C x 1 x (r or r+1)
        if self.first:                                                              # mask A: column j gets 0
            wh = torch.cat([wh, torch.zeros_like(wh[..., :1])], dim=3)
        halves = {"a": slice(0, p), "b": slice(p, 2 * p)}
        for n, s in halves.items():
            self.register_buffer(f"wv_{n}", wv[s].clone())
            self.register_buffer(f"bv_{n}", bv[s].clone())
            self.register_buffer(f"wh_{n}", wh[s].clone())
            self.register_buffer(f"bh_{n}", bh[s].clone())
            for m, t in halves.items():  # output half n from input half m
                self.register_buffer(f"wl_{n}{m}", wl[s, t].clone())
        self.h_out = layer.h_out

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.r
        va = _conv(v, self.wv_a, self.bv_a, (r, r, 0, r))          # N x p x H x W, row i sees rows <= i
        vb = _conv(v, self.wv_b, self.bv_b, (r, r, 0, r))
        none, down = (0, 0, 0, 0), (1, 0, 0, 0)
        ca = _conv(va, self.wl_aa, None, none) + _conv(vb, self.wl_ab, None, none)  # link, a half of its output
        cb = _conv(va, self.wl_ba, None, none) + _conv(vb, self.wl_bb, None, none)
        ha = _conv(ca, self.shift, None, down, self.p) + _conv(h, self.wh_a, self.bh_a, (0, r, 0, 0))  # row i: ca[i-1]
        hb = _conv(cb, self.shift, None, down, self.p) + _conv(h, self.wh_b, self.bh_b, (0, r, 0, 0))  # row 0: 0
        hg = self.h_out(torch.tanh(ha) * torch.sigmoid(hb))
        return torch.tanh(va) * torch.sigmoid(vb), hg if self.first else hg + h


class ExportLogits(nn.Module):
    """The "logits" graph of ``genmodels.pixelcnn._Logits`` (x: N x C x H x W in [0, 1] -> logits
    N x C x H x W, or N x C x H x W x 256), equal to it to float rounding at any height H; built from
    its current weights (a snapshot: build it again after training)."""

    def __init__(self, logits: nn.Module):
        super().__init__()
        net = logits.net
        self.prep, self.c, self.binary = logits.prep, logits.c, logits.binary
        self.layers = nn.ModuleList([_ExportLayer(layer) for layer in net.layers])
        self.head1, self.head2 = net.head1, net.head2
        self.matmul_head = not self.binary and self.c == 1
        if self.matmul_head:  # head2 as a MatMul on channels-last features, its bias through a unit channel
            w1, b1 = net.head1.weight.detach(), net.head1.bias.detach()                  # M x p x 1 x 1, M
            self.register_buffer("w1", torch.cat([w1, torch.zeros_like(w1[:1])]))        # (M+1) x p x 1 x 1
            self.register_buffer("b1", torch.cat([b1, torch.ones_like(b1[:1])]))         # channel M: relu(1) = 1
            w2, b2 = net.head2.weight.detach().flatten(1), net.head2.bias.detach()       # 256 x M, 256
            self.register_buffer("w2t", torch.cat([w2, b2[:, None]], 1).t().contiguous())  # (M+1) x 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = h = self.prep(x)
        for layer in self.layers:
            v, h = layer(v, h)
        if self.matmul_head:  # N x 1 x H x W x (M+1) @ (M+1) x 256: the output's layout, no transpose
            t = F.relu(F.conv2d(F.relu(h), self.w1, self.b1)).permute(0, 2, 3, 1).unsqueeze(1)
            return torch.matmul(t, self.w2t)
        out = self.head2(F.relu(self.head1(F.relu(h))))
        if self.binary:
            return out
        n, _, h, w = out.shape  # (unflatten exports a reshape symbolic shape inference cannot follow)
        return out.reshape(n, self.c, 256, h, w).permute(0, 1, 3, 4, 2)


def onnx_shapes(model: Any) -> Any:
    """onnx.ModelProto -> the same graph with every intermediate tensor's symbolic shape recorded
    (``value_info``, e.g. batch x 16 x height x 28), from onnxruntime's symbolic shape inference. A graph
    that inference cannot follow is returned unchanged, with a warning: it runs correctly, only slower
    (tests/test_pixelcnn.py checks that the shapes are there for the family's own graphs)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # export time only

    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=False)
    except Exception as e:  # noqa: BLE001  a speed-only pass must not fail an export
        log.warning("pixelcnn logits graph: symbolic shape inference failed (%s: %s); exported without "
                    "intermediate shapes (slower in ONNX Runtime)", type(e).__name__, e)
        return model
