"""Real trained networks nobody here wrote (MTCNN's P-Net, R-Net, O-Net from facenet-pytorch 2.6.0) on real photos
(scikit-image's bundled images and its LFW face / non-face patches). The ``mtcnn`` fixture (conftest.py) loads
facenet-pytorch's own classes with their shipped weights; nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fcnkit
from fcnkit.convert import sliding_window
from fcnkit.reporting.faces import FaceScore, RNet, astronaut, load_rnet

skimage_data = pytest.importorskip("skimage.data")

# The astronaut's face in the full 512x512 photo (eyebrows to chin, ear to ear), read off the picture.
FACE_ROWS, FACE_COLS = (60, 180), (165, 280)


def _in_face(row: float, col: float) -> bool:
    return FACE_ROWS[0] <= row <= FACE_ROWS[1] and FACE_COLS[0] <= col <= FACE_COLS[1]


def _nchw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1)[None]


# ---- P-Net: fully convolutional as published ------------------------------------------------------------------


@pytest.mark.parametrize("photo, crop", [("astronaut", (301, 257)), ("coffee", (211, 333)), ("chelsea", (157, 299))])
def test_pnet_tiled_equals_whole_on_real_photos_at_odd_sizes(mtcnn, photo, crop):
    net = FaceScore(mtcnn("pnet"))
    geometry = fcnkit.analyze(net)
    assert geometry.local and (geometry.receptive_field, geometry.output_stride) == (12, 2)
    image = getattr(skimage_data, photo)()[:crop[0], :crop[1]]
    whole = fcnkit.predict(net, image)
    tiled = fcnkit.predict_tiled(net, image, tile=48)
    with torch.no_grad():
        direct = net(_nchw(image))[0].permute(1, 2, 0).numpy()  # ceil_mode: one more row/column at odd sides
    assert whole.shape == tiled.shape == direct.shape
    # P-Net runs on any size, so predict does not zero-pad an odd side to its input multiple (2): the last
    # row/column's partial ceil_mode window sees what P-Net run on the crop sees (padding changed it by up to 0.43)
    np.testing.assert_allclose(whole, direct, rtol=0, atol=1e-5)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)
    assert (tiled.argmax(2) == whole.argmax(2)).all()


def test_pnet_as_onnx_is_probed_to_its_traced_geometry_and_tiles_exactly(mtcnn, tmp_path):
    """An ONNX model cannot be traced, so its geometry is probed; P-Net's unpadded convolutions read only after each
    output pixel's block, which the probe used to count on both sides (receptive field 22 instead of 12: more halo
    than needed, and a valid-padding output size of (H - 22)//2 + 1, ten rows short); and with no shape-only run of an
    ONNX graph, its output size comes from one small real run, which sees the ceil_mode partial window."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fcnkit.export import export_onnx
    from fcnkit.loading import load_model

    net = FaceScore(mtcnn("pnet"))
    export_onnx(net, tmp_path / "pnet.onnx", sample_size=(64, 64))
    onnx = load_model(tmp_path / "pnet.onnx")
    geometry = fcnkit.analyze(onnx)
    assert geometry.method == "probed" and geometry == fcnkit.analyze(net)
    for cols in (118, 117):  # an odd side: P-Net's ceil_mode pooling adds a partial window
        image = skimage_data.astronaut()[:128, :cols]
        whole = fcnkit.predict(onnx, image)
        with torch.no_grad():
            direct = net(_nchw(image))[0].permute(1, 2, 0).numpy()
        assert whole.shape == direct.shape == (59, 54, 2)
        np.testing.assert_allclose(whole, direct, rtol=0, atol=1e-4)  # the partial window too (see the test above)
        np.testing.assert_allclose(fcnkit.predict_tiled(onnx, image, tile=48), whole, rtol=0, atol=1e-4)


def test_pnet_sees_the_astronauts_face(mtcnn):
    net = FaceScore(mtcnn("pnet"))
    image = astronaut(12 / 110)  # the face becomes about one 12-pixel window
    face = fcnkit.predict(net, image)[:, :, 1]
    i, j = np.unravel_index(face.argmax(), face.shape)
    scale = image.shape[0] / 512
    assert face.max() > 0.9 and _in_face((2 * i + 6) / scale, (2 * j + 6) / scale)


# ---- R-Net and O-Net: classifiers whose forward permutes before the flatten -------------------------------------


@pytest.mark.parametrize("name, window, grid_stride, exact", [("rnet", 24, 4, 25), ("onet", 48, 8, 49)])
def test_classifier_is_convolutionalized_exactly_at_its_input_size(mtcnn, name, window, grid_stride, exact):
    classifier = FaceScore(mtcnn(name))
    with pytest.warns(UserWarning, match="pool1"):  # ceil_mode: its last window is partial at this input size
        fcn = fcnkit.convolutionalize(classifier, input_size=(window, window))
    assert tuple(fcn.stride) == (grid_stride, grid_stride)
    assert tuple(fcn.exact_window) == (exact, exact)  # the crop size at which the one-pass FCN is the classifier
    x = torch.rand(3, 3, window, window, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        np.testing.assert_allclose(fcn(x)[:, :, 0, 0].numpy(), classifier(x).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, window, scale", [("rnet", 24, 0.25), ("onet", 48, 0.45)])
def test_face_map_peaks_on_the_astronauts_face(mtcnn, name, window, scale):
    classifier = FaceScore(mtcnn(name))
    with pytest.warns(UserWarning):
        fcn = fcnkit.convolutionalize(classifier, input_size=(window, window)).eval()
    image = astronaut(scale)
    with torch.no_grad():
        face = fcn(_nchw(image))[0, 1].numpy()
    i, j = np.unravel_index(face.argmax(), face.shape)
    centre = ((fcn.stride[0] * i + window / 2) / scale, (fcn.stride[1] * j + window / 2) / scale)
    assert face.max() > 0.99 and _in_face(*centre), centre
    # ...and nowhere far from it: every window scoring above 0.9 lies on or next to the face
    rows, cols = np.nonzero(face > 0.9)
    assert all(_in_face((fcn.stride[0] * r + window / 2) / scale, (fcn.stride[1] * c + window / 2) / scale)
               for r, c in zip(rows, cols))


def test_rnet_fcn_equals_the_sliding_classifier_on_windows_one_pixel_larger(mtcnn):
    """ceil_mode pooling: on 24x24 crops pool1's last window is partial, inside the photo it sees real pixels.
    On 25x25 crops the partial window never happens, and the one-pass FCN is the sliding classifier exactly."""
    classifier = FaceScore(mtcnn("rnet"))
    with pytest.warns(UserWarning):
        fcn = fcnkit.convolutionalize(classifier, input_size=(24, 24)).eval()
    x = _nchw(astronaut(0.25)[:60, 30:90])
    with torch.no_grad():
        grid = fcn(x)
        at_24 = sliding_window(classifier, x, window=24, stride=4)
        at_25 = sliding_window(classifier, x, window=25, stride=4)  # R-Net takes 25x25 too (same 3x3 map)
    assert (grid - at_24).abs().max() > 1e-3  # the documented, warned-about difference is real
    np.testing.assert_allclose(grid[..., :at_25.shape[2], :at_25.shape[3]].numpy(), at_25.numpy(), atol=1e-5)


# ---- LFW face / non-face patches: a real classification set ----------------------------------------------------


def _lfw() -> tuple[torch.Tensor, np.ndarray]:
    patches = skimage_data.lfw_subset()  # (200, 25, 25) grey in [0, 1]: 100 faces, then 100 non-faces
    x = torch.from_numpy(patches).float()[:, None].expand(-1, 3, -1, -1) * 255
    return x, np.r_[np.ones(100, bool), np.zeros(100, bool)]


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random face outscores a random non-face (ties count half)."""
    diff = scores[positive][:, None] - scores[~positive][None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_rnet_separates_lfw_faces_from_non_faces(mtcnn):
    x, is_face = _lfw()
    with torch.no_grad():
        p = FaceScore(mtcnn("rnet"))(x[:, :, :24, :24])[:, 1].numpy()  # the top-left 24x24 of each patch
    # Measured: AUC 1.000, accuracy 1.000 at p > 0.5 (centre crops give the same).
    assert _auc(p, is_face) > 0.99
    assert ((p > 0.5) == is_face).mean() >= 0.97


def test_convolutionalized_rnet_scores_whole_lfw_patches(mtcnn):
    """A 25x25 patch holds (25 - 24) // 4 + 1 = 1 window of the one-pass FCN: it scores each patch once."""
    x, is_face = _lfw()
    classifier = FaceScore(mtcnn("rnet"))
    with pytest.warns(UserWarning):
        fcn = fcnkit.convolutionalize(classifier, input_size=(24, 24)).eval()
    with torch.no_grad():
        grid = fcn(x)
    assert grid.shape == (200, 2, 1, 1)
    p = grid[:, 1, 0, 0].numpy()
    assert _auc(p, is_face) > 0.99 and ((p > 0.5) == is_face).mean() >= 0.97


# ---- the demo's own R-Net is facenet-pytorch's --------------------------------------------------------------------


def test_demo_rnet_equals_facenet_pytorch_rnet(mtcnn):
    ours = load_rnet()
    assert isinstance(ours.net, RNet)
    theirs = FaceScore(mtcnn("rnet"))
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
