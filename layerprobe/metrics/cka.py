"""Centred kernel alignment (CKA): how similar two sets of representations of the same inputs are.

CKA is a **similarity**: 1 means "the same up to rotation and isotropic scaling", 0 means
unrelated. Every function takes numpy arrays or torch tensors of any float dtype on any device and
computes in float64 on the CPU; results are Python floats or float64 numpy arrays. Rows are probe
examples (the same n inputs, in the same order, for ``x`` and ``y``); columns are features.

This module gathers the estimators, each of which lives in a small module of its own:

* :mod:`~layerprobe.metrics.linear` — :func:`linear_cka`, :func:`debiased_cka`;
* :mod:`~layerprobe.metrics.rbf` — :func:`rbf_cka`;
* :mod:`~layerprobe.metrics.streaming` — :class:`StreamingCKA` (exact, from batches, O(d²) memory);
* :mod:`~layerprobe.metrics.maps` — :func:`cka_matrix`, :func:`cka_maps` (cross-layer maps);
* :mod:`~layerprobe.metrics.bootstrap` — :func:`bootstrap_cka` (bias-corrected intervals that contain the estimate).

Undefined cases (a representation that is constant after centring, NaN or Inf in the input) give
``nan`` together with a :class:`CKAUndefinedWarning`, never a silent number. Bad shapes raise
:class:`~layerprobe.errors.LayerProbeError`.
"""

from layerprobe.metrics.bootstrap import bootstrap_cka
from layerprobe.metrics.core import HIGHER_IS_MORE_SIMILAR, CKASubsampleWarning, CKAUndefinedWarning
from layerprobe.metrics.linear import debiased_cka, linear_cka
from layerprobe.metrics.maps import cka_maps, cka_matrix
from layerprobe.metrics.rbf import rbf_cka
from layerprobe.metrics.streaming import StreamingCKA

__all__ = [
    "HIGHER_IS_MORE_SIMILAR",
    "CKASubsampleWarning",
    "CKAUndefinedWarning",
    "StreamingCKA",
    "bootstrap_cka",
    "cka_maps",
    "cka_matrix",
    "debiased_cka",
    "linear_cka",
    "rbf_cka",
]
