"""Geometry of a network: receptive field, output stride, input multiple, halo, and whether it is local.

``analyze`` (in :mod:`fcnkit.geometry.analysis`) traces the model with torch.fx and propagates index ranges through
it (:mod:`~fcnkit.geometry.propagate`, with one rule per kind of operation in :mod:`~fcnkit.geometry.rules` and
:mod:`~fcnkit.geometry.layout`; what each operation is comes from the operator table :mod:`~fcnkit.geometry.ops`,
which :mod:`fcnkit.convert` shares); where tracing is impossible it measures with a NaN probe
(:mod:`~fcnkit.geometry.probe`) and ``Geometry.method``/``probe_reason`` say so. docs/design.md explains how the
numbers drive exact tiling.
"""

from fcnkit.geometry.analysis import Geometry, analyze, probe_radius

__all__ = ["Geometry", "analyze", "probe_radius"]
