"""PNG writers: sample grid, captioned review grid, interpolation strip, ROC curve, anomaly-score histograms.

Grids are plain numpy -> PIL (pixel-exact, no matplotlib). Charts use matplotlib's Agg canvas
through the object-oriented API (``Figure`` + ``FigureCanvasAgg``): no pyplot, no GUI backend,
no global backend switch, safe in worker threads and headless servers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

# matplotlib and scikit-learn are imported inside the chart writers: the trainer writes a grid every
# epoch and should not pay their ~1.5 s import

__all__ = [
    "captioned_grid",
    "image_grid",
    "save_captioned_grid",
    "save_image_grid",
    "score_axis_scale",
    "save_interpolation_strip",
    "save_roc_curve",
    "save_score_histograms",
]


def _to_uint8(images: Any) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:  # N x H x W -> N x 1 x H x W
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"images must be N x C x H x W, got shape {x.shape}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    return (np.clip(np.nan_to_num(x.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(
    images: Any, nrow: int = 8, padding: int = 2, pad_value: int = 0, scale: int | None = None
) -> np.ndarray:
    """Tile ``N x C x H x W`` images (uint8 or float in [0, 1]) into one ``H' x W' x C`` uint8
    array, ``nrow`` images per row. ``scale``: integer nearest-neighbour upscaling of each image
    (default: enough for cells of at least 28 px, so 8x8 digits stay visible)."""
    x = _to_uint8(images)
    n, c, h, w = x.shape
    if n == 0:
        raise ValueError("no images to tile")
    if scale is None:
        scale = max(1, -(-28 // min(h, w)))
    if scale > 1:
        x = x.repeat(scale, axis=2).repeat(scale, axis=3)
        h, w = h * scale, w * scale
    ncol = max(1, min(int(nrow), n))
    nrows = -(-n // ncol)
    grid = np.full(
        (padding + nrows * (h + padding), padding + ncol * (w + padding), c), pad_value, dtype=np.uint8
    )
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    return grid


def _save_array(grid: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(grid[:, :, 0] if grid.shape[2] == 1 else grid))  # L / RGB
    img.save(path, format="PNG")
    return path


def save_image_grid(
    images: Any, path: str | os.PathLike, nrow: int = 8, padding: int = 2, scale: int | None = None
) -> Path:
    """Write a grid of images (uint8 or float in [0, 1], ``N x C x H x W``) as a PNG."""
    return _save_array(image_grid(images, nrow=nrow, padding=padding, scale=scale), path)


GRID_WIDTH = 384  # px a captioned grid aims at (nearest-neighbour upscaling by a whole factor)
GRID_BORDER, GRID_BORDER_COLOUR = 2, (70, 110, 170)  # blue lines between tiles: apart whatever their grey
CAPTION_PX = 14


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's embedded TrueType font (FreeType): no file, no download
    except (TypeError, ValueError, OSError, ImportError):  # a Pillow built without FreeType: the bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` px, broken at its `` · `` separators."""
    lines: list[str] = []
    for part in text.split(" · "):
        if lines and font.getlength(f"{lines[-1]} · {part}") <= width:
            lines[-1] = f"{lines[-1]} · {part}"
        else:
            lines.append(part)
    return lines


def captioned_grid(
    images: Any, caption: str, nrow: int = 8, width: int = GRID_WIDTH, border: int = GRID_BORDER
) -> Image.Image:
    """A review grid as an RGB PIL image: ``N x C x H x W`` images (C = 1 or 3; uint8 or float in [0, 1])
    tiled ``nrow`` per row, each upscaled by the whole factor (nearest neighbour, >= 1) that brings the tiles'
    width closest to ``width`` px, with ``border``-px lines in ``GRID_BORDER_COLOUR`` between tiles (visible
    on black, white and grey samples alike) and ``caption`` (e.g. ``vae v3 · run 1a2b3c4d · seed 0 ·
    epoch 3/20``) in a white band above, wrapped at `` · `` when wider than the grid.
    Raises ValueError for other shapes or no images."""
    from PIL import ImageDraw

    x = _to_uint8(images)
    ncol = max(1, min(int(nrow), len(x)))
    scale = max(1, round(width / (ncol * x.shape[3])))
    grid = image_grid(x, nrow=ncol, padding=border, scale=scale)
    if grid.shape[2] == 1:
        grid = np.repeat(grid, 3, axis=2)
    inside = image_grid(np.full((len(x), 1, *x.shape[2:]), 255, np.uint8), nrow=ncol, padding=border, scale=scale)
    grid[inside[:, :, 0] == 0] = GRID_BORDER_COLOUR
    tiles = Image.fromarray(np.ascontiguousarray(grid), "RGB")
    font = _font(CAPTION_PX)
    lines = _wrap(caption, font, tiles.width - 8) if caption else []
    line_h = CAPTION_PX + 4
    band = 6 + line_h * len(lines) if lines else 0
    out = Image.new("RGB", (tiles.width, tiles.height + band), (255, 255, 255))
    out.paste(tiles, (0, band))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * line_h), line, fill=(0, 0, 0), font=font)
    return out


def save_captioned_grid(images: Any, path: str | os.PathLike, caption: str, nrow: int = 8,
                        width: int = GRID_WIDTH) -> Path:
    """Write :func:`captioned_grid` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    captioned_grid(images, caption, nrow=nrow, width=width).save(path, format="PNG")
    return path


def save_interpolation_strip(
    images: Any, path: str | os.PathLike, padding: int = 2, scale: int | None = None
) -> Path:
    """Write interpolations as a PNG: ``steps x C x H x W`` gives one strip, and
    ``rows x steps x C x H x W`` one strip per row (e.g. several latent pairs)."""
    x = np.asarray(images)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5:
        raise ValueError(f"expected steps x C x H x W or rows x steps x C x H x W, got shape {x.shape}")
    rows, steps = x.shape[:2]
    return save_image_grid(x.reshape(rows * steps, *x.shape[2:]), path, nrow=steps, padding=padding, scale=scale)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def _as_sets(scores_anomalous: Any) -> dict[str, np.ndarray]:
    if isinstance(scores_anomalous, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in scores_anomalous.items()}
    return {"anomalous": np.asarray(scores_anomalous, dtype=np.float64).ravel()}


def save_roc_curve(
    scores_normal: Any,
    scores_anomalous: Any,
    path: str | os.PathLike,
    title: str | None = None,
    fpr_target: float | None = None,
) -> dict[str, float]:
    """Write the ROC curve(s) as a PNG; higher score = more anomalous.

    ``scores_anomalous`` is one array or a ``{name: scores}`` dict (one curve each, e.g. per
    corruption kind). Returns ``{name: auroc}``.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    normal = np.asarray(scores_normal, dtype=np.float64).ravel()
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    aurocs = {}
    for name, anomalous in _as_sets(scores_anomalous).items():
        y = np.concatenate([np.zeros(normal.size), np.ones(anomalous.size)])
        s = np.concatenate([normal, anomalous])
        fpr, tpr, _ = roc_curve(y, s)
        aurocs[name] = float(roc_auc_score(y, s))
        ax.plot(fpr, tpr, label=f"{name} (AUROC {aurocs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    if fpr_target is not None:
        ax.axvline(fpr_target, color="red", linestyle=":", linewidth=1, label=f"FPR {fpr_target:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    return aurocs


LOG_AXIS_DECADES = 2.0  # positive scores spanning more than this many powers of ten get a log x axis


def score_axis_scale(*score_sets: Any) -> str:
    """``"log"`` when every finite score is > 0 and max / min exceeds 10 ** LOG_AXIS_DECADES (NLL-like scores of
    clean vs. noisy images often differ by orders of magnitude: on a linear axis the normal ones are one bar),
    else ``"linear"``."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in score_sets]) if score_sets else np.empty(0)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() <= 0:
        return "linear"
    return "log" if np.log10(values.max() / values.min()) > LOG_AXIS_DECADES else "linear"


def save_score_histograms(
    scores_normal: Any,
    scores_anomalous: Any,
    path: str | os.PathLike,
    threshold: float | None = None,
    bins: int = 50,
    title: str | None = None,
    xlabel: str = "anomaly score",
) -> Path:
    """Write overlaid histograms of normal vs anomalous scores (density-normalised) as a PNG,
    with the operating threshold as a vertical line when given. ``scores_anomalous``: one array
    or a ``{name: scores}`` dict. The x axis is logarithmic (log-spaced bins) when the scores span more
    than two decades (:func:`score_axis_scale`), linear otherwise."""
    normal = np.asarray(scores_normal, dtype=np.float64).ravel()
    sets = _as_sets(scores_anomalous)
    everything = np.concatenate([normal, *sets.values()])
    everything = everything[np.isfinite(everything)]
    lo, hi = (float(everything.min()), float(everything.max())) if everything.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    scale = score_axis_scale(everything)
    edges = np.geomspace(lo, hi, bins + 1) if scale == "log" else np.linspace(lo, hi, bins + 1)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for name, s in {"normal": normal, **sets}.items():
        if scale == "log":  # log-spaced bins: each bar is a share of the set (a density would favour narrow bins)
            ax.hist(s, bins=edges, weights=np.full(s.size, 1.0 / max(s.size, 1)), alpha=0.5, label=name)
        else:
            ax.hist(s, bins=edges, density=True, alpha=0.5, label=name)
    if threshold is not None:
        ax.axvline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
    ax.set_xscale(scale)
    ax.set_xlabel(f"{xlabel} (log scale)" if scale == "log" else xlabel)
    ax.set_ylabel("share of scores per bin" if scale == "log" else "density")
    ax.set_title(title or "anomaly scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)
