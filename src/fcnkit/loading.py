"""Open a model from a file, whoever wrote it: ``fcnkit.load_model(path)``.

- ``.onnx``: any ONNX model with one (N, C, H, W) input, run by onnxruntime behind :class:`OnnxModel` (an
  ``nn.Module`` that takes float NCHW tensors and returns its first output as a tensor);
- ``.safetensors``: a file written by ``fcnkit export --format safetensors``;
- ``.pt2``: a torch.export program (``fcnkit export --format pt2`` or any other with one (N, C, H, W) input), behind
  :class:`ExportedModel`; a file that would make torch unpickle anything but plain tensors is refused;
- anything else: an fcnkit ``.pt`` checkpoint (read with ``torch.load(weights_only=True)``).

An ONNX model is not a torch graph (nor is a ``.pt2`` program one fcnkit's layer rules read: its operators are
ATen's), so ``fcnkit.analyze`` measures its geometry with probe images (a NaN put into
the input shows exactly which outputs it reaches, :mod:`fcnkit.geometry.probe`). onnxruntime's max-pooling keeps a
NaN only when it is the last value of its window, so the probes run on a stand-in graph whose ``MaxPool`` nodes are
``AveragePool`` nodes of the same window, stride, padding and rounding: the same pixels reach the same outputs, and
every NaN shows. Operators that read the whole image (global pooling, a mean over the spatial axes, instance/layer/
group normalisation, attention) are named from the graph when the probe finds the output non-local.

>>> model = load_model("fcn8s.onnx")  # doctest: +SKIP
>>> fcnkit.predict_tiled(model, image, output="labels")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fcnkit.errors import CheckpointError, InputError, ModelError

__all__ = ["ExportedModel", "OnnxModel", "load_model"]

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}
# ONNX operators whose output at one position depends on the whole image, and why.
_WHOLE_IMAGE = {
    "GlobalAveragePool": "pools the whole image", "GlobalMaxPool": "pools the whole image",
    "GlobalLpPool": "pools the whole image", "InstanceNormalization": "normalizes each channel over the whole image",
    "LayerNormalization": "normalizes over its last axes, which include space",
    "GroupNormalization": "normalizes over the whole image", "MeanVarianceNormalization": "normalizes over the image",
    "Attention": "attends over all positions", "MultiHeadAttention": "attends over all positions",
}
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


def load_model(path: str | os.PathLike, *, map_location: Any = "cpu") -> nn.Module:
    """The model in ``path``, in eval mode: an fcnkit ``.pt`` checkpoint, an fcnkit ``.safetensors`` export, any
    ``.onnx`` model or any ``.pt2`` torch.export program (see the module docstring). Raises ``CheckpointError``
    naming the file for anything else."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxModel(path)
    if suffix == ".pt2":
        return ExportedModel(path)
    if suffix == ".safetensors":
        from fcnkit.export import load_safetensors

        return load_safetensors(path)
    from fcnkit.checkpoint import load_checkpoint

    return load_checkpoint(path, map_location=map_location)


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


class OnnxModel(nn.Module):
    """An ONNX model run by onnxruntime: (N, C, H, W) float tensor -> its first output as a float32 tensor.

    ``in_channels``/``num_classes`` come from the graph's static shapes (the output channels from one small run when
    the graph leaves them symbolic); ``input_size`` is the (H, W) a fixed-size graph demands (None: any size); a
    graph with a fixed batch of 1 is run one image at a time. ``fcnkit_spec`` holds ``{"format": "onnx", "path",
    "num_classes", "in_channels"}`` for fcnkit's inference and CLI; the weights stay in the file (no parameters).
    Inference only: no gradients flow through onnxruntime.
    """

    output_kind = "dense"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model '{self.path}': expected an .onnx file, found "
                                  f"{'a folder' if self.path.is_dir() else 'nothing'}; check the path.")
        self._bytes = self.path.read_bytes()
        self._optimize = True
        self._session = self._open(self._bytes, str(self.path))
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            found = ", ".join(f"{i.name} {list(i.shape)}" for i in inputs) or "no inputs"
            raise ModelError(f"ONNX model '{self.path}': expected one image input shaped (N, C, H, W), found "
                             f"{found}; fcnkit runs image-to-image models, export one with a single NCHW input.")
        info = inputs[0]
        self._input_name = info.name
        self._input_dtype = _DTYPES.get(info.type)
        if self._input_dtype is None:
            raise ModelError(f"ONNX model '{self.path}': expected a numeric image input, found type {info.type}; "
                             f"export the model with a float32 input.")
        batch, channels, height, width = (_dim(d) for d in info.shape)
        self.one_at_a_time = batch == 1
        self.in_channels = channels
        self.input_size = (height, width) if height and width else None
        out_shape = self._session.get_outputs()[0].shape
        k = _dim(out_shape[1]) if len(out_shape) >= 2 else None
        if k is None:
            side = self.input_size or (64, 64)
            k = int(self(torch.zeros(1, channels or 3, *side)).shape[1])
        self.nonlocal_operators = _whole_image_operators(self._bytes)
        self.fcnkit_spec = {"format": "onnx", "path": str(self.path), "num_classes": k,
                            "in_channels": channels or 3}
        names, palette = _exported_classes(self._session, k)
        self.fcnkit_meta = {"class_names": names, "palette": palette, "geometry": None, "step": None,
                            "metrics": None}
        self.eval()

    @staticmethod
    def _open(data: bytes, name: str, *, optimize: bool = True) -> Any:
        try:
            import onnxruntime
        except ImportError:
            raise ModelError(f"ONNX model '{name}': expected onnxruntime to be installed, found it missing; install "
                             f"it with `pip install fcnkit[export]`.") from None
        try:
            options = onnxruntime.SessionOptions()
            if not optimize:
                options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime reports a bad file as several exception types
            raise CheckpointError(f"ONNX model '{name}': expected a valid ONNX file, found one onnxruntime cannot "
                                  f"load ({str(exc).strip().splitlines()[0][:200]}); export it again.") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"ONNX model '{self.path.name}': expected a (N, C, H, W) tensor, got {shape}; add the "
                             f"batch axis (x[None]) or pass channels first.")
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise InputError(f"ONNX model '{self.path.name}': expected {self.in_channels} input channels, got "
                             f"{x.shape[1]} (shape {tuple(x.shape)}); convert the image to {self.in_channels} "
                             f"channels.")
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            h, w = self.input_size
            raise InputError(f"ONNX model '{self.path.name}': the graph takes only {h}x{w} inputs, got "
                             f"{x.shape[2]}x{x.shape[3]}; export it with dynamic height and width (e.g. "
                             f"`fcnkit export --format onnx`) to run it on other sizes.")
        if x.is_meta or type(x).__name__ == "FakeTensor":
            raise InputError(f"ONNX model '{self.path.name}': onnxruntime needs real data, got a shape-only tensor.")
        data = x.detach().to("cpu", torch.float32).numpy().astype(self._input_dtype, copy=False)
        if len(data) == 0 or self.one_at_a_time:
            parts = [self._run(data[i:i + 1]) for i in range(max(len(data), 1))]
            y = np.concatenate(parts)[:len(data)]
        else:
            y = self._run(data)
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(x.device)

    def _run(self, data: np.ndarray) -> np.ndarray:
        if len(data) == 0:
            data = np.zeros((1, *data.shape[1:]), data.dtype)
        try:
            return self._session.run(None, {self._input_name: data})[0]
        except Exception as exc:  # onnxruntime's errors for shapes the graph cannot take
            raise InputError(f"ONNX model '{self.path.name}': onnxruntime failed on an input of shape "
                             f"{tuple(data.shape)} ({str(exc).strip().splitlines()[0][:200]}); the graph does not "
                             f"take this size.") from None

    # -- geometry ---------------------------------------------------------------------------------------------------

    def fcnkit_probe_stand_in(self) -> OnnxModel:
        """The model the geometry probes run on: this graph with every single-output ``MaxPool`` an ``AveragePool``
        of the same window (same dependence on input pixels, and NaN survives it in onnxruntime), run without
        graph optimizations (a Conv fused with its ReLU computes max(x, 0) in a way that turns NaN into 0)."""
        stand_in = copy.deepcopy(self)
        stand_in._bytes, stand_in._optimize = _average_pools(self._bytes), False
        stand_in._session = self._open(stand_in._bytes, str(self.path), optimize=False)
        return stand_in

    def __deepcopy__(self, memo: dict) -> OnnxModel:
        # No tensors to copy: the copy shares the onnxruntime session (its run() is thread-safe).
        clone = object.__new__(type(self))
        clone.__dict__.update({k: dict(v) if k.startswith("_") and isinstance(v, dict) else v
                               for k, v in self.__dict__.items()})
        return clone

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_session")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._session = self._open(self._bytes, str(self.path), optimize=self._optimize)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, in_channels={self.in_channels}, num_classes={self.fcnkit_spec['num_classes']}"


class ExportedModel(nn.Module):
    """A torch.export program read from a ``.pt2`` file: (N, C, H, W) float tensor -> its output tensor.

    The program runs as ``torch.export.load(path).module()`` does (an ATen graph, its weights as the module's own
    parameters, so ``.to()`` moves and casts them). ``fcnkit.json``, the extra file ``fcnkit export --format pt2``
    writes, gives the class names, palette, output kind and model spec; a program from elsewhere gets its channels
    from the program's input and its classes from one small run. ``fcnkit_spec`` holds ``{"format": "pt2",
    "path", "num_classes", "in_channels"}``. The geometry is measured with probe images, as for ONNX models.

    Before torch reads the file, every part that its loader would unpickle (weights and constants marked for
    pickle, custom objects, the sample inputs) is checked: only plain tensors (``torch.load(weights_only=True)``)
    are accepted, so opening a ``.pt2`` never runs code from the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"torch.export program '{self.path}': expected a .pt2 file, found "
                                  f"{'a folder' if self.path.is_dir() else 'nothing'}; check the path.")
        self._stamp = _stamp(self.path)
        program, meta = _open_program(self.path, self.path)
        shapes = [getattr(n.meta.get("val"), "shape", None) for n in program.graph.nodes if n.op == "placeholder"
                  and n.name in program.graph_signature.user_inputs]
        if len(shapes) != 1 or shapes[0] is None or len(shapes[0]) != 4:
            found = ", ".join(str(tuple(s)) if s is not None else "?" for s in shapes) or "no inputs"
            raise ModelError(f"torch.export program '{self.path}': expected one image input shaped (N, C, H, W), "
                             f"found {found}; fcnkit runs image-to-image models, export one with a single NCHW "
                             f"input.")
        channels = shapes[0][1]
        self.in_channels = int(channels) if isinstance(channels, int) else 3
        self.output_kind = meta.get("output_kind") or "dense"
        fixed = meta.get("input_size") or [d for d in shapes[0][2:] if isinstance(d, int)]
        self.input_size = tuple(int(d) for d in fixed) if len(fixed) == 2 else None
        self.program = program.module()
        k = _spec_classes(meta.get("model"))
        if k is None:
            side = self.input_size or (64, 64)
            with torch.no_grad():
                k = int(self(torch.zeros(2, self.in_channels, *side)).shape[1])
        self.fcnkit_spec = {"format": "pt2", "path": str(self.path), "num_classes": k,
                            "in_channels": self.in_channels}
        names, palette = _classes(meta.get("class_names"), meta.get("palette"), k)
        self.fcnkit_meta = {"class_names": names, "palette": palette, "geometry": None, "step": None,
                            "metrics": None}
        self.nonlocal_operators = _whole_image_aten(self.program)
        self.fcnkit_probe_reason = "a torch.export program of ATen operators, which fcnkit's layer rules do not read"
        self.eval()

    def train(self, mode: bool = True) -> ExportedModel:
        # The program keeps the mode it was exported in (eval): torch.export modules refuse train()/eval().
        self.training = bool(mode)
        return self

    def __getstate__(self) -> dict:
        # What a dask worker receives: the file's bytes (the program) and the weights as they are now (cast or
        # moved by inference). torch.export's modules do not pickle.
        if _stamp(self.path) != self._stamp:
            raise CheckpointError(f"torch.export program '{self.path}': expected the file it was loaded from, found "
                                  f"it changed or gone; load the model again.")
        state = {k: v for k, v in self.__dict__.items() if k != "_modules"}
        state["_program_bytes"] = self.path.read_bytes()
        state["_program_state"] = self.program.state_dict(keep_vars=False)
        return state

    def __setstate__(self, state: dict) -> None:
        import io

        data, weights = state.pop("_program_bytes"), state.pop("_program_state")
        self.__dict__.update(state)
        self._modules = {}
        program, _ = _open_program(io.BytesIO(data), self.path)
        self.program = program.module()
        self.program.load_state_dict(weights, assign=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"torch.export program '{self.path.name}': expected a (N, C, H, W) tensor, got "
                             f"{shape}; add the batch axis (x[None]) or pass channels first.")
        if x.shape[1] != self.in_channels:
            raise InputError(f"torch.export program '{self.path.name}': expected {self.in_channels} input "
                             f"channels, got {x.shape[1]} (shape {tuple(x.shape)}); convert the image to "
                             f"{self.in_channels} channels.")
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            h, w = self.input_size
            raise InputError(f"torch.export program '{self.path.name}': the program takes only {h}x{w} inputs, "
                             f"got {x.shape[2]}x{x.shape[3]}; convolutionalize the classifier (fcnkit convert) "
                             f"to run it on other sizes.")
        try:
            return self.program(x)
        except Exception as exc:  # a guard or an operator refusing this shape
            if x.is_meta or type(x).__name__ == "FakeTensor":
                raise
            raise InputError(f"torch.export program '{self.path.name}': failed on an input of shape "
                             f"{tuple(x.shape)} ({type(exc).__name__}: {_first(exc)}); the program does not "
                             f"take this size (export it with dynamic height and width).") from None

    def fcnkit_probe_stand_in(self) -> ExportedModel:
        """The model the geometry probes run on: this one (torch's max-pooling keeps every NaN)."""
        return self

    def __repr__(self) -> str:  # not the program's hundreds of anonymous submodules
        return (f"ExportedModel(path={str(self.path)!r}, in_channels={self.in_channels}, "
                f"num_classes={self.fcnkit_spec['num_classes']})")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _open_program(source: Any, path: Path) -> tuple[Any, dict]:
    """The ExportedProgram in ``source`` (a path or a file-like object holding ``path``'s bytes) and its fcnkit
    metadata (``{}`` when it has none), after :func:`_check_pt2_pickles`."""
    import json

    from fcnkit.export import PT2_FORMAT, PT2_META

    _check_pt2_pickles(source, path)
    if hasattr(source, "seek"):
        source.seek(0)
    extra = {PT2_META: ""}
    try:
        program = torch.export.load(source if hasattr(source, "read") else str(source), extra_files=extra)
    except Exception as exc:  # the loader reports a damaged or foreign archive as several exception types
        raise CheckpointError(f"torch.export program '{path}': expected a file written by torch.export.save, found "
                              f"one torch cannot load ({type(exc).__name__}: {_first(exc)}); export it again.") from None
    try:
        meta = json.loads(extra[PT2_META]) if extra[PT2_META] else {}
    except json.JSONDecodeError:
        meta = {}
    return program, meta if isinstance(meta, dict) and meta.get("format") == PT2_FORMAT else {}


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


def _check_pt2_pickles(source: Any, path: Path) -> None:
    """Refuse a .pt2 archive from which ``torch.export.load`` would unpickle anything but plain tensors: weights or
    constants stored with pickle, custom or opaque objects, sample inputs that ``torch.load(weights_only=True)``
    refuses (torch's loader then falls back to a full unpickle). These are all the places PyTorch 2.13's archive
    loader unpickles."""
    import io
    import json
    import zipfile

    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"torch.export program '{path}': expected weights, constants and sample inputs "
                               f"that are plain tensors, found {what}, which loading would unpickle (and could "
                               f"run code); export the model again with plain tensors, or load it yourself with "
                               f"torch.export.load if you trust the file.")

    try:
        with zipfile.ZipFile(source) as archive:
            for name in archive.namelist():
                inner = name.partition("/")[2]  # the archive's own paths sit under one root folder
                if inner.startswith("data/") and (inner.endswith("_weights_config.json")
                                                  or inner.endswith("_constants_config.json")):
                    try:
                        config = json.loads(archive.read(name)).get("config", {})
                    except (json.JSONDecodeError, AttributeError):
                        raise CheckpointError(f"torch.export program '{path}': expected JSON in '{inner}', found "
                                              f"it damaged; export it again.") from None
                    pickled = [k for k, v in config.items() if isinstance(v, dict) and v.get("use_pickle")]
                    if pickled:
                        raise refuse(f"'{pickled[0]}' stored with pickle")
                elif inner.startswith("data/constants/") and inner.rpartition("/")[2].startswith(
                        ("custom_obj_", "opaque_obj_")):
                    raise refuse(f"a custom object ('{inner}')")
                elif inner.startswith("data/sample_inputs/"):
                    try:
                        torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                    except Exception:  # anything torch's safe unpickler refuses
                        raise refuse(f"sample inputs ('{inner}') that are not plain tensors") from None
    except zipfile.BadZipFile:
        raise CheckpointError(f"torch.export program '{path}': expected a .pt2 archive (a zip file written by "
                              f"torch.export.save), found something else; export it again.") from None


def _spec_classes(spec: Any) -> int | None:
    k = spec.get("num_classes") if isinstance(spec, dict) else None
    return k if isinstance(k, int) and not isinstance(k, bool) and k > 0 else None


_WHOLE_IMAGE_ATEN = {
    "adaptive_avg_pool2d": "pools the whole image", "_adaptive_avg_pool2d": "pools the whole image",
    "adaptive_max_pool2d": "pools the whole image", "native_group_norm": "normalizes over the whole image",
    "native_layer_norm": "normalizes over its last axes, which include space",
    "instance_norm": "normalizes each channel over the whole image",
    "_scaled_dot_product_flash_attention_for_cpu": "attends over all positions",
    "scaled_dot_product_attention": "attends over all positions",
}


def _whole_image_aten(program: nn.Module) -> str | None:
    """The first ATen operator of ``program`` whose output at one position depends on the whole image (a global
    pooling, a mean over the spatial axes, group/layer/instance normalisation, attention), named with its node."""
    graph = getattr(program, "graph", None)
    for node in graph.nodes if graph is not None else ():
        if node.op != "call_function":
            continue
        op = getattr(getattr(node.target, "_overloadpacket", None), "__name__", "")
        if op in _WHOLE_IMAGE_ATEN:
            return f"{op} at node '{node.name}' {_WHOLE_IMAGE_ATEN[op]}"
        if op in ("mean", "sum", "amax", "amin", "var", "std") and len(node.args) > 1:
            dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
            if any(isinstance(d, int) and d % 4 in (2, 3) for d in dims):
                return f"{op} at node '{node.name}' reduces over the spatial axes (a global pooling)"
    return None


def _classes(names: Any, palette: Any, k: int) -> tuple[list[str] | None, np.ndarray | None]:
    """Class names and a (K, 3) uint8 palette, when present and consistent with the K output channels."""
    names = [str(n) for n in names] if isinstance(names, list) and len(names) == k else None
    palette = np.asarray(palette, np.uint8) if isinstance(palette, list) and np.shape(palette) == (k, 3) else None
    return names, palette


def _exported_classes(session: Any, k: int) -> tuple[list[str] | None, np.ndarray | None]:
    """Class names and (K, 3) uint8 palette from the ``fcnkit.class_names``/``fcnkit.palette`` metadata that
    ``fcnkit export`` writes, when present and consistent with the K output channels."""
    import json

    stored = session.get_modelmeta().custom_metadata_map
    try:
        names = json.loads(stored.get("fcnkit.class_names", "null"))
        palette = json.loads(stored.get("fcnkit.palette", "null"))
    except json.JSONDecodeError:
        return None, None
    return _classes(names, palette, k)


def _graph(data: bytes) -> Any:
    try:
        import onnx
    except ImportError:
        return None
    return onnx.load_from_string(data)


def _whole_image_operators(data: bytes) -> str | None:
    """The graph's operators that read the whole image, as a clause (``GlobalAveragePool at node '...' pools the
    whole image``), or None."""
    model = _graph(data)
    if model is None:
        return None
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attribute.t)
    found = []
    for node in _all_nodes(model.graph):
        why = _WHOLE_IMAGE.get(node.op_type)
        if why is None and node.op_type in _REDUCE:
            axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
            if axes is None and len(node.input) > 1 and node.input[1] in constants:
                axes = [int(v) for v in np.ravel(constants[node.input[1]])]
            if axes is None or {2, 3, -1, -2} & set(axes):
                why = "reduces over the spatial axes (a global pooling)"
        if why is not None:
            found.append(f"{node.op_type} at node '{node.name or node.output[0]}' {why}")
    if not found:
        return None
    more = f" (and {len(found) - 2} more)" if len(found) > 2 else ""
    return "; ".join(found[:2]) + more


def _all_nodes(graph: Any) -> list:
    """Every node of ``graph``, with those of sub-graphs (If/Loop bodies, local functions are not expanded)."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                nodes.extend(_all_nodes(attribute.g))
    return nodes


def _average_pools(data: bytes) -> bytes:
    """The ONNX model ``data`` with every single-output MaxPool replaced by an AveragePool of the same window."""
    model = _graph(data)
    if model is None:
        return data
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    keep = {"auto_pad", "ceil_mode", "kernel_shape", "pads", "strides"} | ({"dilations"} if opset >= 19 else set())
    for node in _all_nodes(model.graph):
        if node.op_type != "MaxPool" or len([o for o in node.output if o]) != 1:
            continue
        if opset < 19 and any(a.name == "dilations" and any(v != 1 for v in a.ints) for a in node.attribute):
            continue  # AveragePool has no dilation before opset 19: keep the MaxPool
        attributes = [a for a in node.attribute if a.name in keep]
        del node.attribute[:]
        node.attribute.extend(attributes)
        node.op_type = "AveragePool"
    return model.SerializeToString()
