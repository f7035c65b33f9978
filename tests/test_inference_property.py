"""Property: for any image size, tile size and local model, tiled inference equals the whole-image run."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tiling_models import assert_tiled_equals_whole, foreign_models


MODELS = foreign_models()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(sorted(MODELS)),
    height=st.integers(9, 48),
    width=st.integers(9, 48),
    tile=st.one_of(st.integers(1, 48), st.tuples(st.integers(1, 48), st.integers(1, 48))),
    output=st.sampled_from(["logits", "probs", "labels"]),
    seed=st.integers(0, 2**16),
)
def test_tiled_equals_whole(name, height, width, tile, output, seed):
    model = MODELS[name]
    image = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32) * 255
    assert_tiled_equals_whole(model, image, tile=tile, output=output)
