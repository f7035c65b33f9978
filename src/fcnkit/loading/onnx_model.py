"""``OnnxModel``: any ONNX model with one (N, C, H, W) input, run by onnxruntime behind an ``nn.Module``."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fcnkit.errors import CheckpointError, InputError, ModelError

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
        if len(out_shape) == 2 and self.input_size is not None:
            self.output_kind = "classifier"  # (N, K) scores of fixed-size windows
        k = _dim(out_shape[1]) if len(out_shape) >= 2 else None
        if k is None:
            side = self.input_size or (64, 64)
            k = int(self(torch.zeros(1, channels or 3, *side)).shape[1])
        self.nonlocal_operators = _whole_image_operators(self._bytes)
        self.fcnkit_weight_count = _weight_count(self._bytes)  # its weights live in onnxruntime, not in parameters()
        self.fcnkit_spec = {"format": "onnx", "path": str(self.path), "num_classes": k,
                            "in_channels": channels or 3}
        names, palette = _exported_classes(self._session, k)
        stored = self._session.get_modelmeta().custom_metadata_map
        from fcnkit.checkpoint import known_16_bit  # only here: fcnkit.checkpoint loads fcnkit.io (zarr)

        self.fcnkit_meta = {"class_names": names, "palette": palette, "geometry": None, "step": None,
                            "metrics": None, "input_16_bit": known_16_bit(_json(stored.get("fcnkit.input_16_bit")))}
        # whether the graph normalises raw 0-255 values (fcnkit's exporter says so; files it wrote before it did
        # carry only its input convention, which said 0-255 for every model); a model from elsewhere: as given
        said = _json(stored.get("fcnkit.takes_0_255"))
        self.fcnkit_takes_0_255 = said if isinstance(said, bool) else "fcnkit.input" in stored
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
            fix = ("it classifies windows of that size: convolutionalize the classifier it was exported from "
                   "(`fcnkit convert`) and export the FCN" if self.output_kind == "classifier" else
                   "export it with dynamic height and width (e.g. `fcnkit export --format onnx`)")
            raise InputError(f"ONNX model '{self.path.name}': the graph takes only {h}x{w} inputs, got "
                             f"{x.shape[2]}x{x.shape[3]}; {fix} to run it on other sizes.")
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


def consistent_classes(names: Any, palette: Any, k: int) -> tuple[list[str] | None, np.ndarray | None]:
    """Class names and a (K, 3) uint8 palette, when present and consistent with the K output channels."""
    names = [str(n) for n in names] if isinstance(names, list) and len(names) == k else None
    palette = np.asarray(palette, np.uint8) if isinstance(palette, list) and np.shape(palette) == (k, 3) else None
    return names, palette


def _exported_classes(session: Any, k: int) -> tuple[list[str] | None, np.ndarray | None]:
    """Class names and (K, 3) uint8 palette from the ``fcnkit.class_names``/``fcnkit.palette`` metadata that
    ``fcnkit export`` writes, when present and consistent with the K output channels."""
    stored = session.get_modelmeta().custom_metadata_map
    names, palette = _json(stored.get("fcnkit.class_names")), _json(stored.get("fcnkit.palette"))
    return consistent_classes(names, palette, k)


def _json(text: str | None) -> Any:
    """A metadata value written as JSON; None where it is missing or damaged."""
    import json

    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None


def _weight_count(data: bytes) -> int | None:
    """The number of values in the graph's floating-point initializers (its weights); None without onnx."""
    model = _graph(data)
    if model is None:
        return None
    floats = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats)


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
