"""Inference on images of any size: whole-image, tiled (exact, bounded memory, resumable) and on a dask cluster.

:mod:`~fcnkit.inference.tiled` holds the public entry points, :mod:`~fcnkit.inference.plan` the one tile plan that
every path follows, :mod:`~fcnkit.inference.runner` the loop that reads, runs and writes tiles,
:mod:`~fcnkit.inference.model` the inference copy of a model (BatchNorm folded, fp32 or bf16), and
:mod:`~fcnkit.inference.dask` the cluster path (optional: needs dask and distributed). docs/design.md states the
exact-tiling rule.
"""

from fcnkit.inference.model import InferenceModel, prepare
from fcnkit.inference.tiled import TilePlan, plan_prediction, predict, predict_tiled

__all__ = ["InferenceModel", "TilePlan", "plan_prediction", "predict", "predict_tiled", "prepare"]
