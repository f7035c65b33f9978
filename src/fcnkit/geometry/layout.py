"""Geometry rules that track where a tensor's spatial axes are: flatten and reshape, permutations, indexing,
concatenation, splits, reductions and normalisations along dims (see :mod:`fcnkit.geometry.rules` for the rest).

A :class:`~fcnkit.geometry.state.Value` keeps ``axes``, the dims that hold rows and columns; a rule that moves them
updates ``axes``, one that merges them away sets it to ``None`` (a flattened map), and one that reduces over them
flags the operation as non-local.
"""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import Any

import torch
import torch.fx as fx

from fcnkit.geometry.ops import SPLITS, WHOLE_IMAGE, Op, permutation, reduced_dims, target_name
from fcnkit.geometry.state import Back, Propagation, Value, identity


def flat(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _input(node: fx.Node) -> Any:
    return node.args[0] if node.args else node.kwargs.get("input")


def check_last_axes(prop: Propagation, node: fx.Node, x: Any, count: int, what: str, verb: str) -> None:
    v = prop.spatial_value(x)
    if v is not None and (v.axes is None or max(v.axes) >= 4 - count):
        prop.flag(node, what, f"{verb} its last {count} dimension(s), which include space; {WHOLE_IMAGE}")


def check_dims(prop: Propagation, node: fx.Node, x: Any, dims: Any, what: str, verb: str) -> None:
    v = prop.spatial_value(x)
    if v is None:
        return
    dims = range(4) if dims is None else [d % 4 for d in flat(dims)]
    if v.axes is None or set(dims) & set(v.axes):
        prop.flag(node, what, f"{verb} the spatial dimensions; {WHOLE_IMAGE}")


def size_source(prop: Propagation, size: Any) -> Value | None:
    """The tensor whose spatial size ``size`` copies (``t.shape[2:]``, ``t.size()[-2:]``, ``(t.shape[2], t.shape[3])``)."""
    def tensor_of(n: Any) -> Value | None:
        if not (isinstance(n, fx.Node) and n.op in ("call_function", "call_method")):
            return None
        if n.target is getattr and n.args[1] == "shape" or n.op == "call_method" and n.target == "size":
            v = prop.spatial_value(n.args[0])
            wanted = 2 if n.target is getattr else 1
            return v if not n.kwargs and len(n.args) == wanted else None
        return None

    if isinstance(size, fx.Node) and size.target is operator.getitem and isinstance(size.args[1], slice):
        sl = size.args[1]
        if (sl.start in (2, -2)) and sl.stop in (None, 4) and sl.step is None:
            return tensor_of(size.args[0])
    if isinstance(size, (tuple, list)) and len(size) == 2:
        sources = []
        for i, n in enumerate(size):
            if isinstance(n, fx.Node) and n.target is torch.ops.aten.sym_size.int and n.args[1] in (2 + i, -2 + i):
                sources.append(prop.spatial_value(n.args[0]))  # an exported program's x.shape[2], x.shape[3]
                continue
            if not (isinstance(n, fx.Node) and n.target is operator.getitem and n.args[1] in (2 + i, -2 + i)):
                return None
            sources.append(tensor_of(n.args[0]))
        if sources[0] is not None and sources[0] is sources[1]:
            return sources[0]
    return None


def flatten(prop: Propagation, node: fx.Node, x: Any, start: int, end: int) -> Any:
    v = prop.spatial_value(x)
    if v is None or v.axes is None:
        return prop.merge(node, [x])
    start, end = start % 4, end % 4
    if start <= max(v.axes) and end >= min(v.axes):
        return Value(v.jump, [(x, (identity, identity))], None)
    prop.unsupported(node, "flatten")
    return prop.merge(node, [x])


def reshape(prop: Propagation, node: fx.Node, op: Op) -> Any:
    x = _input(node)
    v = prop.spatial_value(x)
    if v is None:
        return None
    if "start_dim" in op.args:  # flatten
        if v.axes is None:
            return prop.merge(node, [x])
        return flatten(prop, node, x, op.args["start_dim"], op.args["end_dim"])
    if v.axes is None:  # back from a flattened map (e.g. after attention): the map before the flatten
        return Value(v.jump, [(x, (identity, identity))], (2, 3))
    return Value(v.jump, [(x, (identity, identity))], None)


def permute(prop: Propagation, node: fx.Node, op: Op) -> Any:
    out = prop.merge(node, [_input(node)])
    if out is None or out.axes is None:
        return out
    order = permutation(op, 4)
    if order is None:
        prop.unsupported(node, f"{op.name} of a (N, C, H, W) tensor")
        return out
    out.axes = tuple(sorted(order.index(a) for a in out.axes))  # type: ignore[assignment]
    return out


def getitem(prop: Propagation, node: fx.Node, op: Op) -> Any:
    x, index = node.args[0], op.args["index"]
    v = prop.value(x)
    if isinstance(v, tuple):
        return v[index] if isinstance(index, int) else None
    if not isinstance(v, Value):
        return None
    if isinstance(x, fx.Node) and target_name(x) in SPLITS | {"max", "min", "median"}:
        return v  # one piece of a split along channels, or the values/indices of a reduction
    if v.axes is None:
        return prop.merge(node, [x])
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (4 - (len(items) - 1))
    items += [slice(None)] * (4 - len(items))
    backs: dict[int, Back] = {}
    kept: list[int] = []
    for dim, item in enumerate(items):
        if dim in v.axes:
            start = item.start if isinstance(item, slice) else None
            if not isinstance(item, slice) or item.step not in (None, 1) or not (start is None or
                                                                                  isinstance(start, int) and start >= 0):
                prop.unsupported(node, "indexing of a spatial axis")
                return prop.merge(node, [x])
            backs[dim] = _shift(start or 0)
        if isinstance(item, slice):
            kept.append(dim)
        elif item is None:
            prop.unsupported(node, "indexing that adds an axis")
            return prop.merge(node, [x])
    out = prop.derive(node, x, (backs[v.axes[0]], backs[v.axes[1]]), (Fraction(1),) * 2)
    if out is not None:
        out.axes = (kept.index(v.axes[0]), kept.index(v.axes[1]))
    return out


def slice_axis(prop: Propagation, node: fx.Node, op: Op) -> Any:
    """ATen's ``slice(x, dim, start, end, step)``: on a spatial axis a crop that shifts indices by ``start`` (its end,
    often computed from a size, moves nothing); on the batch or channel axis the tensor's geometry is unchanged."""
    x, dim, start, step = _input(node), op.args["dim"], op.args["start"], op.args["step"]
    v = prop.spatial_value(x)
    if v is None or v.axes is None or not isinstance(dim, int) or dim % 4 not in v.axes:
        if v is not None and v.axes is not None and not isinstance(dim, int):
            prop.unsupported(node, "slicing along a computed dim")
        return prop.merge(node, [x])
    if step not in (None, 1) or not (start is None or isinstance(start, int) and start >= 0):
        prop.unsupported(node, "slicing of a spatial axis with a step or a computed or negative start")
        return prop.merge(node, [x])
    backs = tuple(_shift(start or 0) if axis == dim % 4 else identity for axis in v.axes)
    out = prop.derive(node, x, backs, (Fraction(1),) * 2)  # type: ignore[arg-type]
    if out is not None:
        out.axes = v.axes
    return out


def _shift(c: int) -> Back:
    return lambda lo, hi: (lo + c, hi + c)


def concat(prop: Propagation, node: fx.Node, op: Op) -> Any:
    tensors, dim = op.args["tensors"], op.args["dim"]
    at = dim % 4 if isinstance(dim, int) else dim
    if op.args["stack"] or any(v.axes is not None and at in v.axes for v in prop.values(tensors)):
        prop.unsupported(node, f"{op.name} along dim {dim}")
    return prop.merge(node, tensors)


def split(prop: Propagation, node: fx.Node, op: Op) -> Any:
    x = _input(node)
    v = prop.spatial_value(x)
    dim = op.args["dim"]
    if v is not None and v.axes is not None and (not isinstance(dim, int) or dim % 4 in v.axes):
        prop.unsupported(node, "split along a spatial axis")
    return prop.merge(node, [x])


def reduce(prop: Propagation, node: fx.Node, op: Op) -> Any:
    x = _input(node)
    dim = op.args["dim"]
    check_dims(prop, node, x, None if dim is None else sorted(reduced_dims(op, 4)), op.name, "reduces over")
    return prop.merge(node, [x])
