"""Helpers shared by the benchmarks: each variant in its own subprocess (so peak RSS is its own), timing, tables.

A variant is a Python function ``module:function`` taking keyword arguments (JSON-able) and returning a dict; the
child process adds ``peak_rss_bytes`` (``ru_maxrss``, the kernel's high-water mark of the process) and prints one
JSON line, which :func:`run_isolated` parses.

    row = run_isolated("benchmarks.tiling:whole", size=1024)   # {"seconds": ..., "peak_rss_bytes": ...}
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"  # git-ignored: generated inputs and outputs
RESULTS = ROOT / "benchmarks" / "results"
_MARK = "FCNKIT-BENCH-RESULT "


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call, by the monotonic high-resolution clock."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, Any, float, float]:
    """``(seconds, result, user_s, system_s)`` of one call: wall time, and the CPU time of all of this process's
    threads in user and in kernel mode during it (``getrusage``)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds, result = timed(fn)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return seconds, result, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def run_isolated(target: str, *, timeout: float | None = None, env: dict[str, str] | None = None,
                 **kwargs: Any) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh Python process; its dict result plus ``peak_rss_bytes``."""
    code = f"import benchmarks.common as c; c._child({target!r}, {json.dumps(kwargs)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{target} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(_MARK):])


def _child(target: str, kwargs_json: str) -> None:
    module, name = target.split(":")
    result = getattr(importlib.import_module(module), name)(**json.loads(kwargs_json))
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(_MARK + json.dumps(result), flush=True)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows ("x86_64" at worst)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_precisions() -> list[str]:
    """The precisions a benchmark times unless told: fp32, and bf16 where the CPU has it natively (elsewhere PyTorch
    emulates bf16, ~9x slower than fp32, which would measure the emulation)."""
    import torch

    from fcnkit.hardware import native_bf16

    return ["fp32", "bf16"] if native_bf16(torch.device("cpu")) else ["fp32"]


def machine() -> dict:
    """Where the numbers come from: the CPU by name and by the widest vector unit PyTorch uses (AVX2, AVX512, ...;
    bf16 runs natively only with AMX or AVX512-BF16)."""
    import torch

    from fcnkit.hardware import native_bf16

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(torch.device("cpu")), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec); a missing value prints as an em dash."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join("—" if row.get(k) is None else format(row[k], f) for k, _, f in columns) + " |"
            for row in rows]
    return "\n".join([head, rule, *body])


def write_results(name: str, data: dict) -> Path:
    """``benchmarks/results/<name>.json``, with the machine description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path
