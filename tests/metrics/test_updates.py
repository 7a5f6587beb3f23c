"""layerprobe.metrics.updates: the rank of a stacked (mixture-of-experts) update is per expert."""

from __future__ import annotations

import torch

from layerprobe.metrics.updates import matrix_updates, update_rank


def test_stacked_experts_are_ranked_per_expert_not_by_their_count():
    """A mixture of experts' fused (experts, out, in) update: each expert's rank, not the number of experts."""
    g = torch.Generator().manual_seed(0)
    experts = torch.stack([torch.randn(16, 5, generator=g, dtype=torch.float64)
                           @ torch.randn(5, 12, generator=g, dtype=torch.float64) for _ in range(4)])
    flat = update_rank(experts)  # (4, 16*12): at most 4
    assert flat["rank90"] <= 4
    per = update_rank(experts, stacked=True)
    ranks = [update_rank(e) for e in experts]
    assert per["rank90"] == max(r["rank90"] for r in ranks) and 3 <= per["rank90"] <= 5
    assert per["stable_rank"] == max(r["stable_rank"] for r in ranks)
    w0 = {"mlp.experts.gate_up_proj": torch.zeros_like(experts), "conv.weight": torch.zeros_like(experts)}
    w1 = {"mlp.experts.gate_up_proj": experts, "conv.weight": experts}
    out = matrix_updates(w0, w1)
    assert out["mlp.experts.gate_up_proj"]["rank90"] == per["rank90"]
    assert out["conv.weight"]["rank90"] == flat["rank90"]  # a conv kernel keeps the (out, -1) reshape
