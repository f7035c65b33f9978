"""The state of one geometry propagation through an fx graph: tensor values, the first non-local layer, and the
backward walk from an output pixel to the input pixels it reads.

A :class:`Value` is a tensor with two spatial axes: its *jump* (input pixels per index along rows and columns) and,
for each parent tensor, a pair of *back* functions mapping an index range of this tensor to the index range of the
parent it reads. The per-operation rules that build values live in :mod:`fcnkit.geometry.rules`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import torch.fx as fx

from fcnkit.geometry.ops import WHOLE_IMAGE, Op

Back = Callable[[int, int], "tuple[int, int]"]  # needed index range of a tensor -> index range of one input


class Unreadable(Exception):
    """The graph cannot be read (no tensor output, an output that ignores the input): measure the model instead."""


def identity(lo: int, hi: int) -> tuple[int, int]:
    return lo, hi


@dataclass
class Value:
    """A tensor with two spatial axes (``axes``), or whose space was flattened away (``axes is None``)."""

    jump: tuple[Fraction, Fraction]
    parents: list[tuple[fx.Node, tuple[Back, Back]]]
    axes: tuple[int, int] | None = (2, 3)


def leaves(*args: Any) -> list[Any]:
    """Every item in nested lists, tuples, dicts and slices."""
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(leaves(*a))
        elif isinstance(a, dict):
            out.extend(leaves(*a.values()))
        elif isinstance(a, slice):
            out.extend(leaves(a.start, a.stop, a.step))
        else:
            out.append(a)
    return out


def where(node: fx.Node) -> str:
    """The qualified name of the module a node belongs to (the module itself for ``call_module``)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return f"{path}.{node.name}" if path else node.name


class Propagation:
    """Values of the nodes of ``gm`` so far, the first non-local operation, and the first one without a rule."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.env: dict[fx.Node, Any] = {}
        self.reason: str | None = None
        self.unknown: str | None = None
        self.spatial = False  # saw a convolution, pooling or resampling
        self.multiples: list[int] = [1]
        self.nodes = list(gm.graph.nodes)

    def flag(self, node: fx.Node, what: str, why: str) -> None:
        """Record a non-local operation (only the first one is reported)."""
        if self.reason is None:
            self.reason = f"{what} at '{where(node)}' {why}"

    def flag_op(self, node: fx.Node, op: Op) -> None:
        """Record a non-local :class:`~fcnkit.geometry.ops.Op` with its reason and fix."""
        self.flag(node, op.name, f"{op.reason}; {op.fix or WHOLE_IMAGE}")

    def unsupported(self, node: fx.Node, what: str) -> None:
        if self.unknown is None:
            self.unknown = f"{what} at '{where(node)}'"

    def value(self, arg: Any) -> Any:
        return self.env.get(arg) if isinstance(arg, fx.Node) else arg

    def spatial_value(self, arg: Any) -> Value | None:
        v = self.value(arg)
        return v if isinstance(v, Value) else None

    def values(self, args: Any) -> list[Value]:
        return [v for v in (self.value(a) for a in leaves(args)) if isinstance(v, Value)]

    def merge(self, node: fx.Node, args: Any) -> Value | None:
        """Point-wise combination of every tensor among ``args``: the union of what they see."""
        nodes = [a for a in leaves(args) if isinstance(self.value(a), Value)]
        if not nodes:
            return None
        values = [self.env[a] for a in nodes]
        first = values[0]
        for v in values[1:]:
            if v.jump != first.jump or (v.axes != first.axes and None not in (v.axes, first.axes)):
                self.unsupported(node, f"{node_name(node)} of tensors on different grids")
        axes = first.axes if all(v.axes is not None for v in values) else None
        return Value(first.jump, [(a, (identity, identity)) for a in nodes], axes)

    def derive(self, node: fx.Node, src: Any, back: tuple[Back, Back], scale: tuple[Fraction, Fraction],
               extra: tuple[Any, ...] = ()) -> Value | None:
        """A tensor whose index range maps back to ``src`` through ``back``; jumps multiply by ``scale``."""
        v = self.value(src)
        if not isinstance(v, Value):
            return None
        if v.axes is None:
            self.unsupported(node, f"{node_name(node)} after spatial axes were flattened")
            return v
        self.spatial = True
        parents = [(src, back)] + [(e, back) for e in extra if isinstance(self.value(e), Value)]
        return Value((v.jump[0] * scale[0], v.jump[1] * scale[1]), parents, v.axes)

    def window(self, out: fx.Node, axis: int, index: int) -> tuple[int, int]:
        """Input index range that output ``index`` depends on along ``axis`` (0 rows, 1 columns)."""
        need: dict[fx.Node, tuple[int, int]] = {out: (index, index)}
        lo, hi = math.inf, -math.inf
        for node in reversed(self.nodes):
            if node not in need:
                continue
            a, b = need.pop(node)
            value = self.env[node]
            if isinstance(value, Value) and not value.parents:
                lo, hi = min(lo, a), max(hi, b)
            for v in value if isinstance(value, tuple) else (value,):
                if not isinstance(v, Value):
                    continue
                for parent, backs in v.parents:
                    pa, pb = backs[axis](a, b)
                    if parent in need:
                        pa, pb = min(pa, need[parent][0]), max(pb, need[parent][1])
                    need[parent] = (pa, pb)
        if lo == math.inf:
            raise Unreadable("the model's output does not depend on its input")
        return int(lo), int(hi)


def node_name(node: fx.Node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target))
