"""What a model is made of: a layer table at one input size, its geometry, parameters and compute per megapixel.

Shapes come from forward hooks on the leaf modules during one forward pass of a zero image at the given size, so
the table shows what really happens (padding to a multiple included), not what the constructor suggests.

Compute convention: multiply-adds (MACs) of convolutions, transposed convolutions and linear layers only; bias
additions, normalisation, activations, pooling and interpolation are not counted. 1 MAC = 2 FLOPs.

Example::

    report = inspect_model(build_model("fcn8s", num_classes=21, width=0.25), size=(256, 256))
    print(format_report(report))
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcnkit.errors import FcnkitError, InputError, ModelError

DEFAULT_SIZE = (256, 256)


@dataclass(frozen=True)
class LayerRow:
    """One call of one leaf module: its qualified name, class, output shape (batch of 1), own parameters, MACs."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int | None  # None: not countable (an ONNX model, run by onnxruntime)


@dataclass(frozen=True)
class ModelReport:
    """Everything ``fcnkit inspect`` prints; ``geometry`` is ``Geometry.to_dict()`` or None (then ``geometry_note``)."""

    model: str
    size: tuple[int, int]
    in_channels: int
    output_kind: str
    output_shape: tuple[int, ...]
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    macs: int | None  # None: an ONNX model, whose operators onnxruntime runs uncounted
    geometry: dict | None
    geometry_note: str | None = None
    flop_convention: str = field(default="1 MAC = 2 FLOPs; counts conv, transposed conv and linear layers only")

    @property
    def flops(self) -> int | None:
        return None if self.macs is None else 2 * self.macs

    @property
    def flops_per_megapixel(self) -> float | None:
        """FLOPs for one million input pixels, extrapolated linearly from the inspected size."""
        h, w = self.size
        return None if self.flops is None else self.flops * 1e6 / (h * w)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["size"] = list(self.size)
        out["output_shape"] = list(self.output_shape)
        for row in out["layers"]:
            row["output_shape"] = list(row["output_shape"])
        out["flops"] = self.flops
        out["flops_per_megapixel"] = self.flops_per_megapixel
        return out


def layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Multiply-adds of one call of ``module`` (0 for layers that are not conv, transposed conv or linear).

    Conv: each output element costs (C_in / groups) * prod(kernel). Transposed conv: each *input* element is
    scattered to (C_out / groups) * prod(kernel) outputs. Linear: in_features per output element.
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        x = inputs[0]
        kernel = _prod(module.kernel_size)
        return x.numel() * (module.out_channels // module.groups) * kernel
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = _prod(module.kernel_size)
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _prod(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def _first_tensor(value) -> torch.Tensor | None:
    """The tensor a layer returned (the first one for layers returning tuples, like max-pooling with indices)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def layer_table(model: nn.Module, *, size: tuple[int, int], in_channels: int = 3) -> tuple[list[LayerRow], tuple]:
    """Run ``model`` once on a (1, in_channels, H, W) zero image; return one row per leaf-module call and the
    model's output shape.

    A module called twice (shared weights) appears twice, with its MACs counted each time.
    """
    h, w = _check_size(size)
    rows: list[LayerRow] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        tensor = _first_tensor(output)
        rows.append(LayerRow(
            name=names.get(module, "?"),
            type=type(module).__name__,
            output_shape=tuple(tensor.shape) if tensor is not None else (),
            params=sum(p.numel() for p in module.parameters(recurse=False)),
            macs=layer_macs(module, inputs, tensor) if tensor is not None else 0,
        ))

    # A torch.export program (fcnkit.loading.ExportedModel) computes with ATen operators, not layers: one row for
    # the whole program, its multiply-adds counted per operator by torch's FLOP counter (convolutions and matrix
    # products, the same convention).
    program = (getattr(model, "fcnkit_spec", None) or {}).get("format") == "pt2"
    leaves = [] if program else [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    counter = FlopCounterMode(display=False) if program else contextlib.nullcontext()
    param = next(model.parameters(), None)
    x = torch.zeros(1, in_channels, h, w, device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            out = model(x)
    except RuntimeError as exc:
        raise InputError(
            f"size {h}x{w}: expected a size the model can run on, found that the forward pass fails "
            f"({str(exc).splitlines()[0]}); try a larger --size (e.g. 256 256) or the model's input size."
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    tensor = _first_tensor(out)
    shape = tuple(tensor.shape) if tensor is not None else ()
    if program:
        rows.append(LayerRow(name="", type=type(model).__name__, output_shape=shape,
                             params=sum(p.numel() for p in model.parameters()),
                             macs=counter.get_total_flops() // 2))
    elif _onnx(model):  # one row, as for a program: its weights counted from the graph, its operators not at all
        rows = [LayerRow(name="", type=type(model).__name__, output_shape=shape,
                         params=model.fcnkit_weight_count or 0, macs=None)]
    return rows, shape


def _onnx(model: nn.Module) -> bool:
    return (getattr(model, "fcnkit_spec", None) or {}).get("format") == "onnx"


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size: expected two integers (H, W), found {size!r}; pass e.g. (256, 256).") from None
    if h < 1 or w < 1:
        raise InputError(f"size: expected positive height and width, found {h}x{w}; pass e.g. (256, 256).")
    return h, w


def default_size(model: nn.Module) -> tuple[int, int]:
    """The size to inspect at: a fixed-window classifier's ``input_size``, else 256x256."""
    fixed = getattr(model, "input_size", None)
    return tuple(int(v) for v in fixed) if fixed is not None else DEFAULT_SIZE


def _geometry(model: nn.Module, in_channels: int, output_kind: str) -> tuple[dict | None, str | None]:
    if output_kind == "classifier":
        return None, "a classifier has one output per window; convolutionalize it for a dense geometry"
    from fcnkit.geometry.analysis import analyze

    try:
        return analyze(model, in_channels=in_channels).to_dict(), None
    except FcnkitError as exc:
        return None, str(exc)


def inspect_model(model: nn.Module, *, size: tuple[int, int] | None = None, in_channels: int | None = None,
                  name: str | None = None) -> ModelReport:
    """The layer table, geometry, parameter count and compute of ``model`` at input ``size`` (H, W), in eval mode
    (the mode is restored afterwards). Compute includes the padding to the model's input multiple.

    ``in_channels`` defaults to the model's ``fcnkit_spec``; ``size`` to :func:`default_size`.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module, found {type(model).__name__}; "
                         f"build one with fcnkit.build_model(name, num_classes=K).")
    spec = getattr(model, "fcnkit_spec", None) or {}
    in_channels = int(in_channels if in_channels is not None else spec.get("in_channels", 3))
    size = _check_size(size if size is not None else default_size(model))
    output_kind = getattr(model, "output_kind", "dense")
    # Describe the model as it runs for inference: BatchNorm in training mode would count as non-local.
    was_training = model.training
    model.eval()
    try:
        rows, out_shape = layer_table(model, size=size, in_channels=in_channels)
        geometry, note = _geometry(model, in_channels, output_kind)
    except FcnkitError:
        window = getattr(model, "input_size", None)
        if output_kind != "classifier" or window is None or tuple(int(v) for v in window) == size:
            raise
        raise InputError(_window_advice(size, tuple(int(v) for v in window))) from None
    finally:
        model.train(was_training)
    params = list(model.parameters())
    weights = getattr(model, "fcnkit_weight_count", None) if _onnx(model) else None
    return ModelReport(
        model=name or spec.get("name") or type(model).__name__,
        size=size,
        in_channels=in_channels,
        output_kind=output_kind,
        output_shape=out_shape,
        layers=rows,
        total_params=weights if weights is not None else sum(p.numel() for p in params),
        trainable_params=0 if weights is not None else sum(p.numel() for p in params if p.requires_grad),
        macs=None if any(r.macs is None for r in rows) else sum(r.macs for r in rows),
        geometry=geometry,
        geometry_note=note,
    )


def _window_advice(size: tuple[int, int], window: tuple[int, int]) -> str:
    """What to do when a fixed-window classifier is inspected at another size: its own window, or its
    convolutionalized form, which runs at any size (named for the command line and for Python)."""
    (h, w), (wh, ww) = size, window
    return (f"size {h}x{w}: expected {wh}x{ww}, the one window size this classifier takes; leave --size out to "
            f"inspect it at {wh}x{ww}, or convolutionalize it to run on any size of at least {wh}x{ww}: "
            f"`fcnkit convert --checkpoint CKPT --out fcn.pt`, then `fcnkit inspect --checkpoint fcn.pt --size H W` "
            f"(from Python: inspect_model(fcnkit.convolutionalize(model, input_size=({wh}, {ww})), size=(H, W))).")


def _method(g: dict) -> str:
    """How the geometry was obtained: read from the traced graph, or measured by the probe (and why)."""
    if g.get("method") == "probed":
        return f"probing ({g.get('probe_reason') or 'no reason recorded'})"
    return "tracing the graph" if g.get("method") == "traced" else "unknown"


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_report(report: ModelReport) -> str:
    """The human-readable report: an aligned layer table, then the summary lines."""
    h, w = report.size
    header = ("layer", "type", "output shape", "params", "MACs")
    body = [(r.name, r.type, "x".join(str(d) for d in r.output_shape), f"{r.params:,}",
             "n/a" if r.macs is None else _human(r.macs)) for r in report.layers]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned.
    align = ("<", "<", "<", ">", ">")

    def line(cells) -> str:
        return "  ".join(f"{c:{a}{wd}}" for c, a, wd in zip(cells, align, widths)).rstrip()

    lines = [f"{report.model} at {h}x{w} ({report.in_channels} input channels), output {report.output_kind} "
             f"{'x'.join(str(d) for d in report.output_shape)}", "", line(header),
             line(["-" * wd for wd in widths]), *(line(row) for row in body), ""]
    summary = []
    g = report.geometry
    if g is not None:
        summary += [
            ("receptive field", f"{g['receptive_field']} px"),
            ("output stride", str(g["output_stride"])),
            ("input multiple", str(g["input_multiple"])),
            ("halo", f"{g['halo']} px"),
            ("padding", str(g["padding"])),
            ("local", "yes" if g["local"] else f"no: {g['nonlocal_reason']}"),
            ("obtained by", _method(g)),
        ]
    else:
        summary.append(("geometry", f"not available: {report.geometry_note}"))
    summary += [
        ("parameters", f"{report.total_params:,} ({report.trainable_params:,} trainable)"),
    ]
    if report.macs is None:
        summary.append((f"FLOPs at {h}x{w}", "n/a: an ONNX model's operators run in onnxruntime, uncounted (inspect "
                                             "the .pt checkpoint it was exported from, or a .pt2 export)"))
    else:
        summary += [(f"FLOPs at {h}x{w}", f"{_human(report.flops)} ({_human(report.macs)} MACs)"),
                    ("FLOPs per megapixel", _human(report.flops_per_megapixel)),
                    ("convention", report.flop_convention)]
    key_width = max(len(k) for k, _ in summary)
    lines += [f"{k + ':':<{key_width + 1}} {v}" for k, v in summary]
    return "\n".join(lines)
