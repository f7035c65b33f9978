"""Rewrite a traced classifier's graph into a fully convolutional one.

The classifier is traced with torch.fx and run once at its training size (shape propagation), so every node knows
its tensor shape. One pass then gives each node a *kind* and a planned rewrite; a second pass applies the plan:

- ``feat``   a (N, C, h, w) feature map, position-aligned with the input: left as it is;
- ``pooled`` a (N, C, 1, 1) global pool: becomes a sliding pool over the whole training-size feature map;
- ``flat``   a (N, C*h*w) flattened feature map: the flatten is removed, the FCN keeps the map;
- ``vec``    a (N, F) vector of per-window channels: in the FCN a (N, F, H', W') grid.

Only point-wise work may touch ``flat``/``vec`` values, plus ``Linear`` (the first one after the flatten becomes a
Conv2d whose kernel is the feature map, later ones 1x1 convolutions), ``BatchNorm1d`` and a softmax over classes.
Anything else raises :class:`~fcnkit.errors.ConversionError` naming the layer.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from fcnkit.errors import ConversionError

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout, nn.AlphaDropout,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, torch.sigmoid,
    F.sigmoid, torch.tanh, F.tanh, F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.dropout, torch.dropout,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub, torch.mul,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "add", "sub", "mul", "div", "neg", "clamp", "contiguous"}
_SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_FLATTEN_FUNCTIONS = {torch.flatten, torch.reshape}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_LAYOUT_FUNCTIONS = {torch.permute, torch.transpose, torch.movedim, torch.swapaxes, torch.flatten, torch.reshape}
_LAYOUT_METHODS = {"permute", "transpose", "movedim", "swapaxes", "view", "reshape", "flatten", "unflatten", "t"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod"}
_ADAPTIVE_POOLS = {F.adaptive_avg_pool2d: nn.AvgPool2d, F.adaptive_max_pool2d: nn.MaxPool2d,
                   nn.AdaptiveAvgPool2d: nn.AvgPool2d, nn.AdaptiveMaxPool2d: nn.MaxPool2d}
_PADDED_FUNCTIONS = {F.conv2d: 4, F.max_pool2d: 3, F.avg_pool2d: 3}  # the index of their `padding` argument
_NON_LOCAL = {
    nn.RNNBase: "is recurrent: its output depends on a whole sequence, not on one window",
    nn.MultiheadAttention: "is attention: every position's output depends on every other position",
    nn.TransformerEncoderLayer: "is attention: every position's output depends on every other position",
    nn.TransformerDecoderLayer: "is attention: every position's output depends on every other position",
    nn.GroupNorm: "normalises over the whole feature map, so a window's statistics differ from the image's",
    nn.LayerNorm: "normalises over the whole feature map, so a window's statistics differ from the image's",
    nn.modules.instancenorm._InstanceNorm:
        "normalises over the whole feature map, so a window's statistics differ from the image's",
}


@dataclass
class _Plan:
    """What the analysis decided: each node's kind, and the rewrites to apply afterwards."""

    kinds: dict[fx.Node, str] = field(default_factory=dict)
    feature_shape: dict[fx.Node, tuple[int, int, int]] = field(default_factory=dict)  # (C, h, w) of a `flat` node
    remove: list[fx.Node] = field(default_factory=list)  # replaced by their first input
    pools: dict[fx.Node, nn.Module] = field(default_factory=dict)  # node -> sliding pool module replacing it
    modules: dict[str, nn.Module] = field(default_factory=dict)  # submodule target -> its replacement
    softmax_dim: list[fx.Node] = field(default_factory=list)  # softmax calls whose dim must become 1
    padded: str | None = None  # the first layer that pads its input


class _Tracer(fx.Tracer):
    """torch.nn layers and childless custom layers (e.g. fcnkit's ``Normalize``) stay opaque calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or (
            not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and next(m.children(), None) is None
        )


def trace(classifier: nn.Module) -> fx.GraphModule:
    """``classifier`` as a GraphModule (the module itself is reused, not copied)."""
    try:
        graph = _Tracer().trace(classifier)
    except Exception as exc:  # fx reports untraceable code with several exception types
        raise ConversionError(
            f"convolutionalize: torch.fx cannot trace {type(classifier).__name__} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); expected a forward without "
            f"Python control flow on tensor values, rewrite that part or move it into a separate module."
        ) from exc
    return fx.GraphModule(classifier, graph, class_name=f"Convolutionalized{type(classifier).__name__}")


def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"layer '{node.target}' ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"'.{node.target}()' at '{node.name}'"
    return f"'{getattr(node.target, '__name__', node.target)}' at '{node.name}'"


def _fail(node: fx.Node, gm: fx.GraphModule, problem: str, fix: str) -> ConversionError:
    return ConversionError(f"convolutionalize: {_describe(node, gm)} {problem}; {fix}.")


def _shape(node: object) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    """Argument ``name`` of a call, given by keyword or at position ``index`` (0 = the input tensor)."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _pair(value: object) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore[return-value]


def _padding_of(node: fx.Node, gm: fx.GraphModule) -> str | None:
    """Why ``node`` pads its input (so windows see zeros the image does not), or None."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.modules.padding._ConstantPadNd | nn.ReflectionPad2d | nn.ReplicationPad2d):
            return f"pads its input ({type(m).__name__})"
        if isinstance(m, nn.Conv2d) and m.padding not in ("valid", (0, 0)):
            return f"pads its input with {m.padding_mode} (padding={m.padding})"
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            if _pair(m.padding) != (0, 0):
                return f"pads its input (padding={m.padding})"
            if m.ceil_mode:
                return "pads its input implicitly (ceil_mode=True)"
    if node.op == "call_function":
        if node.target is F.pad:
            return "pads its input (F.pad)"
        index = _PADDED_FUNCTIONS.get(node.target)
        if index is not None and _arg(node, index, "padding", 0) not in (0, (0, 0), [0, 0], "valid"):
            return f"pads its input (padding={_arg(node, index, 'padding')})"
    return None


def _reduced_dims(node: fx.Node) -> tuple[set[int], bool] | None:
    """For a reduction (``x.mean((2, 3))``, ``torch.amax(x, 1)``...): its dims (0..3) and keepdim; else None."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if node.op not in ("call_method", "call_function") or name not in _REDUCTIONS:
        return None
    if node.op == "call_function" and getattr(torch, name, None) is not node.target:
        return None
    dim = _arg(node, 1, "dim", None)
    dims = {0, 1, 2, 3} if dim is None else {d % 4 for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
    return dims, bool(_arg(node, 2, "keepdim", False))


def _is_flatten(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A call that flattens (N, C, h, w) C-major into (N, C*h*w)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.Flatten)
    return (node.op == "call_function" and node.target in _FLATTEN_FUNCTIONS) or (
        node.op == "call_method" and node.target in _FLATTEN_METHODS)


def _is_elementwise(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS


def _softmax_dim(node: fx.Node, gm: fx.GraphModule) -> object:
    """The ``dim`` of a softmax/log-softmax call or module; ``...`` for any other node."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return m.dim if isinstance(m, (nn.Softmax, nn.LogSoftmax)) else ...
    if (node.op == "call_function" and node.target in _SOFTMAX_FUNCTIONS) or (
            node.op == "call_method" and node.target in ("softmax", "log_softmax")):
        return _arg(node, 1, "dim", None)
    return ...


def _conv_from_linear(linear: nn.Linear, kernel: tuple[int, int], channels: int, where: str) -> nn.Conv2d:
    """The Conv2d that computes ``linear`` on a C-major flattened (channels, *kernel) map, weights checked."""
    expected = channels * kernel[0] * kernel[1]
    if linear.in_features != expected:
        raise ConversionError(
            f"convolutionalize: Linear '{where}' expects {linear.in_features} inputs, but the flattened feature "
            f"map is {channels}x{kernel[0]}x{kernel[1]} = {expected}; pass the input_size the classifier was "
            f"trained on."
        )
    conv = nn.Conv2d(channels, linear.out_features, kernel, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
    weight = linear.weight.detach().reshape(linear.out_features, channels, *kernel)
    assert weight.shape == conv.weight.shape, (weight.shape, conv.weight.shape)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if linear.bias is not None:
            assert linear.bias.shape == conv.bias.shape, (linear.bias.shape, conv.bias.shape)
            conv.bias.copy_(linear.bias)
    conv.train(linear.training)
    return conv


def _batchnorm2d_from_1d(bn: nn.BatchNorm1d) -> nn.BatchNorm2d:
    """A BatchNorm2d over channels with ``bn``'s parameters and running statistics."""
    new = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats, device=bn.weight.device if bn.affine else None)
    new.load_state_dict(bn.state_dict())
    new.train(bn.training)
    return new


def _sliding_pool(kind: type[nn.Module], size: tuple[int, int]) -> nn.Module:
    return kind(kernel_size=size, stride=1)


def analyze_graph(gm: fx.GraphModule) -> _Plan:
    """Give every node a kind and plan the rewrites; raise ConversionError for what cannot be converted."""
    plan = _Plan()
    for node in gm.graph.nodes:  # name a recurrent or attention layer first, not the reshape that feeds it
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            for cls, why in _NON_LOCAL.items():
                if isinstance(m, cls):
                    raise _fail(node, gm, why, "remove it, or convert the network by hand")
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            plan.kinds[node] = "feat"
            continue
        if node.op == "get_attr":
            plan.kinds[node] = "const"
            continue
        inputs = [a for a in node.all_input_nodes if plan.kinds.get(a) in ("feat", "pooled", "flat", "vec")]
        in_kinds = {plan.kinds[a] for a in inputs}
        if node.op == "output":
            _check_output(node, gm, plan)
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
        if kind == "feat":
            plan.kinds[node] = _feature_node(node, gm, plan, inputs[0], shape)
        elif kind == "pooled":
            plan.kinds[node] = _pooled_node(node, gm, plan, shape)
        elif kind in ("flat", "vec"):
            plan.kinds[node] = _head_node(node, gm, plan, inputs[0], kind)
        else:
            plan.kinds[node] = "const"
    return plan


def _feature_node(node: fx.Node, gm: fx.GraphModule, plan: _Plan, source: fx.Node, shape: tuple[int, ...]) -> str:
    """Plan a node working on a (N, C, h, w) feature map; return its kind."""
    in_shape = _shape(source)
    if plan.padded is None and (why := _padding_of(node, gm)) is not None:
        plan.padded = f"{_describe(node, gm)} {why}"
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    pool = _ADAPTIVE_POOLS.get(type(module) if module is not None else node.target)
    if pool is not None:
        if shape[2:] == in_shape[2:]:  # the identity at the training size (VGG's 7x7 at 224)
            plan.remove.append(node)
            return "feat"
        if shape[2:] == (1, 1):
            plan.pools[node] = _sliding_pool(pool, in_shape[2:])
            return "pooled"
        raise _fail(node, gm, f"maps the {in_shape[2]}x{in_shape[3]} feature map to {shape[2]}x{shape[3]} at the "
                    f"training size, which depends on the input size",
                    "only global (1x1) pools and pools that are the identity at input_size can be converted")
    reduced = _reduced_dims(node)
    if reduced is not None and reduced[0] & {2, 3}:
        dims, keepdim = reduced
        if dims == {2, 3} and node.target in ("mean", torch.mean):
            plan.pools[node] = _sliding_pool(nn.AvgPool2d, in_shape[2:])
            return "pooled" if keepdim else "vec"
        raise _fail(node, gm, f"reduces over dims {sorted(dims)} of the (N, C, H, W) feature map",
                    "only a mean over both spatial dims (2, 3) can become a sliding average pool")
    if len(shape) == 2 and _is_flatten(node, gm) and shape == (in_shape[0], in_shape[1] * in_shape[2] *
                                                                  in_shape[3]):
        plan.remove.append(node)
        plan.feature_shape[node] = in_shape[1:]
        return "vec" if in_shape[2:] == (1, 1) else "flat"
    if isinstance(module, nn.Linear):
        raise _fail(node, gm, "is applied to the last axis of a (N, C, H, W) feature map, mixing positions along "
                    "the width", "only a Linear after flattening the whole feature map can be converted")
    if (node.op == "call_method" and node.target in _LAYOUT_METHODS) or (
            node.op == "call_function" and node.target in _LAYOUT_FUNCTIONS):
        raise _fail(node, gm, f"reshapes the feature map {tuple(in_shape)} to {shape}, so positions no longer sit "
                    f"on the spatial axes", "flatten the (N, C, H, W) map with torch.flatten(x, 1) instead")
    if len(shape) != 4:
        raise _fail(node, gm, f"turns the feature map {tuple(in_shape)} into a {shape} tensor",
                    "only flatten/view/reshape to (N, -1) and global average pooling can end the feature extractor")
    return "feat"


def _pooled_node(node: fx.Node, gm: fx.GraphModule, plan: _Plan, shape: tuple[int, ...]) -> str:
    """Plan a node working on a (N, C, 1, 1) global pool; return its kind."""
    if len(shape) == 2 and _is_flatten(node, gm):
        plan.remove.append(node)
        return "vec"
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    one_by_one = isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.padding in ((0, 0),
                                                                                                      "valid")
    if len(shape) == 4 and (one_by_one or isinstance(module, nn.BatchNorm2d) or _is_elementwise(node, gm)):
        return "pooled"
    raise _fail(node, gm, "works on the globally pooled (N, C, 1, 1) map in a way that is not point-wise",
                "only 1x1 convolutions, BatchNorm2d, activations and a flatten can follow the global pool")


def _head_node(node: fx.Node, gm: fx.GraphModule, plan: _Plan, source: fx.Node, kind: str) -> str:
    """Plan a node of the fully connected head (``flat`` or ``vec`` input); return its kind."""
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    if isinstance(module, nn.Linear):
        channels, h, w = plan.feature_shape[source] if kind == "flat" else (module.in_features, 1, 1)
        plan.modules[node.target] = _conv_from_linear(module, (h, w), channels, node.target)
        return "vec"
    if isinstance(module, nn.BatchNorm1d):
        if kind == "flat":
            raise _fail(node, gm, "normalises every position of the flattened feature map separately",
                        "put it after the first Linear, where it normalises channels")
        plan.modules[node.target] = _batchnorm2d_from_1d(module)
        return "vec"
    if _is_flatten(node, gm) and _shape(node) == _shape(source):  # x.view(N, -1) of a vector: a no-op
        plan.remove.append(node)
        if kind == "flat":
            plan.feature_shape[node] = plan.feature_shape[source]
        return kind
    dim = _softmax_dim(node, gm)
    if dim is not ...:
        if kind == "flat":
            raise _fail(node, gm, "takes a softmax over the flattened feature map (channels and positions together)",
                        "apply softmax only to class scores after a Linear")
        if dim not in (1, -1, None):
            raise _fail(node, gm, f"takes a softmax over dim {dim} of the (N, K) scores",
                        "use dim=1 (the classes)")
        plan.softmax_dim.append(node)
        return "vec"
    if _is_elementwise(node, gm):
        others = [a for a in node.all_input_nodes if a is not source and plan.kinds.get(a) != "scalar"]
        if all(plan.kinds.get(a) == kind and _shape(a) == _shape(source) for a in others):
            if kind == "flat":
                plan.feature_shape[node] = plan.feature_shape[source]
            return kind
        raise _fail(node, gm, "combines the head's values with a tensor that is not of the same shape and stage",
                    "only numbers and same-shaped head values can be mixed after the flatten")
    if node.op == "call_function" and node.target is F.linear:
        raise _fail(node, gm, "is a functional linear whose weights fx cannot move into a convolution",
                    "use an nn.Linear module")
    raise _fail(node, gm, f"works on the {'flattened feature map' if kind == 'flat' else 'per-window vector'} "
                f"in a way convolutionalize does not know to be per-window",
                "expected only Linear, activations, Dropout, BatchNorm1d and softmax after the flatten")


def _check_output(node: fx.Node, gm: fx.GraphModule, plan: _Plan) -> None:
    result = node.args[0]
    if not isinstance(result, fx.Node) or plan.kinds.get(result) != "vec":
        found = plan.kinds.get(result, type(result).__name__) if isinstance(result, fx.Node) else \
            type(result).__name__
        raise ConversionError(
            f"convolutionalize: the classifier should return one (N, K) score tensor, found a {found} result; "
            f"return only the class scores."
        )


def apply_plan(gm: fx.GraphModule, plan: _Plan) -> fx.GraphModule:
    """Rewrite ``gm`` in place as ``plan`` says; return it recompiled."""
    for target, module in plan.modules.items():
        parent, _, name = target.rpartition(".")
        setattr(gm.get_submodule(parent), name, module)
    for node in plan.remove:
        node.replace_all_uses_with(node.all_input_nodes[0])
        gm.graph.erase_node(node)
    for i, (node, pool) in enumerate(plan.pools.items()):
        if node.op == "call_module":
            parent, _, name = node.target.rpartition(".")
            setattr(gm.get_submodule(parent), name, pool)
            continue
        target = f"sliding_pool{i}"
        gm.add_submodule(target, pool)
        with gm.graph.inserting_after(node):
            call = gm.graph.call_module(target, (node.all_input_nodes[0],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    for node in plan.softmax_dim:
        if node.op == "call_module":
            gm.get_submodule(node.target).dim = 1
        elif "dim" in node.kwargs:
            node.update_kwarg("dim", 1)
        else:
            node.update_arg(1, 1)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    if plan.padded is not None:
        warnings.warn(
            f"convolutionalize: {plan.padded}, so the FCN sees real neighbours where each window saw padding; its "
            f"scores equal the classifier's only approximately near window borders (use unpadded layers for "
            f"exact equality).", UserWarning, stacklevel=3)
    return gm
