"""Faces in a real photo, found in one pass by a real trained classifier that nobody here wrote.

MTCNN's refinement network R-Net (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", 2016) classifies 24×24 RGB windows as face / not a face. Its trained weights ship inside
the ``facenet-pytorch`` 2.6.0 package (MIT) as ``facenet_pytorch/data/rnet.pt``; they are read from there with
``torch.load(weights_only=True)``, the package is located but never imported (importing it imports torchvision,
which does not load with the CPU torch here). :class:`RNet` re-states facenet-pytorch's ``RNet`` layer for layer
(same names, so the file loads strictly; same forward, including its ``permute(0, 3, 2, 1)`` before the flatten);
the tests check that it equals facenet-pytorch's own class.

:func:`add_faces_section` convolutionalizes R-Net, runs it once over scikit-image's astronaut photo (scaled so the
face is about one window wide), times the sliding-window loop it replaces and adds the face map to a report.

>>> section = add_faces_section(report, out_dir)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FaceScore", "RNet", "add_faces_section", "astronaut", "load_rnet", "mtcnn_weights"]

# MTCNN's input scaling of raw RGB values (facenet-pytorch's detect_face: (x - 127.5) * 0.0078125).
MTCNN_MEAN, MTCNN_SCALE = 127.5, 0.0078125
WINDOW = (24, 24)  # R-Net's input size
FACE_SCALE = 0.25  # the astronaut's face (~110 px tall at full size) becomes about one 24-pixel window
INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"


def mtcnn_weights(name: str) -> Path | None:
    """``facenet_pytorch/data/<name>.pt`` of the installed package (``"pnet"``, ``"rnet"``, ``"onet"``), or None."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.pt"
    return path if path.is_file() else None


class RNet(nn.Module):
    """MTCNN's R-Net with facenet-pytorch's layer names: (N, 3, 24, 24) scaled RGB -> (box offsets (N, 4), face
    probabilities (N, 2)), class 1 = face."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))  # (N, 28, 22, 22)
        x = self.pool1(x)  # (N, 28, 11, 11): ceil_mode, the last window sees 2 of 3 columns
        x = self.pool2(self.prelu2(self.conv2(x)))  # (N, 48, 4, 4)
        x = self.prelu3(self.conv3(x))  # (N, 64, 3, 3)
        # The weights came from Caffe, which flattens (W, H, C); the published forward permutes to match.
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))  # (N, 128)
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class FaceScore(nn.Module):
    """An MTCNN network as an fcnkit-style model of raw RGB: (N, 3, H, W) values 0-255 -> its face-classification
    output, (N, 2) probabilities [not a face, face] (or (N, 2, H', W') for a fully convolutional one)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - MTCNN_MEAN) * MTCNN_SCALE)[-1]


def load_rnet() -> FaceScore | None:
    """R-Net with facenet-pytorch's trained weights, wrapped in :class:`FaceScore`, eval mode; None if the package
    is not installed."""
    path = mtcnn_weights("rnet")
    if path is None:
        return None
    net = RNet()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return FaceScore(net).eval()


def astronaut(scale: float = FACE_SCALE) -> np.ndarray:
    """scikit-image's astronaut photo (Eileen Collins, NASA, public domain), resized by ``scale``: (H, W, 3) uint8."""
    from PIL import Image
    from skimage import data

    photo = data.astronaut()
    size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def _box(image: np.ndarray, top: int, left: int, size: tuple[int, int], colour=(255, 255, 0)) -> np.ndarray:
    """A copy of ``image`` with a 1-pixel rectangle around the window at (top, left)."""
    out = image.copy()
    bottom, right = top + size[0] - 1, left + size[1] - 1
    out[top, left:right + 1] = out[bottom, left:right + 1] = colour
    out[top:bottom + 1, left] = out[top:bottom + 1, right] = colour
    return out


def add_faces_section(report: Any, out_dir: str | Path, *, log: Callable[[str], None] = print,
                      scale: float = FACE_SCALE) -> dict | None:
    """Faces in one pass over a real photo: add the face map, the speed-up and the exactness note to ``report``.

    Returns what was measured (``fcn_seconds``, ``sliding_seconds``, ``speedup``, ``max_diff`` (FCN vs the loop),
    ``peak`` (row, col of the best window's centre in the full-size photo), ``picture``), or None when
    facenet-pytorch or scikit-image is missing: then the report and the log say so and how to install them.
    """
    from fcnkit.convert import convolutionalize, sliding_window
    from fcnkit.reporting.pictures import heatmap_panels

    title = "Faces in a real photo, one pass of a real classifier"
    model = load_rnet()
    missing = [] if model is not None else [f"facenet-pytorch (`{INSTALL}`)"]
    if importlib.util.find_spec("skimage") is None:
        missing.append("scikit-image (`pip install scikit-image`)")
    if missing:
        note = (f"skipped: this section needs {' and '.join(missing)}, which ship the trained MTCNN weights and "
                f"the photo; install them to see it.")
        log(f"      faces: {note}")
        report.add_text(title, note)
        return None
    image = astronaut(scale)
    with warnings.catch_warnings(record=True) as caught:  # e.g. a ceil_mode pooling's partial window
        warnings.simplefilter("always")
        fcn = convolutionalize(model, input_size=WINDOW).eval()
    notes = sorted({str(w.message) for w in caught})
    window, stride = tuple(fcn.window), tuple(fcn.stride)
    x = torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    with torch.inference_mode():
        fcn(x)  # warm-up: one-off allocations and kernel choices for this shape
        fcn_seconds = math.inf
        for _ in range(3):  # the best of three: one pass is short enough for another job's burst to dominate it
            started = time.perf_counter()
            probs = fcn(x)[0]  # (2, H', W')
            fcn_seconds = min(fcn_seconds, time.perf_counter() - started)
        sliding_window(model, x[:, :, :window[0]], window=window, stride=stride)  # warm-up
        started = time.perf_counter()
        reference = sliding_window(model, x, window=window, stride=stride)[0]
        sliding_seconds = time.perf_counter() - started
    max_diff = float((probs - reference).abs().max())
    face = probs[1].numpy()
    i, j = np.unravel_index(int(face.argmax()), face.shape)
    top, left = int(i) * stride[0], int(j) * stride[1]
    peak = ((top + window[0] / 2) / scale, (left + window[1] / 2) / scale)
    picture = heatmap_panels(Path(out_dir) / "pictures" / "faces.png", _box(image, top, left, window),
                             probs.numpy(), window=window, stride=stride, class_names=["not a face", "face"],
                             classes=[1], columns=2)
    windows = face.size
    log(f"      faces: R-Net over a {image.shape[0]}x{image.shape[1]} photo, {windows:,} windows: one pass "
        f"{fcn_seconds * 1e3:.1f} ms, sliding loop {sliding_seconds * 1e3:.0f} ms "
        f"({sliding_seconds / fcn_seconds:.0f}x); best window p(face) {face.max():.3f}")
    report.add_image(title, picture,
                     f"MTCNN's R-Net (trained weights from facenet-pytorch 2.6.0), convolutionalized at its 24×24 "
                     f"input, run once over scikit-image's astronaut photo scaled by {scale} "
                     f"({image.shape[0]}×{image.shape[1]}, {windows:,} windows at stride {stride[0]}); the yellow "
                     f"box is the most face-like window.")
    report.add_key_values("Faces: one pass vs sliding the window", {
        "photo": f"skimage.data.astronaut() × {scale} = {image.shape[0]}×{image.shape[1]}",
        "classifier": "MTCNN R-Net, 24×24 windows (facenet-pytorch 2.6.0 weights)",
        "windows": windows, "one FCN pass (ms, best of 3)": round(fcn_seconds * 1e3, 2),
        "sliding-window loop (ms)": round(sliding_seconds * 1e3, 1),
        "speed-up": f"{sliding_seconds / fcn_seconds:.1f}×",
        "most face-like window, centre in the full-size photo (row, col)": f"{peak[0]:.0f}, {peak[1]:.0f}",
        "its face probability": round(float(face.max()), 4),
        "max |FCN − sliding loop| (face probability)": f"{max_diff:.3f}",
        "why they differ": " ".join(notes) or "they do not",
    })
    return {"fcn_seconds": fcn_seconds, "sliding_seconds": sliding_seconds,
            "speedup": sliding_seconds / fcn_seconds, "max_diff": max_diff, "peak": peak,
            "face_probability": float(face.max()), "picture": picture, "warnings": notes}
