"""fcnkit's model zoo: ``build_model(name, *, num_classes, in_channels=3, **options)`` and ``list_models()``.

Importing this package imports every model family, which registers its builders.
"""

from __future__ import annotations

from fcnkit.models import classifiers, encoder_decoder, fcn, segnet, transfer, unet  # noqa: F401  (registration)
from fcnkit.models.registry import build_model, list_models, model_options, register_model
from fcnkit.models.transfer import fcn_on
from fcnkit.models.vgg import load_vgg16_weights

__all__ = ["build_model", "fcn_on", "list_models", "load_vgg16_weights", "model_options", "register_model"]
