"""Training on patches with per-pixel cross-entropy, evaluation with the FCN metrics, and data-parallel runs.

:mod:`~fcnkit.training.loop` runs the steps, :mod:`~fcnkit.training.setup` builds data, optimiser and
initialisation, :mod:`~fcnkit.training.evaluate` scores models and checkpoints, and :mod:`~fcnkit.training.ddp`
wraps torch.distributed.
"""

from fcnkit.training.evaluate import evaluate_checkpoint
from fcnkit.training.loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "evaluate_checkpoint", "train"]
