"""The CKA interval (metrics/bootstrap.py) brackets its estimate and covers at its level (issue 19 item 2).

Data with a known CKA: x ~ N(0, diag(s)), y = x + σ·ε gives population linear CKA
tr(S²) / sqrt(tr(S²)·tr((S + σ²)²)). With few dimensions the plug-in estimate is unbiased to well
within its spread, so the interval must cover that value; with few wide rows (a 64-text probe of a
384-wide model) the estimate sits above the population value by about d/n and the interval must
cover what this probe size gives on fresh probes (a Monte Carlo reference), as documented.
"""

from __future__ import annotations

import numpy as np
import pytest

from layerprobe.metrics import bootstrap_cka, linear_cka


def population_cka(spec: np.ndarray, noise: float) -> float:
    return float((spec**2).sum() / np.sqrt((spec**2).sum() * ((spec + noise) ** 2).sum()))


def draw(rng, n: int, spec: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, spec.size)) * np.sqrt(spec)
    return x, x + np.sqrt(noise) * rng.standard_normal((n, spec.size))


def plain_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in numpy, the reference (Gram form)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    k, l_ = xc @ xc.T, yc @ yc.T
    return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))


def coverage(n: int, spec: np.ndarray, noise: float, target: float | None, reps: int, n_boot: int):
    rng = np.random.default_rng(7)
    hits = brackets = 0
    ests = []
    for r in range(reps):
        x, y = draw(rng, n, spec, noise)
        est = linear_cka(x, y)
        lo, hi = bootstrap_cka(x, y, n_boot=n_boot, seed=r)
        ests.append(est)
        brackets += lo <= est <= hi
        hits += target is not None and lo <= target <= hi
    return hits / reps, brackets / reps, float(np.mean(ests))


def test_covers_a_known_population_cka_at_its_level():
    spec, noise = np.ones(3), 0.3
    truth = population_cka(spec, noise)  # 0.769...
    assert truth == pytest.approx(1 / 1.3, rel=1e-12)
    cov, brackets, mean_est = coverage(120, spec, noise, truth, reps=150, n_boot=150)
    assert abs(mean_est - truth) < 0.01  # the plug-in bias is well inside the spread (sd ≈ 0.023)
    assert brackets == 1.0
    assert 0.89 <= cov <= 1.0  # 95% less 3 binomial sd over 150 draws


def test_few_wide_rows_bracket_the_estimate_and_cover_this_probe_size():
    """The issue's regime: CKA ≈ 0.99, 64 rows, 384 columns with a decaying spectrum. The plain
    percentile bootstrap put its lower bound above the estimate in ~1 draw in 4 (covering 73%)."""
    spec, noise = 1.0 / np.arange(1, 385), 0.002
    rng = np.random.default_rng(99)
    reference = float(np.mean([plain_cka(*draw(rng, 64, spec, noise)) for _ in range(1000)]))
    cov, brackets, _ = coverage(64, spec, noise, reference, reps=80, n_boot=200)
    assert brackets == 1.0
    assert cov >= 0.88  # 95% less 3 binomial sd over 80 draws; before: 0.73


def test_the_lower_bound_is_never_above_the_estimate_it_brackets():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 384)) / np.arange(1, 385)
    for scale in (0.01, 0.04, 0.2):
        y = x + scale * rng.standard_normal(x.shape)
        lo, hi = bootstrap_cka(x, y, n_boot=300)
        est = linear_cka(x, y)
        assert lo < est < hi, (scale, lo, est, hi)
