"""Headless Chromium for the tests that look at a page as a reviewer does (`make browser` installs Debian's
`chromium`; without it those tests skip and say so)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
MISSING = "headless Chromium not installed (`make browser` runs apt-get install -y chromium)"


def chromium() -> str:
    """The Chromium binary, or skip the test with the reason."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    pytest.skip(MISSING)


def run(url: str, profile: Path, *, screenshot: Path | None = None, size: tuple[int, int] = (1280, 1600),
        budget_ms: int | None = None, timeout: float = 180) -> str:
    """Load ``url`` in a fresh profile: with ``screenshot`` save a PNG of the window, else return the DOM
    after load (``--dump-dom``). ``budget_ms``: virtual time for a JavaScript app to render."""
    args = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
    if budget_ms:
        args.append(f"--virtual-time-budget={budget_ms}")
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=timeout)
    if screenshot is not None and not screenshot.exists():
        raise AssertionError(f"chromium wrote no screenshot ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def not_blank(png: Path) -> tuple[float, float]:
    """(grey-level variance, share of pixels that are not near-white) of a screenshot."""
    from PIL import Image, ImageStat

    grey = Image.open(png).convert("L")
    hist = grey.histogram()
    return ImageStat.Stat(grey).var[0], 1.0 - sum(hist[240:]) / sum(hist)
