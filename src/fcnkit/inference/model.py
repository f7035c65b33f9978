"""The model as inference runs it, prepared once per call: on its device, in eval mode, BatchNorm folded into the
convolution before it, weights in channels_last, and for ``precision="bf16"`` cast to bfloat16 once.

The caller's model is never changed: the inference copy shares every tensor it does not change (a parameter that is
moved, folded or cast becomes a new tensor in the copy), so an fp32 copy on the model's own device costs almost no
memory. Folding ``conv → BatchNorm`` (eval statistics) into one convolution is exact in real arithmetic and within
~1e-6 relative in float32; it saves one pass over each activation map, and on CPU the ReLU after a convolution is
applied by the same oneDNN call (another pass saved).

>>> net = prepare(fcnkit.build_model("unet", num_classes=3), precision="bf16")   # doctest: +SKIP
>>> fcnkit.predict(net, image)   # predict, predict_tiled, plan_prediction and predict_dask accept it
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fcnkit.errors import InputError
from fcnkit.hardware import native_bf16, onednn_bf16, warn_if_emulated

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class InferenceModel:
    """A model prepared for inference: ``net`` runs (eval mode, on ``device``, inputs of ``dtype`` in
    ``memory_format``; calling the ``InferenceModel`` calls it); ``source`` is the caller's model (geometry and cost
    caches are kept for it). ``precision`` is resolved: ``"fp32"`` or ``"bf16"``."""

    net: nn.Module
    source: nn.Module
    device: torch.device
    precision: str
    dtype: torch.dtype
    memory_format: torch.memory_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``; ``"auto"`` is bf16 where ``device`` has native bf16. Inference and training both
    resolve here; each warns (:func:`fcnkit.hardware.warn_if_emulated`) where its call is."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}; pass 'auto' "
                         f"(bf16 where the hardware has it natively), 'fp32' or 'bf16'.")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, else where the model's parameters are (CPU for a model without any)."""
    param = next(model.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    if device is None:
        return here
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device={device!r} is not a device; expected 'cpu', 'cuda' or 'cuda:K'.") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={str(device)!r} but CUDA is not available here; pass --device cpu "
                         f"(device='cpu' from Python).")
    if target.type == here.type and target.index is None:
        return here
    return target


def prepare(model: nn.Module | InferenceModel, *, device: str | torch.device | None = None,
            precision: str | None = None) -> InferenceModel:
    """The inference copy of ``model`` (see the module docstring). An ``InferenceModel`` is returned as it is when
    ``device``/``precision`` are ``None`` or agree with it. ``precision``: ``"fp32"`` (default), ``"bf16"`` or
    ``"auto"``.

    Not compiled: ``torch.compile`` (inductor, frozen weights) measured 1.4-1.5× over plain eager on the default
    unet, but nothing over this copy once its convolutions carry their ReLU (1.05× fp32, 0.96× bf16;
    benchmarks/precision.py --compile), and it compiles for seconds per tile shape."""
    if isinstance(model, InferenceModel):
        wanted = None if precision is None else resolve_precision(precision, model.device)
        if (wanted not in (None, model.precision)
                or (device is not None and resolve_device(model.net, device) != model.device)):
            raise InputError(f"the model was prepared for {model.precision} on {model.device}; pass device and "
                             f"precision to prepare() or leave them out here.")
        return model
    if not isinstance(model, nn.Module):
        raise InputError(f"model is a {type(model).__name__}; expected a torch.nn.Module.")
    target = resolve_device(model, device)
    resolved = resolve_precision(precision or "fp32", target)
    warn_if_emulated(resolved, target, stacklevel=3)
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float32
    # channels_last is what oneDNN runs fastest on CPU (3×3 convolutions ~1.8×); cuDNN picks its own layout
    memory_format = torch.channels_last if target.type == "cpu" else torch.contiguous_format
    # share every tensor with the caller's model; the steps below replace, never modify, the ones they change
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    net = copy.deepcopy(model, memo=shared)
    net.eval()
    fold_batchnorm(net)

    def convert(t: torch.Tensor) -> torch.Tensor:
        moved = t.to(device=target, dtype=dtype if t.is_floating_point() else t.dtype)
        # a weight that is copied anyway is stored as the convolution reads it; an unchanged one stays shared
        return moved.contiguous(memory_format=memory_format) if moved is not t and t.ndim == 4 else moved

    _convert(net, convert)
    if target.type == "cpu":
        fuse_conv_relu(net)
    return InferenceModel(net=net, source=model, device=target, precision=resolved, dtype=dtype,
                          memory_format=memory_format)


def fold_batchnorm(net: nn.Module) -> int:
    """Fold each eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential`` into that
    convolution (new weight and bias tensors; the BatchNorm becomes ``nn.Identity``). Returns how many were folded.

    ``bn(conv(x)) = γ (w∗x + b − μ) / √(σ² + ε) + β``, so ``w' = w·γ/√(σ² + ε)`` per output channel and
    ``b' = (b − μ)·γ/√(σ² + ε) + β``. Only where the convolution's output goes nowhere else (a Sequential's next
    module) and nothing hooks either module.
    """
    folded = 0
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and _foldable(conv, bn)):
                continue
            with torch.no_grad():
                var, mean = bn.running_var.double(), bn.running_mean.double()
                gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
                beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
                scale = gamma / torch.sqrt(var + bn.eps)
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
                weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
                conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
                conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(conv.weight.dtype), requires_grad=False)
            seq._modules[second] = nn.Identity()
            folded += 1
    return folded


class ConvReLU(nn.Module):
    """``relu(conv(x))`` as one oneDNN call (the ReLU applied as the convolution writes its output): one pass less
    over every activation map. Measured on the default unet at 512² in bf16: 17% faster, identical outputs."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return torch.ops.mkldnn._convolution_pointwise(x, c.weight, c.bias, list(c.padding), list(c.stride),
                                                       list(c.dilation), c.groups, "relu", [], "")


def fuse_conv_relu(net: nn.Module) -> int:
    """Replace each ``Conv2d → ReLU`` of an ``nn.Sequential`` (a folded BatchNorm's ``Identity`` between them is
    skipped) by :class:`ConvReLU`, on CPU builds with oneDNN. Returns how many were fused.

    A bf16 convolution is fused only where oneDNN has a bf16 path on this CPU (AVX512BW/VL/DQ, AVX-NE-CONVERT or
    newer): elsewhere the fused call refuses bf16, while the plain convolution still computes it (emulated, slowly).
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return 0
    bf16_ok = onednn_bf16()
    fused = 0
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for i, name in enumerate(names):
            conv = seq._modules[name]
            rest = [n for n in names[i + 1:] if not isinstance(seq._modules[n], nn.Identity)]
            if not (type(conv) is nn.Conv2d and rest and type(seq._modules[rest[0]]) is nn.ReLU):
                continue
            hooked = any(getattr(m, h) for m in (conv, seq._modules[rest[0]])
                         for h in ("_forward_hooks", "_forward_pre_hooks"))
            if isinstance(conv.padding, str) or conv.padding_mode != "zeros" or hooked:
                continue
            if conv.weight.dtype == torch.bfloat16 and not bf16_ok:
                continue
            seq._modules[name] = ConvReLU(conv)
            seq._modules[rest[0]] = nn.Identity()
            fused += 1
    return fused


def _foldable(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    hooked = any(getattr(m, name) for m in (conv, bn) for name in ("_forward_hooks", "_forward_pre_hooks"))
    return (not bn.training and bn.track_running_stats and bn.running_mean is not None
            and bn.num_features == conv.out_channels and conv.weight.is_floating_point() and not hooked)


def _convert(net: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply ``fn`` to every parameter and buffer by replacing it (``module.to`` would change the shared tensors
    of the caller's model in place)."""
    done: dict[int, torch.Tensor] = {}
    for module in net.modules():
        for store in (module._parameters, module._buffers):
            for name, value in store.items():
                if value is None:
                    continue
                if id(value) not in done:  # a tensor tied to two modules stays one tensor
                    raw = value.detach()
                    data = fn(raw)
                    done[id(value)] = value if data is raw else (
                        nn.Parameter(data, requires_grad=False) if isinstance(value, nn.Parameter) else data)
                store[name] = done[id(value)]
