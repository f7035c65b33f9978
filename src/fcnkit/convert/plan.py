"""Plan the rewrite of a traced classifier's graph into a fully convolutional one.

The classifier is traced with torch.fx and run once at its training size (shape propagation), so every node knows
its tensor shape. One pass then gives each node a *kind* and plans the rewrite (applied by
:mod:`fcnkit.convert.rewrite`); what each operation is comes from the shared table :mod:`fcnkit.geometry.ops`:

- ``feat``   a (N, C, h, w) feature map, position-aligned with the input: left as it is;
- ``perm``   the feature map with its C, h, w axes permuted (``x.permute(0, 3, 2, 1)``): the permute is removed and
  the first Linear's weight columns are permuted to match;
- ``pooled`` a (N, C, 1, 1) global pool: becomes a sliding pool over the whole training-size feature map;
- ``flat``   a (N, C*h*w) flattened feature map: the flatten is removed, the FCN keeps the map;
- ``vec``    a (N, F) vector of per-window channels: in the FCN a (N, F, H', W') grid.

Only point-wise work may touch ``flat``/``vec`` values, plus ``Linear`` (the first one after the flatten becomes a
Conv2d whose kernel is the feature map, later ones 1x1 convolutions), ``BatchNorm1d`` and a softmax over classes.
Anything else raises :class:`~fcnkit.errors.ConversionError` naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn
from torch import fx

from fcnkit.convert.surgery import batchnorm2d_from_1d, conv_from_linear
from fcnkit.errors import ConversionError
from fcnkit.geometry.ops import Op, classify, permutation, reduced_dims

_POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
_TENSOR_KINDS = ("feat", "perm", "pooled", "flat", "vec")


@dataclass
class Plan:
    """What the analysis decided: each node's kind, and the rewrites to apply afterwards."""

    kinds: dict[fx.Node, str] = field(default_factory=dict)
    feature_shape: dict[fx.Node, tuple[int, int, int]] = field(default_factory=dict)  # (C, h, w) of a `flat` node
    order: dict[fx.Node, list[int]] = field(default_factory=dict)  # axes of a `perm`/`flat` node's (N, C, h, w) map
    remove: list[fx.Node] = field(default_factory=list)  # replaced by their first input
    pools: dict[fx.Node, nn.Module] = field(default_factory=dict)  # node -> sliding pool module replacing it
    modules: dict[str, nn.Module] = field(default_factory=dict)  # submodule target -> its replacement
    softmax_dim: dict[fx.Node, Op] = field(default_factory=dict)  # softmax calls whose dim must become 1
    padded: str | None = None  # the first layer that pads its input
    partial: list[tuple[str, tuple[int, int], tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    # ceil-mode pools with a partial last window: (description, input size, window span, pixels of the span missing)


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"layer '{node.target}' ({type(gm.get_submodule(str(node.target))).__name__})"
    if node.op == "call_method":
        return f"'.{node.target}()' at '{node.name}'"
    return f"'{getattr(node.target, '__name__', node.target)}' at '{node.name}'"


def _fail(node: fx.Node, gm: fx.GraphModule, problem: str, fix: str) -> ConversionError:
    return ConversionError(f"convolutionalize: {describe(node, gm)} {problem}; {fix}.")


def _shape(node: object) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _padding_of(node: fx.Node, op: Op) -> str | None:
    """Why ``node`` pads its input (so windows see zeros the image does not), or None."""
    if op.kind == "pad":
        return f"pads its input ({'F.' if node.op == 'call_function' else ''}{op.name})"
    w = op.window
    if op.kind == "window" and w is not None and not w.transposed and w.padding != (0, 0):
        if node.op == "call_module" and op.name == "Conv2d":
            return f"pads its input with {w.padding_mode} (padding={w.padding})"
        return f"pads its input (padding={w.padding})"
    return None


def _partial_window(op: Op, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """For a ceil-mode pool on a ``size`` input: (span, pixels of its last window past the input) per axis, if any."""
    w = op.window
    if op.kind != "window" or w is None or w.transposed or not w.ceil_mode:
        return None
    missing = []
    for axis, length in enumerate(size):
        s, p, span = w.stride[axis], w.padding[axis], w.span(axis)
        n = -(-(length + 2 * p - span) // s) + 1  # PyTorch's ceil mode ...
        if (n - 1) * s >= length + p:  # ... never starts a window in the bottom/right padding
            n -= 1
        missing.append(max(0, (n - 1) * s - p + span - length))
    if not any(missing):
        return None
    return (w.span(0), w.span(1)), (missing[0], missing[1])


def plan_rewrite(gm: fx.GraphModule) -> Plan:
    """Give every node a kind and plan the rewrites; raise ConversionError for what cannot be converted."""
    plan = Plan()
    ops = {node: classify(node, gm) for node in gm.graph.nodes
           if node.op in ("call_module", "call_function", "call_method")}
    for node, op in ops.items():  # name a recurrent, attention or normalisation layer first, not what feeds it
        if op.kind == "nonlocal" or op.kind == "layer_norm":
            why = op.reason or "normalizes over its last dimensions"
            raise _fail(node, gm, f"{why}, so the FCN's score for a window would depend on the rest of the image",
                        "remove it, or convert the network by hand")
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            plan.kinds[node] = "feat"
            continue
        if node.op == "get_attr":
            plan.kinds[node] = "const"
            continue
        inputs = [a for a in node.all_input_nodes if plan.kinds.get(a) in _TENSOR_KINDS]
        in_kinds = {plan.kinds[a] for a in inputs}
        if node.op == "output":
            _check_output(node, plan)
            continue
        shape = _shape(node)
        if shape is None:  # sizes, tuples: bookkeeping values, no tensor of their own
            plan.kinds[node] = "scalar"
            continue
        if len(in_kinds) > 1:
            raise _fail(node, gm, f"combines values of different stages ({', '.join(sorted(in_kinds))}), e.g. a "
                        f"pooled vector multiplied back into the feature map",
                        "only networks whose head follows the feature extractor can be converted")
        kind = in_kinds.pop() if in_kinds else "const"
        if kind == "const":
            plan.kinds[node] = "const"
            continue
        op, source = ops[node], inputs[0]
        if kind == "feat":
            plan.kinds[node] = _feature_node(node, gm, plan, op, source, shape)
        elif kind == "perm":
            plan.kinds[node] = _permuted_node(node, gm, plan, op, source, shape)
        elif kind == "pooled":
            plan.kinds[node] = _pooled_node(node, gm, plan, op, shape)
        else:
            plan.kinds[node] = _head_node(node, gm, plan, op, source, kind)
    return plan


def _feature_node(node: fx.Node, gm: fx.GraphModule, plan: Plan, op: Op, source: fx.Node,
                  shape: tuple[int, ...]) -> str:
    """Plan a node working on a (N, C, h, w) feature map; return its kind."""
    in_shape = _shape(source)
    if plan.padded is None and (why := _padding_of(node, op)) is not None:
        plan.padded = f"{describe(node, gm)} {why}"
    partial = _partial_window(op, in_shape[2:])
    if partial is not None:
        plan.partial.append((describe(node, gm), in_shape[2:], *partial))
    if op.kind == "adaptive":
        if shape[2:] == in_shape[2:]:  # the identity at the training size (VGG's 7x7 at 224)
            plan.remove.append(node)
            return "feat"
        if shape[2:] == (1, 1):
            plan.pools[node] = _POOLS[op.args["pool"]](kernel_size=in_shape[2:], stride=1)
            return "pooled"
        raise _fail(node, gm, f"maps the {in_shape[2]}x{in_shape[3]} feature map to {shape[2]}x{shape[3]} at the "
                    f"training size, which depends on the input size",
                    "only global (1x1) pools and pools that are the identity at input_size can be converted")
    if op.kind == "reduction" and (dims := reduced_dims(op, 4)) & {2, 3}:
        if dims == {2, 3} and op.name == "mean":
            plan.pools[node] = nn.AvgPool2d(kernel_size=in_shape[2:], stride=1)
            return "pooled" if op.args["keepdim"] else "vec"
        raise _fail(node, gm, f"reduces over dims {sorted(dims)} of the (N, C, H, W) feature map",
                    "only a mean over both spatial dims (2, 3) can become a sliding average pool")
    if len(shape) == 2 and op.kind == "reshape" and shape == (in_shape[0], in_shape[1] * in_shape[2] * in_shape[3]):
        plan.remove.append(node)
        plan.feature_shape[node] = in_shape[1:]
        return "vec" if in_shape[2:] == (1, 1) else "flat"
    if op.kind == "permute":
        return _permute(node, gm, plan, op, list(range(4)), in_shape)
    if op.kind == "linear":
        raise _fail(node, gm, "is applied to the last axis of a (N, C, H, W) feature map, mixing positions along "
                    "the width", "only a Linear after flattening the whole feature map can be converted")
    if op.kind == "reshape":
        raise _fail(node, gm, f"reshapes the feature map {tuple(in_shape)} to {shape}, so positions no longer sit "
                    f"on the spatial axes", "flatten the (N, C, H, W) map with torch.flatten(x, 1) instead")
    if len(shape) != 4:
        raise _fail(node, gm, f"turns the feature map {tuple(in_shape)} into a {shape} tensor",
                    "only flatten/view/reshape to (N, -1) and global average pooling can end the feature extractor")
    return "feat"


def _permute(node: fx.Node, gm: fx.GraphModule, plan: Plan, op: Op, before: list[int],
             in_shape: tuple[int, ...]) -> str:
    """A permute of the (possibly already permuted) feature map: removed, its order kept for the first Linear."""
    step = permutation(op, len(in_shape))
    if step is None or len(in_shape) != 4:
        raise _fail(node, gm, f"permutes the {len(in_shape)}-D feature map {tuple(in_shape)} with arguments "
                    f"{op.args['dims']}, which convolutionalize cannot follow", "permute with constant dims")
    if step[0] != 0:
        raise _fail(node, gm, f"moves the batch axis of the feature map {tuple(in_shape)} (to position "
                    f"{step.index(0)}), mixing windows of different images",
                    "keep the batch axis first (e.g. x.permute(0, 3, 2, 1))")
    plan.remove.append(node)
    order = [before[i] for i in step]
    if order == list(range(4)):
        return "feat"
    plan.order[node] = order
    return "perm"


def _permuted_node(node: fx.Node, gm: fx.GraphModule, plan: Plan, op: Op, source: fx.Node,
                   shape: tuple[int, ...]) -> str:
    """Plan a node working on the permuted feature map: more permutes, casts, element-wise ops, a flatten."""
    in_shape, order = _shape(source), plan.order[source]
    if op.kind == "permute":
        return _permute(node, gm, plan, op, order, in_shape)
    if len(shape) == 2 and op.kind == "reshape" and shape == (in_shape[0], in_shape[1] * in_shape[2] * in_shape[3]):
        plan.remove.append(node)
        original = [0, 0, 0, 0]
        for axis, size in zip(order, in_shape):
            original[axis] = size
        plan.feature_shape[node] = (original[1], original[2], original[3])
        plan.order[node] = order
        return "flat"
    alone = all(plan.kinds.get(a) in ("scalar", "const") for a in node.all_input_nodes if a is not source)
    if op.kind in ("cast", "pointwise") and shape == in_shape and alone:
        plan.order[node] = order
        return "perm"
    raise _fail(node, gm, f"works on the feature map permuted to {tuple(in_shape)} in a way convolutionalize "
                f"cannot follow", "only .contiguous(), element-wise ops, more permutes and a flatten to (N, -1) "
                "can follow a permute of the feature map")


def _pooled_node(node: fx.Node, gm: fx.GraphModule, plan: Plan, op: Op, shape: tuple[int, ...]) -> str:
    """Plan a node working on a (N, C, 1, 1) global pool; return its kind."""
    if len(shape) == 2 and op.kind == "reshape":
        plan.remove.append(node)
        return "vec"
    module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    one_by_one = isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.padding in ((0, 0),
                                                                                                      "valid")
    if len(shape) == 4 and (one_by_one or isinstance(module, nn.BatchNorm2d) or op.kind in ("pointwise", "cast")):
        return "pooled"
    raise _fail(node, gm, "works on the globally pooled (N, C, 1, 1) map in a way that is not point-wise",
                "only 1x1 convolutions, BatchNorm2d, activations and a flatten can follow the global pool")


def _carry(plan: Plan, source: fx.Node, node: fx.Node) -> None:
    """``node`` holds the same flattened map as ``source``."""
    plan.feature_shape[node] = plan.feature_shape[source]
    if source in plan.order:
        plan.order[node] = plan.order[source]


def _head_node(node: fx.Node, gm: fx.GraphModule, plan: Plan, op: Op, source: fx.Node, kind: str) -> str:
    """Plan a node of the fully connected head (``flat`` or ``vec`` input); return its kind."""
    module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    if isinstance(module, nn.Linear):
        channels, h, w = plan.feature_shape[source] if kind == "flat" else (module.in_features, 1, 1)
        plan.modules[str(node.target)] = conv_from_linear(module, (h, w), channels, str(node.target),
                                                          plan.order.get(source) if kind == "flat" else None)
        return "vec"
    if isinstance(module, nn.BatchNorm1d):
        if kind == "flat":
            raise _fail(node, gm, "normalises every position of the flattened feature map separately",
                        "put it after the first Linear, where it normalises channels")
        plan.modules[str(node.target)] = batchnorm2d_from_1d(module)
        return "vec"
    if op.kind == "reshape" and _shape(node) == _shape(source):  # x.view(N, -1) of a vector: a no-op
        plan.remove.append(node)
        if kind == "flat":
            _carry(plan, source, node)
        return kind
    if op.kind == "softmax":
        if kind == "flat":
            raise _fail(node, gm, "takes a softmax over the flattened feature map (channels and positions together)",
                        "apply softmax only to class scores after a Linear")
        dim = op.args["dim"]
        if dim not in (1, -1, None):
            raise _fail(node, gm, f"takes a softmax over dim {dim} of the (N, K) scores", "use dim=1 (the classes)")
        plan.softmax_dim[node] = op
        return "vec"
    if op.kind in ("pointwise", "cast"):
        if kind == "flat" and op.args.get("per_channel"):
            raise _fail(node, gm, "has one parameter per element of the flattened feature map",
                        "put it after the first Linear, where it acts on channels")
        others = [a for a in node.all_input_nodes if a is not source and plan.kinds.get(a) != "scalar"]
        if all(plan.kinds.get(a) == kind and _shape(a) == _shape(source) for a in others):
            if kind == "flat":
                _carry(plan, source, node)
            return kind
        raise _fail(node, gm, "combines the head's values with a tensor that is not of the same shape and stage",
                    "only numbers and same-shaped head values can be mixed after the flatten")
    if op.kind == "linear":
        raise _fail(node, gm, "is a functional linear whose weights fx cannot move into a convolution",
                    "use an nn.Linear module")
    raise _fail(node, gm, f"works on the {'flattened feature map' if kind == 'flat' else 'per-window vector'} "
                f"in a way convolutionalize does not know to be per-window",
                "expected only Linear, activations, Dropout, BatchNorm1d and softmax after the flatten")


def _check_output(node: fx.Node, plan: Plan) -> None:
    result = node.args[0]
    if not isinstance(result, fx.Node) or plan.kinds.get(result) != "vec":
        found = plan.kinds.get(result, type(result).__name__) if isinstance(result, fx.Node) else \
            type(result).__name__
        raise ConversionError(
            f"convolutionalize: the classifier should return one (N, K) score tensor, found a {found} result; "
            f"return only the class scores."
        )
