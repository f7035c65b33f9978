"""The geometry of a network read from its ``torch.fx`` graph, without running it.

Two passes over the graph. The forward pass gives every spatial tensor its *jump* (input pixels per index along rows
and columns, a ``Fraction`` that drops below 1 after up-sampling), notes the first non-local layer, and records for
each tensor how an index range of it maps back to index ranges of its inputs (the rules of
:mod:`fcnkit.geometry.rules`, one per kind of operation in :mod:`fcnkit.geometry.ops`). The backward pass
(:meth:`~fcnkit.geometry.state.Propagation.window`) then walks from one output pixel to the input with exact integer
floor/ceil arithmetic, once per phase of the output index modulo the input multiple, so the floors of pooling and
up-sampling are not over-approximated. Image borders are ignored: this is the interior geometry, which is what the
halo of exact tiling needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch.fx as fx

from fcnkit.geometry.rules import apply
from fcnkit.geometry.state import Propagation, Unreadable, Value, leaves


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


def analyze_graph(gm: fx.GraphModule) -> GraphGeometry:
    """Propagate geometry through ``gm`` (see the module docstring).

    Raises :class:`~fcnkit.geometry.state.Unreadable` when the output holds no tensor computed from the input.
    """
    prop = Propagation(gm)
    out, jump = _forward(prop)
    multiple = math.lcm(*prop.multiples)
    radius, side, shifts, overhang = 0, 1, [], []
    for axis in (0, 1):
        s = jump[axis]
        ratio = multiple / s
        # the window pattern repeats when the input shifts by one input multiple
        phases = int(ratio) if ratio.denominator == 1 and s >= 1 else 1
        for t in range(phases):
            a, b = prop.window(out, axis, t)
            block_start, block_end = s * t, s * t + s - 1  # the input pixels output index t stands for
            shifts.append(a - block_start)
            overhang.append(b - block_end)
            radius = max(radius, math.ceil(block_start - a), math.ceil(b - block_end))
            side = max(side, b - a + 1)
    padding = "valid" if min(shifts) >= 0 and max(overhang) > 0 else "same"
    return GraphGeometry(side, radius, max(jump), multiple, padding, prop.reason, prop.unknown, prop.spatial)


def _forward(prop: Propagation) -> tuple[fx.Node, tuple[Fraction, Fraction]]:
    """Give every node its value; return the output tensor's node and its jump."""
    first_input = True
    for node in prop.nodes:
        if node.op == "placeholder":
            one = (Fraction(1), Fraction(1))
            prop.env[node] = Value(one, []) if first_input else None
            first_input = False
        elif node.op == "get_attr":
            prop.env[node] = _fetch_attr(prop.gm, str(node.target))
        elif node.op == "output":
            found = next((a for a in leaves(node.args[0]) if isinstance(a, fx.Node) and isinstance(prop.env.get(a), Value)),
                         None)
            if found is None:
                raise Unreadable("the model's output holds no tensor computed from its input")
            return found, prop.env[found].jump
        else:
            value = apply(prop, node)
            prop.env[node] = value
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, Value):
                    prop.multiples.extend(j.numerator for j in v.jump)
    raise Unreadable("the graph has no output")


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def input_window(gm: fx.GraphModule, axis: int, index: int = 0) -> tuple[int, int] | None:
    """The input index range that output ``index`` of ``gm`` reads along ``axis`` (0 rows, 1 columns), image borders
    ignored; None when the graph holds an operation without a rule.

    For a convolutionalized classifier this is the window on which the FCN's first score equals the classifier's.
    """
    prop = Propagation(gm)
    out, _ = _forward(prop)
    return None if prop.unknown is not None else prop.window(out, axis, index)
