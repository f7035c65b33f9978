"""``fcnkit report``: an HTML report of a training run folder (settings, metrics, curves, geometry, pictures)."""

from __future__ import annotations

import argparse

HELP = "write the HTML report of a training run: settings, scores, training curves, geometry, sample pictures"
EXAMPLE = """
fcnkit report runs/fcn8s                       # writes runs/fcn8s/report.html
fcnkit report runs/fcn8s --out fcn8s-report.html
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a folder written by `fcnkit train` (metrics.jsonl, last.pt)")
    parser.add_argument("--out", help="the HTML file to write (default RUN_DIR/report.html, replaced if it exists)")


def run(args: argparse.Namespace) -> int:
    from fcnkit.reporting.run import report_for_run

    path = report_for_run(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0
