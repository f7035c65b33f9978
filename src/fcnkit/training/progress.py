"""What a training run prints while it runs: a progress bar on a terminal, a line every few seconds elsewhere.

A bar redrawn with carriage returns is right for a person watching a terminal, and wrong for a log file: a
redirected 1,500-step run wrote 307 KB of redraws. So ``mode="auto"`` draws the bar only when stderr is a terminal
and otherwise prints one plain line every ``interval`` seconds (step, rate, ETA, loss). The validation scores are
printed as a line whenever they are computed, in every mode except ``quiet``. Everything goes to stderr.

>>> p = Progress("train unet", total=100, mode="lines", interval=0.0, stream=sys.stdout)
>>> p.update(50, loss=0.25)  # doctest: +ELLIPSIS
train unet: step 50/100 (50%), ... step/s, ETA ..., loss 0.2500
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``; ``9`` -> ``9s``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress of a run of ``total`` steps, starting at ``initial`` (a resumed run).

    ``mode``: ``"bar"`` (tqdm), ``"lines"`` (a line every ``interval`` s), ``"off"`` (only validation lines),
    ``"auto"`` (bar on a terminal, else lines). ``quiet`` prints nothing at all.
    """

    def __init__(self, desc: str, *, total: int, initial: int = 0, mode: str = "auto", quiet: bool = False,
                 interval: float = 10.0, stream: TextIO | None = None) -> None:
        self.desc, self.total, self.quiet, self.interval = desc, total, quiet, interval
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = "off" if quiet else mode
        self.start_step, self.started = initial, time.perf_counter()
        self.last_line = self.started
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            file=self.stream)

    def update(self, step: int, *, loss: float, **extra: Any) -> None:
        """Step ``step`` (1-based) finished with training loss ``loss``."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", **extra)
            return
        now = time.perf_counter()
        if self.mode != "lines" or (now - self.last_line < self.interval and step < self.total):
            return
        self.last_line = now
        done = step - self.start_step
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        self._print(f"{self.desc}: step {step}/{self.total} ({100 * step // self.total}%), {rate:.2f} step/s, "
                    f"ETA {format_duration(eta) if eta != float('inf') else '?'}, loss {loss:.4f}")

    def evaluation(self, step: int, scores: dict, *, accuracy: str = "pixel accuracy") -> None:
        """Print the validation scores computed at ``step`` (``accuracy`` names ``pixel_accuracy``: a classifier's
        is its window accuracy)."""
        if self.quiet:
            return
        shown = [f"{name} {scores[key]:.3f}" for key, name in (("mean_iu", "mean IU"), ("pixel_accuracy", accuracy))
                 if scores.get(key) is not None]
        self._print(f"{self.desc}: step {step}/{self.total} validation: {', '.join(shown) or 'no scores'}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
