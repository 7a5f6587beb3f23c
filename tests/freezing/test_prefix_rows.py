"""Row helpers of the prefix cache: which block-call arguments are per example, content keys."""

from __future__ import annotations

import torch

from layerprobe.freezing.prefix_rows import batch_keys, no_store, no_store_depth, rows_of


def test_rows_of_indexes_per_example_arguments_only():
    n, w, rows = 4, 6, torch.tensor([1, 3])
    mask4 = torch.arange(n * w, dtype=torch.float).reshape(n, 1, 1, w)
    rotary = torch.randn(n, w, 8)
    ids2 = torch.arange(n * w).reshape(n, w)
    rel_emb = torch.randn(n, w)  # a float table that happens to be (n, w): kept (DeBERTa's relative embeddings)
    bcast = torch.randn(1, 1, w, w)
    cache_pos = torch.arange(w)
    out = rows_of((mask4, (rotary, rotary), ids2, rel_emb, bcast, cache_pos, None), rows, n, w)
    assert torch.equal(out[0], mask4[[1, 3]]) and torch.equal(out[1][0], rotary[[1, 3]])
    assert torch.equal(out[2], ids2[[1, 3]])
    assert out[3] is rel_emb and out[4] is bcast and out[5] is cache_pos and out[6] is None


def test_batch_keys_are_content_keys_and_no_store_nests():
    ids = torch.tensor([[2, 5, 6, 0], [0, 2, 5, 6], [2, 5, 6, 0]])
    mask = (ids != 0).long()
    b = batch_keys({"input_ids": ids, "attention_mask": mask})
    assert b["runs"] == [(0, 3), (1, 3), (0, 3)] and b["width"] == 4
    assert b["keys"][0] == b["keys"][2] != b["keys"][1]  # same tokens, different start: different key
    holed = mask.clone()
    holed[0, 1] = 0
    assert batch_keys({"input_ids": ids, "attention_mask": holed}) is None
    assert no_store_depth() == 0
    with no_store():
        with no_store():
            assert no_store_depth() == 2
    assert no_store_depth() == 0
