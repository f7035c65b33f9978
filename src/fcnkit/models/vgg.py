"""VGG16 (Simonyan & Zisserman 2015) as the FCN backbone, with torchvision's state-dict layout.

``features`` and ``classifier`` have the same module indices as ``torchvision.models.vgg16``, so that the keys
``features.N.weight`` and ``classifier.0/3.*`` of a torchvision weight file match; fc6 and fc7 are convolutions
here (7x7 and 1x1), and :func:`load_vgg16_weights` reshapes the fully connected weights into them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from fcnkit.errors import CheckpointError, ModelError
from fcnkit.layers import he_init_
from fcnkit.models.registry import scaled

# Convolutions per block and their channels; "M" is a 2x2 max-pool (torchvision's configuration "D").
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
FC_CHANNELS = 4096


def vgg16_features(in_channels: int = 3, width: float = 1.0, batch_norm: bool = False) -> nn.Sequential:
    """VGG16's 13 padded 3x3 convolutions and 5 max-pools: (N, C, H, W) -> (N, 512w, H/32, W/32).

    ``batch_norm``: BatchNorm after every convolution, torchvision's ``vgg16_bn`` layout (which trains from scratch
    in far fewer steps; its layer indices differ, see :func:`vgg16_pool_indices`).
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        else:
            out = scaled(item, width)
            layers += [nn.Conv2d(channels, out, 3, padding=1),
                       *([nn.BatchNorm2d(out)] if batch_norm else []), nn.ReLU(inplace=True)]
            channels = out
    return he_init_(nn.Sequential(*layers))


def vgg16_pool_indices(batch_norm: bool = False) -> dict[str, int]:
    """Indices in ``features`` of pool3, pool4 and pool5 (outputs at strides 8, 16, 32; :data:`POOL_INDICES`
    without BatchNorm)."""
    indices, index, pools = {}, -1, 0
    for item in VGG16_CONFIG:
        index += 1 if item == "M" else (3 if batch_norm else 2)
        if item == "M":
            pools += 1
            if pools >= 3:
                indices[f"pool{pools}"] = index
    return indices


POOL_INDICES = vgg16_pool_indices()  # torchvision's vgg16: {'pool3': 16, 'pool4': 23, 'pool5': 30}


def vgg16_fc_convs(width: float = 1.0) -> nn.Sequential:
    """fc6 as a 7x7 convolution (padding 3, so the size is kept) and fc7 as 1x1, each with ReLU and dropout.

    Indices 0 and 3 match torchvision's ``classifier.0`` (fc6) and ``classifier.3`` (fc7).
    Shapes: (N, 512w, h, w) -> (N, 4096w, h, w).
    """
    pool5, fc = scaled(512, width), scaled(FC_CHANNELS, width)
    return he_init_(nn.Sequential(
        nn.Conv2d(pool5, fc, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout(),
    ))


def _vgg16_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of ``model`` that a VGG16 weight file fills, by torchvision key."""
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if not isinstance(features, nn.Sequential) or not isinstance(classifier, nn.Sequential) or len(features) != 31:
        with_bn = " with batch_norm=True" if getattr(model, "batch_norm", False) else ""
        raise ModelError(f"load_vgg16_weights: expected a model with VGG16 'features' (31 layers, no BatchNorm) "
                         f"and 'classifier' (fc6/fc7 convolutions) such as build_model('fcn8s', ...), got "
                         f"{type(model).__name__}{with_bn}; ImageNet VGG16 weights fit batch_norm=False.")
    targets = {}
    for index, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            targets[f"features.{index}.weight"] = layer.weight
            targets[f"features.{index}.bias"] = layer.bias
    for index in (0, 3):
        targets[f"classifier.{index}.weight"] = classifier[index].weight
        targets[f"classifier.{index}.bias"] = classifier[index].bias
    return targets


def load_vgg16_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy a torchvision-layout VGG16 state dict (a ``.pt`` file on disk) into an FCN's backbone.

    fc6 ``(4096, 25088)`` becomes ``(4096, 512, 7, 7)`` and fc7 ``(4096, 4096)`` becomes ``(4096, 4096, 1, 1)``.
    Every key and shape is checked before anything is copied, so a bad file leaves the model untouched. Keys the
    FCN has no use for (``classifier.6``, the ImageNet scores) are ignored. The file is read with
    ``weights_only=True``; nothing is downloaded.
    """
    path = Path(path)
    targets = _vgg16_targets(model)
    if not path.is_file():
        raise CheckpointError(f"VGG16 weights {str(path)!r}: file not found; give the path of a torchvision "
                              "vgg16 state dict saved with torch.save(model.state_dict(), path).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or unsafe file: torch raises several types
        raise CheckpointError(f"VGG16 weights {str(path)!r}: cannot be read as a weights-only torch file "
                              f"({type(error).__name__}: {error}); save it with torch.save(state_dict, path)."
                              ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"VGG16 weights {str(path)!r}: expected a state dict (a dict of tensors), "
                              f"got {type(state).__name__}.")
    sources = {}
    for key, target in targets.items():
        if key not in state:
            raise CheckpointError(f"VGG16 weights {str(path)!r}: missing key {key!r} (expected torchvision's vgg16 "
                                  f"layout, found keys such as {sorted(map(str, state))[:4]}); a vgg16_bn file does not fit.")
        source = state[key]
        if not isinstance(source, torch.Tensor):
            raise CheckpointError(f"VGG16 weights {str(path)!r}: key {key!r} is {type(source).__name__}, "
                                  "expected a tensor.")
        out_channels, fan_in = target.shape[0], target[0].numel()
        if target.dim() == 4 and source.shape == (out_channels, fan_in):
            # fully connected -> convolution: torchvision flattens (C, 7, 7) in that order, so a reshape is exact
            source = source.reshape(target.shape)
        if source.shape != target.shape:
            raise CheckpointError(f"VGG16 weights {str(path)!r}: key {key!r} has shape {tuple(state[key].shape)}, "
                                  f"the model expects {tuple(target.shape)}; build the model with width=1.0 and "
                                  "in_channels=3 to load ImageNet VGG16 weights.")
        sources[key] = source
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(sources[key])
