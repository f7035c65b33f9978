"""Geometry of a fully convolutional network: receptive field, output stride, input multiple, halo, locality.

``analyze`` reads the model's ``torch.fx`` graph (see :mod:`fcnkit.geometry.propagate`) without running it, so the full
134M-parameter FCN-8s analyzes in milliseconds. Where the graph cannot be traced or holds an operation without a
rule, the numbers come from measurements on a CPU copy instead (:func:`probe_radius` and shape/shift probes in
:mod:`fcnkit.geometry.probe`); ``Geometry.method`` and ``Geometry.probe_reason`` say which, and why. Non-local layers
are named either way. An error inside fcnkit's own rules is raised, never hidden behind the probe.

>>> import torch.nn as nn
>>> g = analyze(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1)))
>>> g.receptive_field, g.output_stride, g.input_multiple, g.halo
(8, 2, 2, 4)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch.fx as fx
import torch.nn as nn

import fcnkit.geometry.probe as _probe
from fcnkit.errors import ModelError
from fcnkit.geometry.ops import SPATIAL, WHOLE_IMAGE, nonlocal_module, trace
from fcnkit.geometry.probe import probe_radius
from fcnkit.geometry.propagate import GraphGeometry, analyze_graph
from fcnkit.geometry.state import Unreadable

__all__ = ["Geometry", "analyze", "probe_radius"]


@dataclass(frozen=True)
class Geometry:
    """How output pixels relate to input pixels (docs/design.md, "Exact tiling, the rule").

    ``receptive_field``: side of the input window one output pixel sees. ``output_stride``: input pixels per output
    pixel (1 for dense models). ``input_multiple``: D, tile origins and padded sizes must be multiples of it.
    ``halo``: context pixels each side for exact output, the receptive-field radius rounded up to a multiple of D.
    ``padding``: ``"same"`` (output covers the input at its stride) or ``"valid"`` (unpadded convolutions shrink
    it). ``local``: tiles can equal the whole-image run; if not, ``nonlocal_reason`` names the layer and why, and
    the numbers describe the model with that layer taken as point-wise (0 where nothing could be measured).
    ``method``: ``"traced"`` (read from the fx graph) or ``"probed"`` (measured with probe images); then
    ``probe_reason`` says why the graph could not be read. Neither takes part in ``==``: it compares the numbers.
    """

    receptive_field: int
    output_stride: int
    input_multiple: int
    halo: int
    padding: str
    local: bool
    nonlocal_reason: str | None = None
    method: str = field(default="traced", compare=False)
    probe_reason: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, e.g. for a checkpoint's ``"geometry"`` entry."""
        return asdict(self)


def analyze(model: nn.Module, *, in_channels: int = 3) -> Geometry:
    """Geometry of ``model`` for inputs (N, ``in_channels``, H, W).

    Reads the fx graph when the model traces; otherwise (or for an operation without a rule) measures a CPU copy
    in eval mode with probe images. Raises ``ModelError`` for a model without spatial layers or one that fails on
    the probe images.

    >>> import torch.nn as nn
    >>> analyze(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4))).nonlocal_reason
    "GroupNorm at '1' normalizes over the whole image; tiles cannot equal the whole-image run"
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"analyze: expected a torch.nn.Module, got {type(model).__name__}; "
                         "pass the model itself (e.g. fcnkit.build_model(...)).")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ModelError(f"analyze: expected in_channels to be a positive integer, got {in_channels!r}; "
                         "pass the number of channels of the model's input images.")
    program = getattr(model, "fcnkit_graph", None)
    read_why, read_reason = None, None
    if isinstance(program, fx.GraphModule):
        # an exported program's ATen graph (fcnkit.loading.ExportedModel): read as an eager model's fx graph is
        try:
            graph = analyze_graph(program)
        except Unreadable as exc:
            read_why = str(exc)
        else:
            if graph.unknown is None:
                return _read(graph, model)
            read_why = f"no geometry rule for {graph.unknown}"
            read_reason = graph.nonlocal_reason  # the operators it could read still name a non-local one
    stand_in = getattr(model, "fcnkit_probe_stand_in", None)
    if callable(stand_in):
        # Not a graph of torch layers (fcnkit.loading.OnnxModel runs onnxruntime, ExportedModel an ATen program):
        # measured on the stand-in it provides; when non-local, the operators it names from its own graph lead the
        # reason.
        geometry = _measured(stand_in(), in_channels, None)
        hint = read_reason or getattr(model, "nonlocal_operators", None)
        if not geometry.local and hint:
            geometry = replace(geometry, nonlocal_reason=f"{hint}; {geometry.nonlocal_reason}")
        why = read_why or getattr(model, "fcnkit_probe_reason", None) or "not a torch graph"
        return replace(geometry, method="probed", probe_reason=f"{type(model).__name__}: {why}")
    graph, why = None, None
    try:
        gm = trace(model)
    except Exception as exc:  # the model's own forward under torch.fx (data-dependent control flow, ...)
        why = f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {_first_line(exc)})"
    else:
        try:
            graph = analyze_graph(gm)  # an error of fcnkit's own rules propagates: it is a bug to fix, not to hide
        except Unreadable as exc:
            why = str(exc)
    if graph is not None and not graph.has_spatial_layers and not _has_spatial_module(model):
        raise _no_spatial(model)
    if graph is not None and graph.unknown is None:
        return _read(graph, model)
    if graph is not None:
        why = f"no geometry rule for {graph.unknown}"
    reason = graph.nonlocal_reason if graph is not None else _nonlocal_module(model)
    if not _has_spatial_module(model):
        raise _no_spatial(model)
    return replace(_measured(model, in_channels, reason), method="probed", probe_reason=why)


def _read(graph: GraphGeometry, model: nn.Module) -> Geometry:
    """The geometry a fully read graph gives."""
    stride = graph.output_stride
    if stride < 1 or stride.denominator != 1:
        raise ModelError(f"analyze: expected an output no larger than the input, got output stride {stride} "
                         f"for {type(model).__name__}; fcnkit tiles models whose output stride is a whole number.")
    return _geometry(graph.radius, graph.receptive_field, int(stride), graph.input_multiple, graph.padding,
                     graph.nonlocal_reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _geometry(radius: int, side: int, stride: int, multiple: int, padding: str, reason: str | None) -> Geometry:
    halo = math.ceil(radius / multiple) * multiple
    return Geometry(side, stride, multiple, halo, padding, reason is None, reason)


def _measured(model: nn.Module, in_channels: int, reason: str | None) -> Geometry:
    """Geometry from probe images, for models the graph analysis cannot follow."""
    try:
        net = _probe.cpu_copy(model)
        stride, padding = _probe.measure_stride(net, in_channels)
        reach = _probe.reach_of(net, in_channels, stride=stride)  # (before, after) the output pixel's own block
    except _probe.NoSpatialOutput as exc:
        if reason is None:
            reason = (f"{type(model).__name__} returns {exc} with no spatial axes: it is a classifier of whole "
                      f"images; convolutionalize it first")
        return Geometry(0, 0, 0, 0, "same", False, reason)
    except ModelError:
        if reason is None:
            raise
        return Geometry(0, 0, 0, 0, "same", False, reason)
    if reach is None:
        reason = reason or (f"{type(model).__name__}: changing input pixels {_probe.MAX_SIZE // 2} pixels away "
                            f"changes an output pixel (probe); the output depends on the whole image")
        return Geometry(_probe.MAX_SIZE, stride, stride, 0, padding, False, reason)
    radius = max(reach)
    multiple = _probe.measure_multiple(net, in_channels, stride, radius)
    if multiple is None:
        reason = reason or (f"{type(model).__name__}: shifting the image by up to {_probe.MAX_SHIFT} pixels "
                            f"does not shift the output (probe), so the model is not translation-equivariant")
        multiple = stride
    if padding == "valid":  # it reads only after its block: field s + before + after, context after = field - s
        return _geometry(sum(reach), stride + sum(reach), stride, multiple, padding, reason)
    return _geometry(radius, stride + 2 * radius, stride, multiple, padding, reason)


def _has_spatial_module(model: nn.Module) -> bool:
    return any(isinstance(m, SPATIAL) for m in model.modules())


def _no_spatial(model: nn.Module) -> ModelError:
    return ModelError(f"analyze: expected a convolutional model, got {type(model).__name__} with no spatial layers "
                      "(no convolution, pooling or up-sampling); fcnkit analyzes networks that take (N, C, H, W) "
                      "images.")


def _nonlocal_module(model: nn.Module) -> str | None:
    """The first non-local module in registration order (for models the graph analysis cannot read)."""
    flattened = False
    for name, m in model.named_modules():
        op = nonlocal_module(m)
        if op is not None:
            return f"{op.name} at '{name}' {op.reason}; {op.fix or WHOLE_IMAGE}"
        flattened = flattened or isinstance(m, nn.Flatten)
        if flattened and isinstance(m, nn.Linear):
            return (f"{type(m).__name__} at '{name}' mixes every position of the flattened feature map: the model "
                    f"is a classifier of fixed-size inputs; convolutionalize it first")
    return None
