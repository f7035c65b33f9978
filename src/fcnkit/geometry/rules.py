"""Per-operation geometry rules for :mod:`fcnkit.geometry.propagate`, one per kind of :mod:`fcnkit.geometry.ops`.

Each rule turns one fx node into a ``Value`` (jump, and how an index range maps back to its inputs) or ``None`` for
a non-spatial value (a shape, a constant), and flags the operations that make the output depend on the whole image.
Index arithmetic, per axis, for an output index range ``[lo, hi]``:

- window ops (convolution, pooling): inputs ``[lo·s − p, hi·s − p + d·(k − 1)]``;
- transposed ops (ConvTranspose2d, MaxUnpool2d): inputs ``[⌈(lo + p − d·(k − 1))/s⌉, ⌊(hi + p)/s⌋]``;
- resampling by ``ratio = in/out``: nearest ``⌊o·ratio⌋``, bilinear/bicubic around ``(o + ½)·ratio − ½``.

Rules that track where the spatial axes are (flatten, permute, indexing, concatenation, reductions) are in
:mod:`fcnkit.geometry.layout`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable

import torch.fx as fx

import fcnkit.geometry.layout as layout
from fcnkit.geometry.aten import aten_op, exported_call, is_aten
from fcnkit.geometry.ops import WHOLE_IMAGE, Op, Window, classify
from fcnkit.geometry.state import Back, Propagation, Value, leaves


def apply(prop: Propagation, node: fx.Node) -> Any:
    """The value of ``node`` from the values of its arguments (see the module docstring)."""
    if not any(isinstance(prop.value(a), (Value, tuple)) for a in leaves(node.args, node.kwargs)):
        return None  # shape arithmetic, constants
    # an exported program's nodes call ATen operators (or its guard check): their own table
    op = aten_op(node, prop.gm) if is_aten(node) else exported_call(node) or classify(node, prop.gm)
    value = RULES[op.kind](prop, node, op)
    outputs = op.args.get("outputs", 1)
    # an operator that returns several tensors (ATen's max_pool2d_with_indices, native_batch_norm, ...): each
    # element, taken apart by getitem, covers what the value covers
    return (value,) * outputs if outputs > 1 and not isinstance(value, tuple) else value


def _window(k: int, s: int, p: int, d: int) -> Back:
    return lambda lo, hi: (lo * s - p, hi * s - p + d * (k - 1))


def _transposed(k: int, s: int, p: int, d: int) -> Back:
    return lambda lo, hi: (-((-(lo + p - d * (k - 1))) // s), (hi + p) // s)


def _shift(c: int) -> Back:
    return lambda lo, hi: (lo + c, hi + c)


def _resample(ratio: Fraction, mode: str) -> Back:
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


def _input(node: fx.Node) -> Any:
    return node.args[0] if node.args else node.kwargs.get("input")


def _window_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    w: Window = op.window  # type: ignore[assignment]
    make = _transposed if w.transposed else _window
    backs = (make(w.kernel[0], w.stride[0], w.padding[0], w.dilation[0]),
             make(w.kernel[1], w.stride[1], w.padding[1], w.dilation[1]))
    scale = tuple(Fraction(1, s) if w.transposed else Fraction(s) for s in w.stride)
    # MaxUnpool2d also reads the indices of its pooling
    extra = tuple(leaves(node.args[1:], node.kwargs)) if w.transposed else ()
    value = prop.derive(node, _input(node), backs, scale, extra)  # type: ignore[arg-type]
    return (value, value) if op.args.get("return_indices") else value


def _resample_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    src, a = _input(node), op.args
    v = prop.spatial_value(src)
    if v is None:
        return None
    mode = a["mode"]
    if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic"):
        prop.unsupported(node, f"{mode} interpolation")
        return prop.merge(node, [src])
    if a["align_corners"]:
        prop.flag(node, "interpolation with align_corners=True", f"scales by (H − 1)/(H' − 1), which depends on the "
                  f"image size; {WHOLE_IMAGE}")
    scale, size = a["scale_factor"], a["size"]
    if scale is not None:
        scales = scale if isinstance(scale, (list, tuple)) else (scale, scale)
        ratios = tuple(Fraction(1) / Fraction(str(f)) for f in scales)
    else:
        target = layout.size_source(prop, size)
        if target is None:
            if isinstance(size, (int, tuple, list)) and all(isinstance(x, int) for x in layout.flat(size)):
                prop.flag(node, "interpolation to a fixed size", f"resizes the whole image to {size}; {WHOLE_IMAGE}")
            else:
                prop.unsupported(node, "interpolation to a computed size")
            return prop.merge(node, [src])
        ratios = tuple(target.jump[i] / v.jump[i] for i in (0, 1))
    backs = tuple(_resample(r, mode) for r in ratios)
    return prop.derive(node, src, backs, ratios)  # type: ignore[arg-type]


def _shuffle_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    r = op.args["factor"]
    if op.args["up"]:
        return prop.derive(node, _input(node), (_resample(Fraction(1, r), "nearest"),) * 2, (Fraction(1, r),) * 2)
    return prop.derive(node, _input(node), (_window(r, r, 0, 1),) * 2, (Fraction(r),) * 2)


def _pad_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    x = _input(node)
    v = prop.spatial_value(x)
    pad = list(op.args["pad"]) + [0] * (4 - len(op.args["pad"]))
    left, top = pad[0], pad[2]
    if v is None or v.axes != (2, 3) or not (isinstance(left, int) and isinstance(top, int)):
        prop.unsupported(node, "padding that is not a fixed amount at the top/left of (N, C, H, W)")
        return prop.merge(node, [x])
    # bottom/right padding (computed from x.shape by fcnkit's models) moves no index: it is ignored
    return prop.derive(node, x, (_shift(-top), _shift(-left)), (Fraction(1),) * 2)


def _pad_to_multiple_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    multiple = op.args["multiple"]
    if isinstance(multiple, int):
        prop.multiples.append(multiple)
    else:
        prop.unsupported(node, "pad_to_multiple with a computed multiple")
    return (prop.merge(node, [_input(node)]), None)


def _pointwise_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    return prop.merge(node, [node.args, node.kwargs])


def _cast_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    return prop.merge(node, [_input(node)])


def _nonlocal_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    prop.flag_op(node, op)
    merged = prop.merge(node, [node.args, node.kwargs])
    return (merged, merged) if op.args.get("outputs", 1) > 1 else merged


def _linear_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    v = prop.spatial_value(_input(node))
    if v is not None and v.axes is None:
        prop.flag(node, op.name, "mixes every position of the flattened feature map: the model is a classifier "
                  "of fixed-size inputs; convolutionalize it first")
    elif v is not None and 3 in v.axes:  # type: ignore[operator]
        prop.flag(node, op.name, f"mixes the image's columns (it acts on the last axis of an (N, C, H, W) tensor); "
                  f"{WHOLE_IMAGE}")
    return prop.merge(node, [node.args, node.kwargs])


def _layer_norm_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    layout.check_last_axes(prop, node, _input(node), op.args["count"], op.name, "normalizes over")
    return prop.merge(node, [node.args, node.kwargs])


def _softmax_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    dim = op.args["dim"]
    layout.check_dims(prop, node, _input(node), 1 if dim is None else dim, op.name, "normalizes over")
    return prop.merge(node, [node.args, node.kwargs])


def _matmul_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    if any(v.axes is None or 3 in v.axes for v in prop.values(node.args)):
        prop.flag(node, op.name, f"mixes positions across the image (attention); {WHOLE_IMAGE}")
    return prop.merge(node, [node.args, node.kwargs])


def _unknown_rule(prop: Propagation, node: fx.Node, op: Op) -> Any:
    prop.unsupported(node, op.name)
    return prop.merge(node, [node.args, node.kwargs])


Rule = Callable[[Propagation, fx.Node, Op], Any]
RULES: dict[str, Rule] = {
    "window": _window_rule, "resample": _resample_rule, "shuffle": _shuffle_rule, "pad": _pad_rule,
    "pad_to_multiple": _pad_to_multiple_rule, "pointwise": _pointwise_rule, "channelwise": _pointwise_rule,
    "cast": _cast_rule, "softmax": _softmax_rule, "reduction": layout.reduce, "reshape": layout.reshape,
    "permute": layout.permute, "getitem": layout.getitem, "slice": layout.slice_axis, "concat": layout.concat,
    "split": layout.split,
    "shape": lambda prop, node, op: None, "linear": _linear_rule, "layer_norm": _layer_norm_rule,
    "matmul": _matmul_rule, "adaptive": _nonlocal_rule, "nonlocal": _nonlocal_rule, "unknown": _unknown_rule,
}
