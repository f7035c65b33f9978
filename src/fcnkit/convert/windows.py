"""Where a convolutionalized classifier equals the classifier, and the warnings that say where it does not.

Two things make the one-pass FCN differ from sliding the classifier over windows of its training size: padding (each
window saw zeros at its border, the FCN sees the real neighbours) and a ``ceil_mode`` pooling whose last window is
partial at the training size (MTCNN's R-Net: pool1 sees 2 of 3 columns at 24×24). For the second there is an exact
answer: the FCN reads a slightly larger window, and on crops of that size the classifier's pooling windows are all
full, so the FCN equals the classifier there. That size is the input range the FCN's first score reads, from the
geometry analysis of :mod:`fcnkit.geometry.propagate`.
"""

from __future__ import annotations

from torch import fx

from fcnkit.convert.plan import Plan
from fcnkit.geometry.propagate import input_window
from fcnkit.geometry.state import Unreadable


class ConversionWarning(UserWarning):
    """The convolutionalized classifier equals the classifier only approximately, or on other windows."""


class PaddingWarning(ConversionWarning):
    """A layer pads its input: the FCN sees real neighbours where each window saw padding (approximate near borders)."""


class PartialWindowWarning(ConversionWarning):
    """A ``ceil_mode`` pooling has a partial last window at the training size: the FCN is exact on larger crops."""


def exact_window(body: fx.GraphModule, window: tuple[int, int]) -> tuple[int, int] | None:
    """The smallest crop (H, W), at least ``window``, on which ``body``'s first score equals the classifier's.

    None when the FCN reads pixels before the window's top-left corner (padding: it is never exact) or its graph
    cannot be read.
    """
    try:
        reads = [input_window(body, axis) for axis in (0, 1)]
    except Unreadable:
        return None
    if any(r is None or r[0] != 0 for r in reads):
        return None
    return tuple(max(win, r[1] + 1) for win, r in zip(window, reads))  # type: ignore[index,return-value]


def warnings_for(plan: Plan, window: tuple[int, int], exact: tuple[int, int] | None) -> list[ConversionWarning]:
    """The warnings a conversion deserves: padding, and each ceil-mode pooling with a partial window."""
    found: list[ConversionWarning] = []
    if plan.padded is not None:
        found.append(PaddingWarning(
            f"convolutionalize: {plan.padded}, so the FCN sees real neighbours where each window saw padding; its "
            f"scores equal the classifier's only approximately near window borders (use unpadded layers for "
            f"exact equality)."))
    for where, size, span, missing in plan.partial:
        axes = " and ".join(f"{span[a] - missing[a]} of {span[a]} {name}" for a, name in enumerate(("rows",
                                                                                                   "columns"))
                            if missing[a])
        if exact is not None and plan.padded is None:
            consequence = (f"so the FCN equals the classifier on {exact[0]}x{exact[1]} crops, not on "
                           f"{window[0]}x{window[1]} ones (fcnkit.convert.verify measures both)")
        else:
            consequence = "so the FCN equals the classifier only approximately"
        found.append(PartialWindowWarning(
            f"convolutionalize: {where} has ceil_mode=True and at input_size {window[0]}x{window[1]} its last "
            f"window is partial (on its {size[0]}x{size[1]} input it sees {axes}); inside a larger image that "
            f"window sees real pixels, {consequence}."))
    return found
