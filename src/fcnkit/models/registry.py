"""The model registry: ``@register_model`` on small builder functions, ``build_model(name, ...)`` to call them.

A builder is ``def name(*, num_classes, in_channels=3, <options with defaults>) -> nn.Module``; its keyword
parameters are the model's options, so ``build_model`` can reject a misspelt option by name. The registry is only
written by the decorator at import time.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from fcnkit.errors import ModelError

Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {}
_OUTPUT_KINDS = ("dense", "grid", "classifier")


def register_model(builder: Builder) -> Builder:
    """Register ``builder`` under its function name; a second model with the same name raises ``ModelError``."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ModelError(f"register_model: a model named {name!r} is registered already "
                         f"(by {_BUILDERS[name].__module__}); give the new builder another name.")
    params = inspect.signature(builder).parameters
    if "num_classes" not in params or "in_channels" not in params:
        raise ModelError(f"register_model: builder {name!r} must take keyword arguments num_classes and "
                         f"in_channels, got ({', '.join(params)}).")
    _BUILDERS[name] = builder
    return builder


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_BUILDERS)


def model_options(name: str) -> dict[str, Any]:
    """The options of model ``name`` (beyond num_classes and in_channels) with their defaults."""
    builder = _get_builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.name not in ("num_classes", "in_channels")}


def _get_builder(name: str) -> Builder:
    if name not in _BUILDERS:
        close = difflib.get_close_matches(str(name), _BUILDERS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelError(f"model name: unknown model {name!r}; {hint}expected one of: {', '.join(list_models())}.")
    return _BUILDERS[name]


def _check_count(value: Any, argument: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{argument}: expected an integer >= 1, got {value!r}.")


def build_model(name: str, *, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build the registered model ``name``.

    Returns an ``nn.Module`` taking raw 0-255 images (N, in_channels, H, W) with attributes ``output_kind``
    (``"dense"``, ``"grid"`` or ``"classifier"``) and ``fcnkit_spec`` (the JSON-able arguments that rebuild it:
    ``build_model(**model.fcnkit_spec)``).

    >>> from fcnkit.models import build_model  # importing the package registers every model
    >>> build_model("unet", num_classes=2, width=0.125).output_kind
    'dense'
    """
    builder = _get_builder(name)
    _check_count(num_classes, "num_classes")
    _check_count(in_channels, "in_channels")
    defaults = model_options(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ModelError(f"model {name!r}: unknown option {unknown[0]!r}; "
                         f"expected options: {', '.join(defaults) or '(none)'}.")
    if options.get("width") is not None:  # None: a model whose width comes from elsewhere (a transfer backbone)
        check_width(options["width"])
    resolved = {**defaults, **options}
    try:
        json.dumps(resolved)
    except TypeError as error:
        raise ModelError(f"model {name!r}: options must be plain JSON values (numbers, strings, lists), "
                         f"got {resolved!r}.") from error
    model = builder(num_classes=num_classes, in_channels=in_channels, **options)
    if getattr(model, "output_kind", None) not in _OUTPUT_KINDS:
        raise ModelError(f"model {name!r}: builder returned a model without output_kind in {_OUTPUT_KINDS}.")
    model.fcnkit_spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels, "options": resolved}
    return model


def check_width(width: Any) -> None:
    """Raise ``ModelError`` unless ``width`` is a positive number (the channel multiplier)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ModelError(f"option width: expected a positive channel multiplier such as 1.0 or 0.25, got {width!r}.")


def scaled(channels: int, width: float) -> int:
    """``channels`` times the ``width`` multiplier, rounded, at least 1."""
    check_width(width)
    return max(1, round(channels * width))
