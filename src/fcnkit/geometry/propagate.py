"""The geometry of a network read from its ``torch.fx`` graph, without running it.

Two passes over the graph. The forward pass gives every spatial tensor its *jump* (input pixels per index along rows
and columns, a ``Fraction`` that drops below 1 after up-sampling), notes the first non-local layer, and records for
each tensor how an index range of it maps back to index ranges of its inputs. The backward pass then walks from one
output pixel to the input with exact integer floor/ceil arithmetic, once per phase of the output index modulo the
input multiple, so the floors of pooling and up-sampling are not over-approximated. Image borders are ignored: this
is the interior geometry, which is what the halo of exact tiling needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch.fx as fx
import torch.nn as nn

from fcnkit.geometry import calls as _fx_calls
from fcnkit.geometry import rules
from fcnkit.geometry.rules import Back, Value


@dataclass(frozen=True)
class GraphGeometry:
    """What the graph says; ``unknown`` names the first operation it could not follow (then the numbers are a guess)."""

    receptive_field: int
    radius: int
    output_stride: Fraction
    input_multiple: int
    padding: str
    nonlocal_reason: str | None
    unknown: str | None
    has_spatial_layers: bool


class _Tracer(fx.Tracer):
    """Keeps subclasses of the layers with rules as leaves, and fcnkit's shape helpers as single calls."""

    def __init__(self) -> None:
        from fcnkit.layers import check_nchw, pad_to_multiple
        super().__init__(autowrap_functions=(check_nchw, pad_to_multiple))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, rules.LEAVES) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (raises what ``torch.fx`` raises for untraceable code)."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph)


def analyze_graph(gm: fx.GraphModule) -> GraphGeometry:
    """Propagate geometry through ``gm`` (see the module docstring). Raises ``ValueError`` when it has no tensor output."""
    prop = _Propagation(gm)
    out = prop.run()
    multiple = math.lcm(*prop.multiples)
    radius, side, shifts, overhang = 0, 1, [], []
    for axis in (0, 1):
        s = out.jump[axis]
        ratio = multiple / s
        # the window pattern repeats when the input shifts by one input multiple
        phases = int(ratio) if ratio.denominator == 1 and s >= 1 else 1
        for t in range(phases):
            a, b = prop.window(out.node, axis, t)
            block_start, block_end = s * t, s * t + s - 1  # the input pixels output index t stands for
            shifts.append(a - block_start)
            overhang.append(b - block_end)
            radius = max(radius, math.ceil(block_start - a), math.ceil(b - block_end))
            side = max(side, b - a + 1)
    padding = "valid" if min(shifts) >= 0 and max(overhang) > 0 else "same"
    return GraphGeometry(side, radius, max(out.jump), multiple, padding, prop.reason, prop.unknown, prop.spatial)


@dataclass
class _Out:
    node: fx.Node
    jump: tuple[Fraction, Fraction]


class _Propagation:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.env: dict[fx.Node, Any] = {}
        self.reason: str | None = None
        self.unknown: str | None = None
        self.spatial = False  # saw a convolution, pooling or resampling
        self.multiples: list[int] = [1]
        self.nodes = list(gm.graph.nodes)

    # ---- forward pass -------------------------------------------------------------------------------------------
    def run(self) -> _Out:
        first_input = True
        result: _Out | None = None
        for node in self.nodes:
            if node.op == "placeholder":
                one = (Fraction(1), Fraction(1))
                self.env[node] = Value(one, []) if first_input else None
                first_input = False
            elif node.op == "get_attr":
                self.env[node] = _fetch_attr(self.gm, node.target)
            elif node.op == "output":
                found = _first_value_node(node.args[0], self.env)
                if found is None:
                    raise ValueError("the model's output holds no tensor computed from its input")
                result = _Out(found, self.env[found].jump)
            else:
                value = _fx_calls.apply(self, node)
                self.env[node] = value
                for v in value if isinstance(value, tuple) else (value,):
                    if isinstance(v, Value):
                        self.multiples.extend(j.numerator for j in v.jump)
        assert result is not None
        return result

    def flag(self, node: fx.Node, what: str, why: str) -> None:
        """Record a non-local operation (only the first one is reported)."""
        if self.reason is None:
            self.reason = f"{what} at '{where(node)}' {why}"

    def unsupported(self, node: fx.Node, what: str) -> None:
        if self.unknown is None:
            self.unknown = f"{what} at '{where(node)}'"

    def value(self, arg: Any) -> Any:
        return self.env.get(arg) if isinstance(arg, fx.Node) else arg

    def merge(self, node: fx.Node, args: Any) -> Value | None:
        """Point-wise combination of every tensor among ``args``: the union of what they see."""
        nodes = [a for a in _leaves(args) if isinstance(self.value(a), Value)]
        if not nodes:
            return None
        values = [self.env[a] for a in nodes]
        first = values[0]
        for v in values[1:]:
            if v.jump != first.jump or (v.axes != first.axes and None not in (v.axes, first.axes)):
                self.unsupported(node, f"{op_name(node)} of tensors on different grids")
        axes = first.axes if all(v.axes is not None for v in values) else None
        ident = (rules.identity, rules.identity)
        return Value(first.jump, [(a, ident) for a in nodes], axes)

    def derive(self, node: fx.Node, src: fx.Node, back: tuple[Back, Back], scale: tuple[Fraction, Fraction],
               extra: tuple[fx.Node, ...] = ()) -> Value | None:
        """A tensor whose index range maps back to ``src`` through ``back``; jumps multiply by ``scale``."""
        v = self.value(src)
        if not isinstance(v, Value):
            return None
        if v.axes is None:
            self.unsupported(node, f"{op_name(node)} after spatial axes were flattened")
            return v
        self.spatial = True
        parents = [(src, back)] + [(e, back) for e in extra if isinstance(self.value(e), Value)]
        return Value((v.jump[0] * scale[0], v.jump[1] * scale[1]), parents, v.axes)

    # ---- backward pass ------------------------------------------------------------------------------------------
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
            raise ValueError("the model's output does not depend on its input")
        return int(lo), int(hi)


def where(node: fx.Node) -> str:
    """The qualified name of the module a node belongs to (the module itself for ``call_module``)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return f"{path}.{node.name}" if path else node.name


def op_name(node: fx.Node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target))


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _leaves(args: Any) -> list[Any]:
    if isinstance(args, (list, tuple)):
        return [leaf for a in args for leaf in _leaves(a)]
    if isinstance(args, dict):
        return [leaf for a in args.values() for leaf in _leaves(a)]
    return [args]


def _first_value_node(args: Any, env: dict[fx.Node, Any]) -> fx.Node | None:
    for leaf in _leaves(args):
        if isinstance(leaf, fx.Node) and isinstance(env.get(leaf), Value):
            return leaf
    return None


