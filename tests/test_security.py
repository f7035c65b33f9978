"""Nothing in a file is ever executed: checkpoints load with ``weights_only=True`` through every command that reads
one, safetensors carries only tensors and JSON, and dataset lists cannot reach outside their root."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import fcnkit
from fcnkit.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from fcnkit.cli import main
from fcnkit.errors import CheckpointError, ModelError
from fcnkit.export import load_safetensors

SOURCE = Path(fcnkit.__file__).parent


class _CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: the file appearing is the proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith(name)]


def test_every_torch_load_in_fcnkit_is_weights_only():
    loads = []
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "torch.load"):
            flags = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert flags.get("weights_only") == "True", f"{path.name}:{call.lineno} torch.load without weights_only"
            loads.append(path.name)
        for risky in ("pickle.load", "pickle.loads", "jit.load", "eval", "exec"):
            assert not [c for c in _calls(tree, risky) if ast.unparse(c.func) == risky], f"{path.name}: {risky}"
        for call in _calls(tree, "np.load"):
            assert all(k.arg != "allow_pickle" for k in call.keywords), f"{path.name}:{call.lineno}"
    assert "checkpoint.py" in loads  # the scan really saw the loader


def test_every_torch_export_load_reads_a_checked_archive():
    """torch.export.load unpickles weights, constants and sample inputs that are not plain tensors: fcnkit calls it
    on a file from elsewhere only after ``_check_pt2_pickles`` has read the archive, and otherwise only on the file
    its own exporter has just written."""
    seen = []
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            loads = [c for c in _calls(function, "export.load") if ast.unparse(c.func) == "torch.export.load"]
            if not loads:
                continue
            seen.append(f"{path.parent.name}/{path.name}:{function.name}")
            if path.name == "export.py":
                assert function.name == "export_program", function.name  # reads back what it wrote
                continue
            checks = [c.lineno for c in _calls(function, "_check_pt2_pickles")]
            assert checks and min(checks) < min(c.lineno for c in loads), f"{path.name}:{function.name}"
    assert sorted(seen) == ["fcnkit/export.py:export_program", "loading/program.py:_open_program"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sec")
    torch.manual_seed(0)
    good = save_checkpoint(root / "good.pt", model=fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125),
                           class_names=["bg", "a", "b"], palette=[[0, 0, 0], [9, 9, 9], [99, 99, 99]])
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 36, 3)).astype(np.uint8)).save(root / "img.png")
    marker = root / "code-ran"
    payload = {"format": FORMAT, "version": VERSION, "model": {}, "state_dict": {}, "hook": _CreatesAFile(marker)}
    torch.save(payload, root / "evil.pt")
    torch.save(payload, root / "evil-legacy.pt", _use_new_zipfile_serialization=False)
    with open(root / "evil-raw.pt", "wb") as f:
        pickle.dump(payload, f)
    (root / "run").mkdir()
    (root / "run" / "last.pt").write_bytes((root / "evil.pt").read_bytes())
    return {"root": root, "good": good, "img": root / "img.png", "marker": marker}


@pytest.mark.parametrize("kind", ["evil.pt", "evil-legacy.pt", "evil-raw.pt"])
def test_a_pickle_with_code_is_refused_by_the_api_and_never_runs(files, kind):
    with pytest.raises(CheckpointError, match="would run code when loaded \\(refused, nothing was executed\\)"):
        load_checkpoint(files["root"] / kind)
    assert not files["marker"].exists()


COMMANDS = {
    "predict": "predict --checkpoint {evil} {img} --out {root}/out.png",
    "eval": "eval --checkpoint {evil} --data scenes --count 1",
    "convert": "convert --checkpoint {evil} --out {root}/fcn.pt",
    "heatmap": "heatmap --checkpoint {evil} {img} --out {root}/heat.png",
    "inspect": "inspect --checkpoint {evil}",
    "export": "export --checkpoint {evil} --format onnx --out {root}/m.onnx",
    "train-init-from": "train --model encoder_decoder --width 0.125 --data scenes --steps 1 --init-from {evil} "
                       "--out {root}/run2",
    "train-resume": "train --model encoder_decoder --width 0.125 --data scenes --steps 1 --resume --out {root}/run",
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_a_pickle_with_code(files, capsys, command):
    argv = COMMANDS[command].format(evil=files["root"] / "evil.pt", img=files["img"], root=files["root"]).split()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "would run code when loaded (refused, nothing was executed)" in err and "Traceback" not in err
    assert not files["marker"].exists()
    assert not any((files["root"] / name).exists() for name in ("out.png", "fcn.pt", "heat.png", "m.onnx"))


def test_safetensors_round_trip_through_the_cli(files, tmp_path, capsys):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(["export", "--checkpoint", str(files["good"]), "--format", "safetensors", "--out", str(first)]) == 0
    # a safetensors file is itself a valid --checkpoint for export and inspect
    assert main(["export", "--checkpoint", str(first), "--format", "safetensors", "--out", str(second)]) == 0
    assert main(["inspect", "--checkpoint", str(second), "--size", "24", "24", "--json"]) == 0
    assert '"flops_per_megapixel"' in capsys.readouterr().out
    original, back = load_checkpoint(files["good"]), load_safetensors(second)
    assert back.fcnkit_spec == original.fcnkit_spec
    assert back.fcnkit_meta["class_names"] == ["bg", "a", "b"]
    np.testing.assert_array_equal(back.fcnkit_meta["palette"], original.fcnkit_meta["palette"])
    for key, value in original.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0)
    image = np.asarray(Image.open(files["img"]))
    np.testing.assert_array_equal(fcnkit.predict(back, image, output="labels"),
                                  fcnkit.predict(original, image, output="labels"))


def test_safetensors_metadata_is_data_not_code(files, tmp_path):
    tensors = {"w": torch.zeros(2)}
    save_file(tensors, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="expected fcnkit metadata"):
        load_safetensors(tmp_path / "plain.safetensors")
    spec = '{"name": "os.system", "num_classes": 2, "in_channels": 3, "options": {}}'
    save_file(tensors, tmp_path / "odd.safetensors", metadata={"format": "fcnkit-safetensors", "version": "1",
                                                               "model": spec})
    with pytest.raises(ModelError, match="unknown model 'os.system'"):
        load_safetensors(tmp_path / "odd.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "plain.safetensors").read_bytes()[:20])
    with pytest.raises(CheckpointError, match="expected a complete safetensors file"):
        load_safetensors(tmp_path / "cut.safetensors")


def test_predict_outputs_stay_inside_the_out_folder(files, tmp_path):
    # several inputs: each output is named from the input's file name only, whatever path led to it
    sneaky = tmp_path / "in" / ".." / "in2"
    sneaky.mkdir(parents=True)
    Image.open(files["img"]).save(sneaky / "x.png")
    out = tmp_path / "results"
    assert main(["predict", "--checkpoint", str(files["good"]), str(files["img"]), str(sneaky / "x.png"),
                 "--out", f"{out}/", "--format", ".png", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img.png", "x.png"]
