"""What it costs the kernel to hand this process memory, by how long ago that memory was freed.

On a virtual machine whose guest reports its free pages to the host (virtio-balloon free page reporting), memory a
process frees goes back to the host within seconds, and touching it again later makes the host back each page anew:
that time shows up as the guest's kernel (system) time of the process that touches it. This benchmark frees 1 GiB,
waits, touches 1 GiB again and reports the kernel seconds per GiB against the wait. On bare metal (or a VM without
free page reporting) every row costs about the same: the kernel zeroing the pages.

It bounds what the out-of-core run can reach (``tiling.py``, the 20,480² BigTIFF): whatever a run touches for the
first time, its peak working set at least, costs that much of kernel time however well memory is reused afterwards.

    python benchmarks/first_touch.py                  # waits 0, 0.5, 2, 5, 10, 20 s, twice each
    python benchmarks/first_touch.py --gib 0.5 --waits 0 5
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import markdown_table, write_results  # noqa: E402

WAITS = (0.0, 0.5, 2.0, 5.0, 10.0, 20.0)
FREE_PAGE_REPORTING = Path("/sys/bus/virtio/drivers/virtio_balloon")


def touch(nbytes: int) -> tuple[float, float, int]:
    """``(wall s, kernel s, minor faults)`` to allocate ``nbytes`` with numpy and write every byte, then free it."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    block = np.ones(nbytes, np.uint8)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    del block
    return seconds, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def measure(gib: float = 1.0, waits: Sequence[float] = WAITS, repeats: int = 2) -> list[dict]:
    """One row per (repeat, wait): the kernel seconds per GiB of touching memory freed ``wait`` seconds before."""
    nbytes = int(gib * 2**30)
    touch(nbytes)  # the first allocation of the process: whatever it finds
    rows = []
    for repeat in range(repeats):
        for wait in waits:
            touch(nbytes)  # freed now ...
            time.sleep(wait)  # ... and left alone this long
            seconds, kernel, faults = touch(nbytes)
            rows.append({"repeat": repeat, "wait_s": wait, "seconds": seconds, "kernel_s": kernel,
                         "kernel_s_per_gib": kernel / gib, "minor_faults": faults})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="memory touched per step (default 1 GiB)")
    parser.add_argument("--waits", type=float, nargs="+", default=list(WAITS), help="seconds between free and touch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--name", default="first_touch", help="results file benchmarks/results/NAME.json")
    args = parser.parse_args(argv)
    rows = measure(args.gib, args.waits, args.repeats)
    reporting = FREE_PAGE_REPORTING.exists()
    print(f"virtio-balloon driver present (free page reporting possible): {reporting}")
    print(markdown_table(rows, [("repeat", "repeat", "d"), ("wait_s", "freed before (s)", "g"),
                                ("seconds", "time (s)", ".2f"), ("kernel_s_per_gib", "kernel s / GiB", ".2f"),
                                ("minor_faults", "minor faults", "d")]))
    print(write_results(args.name, {"gib": args.gib, "virtio_balloon": reporting, "rows": rows}))


if __name__ == "__main__":
    main()
