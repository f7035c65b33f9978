"""Segmentation FCNs built on a trained classifier: the FCN paper's own method (Long et al. 2015, sections 3-4).

The paper adapts a classification net into a segmentation net: convolutionalize it (its fully connected layers
become convolutions, so it scores every window of an image in one pass), take its trunk as the encoder, score each
position with a 1x1 convolution, and up-sample the coarse scores to pixels with transposed convolutions that start
as bilinear interpolation. Skips (FCN-16s, FCN-8s) fuse scores of finer feature maps, zero-initialised so training
starts from the coarser net. Then the whole net is fine-tuned on patches.

``fcn_on(classifier, num_classes=K, skips=2)`` does this for any classifier :func:`fcnkit.convolutionalize`
accepts (or an already convolutionalized one). Where the classifier's feature maps sit relative to the image
(stride, the centre of cell 0, receptive field) is computed from its layers, so the skips and the final crop are
aligned by geometry, never by hand-tuned offsets. The image is zero-padded by a fixed amount at the top/left (so
every pixel is the centre of a window) and bottom/right up to a multiple of the total stride plus a margin, so the
model takes any size and stays exactly tileable.

The registered builders ``fcn32s_on``, ``fcn16s_on`` and ``fcn8s_on`` build the architecture from a backbone spec
(a model name or an ``fcnkit_spec`` dict) so a checkpoint rebuilds it without the backbone's file; ``fcnkit train
--model fcn8s_on --backbone CLASSIFIER.pt`` starts from the trained classifier's weights.

>>> clf = build_model("digit_classifier", num_classes=11, width=0.25)
>>> seg = fcn_on(clf, num_classes=11, skips=2)
>>> seg(torch.zeros(1, 3, 37, 50)).shape
torch.Size([1, 11, 37, 50])
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fcnkit.errors import ModelError
from fcnkit.layers import Normalize, bilinear_deconv, check_nchw, score_conv, takes_0_255
from fcnkit.models.registry import build_model, register_model

__all__ = ["TRANSFER_MODELS", "TransferFCN", "fcn_on"]

TRANSFER_MODELS = {"fcn32s_on": 0, "fcn16s_on": 1, "fcn8s_on": 2}  # name -> number of skips
_SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax"}
_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)

Pair = tuple[float, float]


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore[return-value]


def _place_after(layer: nn.Module, stride: Pair, offset: Pair, field: Pair) -> tuple[Pair, Pair, Pair]:
    """(stride, centre of cell 0, receptive field) per axis after a convolution or pooling ``layer``.

    Output cell j of a layer with kernel k, stride st, padding p, dilation d covers input cells st*j - p + [0, d(k-1)],
    so its centre moves by d(k-1)/2 - p input cells, and its field grows by d(k-1) input cells.
    """
    kernel, step = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
    padding = _pair(layer.padding) if not isinstance(layer.padding, str) else None
    if padding is None:  # "same" or "valid" strings of Conv2d
        padding = tuple((d * (k - 1)) // 2 for k, d in zip(kernel, _pair(layer.dilation))) \
            if layer.padding == "same" else (0, 0)
    dilation = _pair(getattr(layer, "dilation", 1))
    new = [((s * st), o + s * (d * (k - 1) / 2 - p), f + s * d * (k - 1))
           for s, o, f, k, st, p, d in zip(stride, offset, field, kernel, step, padding, dilation)]
    return tuple(n[0] for n in new), tuple(n[1] for n in new), tuple(n[2] for n in new)  # type: ignore[return-value]


def _places(gm: fx.GraphModule, probe: torch.Tensor) -> dict[fx.Node, tuple[Pair, Pair, Pair, tuple[int, ...]]]:
    """Every node's (stride, offset, field, shape) for the image-shaped input ``probe``."""
    with torch.no_grad():
        ShapeProp(gm).propagate(probe)
    places: dict[fx.Node, tuple[Pair, Pair, Pair, tuple[int, ...]]] = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        shape = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()
        if node.op == "placeholder":
            places[node] = ((1, 1), (0.0, 0.0), (1, 1), shape)
            continue
        sources = [a for a in node.all_input_nodes if a in places and len(places[a][3]) == 4]
        if node.op == "output" or not sources or len(shape) != 4:
            continue
        stride, offset, field, before = places[sources[0]]
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, _WINDOWED):
            stride, offset, field = _place_after(module, stride, offset, field)
        elif shape[2:] != before[2:]:
            raise ModelError(f"fcn_on: node '{node.name}' changes the feature map from {before[2:]} to {shape[2:]} "
                             f"in a way fcn_on cannot place (only Conv2d, MaxPool2d and AvgPool2d modules may); "
                             f"build the segmentation net by hand.")
        places[node] = (stride, offset, field, shape)
    return places


def _score_node(gm: fx.GraphModule) -> fx.Node:
    """The final 1x1 convolution (the classifier's last Linear), below any softmax at the output."""
    node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    while isinstance(node, fx.Node) and (node.target in _SOFTMAX or (
            node.op == "call_module" and isinstance(gm.get_submodule(node.target), (nn.Softmax, nn.LogSoftmax)))):
        node = node.all_input_nodes[0]
    module = gm.get_submodule(node.target) if isinstance(node, fx.Node) and node.op == "call_module" else None
    if not (isinstance(module, nn.Conv2d) and _pair(module.kernel_size) == (1, 1)):
        found = (f"a {_pair(module.kernel_size)} convolution (a single Linear layer on the flattened features)"
                 if isinstance(module, nn.Conv2d) else f"'{getattr(node, 'name', node)}'")
        raise ModelError(f"fcn_on: expected a classifier whose last Linear layer maps hidden features to class "
                         f"scores (a 1x1 convolution once convolutionalized), found {found}; give it a hidden Linear "
                         f"layer, or build the segmentation net by hand.")
    return node


class TransferFCN(nn.Module):
    """A convolutionalized classifier's trunk, a 1x1 score layer, skips and bilinear up-sampling (see module doc).

    Shapes: (N, in_channels, H, W) raw 0-255 -> (N, num_classes, H, W) logits, for any H, W >= 1.
    """

    output_kind = "dense"

    def __init__(self, convolutionalized: nn.Module, *, num_classes: int, skips: int) -> None:
        super().__init__()
        body = copy.deepcopy(convolutionalized.body)
        self.in_channels = convolutionalized.in_channels
        window = convolutionalized.window
        score = _score_node(body)
        trunk_end = score.all_input_nodes[0]
        probe_side = [w + 8 * s for w, s in zip(window, convolutionalized.stride)]
        places = _places(body, torch.zeros(1, self.in_channels, *probe_side))
        final_stride, final_offset, final_field, final_shape = places[trunk_end]
        taps = self._choose_taps(body, places, final_stride, skips)
        old_score = body.get_submodule(score.target)

        # The trunk: the body up to the score layer, returning the skip taps too; its Normalize is hoisted out so
        # that the image is zero-padded before normalisation, as every fcnkit model pads.
        self.normalize = self._hoist_normalize(body)
        # whether the image goes in as 0-255 values, as the classifier took it (its traced graph says it no more)
        self.fcnkit_takes_0_255 = takes_0_255(convolutionalized)
        output = next(n for n in body.graph.nodes if n.op == "output")
        output.args = (tuple([*taps, trunk_end]),)
        body.graph.eliminate_dead_code()
        body.delete_all_unused_submodules()
        body.recompile()
        self.trunk = body

        self.score_fr = score_conv(final_shape[1], num_classes)
        if old_score.out_channels == num_classes:  # the classifier's own class scores: keep them
            self.score_fr.load_state_dict(old_score.state_dict())
        self.score_skips = nn.ModuleList()
        self.upscores = nn.ModuleList()
        self.crops: list[tuple[tuple[int, int], tuple[int, int]]] = []  # (running, skip) rows/cols to drop
        self.skip_strides: list[int] = []
        stride, offset = final_stride, final_offset
        for tap in taps:
            tap_stride, tap_offset, _, tap_shape = places[tap]
            ratio = [s / t for s, t in zip(stride, tap_stride)]
            if ratio[0] != ratio[1] or ratio[0] != int(ratio[0]):
                raise ModelError(f"fcn_on: the skip at '{tap.name}' has stride {tap_stride}, which does not divide "
                                 f"the coarser stride {stride} evenly; use fewer skips.")
            up = bilinear_deconv(num_classes, int(ratio[0]))
            moved = [o + t * (up.padding[0] - (up.kernel_size[0] - 1) / 2) for o, t in zip(offset, tap_stride)]
            shift = [round((to - m) / t) for to, m, t in zip(tap_offset, moved, tap_stride)]
            self.crops.append((tuple(max(0, d) for d in shift), tuple(max(0, -d) for d in shift)))
            offset = tuple(m + t * max(0, d) for m, t, d in zip(moved, tap_stride, shift))
            stride = tap_stride
            self.skip_strides.append(int(tap_stride[0]))
            self.upscores.append(up)
            self.score_skips.append(score_conv(tap_shape[1], num_classes, zero_init=True))
        self.upscore = bilinear_deconv(num_classes, int(stride[0]))
        final = [o + (self.upscore.padding[0] - (self.upscore.kernel_size[0] - 1) / 2) for o in offset]
        # Pad the top/left so that output pixel 0 lines up with image pixel 0, the bottom/right with a margin that
        # covers the trunk's field and every crop; pad to a multiple of the total stride to keep the pooling grid.
        self.multiple = int(final_stride[0])
        self.before = max(0, math.ceil(max(final)))
        self.start = tuple(round(self.before - f) for f in final)
        self.skips, self.window = skips, tuple(window)
        upper = max(final_field) + 2 * self.multiple * (skips + 2) + max(self.start)  # always enough
        self.margin = self._fit_margin(math.ceil(upper / self.multiple) * self.multiple)

    def _fit_margin(self, upper: int) -> int:
        """The smallest bottom/right margin (a multiple of the stride) that gives every size its whole output.

        Every padded size is a multiple of the stride, so what a size needs and what it gets both grow by one cell
        per stride: sizes 1 .. 2 strides + 1 show every case. Patches then cost no more than they must.
        """
        was_training = self.training
        self.eval()  # BatchNorm in training mode refuses the 1x1 maps of the smallest probes
        try:
            for margin in range(0, upper, self.multiple):
                self.margin = margin
                try:
                    with torch.no_grad():
                        if all(self(torch.zeros(1, self.in_channels, n, n)).shape[-2:] == (n, n)
                               for n in range(1, 2 * self.multiple + 2)):
                            return margin
                except RuntimeError:  # maps too short to add up: a larger margin
                    continue
            return upper
        finally:
            self.train(was_training)

    @staticmethod
    def _choose_taps(body: fx.GraphModule, places: dict, final_stride: Pair, skips: int) -> list[fx.Node]:
        """The last node of each finer stride, coarsest first: the FCN-16s/8s skips (pool4, pool3 in VGG)."""
        last: dict[Pair, fx.Node] = {}
        for node, (stride, *_rest) in places.items():
            if node.op != "placeholder" and stride[0] < final_stride[0]:
                last[stride] = node
        strides = sorted(last, reverse=True)
        if skips > len(strides):
            raise ModelError(f"fcn_on: skips={skips} needs {skips} feature maps finer than the final stride "
                             f"{final_stride[0]}, the classifier has {len(strides)} ({strides}); use skips <= "
                             f"{len(strides)}.")
        return [last[s] for s in strides[:skips]]

    def _hoist_normalize(self, body: fx.GraphModule) -> nn.Module:
        placeholder = next(n for n in body.graph.nodes if n.op == "placeholder")
        users = list(placeholder.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
                body.get_submodule(users[0].target), Normalize):
            node = users[0]
            module = body.get_submodule(node.target)
            node.replace_all_uses_with(placeholder)
            body.graph.erase_node(node)
            return module
        return Normalize([0.0] * self.in_channels, [1.0] * self.in_channels)  # a foreign net takes values as given

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels)
        h, w = x.shape[-2:]
        x = F.pad(x, (self.before, (-(w + self.before)) % self.multiple + self.margin,
                      self.before, (-(h + self.before)) % self.multiple + self.margin))
        x = self.normalize(x)  # (N, C, Hp, Wp)
        *taps, features = self.trunk(x)  # taps coarsest first; features (N, F, ~Hp/s, ~Wp/s)
        score = self.score_fr(features)  # (N, K, ~Hp/s, ~Wp/s)
        for tap, up, score_skip, t, ((ry, rx), (ty, tx)) in zip(taps, self.upscores, self.score_skips,
                                                               self.skip_strides, self.crops):
            # Both maps reach past the output (the bottom/right margin): keep, in register, the cells it uses.
            rows, cols = (self.start[0] + h) // t + 2, (self.start[1] + w) // t + 2
            score = up(score)  # (N, K, ~Hp/t, ~Wp/t)
            score = score[:, :, ry:ry + rows, rx:rx + cols] + score_skip(tap)[:, :, ty:ty + rows, tx:tx + cols]
        score = self.upscore(score)  # (N, K, ~Hp, ~Wp)
        return score[:, :, self.start[0]:self.start[0] + h, self.start[1]:self.start[1] + w]  # (N, K, H, W)

    def extra_repr(self) -> str:
        return (f"window={self.window}, skips={self.skips}, pad_before={self.before}, multiple={self.multiple}, "
                f"margin={self.margin}")


def fcn_on(classifier: nn.Module, *, num_classes: int, skips: int = 2, input_size: Any = None,
           in_channels: int | None = None) -> TransferFCN:
    """A segmentation FCN on ``classifier``: FCN-32s (``skips=0``), -16s (1) or -8s (2) style (see module doc).

    ``classifier`` is a window classifier that :func:`fcnkit.convolutionalize` accepts (its training window from
    ``input_size`` or its own ``input_size`` attribute), or its convolutionalized FCN. Its weights are copied;
    if it scores ``num_classes`` classes its last layer becomes the score layer. When the classifier has an
    ``fcnkit_spec`` the result has one too, so ``save_checkpoint``/``load_checkpoint`` rebuild it. ``in_channels``
    defaults to the classifier's (its spec, its ``in_channels`` attribute, else 3).
    """
    from fcnkit.convert import ConvolutionalizedNet, convolutionalize

    if skips not in (0, 1, 2):
        raise ModelError(f"fcn_on: expected skips 0, 1 or 2 (FCN-32s, -16s, -8s style), got {skips!r}.")
    spec = getattr(classifier, "fcnkit_spec", None)
    if isinstance(classifier, ConvolutionalizedNet):
        fcn = classifier
        input_size = list(classifier.window)
    else:
        kind = getattr(classifier, "output_kind", "classifier")
        if kind != "classifier":
            raise ModelError(f"fcn_on: expected a window classifier or its convolutionalized FCN, found a model with "
                             f"output_kind {kind!r}; train a classifier first (e.g. digit_classifier).")
        size = input_size if input_size is not None else getattr(classifier, "input_size", None)
        if size is None:
            raise ModelError(f"fcn_on: the training window of {type(classifier).__name__} is unknown; pass "
                             f"input_size=(H, W), the window it was trained on.")
        input_size = [int(v) for v in size]
        if in_channels is None:
            in_channels = int(spec["in_channels"]) if spec else int(getattr(classifier, "in_channels", 3))
        fcn = convolutionalize(classifier, input_size=tuple(input_size), in_channels=in_channels)
    model = TransferFCN(fcn, num_classes=num_classes, skips=skips)
    if spec is not None:
        backbone = {k: v for k, v in spec.items() if k != "convolutionalized"}
        name = next(n for n, k in TRANSFER_MODELS.items() if k == skips)
        model.fcnkit_spec = {"name": name, "num_classes": num_classes, "in_channels": model.in_channels,
                             "options": {"backbone": backbone, "width": None, "input_size": input_size}}
    return model


def _build(skips: int, num_classes: int, in_channels: int, backbone: Any, width: float | None,
           input_size: Any) -> TransferFCN:
    # Real CPU tensors even under a `with torch.device("meta")` block: the layout is measured by running the net.
    with torch.device("cpu"):
        return _build_on_cpu(skips, num_classes, in_channels, backbone, width, input_size)


def _build_on_cpu(skips: int, num_classes: int, in_channels: int, backbone: Any, width: float | None,
                  input_size: Any) -> TransferFCN:
    if isinstance(backbone, str):
        options = {"width": width} if width is not None else {}
        classifier = build_model(backbone, num_classes=num_classes, in_channels=in_channels, **options)
    elif isinstance(backbone, dict) and "name" in backbone:
        if width is not None:
            raise ModelError(f"transfer model: width comes from the backbone spec ({backbone.get('options')}), "
                             f"found width={width!r} as well; leave width out.")
        classifier = build_model(backbone["name"], num_classes=backbone.get("num_classes", num_classes),
                                 in_channels=backbone.get("in_channels", in_channels), **backbone.get("options", {}))
    else:
        raise ModelError(f"transfer model: backbone must be a model name or an fcnkit_spec dict, got {backbone!r}; "
                         f"pass e.g. backbone='digit_classifier'.")
    model = fcn_on(classifier, num_classes=num_classes, skips=skips, input_size=input_size)
    if model.in_channels != in_channels:
        raise ModelError(f"transfer model: the backbone takes {model.in_channels} channels, in_channels is "
                         f"{in_channels}; pass in_channels={model.in_channels}.")
    return model


@register_model
def fcn32s_on(*, num_classes: int, in_channels: int = 3, backbone: Any = "digit_classifier",
              width: float | None = None, input_size: Any = None) -> nn.Module:
    """FCN-32s style on a classifier: its trunk, 1x1 scores, one bilinear up-sampling."""
    return _build(0, num_classes, in_channels, backbone, width, input_size)


@register_model
def fcn16s_on(*, num_classes: int, in_channels: int = 3, backbone: Any = "digit_classifier",
              width: float | None = None, input_size: Any = None) -> nn.Module:
    """FCN-16s style on a classifier: one skip from the next finer feature map."""
    return _build(1, num_classes, in_channels, backbone, width, input_size)


@register_model
def fcn8s_on(*, num_classes: int, in_channels: int = 3, backbone: Any = "digit_classifier",
             width: float | None = None, input_size: Any = None) -> nn.Module:
    """FCN-8s style on a classifier: skips from the two next finer feature maps."""
    return _build(2, num_classes, in_channels, backbone, width, input_size)
