"""``ExportedModel``: a torch.export program (``.pt2``) behind an ``nn.Module``, opened without running code from the
file."""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnkit.errors import CheckpointError, InputError, ModelError
from fcnkit.loading.onnx_model import consistent_classes


class ExportedModel(nn.Module):
    """A torch.export program read from a ``.pt2`` file: (N, C, H, W) float tensor -> its output tensor.

    The program runs as ``torch.export.load(path).module()`` does (an ATen graph, its weights as the module's own
    parameters, so ``.to()`` moves and casts them). ``fcnkit.json``, the extra file ``fcnkit export --format pt2``
    writes, gives the class names, palette, output kind and model spec; a program from elsewhere gets its channels
    from the program's input and its classes from one small run. ``fcnkit_spec`` holds ``{"format": "pt2",
    "path", "num_classes", "in_channels"}``. The geometry is read from the program's ATen graph
    (:mod:`fcnkit.geometry.aten`) and measured with probe images only where an operator has no rule.

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
        names, palette = consistent_classes(meta.get("class_names"), meta.get("palette"), k)
        from fcnkit.checkpoint import known_16_bit  # only here: fcnkit.checkpoint loads fcnkit.io (zarr)

        self.fcnkit_meta = {"class_names": names, "palette": palette, "geometry": None, "step": None,
                            "metrics": None, "input_16_bit": known_16_bit(meta.get("input_16_bit"))}
        # whether the program takes raw 0-255 values (a Normalize inside, now ATen operators), as its exporter
        # recorded; a program from elsewhere gets its values as given
        self.fcnkit_takes_0_255 = bool(meta.get("takes_0_255", False))
        self.eval()

    def train(self, mode: bool = True) -> ExportedModel:
        # The program keeps the mode it was exported in (eval): torch.export modules refuse train()/eval().
        self.training = bool(mode)
        return self

    def __deepcopy__(self, memo: dict) -> ExportedModel:
        # A copy in memory (inference prepares one per call): every attribute copied, the file not read again, as
        # pickling (below) would.
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        with _torch_deprecations_quiet():
            clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return clone

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

    @property
    def fcnkit_graph(self) -> torch.fx.GraphModule:
        """The program's ATen graph, from which ``fcnkit.analyze`` reads the geometry (the probes on this model
        are the fallback for an operator without a rule)."""
        return self.program

    def fcnkit_probe_stand_in(self) -> ExportedModel:
        """The model the geometry probes run on: this one (torch's max-pooling keeps every NaN)."""
        return self

    def __repr__(self) -> str:  # not the program's hundreds of anonymous submodules
        return (f"ExportedModel(path={str(self.path)!r}, in_channels={self.in_channels}, "
                f"num_classes={self.fcnkit_spec['num_classes']})")


@contextlib.contextmanager
def _torch_deprecations_quiet() -> Iterator[None]:
    """Copying a program's module copies torch's own pytree specs, and PyTorch 2.13 warns about its own deprecated
    ``LeafSpec`` check there (a FutureWarning no fcnkit user can act on): silenced for the copy only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        yield


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
                              f"one torch cannot load ({type(exc).__name__}: {_first(exc)}); export it "
                              f"again.") from None
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
                if inner.startswith("data/") and inner.endswith(("_weights_config.json", "_constants_config.json")):
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
