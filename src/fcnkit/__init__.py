"""fcnkit: fully convolutional networks, from layers to exact inference on images of any size.

The public names are imported lazily, so ``import fcnkit`` stays cheap until a function is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fcnkit.errors import (
    CheckpointError,
    ConversionError,
    DataError,
    FcnkitError,
    InputError,
    ModelError,
    NotExactError,
    OutputError,
)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "list_models": "fcnkit.models",
    "build_model": "fcnkit.models",
    "analyze": "fcnkit.geometry.analysis",
    "Geometry": "fcnkit.geometry.analysis",
    "convolutionalize": "fcnkit.convert",
    "predict": "fcnkit.inference.tiled",
    "predict_tiled": "fcnkit.inference.tiled",
    "load_checkpoint": "fcnkit.checkpoint",
    "load_model": "fcnkit.loading",
}
_SUBMODULES = {
    "checkpoint", "convert", "data", "distributed", "export", "geometry", "inference", "io", "layers", "loading",
    "losses", "metrics", "models", "reporting", "training",
}

__all__ = [
    "CheckpointError", "ConversionError", "DataError", "FcnkitError", "InputError", "ModelError",
    "NotExactError", "OutputError", "__version__", *sorted(_LAZY),
]

if TYPE_CHECKING:
    from fcnkit.checkpoint import load_checkpoint
    from fcnkit.convert import convolutionalize
    from fcnkit.geometry.analysis import Geometry, analyze
    from fcnkit.loading import load_model
    from fcnkit.models import build_model, list_models
    from fcnkit.inference.tiled import predict, predict_tiled


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"fcnkit.{name}")
    else:
        raise AttributeError(f"module 'fcnkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
