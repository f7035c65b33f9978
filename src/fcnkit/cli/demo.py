"""``fcnkit demo``: train, convolutionalize, tile and report, end to end on the built-in digit scenes."""

from __future__ import annotations

import argparse

HELP = "run the end-to-end demo on the built-in digit scenes (offline, a few minutes on a CPU) and write a report"
EXAMPLE = """
fcnkit demo                          # everything under demo-output/, ends by printing where report.html is
fcnkit demo --out /tmp/demo --quick  # a short check (about a minute): tiny models, a 1024x1024 scene
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output",
                        help="output folder (default demo-output); a previous demo output there is replaced, "
                             "any other non-empty folder is refused")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: tiny widths, a few dozen steps, a 1024x1024 scene for tiling")


def run(args: argparse.Namespace) -> int:
    from fcnkit.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0
