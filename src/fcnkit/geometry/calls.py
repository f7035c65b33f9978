"""Geometry rules for fx ``call_function`` and ``call_method`` nodes (F.conv2d, F.interpolate, slicing, cat, ...).

The index arithmetic and the module rules are in :mod:`fcnkit.geometry.rules`; ``apply`` dispatches to both.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch.fx as fx

from fcnkit.geometry.rules import (
    WHOLE_IMAGE, Back, Value, _bind, _check_dims, _check_last_axes, _conv_like, _flat, _flatten, _linear,
    _module_rule, _pool_value, _resample, _resize, _shift, _spatial, _window, identity,
)

if TYPE_CHECKING:
    from fcnkit.geometry.propagate import _Propagation


# ---- functions and methods --------------------------------------------------------------------------------------
_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_T = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_MAXPOOL = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_UNPOOL = ("input", "indices", "kernel_size", "stride", "padding", "output_size")
_INTERP = ("input", "size", "scale_factor", "mode", "align_corners")
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "median",
               "argmax", "argmin", "nansum", "nanmean"}
_SOFTMAX = {"softmax", "log_softmax", "softmin", "normalize"}
_CASTS = {"contiguous", "float", "double", "half", "bfloat16", "to", "type", "type_as", "clone", "detach", "cpu",
          "cuda", "requires_grad_"}
_SPLITS = {"chunk", "split", "unbind", "tensor_split"}
_POINTWISE_NAMES = {
    "add", "sub", "mul", "div", "truediv", "floordiv", "true_divide", "neg", "pow", "abs", "exp", "log", "sqrt",
    "rsqrt", "relu", "relu6", "leaky_relu", "gelu", "silu", "elu", "selu", "celu", "mish", "sigmoid", "tanh",
    "hardtanh", "hardswish", "hardsigmoid", "softplus", "clamp", "clip", "where", "maximum", "minimum",
    "masked_fill", "sign", "floor", "ceil", "round", "square", "reciprocal", "dropout", "dropout1d", "dropout2d",
    "alpha_dropout", "feature_alpha_dropout", "local_response_norm", "prelu", "lerp", "addcmul", "addcdiv",
    "expand_as", "sub_", "add_", "mul_", "div_", "relu_", "clamp_", "sigmoid_", "tanh_", "iadd", "imul", "isub",
    "itruediv", "and_", "or_", "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "bitwise_and",
}


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def apply(prop: _Propagation, node: fx.Node) -> Any:
    """The value of ``node`` from the values of its arguments (see the module docstring)."""
    if not any(isinstance(prop.value(a), (Value, tuple)) for a in _leaves(node.args, node.kwargs)):
        return None  # shape arithmetic, constants
    if node.op == "call_module":
        return _module_rule(prop, node, prop.modules[node.target])
    return _call_rule(prop, node, _target_name(node).removeprefix("__").removesuffix("__"))


def _leaves(*args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_leaves(*a))
        elif isinstance(a, dict):
            out.extend(_leaves(*a.values()))
        elif isinstance(a, slice):
            out.extend(_leaves(a.start, a.stop, a.step))
        else:
            out.append(a)
    return out


def _call_rule(prop: _Propagation, node: fx.Node, name: str) -> Any:
    x = node.args[0] if node.args else node.kwargs.get("input")
    if name in ("check_nchw", "getattr", "size", "dim", "numel", "ndimension"):  # shapes and validation
        return None
    if name == "conv2d":
        a = _bind(node, _CONV, {"stride": 1, "padding": 0, "dilation": 1})
        return _conv_like(prop, node, x, tuple(prop.value(a["weight"]).shape[-2:]), a["stride"], a["padding"],
                          a["dilation"], transposed=False)
    if name == "conv_transpose2d":
        a = _bind(node, _CONV_T, {"stride": 1, "padding": 0, "dilation": 1})
        return _conv_like(prop, node, x, tuple(prop.value(a["weight"]).shape[-2:]), a["stride"], a["padding"],
                          a["dilation"], transposed=True)
    if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        names = _AVGPOOL if name == "avg_pool2d" else _MAXPOOL
        a = _bind(node, names, {"stride": None, "padding": 0, "dilation": 1, "return_indices": False})
        indices = a["return_indices"] or name.endswith("indices")
        return _pool_value(prop, node, x, a["kernel_size"], a["stride"], a["padding"], a["dilation"], indices)
    if name == "max_unpool2d":
        a = _bind(node, _UNPOOL, {"stride": None, "padding": 0})
        return _conv_like(prop, node, x, a["kernel_size"], a["stride"] or a["kernel_size"], a["padding"], 1,
                          transposed=True, extra=(a["indices"],))
    if name in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
        a = _bind(node, _INTERP, {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None})
        if name == "upsample_bilinear":
            a["mode"], a["align_corners"] = "bilinear", True
        return _resize(prop, node, x, a["size"], a["scale_factor"], a["mode"], a["align_corners"])
    if name in ("pad", "constant_pad_nd"):
        return _pad(prop, node, x, _bind(node, ("input", "pad"), {})["pad"])
    if name == "pad_to_multiple":  # fcnkit.layers: zeros at the bottom/right up to a multiple
        multiple = _bind(node, ("x", "multiple"), {})["multiple"]
        if isinstance(multiple, int):
            prop.multiples.append(multiple)
        else:
            prop.unsupported(node, "pad_to_multiple with a computed multiple")
        return (prop.merge(node, [x]), None)
    if name in ("pixel_shuffle", "pixel_unshuffle"):
        r = node.args[1] if len(node.args) > 1 else next(iter(node.kwargs.values()))
        if name == "pixel_shuffle":
            return prop.derive(node, x, (_resample(Fraction(1, r), "nearest"),) * 2, (Fraction(1, r),) * 2)
        return prop.derive(node, x, (_window(r, r, 0, 1),) * 2, (Fraction(r),) * 2)
    if name == "getitem":
        return _getitem(prop, node, x, node.args[1])
    if name in ("cat", "concat", "concatenate", "stack"):
        return _concat(prop, node, name)
    if name in ("flatten", "view", "reshape", "unflatten"):
        return _reshape(prop, node, x, name)
    if name in ("permute", "transpose", "swapaxes"):
        return _permute(prop, node, x, name)
    if name in _CASTS:
        return prop.merge(node, [x])
    if name in _SPLITS:
        return _split(prop, node, x)
    if name.startswith("adaptive_"):
        prop.flag(node, name, f"pools the whole image to a fixed size; {WHOLE_IMAGE}")
    elif name in ("group_norm", "instance_norm"):
        why = "normalizes over the whole image" if name == "group_norm" else "normalizes each channel over the image"
        if name == "group_norm" or _bind(node, ("input", "running_mean", "running_var", "weight", "bias",
                                                 "use_input_stats"), {"use_input_stats": True})["use_input_stats"]:
            prop.flag(node, name, f"{why}; {WHOLE_IMAGE}")
    elif name == "batch_norm":
        if _bind(node, ("input", "running_mean", "running_var", "weight", "bias", "training"),
                 {"training": False})["training"]:
            prop.flag(node, name, "uses batch statistics (training=True); call model.eval() first")
    elif name == "layer_norm":
        shape = _bind(node, ("input", "normalized_shape"), {})["normalized_shape"]
        _check_last_axes(prop, node, x, len(_flat(shape)), name, "normalizes over")
    elif name == "linear":
        _linear(prop, node, x, name)
    elif name in ("matmul", "bmm", "einsum", "baddbmm", "scaled_dot_product_attention",
                  "multi_head_attention_forward"):
        if name not in ("matmul", "bmm") or any(v.axes is None or 3 in v.axes for v in _values(prop, node.args)):
            prop.flag(node, name, f"mixes positions across the image (attention); {WHOLE_IMAGE}")
    elif name in _REDUCTIONS:
        return _reduce(prop, node, x, name)
    elif name in _SOFTMAX:
        default = 1 if name == "normalize" else None
        dim = _bind(node, ("input", "p" if name == "normalize" else "dim", "dim"), {"dim": default}).get("dim")
        _check_dims(prop, node, x, dim if dim is not None else 1, name, "normalizes over")
    elif name not in _POINTWISE_NAMES:
        prop.unsupported(node, name)
    return prop.merge(node, [node.args, node.kwargs])


def _values(prop: _Propagation, args: Any) -> list[Value]:
    return [v for v in (prop.value(a) for a in _leaves(args)) if isinstance(v, Value)]


def _pad(prop: _Propagation, node: fx.Node, x: Any, pad: Any) -> Any:
    v = _spatial(prop, x)
    pad = list(pad) + [0] * (4 - len(pad))
    left, top = pad[0], pad[2]
    if v is None or v.axes != (2, 3) or not (isinstance(left, int) and isinstance(top, int)):
        prop.unsupported(node, "padding that is not a fixed amount at the top/left of (N, C, H, W)")
        return prop.merge(node, [x])
    # bottom/right padding (computed from x.shape by fcnkit's models) moves no index: it is ignored
    return prop.derive(node, x, (_shift(-top), _shift(-left)), (Fraction(1),) * 2)


def _getitem(prop: _Propagation, node: fx.Node, x: Any, index: Any) -> Any:
    v = prop.value(x)
    if isinstance(v, tuple):
        return v[index] if isinstance(index, int) else None
    if not isinstance(v, Value):
        return None
    if isinstance(x, fx.Node) and _target_name(x) in _SPLITS | {"max", "min", "median"}:
        return v  # one piece of a split along channels, or the values/indices of a reduction
    if v.axes is None:
        return prop.merge(node, [x])
    index = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index[at:at + 1] = [slice(None)] * (4 - (len(index) - 1))
    index += [slice(None)] * (4 - len(index))
    backs: dict[int, Back] = {}
    kept: list[int] = []
    for dim, item in enumerate(index):
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


def _concat(prop: _Propagation, node: fx.Node, name: str) -> Any:
    a = _bind(node, ("tensors", "dim"), {"dim": 0})
    values = _values(prop, a["tensors"])
    dim = a["dim"] % 4 if isinstance(a["dim"], int) else a["dim"]
    if name == "stack" or any(v.axes is not None and dim in v.axes for v in values):
        prop.unsupported(node, f"{name} along dim {a['dim']}")
    return prop.merge(node, a["tensors"])


def _reshape(prop: _Propagation, node: fx.Node, x: Any, name: str) -> Any:
    v = _spatial(prop, x)
    if v is None:
        return None
    if v.axes is None:  # back from a flattened map (e.g. after attention): the map before the flatten
        return Value(v.jump, [(x, (identity, identity))], (2, 3))
    if name == "flatten":
        a = _bind(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
        return _flatten(prop, node, x, a["start_dim"], a["end_dim"])
    return Value(v.jump, [(x, (identity, identity))], None)


def _permute(prop: _Propagation, node: fx.Node, x: Any, name: str) -> Any:
    out = prop.merge(node, [x])
    if out is None or out.axes is None:
        return out
    if name == "permute":
        dims = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (tuple, list)) else node.args[1]
        dims = [d % 4 for d in dims]
        out.axes = tuple(sorted(dims.index(a) for a in out.axes))
    else:
        d0, d1 = (d % 4 for d in node.args[1:3])
        swap = {d0: d1, d1: d0}
        out.axes = tuple(sorted(swap.get(a, a) for a in out.axes))
    return out


def _split(prop: _Propagation, node: fx.Node, x: Any) -> Any:
    v = _spatial(prop, x)
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    if v is not None and v.axes is not None and dim % 4 in v.axes:
        prop.unsupported(node, "split along a spatial axis")
    return prop.merge(node, [x])


def _reduce(prop: _Propagation, node: fx.Node, x: Any, name: str) -> Any:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dim, fx.Node):  # torch.max(a, b): element-wise
        return prop.merge(node, node.args)
    _check_dims(prop, node, x, dim, name, "reduces over")
    return prop.merge(node, [x])
