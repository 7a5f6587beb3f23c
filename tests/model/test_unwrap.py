"""Wrapped and big models: DDP / compile / DataParallel unwrap; device_map offload (issue 12)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

import layerprobe as lp
from layerprobe.model.unwrap import unwrap


def _same(s1, s2):
    assert s1.names == s2.names
    for g in s1.weights:
        assert sorted(s1.weights[g]) == sorted(s2.weights[g])
        for k in s1.weights[g]:
            assert torch.equal(s1.weights[g][k], s2.weights[g][k])
    for n in s1.names:
        assert torch.allclose(s1.representations[n], s2.representations[n], atol=1e-6)


def test_compiled_and_dataparallel_snapshot_like_plain(bert, tokenizer, texts):
    plain = lp.take_snapshot(bert, tokenizer, texts[:8], progress=False)
    _same(lp.take_snapshot(torch.compile(bert), tokenizer, texts[:8], progress=False), plain)
    _same(lp.take_snapshot(torch.nn.DataParallel(bert), tokenizer, texts[:8], progress=False), plain)


def test_ddp_snapshot_like_plain(bert, tokenizer, texts, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(bert)
        assert unwrap(ddp) is bert
        _same(lp.take_snapshot(ddp, tokenizer, texts[:8], progress=False),
              lp.take_snapshot(bert, tokenizer, texts[:8], progress=False))
        assert lp.compare(ddp, bert).blocks[0]["weight_drift"] == 0.0
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("offload") / "m"
    tiny_bert(0).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_device_map_offloaded_model_representation_only(saved, tokenizer, texts, tmp_path):
    from transformers import BertModel

    m = BertModel.from_pretrained(saved, device_map={"embeddings": "cpu", "encoder.layer.0": "cpu",
                                                     "encoder.layer.1": "disk", "encoder.layer.2": "disk",
                                                     "encoder.layer.3": "cpu", "pooler": "cpu"},
                                  offload_folder=str(tmp_path / "off"))
    assert any(p.is_meta for p in m.parameters())
    snap = lp.take_snapshot(m, tokenizer, texts[:8], progress=False)
    assert snap.has_representations and not snap.weights and "offloaded" in snap.meta["weights_missing"]
    assert "weights" in repr(snap) and len(repr(snap)) < 200
    plain = lp.take_snapshot(tiny_bert(0), tokenizer, texts[:8], progress=False)
    c = lp.compare(snap, plain)  # CKA from the snapshot, no drift
    assert all(e["cka"] == pytest.approx(1.0, abs=1e-5) and e["weight_drift"] is None for e in c.blocks)
    assert any("weight drift not computed" in n for n in c.recommendation.notes)
    assert c.blocks[1]["n_params"] == sum(t.numel() for t in plain.weights["block.0"].values())  # shapes kept
    c2 = lp.compare(snap, plain, weights_a=str(saved))  # drift from the weight files
    assert all(e["weight_drift"] == 0.0 for e in c2.blocks)
