"""The knobs of a comparison, with their defaults and choices in one place.

:class:`ProbeOptions` says how a model is run over the probe; :class:`CKAOptions` how CKA is
computed. Both are frozen and validated on construction; the API (:func:`~layerprobe.compare`),
the CLI and the tracker share them. This module imports nothing heavy (the CLI reads the choices
from it before torch is loaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from layerprobe.errors import LayerProbeError

__all__ = ["CKAOptions", "csv_float", "ProbeOptions", "POOLINGS", "ESTIMATORS", "FORMATS", "CSV_OPTIONS",
           "DEFAULT_BATCH_SIZE", "DEFAULT_MAX_LENGTH", "DEFAULT_POOLING", "MAX_N_BOOT", "TRAINING_MAX_LENGTH", "checked"]

#: ``pooling=`` choices: mean over real tokens, first token, last real token, every token
POOLINGS = ("mean", "first", "last", "tokens")
#: ``estimator=`` choices (the freeze thresholds are calibrated for ``linear``)
ESTIMATORS = ("linear", "debiased", "rbf")
#: output formats of the report / ``--format``
FORMATS = ("table", "json", "csv", "markdown")
#: how every CSV layerprobe writes is formatted (``DataFrame.to_csv(**CSV_OPTIONS)``)
def csv_float(x: float) -> str:
    """A float as every CSV layerprobe writes it: 10 significant digits, always a float (``1.0``,
    not ``1``, so a reader infers the same dtype for every file).

    >>> csv_float(1.0), csv_float(0.123456789012), csv_float(1e-12), csv_float(float("nan"))
    ('1.0', '0.123456789', '1e-12', 'nan')
    """
    s = f"{x:.10g}"
    return s + ".0" if s.lstrip("-").isdigit() else s


CSV_OPTIONS: Mapping[str, Any] = {"index": False, "float_format": csv_float, "lineterminator": "\n"}

#: the defaults, defined here only
DEFAULT_POOLING = "mean"
#: the one default truncation of probe texts, in tokens, wherever a probe runs: ``take_snapshot``,
#: ``compare`` (:class:`ProbeOptions`), the CLI's ``--max-length``, and the tracker and Trainer callback
#: (capped to a model with fewer positions). It cuts probe texts only, never training data: give your
#: training length when your texts are longer. ``tests/test_options.py`` checks that no module defines
#: another default (the tracker still probes at :data:`TRAINING_MAX_LENGTH`: issue 19 item 10, pending there)
DEFAULT_MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 32
#: truncation of texts in the demo's training and evaluation (``demo/``), not a probe default
TRAINING_MAX_LENGTH = 64


@dataclass(frozen=True)
class ProbeOptions:
    """How a model is run over the probe.

    ``None`` in ``pooling``, ``max_length`` or ``max_tokens`` means "not set": a comparison with a
    snapshot side follows the snapshot's setting, otherwise the default (``mean``, 128, no cap)
    applies. A setting that is given and contradicts a snapshot side is an error.

    >>> ProbeOptions().settle().pooling, ProbeOptions().settle().max_length
    ('mean', 128)
    >>> ProbeOptions(pooling="first").settle({"pooling": "mean", "max_length": 64}, "A")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: pooling='first' was asked for but snapshot A was taken with pooling='mean'
    """

    pooling: str | None = None
    max_length: int | None = None
    max_tokens: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise LayerProbeError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
        for name in ("max_length", "max_tokens", "batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise LayerProbeError(f"{name} must be a positive integer, got {v!r}")

    def settle(self, snapshot_meta: Mapping[str, Any] | None = None, label: str = "") -> ProbeOptions:
        """Concrete options: unset fields follow ``snapshot_meta`` (a snapshot side's meta), then
        the defaults; a set field that contradicts the snapshot raises :class:`LayerProbeError`."""
        ref = snapshot_meta or {}
        out: dict[str, Any] = {}
        for name in ("pooling", "max_length", "max_tokens"):
            mine, theirs = getattr(self, name), ref.get(name)
            if mine is not None and name in ref and theirs != mine:
                raise LayerProbeError(f"{name}={mine!r} was asked for but snapshot {label} was taken with "
                                      f"{name}={theirs!r}")
            out[name] = mine if mine is not None else theirs
        out["pooling"] = out["pooling"] or DEFAULT_POOLING
        out["max_length"] = out["max_length"] or DEFAULT_MAX_LENGTH
        return replace(self, **out)

    def snapshot_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~layerprobe.snapshot.take.take_snapshot` (call on settled options)."""
        return asdict(self)


#: most bootstrap resamples: each one is a CKA per entry, so time grows with n_boot x entries x rows; the
#: percentile interval's Monte Carlo error at 10,000 resamples is already far below the bootstrap's own
MAX_N_BOOT = 10_000


@dataclass(frozen=True)
class CKAOptions:
    """How CKA is computed from the representations.

    Args:
        estimator: ``"linear"`` (default; the freeze thresholds are calibrated for it),
            ``"debiased"`` (unbiased HSIC₁) or ``"rbf"`` (median bandwidth).
        ci: bootstrap interval per entry; ``None`` = on for linear CKA with at most
            :data:`~layerprobe.comparison.compare.CI_AUTO_MAX_ROWS` representation rows.
        n_boot, ci_level, seed: bootstrap resamples, coverage and seed.
        cross_layer: also the every-entry-vs-every-entry linear CKA maps.

    >>> CKAOptions(estimator="rbf", ci=True)
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: the bootstrap interval is implemented for the linear estimator only, got estimator='rbf'
    """

    estimator: str = "linear"
    ci: bool | None = None
    n_boot: int = 1000  # at most MAX_N_BOOT
    ci_level: float = 0.95
    seed: int = 0
    cross_layer: bool = False

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise LayerProbeError(f"unknown estimator {self.estimator!r}; expected one of {sorted(ESTIMATORS)}")
        if self.ci and self.estimator != "linear":
            raise LayerProbeError(f"the bootstrap interval is implemented for the linear estimator only, "
                                  f"got estimator={self.estimator!r}")
        ci_level, n_boot = self.ci_level, self.n_boot
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or not 1 <= n_boot <= MAX_N_BOOT:
            raise LayerProbeError(f"n_boot must be an integer in [1, {MAX_N_BOOT:,}], got {n_boot!r} (a percentile "
                                  f"interval is stable to about 0.001 at a few thousand resamples)")
        if not 0.0 < ci_level < 1.0:
            raise LayerProbeError(f"need 0 < ci_level < 1, got {ci_level=}")


def checked(options: Any, cls: type) -> Any:
    """``options`` if it is a ``cls`` (a new default ``cls()`` for None); anything else is refused.

    >>> checked(None, CKAOptions).estimator
    'linear'
    """
    if options is None:
        return cls()
    if not isinstance(options, cls):
        raise LayerProbeError(f"expected {cls.__name__}, got {type(options).__name__}")
    return options
