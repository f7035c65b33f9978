"""What a long run prints while it runs (training steps, predicted tiles): a progress bar on a terminal, a line every
few seconds elsewhere.

A bar redrawn with carriage returns is right for a person watching a terminal, and wrong for a log file: a
redirected 1,500-step run wrote 307 KB of redraws. So ``mode="auto"`` draws the bar only when stderr is a terminal
and otherwise prints one plain line every ``interval`` seconds (count, rate, ETA and the caller's fields). Training's
validation scores are printed as a line whenever they are computed, in every mode except ``quiet``. Everything goes
to stderr.

>>> p = Progress("train unet", total=100, mode="lines", interval=0.0, stream=sys.stdout)
>>> p.update(50, loss="0.2500")  # doctest: +ELLIPSIS
train unet: step 50/100 (50%), ... step/s, ETA ..., loss 0.2500
>>> Progress("fcnkit predict", total=8, unit="tile", mode="lines", interval=0.0, stream=sys.stdout).update(
...     2, **{"MP/s": "1.5"})  # doctest: +ELLIPSIS
fcnkit predict: tile 2/8 (25%), ... tile/s, ETA ..., MP/s 1.5
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

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
    """Progress of a run of ``total`` units (steps, tiles), starting at ``initial`` (a resumed run).

    ``mode``: ``"bar"`` (tqdm), ``"lines"`` (a line every ``interval`` s), ``"off"`` (only validation lines),
    ``"auto"`` (bar on a terminal, else lines). ``quiet`` prints nothing at all.
    """

    def __init__(self, desc: str, *, total: int, initial: int = 0, mode: str = "auto", quiet: bool = False,
                 interval: float = 10.0, stream: TextIO | None = None, unit: str = "step") -> None:
        self.desc, self.total, self.quiet, self.interval, self.unit = desc, total, quiet, interval, unit
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = "off" if quiet else mode
        self.start_step, self.started = initial, time.perf_counter()
        self.last_line = self.started
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                            file=self.stream)

    def update(self, done: int, **fields: str) -> None:
        """``done`` units of ``total`` are finished; ``fields`` (name -> formatted value, e.g. ``loss="0.2500"``)
        follow the rate and ETA on the line, or sit in the bar's postfix."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(fields, refresh=False)
            return
        now = time.perf_counter()
        if self.mode != "lines" or (now - self.last_line < self.interval and done < self.total):
            return
        self.last_line = now
        rate = (done - self.start_step) / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        shown = "".join(f", {name} {value}" for name, value in fields.items())
        self._print(f"{self.desc}: {self.unit} {done}/{self.total} ({100 * done // max(self.total, 1)}%), "
                    f"{rate:.2f} {self.unit}/s, ETA {format_duration(eta) if eta != float('inf') else '?'}{shown}")

    def evaluation(self, step: int, scores: dict, *, accuracy: str = "pixel accuracy") -> None:
        """Print the validation scores computed at ``step`` (``accuracy`` names ``pixel_accuracy``: a classifier's
        is its window accuracy)."""
        if self.quiet:
            return
        shown = [f"{name} {scores[key]:.3f}" for key, name in (("mean_iu", "mean IU"), ("pixel_accuracy", accuracy))
                 if scores.get(key) is not None]
        self._print(f"{self.desc}: {self.unit} {step}/{self.total} validation: {', '.join(shown) or 'no scores'}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
