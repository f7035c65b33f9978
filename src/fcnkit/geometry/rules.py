"""Per-operation geometry rules for :mod:`fcnkit.geometry.propagate`.

Each rule turns one fx node into a ``Value`` (jump, and how an index range maps back to its inputs) or ``None`` for
a non-spatial value (a shape, a constant), and flags the operations that make the output depend on the whole image.
Index arithmetic, per axis, for an output index range ``[lo, hi]``:

- window ops (convolution, pooling): inputs ``[lo·s − p, hi·s − p + d·(k − 1)]``;
- transposed ops (ConvTranspose2d, MaxUnpool2d): inputs ``[⌈(lo + p − d·(k − 1))/s⌉, ⌊(hi + p)/s⌋]``;
- resampling by ``ratio = in/out``: nearest ``⌊o·ratio⌋``, bilinear/bicubic around ``(o + ½)·ratio − ½``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable

import torch.fx as fx
import torch.nn as nn

if TYPE_CHECKING:
    from fcnkit.geometry.propagate import _Propagation

WHOLE_IMAGE = "tiles cannot equal the whole-image run"
Back = Callable[[int, int], "tuple[int, int]"]  # needed index range of a tensor -> index range of one input


@dataclass
class Value:
    """A tensor with two spatial axes (``axes``), or whose space was flattened away (``axes is None``)."""

    jump: tuple[Fraction, Fraction]
    parents: list[tuple[fx.Node, tuple[Back, Back]]]
    axes: tuple[int, int] | None = (2, 3)


def identity(lo: int, hi: int) -> tuple[int, int]:
    return lo, hi


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window(k: int, s: int, p: int, d: int):
    return lambda lo, hi: (lo * s - p, hi * s - p + d * (k - 1))


def _transposed(k: int, s: int, p: int, d: int):
    return lambda lo, hi: (-((-(lo + p - d * (k - 1))) // s), (hi + p) // s)


def _shift(c: int):
    return lambda lo, hi: (lo + c, hi + c)


def _resample(ratio: Fraction, mode: str):
    if mode == "nearest":
        return lambda lo, hi: (math.floor(lo * ratio), math.floor(hi * ratio))
    if mode == "nearest-exact":
        return lambda lo, hi: (math.floor((lo + Fraction(1, 2)) * ratio), math.floor((hi + Fraction(1, 2)) * ratio))
    reach = 1 if mode == "bicubic" else 0  # bicubic reads one more sample each side than bilinear

    def back(lo: int, hi: int) -> tuple[int, int]:
        src_lo = (lo + Fraction(1, 2)) * ratio - Fraction(1, 2)
        src_hi = (hi + Fraction(1, 2)) * ratio - Fraction(1, 2)
        # the second sample is read even when its weight is 0 (whole src): a NaN there still reaches the output
        return math.floor(src_lo) - reach, math.floor(src_hi) + 1 + reach
    return back


def _bind(node: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments of ``node`` by name (fx keeps them as written)."""
    bound = dict(defaults)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


def _conv_like(prop: _Propagation, node: fx.Node, src: Any, k, s, p, d, transposed: bool, extra=()) -> Any:
    k, s, d = _pair(k), _pair(s), _pair(d)
    if isinstance(p, str):  # "same" pads d·(k−1)//2 before (PyTorch puts the odd pixel after)
        p = tuple((di * (ki - 1) // 2) if p == "same" else 0 for ki, di in zip(k, d))
    p = _pair(p)
    make = _transposed if transposed else _window
    backs = tuple(make(k[i], s[i], p[i], d[i]) for i in (0, 1))
    scale = tuple(Fraction(1, s[i]) if transposed else Fraction(s[i]) for i in (0, 1))
    return prop.derive(node, src, backs, scale, extra)


def _pool_value(prop: _Propagation, node: fx.Node, src: Any, k, s, p, d, return_indices: bool) -> Any:
    value = _conv_like(prop, node, src, k, s if s else k, p, d, transposed=False)
    return (value, value) if return_indices else value


def _resize(prop: _Propagation, node: fx.Node, src: Any, size: Any, scale: Any, mode: str, align: Any) -> Any:
    v = prop.value(src)
    if not isinstance(v, Value):
        return None
    if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic"):
        prop.unsupported(node, f"{mode} interpolation")
        return prop.merge(node, [src])
    if align:
        prop.flag(node, "interpolation with align_corners=True", f"scales by (H − 1)/(H' − 1), which depends on the "
                  f"image size; {WHOLE_IMAGE}")
    if scale is not None:
        ratios = tuple(Fraction(1) / Fraction(str(f)) for f in ((scale, scale) if not isinstance(scale, (list, tuple))
                                                                 else scale))
    else:
        target = _size_source(prop, size)
        if target is None:
            if isinstance(size, (int, tuple, list)) and all(isinstance(x, int) for x in _flat(size)):
                prop.flag(node, "interpolation to a fixed size", f"resizes the whole image to {size}; {WHOLE_IMAGE}")
            else:
                prop.unsupported(node, "interpolation to a computed size")
            return prop.merge(node, [src])
        ratios = tuple(target.jump[i] / v.jump[i] for i in (0, 1))
    backs = tuple(_resample(r, mode) for r in ratios)
    return prop.derive(node, src, backs, ratios)


def _flat(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _size_source(prop: _Propagation, size: Any):
    """The tensor whose spatial size ``size`` copies (``t.shape[2:]``, ``t.size()[-2:]``, ``(t.shape[2], t.shape[3])``)."""
    def tensor_of(n: Any) -> Any:
        if not (isinstance(n, fx.Node) and n.op in ("call_function", "call_method")):
            return None
        if n.target is getattr and n.args[1] == "shape" or n.op == "call_method" and n.target == "size":
            v = prop.value(n.args[0])
            return v if isinstance(v, Value) and not n.kwargs and len(n.args) == (2 if n.target is
                                                                                              getattr else 1) else None
        return None

    if isinstance(size, fx.Node) and size.target is operator.getitem and isinstance(size.args[1], slice):
        sl = size.args[1]
        if (sl.start in (2, -2)) and sl.stop in (None, 4) and sl.step is None:
            return tensor_of(size.args[0])
    if isinstance(size, (tuple, list)) and len(size) == 2:
        sources = []
        for i, n in enumerate(size):
            if not (isinstance(n, fx.Node) and n.target is operator.getitem and n.args[1] in (2 + i, -2 + i)):
                return None
            sources.append(tensor_of(n.args[0]))
        if sources[0] is not None and sources[0] is sources[1]:
            return sources[0]
    return None




# ---- modules ----------------------------------------------------------------------------------------------------
_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Identity, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.LocalResponseNorm, nn.ChannelShuffle,
)
ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
INSTANCE = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
BATCH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
             nn.TransformerDecoder, nn.Transformer)
_PADS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)


# subclasses of these keep their geometry: the tracer keeps them as single nodes (fcnkit's MaxUnpool checks shapes)
LEAVES = (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.MaxUnpool2d, nn.Upsample, nn.PixelShuffle,
          nn.PixelUnshuffle, nn.Flatten, nn.GroupNorm, nn.LayerNorm, nn.Linear, *_PADS, *ADAPTIVE, *INSTANCE, *BATCH,
          *ATTENTION, *_POINTWISE_MODULES)


def _module_rule(prop: _Propagation, node: fx.Node, m: nn.Module) -> Any:
    name = type(m).__name__
    x = node.args[0] if node.args else None
    if isinstance(m, nn.Conv2d):
        return _conv_like(prop, node, x, m.kernel_size, m.stride, m.padding, m.dilation, transposed=False)
    if isinstance(m, nn.ConvTranspose2d):
        return _conv_like(prop, node, x, m.kernel_size, m.stride, m.padding, m.dilation, transposed=True)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pool_value(prop, node, x, m.kernel_size, m.stride, m.padding, getattr(m, "dilation", 1),
                           getattr(m, "return_indices", False))
    if isinstance(m, nn.MaxUnpool2d):
        return _conv_like(prop, node, x, m.kernel_size, m.stride, m.padding, 1, transposed=True,
                          extra=node.args[1:2])
    if isinstance(m, nn.Upsample):
        return _resize(prop, node, x, m.size, m.scale_factor, m.mode, m.align_corners)
    if isinstance(m, nn.PixelShuffle):
        r = m.upscale_factor
        return prop.derive(node, x, (_resample(Fraction(1, r), "nearest"),) * 2, (Fraction(1, r),) * 2)
    if isinstance(m, nn.PixelUnshuffle):
        r = m.downscale_factor
        return prop.derive(node, x, (_window(r, r, 0, 1),) * 2, (Fraction(r),) * 2)
    if isinstance(m, _PADS):
        left, _, top, _ = m.padding
        return prop.derive(node, x, (_shift(-top), _shift(-left)), (Fraction(1),) * 2)
    if isinstance(m, nn.Flatten):
        return _flatten(prop, node, x, m.start_dim, m.end_dim)
    if isinstance(m, ADAPTIVE):
        prop.flag(node, name, f"pools the whole image to a fixed size; {WHOLE_IMAGE}")
    elif isinstance(m, nn.GroupNorm):
        prop.flag(node, name, f"normalizes over the whole image; {WHOLE_IMAGE}")
    elif isinstance(m, INSTANCE) and (m.training or not m.track_running_stats):
        prop.flag(node, name, f"normalizes each channel over the whole image; {WHOLE_IMAGE}")
    elif isinstance(m, BATCH) and (m.training or m.running_mean is None):
        why = "is in training mode" if m.training else "has no running statistics"
        prop.flag(node, name, f"{why}, so it normalizes with statistics of the whole batch and image; "
                  f"call model.eval() first")
    elif isinstance(m, nn.LayerNorm):
        _check_last_axes(prop, node, x, len(m.normalized_shape), name, "normalizes over")
    elif isinstance(m, nn.Linear):
        _linear(prop, node, x, name)
    elif isinstance(m, ATTENTION):
        prop.flag(node, name, f"attends over all positions of the image; {WHOLE_IMAGE}")
        merged = prop.merge(node, node.args)
        return (merged, None) if isinstance(m, nn.MultiheadAttention) else merged
    elif isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        _check_dims(prop, node, x, m.dim, name, "normalizes over")
    elif not isinstance(m, (*_POINTWISE_MODULES, *BATCH, *INSTANCE)):
        prop.unsupported(node, name)
    return prop.merge(node, node.args)


def _spatial(prop: _Propagation, x: Any) -> Value | None:
    v = prop.value(x)
    return v if isinstance(v, Value) else None


def _check_last_axes(prop: _Propagation, node: fx.Node, x: Any, count: int, what: str, verb: str) -> None:
    v = _spatial(prop, x)
    if v is not None and (v.axes is None or max(v.axes) >= 4 - count):
        prop.flag(node, what, f"{verb} its last {count} dimension(s), which include space; {WHOLE_IMAGE}")


def _check_dims(prop: _Propagation, node: fx.Node, x: Any, dims: Any, what: str, verb: str) -> None:
    v = _spatial(prop, x)
    if v is None:
        return
    dims = range(4) if dims is None else [d % 4 for d in _flat(dims)]
    if v.axes is None or set(dims) & set(v.axes):
        prop.flag(node, what, f"{verb} the spatial dimensions; {WHOLE_IMAGE}")


def _linear(prop: _Propagation, node: fx.Node, x: Any, what: str) -> None:
    v = _spatial(prop, x)
    if v is None:
        return
    if v.axes is None:
        prop.flag(node, what, "mixes every position of the flattened feature map: the model is a classifier "
                  "of fixed-size inputs; convolutionalize it first")
    elif 3 in v.axes:
        prop.flag(node, what, f"mixes the image's columns (it acts on the last axis of an (N, C, H, W) tensor); "
                  f"{WHOLE_IMAGE}")


def _flatten(prop: _Propagation, node: fx.Node, x: Any, start: int, end: int) -> Any:
    v = _spatial(prop, x)
    if v is None or v.axes is None:
        return prop.merge(node, [x])
    start, end = start % 4, end % 4
    if start <= max(v.axes) and end >= min(v.axes):
        return Value(v.jump, [(x, (identity, identity))], None)
    prop.unsupported(node, "flatten")
    return prop.merge(node, [x])
