from __future__ import annotations

import json

import pytest

from fcnkit.checkpoint import save_checkpoint
from fcnkit.cli import main
from fcnkit.models import build_model


def test_registered_model_table_and_summary(capsys):
    assert main(["inspect", "fcn32s", "--width", "0.0625", "--num-classes", "5", "--size", "64", "64"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("fcn32s at 64x64 (3 input channels), output dense 1x5x64x64")
    header = next(line for line in lines if line.startswith("layer"))
    assert header.split() == ["layer", "type", "output", "shape", "params", "MACs"]
    score = next(line for line in lines if line.startswith("score_fr"))
    assert score.split()[1:3] == ["Conv2d", "1x5x2x2"]
    for key in ("receptive field:", "output stride:", "input multiple:", "halo:", "padding:", "local:",
                "parameters:", "FLOPs per megapixel:", "1 MAC = 2 FLOPs"):
        assert key in out
    assert "input multiple:      32" in out
    assert "local:               yes" in out


def test_json_matches_the_model(capsys):
    assert main(["inspect", "unet", "--width", "0.125", "--num-classes", "3", "--size", "32", "48", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = build_model("unet", num_classes=3, width=0.125)
    assert data["model"] == "unet" and data["size"] == [32, 48]
    assert data["output_shape"] == [1, 3, 32, 48]
    assert data["total_params"] == sum(p.numel() for p in model.parameters())
    assert data["flops"] == 2 * data["macs"] == 2 * sum(row["macs"] for row in data["layers"])
    assert data["geometry"]["local"] is True and data["geometry"]["output_stride"] == 1
    assert data["flops_per_megapixel"] == pytest.approx(data["flops"] * 1e6 / (32 * 48))


def test_default_size_is_256_and_classifier_window(capsys):
    assert main(["inspect", "heatmap_net", "--width", "0.125", "--num-classes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == [256, 256]
    assert main(["inspect", "digit_classifier", "--num-classes", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["size"] == [32, 32] and data["output_shape"] == [1, 10] and data["geometry"] is None


def test_checkpoint(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "m.pt", model=build_model("fcn32s", num_classes=4, width=0.0625))
    assert main(["inspect", "--checkpoint", str(path), "--size", "40", "40"]) == 0
    assert capsys.readouterr().out.startswith("fcn32s at 40x40 (3 input channels), output dense 1x4x40x40")


@pytest.mark.parametrize("argv, message", [
    (["inspect"], "fcnkit inspect: expected exactly one of MODEL or --checkpoint CKPT, found neither"),
    (["inspect", "fcn8s", "--checkpoint", "x.pt"], "expected exactly one of MODEL or --checkpoint CKPT, found both"),
    (["inspect", "fcn8s", "--size", "0", "10"], "--size: expected a positive height and width, found 0 10"),
    (["inspect", "fcn8s", "--num-classes", "0"], "--num-classes: expected a positive integer, found 0"),
    (["inspect", "--checkpoint", "missing.pt"], "checkpoint 'missing.pt'"),
    (["inspect", "runs/unet.pt2"], "MODEL: 'runs/unet.pt2' is a file, not a registered model name; to inspect a file, "
                                   "pass it as --checkpoint runs/unet.pt2"),
])
def test_user_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcnkit: error: ") and message in err


def test_unknown_model_lists_the_valid_ones(capsys):
    assert main(["inspect", "fcn9s"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcnkit: error: ") and "fcn9s" in err and "fcn8s" in err
