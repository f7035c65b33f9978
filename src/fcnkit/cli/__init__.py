"""The ``fcnkit`` command line.

Each subcommand lives in a module of this package that defines ``HELP`` (one line), ``EXAMPLE`` (shown by
``--help``), ``add_arguments(parser)`` and ``run(args) -> int``; a module that also defines ``STOP_UNIT`` ("step",
"tile") stops on SIGINT/SIGTERM after the current unit, saves, and prints how to continue (exit 130/143). A user's
mistake ends as one line, ``fcnkit: error: …``, and exit status 2; a traceback means a bug in fcnkit.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import re
import shlex
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

from fcnkit import __version__
from fcnkit.errors import DiskFullError, FcnkitError
from fcnkit.signals import GracefulStop, Interrupted

# The order `fcnkit --help` lists them in; a module found but not named here is listed after these.
ORDER = ("demo", "scene", "train", "eval", "report", "predict", "convert", "heatmap", "inspect", "export")


class _Parser(argparse.ArgumentParser):
    """argparse, but errors read ``fcnkit: error: …`` like every other fcnkit error."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._words = list(sys.argv[1:] if args is None else args)  # for error(): the words this parser was given
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"fcnkit: error: {where}{self._dash_value(message) or message}\n")

    def _dash_value(self, message: str) -> str | None:
        """argparse takes a value that starts with '-' (``--memory-limit -1GB``) for the next option and says only
        "expected one argument": name the word it skipped and how to pass it."""
        found = re.fullmatch(r"argument (\S+): expected one argument", message)
        words = getattr(self, "_words", [])
        flags = found.group(1).split("/") if found else []
        for i, word in enumerate(words[:-1]):
            if word in flags and words[i + 1].startswith("-"):
                value = words[i + 1]
                return (f"argument {found.group(1)}: expected a value, found {value!r}, which starts with '-' and so "
                        f"reads as an option; to pass it as the value, write {word}={value}")
        return None


def _commands() -> dict[str, ModuleType]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "run") and hasattr(module, "add_arguments"):
            found[info.name] = module
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fcnkit",
        description="Fully convolutional networks: train on patches, predict exactly on images of any size.",
        epilog="Run `fcnkit COMMAND --help` for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"fcnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _commands().items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog="example:\n  " + module.EXAMPLE.strip().replace("\n", "\n  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _stop_unit=getattr(module, "STOP_UNIT", None))
    return parser


def main(argv: list[str] | None = None) -> int:
    # PyTorch backs CPU buffers of 2 MB and more with transparent huge pages when this is set before its first
    # allocation: a big tile's activations then fault in 512 times fewer pages (20,480² BigTIFF -> OME-Zarr: kernel
    # CPU 35.8 -> 22.0 s, wall 44.4 -> 38.1 s, README). THP_MEM_ALLOC_ENABLE=0 in the environment keeps 4 KiB pages.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # a command with STOP_UNIT stops on SIGINT/SIGTERM at a safe point and says how to continue
        with GracefulStop(unit=args._stop_unit) if args._stop_unit else contextlib.nullcontext(), _warnings_once():
            return int(args._run(args) or 0)
    except DiskFullError as exc:
        if not hasattr(args, "resume"):
            print(f"fcnkit: error: {exc}", file=sys.stderr)
        else:  # what was written is consistent: --resume continues where the disk filled up
            print(f"fcnkit: error: {exc.headline}; free space there and run the same command with --resume:\n"
                  f"  {continue_command(argv, resume=True)}", file=sys.stderr)
        return 2
    except FcnkitError as exc:
        print(f"fcnkit: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        how = "at once by a second" if exc.immediate else "by"
        saved = exc.saved or "nothing was saved yet"
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 saves and speaks for all ranks
            print(f"fcnkit: stopped {how} {exc.signal_name}; {saved}\nfcnkit: to continue, run: "
                  f"{continue_command(argv, resume=exc.resumable)}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("fcnkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fcnkit inspect --json | head`: the reader has gone, nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's final flush of stdout does not fail again
        os.close(devnull)
        return 141  # 128 + SIGPIPE, as a shell reports a command its pipe closed


@contextlib.contextmanager
def _warnings_once() -> Iterator[None]:
    """Show each warning a command raises as one ``fcnkit: warning: ...`` line on stderr, once per message (the
    library warns where it decides, e.g. once for the plan and once for the run; a user wants it said once)."""
    shown: set[tuple[type, str]] = set()
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        key = (category, str(message))
        if key in shown:
            return
        shown.add(key)
        kind = "" if category is UserWarning else f" ({category.__name__})"
        print(f"fcnkit: warning{kind}: {message}", file=sys.stderr if file is None else file)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def continue_command(argv: list[str], *, resume: bool) -> str:
    """The command line that continues an interrupted ``fcnkit ARGV``: with ``--resume`` (and without
    ``--overwrite``, which would start again) when something was saved, else the same command."""
    if resume:
        argv = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    return shlex.join(["fcnkit", *argv])


if __name__ == "__main__":
    sys.exit(main())
