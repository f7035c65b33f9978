"""fcnkit.load_model: fcnkit checkpoints, safetensors exports, any ONNX model and any torch.export program (.pt2),
through the API and the CLI.

The ONNX files are exported here with fcnkit's own exporter (module-scoped: an export takes seconds)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fcnkit
from fcnkit.checkpoint import save_checkpoint
from fcnkit.errors import CheckpointError, InputError, NotExactError
from fcnkit.export import export_onnx, export_program, export_safetensors
from fcnkit.geometry.probe import probe_radius
from fcnkit.loading import ExportedModel, OnnxModel, load_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class SqueezeExcite(nn.Module):
    """A squeeze-and-excitation block (Hu et al. 2018): channel weights from the mean over the whole image."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, 2, 1), nn.Conv2d(2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))  # (N, C, 1, 1)
        return x * s


class SESegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = SqueezeExcite(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(torch.relu(self.conv(x / 255))))


def _export(model: nn.Module, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model.eval(), path, sample_size=(40, 40))
    return str(path)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(torch model, its ONNX file): encoder_decoder from fcnkit's zoo (max-pooling, up-sampling, skips)."""
    torch.manual_seed(0)
    model = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125).eval()
    model.fcnkit_meta = {"class_names": ["sky", "sea", "boat"], "palette": np.array([[0, 0, 255], [0, 90, 0],
                                                                                     [200, 0, 0]], np.uint8)}
    return model, _export(model, tmp_path_factory.mktemp("onnx") / "encoder_decoder.onnx")


@pytest.fixture(scope="module")
def se_net(tmp_path_factory):
    torch.manual_seed(0)
    return _export(SESegmenter(), tmp_path_factory.mktemp("onnx") / "se.onnx")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- fcnkit's own files --------------------------------------------------------------------------------------------


def test_opens_checkpoints_and_safetensors_exports(tmp_path):
    model = fcnkit.build_model("unet", num_classes=2, width=0.125).eval()
    save_checkpoint(tmp_path / "m.pt", model=model, class_names=["a", "b"])
    export_safetensors(model, tmp_path / "m.safetensors")
    x = torch.rand(1, 3, 37, 29) * 255
    with torch.no_grad():
        expected = model(x)
        for name in ("m.pt", "m.safetensors"):
            loaded = load_model(tmp_path / name)
            assert not loaded.training
            torch.testing.assert_close(loaded(x), expected)
    assert fcnkit.load_model is load_model


def test_a_missing_or_damaged_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"ONNX model '.*nothing\.onnx': expected an \.onnx file, found "
                                              r"nothing; check the path"):
        load_model(tmp_path / "nothing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match=r"bad\.onnx': expected a valid ONNX file, found one onnxruntime "
                                              r"cannot load .*; export it again"):
        load_model(tmp_path / "bad.onnx")
    with pytest.raises(CheckpointError, match="expected a .pt file written by `fcnkit train`"):
        load_model(tmp_path / "nothing.pt")


# ---- ONNX: a module that runs onnxruntime ----------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_model_equals_the_torch_model_for_any_batch(zoo):
    model, path = zoo
    onnx_model = load_model(path)
    assert isinstance(onnx_model, OnnxModel) and onnx_model.fcnkit_spec["num_classes"] == 3
    assert onnx_model.fcnkit_meta["class_names"] == ["sky", "sea", "boat"]  # from the export's metadata
    assert onnx_model.fcnkit_meta["palette"].tolist() == [[0, 0, 255], [0, 90, 0], [200, 0, 0]]
    x = torch.rand(3, 3, 45, 61) * 255
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(x), model(x), atol=1e-4, rtol=0)
    assert onnx_model(x[:0]).shape == (0, 3, 45, 61)
    with pytest.raises(InputError, match=r"expected a \(N, C, H, W\) tensor, got \(3, 45, 61\); add the batch"):
        onnx_model(x[0])
    with pytest.raises(InputError, match="expected 3 input channels, got 1"):
        onnx_model(x[:, :1])


@pytest.mark.slow
def test_onnx_zoo_model_tiles_exactly_like_the_whole_image(zoo):
    model, path = zoo
    onnx_model = load_model(path)
    geometry = fcnkit.analyze(onnx_model)
    assert geometry.local and geometry.method == "probed" and geometry.input_multiple == 8
    # MaxPool runs as AveragePool in the probes: onnxruntime's MaxPool drops most NaNs, the stand-in drops none,
    # so the measured radius is the torch model's own
    _tiles_like_the_torch_model(onnx_model, model, geometry)


def _tiles_like_the_torch_model(loaded: nn.Module, model: nn.Module, geometry) -> None:
    """A model loaded from a file measures the torch model's reach (ONNX) or reads its graph (.pt2) as the torch
    model's is read, and tiled, whole, dask and the torch model agree."""
    if geometry.method == "probed":
        assert geometry.receptive_field == 1 + 2 * probe_radius(model)
    else:
        assert geometry == fcnkit.analyze(model)
    image = _image(75, 133)
    whole = fcnkit.predict(loaded, image)
    tiled = fcnkit.predict_tiled(loaded, image, tile=16)  # many tiles, the halo reaches across several
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)
    np.testing.assert_allclose(whole, fcnkit.predict(model, image), atol=1e-4, rtol=0)
    labels = fcnkit.distributed.predict_dask(loaded, image, output="labels", chunk=32).compute()
    assert np.array_equal(labels, whole.argmax(2))


@pytest.mark.slow
def test_onnx_model_with_squeeze_excitation_is_refused_naming_the_operator(se_net):
    model = load_model(se_net)
    geometry = fcnkit.analyze(model)
    assert not geometry.local
    assert "pools the whole image" in geometry.nonlocal_reason or "spatial axes" in geometry.nonlocal_reason
    operator = geometry.nonlocal_reason.split(" at node")[0]
    assert operator in ("GlobalAveragePool", "ReduceMean")
    image = _image(48, 40)
    with pytest.raises(NotExactError, match=rf"tiled inference cannot equal the whole-image run: {operator} at node"):
        fcnkit.predict_tiled(model, image, tile=16)
    with pytest.warns(UserWarning, match=operator):
        approximate = fcnkit.predict_tiled(model, image, tile=16, allow_inexact=True)
    assert approximate.shape == (48, 40, 2)


@pytest.mark.slow
def test_fixed_size_onnx_graph_says_which_size_it_takes(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 20, 24),), str(tmp_path / "fixed.onnx"), dynamo=True,
                          verbose=False)
    model = load_model(tmp_path / "fixed.onnx")
    assert model.input_size == (20, 24) and model.one_at_a_time
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=0)  # batch of 2 through a batch-1 graph
    with pytest.raises(InputError, match=r"the graph takes only 20x24 inputs, got 30x24; export it with dynamic "
                                         r"height and width"):
        model(torch.rand(1, 3, 30, 24))


@pytest.mark.slow
def test_onnx_model_pickles_for_dask_workers_and_copies_share_the_session(zoo):
    import copy
    import pickle

    model = load_model(zoo[1])
    x = torch.rand(1, 3, 24, 40) * 255
    revived = pickle.loads(pickle.dumps(model))  # what a distributed worker receives
    torch.testing.assert_close(revived(x), model(x), atol=0, rtol=0)
    assert copy.deepcopy(model)._session is model._session
    import onnx

    def pools(m: OnnxModel) -> set[str]:
        return {n.op_type for n in onnx.load_from_string(m._bytes).graph.node if n.op_type.endswith("Pool")}

    stand_in = model.fcnkit_probe_stand_in()
    assert pools(model) == {"MaxPool"} and pools(stand_in) == {"AveragePool"}
    assert pools(copy.deepcopy(stand_in)) == {"AveragePool"}  # a copy of the stand-in stays the stand-in


@pytest.mark.slow
def test_an_onnx_model_is_not_saved_as_a_checkpoint(zoo, tmp_path):
    with pytest.raises(CheckpointError, match=r"found an ONNX model .* whose weights live in its \.onnx file"):
        save_checkpoint(tmp_path / "x.pt", model=load_model(zoo[1]))


# ---- the command line ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_predict_runs_an_onnx_model_into_ome_zarr_or_refuses_with_the_reason(zoo, se_net, tmp_path, capsys):
    import tifffile
    import zarr
    from ome_check import check_ome_zarr

    from fcnkit.cli import main

    image = _image(70, 90, seed=1)
    tifffile.imwrite(tmp_path / "big.tif", image)
    out = tmp_path / "labels.ome.zarr"
    assert main(["predict", "--checkpoint", zoo[1], str(tmp_path / "big.tif"), "--out", str(out), "--tile", "32",
                 "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][:], fcnkit.predict(zoo[0], image, output="labels"))
    check_ome_zarr(out)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", se_net, str(tmp_path / "big.tif"), "--out", str(tmp_path / "se.ome.zarr"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcnkit: error: ") and " at node " in err and "Traceback" not in err


# ---- torch.export programs (.pt2) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pt2(tmp_path_factory):
    """(torch model, its .pt2 file written by fcnkit's exporter): encoder_decoder, with class names and palette."""
    torch.manual_seed(0)
    model = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125).eval()
    model.fcnkit_meta = {"class_names": ["sky", "sea", "boat"], "palette": np.array([[0, 0, 255], [0, 90, 0],
                                                                                     [200, 0, 0]], np.uint8)}
    path = tmp_path_factory.mktemp("pt2") / "encoder_decoder.pt2"
    export_program(model, path, sample_size=(40, 40))
    return model, path


def _rewrite(source, target, replace: dict) -> None:
    """Copy the zip ``source`` to ``target`` with the members whose path ends with a key of ``replace`` replaced."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new(data)
            dst.writestr(info, data)


_UNPICKLED = []


def _mark() -> list:
    _UNPICKLED.append("code from the file ran")
    return _UNPICKLED


class _RunsCode:
    def __reduce__(self):
        return _mark, ()


def test_pt2_model_equals_the_torch_model_for_any_batch_and_keeps_its_classes(pt2):
    model, path = pt2
    exported = load_model(path)
    assert isinstance(exported, ExportedModel) and not exported.training
    assert exported.fcnkit_spec == {"format": "pt2", "path": str(path), "num_classes": 3, "in_channels": 3}
    assert exported.fcnkit_meta["class_names"] == ["sky", "sea", "boat"]  # from the file's fcnkit.json
    assert exported.fcnkit_meta["palette"].tolist() == [[0, 0, 255], [0, 90, 0], [200, 0, 0]]
    assert repr(exported) == f"ExportedModel(path={str(path)!r}, in_channels=3, num_classes=3)"
    for n, h, w in [(3, 45, 61), (1, 64, 64), (2, 7, 130)]:
        x = torch.rand(n, 3, h, w) * 255
        with torch.no_grad():
            torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=0)
    with pytest.raises(InputError, match=r"expected a \(N, C, H, W\) tensor, got \(3, 7, 130\); add the batch"):
        exported(x[0])
    with pytest.raises(InputError, match=r"expected 3 input channels, got 1 .*; convert the image to 3 channels"):
        exported(torch.rand(1, 1, 16, 16))


@pytest.mark.slow
def test_pt2_model_tiles_exactly_like_the_whole_image(pt2):
    model, path = pt2
    exported = load_model(path)
    geometry = fcnkit.analyze(exported)
    assert geometry.local and geometry.method == "traced" and geometry.input_multiple == 8
    _tiles_like_the_torch_model(exported, model, geometry)


def test_a_pt2_models_geometry_is_read_from_its_graph_not_probed(pt2, monkeypatch):
    model, path = pt2
    exported = load_model(path)

    def no_probe():
        raise AssertionError("the program was probed")

    monkeypatch.setattr(exported, "fcnkit_probe_stand_in", no_probe)
    geometry = fcnkit.analyze(exported)
    assert (geometry.method, geometry.probe_reason) == ("traced", None)
    assert geometry == fcnkit.analyze(model)


def test_copying_a_pt2_model_says_nothing_of_torchs_own_deprecations(pt2):
    import copy

    exported = load_model(pt2[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch 2.13 warns of its own LeafSpec check while its specs are copied
        clone = copy.deepcopy(exported)
    x = torch.rand(1, 3, 24, 40) * 255
    with torch.no_grad():
        torch.testing.assert_close(clone(x), exported(x))


def test_pt2_model_pickles_with_its_weights_as_they_are_now(pt2, tmp_path):
    import copy
    import pickle
    import shutil

    exported = load_model(pt2[1])
    x = torch.rand(1, 3, 24, 40) * 255
    revived = pickle.loads(pickle.dumps(exported))  # what a distributed worker receives
    torch.testing.assert_close(revived(x), exported(x), atol=0, rtol=0)
    assert revived.fcnkit_meta["class_names"] == ["sky", "sea", "boat"]
    cast = copy.deepcopy(exported).to(torch.bfloat16)  # as bf16 inference prepares it
    revived = pickle.loads(pickle.dumps(cast))
    assert {p.dtype for p in revived.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(revived(x.bfloat16()), cast(x.bfloat16()), atol=0, rtol=0)
    moved = tmp_path / "m.pt2"
    shutil.copy(pt2[1], moved)
    from_copy = load_model(moved)
    moved.write_bytes(b"another model now")
    with pytest.raises(CheckpointError, match=r"m\.pt2': expected the file it was loaded from, found it changed or "
                                              r"gone; load the model again"):
        pickle.dumps(from_copy)


def test_opening_a_pt2_never_runs_code_from_the_file(pt2, tmp_path):
    import io
    import json
    import pickle

    def pickled_weight(data: bytes) -> bytes:
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()

    _rewrite(pt2[1], tmp_path / "weights.pt2", {"_weights_config.json": pickled_weight})
    with pytest.raises(CheckpointError, match=r"weights\.pt2': expected weights, constants and sample inputs that "
                                              r"are plain tensors, found '.*' stored with pickle, which loading "
                                              r"would unpickle \(and could run code\)"):
        load_model(tmp_path / "weights.pt2")
    buffer = io.BytesIO()
    torch.save(((torch.zeros(1), _RunsCode()), {}), buffer)  # torch.export.load would unpickle this in full
    _rewrite(pt2[1], tmp_path / "inputs.pt2", {"data/sample_inputs/model.pt": lambda _: buffer.getvalue()})
    with pytest.raises(CheckpointError, match=r"found sample inputs \('data/sample_inputs/model\.pt'\) that are "
                                              r"not plain tensors"):
        load_model(tmp_path / "inputs.pt2")
    assert _UNPICKLED == []
    pickle.loads(pickle.dumps(_RunsCode()))  # the marker works: a full unpickle would have run it
    assert _UNPICKLED == ["code from the file ran"]
    (tmp_path / "text.pt2").write_text("not a zip")
    with pytest.raises(CheckpointError, match=r"text\.pt2': expected a \.pt2 archive \(a zip file written by "
                                              r"torch\.export\.save\), found something else"):
        load_model(tmp_path / "text.pt2")
    with pytest.raises(CheckpointError, match=r"nothing\.pt2': expected a \.pt2 file, found nothing; check the path"):
        load_model(tmp_path / "nothing.pt2")


@pytest.mark.slow
def test_a_foreign_pt2_is_read_and_a_squeeze_excitation_refused_naming_the_operator(tmp_path):
    torch.manual_seed(0)
    net = SESegmenter().eval()
    auto = torch.export.Dim.AUTO
    program = torch.export.export(net, (torch.zeros(2, 3, 40, 40),), dynamic_shapes=({0: auto, 2: auto, 3: auto},))
    torch.export.save(program, tmp_path / "se.pt2")  # no fcnkit metadata: classes from one small run
    model = load_model(tmp_path / "se.pt2")
    assert model.fcnkit_spec["num_classes"] == 2 and model.fcnkit_meta["class_names"] is None
    geometry = fcnkit.analyze(model)
    assert geometry.method == "traced" and not geometry.local
    assert geometry.nonlocal_reason.startswith("adaptive_avg_pool2d at 'se.adaptive_avg_pool2d' pools the whole "
                                               "image to a fixed size")
    with pytest.raises(NotExactError, match=r"tiled inference cannot equal the whole-image run: adaptive_avg_pool2d "
                                            r"at 'se\.adaptive_avg_pool2d'"):
        fcnkit.predict_tiled(model, _image(48, 40), tile=16)


def test_a_pt2_model_is_neither_a_checkpoint_nor_safetensors(pt2, tmp_path):
    model = load_model(pt2[1])
    with pytest.raises(CheckpointError, match=r"found a torch\.export program .* whose weights live in its \.pt2 "
                                              r"file"):
        save_checkpoint(tmp_path / "x.pt", model=model)
    with pytest.raises(fcnkit.errors.ModelError, match=r"found a torch\.export program .*; it is exported already, "
                                                       r"use the \.pt2 file itself"):
        export_safetensors(model, tmp_path / "x.safetensors")


def test_an_exported_window_classifier_is_a_classifier_and_says_how_to_run_it_on_images(tmp_path):
    model = fcnkit.build_model("digit_classifier", num_classes=4, width=0.25).eval()
    onnx_model = load_model(_export(model, tmp_path / "windows.onnx"))
    assert onnx_model.output_kind == "classifier" and onnx_model.input_size == (32, 32)
    x = torch.rand(5, 3, 32, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(x), model(x), atol=1e-4, rtol=0)
    with pytest.raises(InputError, match=r"takes only 32x32 inputs, got 64x64; it classifies windows of that size: "
                                         r"convolutionalize the classifier it was exported from \(`fcnkit convert`\)"):
        onnx_model(torch.rand(1, 3, 64, 64))


def test_an_onnx_export_says_what_values_it_takes_and_its_16_bit_rule(tmp_path):
    """An OnnxModel has no Normalize to look at: fcnkit's exporter writes whether the graph takes 0-255 values and
    how 16-bit pixels became 8-bit in training; the loaded model follows both (16-bit images scaled or kept)."""
    import onnx

    from fcnkit.export import INPUT_AS_TRAINED, INPUT_CONVENTION
    from fcnkit.inference.inputs import scales_16_bit, takes_0_255

    torch.manual_seed(0)
    transfer = fcnkit.build_model("fcn8s_on", num_classes=3, width=0.25).eval()  # its Normalize is traced away
    transfer.fcnkit_meta = {"input_16_bit": "kept"}
    loaded = load_model(_export(transfer, tmp_path / "transfer.onnx"))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "transfer.onnx")).metadata_props}
    assert (props["fcnkit.takes_0_255"], props["fcnkit.input"]) == ("true", INPUT_CONVENTION)
    assert takes_0_255(loaded) and loaded.fcnkit_meta["input_16_bit"] == "kept" and not scales_16_bit(loaded)

    foreign = load_model(_export(SESegmenter(), tmp_path / "se.onnx"))  # divides by 255 itself: values as given
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "se.onnx")).metadata_props}
    assert (props["fcnkit.takes_0_255"], props["fcnkit.input"]) == ("false", INPUT_AS_TRAINED)
    assert not takes_0_255(foreign) and not scales_16_bit(foreign)
