"""PairReader: read-ahead into a reused ring gives the same tensors, in order, with errors at their pair."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from conftest import tiny_bert
from safetensors.torch import save_file

from layerprobe.io.checkpoints import SafetensorsSource, open_checkpoint
from layerprobe.comparison.compare import compare
from layerprobe.errors import LayerProbeError
from layerprobe.metrics import drift as drift_mod
from layerprobe.io.pair_reader import PairReader, _Ring


def _files(tmp_path, shapes, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    a = {f"t{i}": torch.randn(s, generator=g).to(dtype) for i, s in enumerate(shapes)}
    b = {k: (v.float() + 0.1 * torch.randn(v.shape, generator=g)).to(dtype) for k, v in a.items()}
    pa, pb = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_file(a, pa)
    save_file(b, pb)
    return a, b, pa, pb


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pairs_equal_the_files_in_order(tmp_path, prefetch, dtype):
    # mixed sizes (the biggest in the middle, zero-size and odd sizes) make the ring wrap
    shapes = [(7,), (300, 5), (0,), (1000, 33), (3,), (64, 64), (1,), (999,), (300, 5), (2, 0)]
    a, b, pa, pb = _files(tmp_path, shapes, dtype)
    keys = [(k, k) for k in a]
    with open_checkpoint(pa) as sa, open_checkpoint(pb) as sb:
        got = [(t0.clone(), t1.clone()) for t0, t1 in PairReader(prefetch).pairs(sa.get, sb.get, keys * 3)]
    want = [(a[k], b[k]) for k, _ in keys * 3]
    assert len(got) == len(want)
    for (g0, g1), (w0, w1) in zip(got, want):
        assert g0.dtype == w0.dtype and torch.equal(g0, w0) and torch.equal(g1, w1)


def test_buffer_is_reused_and_bounded(tmp_path):
    a, b, pa, pb = _files(tmp_path, [(1000, 10), (10,), (500, 10), (1000, 10)])
    reader = PairReader()
    with open_checkpoint(pa) as sa, open_checkpoint(pb) as sb:
        ptrs = set()
        for _ in range(2):  # a second call keeps the same buffer
            for t0, _ in reader.pairs(sa.get, sb.get, [(k, k) for k in a]):
                ptrs.add(t0.untyped_storage().data_ptr())
        largest = 1000 * 10 * 4
        assert reader._arena is not None and reader._arena.numel() <= 2.5 * largest + 64
        assert len(ptrs) == 1  # every tensor is a view of the one ring buffer


def test_ring_is_first_in_first_out():
    ring = _Ring(torch.empty(100, dtype=torch.uint8))
    assert ring.alloc(40) == 0 and ring.alloc(40) == 40
    assert ring._fit(40) is None  # 80..100 too small, 0..40 still live
    ring.free_oldest()
    assert ring.alloc(30) == 0  # wraps to the front
    assert ring._fit(20) is None  # 30..40 is too small
    ring.free_oldest()
    ring.free_oldest()
    assert ring.alloc(100) == 0  # empty: from the start


def test_error_is_raised_at_its_pair_and_the_thread_stops(tmp_path):
    a, b, pa, pb = _files(tmp_path, [(10,)] * 6)
    class Broken(SafetensorsSource):
        def get(self, name, out=None):
            if name == "t3":
                raise LayerProbeError("cannot read tensor 't3'", path=self.path)
            return super().get(name, out)

    with open_checkpoint(pa) as sa, Broken(pb) as sb:
        keys = [(k, k) for k in a]
        seen = []
        with pytest.raises(LayerProbeError, match="cannot read tensor 't3'"):
            for t0, _ in PairReader().pairs(sa.get, sb.get, keys):
                seen.append(t0.clone())
        assert len(seen) == 3
        # a consumer that stops early stops the reader
        before = threading.active_count()
        stream = PairReader().pairs(sa.get, sb.get, [(k, k) for k in a] * 50)
        next(stream)
        stream.close()
        assert threading.active_count() == before


def test_weight_comparison_is_identical_whatever_the_reading_and_threads(tmp_path, monkeypatch, bert):
    """compare() of two model files: same JSON with read-ahead on/off and 1 or 3 drift workers."""
    from safetensors.torch import save_model

    p0, p1 = str(tmp_path / "m0.safetensors"), str(tmp_path / "m1.safetensors")
    save_model(bert, p0)
    save_model(tiny_bert(seed=1), p1)
    runs = []
    for prefetch, threads in [(True, None), (False, 1), (True, 3)]:
        monkeypatch.setattr("layerprobe.io.pair_reader.PREFETCH", prefetch)
        monkeypatch.setattr(drift_mod, "THREADS", threads or drift_mod.THREADS)
        runs.append(json.dumps(compare(p0, p1).to_dict(), sort_keys=True))
    assert runs[0] == runs[1] == runs[2]


def test_nan_message_from_the_sums_is_unchanged(tmp_path, bert):
    from safetensors.torch import save_model

    p0, p1 = str(tmp_path / "m0.safetensors"), str(tmp_path / "nan.safetensors")
    save_model(bert, p0)
    sd = {k: v.clone() for k, v in bert.state_dict().items()}
    name = next(k for k in sd if k.endswith("layer.1.output.dense.weight"))
    sd[name].view(-1)[[0, 5]] = torch.tensor([float("nan"), float("inf")])
    bert.load_state_dict(sd)
    save_model(bert, p1)
    with pytest.raises(LayerProbeError, match=r"nan\.safetensors: non-finite values \(NaN/Inf\) in parameter "
                                              r"'block\.1/output\.dense\.weight': 2 of \d+ values \(1 NaN, 1 Inf\)"):
        compare(p0, p1)
