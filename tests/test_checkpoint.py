"""Checkpoints: atomic writes, safe reads (weights_only), strict rebuilds from the file's own metadata."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from fcnkit.checkpoint import (
    capture_rng,
    load_checkpoint,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from fcnkit.errors import CheckpointError, OutputError


def _tiny(name: str = "fcn32s", num_classes: int = 3):
    from fcnkit.models import build_model

    torch.manual_seed(0)
    return build_model(name, num_classes=num_classes, width=0.0625)


class _Spec(torch.nn.Module):
    """A plain module that carries a spec, for tests that only read the raw dict."""

    output_kind = "classifier"

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.fcnkit_spec = {"name": "none", "num_classes": 2, "in_channels": 3, "options": {}}


def test_roundtrip_rebuilds_model_with_meta(tmp_path):
    model = _tiny()
    names = ["background", "a", "b"]
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    path = save_checkpoint(tmp_path / "m.pt", model=model, class_names=names, palette=palette, step=7,
                           metrics={"mean_iu": 0.5})
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.fcnkit_spec == model.fcnkit_spec
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.fcnkit_meta["class_names"] == names
    np.testing.assert_array_equal(loaded.fcnkit_meta["palette"], palette)
    assert loaded.fcnkit_meta["step"] == 7
    assert loaded.fcnkit_meta["metrics"] == {"mean_iu": 0.5}
    x = torch.rand(1, 3, 37, 45)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_dict_layout_and_weights_only(tmp_path):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(1, 3, 32, 32)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
    save_checkpoint(tmp_path / "m.pt", model=model, optimizer=opt, scheduler=sched, step=1, rng=capture_rng())
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format"] == "fcnkit-checkpoint" and raw["version"] == 1
    assert raw["model"] == model.fcnkit_spec
    assert set(raw) >= {"state_dict", "class_names", "palette", "geometry", "optimizer", "scheduler", "step", "rng"}
    assert raw["geometry"]["output_stride"] == 1
    opt2 = torch.optim.SGD(_tiny().parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(raw["optimizer"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == opt.state_dict()["param_groups"][0]["lr"]


def test_rng_capture_restore_replays_every_generator():
    state = capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", model=_Spec(), step=1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=_Spec(), step=2)
    assert read_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary file left behind


def test_save_under_a_regular_file_names_the_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"'.*file/run/last\.pt': expected a writable folder, found that "
                                          r".*file is a file, not a folder"):
        save_checkpoint(tmp_path / "file" / "run" / "last.pt", model=_Spec())
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*nope\.pt'.*found nothing; check the path"):
        read_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model=_tiny())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.pt'.*truncated or corrupted"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello world")
    with pytest.raises(CheckpointError, match="notes.pt"):
        read_checkpoint(tmp_path / "notes.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain\.pt'.*expected an fcnkit checkpoint.*found format None"):
        read_checkpoint(tmp_path / "plain.pt")


@pytest.mark.parametrize("content, looks_like", [
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "it looks like a PNG image"),
    (b"\xff\xd8\xff\xe0" + bytes(40), "it looks like a JPEG image"),
    (b"II*\x00" + bytes(40), "it looks like a TIFF image"),
    (b"", "it is empty"),
    (b"hello world\n", "it looks like a text file"),
    (bytes(range(200, 256)), "its first bytes are c8 c9 ca cb cc cd ce cf"),
])
def test_a_file_that_is_not_a_torch_checkpoint_says_what_it_looks_like(tmp_path, content, looks_like):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "x.pt")
    message = str(info.value)
    assert "x.pt': expected a PyTorch checkpoint" in message and f"not a PyTorch checkpoint ({looks_like})" in message
    assert "would run code" not in message


def test_both_torch_formats_pass_the_magic_check(tmp_path):
    model = _tiny()
    path = save_checkpoint(tmp_path / "m.pt", model=model)
    data = torch.load(path, weights_only=True)
    torch.save(data, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert read_checkpoint(tmp_path / "legacy.pt")["model"] == data["model"]


class _Payload:
    """Unpickling this would create a file; weights_only must refuse before running it."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"format": "fcnkit-checkpoint", "version": 1, "x": _Payload(str(target))}, tmp_path / "evil.pt")
    assert not target.exists()
    with pytest.raises(CheckpointError, match=r"evil\.pt'.*would run code.*nothing was executed"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not target.exists()


def test_strict_load_names_mismatched_keys(tmp_path):
    model = _tiny()
    path = save_checkpoint(tmp_path / "m.pt", model=model)
    raw = torch.load(path, weights_only=True)
    first = next(iter(raw["state_dict"]))
    raw["state_dict"]["extra.weight"] = raw["state_dict"].pop(first)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=rf"missing: {first}.*unexpected: extra\.weight"):
        load_checkpoint(path)


def test_plain_module_cannot_be_saved(tmp_path):
    with pytest.raises(CheckpointError, match="needs an fcnkit model with `fcnkit_spec`.*Linear"):
        save_checkpoint(tmp_path / "m.pt", model=torch.nn.Linear(2, 2))


def test_convolutionalized_classifier_roundtrip(tmp_path):
    from fcnkit.convert import convolutionalize

    classifier = _tiny("digit_classifier", num_classes=10)
    fcn = convolutionalize(classifier.eval(), input_size=tuple(classifier.input_size))
    assert "convolutionalized" in fcn.fcnkit_spec
    loaded = load_checkpoint(save_checkpoint(tmp_path / "fcn.pt", model=fcn))
    x = torch.rand(1, 3, 64, 48)
    torch.testing.assert_close(loaded(x), fcn.eval()(x))


def test_the_16_bit_rule_of_the_training_data_travels_with_the_model(tmp_path):
    from fcnkit.export import export_safetensors, load_safetensors

    model = _tiny("encoder_decoder", num_classes=2)
    assert load_checkpoint(save_checkpoint(tmp_path / "a.pt", model=model)).fcnkit_meta["input_16_bit"] == "scaled"
    kept = load_checkpoint(save_checkpoint(tmp_path / "b.pt", model=model, input_16_bit="kept"))
    assert kept.fcnkit_meta["input_16_bit"] == "kept"
    export_safetensors(kept, tmp_path / "b.safetensors")
    assert load_safetensors(tmp_path / "b.safetensors").fcnkit_meta["input_16_bit"] == "kept"
    with pytest.raises(CheckpointError, match=r"input_16_bit=\.\.\.\): expected one of scaled, kept, found 'raw'"):
        save_checkpoint(tmp_path / "c.pt", model=model, input_16_bit="raw")
    assert not (tmp_path / "c.pt").exists()


def test_a_torchscript_file_or_a_misnamed_program_is_named_for_what_it_is(tmp_path):
    from fcnkit.export import export_program, export_torchscript

    model = _tiny("encoder_decoder", num_classes=2).eval()
    export_torchscript(model, tmp_path / "m.ts")
    with pytest.raises(CheckpointError, match=r"m\.ts'.*\(it is a TorchScript file \(torch\.jit\.save\), which fcnkit "
                                              r"does not load; pass the checkpoint it was exported from, or an \.onnx, "
                                              r"\.pt2 or \.safetensors export of it\)"):
        load_checkpoint(tmp_path / "m.ts")
    export_program(model, tmp_path / "m.pt2")
    (tmp_path / "m.pt2").rename(tmp_path / "program.pt")
    with pytest.raises(CheckpointError, match=r"\(it is a torch\.export program; name it \.pt2 and pass it again\)"):
        load_checkpoint(tmp_path / "program.pt")
