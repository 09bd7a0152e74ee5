"""The one line per epoch the trainer logs (``genforge.train``, INFO): what Prefect's flow-run logs and the
console of ``genforge run`` show, while ``genforge stage train`` draws a rich progress bar instead."""
from __future__ import annotations

from typing import Mapping


def duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m:02d} min"


def epoch_line(family: str, epoch: int, epochs: int, losses: Mapping[str, float], elapsed: float,
               done_here: int) -> str:
    """``vae epoch 3/20 · loss 102.4 · 12.3 s elapsed · ETA 58.0 s``.

    ``epoch`` is 1-based; ``losses`` the epoch's mean losses; ``elapsed`` seconds since this process started
    training (after a resume, not counting the epochs before it) and ``done_here`` the epochs it has finished,
    so the ETA (remaining epochs x mean seconds per epoch so far) holds across resumes."""
    parts = [f"{family} epoch {epoch}/{epochs}", *(f"{k} {v:.4g}" for k, v in losses.items()),
             f"{duration(elapsed)} elapsed"]
    if epoch < epochs and done_here > 0:
        parts.append(f"ETA {duration(elapsed / done_here * (epochs - epoch))}")
    else:
        parts.append("done")
    return " · ".join(parts)
