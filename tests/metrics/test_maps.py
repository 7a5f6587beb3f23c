"""Cross-layer maps and the chunked/blocked engines behind linear CKA: every form and block
layout gives the float64 reference value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerprobe.metrics import gram, linear_cka, streaming
from layerprobe.metrics import maps as maps_mod
from layerprobe.metrics.cka import cka_maps, cka_matrix


def ref_linear(x, y):
    """Independent float64 reference: Gram form with an explicit centring matrix."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_))


def reps(seed, n, widths, offset=0.0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 6))
    return [np.tanh(base @ rng.standard_normal((6, d))) + 0.1 * rng.standard_normal((n, d)) + offset
            for d in widths]


@pytest.mark.parametrize("force", ["gram", "feature"])
@pytest.mark.parametrize("n", [40, 700])
def test_maps_equal_reference_in_both_forms(monkeypatch, force, n):
    # tiny blocks so that the Gram form really runs blockwise (several block pairs)
    monkeypatch.setattr(gram, "MIN_BLOCK", 16)
    monkeypatch.setattr(gram, "BLOCK_BYTES", 8 * 5 * 200**2)
    real = maps_mod._inner
    monkeypatch.setattr(maps_mod, "_inner", lambda z, offs, ranges: real(z, offs, ranges, form=force))
    xs, ys = reps(n, n, (8, 20, 14), offset=50.0), reps(n + 1, n, (9, 5))
    m = cka_maps(xs, ys)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m["xy"][i, j] == pytest.approx(ref_linear(x, y), rel=1e-10)
        for j, x2 in enumerate(xs):
            assert m["xx"][i, j] == pytest.approx(1.0 if i == j else ref_linear(x, x2), rel=1e-10)
    np.testing.assert_allclose(cka_matrix(xs, ys), m["xy"], rtol=1e-12)
    np.testing.assert_allclose(cka_matrix(ys), m["yy"], rtol=1e-12)


def test_gram_blocks_cover_rows_and_respect_memory():
    for n, m in [(5, 2), (1000, 2), (4000, 26), (20000, 26)]:
        blocks = gram.row_blocks(n, m)
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        side = max(e - s for s, e in blocks)
        assert m * side * side * 8 <= gram.BLOCK_BYTES or side == gram.MIN_BLOCK or len(blocks) == 1


def test_map_form_follows_map_cost():
    """MiniLM-like 7×7 map at n = 512, d = 384: the Gram form (the single-pair rule would have
    picked the feature form since n > d)."""
    calls = []
    real = gram.gram_inner
    maps_mod.gram_inner = lambda ops: calls.append(len(ops)) or real(ops)
    try:
        xs = [torch.randn(512, 384) for _ in range(7)]
        cka_maps(xs, xs)
        assert calls == [14]
        calls.clear()
        cka_maps([torch.randn(6000, 16) for _ in range(3)], [torch.randn(6000, 16)])
        assert calls == []  # n ≫ d: the feature form
    finally:
        maps_mod.gram_inner = real


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_chunked_feature_form_equals_reference(monkeypatch, chunk):
    monkeypatch.setattr(streaming, "CHUNK_ELEMS", chunk)
    x, y = reps(3, 400, (5, 3), offset=1e4)
    assert linear_cka(x, y) == pytest.approx(ref_linear(x - 1e4, y - 1e4), rel=1e-9)
    xf = torch.tensor(x, dtype=torch.float32)
    assert linear_cka(xf, y) == pytest.approx(ref_linear(xf.double().numpy(), y), rel=1e-9)


def test_streaming_merge_with_different_shifts():
    x, y = reps(4, 600, (6, 4), offset=3e3)
    a, b = streaming.StreamingCKA(), streaming.StreamingCKA()
    a.update(x[:50], y[:50])
    b.update(x[50:] * 1.0 + 0.0, y[50:])  # b's shift comes from other rows
    b.update(x[:0], y[:0])
    assert a.merge(b).compute() == pytest.approx(ref_linear(x, y), rel=1e-10)
    assert a.n == 600
    assert streaming.StreamingCKA().merge(a).compute() == pytest.approx(ref_linear(x, y), rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_maps_of_low_precision_tensors_equal_reference(dtype):
    """The map's own centring (range and first mean read in the input dtype, float64 residual
    mean) gives the float64 reference, also with a large common offset."""
    xs = [torch.from_numpy(r).to(dtype) for r in reps(3, 90, [5, 8, 3], offset=40.0)]
    ref = np.array([[ref_linear(a.double().numpy(), b.double().numpy()) for b in xs] for a in xs])
    np.testing.assert_allclose(cka_matrix(xs), ref, rtol=0, atol=1e-12)
    m = cka_maps(xs, [2.0 * x.float() + 1.0 for x in xs])  # CKA ignores offsets and isotropic scaling
    for key in ("xx", "xy", "yy"):
        np.testing.assert_allclose(m[key], ref, rtol=0, atol=1e-12)


def test_map_centring_reports_and_survives_extremes():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((50, 4))).float()
    big = x * 3e37  # finite in float32, but a float32 column sum overflows
    tiny = x * 1e-30
    nan = x.clone()
    nan[3, 1] = float("nan")
    const = torch.ones(50, 4)
    with pytest.warns(Warning, match="NaN or Inf.*constant|constant.*NaN or Inf"):
        m = cka_matrix([x, big, tiny, nan, const])
    np.testing.assert_allclose(m[:3, :3], 1.0, atol=1e-12)  # scale invariant, no overflow
    assert np.isnan(m[3]).all() and np.isnan(m[4]).all()
