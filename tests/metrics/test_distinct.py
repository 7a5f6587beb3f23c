"""Distinct rows (``layerprobe/metrics/distinct.py``): the count CKA's minimum is checked against."""

from __future__ import annotations

import pytest
import torch

from layerprobe.metrics import linear_cka
from layerprobe.metrics.distinct import MIN_DISTINCT_ROWS, count_distinct_rows


def rows(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("mult", [(1, 1), (95, 1), (3, 7), (50, 2)])
@pytest.mark.parametrize("d", [3, 32, 384])
def test_two_distinct_points_always_give_cka_one(mult, d):
    """Why the minimum exists: whatever the two models do, CKA of two distinct points is exactly 1."""
    x, y = rows(2, d, 0), rows(2, d, 1) ** 3  # unrelated, and y not even a linear map of x
    rx = torch.cat([x[:1].repeat(mult[0], 1), x[1:].repeat(mult[1], 1)])
    ry = torch.cat([y[:1].repeat(mult[0], 1), y[1:].repeat(mult[1], 1)])
    assert linear_cka(rx, ry) == pytest.approx(1.0, abs=1e-12)
    assert count_distinct_rows(rx, ry) == 2


@pytest.mark.parametrize("noise", [0.0, 1e-9, 1e-7, 1e-4])
@pytest.mark.parametrize("k,copies", [(1, 10), (2, 48), (3, 5), (4, 1), (6, 20)])
def test_rounding_noise_never_makes_duplicates_distinct(noise, k, copies):
    """Copies of one text differ by rounding (about 1e-7 in float32, 1e-4 in bfloat16 with other padding)."""
    base = rows(k, 64, 2)
    x = base.repeat(copies, 1)
    x = x + noise * x.abs().mean() * rows(*x.shape, 3)
    assert count_distinct_rows(x) == k
    assert count_distinct_rows(x, 2 * x + 5) == k  # scale and shift do not change it


@pytest.mark.parametrize("n,d", [(4, 8), (8, 384), (16, 32), (64, 768)])
def test_distinct_rows_are_counted(n, d):
    x, y = rows(n, d, 4), rows(n, d, 5)
    assert count_distinct_rows(x, y) == n
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert count_distinct_rows(x[perm], y[perm]) == n
    low_rank = rows(n, 2, 6) @ rows(2, d, 7)  # distinct points on a plane: still distinct
    assert count_distinct_rows(low_rank) == n


def test_a_lower_bound_that_never_exceeds_the_rows():
    x = rows(20000, 16, 8)
    k = count_distinct_rows(x, max_rows=512)  # evenly spaced rows past max_rows: fast, still a lower bound
    assert MIN_DISTINCT_ROWS <= k <= 512
    assert count_distinct_rows(torch.ones(10, 4, dtype=torch.float64)) == 1
    assert count_distinct_rows(rows(1, 4, 0)) == 1 and count_distinct_rows(rows(0, 4, 0)) == 0


def test_the_joint_rows_count():
    """Rows equal on one side but different on the other are distinct points of the pair."""
    x = torch.cat([rows(1, 8, 0).repeat(5, 1), rows(1, 8, 1).repeat(5, 1)])
    y = rows(10, 8, 2)
    assert count_distinct_rows(x) == 2 and count_distinct_rows(x, y) == 10
