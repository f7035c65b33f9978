"""The one table of operator rules: what each operation of a traced network *is*, for geometry and conversion.

``classify(node, gm)`` turns one ``torch.fx`` node (a module call, a function or a method) into an :class:`Op`: its
kind and the numbers that matter (a window's kernel/stride/padding/dilation, a resampling's mode and scale, the dims
of a reduction or a permutation, ...), and for the operations that make an output depend on the whole image the
reason, in words. :mod:`fcnkit.geometry.rules` turns an ``Op`` into index arithmetic; :mod:`fcnkit.convert` into a
rewrite of a classifier. Neither keeps its own list of operations. ``trace`` is the one tracer both use.

Kinds: ``window`` (convolution, pooling, transposed convolution, unpooling), ``resample`` (interpolation),
``shuffle`` (pixel (un)shuffle), ``pad``, ``pad_to_multiple``, ``pointwise`` (element-wise), ``channelwise`` (mixes
channels at one position: eval-mode BatchNorm, LocalResponseNorm), ``softmax`` (normalises along ``dim``),
``reduction``, ``reshape`` (flatten/view/reshape/unflatten), ``permute`` (permute/transpose/movedim/swapaxes),
``cast`` (contiguous, dtype and device moves), ``split``, ``concat``, ``getitem``, ``slice`` (ATen's crop along one
dim: :mod:`fcnkit.geometry.aten`), ``shape`` (sizes, checks),
``linear``, ``layer_norm``, ``matmul``, ``adaptive`` (adaptive pooling), ``nonlocal`` and ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
import torch.nn as nn

from fcnkit.layers import check_nchw, pad_to_multiple

WHOLE_IMAGE = "tiles cannot equal the whole-image run"


@dataclass(frozen=True)
class Window:
    """A sliding-window operation along rows and columns (``padding`` is what it adds before index 0)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool = False
    transposed: bool = False
    padding_mode: str = "zeros"

    def span(self, axis: int) -> int:
        """Input pixels one window covers along ``axis`` (0 rows, 1 columns)."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1


@dataclass(frozen=True)
class Op:
    """What one node does. ``args`` holds the kind's parameters by name (see each kind in the module docstring)."""

    kind: str
    name: str
    window: Window | None = None
    reason: str | None = None  # kind "nonlocal"/"adaptive": what makes the output depend on the whole image
    fix: str | None = None  # how the user avoids that, when it is not "the model is not local"
    args: dict[str, Any] = field(default_factory=dict)


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window(k: Any, s: Any, p: Any, d: Any, *, ceil_mode: bool = False, transposed: bool = False,
           padding_mode: str = "zeros") -> Window:
    """A :class:`Window` from PyTorch's arguments (``padding="same"`` puts d·(k−1)//2 before, the odd pixel after)."""
    k, d = _pair(k), _pair(d)
    s = _pair(s if s else k)
    if isinstance(p, str):
        p = tuple((di * (ki - 1) // 2) if p == "same" else 0 for ki, di in zip(k, d))
    return Window(k, s, _pair(p), d, bool(ceil_mode), transposed, padding_mode)


# ---- modules ------------------------------------------------------------------------------------------------------
POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Identity, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
CHANNELWISE_MODULES = (nn.LocalResponseNorm, nn.ChannelShuffle)
ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
INSTANCE = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
BATCH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
             nn.TransformerDecoder, nn.Transformer)
PADS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
SPATIAL = (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.MaxUnpool2d, nn.Upsample, nn.PixelShuffle,
           nn.PixelUnshuffle, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

# The tracer keeps these (and their subclasses: fcnkit's MaxUnpool checks shapes) as single nodes.
LEAVES = (*SPATIAL, nn.Flatten, nn.GroupNorm, nn.LayerNorm, nn.Linear, nn.RNNBase, *PADS, *ADAPTIVE, *INSTANCE,
          *BATCH, *ATTENTION, *SOFTMAX_MODULES, *POINTWISE_MODULES, *CHANNELWISE_MODULES)


def module_op(m: nn.Module) -> Op:
    """The :class:`Op` of a call of module ``m`` (its arguments other than the input do not matter)."""
    name = type(m).__name__
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        transposed = isinstance(m, nn.ConvTranspose2d)
        return Op("window", name, window(m.kernel_size, m.stride, m.padding, m.dilation, transposed=transposed,
                                         padding_mode=m.padding_mode))
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return Op("window", name, window(m.kernel_size, m.stride, m.padding, getattr(m, "dilation", 1),
                                         ceil_mode=m.ceil_mode), args={"return_indices": getattr(m, "return_indices",
                                                                                                 False)})
    if isinstance(m, nn.MaxUnpool2d):
        return Op("window", name, window(m.kernel_size, m.stride, m.padding, 1, transposed=True))
    if isinstance(m, nn.Upsample):
        return Op("resample", name, args={"size": m.size, "scale_factor": m.scale_factor, "mode": m.mode,
                                          "align_corners": m.align_corners})
    if isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
        up = isinstance(m, nn.PixelShuffle)
        return Op("shuffle", name, args={"factor": m.upscale_factor if up else m.downscale_factor, "up": up})
    if isinstance(m, PADS):
        return Op("pad", name, args={"pad": tuple(m.padding)})
    if isinstance(m, nn.Flatten):
        return Op("reshape", name, args={"start_dim": m.start_dim, "end_dim": m.end_dim})
    if isinstance(m, ADAPTIVE):
        pool = "max" if "Max" in name else "avg"
        return Op("adaptive", name, reason="pools the whole image to a fixed size",
                  args={"pool": pool, "output_size": m.output_size})
    if isinstance(m, nn.GroupNorm):
        return Op("nonlocal", name, reason="normalizes over the whole image")
    if isinstance(m, INSTANCE):
        if m.training or not m.track_running_stats:
            return Op("nonlocal", name, reason="normalizes each channel over the whole image")
        return Op("channelwise", name)
    if isinstance(m, BATCH):
        if m.training or m.running_mean is None:
            why = "is in training mode" if m.training else "has no running statistics"
            return Op("nonlocal", name, reason=f"{why}, so it normalizes with statistics of the whole batch and "
                      f"image", fix="call model.eval() first")
        return Op("channelwise", name)
    if isinstance(m, nn.LayerNorm):
        return Op("layer_norm", name, args={"count": len(m.normalized_shape)})
    if isinstance(m, nn.Linear):
        return Op("linear", name)
    if isinstance(m, ATTENTION):
        return Op("nonlocal", name, reason="attends over all positions of the image",
                  args={"outputs": 2 if isinstance(m, nn.MultiheadAttention) else 1})
    if isinstance(m, nn.RNNBase):
        return Op("nonlocal", name, reason="is recurrent: its output depends on the whole sequence of positions",
                  args={"outputs": 2})
    if isinstance(m, SOFTMAX_MODULES):
        return Op("softmax", name, args={"dim": m.dim})
    if isinstance(m, POINTWISE_MODULES):
        per_channel = isinstance(m, nn.PReLU) and m.num_parameters > 1
        return Op("pointwise", name, args={"per_channel": per_channel})
    if isinstance(m, CHANNELWISE_MODULES):
        return Op("channelwise", name)
    return Op("unknown", name)


def nonlocal_module(m: nn.Module) -> Op | None:
    """``module_op(m)`` when it makes the output depend on the whole image (a LayerNorm counts), else None."""
    op = module_op(m)
    if op.kind == "layer_norm":
        return Op("nonlocal", op.name, reason="normalizes over its last dimensions, which include space")
    return op if op.kind in ("nonlocal", "adaptive") else None


# ---- functions and methods -----------------------------------------------------------------------------------------
_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_T = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_MAXPOOL = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_UNPOOL = ("input", "indices", "kernel_size", "stride", "padding", "output_size")
_INTERP = ("input", "size", "scale_factor", "mode", "align_corners")
_BATCH_NORM = ("input", "running_mean", "running_var", "weight", "bias", "training")
_INSTANCE_NORM = ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats")
REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "median",
              "argmax", "argmin", "nansum", "nanmean"}
SOFTMAX = {"softmax": 1, "log_softmax": 1, "softmin": 1, "normalize": 2}  # name -> position of its `dim`
CASTS = {"contiguous", "float", "double", "half", "bfloat16", "to", "type", "type_as", "clone", "detach", "cpu",
         "cuda", "requires_grad_"}
SPLITS = {"chunk", "split", "split_with_sizes", "unbind", "tensor_split"}
RESHAPES = {"flatten", "view", "reshape", "unflatten"}
PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"}
SHAPES = {"check_nchw", "getattr", "size", "dim", "numel", "ndimension"}
ATTENTION_FUNCTIONS = {"einsum", "baddbmm", "scaled_dot_product_attention", "multi_head_attention_forward"}
POINTWISE_NAMES = {
    "add", "sub", "mul", "div", "truediv", "floordiv", "true_divide", "neg", "pow", "abs", "exp", "log", "sqrt",
    "rsqrt", "relu", "relu6", "leaky_relu", "gelu", "silu", "elu", "selu", "celu", "mish", "sigmoid", "tanh",
    "hardtanh", "hardswish", "hardsigmoid", "softplus", "clamp", "clip", "where", "maximum", "minimum",
    "masked_fill", "sign", "floor", "ceil", "round", "square", "reciprocal", "dropout", "dropout1d", "dropout2d",
    "alpha_dropout", "feature_alpha_dropout", "prelu", "lerp", "addcmul", "addcdiv",
    "expand_as", "sub_", "add_", "mul_", "div_", "relu_", "clamp_", "sigmoid_", "tanh_", "iadd", "imul", "isub",
    "itruediv", "and_", "or_", "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "bitwise_and",
}
CHANNELWISE_NAMES = {"local_response_norm", "channel_shuffle"}


def target_name(node: fx.Node) -> str:
    """``'conv2d'`` for ``F.conv2d``, ``'add'`` for ``operator.add`` or ``x.__add__``, the method name for methods."""
    t = node.target
    packet = getattr(t, "_overloadpacket", None)  # an ATen operator overload (exported programs): aten.relu_.default
    name = t if isinstance(t, str) else getattr(packet or t, "__name__", str(t))
    return name.removeprefix("__").removesuffix("__")


def bind(node: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments of ``node`` by name (fx keeps them as written)."""
    bound = dict(defaults)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


def classify(node: fx.Node, gm: fx.GraphModule) -> Op:
    """The :class:`Op` of a ``call_module``, ``call_function`` or ``call_method`` node of ``gm``."""
    if node.op == "call_module":
        return module_op(gm.get_submodule(str(node.target)))
    name = target_name(node)
    if name in ("conv2d", "conv_transpose2d"):
        transposed = name == "conv_transpose2d"
        a = bind(node, _CONV_T if transposed else _CONV, {"stride": 1, "padding": 0, "dilation": 1})
        weight = _constant(gm, a["weight"])
        if weight is None:
            return Op("unknown", f"{name} with computed weights")
        return Op("window", name, window(tuple(weight.shape[-2:]), a["stride"], a["padding"], a["dilation"],
                                         transposed=transposed))
    if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        a = bind(node, _AVGPOOL if name == "avg_pool2d" else _MAXPOOL,
                 {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
        return Op("window", name, window(a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                                         ceil_mode=a["ceil_mode"]),
                  args={"return_indices": bool(a["return_indices"]) or name.endswith("indices")})
    if name == "max_unpool2d":
        a = bind(node, _UNPOOL, {"stride": None, "padding": 0})
        return Op("window", name, window(a["kernel_size"], a["stride"], a["padding"], 1, transposed=True))
    if name in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
        a = bind(node, _INTERP, {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None})
        if name == "upsample_bilinear":
            a["mode"], a["align_corners"] = "bilinear", True
        return Op("resample", name, args={k: a[k] for k in ("size", "scale_factor", "mode", "align_corners")})
    if name in ("pad", "constant_pad_nd"):
        pad = bind(node, ("input", "pad"), {})["pad"]
        return Op("pad", name, args={"pad": tuple(pad) if isinstance(pad, (tuple, list)) else (pad,)})
    if name == "pad_to_multiple":  # fcnkit.layers: zeros at the bottom/right up to a multiple
        return Op("pad_to_multiple", name, args={"multiple": bind(node, ("x", "multiple"), {})["multiple"]})
    if name in ("pixel_shuffle", "pixel_unshuffle"):
        factor = node.args[1] if len(node.args) > 1 else next(iter(node.kwargs.values()))
        return Op("shuffle", name, args={"factor": factor, "up": name == "pixel_shuffle"})
    if name.startswith("adaptive_"):
        return Op("adaptive", name, reason="pools the whole image to a fixed size",
                  args={"pool": "max" if "max" in name else "avg", "output_size": _arg(node, 1, "output_size")})
    return _simple_call(node, name)


def _simple_call(node: fx.Node, name: str) -> Op:
    """Calls whose kind follows from the name (and, for normalisations, one flag)."""
    if name in SHAPES:
        return Op("shape", name)
    if name == "getitem":
        return Op("getitem", name, args={"index": node.args[1]})
    if name in ("cat", "concat", "concatenate", "stack"):
        a = bind(node, ("tensors", "dim"), {"dim": 0})
        return Op("concat", name, args={"tensors": a["tensors"], "dim": a["dim"], "stack": name == "stack"})
    if name in RESHAPES:
        a = bind(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1}) if name == "flatten" \
            else {}
        return Op("reshape", name, args={k: a[k] for k in ("start_dim", "end_dim") if k in a})
    if name in PERMUTES:
        return Op("permute", name, args={"dims": _permute_args(node, name)})
    if name in CASTS:
        return Op("cast", name)
    if name in SPLITS:
        return Op("split", name, args={"dim": node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)})
    if name == "group_norm":
        return Op("nonlocal", name, reason="normalizes over the whole image")
    if name == "instance_norm":
        if bind(node, _INSTANCE_NORM, {"use_input_stats": True})["use_input_stats"]:
            return Op("nonlocal", name, reason="normalizes each channel over the image")
        return Op("channelwise", name)
    if name == "batch_norm":
        if bind(node, _BATCH_NORM, {"training": False})["training"]:
            return Op("nonlocal", name, reason="uses batch statistics (training=True)", fix="call model.eval() first")
        return Op("channelwise", name)
    if name == "layer_norm":
        shape = bind(node, ("input", "normalized_shape"), {})["normalized_shape"]
        return Op("layer_norm", name, args={"count": len(shape) if isinstance(shape, (tuple, list)) else 1})
    if name == "linear":
        return Op("linear", name)
    if name in ("matmul", "bmm"):
        return Op("matmul", name)
    if name in ATTENTION_FUNCTIONS:
        return Op("nonlocal", name, reason="mixes positions across the image (attention)")
    if name in REDUCTIONS:
        dim = _arg(node, 1, "dim")
        if isinstance(dim, fx.Node):  # torch.max(a, b): element-wise
            return Op("pointwise", name)
        return Op("reduction", name, args={"dim": dim, "keepdim": bool(_arg(node, 2, "keepdim", False))})
    if name in SOFTMAX:
        at = SOFTMAX[name]
        dim = _arg(node, at, "dim", 1 if name == "normalize" else None)
        return Op("softmax", name, args={"dim": dim, "dim_index": at})
    if name in CHANNELWISE_NAMES:
        return Op("channelwise", name)
    if name in POINTWISE_NAMES:
        return Op("pointwise", name, args={"per_channel": name == "prelu"})
    return Op("unknown", name)


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, given by keyword or at position ``index`` (0 = the input tensor)."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _constant(gm: fx.GraphModule, arg: Any) -> Any:
    """The tensor behind a ``get_attr`` node (a function's weight), else None."""
    if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
        return None
    obj: Any = gm
    for part in str(arg.target).split("."):
        obj = getattr(obj, part)
    return obj


def _permute_args(node: fx.Node, name: str) -> tuple[Any, ...]:
    if name == "permute":
        dims = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (tuple, list)) else node.args[1]
        return tuple(node.kwargs.get("dims", dims))
    if name == "t":
        return (0, 1)
    return (_arg(node, 1, "source" if name.startswith("move") else "dim0"),
            _arg(node, 2, "destination" if name.startswith("move") else "dim1"))


def permutation(op: Op, rank: int) -> list[int] | None:
    """For a ``permute`` op on a ``rank``-D tensor: output dim i is input dim ``result[i]``; None if not fixed ints."""
    dims = op.args["dims"]
    if not all(isinstance(d, int) for d in dims):
        return None
    if op.name == "permute":
        order = [d % rank for d in dims]
        return order if sorted(order) == list(range(rank)) else None
    if op.name.startswith("move"):
        order = [d for d in range(rank) if d != dims[0] % rank]
        order.insert(dims[1] % rank, dims[0] % rank)
        return order
    if op.name == "t" and rank != 2:
        return None
    a, b = dims[0] % rank, dims[1] % rank
    order = list(range(rank))
    order[a], order[b] = order[b], order[a]
    return order


def reduced_dims(op: Op, rank: int) -> set[int]:
    """The dims a ``reduction`` op reduces over (all of them when ``dim`` is not given)."""
    dim = op.args["dim"]
    if dim is None:
        return set(range(rank))
    return {d % rank for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}


class Tracer(fx.Tracer):
    """Keeps the layers with rules (and their subclasses) as single nodes, and fcnkit's shape helpers as calls."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=(check_nchw, pad_to_multiple))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, *, class_name: str | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (raises what ``torch.fx`` raises for untraceable code); the module is reused."""
    tracer = Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, class_name=class_name or type(model).__name__)
