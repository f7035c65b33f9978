"""The built-in digit scenes: real handwritten digits placed on a noisy, colourful, textured background.

The digits are scikit-learn's bundled handwritten digits (1,797 8×8 images, shipped with the package, so nothing
is downloaded). The first 80% of them build training scenes and the last 20% validation scenes: the collection is
ordered by writer, so validation sees handwriting the model never saw. Labels: 0 = background, 1–10 = digits 0–9,
255 = the thin band of half-inked pixels at a digit's edge, which is neither digit nor background.

A scene is a pure function of ``(split, seed, index, size)``: scene ``i`` is the same on every machine and run.
Everything is vectorised, so a 256×256 scene takes a few milliseconds and a 4096×4096 one a few seconds.

Example:
    >>> image, label = make_scene((96, 128), split="val", seed=0, index=3)
    >>> image.shape, image.dtype, label.shape, int(label.max()) <= 255
    ((96, 128, 3), dtype('uint8'), (96, 128), True)
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from fcnkit.data.common import check_split, voc_palette
from fcnkit.errors import DataError

__all__ = ["CLASS_NAMES", "DigitScenes", "classification_windows", "make_scene", "parse_size"]

CLASS_NAMES = ["background", *(str(d) for d in range(10))]
TRAIN_FRACTION = 0.8
DIGIT_SIZES = (18, 32)  # side of a digit's box in pixels, before a small aspect change
DIGITS_PER_PIXEL = 1 / 700  # placement attempts per pixel of scene; about half succeed without overlap
GAP = 2  # pixels kept free between two digit boxes
_SPLIT_CODE = {"train": 0, "val": 1}
_WINDOW_STREAM = 7  # keeps classification windows' random numbers apart from the scenes'
JITTER = 1  # a digit window's centre is within JITTER px (each axis) of the digit's centre
MISS = 4.0  # a background window has no digit centre within MISS px: a heat map must peak at the digit's centre


@functools.cache
def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's digit images, ``(n, 8, 8)`` float32 ink in [0, 1], and their digits ``(n,)`` int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    cut = int(round(len(data.images) * TRAIN_FRACTION))
    part = slice(0, cut) if split == "train" else slice(cut, None)
    return (data.images[part] / 16.0).astype(np.float32), data.target[part].astype(np.int64)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    if int(seed) < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}; pass seed=0 or another integer >= 0.")
    return np.random.default_rng([int(seed), *stream])


def _smooth_field(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Random colours on a coarse grid, bicubically interpolated: ``(h, w, 3)`` int16 blobs about ``cell`` wide."""
    grid = rng.integers(0, 256, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.int16)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Large colour blobs plus a finer, weaker texture: ``(h, w, 3)`` float32 in about [0, 255]."""
    canvas = _smooth_field(rng, h, w, 48).astype(np.float32)
    canvas *= 0.7
    canvas += _smooth_field(rng, h, w, 10) * np.float32(0.3)
    return canvas


def _place(
    rng: np.random.Generator,
    h: int,
    w: int,
    targets: np.ndarray,
    *,
    first: tuple[int, int, int, int, int] | None = None,
    keep_out: tuple[float, float, float] | None = None,
) -> list[tuple[int, int, int, int, int]]:
    """Non-overlapping digit boxes ``(top, left, height, width, digit image index)`` by rejection sampling.

    ``first`` is placed before the random ones; ``keep_out = (cy, cx, r)`` forbids random boxes whose centre lies
    within ``r`` pixels of ``(cy, cx)`` (used to make background windows).
    """
    occupied = np.zeros((h + 2 * GAP, w + 2 * GAP), dtype=bool)
    boxes = []
    if first is not None:
        top, left, bh, bw, _ = first
        occupied[top : top + bh + 2 * GAP, left : left + bw + 2 * GAP] = True
        boxes.append(first)
    attempts = max(1, int(round(h * w * DIGITS_PER_PIXEL)))
    sides = rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1, attempts)
    aspects = rng.uniform(0.8, 1.15, attempts)
    corners = rng.random((attempts, 2))
    picks = rng.integers(0, len(targets), attempts)
    for side, aspect, (fy, fx), pick in zip(sides, aspects, corners, picks):
        bh, bw = int(side), max(6, int(round(side * aspect)))
        if bh > h or bw > w:
            continue
        top, left = int(fy * (h - bh + 1)), int(fx * (w - bw + 1))
        if keep_out is not None and np.hypot(top + bh / 2 - keep_out[0], left + bw / 2 - keep_out[1]) < keep_out[2]:
            continue
        window = occupied[top : top + bh + 2 * GAP, left : left + bw + 2 * GAP]
        if window.any():
            continue
        window[...] = True
        boxes.append((top, left, bh, bw, int(pick)))
    return boxes


def _render(
    rng: np.random.Generator, h: int, w: int, boxes: list[tuple[int, int, int, int, int]], split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Background, digits blended in their boxes, pixel noise: ``(h, w, 3)`` uint8 image, ``(h, w)`` uint8 label."""
    images, targets = _digits(split)
    canvas = _background(rng, h, w)
    label = np.zeros((h, w), dtype=np.uint8)
    colours = rng.integers(0, 256, (len(boxes), 3)).astype(np.float32)
    for (top, left, bh, bw, pick), colour in zip(boxes, colours):
        ink = np.asarray(Image.fromarray(images[pick], mode="F").resize((bw, bh), Image.BILINEAR))
        # Soft edges: ink 0.3 -> transparent, 0.6 -> opaque.
        alpha = np.clip((ink - 0.3) / 0.3, 0.0, 1.0)[..., None]
        region = canvas[top : top + bh, left : left + bw]
        under = region.mean(axis=(0, 1))
        if np.abs(colour - under).sum() < 200:  # too close to the background: take the opposite hue
            colour = (under + 128.0) % 256.0
        region *= 1.0 - alpha
        region += alpha * colour
        # Half-inked pixels are neither digit nor background: ignore them rather than guess.
        cell = label[top : top + bh, left : left + bw]
        cell[alpha[..., 0] >= 0.7] = targets[pick] + 1
        cell[(alpha[..., 0] > 0.3) & (alpha[..., 0] < 0.7)] = 255
    # Grey grain is cheaper than colour grain and still hides the smooth background from a pixel-level shortcut.
    canvas += rng.integers(-20, 21, (h, w, 1), dtype=np.int8)
    return np.clip(canvas, 0, 255, out=canvas).astype(np.uint8), label


def parse_size(text: str | int | tuple[int, int] | list[int], spec: str = "size") -> tuple[int, int]:
    """``"256"``, ``256``, ``"96x128"`` or ``(96, 128)`` -> ``(H, W)``; anything else raises DataError."""
    try:
        if isinstance(text, (tuple, list)):
            h, w = (int(v) for v in text)
        elif isinstance(text, str) and "x" in text.lower():
            h, w = (int(v) for v in text.lower().split("x"))
        else:
            h = w = int(text)
    except (TypeError, ValueError):
        h = w = 0
    if h < 8 or w < 8:
        raise DataError(
            f"scene size in {spec!r} must be SIZE or HxW with sides of at least 8 pixels, got {text!r}; "
            f"use for example scenes:256 or scenes:192x256."
        )
    return h, w


def make_scene(
    size: int | tuple[int, int] = 256, *, split: str = "val", seed: int = 0, index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of ``split``: ``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 label (0 background,
    1–10 digits 0–9, 255 ignore), the same for the same arguments."""
    check_split(split)
    h, w = parse_size(size)
    if int(index) < 0:
        raise DataError(f"index must be a non-negative integer, got {index}; pass index=0 or another integer >= 0.")
    rng = _rng(seed, _SPLIT_CODE[split], int(index), h, w)
    boxes = _place(rng, h, w, _digits(split)[1])
    return _render(rng, h, w, boxes, split)


# (split, (h, w), seed, index) -> (image, label), for every DigitScenes of the process; scenes are pure functions of
# their key, so sharing them changes no result.
_RENDERED: dict[tuple[str, tuple[int, int], int, int], tuple[np.ndarray, np.ndarray]] = {}
_rendered_bytes = 0


class DigitScenes:
    """``count`` digit scenes of ``size`` for ``split``; ``scenes[i]`` is ``make_scene(size, split, seed, i)``.

    Defaults: 256×256 scenes, 1,000 for training (patches are cropped from them) and 32 for validation.
    """

    num_classes = len(CLASS_NAMES)
    # Rendering a 256x256 scene takes milliseconds, as long as a training step's model work at width 0.25: scenes
    # are kept once rendered, in one cache for the whole process (a benchmark's probe run and the run after it
    # share it), up to this many bytes in all (the 1,000 default training scenes take 262 MB).
    CACHE_BYTES = 512 * 2**20
    mirror_safe = False  # handwriting is not mirror-symmetric: a mirrored 2 reads as half a 5

    def __init__(
        self, split: str = "train", *, size: int | tuple[int, int] = 256, count: int | None = None, seed: int = 0
    ) -> None:
        self.split = check_split(split)
        self.size = parse_size(size)
        self.count = int(count) if count is not None else (1000 if split == "train" else 32)
        if self.count < 1:
            raise DataError(f"scene count must be at least 1, got {count}; pass count=32 or more.")
        _rng(seed)  # validates the seed now rather than at the first scene
        self.seed = int(seed)
        self.class_names = list(CLASS_NAMES)
        self.palette = voc_palette(self.num_classes)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self.count <= index < self.count:
            raise IndexError(f"scene index {index} out of range for {self.count} scenes")
        index %= self.count
        key = (self.split, self.size, self.seed, index)
        if key in _RENDERED:  # copies: a caller may write into what it gets
            image, label = _RENDERED[key]
            return image.copy(), label.copy()
        image, label = make_scene(self.size, split=self.split, seed=self.seed, index=index)
        global _rendered_bytes
        if _rendered_bytes + image.nbytes + label.nbytes <= self.CACHE_BYTES:
            _RENDERED[key] = (image.copy(), label.copy())
            _rendered_bytes += image.nbytes + label.nbytes
        return image, label

    def digits(self, index: int) -> np.ndarray:
        """``(n, 3)`` float rows ``(cy, cx, class)``: every digit placed in scene ``index`` that has fully inked
        pixels, its centre the centre of the bounding box of all of them, as the classifier's windows are centred.
        A digit whose thin stroke breaks into pieces in the label is still one digit here."""
        label = self[index][1]
        index %= self.count
        h, w = self.size
        boxes = _place(_rng(self.seed, _SPLIT_CODE[self.split], index, h, w), h, w, _digits(self.split)[1])
        return _ink_centres(label, boxes, _digits(self.split)[1])

    def render_all(self) -> int:
        """Render every scene now (as far as the cache's budget goes), so that later reads, from this or any other
        ``DigitScenes`` of the same split, size and seed, find them; returns how many are kept."""
        for index in range(self.count):
            self[index]
        return sum((self.split, self.size, self.seed, index) in _RENDERED for index in range(self.count))

    def __repr__(self) -> str:
        return f"DigitScenes(split={self.split!r}, size={self.size}, count={self.count}, seed={self.seed})"


def _ink_centres(label: np.ndarray, boxes: list[tuple[int, int, int, int, int]], targets: np.ndarray) -> np.ndarray:
    """``(n, 3)`` float rows ``(cy, cx, class)`` of every digit in ``boxes`` with ink: the centre of the bounding box
    of its fully inked pixels (what a person, and ``heatmap_localization``, calls the digit's centre)."""
    found = []
    for top, left, bh, bw, pick in boxes:
        cls = int(targets[pick]) + 1
        rows, cols = np.nonzero(label[top : top + bh, left : left + bw] == cls)
        if len(rows):
            found.append((top + (rows.min() + rows.max()) / 2, left + (cols.min() + cols.max()) / 2, cls))
    return np.asarray(found, dtype=np.float64).reshape(-1, 3)


def _window_corners(rng: np.random.Generator, digits: np.ndarray, side: int, size: int) -> list[tuple[int, int, int]]:
    """Top-left corners and classes ``(top, left, class)`` of the ``size``-px windows to cut from a ``side``-px scene
    whose digits are ``digits`` (rows ``(cy, cx, class)``): each digit, its window shifted by up to JITTER px (plus
    half a pixel of rounding) per axis; then background, half of it near misses (a digit centre MISS to 2 * MISS px
    away) and half random spots, kept only where no digit centre lies within MISS px of the window's centre."""
    centre = (size - 1) / 2
    jitter = rng.integers(-JITTER, JITTER + 1, (len(digits), 2))
    angle, radius = rng.uniform(0, 2 * np.pi, len(digits)), rng.uniform(MISS, 2 * MISS, len(digits))
    spots = np.concatenate([digits[:, :2] + radius[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1),
                            rng.uniform(centre, side - 1 - centre, (len(digits) + 8, 2))])
    corners = [(*np.rint(digit[:2] + shift - centre).astype(int), int(digit[2]))
               for digit, shift in zip(digits, jitter)]
    for i in rng.permutation(len(spots)):
        top, left = np.rint(spots[i] - centre).astype(int)
        if not len(digits) or np.hypot(*(digits[:, :2] - (top + centre, left + centre)).T).min() >= MISS:
            corners.append((int(top), int(left), 0))
    return [(t, left, c) for t, left, c in corners if 0 <= t <= side - size and 0 <= left <= side - size]


def classification_windows(
    split: str, count: int, *, seed: int = 0, size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Windows for training a digit classifier, balanced over the 11 classes, cut from rendered scenes.

    A window of class ``d + 1`` has the centre of a digit ``d`` (of its inked pixels) within JITTER px (1, plus half
    a pixel of rounding) of its own centre, and shows the neighbouring digits of a scene at their scene density in
    part; a window of class 0 has no digit centre within MISS px (4) of its centre, and half of them are near
    misses, a digit centre 4 to 8 px away: so a convolutionalized classifier peaks where a digit is centred, not
    merely near it. Each scene gives every window it can, so a window costs a small fraction of a scene.

    Returns:
        images ``(count, size, size, 3)`` uint8 and labels ``(count,)`` int64, shuffled; a pure function of the
        arguments.
    """
    check_split(split)
    if int(count) < 1 or int(size) < 16:
        raise DataError(
            f"classification_windows needs count >= 1 and size >= 16, got count={count}, size={size}; "
            f"pass for example count=2200, size=32."
        )
    count, size = int(count), int(size)
    order = _rng(seed, _WINDOW_STREAM, _SPLIT_CODE[split])
    labels = order.permutation(np.arange(count) % len(CLASS_NAMES)).astype(np.int64)
    wanted = np.bincount(labels, minlength=len(CLASS_NAMES))
    found: list[list[np.ndarray]] = [[] for _ in CLASS_NAMES]
    targets = _digits(split)[1]
    side = 6 * size  # a scene with room for a few dozen digits
    scene = 0
    while any(len(f) < n for f, n in zip(found, wanted)):
        rng = _rng(seed, _WINDOW_STREAM, _SPLIT_CODE[split], scene)
        scene += 1
        boxes = _place(rng, side, side, targets)
        image, label = _render(rng, side, side, boxes, split)
        digits = _ink_centres(label, boxes, targets)
        for top, left, cls in _window_corners(rng, digits, side, size):
            if len(found[cls]) < wanted[cls]:
                found[cls].append(image[top : top + size, left : left + size])
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    taken = [0] * len(CLASS_NAMES)
    for i, cls in enumerate(labels):
        images[i] = found[cls][taken[cls]]
        taken[cls] += 1
    return images, labels
