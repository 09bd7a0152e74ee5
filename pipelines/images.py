"""Image files as they come, for the `folder:` source: what is read, how each file becomes uint8 pixels, and
how one data set gets one channel count and one size.

- Files: hidden and OS files (dotfiles, AppleDouble `._*`, `.DS_Store`, `Thumbs.db`, `desktop.ini`,
  `__MACOSX/`) are skipped. Everything else is checked with `stat` before it is opened: a FIFO, device or
  socket, an unreadable file, a broken symlink, or a symlink leaving the source folder (unless
  `data.follow_symlinks`) is refused in one line naming it, so a FIFO named `x.png` never hangs prepare.
- Pixels: EXIF orientation applied (`PIL.ImageOps.exif_transpose`), so pixels are as a viewer shows them.
  Modes 1, L, P, RGB, CMYK, YCbCr, LAB, HSV are 8-bit; I;16* and I are 16-bit (0..65535, scaled by 1/257);
  F is float in [0, 1] (scaled by 255). Transparency (LA, La, PA, RGBA, RGBa, P or L/RGB with a tRNS
  entry) is composited onto `data.background` (default white: dark ink on a transparent background, the
  common case for drawings and exported glyphs, stays visible, and it is what a viewer shows). An image
  whose content is only in its alpha channel and the colour of the background is refused, naming the file.
- Decompression bombs (PIL's DecompressionBombWarning and Error, above `Image.MAX_IMAGE_PIXELS`) are refused.
- Channels (`data.channels`): auto gives 3 when any image has colour (a pixel whose R, G, B differ), else 1;
  1 converts colour to grey with PIL's ITU-R 601-2 luma; 3 repeats grey images on three channels.
- Sizes (`data.image_size`, `data.resize`): unset, images of different sizes are refused naming two of
  them; set, every image is brought to H x W by `resize` (stretch), `center_crop` (`ImageOps.fit`: scale to
  cover, crop the centre) or `pad` (`ImageOps.pad`: scale to fit, pad with the background), LANCZOS.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from contracts.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
OS_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "$recycle.bin", "system volume information"}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


@dataclass(frozen=True)
class ImageOptions:
    """How `folder:` images become arrays (the `data.*` settings of pipelines/settings/sections.py)."""

    background: tuple[int, int, int] = (255, 255, 255)
    channels: Any = "auto"                  # "auto" | 1 | 3
    image_size: tuple[int, int] | None = None  # (H, W)
    resize: str = "resize"                  # resize | center_crop | pad
    follow_symlinks: bool = False

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> "ImageOptions":
        """From params.yaml's `data` section (checked by pipelines.settings.DataSettings; its defaults are these)."""
        d = cls()
        return cls(background=background_rgb(data.get("background", 255)), channels=data.get("channels", d.channels),
                   image_size=size_hw(data.get("image_size")), resize=data.get("resize", d.resize),
                   follow_symlinks=bool(data.get("follow_symlinks", d.follow_symlinks)))

    def record(self, channels: int, shape: tuple[int, int]) -> dict[str, Any]:
        """What meta.json records about the decoding (`image_files`)."""
        bg = self.background
        return {"background": bg[0] if bg[0] == bg[1] == bg[2] else list(bg), "channels_policy": self.channels,
                "channels": channels, "image_size": list(shape), "size_policy": self.resize if self.image_size
                else "refuse different sizes", "exif_transpose": True, "follow_symlinks": self.follow_symlinks}


def background_rgb(value: Any) -> tuple[int, int, int]:
    """`data.background` (a grey level 0..255, [r, g, b], or a colour name/`#rrggbb` PIL knows) -> (r, g, b)."""
    from PIL import ImageColor

    if isinstance(value, bool):
        raise ValueError(f"expected a grey level 0..255, [r, g, b] or a colour name, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 255:
            raise ValueError(f"grey level {value} is outside 0..255")
        return (value, value, value)
    if isinstance(value, (list, tuple)):
        if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
            raise ValueError(f"expected [r, g, b] with each in 0..255, got {list(value)!r}")
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    if isinstance(value, str):
        try:
            return tuple(ImageColor.getrgb(value)[:3])  # type: ignore[return-value]
        except ValueError:
            raise ValueError(f"{value!r} is not a colour (use a grey level 0..255, [r, g, b], "
                             f"a name such as 'white' or '#rrggbb')") from None
    raise ValueError(f"expected a grey level 0..255, [r, g, b] or a colour name, got {value!r}")


def size_hw(value: Any) -> tuple[int, int] | None:
    """`data.image_size` (null, N for N x N, or [H, W]) -> (H, W) or None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return (value, value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"expected null, a size N >= 1 (N x N) or [height, width], got {value!r}")


# ---- which entries are images -------------------------------------------------------------
def is_os_file(name: str) -> bool:
    """Hidden files and what file managers leave beside images (.DS_Store, ._x, Thumbs.db, __MACOSX, ...)."""
    return name.startswith(".") or name.lower() in OS_FILES


def entries(folder: Path) -> list[Path]:
    """A folder's entries that are not hidden or OS files, sorted by name."""
    try:
        return sorted(p for p in folder.iterdir() if not is_os_file(p.name))
    except OSError as exc:
        raise DataError(folder, f"cannot list the folder ({exc.strerror or exc})") from exc


def check_entry(path: Path, top: Path, follow_symlinks: bool) -> os.stat_result:
    """`stat` of a folder entry after the checks that need no opening: symlinks leaving `top` (the resolved
    source folder), broken links, and anything that is not a regular file or folder. Never opens the file."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise DataError(path, "broken symlink (its target does not exist)") from None
        if not follow_symlinks and not target.is_relative_to(top):
            raise DataError(path, f"symlink to {target}, outside the source folder {top}; "
                                  f"set data.follow_symlinks: true to read it")
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from exc
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return st
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
            else "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "not a regular file")
    raise DataError(path, f"{kind}, not an image file; remove it from the source folder")


def check_image_file(path: Path, top: Path, follow_symlinks: bool) -> None:
    """Refuse (DataError) anything in a class folder that is not a readable regular image file."""
    st = check_entry(path, top, follow_symlinks)
    if stat.S_ISDIR(st.st_mode):
        raise DataError(path, "nested folder inside a class folder (expected image files only)")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(path, f"not an image file (suffix {path.suffix or 'none'!r}; expected "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    if not os.access(path, os.R_OK):
        raise DataError(path, "cannot read (permission denied)")


# ---- one file -> uint8 pixels -------------------------------------------------------------
def decode(path: Path, options: ImageOptions) -> np.ndarray:
    """One image file -> uint8 H x W x 3 (RGB), transparency composited, EXIF orientation applied, sized
    by the options. Raises DataError naming the file for anything it cannot read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                img.load()
                rgb = _to_rgb(path, img, options.background)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(path, f"refused as a possible decompression bomb ({exc})") from None
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(path, f"not a readable image ({exc.__class__.__name__}: {exc})") from exc
    return _sized(rgb, options) if options.image_size else rgb


def _to_rgb(path: Path, img: Any, background: tuple[int, int, int]) -> np.ndarray:
    mode = img.mode
    if mode in SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(path, f"pixel values out of range for a 16-bit image: min {arr.min()}, max "
                                  f"{arr.max()} (expected 0..65535)")
        return _grey(np.round(arr / 257.0).astype(np.uint8))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise DataError(path, f"{int((~np.isfinite(arr)).sum())} NaN/inf pixel(s) in a float image")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise DataError(path, f"pixel values out of range for a float image: min {arr.min():.4g}, "
                                  f"max {arr.max():.4g} (expected 0..1)")
        return _grey(np.round(arr * 255.0).astype(np.uint8))
    if mode in ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:] / 255.0
        out = np.round(rgba[..., :3] * alpha + np.asarray(background, np.float64) * (1.0 - alpha)).astype(np.uint8)
        if np.ptp(rgba[..., 3]) > 0 and np.ptp(out.reshape(-1, 3), axis=0).max() == 0:
            raise DataError(path, f"has transparency, and its content is only in the alpha channel, drawn in the "
                                  f"background colour {list(background)}: composited it would be blank; set "
                                  f"data.background to a contrasting colour (e.g. 0 for white ink)")
        return out
    if mode in ("1", "L"):
        return _grey(np.asarray(img.convert("L"), dtype=np.uint8))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _grey(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[:, :, None], 3, axis=2)


def _sized(rgb: np.ndarray, options: ImageOptions) -> np.ndarray:
    from PIL import Image, ImageOps

    h, w = options.image_size  # type: ignore[misc]
    if rgb.shape[:2] == (h, w):
        return rgb
    img, method = Image.fromarray(rgb, "RGB"), Image.Resampling.LANCZOS
    if options.resize == "center_crop":
        img = ImageOps.fit(img, (w, h), method=method)
    elif options.resize == "pad":
        img = ImageOps.pad(img, (w, h), method=method, color=options.background)
    else:
        img = img.resize((w, h), method)
    return np.asarray(img, dtype=np.uint8)


# ---- a data set's images -> one array -----------------------------------------------------
def has_colour(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def stack(images: list[np.ndarray], files: list[Path], options: ImageOptions) -> tuple[np.ndarray, dict[str, Any]]:
    """RGB H x W x 3 images -> uint8 N x C x H x W with one channel count and size, and what meta.json
    records about it. Different sizes with no `data.image_size` are refused naming two files."""
    from PIL import Image

    first = images[0].shape[:2]
    for im, f in zip(images, files):
        if im.shape[:2] != first:
            raise DataError(f, f"is {im.shape[1]}x{im.shape[0]} (W x H) but {files[0]} is {first[1]}x{first[0]}; "
                               f"images of one data set must share a size: set data.image_size (and "
                               f"data.resize: resize|center_crop|pad) or resize the files")
    colour = any(has_colour(im) for im in images)
    channels = (3 if colour else 1) if options.channels == "auto" else int(options.channels)
    if channels == 3:
        out = np.stack([im.transpose(2, 0, 1) for im in images])
    else:
        out = np.stack([np.asarray(Image.fromarray(im, "RGB").convert("L"))[None] if has_colour(im)
                        else im[None, :, :, 0] for im in images])
    return np.ascontiguousarray(out, dtype=np.uint8), options.record(channels, first)
