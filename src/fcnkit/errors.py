"""The exceptions fcnkit raises for a caller's mistake.

Every one is a ``ValueError`` (so ``except ValueError`` keeps working) and carries one sentence that names the
argument or file, what was expected, what was found, and the fix. The CLI prints it as ``fcnkit: error: …`` and
exits with status 2.
"""

from __future__ import annotations


class FcnkitError(ValueError):
    """Base class of every error fcnkit raises for bad input."""


class ModelError(FcnkitError):
    """An unknown model name, a bad model option, or a model that cannot do what was asked."""


class InputError(FcnkitError):
    """A bad image, array or argument given to an inference or conversion function."""


class DataError(FcnkitError):
    """A dataset spec, folder, image or mask that cannot be used for training or evaluation."""


class CheckpointError(FcnkitError):
    """A checkpoint that is missing, corrupted, unsafe, or does not fit what it is used for."""


class NotExactError(FcnkitError):
    """A model whose output depends on the whole image, so tiled inference cannot equal the whole-image run."""


class ConversionError(FcnkitError):
    """A classifier layer that convolutionalization cannot turn into an equivalent convolution."""


class OutputError(FcnkitError):
    """An output location that exists already, cannot be written, or has the wrong shape."""


class DiskFullError(OutputError):
    """The device filled up (ENOSPC, or a quota: EDQUOT) while a file was written; ``path`` names the file.

    What was written before stays consistent (atomic replacement, journals), so the same command continues once
    space is freed: ``fcnkit train``/``predict`` with ``--resume``, any other command simply run again.
    """

    def __init__(self, path: object, detail: str = "") -> None:
        self.path = path
        self.headline = f"no space left on device while writing {path}{detail}"
        super().__init__(f"{self.headline}; free space there (or choose another output location) and run the same "
                         f"command again")
