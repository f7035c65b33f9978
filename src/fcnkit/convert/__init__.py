"""Convolutionalization: a classifier trained on fixed windows becomes an FCN that scores every window in one pass.

The first Linear after the flatten is a convolution whose kernel covers the whole final feature map; later Linears
are 1x1 convolutions (Long, Shelhamer & Darrell, "Fully Convolutional Networks", section 3.1). The result runs on
any image at least one window large and returns the classifier's scores for every full window at the network's
stride::

    fcn = convolutionalize(classifier, input_size=(32, 32))
    fcn(torch.zeros(1, 3, 64, 48)).shape       # (1, K, (64 - 32) // s + 1, (48 - 32) // s + 1)
    verify(classifier, fcn, image)             # max |FCN - classifier| over all full windows

``sliding_window`` is the slow reference that runs the classifier on every window. What each layer of the classifier
is comes from the operator table shared with the geometry analysis (:mod:`fcnkit.geometry.ops`); the plan, the
weight surgery and the graph rewrite are in :mod:`~fcnkit.convert.plan`, :mod:`~fcnkit.convert.surgery` and
:mod:`~fcnkit.convert.rewrite`; where the FCN is exact, and the warnings where it is not, in
:mod:`~fcnkit.convert.windows`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.func import functional_call

from fcnkit.convert.net import ConvolutionalizedNet
from fcnkit.convert.plan import plan_rewrite
from fcnkit.convert.reference import Verification, sliding_window, verify
from fcnkit.convert.rewrite import apply_plan
from fcnkit.convert.stitch import shift_and_stitch
from fcnkit.convert.windows import ConversionWarning, PaddingWarning, PartialWindowWarning, exact_window, warnings_for
from fcnkit.errors import ConversionError, InputError
from fcnkit.geometry.ops import trace
from fcnkit.layers import takes_0_255

__all__ = ["ConversionWarning", "ConvolutionalizedNet", "PaddingWarning", "PartialWindowWarning", "Verification",
           "convolutionalize", "shift_and_stitch", "sliding_window", "verify"]

# Input growth used to measure the stride: divisible by every stride built from 2**10, 3, 3, 5 and 7.
_PROBE = 2**10 * 3**2 * 5 * 7


def _check_size(input_size: Sequence[int]) -> tuple[int, int]:
    if (not isinstance(input_size, (tuple, list)) or len(input_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
        raise InputError(f"convolutionalize(input_size=...): expected (H, W), two positive integers (the window the "
                         f"classifier was trained on), got {input_size!r}.")
    return int(input_size[0]), int(input_size[1])


def _measure(body: fx.GraphModule, window: tuple[int, int], in_channels: int) -> tuple[tuple[int, int], bool]:
    """The output stride per axis, and whether ``body`` gives more positions than full windows for some size.

    Measured on shapes only: meta tensors, no arithmetic is done.
    """
    state = {k: v.to("meta") for k, v in [*body.named_parameters(), *body.named_buffers()]}

    def grid(height: int, width: int) -> tuple[int, int]:
        x = torch.empty(1, in_channels, height, width, device="meta")
        return tuple(functional_call(body, state, (x,)).shape[2:])  # type: ignore[return-value]

    base = grid(*window)
    grown = (grid(window[0] + _PROBE, window[1])[0], grid(window[0], window[1] + _PROBE)[1])
    strides = []
    for axis, name in enumerate(("height", "width")):
        steps = grown[axis] - base[axis]
        if steps <= 0 or _PROBE % steps:
            raise ConversionError(f"convolutionalize: cannot measure the network's stride along the {name} (the "
                                  f"output grid grew by {steps} rows for {_PROBE} more input rows); expected a "
                                  f"total stride that divides {_PROBE}, convert this network by hand.")
        strides.append(_PROBE // steps)
    # One period of sizes shows every case: the output grows by exactly one row per `stride` more input rows.
    crop = any(grid(window[0] + t, window[1])[0] != t // strides[0] + 1 or
               grid(window[0], window[1] + t)[1] != t // strides[1] + 1 for t in range(max(strides)))
    return (strides[0], strides[1]), crop


def _self_check(classifier: nn.Module, body: fx.GraphModule, window: tuple[int, int], in_channels: int) -> int:
    """Compare the FCN with the classifier on random windows (shapes only on the meta device); return the number of
    classes."""
    x = torch.rand(2, in_channels, *window, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, found = classifier(x), body(x)
    if found.shape != (*expected.shape, 1, 1):
        raise ConversionError(f"convolutionalize: at input_size {window} the converted network gives shape "
                              f"{tuple(found.shape)}, expected {(*expected.shape, 1, 1)}; the classifier has a layer "
                              f"convolutionalize misreads, convert it by hand.")
    if found.is_meta:  # a classifier built on the meta device (no weights yet): only shapes can be compared
        return expected.shape[1]
    diff = (found[:, :, 0, 0] - expected).abs().max().item()
    if diff > 1e-4 * (1.0 + expected.abs().max().item()):
        raise ConversionError(f"convolutionalize: at input_size {window} the converted network differs from the "
                              f"classifier by {diff:.3g}, expected equal scores; the classifier reorders or mixes "
                              f"features in a way convolutionalize misreads, convert it by hand.")
    return expected.shape[1]


def convolutionalize(classifier: nn.Module, *, input_size: Sequence[int], in_channels: int = 3
                     ) -> ConvolutionalizedNet:
    """Turn ``classifier`` ((N, C, H, W) -> (N, K) at ``input_size``) into an FCN: (N, C, H, W) -> (N, K, H', W').

    The classifier is copied (never changed) and traced with torch.fx, so ``nn.Sequential`` models and functional
    code (``F.relu``, ``torch.flatten(x, 1)``, ``x.view(x.size(0), -1)``) both work. Shape propagation at
    ``input_size`` gives the feature map (C, h, w) at the flatten; the first Linear becomes a Conv2d with kernel
    (h, w) (weights reshaped in the flatten's C-major order), later Linears 1x1 convolutions; activations,
    Dropout and BatchNorm1d (as BatchNorm2d) are carried over; a global average pool becomes an (h, w) average pool
    with stride 1; an ``AdaptiveAvgPool2d`` that is the identity at ``input_size`` is removed. A permute of the
    feature map before the flatten (``x.permute(0, 3, 2, 1)``, as in MTCNN's R-Net and O-Net, whose weights came
    from Caffe) is removed and the first Linear's weight columns permuted to match. Zero padding in the feature
    extractor gives a :class:`PaddingWarning`; a ``ceil_mode`` pooling whose last window is partial at
    ``input_size`` a :class:`PartialWindowWarning` naming the layer and the crop size on which the FCN is exact
    (``fcn.exact_window``); a layer that cannot be converted a ``ConversionError`` naming it.

    If the classifier has ``fcnkit_spec``, the result's spec adds ``"convolutionalized": {"input_size": [H, W]}``
    so that a checkpoint rebuilds it. The result is in the classifier's train/eval mode.

    >>> clf = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    >>> convolutionalize(clf, input_size=(8, 8))(torch.zeros(1, 3, 12, 10)).shape
    torch.Size([1, 10, 5, 3])
    """
    window = _check_size(input_size)
    if not isinstance(classifier, nn.Module):
        raise InputError(f"convolutionalize(classifier=...): expected a torch.nn.Module, got "
                         f"{type(classifier).__name__}; pass the classifier model.")
    spec = getattr(classifier, "fcnkit_spec", None)
    kind = {"onnx": "an ONNX model", "pt2": "a torch.export program"}.get(
        spec.get("format") if isinstance(spec, dict) else None)
    if kind is not None:  # fcnkit.loading's OnnxModel / ExportedModel: no layers to rewrite
        raise ConversionError(f"convolutionalize: expected a PyTorch classifier made of layers, found {kind} (from "
                              f"'{spec.get('path')}'), whose layers are gone; convolutionalize the .pt checkpoint "
                              f"it was exported from, then export the FCN.")
    training = classifier.training
    # Eval mode: shape propagation runs a batch of 2, which BatchNorm in training mode would update.
    reference = copy.deepcopy(classifier).eval()
    try:
        gm = trace(copy.deepcopy(reference), class_name=f"Convolutionalized{type(classifier).__name__}")
    except Exception as exc:  # fx reports untraceable code with several exception types
        raise ConversionError(
            f"convolutionalize: torch.fx cannot trace {type(classifier).__name__} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); expected a forward without "
            f"Python control flow on tensor values, rewrite that part or move it into a separate module."
        ) from exc
    x = torch.zeros(2, in_channels, *window, dtype=next(reference.parameters(), torch.zeros(())).dtype)
    try:
        # ShapeProp prints the traceback of a failing node to stderr before re-raising; the caller gets the
        # error below instead, and the CLI promises no traceback for a wrong --input-size
        with contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(x)
    except Exception as exc:  # whatever the classifier raises for a wrong size or channel count
        cause = exc.__cause__ if exc.__cause__ is not None else exc  # the layer's own error, not ShapeProp's
        raise ConversionError(f"convolutionalize: the classifier fails on a (2, {in_channels}, {window[0]}, "
                              f"{window[1]}) input ({type(cause).__name__}: {str(cause).splitlines()[0]}); pass "
                              f"the input_size and in_channels it was trained on.") from exc
    plan = plan_rewrite(gm)
    body = apply_plan(gm, plan)
    num_classes = _self_check(reference, body, window, in_channels)
    stride, crop = _measure(body, window, in_channels)
    # without padding or partial windows the FCN is exact on the classifier's own window
    exact = None if plan.padded is not None else exact_window(body, window) if plan.partial else window
    for warning in warnings_for(plan, window, exact):
        warnings.warn(warning, stacklevel=2)
    fcn = ConvolutionalizedNet(body, window=window, stride=stride, num_classes=num_classes, in_channels=in_channels,
                               crop=crop, exact_window=exact)
    # the traced body holds the classifier's Normalize as plain operations: say what it takes
    fcn.fcnkit_takes_0_255 = takes_0_255(classifier)
    spec = getattr(classifier, "fcnkit_spec", None)
    if spec is not None:
        fcn.fcnkit_spec = {**spec, "convolutionalized": {"input_size": list(window)}}
    return fcn.train(training)
