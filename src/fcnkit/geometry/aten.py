"""ATen operators as :class:`~fcnkit.geometry.ops.Op`: the geometry of a torch.export program, read from its graph.

A program written by ``torch.export`` (``.pt2``, :class:`fcnkit.loading.ExportedModel`) is an fx graph of ATen
operators (``aten.conv2d.default``, ``aten.max_pool2d_with_indices.default``, ``aten.pad.default``, ...) with the
weights as ``get_attr`` nodes. ``aten_op`` binds each call's arguments by the operator's own schema and maps it to
the kind the rules already know, so the program's geometry comes from the same index arithmetic as an eager model's,
in milliseconds instead of minutes of probe runs. Size arithmetic (``aten.sym_size.int`` and Python's ``+``/``//``
on its results) is not spatial and is skipped; a crop at the end (``aten.slice.Tensor``) shifts by its start, as
indexing does. What has no rule here is ``unknown``, and the analysis falls back to measuring the program.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from fcnkit.geometry.ops import (POINTWISE_NAMES, REDUCTIONS, RESHAPES, SOFTMAX, Op, _constant, _permute_args,
                                 target_name, window)

_ops = torch._ops  # OpOverload: one overload of an ATen operator (the type of node.target in an exported graph)

_WINDOWS = {"conv2d", "convolution", "_convolution", "conv_transpose2d", "max_pool2d", "max_pool2d_with_indices",
            "avg_pool2d"}
_RESAMPLE = {"upsample_nearest2d": "nearest", "_upsample_nearest_exact2d": "nearest-exact",
             "upsample_bilinear2d": "bilinear", "upsample_bicubic2d": "bicubic"}
_PADS = {"pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "circular_pad2d"}
_SHAPES = {"sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "_assert_tensor_metadata", "_assert_scalar",
           "sym_constrain_range_for_size", "size", "dim"}
_CASTS = {"clone", "contiguous", "_to_copy", "to", "alias", "detach", "lift_fresh_copy", "type_as", "_to_dtype"}
_POINTWISE = POINTWISE_NAMES | {"clamp_min", "clamp_max", "rsub", "hardtanh_", "leaky_relu_", "elu_", "silu_",
                                "hardswish_", "fill", "zeros_like", "ones_like", "full_like", "native_dropout"}
_ATTENTION = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_attention_math", "einsum", "baddbmm"}
_WHOLE_IMAGE_NORMS = {"group_norm": "normalizes over the whole image",
                      "native_group_norm": "normalizes over the whole image",
                      "instance_norm": "normalizes each channel over the image"}
# operators that return several tensors (the graph takes them apart with getitem): how many
_OUTPUTS = {"max_pool2d_with_indices": 2, "native_batch_norm": 3, "_native_batch_norm_legit_no_training": 3,
            "_native_batch_norm_legit": 3, "native_group_norm": 3, "native_layer_norm": 3, "native_dropout": 2,
            "adaptive_max_pool2d": 2, "max": 2, "min": 2, "median": 2, "sort": 2, "topk": 2}


def is_aten(node: fx.Node) -> bool:
    """Whether ``node`` calls an ATen operator overload (as every call of an exported program does)."""
    return node.op == "call_function" and isinstance(node.target, _ops.OpOverload)


def exported_call(node: fx.Node) -> Op | None:
    """The :class:`Op` of a node that only exported programs have, else None: ``_guards_fn``, the module that checks
    the program's shape guards, computes nothing."""
    if node.op == "call_module" and str(node.target) == "_guards_fn":
        return Op("shape", "_guards_fn")
    return None


def aten_op(node: fx.Node, gm: fx.GraphModule) -> Op:
    """The :class:`Op` of a call of an ATen operator overload (``node.target``), arguments bound by its schema."""
    name = target_name(node)  # 'conv2d' for aten.conv2d.default
    a = _bind(node)
    outputs = _OUTPUTS.get(name, 1)
    if name in _WINDOWS:
        return _window_op(name, a, gm, outputs)
    if name == "max_unpool2d":
        return _unpool_op(name, a, gm)
    if name in _RESAMPLE:
        scale = a.get("scale_factors")
        if scale is None and a.get("scales_h") is not None:
            scale = (a["scales_h"], a.get("scales_w", a["scales_h"]))
        size = a.get("output_size") if scale is None else None
        return Op("resample", name, args={"size": size, "scale_factor": scale, "mode": _RESAMPLE[name],
                                          "align_corners": a.get("align_corners")})
    if name in _PADS:
        pad = a.get("pad", a.get("padding"))
        return Op("pad", name, args={"pad": tuple(pad) if isinstance(pad, (tuple, list)) else (pad,)})
    if name == "slice":
        return Op("slice", name, args={"dim": a.get("dim", 0), "start": a.get("start"), "step": a.get("step", 1)})
    if name in _SHAPES:
        return Op("shape", name)
    if name in _CASTS:
        return Op("cast", name)
    if name in ("cat", "concat", "stack"):
        return Op("concat", name, args={"tensors": a["tensors"], "dim": a.get("dim", 0), "stack": name == "stack"})
    return _norms_and_others(name, a, node, outputs)


def _norms_and_others(name: str, a: dict[str, Any], node: fx.Node, outputs: int) -> Op:
    if name in ("batch_norm", "native_batch_norm", "_native_batch_norm_legit"):
        if a.get("training", name == "_native_batch_norm_legit"):
            return Op("nonlocal", name, reason="uses batch statistics (training=True)", fix="call model.eval() "
                      "before exporting it", args={"outputs": outputs})
        return Op("channelwise", name, args={"outputs": outputs})
    if name == "_native_batch_norm_legit_no_training":
        return Op("channelwise", name, args={"outputs": outputs})
    if name in _WHOLE_IMAGE_NORMS:
        return Op("nonlocal", name, reason=_WHOLE_IMAGE_NORMS[name], args={"outputs": outputs})
    if name in ("layer_norm", "native_layer_norm"):
        shape = a.get("normalized_shape")
        count = len(shape) if isinstance(shape, (tuple, list)) else 1
        return Op("layer_norm", name, args={"count": count, "outputs": outputs})
    if name in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d"):
        return Op("adaptive", name, reason="pools the whole image to a fixed size",
                  args={"pool": "max" if "max" in name else "avg", "output_size": a.get("output_size"),
                        "outputs": outputs})
    if name in _ATTENTION:
        return Op("nonlocal", name, reason="mixes positions across the image (attention)")
    if name in ("linear",):
        return Op("linear", name)
    if name in ("matmul", "bmm", "mm"):
        return Op("matmul", name)
    if name in REDUCTIONS:
        return Op("reduction", name, args={"dim": a.get("dim"), "keepdim": bool(a.get("keepdim", False)),
                                           "outputs": outputs if "dim" in a else 1})
    if name in SOFTMAX or name in ("_softmax", "_log_softmax"):
        return Op("softmax", name, args={"dim": a.get("dim"), "dim_index": 1})
    if name in RESHAPES or name == "_unsafe_view":
        keys = ("start_dim", "end_dim") if name == "flatten" else ()
        return Op("reshape", name, args={k: a[k] for k in keys if k in a})
    if name in ("permute", "transpose", "t", "movedim"):
        return Op("permute", name, args={"dims": _permute_args(node, name)})
    if name in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
        return Op("split", name, args={"dim": a.get("dim", 0)})
    if name in _POINTWISE or name.rstrip("_") in _POINTWISE:
        return Op("pointwise", name, args={"per_channel": name == "prelu", "outputs": outputs})
    return Op("unknown", f"aten.{name}")


def _bind(node: fx.Node) -> dict[str, Any]:
    """The call's arguments by the names of the operator's schema, defaults filled in."""
    arguments = node.target._schema.arguments
    bound = {arg.name: arg.default_value for arg in arguments if arg.has_default_value()}
    bound.update(zip((arg.name for arg in arguments), node.args))
    bound.update(node.kwargs)
    if "self" in bound and "input" not in bound:
        bound["input"] = bound["self"]
    return bound


def _pair(v: Any) -> Any:
    """ATen writes one value for both axes as a list of one (``stride=[1]``); an empty stride means the kernel."""
    if isinstance(v, (list, tuple)) and len(v) == 1:
        return (v[0], v[0])
    if isinstance(v, (list, tuple)) and not v:
        return None
    return v


def _window_op(name: str, a: dict[str, Any], gm: fx.GraphModule, outputs: int) -> Op:
    if name in ("conv2d", "convolution", "_convolution", "conv_transpose2d"):
        weight = _constant(gm, a["weight"])
        if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            return Op("unknown", f"aten.{name} with computed or non-2-D weights")
        transposed = name == "conv_transpose2d" or bool(a.get("transposed", False))
        return Op("window", name, window(tuple(weight.shape[-2:]), _pair(a["stride"]), _pair(a["padding"]),
                                         _pair(a["dilation"]), transposed=transposed))
    return Op("window", name, window(_pair(a["kernel_size"]), _pair(a.get("stride")), _pair(a.get("padding", 0)),
                                     _pair(a.get("dilation", 1)), ceil_mode=bool(a.get("ceil_mode", False))),
              args={"return_indices": outputs == 2})


def _unpool_op(name: str, a: dict[str, Any], gm: fx.GraphModule) -> Op:
    """ATen's max_unpool2d takes only the output size: its window is that of the pooling its indices come from."""
    indices = a.get("indices")
    pool = indices.args[0] if isinstance(indices, fx.Node) and indices.op == "call_function" and indices.args else None
    if not (isinstance(pool, fx.Node) and is_aten(pool) and target_name(pool) == "max_pool2d_with_indices"):
        return Op("unknown", f"aten.{name} with indices of no max_pool2d_with_indices")
    w = _window_op(target_name(pool), _bind(pool), gm, 2).window
    return Op("window", name, window(w.kernel, w.stride, w.padding, 1, transposed=True))
