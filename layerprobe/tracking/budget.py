"""The probe budget of an auto-freezing run: how many checks and probe texts a run can afford.

An auto-freezing run's probe passes should cost a small share of its training compute
(:data:`DEFAULT_PROBE_SHARE`); :func:`probe_plan` sizes the probe and the cadence from the run,
:func:`probe_texts_within` the probe for a given number of passes, :func:`probe_passes` counts them.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_PROBE_SHARE", "MIN_CHECKS", "MIN_PROBE_TEXTS", "probe_passes", "probe_plan", "probe_texts_within"]

#: Share of a run's training compute the probe passes of an auto-freezing run may cost by default.
DEFAULT_PROBE_SHARE = 0.05
#: Fewest probe texts and checks :func:`probe_plan` goes down to (below them CKA and settling are noise).
MIN_PROBE_TEXTS = 32
MIN_CHECKS = 8


def probe_texts_within(budget: float, checks: int, cap: int, floor: int = MIN_PROBE_TEXTS) -> int:
    """Probe texts per check so that ``checks`` probe passes cost at most ``budget`` forward passes
    over one example: the most up to ``cap``, never fewer than ``min(floor, cap)``.

    >>> probe_texts_within(0.05 * 3 * 4000, 4, 128), probe_texts_within(0.05 * 3 * 1433, 4, 128)
    (128, 53)
    >>> probe_texts_within(10.0, 4, 128), probe_texts_within(10.0, 4, 16)
    (32, 16)
    """
    return max(min(cap, floor), min(cap, math.floor(budget / max(1, checks))))


def probe_passes(steps: int, every: int) -> int:
    """Probe passes a run of ``steps`` optimizer steps makes checking every ``every`` steps: the start,
    one per multiple of ``every``, and a final one when the last step is not a multiple.

    >>> probe_passes(96, 8), probe_passes(60, 8), probe_passes(5, 10)
    (13, 9, 2)
    """
    steps, every = max(0, int(steps)), max(1, int(every))
    return 1 + steps // every + (1 if steps % every else 0)


def probe_plan(n_texts: int, train_examples: int, max_checks: int = 20, share: float = DEFAULT_PROBE_SHARE,
               floor: int = MIN_PROBE_TEXTS, min_checks: int = MIN_CHECKS) -> tuple[int, int]:
    """``(checks, probe texts)`` for a run over ``train_examples`` examples (steps x batch) whose probe
    passes should cost at most ``share`` of its training compute.

    A training step costs about three forward passes per example (forward + backward) and a probe
    pass one, at the same sequence length. A run with ``checks`` checks makes at most ``checks + 2``
    probe passes (:func:`probe_passes` with the interval rounded up: the start, the checks, and a final
    one). The plan keeps ``max_checks`` checks and shrinks the probe; when that would take it under
    ``floor`` texts it checks less often instead (down to ``min_checks``); under both minimums the
    budget is exceeded rather than the advice made noise.

    >>> probe_plan(64, 96 * 32)     # 96 steps of batch 32: 12 checks of 32 texts (<= 14 passes, 4.9%)
    (12, 32)
    >>> probe_plan(64, 500 * 32)    # a longer run affords 20 checks of all 64 texts (<= 22 passes, 2.9%)
    (20, 64)
    >>> probe_plan(64, 20 * 8)      # a tiny run: the minimums win
    (8, 32)
    """
    budget = share * 3 * max(0, int(train_examples))
    floor = min(floor, n_texts)
    checks = max_checks
    if math.floor(budget / (checks + 2)) < floor:
        checks = max(min_checks, min(max_checks, math.floor(budget / max(1, floor)) - 2))
    return checks, probe_texts_within(budget, checks + 2, n_texts, floor)
