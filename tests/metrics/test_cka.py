"""Tests for layerprobe.metrics.cka against an independent reference and against invariants."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerprobe.errors import LayerProbeError
from layerprobe.metrics.cka import (
    CKASubsampleWarning,
    CKAUndefinedWarning,
    StreamingCKA,
    bootstrap_cka,
    cka_matrix,
    debiased_cka,
    linear_cka,
    rbf_cka,
)
from layerprobe.metrics.bootstrap import _weighted_linear_cka

# ------------------------------------------------------------------------------------------
# Independent reference: Gram form with an explicit centring matrix, straight from the papers.
# ------------------------------------------------------------------------------------------


def ref_hsic0(k, l_):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l_ @ h) / (n - 1) ** 2


def ref_hsic1(k, l_):
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l_ - np.diag(np.diag(l_))
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def ref_cka(k, l_, hsic=ref_hsic0):
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def ref_linear(x, y):
    return ref_cka(x @ x.T, y @ y.T)


def ref_debiased(x, y):
    return ref_cka(x @ x.T, y @ y.T, ref_hsic1)  # raw, uncentred Grams


def ref_rbf_gram(x, threshold):
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * threshold**2 * np.median(d2)))


def ref_rbf(x, y, threshold=0.5):
    return ref_cka(ref_rbf_gram(x, threshold), ref_rbf_gram(y, threshold))


def rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def related(seed, n, d1, d2, noise=1.0):
    """A pair with real but partial similarity: y is a noisy random linear map of x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d1))
    y = x @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return x, y


SHAPES = [(50, 5, 7), (20, 40, 30), (100, 10, 3), (8, 100, 2), (64, 16, 16)]

# ------------------------------------------------------------------------------------------
# Public check values and reference agreement
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kornblith_demo():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


def test_public_check_values(kornblith_demo):
    x, y = kornblith_demo
    assert linear_cka(x, y) == pytest.approx(0.55761, abs=1e-5)
    assert rbf_cka(x, y, threshold=0.5) == pytest.approx(0.65483, abs=1e-5)
    assert debiased_cka(x, y) == pytest.approx(0.51346, abs=1e-5)
    # and the reference agrees with them, so the reference itself is right
    assert ref_linear(x, y) == pytest.approx(0.55761, abs=1e-5)
    assert ref_rbf(x, y) == pytest.approx(0.65483, abs=1e-5)
    assert ref_debiased(x, y) == pytest.approx(0.51346, abs=1e-5)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_linear_matches_reference(n, d1, d2):
    x, y = related(n * d1 + d2, n, d1, d2)
    expected = ref_linear(x, y)
    assert 0.05 < expected < 0.99
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_debiased_matches_reference(n, d1, d2):
    x, y = related(n + d1 + d2, n, d1, d2)
    x = x + 3.0  # unbiased HSIC is shift invariant: reference uses raw Grams
    assert debiased_cka(x, y) == pytest.approx(ref_debiased(x, y), rel=1e-9)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_rbf_matches_reference(n, d1, d2):
    x, y = related(7 * n + d1, n, d1, d2)
    for threshold in (0.5, 1.0):
        assert rbf_cka(x, y, threshold) == pytest.approx(ref_rbf(x, y, threshold), rel=1e-10)


def test_torch_inputs_any_dtype_equal_numpy():
    x, y = related(3, 40, 6, 5)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    x32, y32 = xt.double().numpy(), yt.double().numpy()  # the same values in float64
    assert linear_cka(xt, yt) == pytest.approx(linear_cka(x32, y32), rel=1e-13)
    assert debiased_cka(xt, yt) == pytest.approx(debiased_cka(x32, y32), rel=1e-12)
    assert isinstance(linear_cka(xt.bfloat16(), yt.half()), float)
    assert linear_cka(xt.requires_grad_(), y) == pytest.approx(linear_cka(x32, y), rel=1e-13)


# ------------------------------------------------------------------------------------------
# Invariants
# ------------------------------------------------------------------------------------------


def random_orthogonal(seed, d):
    q, r = np.linalg.qr(rand(seed, d, d))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("n,d", [(80, 6), (12, 30)])
def test_invariances(n, d):
    x, y = related(n + d, n, d, d + 2, noise=2.0)
    base = linear_cka(x, y)
    assert 0.1 < base < 0.95
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(base, rel=1e-12)
    q = random_orthogonal(1, d)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(7.5 * x, y) == pytest.approx(base, rel=1e-12)
    assert linear_cka(x + 100.0, y) == pytest.approx(base, rel=1e-10)
    # an invertible but non-orthogonal map changes the value for real
    a = np.diag(np.linspace(0.1, 10.0, d)) @ random_orthogonal(2, d)
    assert abs(linear_cka(x @ a, y) - base) > 0.02
    # nonlinear transform of x is not the same representation
    assert linear_cka(x, np.tanh(2.0 * x) ** 2) < 0.9
    for f in (debiased_cka, rbf_cka):
        assert f(x, x) == pytest.approx(1.0, abs=1e-12)
        assert f(x @ q * 3.0, y) == pytest.approx(f(x, y), rel=1e-9)
        assert f(y, x) == pytest.approx(f(x, y), rel=1e-12)


def test_debiased_near_zero_for_independent_data():
    x, y = rand(10, 256, 10), rand(11, 256, 10)
    unbiased, biased = debiased_cka(x, y), linear_cka(x, y)
    assert abs(unbiased) < 0.02
    assert biased > 0.02 and biased > 3 * abs(unbiased)
    # and the bias is much worse at small n
    assert linear_cka(x[:32], y[:32]) > 0.1


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(4, 40),
    d1=st.integers(1, 12),
    d2=st.integers(1, 12),
    seed=st.integers(0, 2**31),
    scale=st.floats(1e-3, 1e3),
)
def test_property_range_symmetry_rotation(n, d1, d2, seed, scale):
    x, y = related(seed, n, d1, d2, noise=scale)
    v = linear_cka(x, y)
    assert 0.0 <= v <= 1.0
    assert linear_cka(y, x) == pytest.approx(v, rel=1e-9, abs=1e-12)
    assert linear_cka(x @ random_orthogonal(seed, d1) * scale, y) == pytest.approx(v, rel=1e-8, abs=1e-12)
    assert v == pytest.approx(ref_linear(x, y), rel=1e-8, abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(4, 30), d=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_property_debiased_and_rbf_match_reference(n, d, seed):
    x, y = related(seed, n, d, d + 1)
    assert debiased_cka(x, y) == pytest.approx(ref_debiased(x, y), rel=1e-8, abs=1e-10)
    r = rbf_cka(x, y)
    assert 0.0 <= r <= 1.0
    assert r == pytest.approx(ref_rbf(x, y), rel=1e-9, abs=1e-12)


def test_offline_centring_is_stable_with_huge_mean():
    x, y = related(5, 500, 8, 6)
    base = linear_cka(x, y)
    assert linear_cka(x + 1e4, y - 1e4) == pytest.approx(base, rel=1e-9)
    assert debiased_cka(x + 1e4, y) == pytest.approx(debiased_cka(x, y), rel=1e-8)


# ------------------------------------------------------------------------------------------
# Undefined cases and bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [linear_cka, debiased_cka, rbf_cka])
def test_constant_representation_is_nan_with_warning(f):
    x = rand(0, 20, 4)
    const = np.full((20, 3), 1234.5678)
    with pytest.warns(CKAUndefinedWarning, match="constant"):
        assert np.isnan(f(const, x))
    with pytest.warns(CKAUndefinedWarning):
        assert np.isnan(f(x, np.zeros((20, 2))))


def test_constant_up_to_rounding_is_detected():
    # a column 0.1 + 0.2 - 0.2 ... may not average back exactly; still constant
    x = np.full((7, 2), 0.1 + 0.2)
    with pytest.warns(CKAUndefinedWarning):
        assert np.isnan(linear_cka(x, rand(1, 7, 3)))
    # one varying column is enough to be defined
    x[3, 1] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 0.0 <= linear_cka(x, rand(1, 7, 3)) <= 1.0


@pytest.mark.parametrize("f", [linear_cka, debiased_cka, rbf_cka])
def test_nonfinite_input_is_nan_with_warning(f):
    x, y = rand(0, 20, 4), rand(1, 20, 4)
    x[3, 2] = np.nan
    with pytest.warns(CKAUndefinedWarning, match="NaN"):
        assert np.isnan(f(x, y))
    y[0, 0] = np.inf
    with pytest.warns(CKAUndefinedWarning):
        assert np.isnan(f(rand(0, 20, 4), y))


def test_bad_shapes_raise():
    with pytest.raises(LayerProbeError, match=r"x.shape=\(10, 3\), y.shape=\(11, 3\)"):
        linear_cka(rand(0, 10, 3), rand(1, 11, 3))
    with pytest.raises(LayerProbeError, match="2-D"):
        linear_cka(rand(0, 10), rand(1, 10, 3))
    with pytest.raises(LayerProbeError, match="at least 2"):
        linear_cka(rand(0, 1, 3), rand(1, 1, 3))
    with pytest.raises(LayerProbeError, match="at least 4"):
        debiased_cka(rand(0, 3, 3), rand(1, 3, 3))
    with pytest.raises(LayerProbeError, match="threshold"):
        rbf_cka(rand(0, 5, 3), rand(1, 5, 3), threshold=0.0)
    assert issubclass(LayerProbeError, ValueError)


def test_rbf_subsample_is_seeded_and_warns():
    x, y = related(4, 60, 5, 4)
    with pytest.warns(CKASubsampleWarning, match="max_n=30"):
        a = rbf_cka(x, y, max_n=30, seed=3)
    with pytest.warns(CKASubsampleWarning):
        b = rbf_cka(x, y, max_n=30, seed=3)
    idx = np.sort(np.random.default_rng(3).choice(60, size=30, replace=False))
    assert a == b == pytest.approx(ref_rbf(x[idx], y[idx]), rel=1e-10)
    with pytest.warns(CKASubsampleWarning):
        assert rbf_cka(x, y, max_n=30, seed=4) != a


# ------------------------------------------------------------------------------------------
# Streaming exact linear CKA
# ------------------------------------------------------------------------------------------


def stream(x, y, batch):
    s = StreamingCKA()
    for start in range(0, len(x), batch):
        s.update(x[start : start + batch], y[start : start + batch])
    return s


@pytest.mark.parametrize("batch", [1, 7, 100, 1000])
def test_streaming_equals_offline(batch):
    x, y = related(8, 300, 9, 5)
    assert stream(x, y, batch).compute() == pytest.approx(linear_cka(x, y), rel=1e-9)


def test_streaming_exact_with_huge_offset():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((10_000, 12))
    y = x[:, :8] @ rng.standard_normal((8, 6)) + rng.standard_normal((10_000, 6))
    expected = linear_cka(x, y)  # on un-offset data
    s = stream(x + 1e4, y + 1e4, 100)
    assert s.n == 10_000
    assert s.compute() == pytest.approx(expected, rel=1e-9)
    # the naive uncentred-sum formula really is inaccurate here (so the test has teeth)
    xo, yo = x + 1e4, y + 1e4
    n = len(xo)
    mx, my = xo.sum(0) / n, yo.sum(0) / n
    cxy = xo.T @ yo - n * np.outer(mx, my)
    cxx = xo.T @ xo - n * np.outer(mx, mx)
    cyy = yo.T @ yo - n * np.outer(my, my)
    naive = np.linalg.norm(cxy) ** 2 / (np.linalg.norm(cxx) * np.linalg.norm(cyy))
    assert abs(naive - expected) / expected > 1e-9


def test_streaming_exact_with_outlier_dimension():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2000, 10))
    x[:, 3] = 3e3 + 50.0 * x[:, 3]  # one huge outlier dimension, as in transformer states
    y = np.tanh(x[:, :6] / 5.0) + 0.3 * rng.standard_normal((2000, 6))
    y[rng.integers(0, 2000, 20), 2] += 1e3  # a few rows with a huge value
    assert stream(x, y, 64).compute() == pytest.approx(linear_cka(x, y), rel=1e-9)


def test_streaming_merge_equals_single_accumulator():
    x, y = related(11, 500, 6, 7)
    whole = stream(x, y, 50).compute()
    a, b = stream(x[:170], y[:170], 50), stream(x[170:] + 0.0, y[170:], 33)
    assert a.merge(b) is a
    assert a.compute() == pytest.approx(whole, rel=1e-12)
    assert a.n == 500
    # merging an empty accumulator changes nothing; state can be cached and resumed
    assert a.merge(StreamingCKA()).compute() == pytest.approx(whole, rel=1e-12)


def test_streaming_errors_and_undefined():
    s = StreamingCKA()
    with pytest.raises(LayerProbeError, match="before any rows"):
        s.compute()
    s.update(rand(0, 5, 3), rand(1, 5, 2))
    with pytest.raises(LayerProbeError, match="feature dimensions"):
        s.update(rand(0, 5, 4), rand(1, 5, 2))
    c = stream(np.full((30, 3), 7.1), rand(2, 30, 2), 7)
    with pytest.warns(CKAUndefinedWarning, match="constant"):
        assert np.isnan(c.compute())
    bad = rand(3, 30, 3)
    bad[4, 1] = np.nan
    with pytest.warns(CKAUndefinedWarning, match="NaN"):
        assert np.isnan(stream(bad, rand(2, 30, 2), 10).compute())


# ------------------------------------------------------------------------------------------
# Cross-layer maps
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [60, 12])  # feature form (n > d) and Gram form (n ≤ d)
def test_cka_matrix_matches_pairwise(n):
    rng = np.random.default_rng(n)
    base = rng.standard_normal((n, 10))
    xs = [np.tanh(base @ rng.standard_normal((10, d))) for d in (8, 20, 14)]
    xs.append(torch.tensor(xs[0] + 0.5 * rng.standard_normal((n, 8)), dtype=torch.float32))
    m = cka_matrix(xs)
    assert m.shape == (4, 4)
    assert np.array_equal(np.diag(m), np.ones(4))
    assert np.array_equal(m, m.T)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert m[i, j] == pytest.approx(linear_cka(xs[i], xs[j]), abs=1e-10)
    ys = [xs[1], base]
    r = cka_matrix(xs, ys)
    assert r.shape == (4, 2)
    for i in range(4):
        for j in range(2):
            assert r[i, j] == pytest.approx(linear_cka(xs[i], ys[j]), abs=1e-10)


def test_cka_matrix_undefined_and_errors():
    xs = [rand(0, 20, 3), np.ones((20, 4)), rand(1, 20, 5)]
    with pytest.warns(CKAUndefinedWarning, match=r"xs\[1\]"):
        m = cka_matrix(xs)
    assert np.isnan(m[1]).all() and np.isnan(m[:, 1]).all()
    assert m[0, 0] == 1.0 and np.isfinite(m[0, 2])
    with pytest.raises(LayerProbeError, match=r"ys\[0\].shape=\(21, 3\)"):
        cka_matrix(xs[:1], [rand(0, 21, 3)])
    with pytest.raises(LayerProbeError, match="non-empty"):
        cka_matrix([])


# ------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------


def test_weighted_replicate_equals_cka_of_resampled_rows():
    x, y = related(13, 30, 4, 6)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 30, size=(3, 30))
    w = torch.tensor(np.stack([np.bincount(i, minlength=30) for i in idx]), dtype=torch.float64)
    xc = torch.tensor(x - x.mean(0))
    yc = torch.tensor(y - y.mean(0))
    got = _weighted_linear_cka(xc @ xc.T, yc @ yc.T, w).numpy()
    want = [linear_cka(x[i], y[i]) for i in idx]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_bootstrap_deterministic_contains_estimate_and_narrows():
    x, y = related(14, 600, 5, 5, noise=2.0)
    est = linear_cka(x[:100], y[:100])
    ci = bootstrap_cka(x[:100], y[:100], n_boot=300, seed=1)
    assert ci == bootstrap_cka(x[:100], y[:100], n_boot=300, seed=1)
    assert ci != bootstrap_cka(x[:100], y[:100], n_boot=300, seed=2)
    assert ci[0] < est < ci[1]
    wide = bootstrap_cka(x[:100], y[:100], n_boot=300, level=0.99, seed=1)
    assert wide[0] < ci[0] and wide[1] > ci[1]
    big = bootstrap_cka(x, y, n_boot=300, seed=1)
    assert big[0] < linear_cka(x, y) < big[1]
    assert big[1] - big[0] < 0.7 * (ci[1] - ci[0])


def test_bootstrap_groups_resample_examples():
    rng = np.random.default_rng(15)
    n_ex, n_tok = 40, 6
    ex_x = rng.standard_normal((n_ex, 4))
    ex_y = ex_x @ rng.standard_normal((4, 4)) + rng.standard_normal((n_ex, 4))
    # tokens of one example are near copies of it: rows are far from independent
    x = np.repeat(ex_x, n_tok, axis=0) + 0.05 * rng.standard_normal((n_ex * n_tok, 4))
    y = np.repeat(ex_y, n_tok, axis=0) + 0.05 * rng.standard_normal((n_ex * n_tok, 4))
    groups = np.repeat(np.arange(n_ex) * 3 + 100, n_tok)  # arbitrary integer labels
    grouped = bootstrap_cka(x, y, n_boot=300, groups=groups)
    naive = bootstrap_cka(x, y, n_boot=300)
    assert grouped == bootstrap_cka(x, y, n_boot=300, groups=groups)
    assert grouped[0] < linear_cka(x, y) < grouped[1]
    assert grouped[1] - grouped[0] > 1.5 * (naive[1] - naive[0])
    with pytest.raises(LayerProbeError, match="groups"):
        bootstrap_cka(x, y, groups=groups[:-1])


def test_bootstrap_cap_and_undefined():
    x, y = related(16, 300, 3, 3)
    with pytest.warns(CKASubsampleWarning, match="max_n=100"):
        lo, hi = bootstrap_cka(x, y, n_boot=100, max_n=100)
    assert 0.0 <= lo < hi <= 1.0
    with pytest.warns(CKAUndefinedWarning):
        lo, hi = bootstrap_cka(np.ones((20, 2)), y[:20], n_boot=10)
    assert np.isnan(lo) and np.isnan(hi)
    with pytest.raises(LayerProbeError, match="level"):
        bootstrap_cka(x, y, level=1.5)
