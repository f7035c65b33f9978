"""Checkpoints: one ``.pt`` file that rebuilds a model from its own metadata, written atomically, read safely.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(weights_only=True)`` reads it and no
code stored in a file ever runs::

    {"format": "fcnkit-checkpoint", "version": 1,
     "model": model.fcnkit_spec,          # {"name", "num_classes", "in_channels", "options"[, "convolutionalized"]}
     "state_dict": {...}, "class_names": [...] | None, "palette": [[r, g, b], ...] | None,
     "geometry": Geometry.to_dict() | None,
     "optimizer"?, "scheduler"?, "step"?, "rng"?, "metrics"?, "extra"?}

Example::

    save_checkpoint("run/last.pt", model=model, class_names=names, step=100)
    model = load_checkpoint("run/last.pt")       # eval mode, model.fcnkit_meta["class_names"] == names
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fcnkit.errors import CheckpointError, FcnkitError
from fcnkit.io.atomic import atomic_file

FORMAT = "fcnkit-checkpoint"
VERSION = 1
# How the training data turned stored 16-bit pixels into 0-255 values: by fcnkit.io.pixels' rule (/257) or as stored
SIXTEEN_BIT_RULES = ("scaled", "kept")
# Formats whose model lives in its own file (fcnkit.loading's OnnxModel, ExportedModel), in words
EXPORTED_FORMATS = {"onnx": "an ONNX model", "pt2": "a torch.export program"}


def known_16_bit(rule: Any) -> str:
    """A 16-bit rule read from a file: itself if it is one of SIXTEEN_BIT_RULES, else "scaled" (the default)."""
    return rule if rule in SIXTEEN_BIT_RULES else "scaled"


# Geometry depends on the architecture only, so it is analyzed once per model object, not at every save.
_GEOMETRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _geometry_of(model: nn.Module) -> dict | None:
    """The model's analyzed geometry as a plain dict; None for models without a spatial output (classifiers)."""
    if getattr(model, "output_kind", "dense") == "classifier":
        return None
    if model not in _GEOMETRY:
        from fcnkit.geometry.analysis import analyze

        in_channels = int(getattr(model, "fcnkit_spec", {}).get("in_channels", 3))
        # Analyze a copy in eval mode with the RNG forked: a probe must not move BatchNorm statistics or draw
        # random numbers from the training run (that would break exact resume).
        with torch.random.fork_rng(devices=[]):
            try:
                _GEOMETRY[model] = analyze(copy.deepcopy(model).eval(), in_channels=in_channels).to_dict()
            except FcnkitError:
                # A model the analyzer cannot describe is still saved, just without geometry.
                _GEOMETRY[model] = None
    return _GEOMETRY[model]


def capture_rng() -> dict:
    """The torch, CUDA, numpy and Python random states as tensors and plain values (safe for weights_only)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Undo :func:`capture_rng`: set every random generator back to the saved state."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    class_names: list[str] | None = None,
    palette: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int | None = None,
    rng: dict | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    input_16_bit: str = "scaled",
) -> Path:
    """Write ``model`` (and, for resuming, the training state) to ``path`` atomically; return the path.

    The file is written to a temporary file in the same folder, flushed, fsynced and renamed over ``path``, so a
    kill at any moment leaves either the old checkpoint or the new one, never a broken file. ``palette`` is a
    (K, 3) array-like of uint8 colours. ``rng`` is :func:`capture_rng`'s dict. ``input_16_bit``: how the training
    data made 16-bit pixels 0-255 values ("scaled" by /257, or "kept" as stored; inference does the same). A
    folder that cannot be created or written (a regular file in the path, no permission) raises
    :class:`OutputError` naming it.
    """
    spec = getattr(model, "fcnkit_spec", None)
    if spec is None:
        raise CheckpointError(
            f"save_checkpoint(model=...) needs an fcnkit model with `fcnkit_spec`, found a plain "
            f"{type(model).__name__}; build it with fcnkit.build_model (or set model.fcnkit_spec) so the "
            f"checkpoint can rebuild it."
        )
    if spec.get("format") in EXPORTED_FORMATS:
        kind = EXPORTED_FORMATS[spec["format"]]
        raise CheckpointError(
            f"save_checkpoint(model=...): expected a PyTorch model, found {kind} (from '{spec.get('path')}') "
            f"whose weights live in its .{spec['format']} file; pass that file wherever a checkpoint is asked for."
        )
    # DDP and torch.compile wrappers keep the real module inside; save its keys, not the wrapper's.
    inner = getattr(model, "module", model)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": dict(spec),
        "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "class_names": list(class_names) if class_names is not None else None,
        "palette": np.asarray(palette, dtype=np.uint8).tolist() if palette is not None else None,
        "geometry": _geometry_of(inner),
        "input_16_bit": _check_16_bit(input_16_bit),
    }
    for key, value in (("step", step), ("rng", rng), ("metrics", metrics), ("extra", extra)):
        if value is not None:
            payload[key] = value
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()

    path = Path(path)
    with atomic_file(path, what="checkpoint") as f:
        torch.save(payload, f)
    return path


def _check_16_bit(rule: Any) -> str:
    if rule not in SIXTEEN_BIT_RULES:
        raise CheckpointError(f"save_checkpoint(input_16_bit=...): expected one of {', '.join(SIXTEEN_BIT_RULES)}, "
                              f"found {rule!r}; pass \"kept\" for data trained on 16-bit values as stored.")
    return rule


def read_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict:
    """The raw checkpoint dict of ``path``, validated; raises :class:`CheckpointError` for anything unusable.

    Always ``torch.load(weights_only=True)``: a file that holds code (a pickle with a ``__reduce__``) is refused,
    and the code never runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}': expected a .pt file written by `fcnkit train`, found "
            f"{'a folder' if path.is_dir() else 'nothing'}; check the path."
        )
    try:
        looks_like = _not_torch(path)
    except OSError as exc:
        raise CheckpointError(f"checkpoint '{path}': expected a readable file, found that it cannot be read "
                              f"({exc.strerror or exc}); fix its permissions or use another copy.") from None
    if looks_like is not None:
        raise CheckpointError(
            f"checkpoint '{path}': expected a PyTorch checkpoint (a zip or pickle file written by torch.save), "
            f"found that it is not a PyTorch checkpoint ({looks_like}); pass a .pt file written by "
            f"`fcnkit train` or `fcnkit convert`."
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise CheckpointError(
                f"checkpoint '{path}': expected only tensors and plain values, found objects that would run code "
                f"when loaded (refused, nothing was executed); use a checkpoint written by fcnkit, or re-save a "
                f"trusted file's state_dict."
            ) from None
        raise CheckpointError(
            f"checkpoint '{path}': expected a torch checkpoint, found a file torch cannot read ({exc}); "
            f"the file is corrupted or not a checkpoint, use another copy (e.g. best.pt or last.pt)."
        ) from None
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, KeyError, ... depending on where
        raise CheckpointError(
            f"checkpoint '{path}': expected a complete torch checkpoint, found a truncated or corrupted file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); use another copy "
            f"(e.g. best.pt or last.pt) or train again."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = f"format {data.get('format')!r}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise CheckpointError(
            f"checkpoint '{path}': expected an fcnkit checkpoint (format '{FORMAT}'), found {found}; "
            f"use a file written by `fcnkit train` or fcnkit.checkpoint.save_checkpoint."
        )
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint '{path}': expected version {VERSION}, found {data.get('version')!r}; "
            f"use the fcnkit version that wrote it."
        )
    for key in ("model", "state_dict"):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(
                f"checkpoint '{path}': expected a '{key}' dict, found {type(data.get(key)).__name__}; "
                f"the file is damaged, use another copy."
            )
    return data


# Files that are often passed by mistake, by their first bytes (magic numbers).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
    (b"II+\x00", "a BigTIFF image"), (b"MM\x00+", "a BigTIFF image"),
    (b"GIF8", "a GIF image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _other_archive(path: Path) -> str | None:
    """What a zip file written by torch but not by torch.save is (a clause), else None: a TorchScript file
    (``code/``, ``constants.pkl``) or a torch.export program (``archive_format``: pt2), which torch.load cannot
    read as a checkpoint."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.partition("/")[2] == "archive_format" and archive.read(n).strip() == b"pt2" for n in names):
                return "it is a torch.export program; name it .pt2 and pass it again"
    except (zipfile.BadZipFile, OSError):
        return None  # torch.load says what is wrong with it
    if any(n.partition("/")[2] in ("constants.pkl", "code/") or "/code/" in n for n in names):
        return ("it is a TorchScript file (torch.jit.save), which fcnkit does not load; pass the checkpoint it was "
                "exported from, or an .onnx, .pt2 or .safetensors export of it")
    return None


def _not_torch(path: Path) -> str | None:
    """What ``path`` looks like (a clause) when its first bytes rule out a torch.save file, else None.

    torch.save writes a zip archive (``PK\\x03\\x04``) or, in the legacy format, a pickle that opens with the PROTO
    opcode (``\\x80`` and protocol 2-5). Checking this first keeps an image from reaching the unpickler, whose
    failure on it would read like a refused pickle with code.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        return _other_archive(path)
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return None
    if not head:
        return "it is empty"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return f"it looks like {what}"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "it looks like a safetensors file, which `fcnkit inspect` and `fcnkit export` read"
    try:
        if all(c.isprintable() or c.isspace() for c in head.decode("utf-8")):
            return "it looks like a text file"
    except UnicodeDecodeError:
        pass  # binary
    return f"its first bytes are {head[:8].hex(' ')}"


def build_from_spec(spec: dict, *, source: str = "spec") -> nn.Module:
    """A fresh (untrained) model from an ``fcnkit_spec`` dict, convolutionalized again if the spec says so."""
    from fcnkit.models import build_model

    try:
        model = build_model(spec["name"], num_classes=spec["num_classes"],
                            in_channels=spec.get("in_channels", 3), **spec.get("options", {}))
    except KeyError as exc:
        raise CheckpointError(
            f"{source}: expected a model spec with 'name' and 'num_classes', found keys {sorted(spec)}; "
            f"the file is damaged or was not written by fcnkit."
        ) from exc
    conv = spec.get("convolutionalized")
    if conv:
        from fcnkit.convert import convolutionalize

        model = convolutionalize(model, input_size=tuple(conv["input_size"]),
                                 in_channels=spec.get("in_channels", 3))
    return model


def load_state_strict(model: nn.Module, state_dict: dict, *, source: str) -> None:
    """Load every weight, or raise :class:`CheckpointError` naming the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"{source}: expected weights that fit the model it describes, found mismatched keys "
            f"({'; '.join(parts)}); the file was edited or written by another fcnkit version, train again."
        )
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the model saved in ``path`` (architecture from its metadata, weights strictly), in eval mode.

    The model gets ``model.fcnkit_meta = {"class_names", "palette" ((K, 3) uint8 array or None), "geometry",
    "step", "metrics", "input_16_bit"}``; ``input_16_bit`` ("scaled" or "kept") says how its training data turned
    16-bit pixels into 0-255 values, and inference does the same.
    """
    data = read_checkpoint(path, map_location=map_location)
    model = build_from_spec(data["model"], source=f"checkpoint '{path}'")
    load_state_strict(model, data["state_dict"], source=f"checkpoint '{path}'")
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    palette = data.get("palette")
    model.fcnkit_meta = {
        "class_names": data.get("class_names"),
        "palette": np.asarray(palette, dtype=np.uint8) if palette is not None else None,
        "geometry": data.get("geometry"),
        "step": data.get("step"),
        "metrics": data.get("metrics"),
        "input_16_bit": data.get("input_16_bit", "scaled"),
    }
    return model.eval()
