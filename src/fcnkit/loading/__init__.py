"""Open a model from a file, whoever wrote it: ``fcnkit.load_model(path)``.

- ``.onnx``: any ONNX model with one (N, C, H, W) input, run by onnxruntime behind :class:`OnnxModel` (an
  ``nn.Module`` that takes float NCHW tensors and returns its first output as a tensor);
- ``.safetensors``: a file written by ``fcnkit export --format safetensors``;
- ``.pt2``: a torch.export program (``fcnkit export --format pt2`` or any other with one (N, C, H, W) input), behind
  :class:`ExportedModel`; a file that would make torch unpickle anything but plain tensors is refused;
- anything else: an fcnkit ``.pt`` checkpoint (read with ``torch.load(weights_only=True)``).

An ONNX model is not a torch graph (nor is a ``.pt2`` program one fcnkit's layer rules read: its operators are
ATen's), so ``fcnkit.analyze`` measures its geometry with probe images (a NaN put into
the input shows exactly which outputs it reaches, :mod:`fcnkit.geometry.probe`). onnxruntime's max-pooling keeps a
NaN only when it is the last value of its window, so the probes run on a stand-in graph whose ``MaxPool`` nodes are
``AveragePool`` nodes of the same window, stride, padding and rounding: the same pixels reach the same outputs, and
every NaN shows. Operators that read the whole image (global pooling, a mean over the spatial axes, instance/layer/
group normalisation, attention) are named from the graph when the probe finds the output non-local.

>>> model = load_model("fcn8s.onnx")  # doctest: +SKIP
>>> fcnkit.predict_tiled(model, image, output="labels")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from fcnkit.loading.onnx_model import OnnxModel
from fcnkit.loading.program import ExportedModel

__all__ = ["ExportedModel", "OnnxModel", "load_model"]


def load_model(path: str | os.PathLike, *, map_location: Any = "cpu") -> nn.Module:
    """The model in ``path``, in eval mode: an fcnkit ``.pt`` checkpoint, an fcnkit ``.safetensors`` export, any
    ``.onnx`` model or any ``.pt2`` torch.export program (see the module docstring). Raises ``CheckpointError``
    naming the file for anything else."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxModel(path)
    if suffix == ".pt2":
        return ExportedModel(path)
    if suffix == ".safetensors":
        from fcnkit.export import load_safetensors

        return load_safetensors(path)
    from fcnkit.checkpoint import load_checkpoint

    return load_checkpoint(path, map_location=map_location)
