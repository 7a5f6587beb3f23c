"""Pure metric core: representation similarity (CKA) and weight drift. Never sees a model.

Directions are fixed: CKA and cosine are similarities (1 = unchanged); weight drift and
max_abs_change are distances (0 = unchanged).
"""

from layerprobe.metrics.cka import (
    CKASubsampleWarning,
    CKAUndefinedWarning,
    StreamingCKA,
    bootstrap_cka,
    cka_maps,
    cka_matrix,
    debiased_cka,
    linear_cka,
    rbf_cka,
)
from layerprobe.metrics.drift import (
    GROUPS,
    DriftAccumulator,
    block_anatomy,
    matrix_updates,
    max_abs_change,
    param_group,
    update_rank,
    weight_cosine,
    weight_drift,
)

__all__ = [
    "GROUPS",
    "CKASubsampleWarning",
    "CKAUndefinedWarning",
    "DriftAccumulator",
    "StreamingCKA",
    "block_anatomy",
    "bootstrap_cka",
    "cka_maps",
    "cka_matrix",
    "debiased_cka",
    "linear_cka",
    "matrix_updates",
    "max_abs_change",
    "param_group",
    "rbf_cka",
    "update_rank",
    "weight_cosine",
    "weight_drift",
]
