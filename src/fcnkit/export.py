"""Export a model to ONNX, TorchScript, a torch.export program (``.pt2``) or safetensors, and read safetensors back.

ONNX, TorchScript and ``.pt2`` files take any batch size, height and width (for dense and heat-map models; a
fixed-window classifier keeps its window size). All three are checked before they are written: the exported model
must equal the PyTorch model at sizes other than the one it was exported at (max |difference| within
``TOLERANCE``), so a file that silently froze the padding arithmetic of one size is never handed out.

safetensors holds the weights only (no pickle, no code) and, in its metadata header, the JSON model spec from
``model.fcnkit_spec`` so :func:`load_safetensors` can rebuild the model.

Every file is written to a temporary name in the target folder and renamed into place: a failed export leaves none.

Example::

    export_onnx(model, "fcn8s.onnx")                   # inputs (N, 3, H, W) float32 -> (N, K, H, W)
    export_torchscript(model, "fcn8s.pt")
    export_program(model, "fcn8s.pt2")                 # torch.export.load("fcn8s.pt2").module() runs it
    export_safetensors(model, "fcn8s.safetensors")
    model = load_safetensors("fcn8s.safetensors")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fcnkit.errors import CheckpointError, ModelError, OutputError
from fcnkit.layers import takes_0_255

TOLERANCE = 1e-3
SAFETENSORS_FORMAT = "fcnkit-safetensors"
SAFETENSORS_VERSION = "1"
PT2_FORMAT, PT2_VERSION = "fcnkit-pt2", "1"
PT2_META = "fcnkit.json"  # the extra file of a .pt2 that holds fcnkit's metadata (JSON)
INPUT_NAME, OUTPUT_NAME = "image", "output"
# What a user of an exported file must feed, stored in ONNX metadata_props / the .pt2's fcnkit.json as "input"
INPUT_CONVENTION = ("float32 NCHW (batch, channels, height, width), raw pixel values 0-255 in the image's channel "
                    "order (RGB for colour models); the model normalises inside, so do not scale or standardise")
INPUT_AS_TRAINED = ("float32 NCHW (batch, channels, height, width), values as the model was trained on: it does not "
                    "normalise 0-255 pixel values itself")


@contextlib.contextmanager
def _atomic_target(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for exporters that write by name; fcnkit's one atomic writer
    (:func:`fcnkit.io.atomic.atomic_file`: the umask's permissions, the file and its folder fsynced) renames it over
    ``path`` only if the block succeeds."""
    from fcnkit.io.atomic import atomic_file  # only here: importing fcnkit.io loads zarr

    path = Path(path)
    if path.exists() and (not overwrite or path.is_dir()):
        raise OutputError(f"output '{path}': expected a new file, found an existing "
                          f"{'folder' if path.is_dir() else 'file'}; choose another path or pass --overwrite.")
    with atomic_file(path, what="output") as f:
        yield Path(f.name)  # the exporter rewrites this very file (same inode), so the writer's fsync covers it


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes that do not concern fcnkit users (missing torchvision ops, tracer hints, the
    traceback of a failed opset conversion, which fcnkit reports itself)."""
    loggers = {logging.getLogger("torch.onnx"): logging.ERROR, logging.getLogger("onnxscript"): logging.CRITICAL}
    levels = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)


def _prepare(model: nn.Module, in_channels: int, sample_size) -> tuple[nn.Module, bool, tuple[int, int]]:
    """Eval mode on CPU; whether H and W may vary; the size to export at (a classifier's own window)."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module, found {type(model).__name__}; "
                         f"load one with fcnkit.load_checkpoint(path).")
    fixed = getattr(model, "input_size", None) if getattr(model, "output_kind", "dense") == "classifier" else None
    size = tuple(int(v) for v in (fixed or sample_size))
    if len(size) != 2 or min(size) < 1:
        raise ModelError(f"sample_size: expected (H, W) with positive sides, found {sample_size!r}; "
                         f"pass e.g. (64, 64).")
    if fixed is None:
        # Export records a Python `if` as the branch it took; at odd sides padding to any power-of-two multiple is
        # always needed, so the recorded graph is the padding one, which is also right (pads 0) at any other size.
        size = (size[0] | 1, size[1] | 1)
    return model.eval().cpu(), fixed is None, size


def _probe_sizes(size: tuple[int, int], dynamic: bool) -> list[tuple[int, int]]:
    """Sizes to compare exported and PyTorch outputs at: the export size and, for any-size models, two others
    one with even and odd sides, one whose sides are multiples of 64 (so no padding is needed at all)."""
    if not dynamic:
        return [size]
    h, w = size
    return [size, (h + 3, w + 28), (64 * (h // 64 + 1), 64 * (w // 64 + 1))]


def _check_close(name: str, run, model: nn.Module, in_channels: int, sizes) -> float:
    """Run the exported model and ``model`` on the same random batch at every size; return the max |difference|."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in sizes:
        x = torch.rand(2, in_channels, h, w, generator=generator) * 255
        with torch.no_grad():
            expected = model(x).numpy()
        try:
            got = np.asarray(run(x))
        except Exception as exc:  # a runtime refusing a shape is exactly what this check exists to catch
            raise ModelError(f"{name} export: expected the exported model to run at {h}x{w}, found an error "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); the model's forward "
                             f"uses size-dependent Python logic that export froze, make it shape-arithmetic only.")
        if got.shape != expected.shape:
            raise ModelError(f"{name} export: expected output shape {expected.shape} at {h}x{w}, found {got.shape}; "
                             f"the model's forward uses size-dependent Python logic that export froze.")
        worst = max(worst, float(np.abs(got - expected).max()) if got.size else 0.0)
    if worst > TOLERANCE:
        raise ModelError(f"{name} export: expected outputs equal to PyTorch within {TOLERANCE:g}, found max "
                         f"|difference| {worst:.3g} at sizes {list(sizes)}; the model cannot be exported faithfully.")
    return worst


def export_onnx(model: nn.Module, path: str | os.PathLike, *, in_channels: int = 3,
                sample_size: tuple[int, int] = (64, 64), opset: int | None = None, overwrite: bool = True) -> float:
    """Write ``model`` as ONNX with dynamic batch, height and width; return the checked max |difference|.

    Input ``image``: float32 (N, in_channels, H, W) raw values (the model's own Normalize is inside); output
    ``output``: (N, K, H, W) for dense models, (N, K, H/s, W/s) for heat-map grids, (N, K) for classifiers (whose H, W
    stay at ``model.input_size``). The file is checked with onnxruntime at three sizes before it is moved into place.
    """
    model, dynamic, size = _prepare(model, in_channels, sample_size)
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("ONNX export: expected onnx, onnxscript and onnxruntime to be installed, found them "
                         "missing; install them with `pip install fcnkit[export]`.") from None
    # Dim.AUTO, not named Dims: the solver cannot state the facts that padding to a multiple implies (Hp/32*2 ==
    # Hp/16) as constraints on a named Dim and fails; AUTO accepts them. Whatever it froze, _named_axes and
    # _check_close catch.
    axes, x = _dynamic_input(in_channels, size, dynamic)
    with _atomic_target(path, overwrite=overwrite) as tmp, _quiet_exporter():
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=(axes,),
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        opset_version=opset, external_data=False, verbose=False)
        except Exception as exc:  # torch.export reports unsupported code as many different exception types
            raise _untraceable("ONNX export", model, dynamic, exc) from None
        program.save(str(tmp))
        _named_axes(tmp, ("batch", "channels", "height", "width") if dynamic else ("batch",), opset)
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        run = lambda t: session.run(None, {INPUT_NAME: t.numpy()})[0]  # noqa: E731
        sizes = _probe_sizes(size, dynamic)
        worst = _check_close("ONNX", run, model, in_channels, sizes)
        same_size = dynamic and all(run(torch.zeros(1, in_channels, h, w)).shape[2:] == (h, w) for h, w in sizes)
        _describe_onnx(tmp, model, same_size=same_size)
    return worst


def _describe_onnx(path: Path, model: nn.Module, *, same_size: bool) -> None:
    """Store what a user of the file needs in its ``metadata_props``: ``fcnkit.input`` (the input convention),
    ``fcnkit.class_names`` and ``fcnkit.palette`` (JSON), ``fcnkit.model`` (the model spec, JSON),
    ``fcnkit.input_16_bit`` and ``fcnkit.takes_0_255`` (what :class:`fcnkit.loading.OnnxModel` reads back). An
    output that was checked to have the input's size gets the input's ``height``/``width`` names for its spatial
    axes."""
    import onnx

    proto = onnx.load(str(path))
    if same_size:
        for dim, name in zip(proto.graph.output[0].type.tensor_type.shape.dim[2:], ("height", "width")):
            dim.dim_param = name
    props = {"fcnkit.input": INPUT_CONVENTION if takes_0_255(model) else INPUT_AS_TRAINED,
             **{f"fcnkit.{k}": json.dumps(v) for k, v in _described(model).items()}}
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


def _described(model: nn.Module) -> dict:
    """What an exported file says of its model beyond the weights (JSON-able): the model spec, class names, palette
    and how its training data made 16-bit pixels 0-255 values, and whether it takes raw 0-255 values."""
    meta = getattr(model, "fcnkit_meta", None) or {}
    palette = meta.get("palette")
    return {"model": getattr(model, "fcnkit_spec", None), "class_names": meta.get("class_names"),
            "palette": np.asarray(palette).tolist() if palette is not None else None,
            "input_16_bit": meta.get("input_16_bit", "scaled"), "takes_0_255": takes_0_255(model)}


def _named_axes(path: Path, names: tuple[str, ...], opset: int | None) -> None:
    """Rename the exporter's symbolic dimensions (``s77``) of the input to ``batch``/``height``/``width`` in the whole
    graph, and refuse the file if one of them was frozen to a number, or if it is not in the ``opset`` asked for
    (torch's exporter converts to an older opset only where it can, and otherwise writes its own without an error)."""
    import onnx

    proto = onnx.load(str(path))
    wrote = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and wrote != opset:
        raise ModelError(f"ONNX export: expected opset {opset}, found the exporter wrote opset {wrote} (it converts "
                         f"to an older opset only where it can, and could not for this model); leave --opset out "
                         f"or pass --opset {wrote}.")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    rename = {}
    for dim, name in zip(dims, names):
        if name == "channels":
            continue
        if not dim.dim_param:
            raise ModelError(f"ONNX export: expected a dynamic {name} axis, found it fixed to {dim.dim_value}; the "
                             f"model's forward uses size-dependent Python logic, make it shape-arithmetic only.")
        rename[dim.dim_param] = name
    symbol = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b") if rename else None
    for info in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if symbol is not None and dim.dim_param:  # also inside expressions such as Min(s53, 8*(...))
                dim.dim_param = symbol.sub(lambda m: rename[m.group(1)], dim.dim_param)
    onnx.save(proto, str(path))


def export_torchscript(model: nn.Module, path: str | os.PathLike, *, in_channels: int = 3,
                       sample_size: tuple[int, int] = (64, 64), overwrite: bool = True) -> float:
    """Write ``model`` as TorchScript (``torch.jit.load``-able) for any batch, height and width; return the checked
    max |difference|.

    fcnkit's models are traced, not scripted (their input checks are plain Python). Tracing records the shape
    arithmetic of the padding to a multiple; the trace is taken at ``sample_size`` made odd on both sides (see
    :func:`_prepare`) and then checked at two other sizes.
    """
    model, dynamic, size = _prepare(model, in_channels, sample_size)
    x = torch.zeros(1, in_channels, *size)
    with _atomic_target(path, overwrite=overwrite) as tmp, _quiet_exporter():
        try:
            traced = torch.jit.trace(model, (x,), check_trace=False)
        except Exception as exc:  # the tracer reports unsupported code as many different exception types
            raise ModelError(f"TorchScript export of {type(model).__name__}: expected a traceable model, found "
                             f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}; export to ONNX "
                             f"instead, or make the forward traceable.") from None
        worst = _check_close("TorchScript", lambda t: traced(t).detach().numpy(), model, in_channels,
                             _probe_sizes(size, dynamic))
        torch.jit.save(traced, str(tmp))
    return worst


def export_program(model: nn.Module, path: str | os.PathLike, *, in_channels: int = 3,
                   sample_size: tuple[int, int] = (64, 64), overwrite: bool = True) -> float:
    """Write ``model`` as a torch.export program (``.pt2``, ``torch.export.load(path).module()`` runs it) for any
    batch, height and width; return the checked max |difference|.

    TorchScript's successor: an ATen graph with symbolic sizes. Its extra file ``fcnkit.json`` holds what
    :func:`fcnkit.load_model` reads (input convention, model spec, class names, palette, 16-bit rule). The program
    is loaded back from the written file and checked at three sizes before it is moved into place.
    """
    model, dynamic, size = _prepare(model, in_channels, sample_size)
    program = _exported_program(model, in_channels, size, dynamic)
    extra = json.dumps({"format": PT2_FORMAT, "version": PT2_VERSION,
                        "input": INPUT_CONVENTION if takes_0_255(model) else INPUT_AS_TRAINED,
                        "output_kind": getattr(model, "output_kind", "dense"),
                        "input_size": None if dynamic else list(size), **_described(model)})
    with _atomic_target(path, overwrite=overwrite) as tmp, _quiet_exporter():
        # through file objects: torch takes a path only if it ends in .pt2, and the temporary name does not
        with open(tmp, "wb") as f:
            torch.export.save(program, f, extra_files={PT2_META: extra})
        with open(tmp, "rb") as f:
            loaded = torch.export.load(f).module()
        worst = _check_close("pt2", lambda t: loaded(t).detach().numpy(), model, in_channels,
                             _probe_sizes(size, dynamic))
    return worst


def _exported_program(model: nn.Module, in_channels: int, size: tuple[int, int], dynamic: bool) -> Any:
    """``torch.export.export`` of ``model`` with a dynamic batch (and height and width when ``dynamic``).

    Sizes are reasoned about size-obliviously: otherwise the exporter decides facts such as "the padded height
    differs from the height" (true at the odd export size, false at a multiple) while it computes the strides of
    the crop back to the input size, and keeps each as a guard that makes the program refuse every size where the
    fact is false. Nothing the model computes depends on those facts; the three-size check catches a program that
    does."""
    from torch.fx.experimental import _config as symbolic_config

    axes, x = _dynamic_input(in_channels, size, dynamic)
    try:
        with _quiet_exporter(), symbolic_config.patch(backed_size_oblivious=True):
            return torch.export.export(model, (x,), dynamic_shapes=(axes,))
    except Exception as exc:  # torch.export reports unsupported code as many different exception types
        raise _untraceable("torch.export", model, dynamic, exc) from None


def _dynamic_input(in_channels: int, size: tuple[int, int], dynamic: bool) -> tuple[dict, torch.Tensor]:
    """The dynamic axes (batch, and height and width when ``dynamic``) and the example input to export with: a
    batch of 2, since the exporter specialises a dimension it sees as 0 or 1."""
    auto = torch.export.Dim.AUTO
    return ({0: auto, 2: auto, 3: auto} if dynamic else {0: auto}), torch.zeros(2, in_channels, *size)


def _untraceable(what: str, model: nn.Module, dynamic: bool, exc: Exception) -> ModelError:
    return ModelError(f"{what} of {type(model).__name__}: expected a model torch.export can trace with dynamic "
                      f"{'batch, height and width' if dynamic else 'batch'}, found {type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[0][:300]}; keep the forward free of data-dependent Python "
                      f"control flow.")


def export_safetensors(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write the weights of an fcnkit model as safetensors, with the model spec in the metadata header; return path.

    Metadata (all JSON strings): ``format``, ``version``, ``model`` (``model.fcnkit_spec``), ``class_names`` and
    ``palette`` (from ``model.fcnkit_meta`` when the model came from a checkpoint).
    """
    from safetensors.torch import save

    spec = getattr(model, "fcnkit_spec", None)
    if not isinstance(spec, dict):
        raise ModelError(f"safetensors export: expected an fcnkit model with `fcnkit_spec`, found a plain "
                         f"{type(model).__name__}; build it with fcnkit.build_model so the file can rebuild it.")
    from fcnkit.checkpoint import EXPORTED_FORMATS  # only here: fcnkit.checkpoint loads fcnkit.io (zarr)

    if spec.get("format") in EXPORTED_FORMATS:
        kind = EXPORTED_FORMATS[spec["format"]]
        raise ModelError(f"safetensors export: expected a PyTorch model, found {kind} (from "
                         f"'{spec.get('path')}'); it is exported already, use the .{spec['format']} file itself.")
    described = _described(model)
    header = {"format": SAFETENSORS_FORMAT, "version": SAFETENSORS_VERSION,
              **{k: json.dumps(described[k]) for k in ("model", "class_names", "palette")},
              "input_16_bit": described["input_16_bit"]}
    # safetensors refuses tensors that share memory (tied weights, views): store an independent copy of each.
    inner = getattr(model, "module", model)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in inner.state_dict().items()}
    data = save(tensors, metadata=header)
    with _atomic_target(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)  # the same file the atomic writer fsyncs before the rename
    return Path(path)


def import_safetensors(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`export_safetensors`: ``{"model": spec, "state_dict", "class_names",
    "palette"}`` (the same keys as a checkpoint dict). Only tensors and JSON are read; nothing is executed."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"safetensors file '{path}': expected a file written by `fcnkit export --format "
                              f"safetensors`, found {'a folder' if path.is_dir() else 'nothing'}; check the path.")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"safetensors file '{path}': expected a complete safetensors file, found one that "
                              f"cannot be read ({str(exc).splitlines()[0][:200]}); export it again.") from None
    if header.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"safetensors file '{path}': expected fcnkit metadata (format "
                              f"'{SAFETENSORS_FORMAT}'), found format {header.get('format')!r}; export it with "
                              f"`fcnkit export --format safetensors` (plain weight files have no model spec).")
    if header.get("version") != SAFETENSORS_VERSION:
        raise CheckpointError(f"safetensors file '{path}': expected version {SAFETENSORS_VERSION}, found "
                              f"{header.get('version')!r}; use the fcnkit version that wrote it.")
    try:
        spec = json.loads(header["model"])
        class_names = json.loads(header.get("class_names", "null"))
        palette = json.loads(header.get("palette", "null"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"safetensors file '{path}': expected JSON model metadata, found it damaged "
                              f"({exc}); export it again.") from None
    if not isinstance(spec, dict):
        raise CheckpointError(f"safetensors file '{path}': expected a model spec object, found "
                              f"{type(spec).__name__}; export it again.")
    from fcnkit.checkpoint import known_16_bit

    return {"model": spec, "state_dict": state_dict, "class_names": class_names, "palette": palette,
            "input_16_bit": known_16_bit(header.get("input_16_bit"))}


def load_safetensors(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model of a safetensors file (architecture from its metadata, weights strictly), in eval mode,
    with ``model.fcnkit_meta`` like :func:`fcnkit.checkpoint.load_checkpoint` gives."""
    from fcnkit.checkpoint import build_from_spec, load_state_strict

    data = import_safetensors(path)
    source = f"safetensors file '{path}'"
    model = build_from_spec(data["model"], source=source)
    load_state_strict(model, data["state_dict"], source=source)
    palette = data["palette"]
    model.fcnkit_meta = {
        "class_names": data["class_names"],
        "palette": np.asarray(palette, dtype=np.uint8) if palette is not None else None,
        "geometry": None,
        "step": None,
        "metrics": None,
        "input_16_bit": data["input_16_bit"],
    }
    return model.eval()
