"""Tests for layerprobe.metrics.drift: weight drift, parameter groups, update rank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from layerprobe.errors import LayerProbeError
from layerprobe.metrics.drift import (
    GROUPS,
    DriftAccumulator,
    block_anatomy,
    matrix_updates,
    max_abs_change,
    param_group,
    update_rank,
    weight_cosine,
    weight_drift,
)


def test_identical_weights_have_zero_drift():
    w = {"a": torch.randn(5, 3), "b": torch.randn(7)}
    assert weight_drift(w, w) == 0.0
    assert weight_cosine(w, w) == pytest.approx(1.0, abs=1e-15)
    assert max_abs_change(w, w) == 0.0


def test_hand_computed_example():
    # w0 = [1, 2 | 2], w1 = [1, 4 | 1]: Δ = [0, 2, -1], ‖Δ‖² = 5, ‖w0‖² = 9, ‖w1‖² = 18
    w0 = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[2.0]])}
    w1 = {"a": torch.tensor([1.0, 4.0]), "b": torch.tensor([[1.0]])}
    assert weight_drift(w0, w1) == pytest.approx(math.sqrt(5) / 3, rel=1e-15)
    assert weight_cosine(w0, w1) == pytest.approx(11 / math.sqrt(9 * 18), rel=1e-15)
    assert max_abs_change(w0, w1) == 2.0
    # the same through a sequence and a single concatenated array
    assert weight_drift(list(w0.values()), list(w1.values())) == weight_drift(w0, w1)
    assert weight_drift(np.array([1.0, 2, 2]), np.array([1.0, 4, 1])) == pytest.approx(math.sqrt(5) / 3)
    acc = DriftAccumulator()
    for k in w0:
        acc.add(k, w0[k], w1[k])
    r = acc.result()
    assert set(r) == {"weight_drift", "cosine", "max_abs_change", "n_params"}
    assert r["n_params"] == 3 and acc.n_tensors == 2


def test_direction_is_a_distance():
    w0 = torch.randn(100, generator=torch.Generator().manual_seed(0))
    small = w0 + 0.01 * torch.randn(100, generator=torch.Generator().manual_seed(1))
    large = w0 + 1.0 * torch.randn(100, generator=torch.Generator().manual_seed(1))
    assert 0 < weight_drift(w0, small) < weight_drift(w0, large)
    assert weight_cosine(w0, small) > weight_cosine(w0, large)


def test_mixed_dtypes_accumulate_in_float64():
    g = torch.Generator().manual_seed(2)
    w0 = torch.randn(1000, generator=g).bfloat16()
    w1 = w0.float() + 1e-4 * torch.randn(1000, generator=g)
    exact = np.linalg.norm(w1.double().numpy() - w0.double().numpy()) / np.linalg.norm(w0.double().numpy())
    assert weight_drift(w0, w1) == pytest.approx(exact, rel=1e-12)
    assert weight_drift({"p": w0}, {"p": w1.half()}) > 0
    # fp16 inputs whose squares overflow fp16 still work (accumulated in float64)
    big = torch.full((10,), 60000.0, dtype=torch.float16)
    assert weight_drift(big, big * 0.5) == pytest.approx(0.5)
    assert max_abs_change(big, big * 0.5) == 30000.0


def test_chunked_accumulator_equals_one_shot():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1001, 7, generator=g), torch.randn(1001, 7, generator=g)
    c, d = torch.randn(13, generator=g), torch.randn(13, generator=g)
    small = DriftAccumulator(chunk=97)
    small.add("a", a, b)
    small.add("c", c, d)
    one = DriftAccumulator(chunk=10**9)
    one.add("a", a, b)
    one.add("c", c, d)
    r1, r2 = small.result(), one.result()
    for key in ("weight_drift", "cosine"):
        assert r1[key] == pytest.approx(r2[key], rel=1e-13)
    assert r1["max_abs_change"] == r2["max_abs_change"]
    assert r1["n_params"] == r2["n_params"] == 1001 * 7 + 13
    whole = torch.cat([a.reshape(-1), c]), torch.cat([b.reshape(-1), d])
    assert r1["weight_drift"] == pytest.approx(
        float((whole[1].double() - whole[0].double()).norm() / whole[0].double().norm()), rel=1e-13
    )


def test_inputs_are_not_modified():
    a = torch.randn(50, dtype=torch.float64)
    b = a + 1.0
    b_copy = b.clone()
    weight_drift(a, b)
    assert torch.equal(b, b_copy)


def test_zero_reference_norm():
    z = torch.zeros(4)
    assert weight_drift(z, z) == 0.0
    assert weight_drift(z, torch.tensor([0.0, 1.0, 0.0, 0.0])) == math.inf
    assert weight_cosine(z, z) == 1.0
    assert math.isnan(weight_cosine(z, torch.ones(4)))
    assert DriftAccumulator().result() == {
        "weight_drift": 0.0, "cosine": 1.0, "max_abs_change": 0.0, "n_params": 0,
    }


def test_nan_propagates():
    a = torch.ones(5)
    b = a.clone()
    b[2] = float("nan")
    assert math.isnan(weight_drift(a, b))
    assert math.isnan(max_abs_change(a, b))


def test_key_and_shape_mismatch_errors():
    w0 = {"q.weight": torch.zeros(2, 2), "k.weight": torch.zeros(2, 2)}
    with pytest.raises(LayerProbeError, match=r"missing from w1: \['k.weight'\], extra in w1: \['v.weight'\]"):
        weight_drift(w0, {"q.weight": torch.zeros(2, 2), "v.weight": torch.zeros(2, 2)})
    with pytest.raises(LayerProbeError, match=r"'k.weight'.*\(2, 2\) vs after \(2, 3\)"):
        weight_drift(w0, {"q.weight": torch.zeros(2, 2), "k.weight": torch.zeros(2, 3)})
    with pytest.raises(LayerProbeError, match="lengths"):
        weight_drift([torch.zeros(2)], [torch.zeros(2), torch.zeros(2)])
    with pytest.raises(LayerProbeError, match="both be mappings"):
        weight_drift(w0, torch.zeros(2))
    with pytest.raises(LayerProbeError, match=r"'k.weight'"):
        block_anatomy(w0, {"q.weight": torch.zeros(2, 2), "k.weight": torch.zeros(3, 2)})


PARAM_GROUPS = [
    # BERT / RoBERTa / ELECTRA
    ("attention.self.query.weight", "attn.q"),
    ("attention.self.key.weight", "attn.k"),
    ("attention.self.value.weight", "attn.v"),
    ("attention.self.query.bias", "bias"),
    ("attention.output.dense.weight", "attn.out"),
    ("attention.output.dense.bias", "bias"),
    ("attention.output.LayerNorm.weight", "norm"),
    ("attention.output.LayerNorm.bias", "norm"),
    ("intermediate.dense.weight", "ffn.in"),
    ("output.dense.weight", "ffn.out"),
    ("output.LayerNorm.weight", "norm"),
    ("bert.encoder.layer.3.output.dense.weight", "ffn.out"),
    ("bert.encoder.layer.3.attention.output.dense.weight", "attn.out"),
    ("roberta.encoder.layer.0.intermediate.dense.weight", "ffn.in"),
    # DistilBERT
    ("attention.q_lin.weight", "attn.q"),
    ("attention.k_lin.weight", "attn.k"),
    ("attention.v_lin.weight", "attn.v"),
    ("attention.out_lin.weight", "attn.out"),
    ("sa_layer_norm.weight", "norm"),
    ("ffn.lin1.weight", "ffn.in"),
    ("ffn.lin2.weight", "ffn.out"),
    ("output_layer_norm.bias", "norm"),
    # DeBERTa-v2
    ("attention.self.query_proj.weight", "attn.q"),
    ("attention.self.key_proj.weight", "attn.k"),
    ("attention.self.value_proj.weight", "attn.v"),
    ("deberta.encoder.layer.0.attention.output.dense.weight", "attn.out"),
    ("deberta.encoder.rel_embeddings.weight", "embed.position"),
    # GPT-2
    ("attn.c_attn.weight", "attn.qkv"),
    ("attn.c_attn.bias", "bias"),
    ("attn.c_proj.weight", "attn.out"),
    ("mlp.c_fc.weight", "ffn.in"),
    ("mlp.c_proj.weight", "ffn.out"),
    ("ln_1.weight", "norm"),
    ("ln_2.bias", "norm"),
    ("transformer.ln_f.weight", "norm"),
    ("transformer.h.11.attn.c_proj.weight", "attn.out"),
    ("transformer.h.11.mlp.c_proj.weight", "ffn.out"),
    # Llama
    ("self_attn.q_proj.weight", "attn.q"),
    ("self_attn.k_proj.weight", "attn.k"),
    ("self_attn.v_proj.weight", "attn.v"),
    ("self_attn.o_proj.weight", "attn.out"),
    ("mlp.gate_proj.weight", "ffn.in"),
    ("mlp.up_proj.weight", "ffn.in"),
    ("mlp.down_proj.weight", "ffn.out"),
    ("input_layernorm.weight", "norm"),
    ("post_attention_layernorm.weight", "norm"),
    ("model.norm.weight", "norm"),
    # ViT
    ("attention.attention.query.weight", "attn.q"),
    ("attention.attention.key.weight", "attn.k"),
    ("attention.attention.value.weight", "attn.v"),
    ("attention.output.dense.weight", "attn.out"),
    ("layernorm_before.weight", "norm"),
    ("layernorm_after.bias", "norm"),
    # embeddings
    ("embeddings.word_embeddings.weight", "embed.word"),
    ("embeddings.position_embeddings.weight", "embed.position"),
    ("embeddings.token_type_embeddings.weight", "embed.type"),
    ("embeddings.LayerNorm.weight", "norm"),
    ("wte.weight", "embed.word"),
    ("wpe.weight", "embed.position"),
    ("model.embed_tokens.weight", "embed.word"),
    ("embeddings.patch_embeddings.projection.weight", "embed.other"),
    ("embeddings.patch_embeddings.projection.bias", "bias"),
    ("embeddings.cls_token", "embed.other"),
    ("cls_token", "embed.other"),
    ("vit.embeddings.position_embeddings", "embed.position"),
    # other architectures and leftovers
    ("self_attn.in_proj_weight", "attn.qkv"),
    ("self_attn.in_proj_bias", "bias"),
    ("self_attn.out_proj.weight", "attn.out"),
    ("layer.0.SelfAttention.o.weight", "attn.out"),
    ("layer.1.DenseReluDense.wi.weight", "ffn.in"),
    ("layer.1.DenseReluDense.wo.weight", "ffn.out"),
    ("pooler.dense.weight", "other"),
    ("classifier.weight", "other"),
    ("attention.self.distance_embedding.weight", "embed.position"),
    ("layer.0.SelfAttention.relative_attention_bias.weight", "embed.position"),
    ("layer.0.SelfAttention.q.weight", "attn.q"),
    ("embeddings_project.weight", "embed.other"),
    ("attention.query_key_value.weight", "attn.qkv"),
    ("attention.dense.weight", "attn.out"),
    ("mlp.dense_h_to_4h.weight", "ffn.in"),
    ("mlp.dense_4h_to_h.weight", "ffn.out"),
    ("mlp.fc1.weight", "ffn.in"),
    ("layer_norm1.weight", "norm"),
]


@pytest.mark.parametrize("name,group", PARAM_GROUPS)
def test_param_group_table(name, group):
    assert group in GROUPS
    assert param_group(name) == group


def test_update_rank_of_constructed_rank_two_matrix():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((20, 2)))
    v, _ = np.linalg.qr(rng.standard_normal((12, 2)))
    delta = 3.0 * np.outer(u[:, 0], v[:, 0]) + 1.0 * np.outer(u[:, 1], v[:, 1])
    r = update_rank(torch.tensor(delta, dtype=torch.float32))
    # σ = (3, 1): stable rank (9 + 1) / 9; top-1 holds 90% of the energy exactly
    assert r["stable_rank"] == pytest.approx(10 / 9, rel=1e-6)
    assert r["rank90"] == 1
    assert update_rank(delta, energy=0.95) == {"stable_rank": pytest.approx(10 / 9), "rank95": 2}
    assert update_rank(delta, energy=1.0)["rank100"] == 2
    # a conv kernel is reshaped to (out, -1)
    conv = torch.tensor(delta).reshape(20, 3, 2, 2)
    assert update_rank(conv)["stable_rank"] == pytest.approx(10 / 9, rel=1e-12)
    assert update_rank(torch.zeros(4, 4)) == {"stable_rank": 0.0, "rank90": 0}
    assert update_rank(torch.ones(5)) is None
    eye = update_rank(torch.eye(10))
    assert eye == {"stable_rank": pytest.approx(10.0), "rank90": 9}


def test_block_anatomy_on_tiny_block():
    w0 = {
        "attention.self.query.weight": torch.ones(4, 4),
        "attention.self.query.bias": torch.ones(4),
        "attention.self.key.weight": torch.ones(4, 4),
        "intermediate.dense.weight": torch.ones(8, 4),
        "output.dense.weight": torch.ones(4, 8),
        "output.LayerNorm.weight": torch.ones(4),
        "output.LayerNorm.bias": torch.zeros(4),
    }
    w1 = {k: v.clone() for k, v in w0.items()}
    w1["attention.self.query.weight"] += torch.outer(torch.arange(4.0), torch.ones(4))  # rank 1
    w1["output.LayerNorm.bias"] += 0.5
    w1["attention.self.query.bias"] = w1["attention.self.query.bias"].bfloat16()
    a = block_anatomy(w0, w1)
    assert list(a) == ["attn.q", "attn.k", "ffn.in", "ffn.out", "norm", "bias"]
    q = a["attn.q"]
    assert q["weight_drift"] == pytest.approx(math.sqrt(4 * (0 + 1 + 4 + 9)) / 4)
    assert q["max_abs_change"] == 3.0
    assert (q["n_params"], q["n_tensors"]) == (16, 1)
    assert q["stable_rank"] == pytest.approx(1.0) and q["rank90"] == 1
    assert q["rank_param"] == "attention.self.query.weight"
    assert a["attn.k"]["weight_drift"] == 0.0 and a["attn.k"]["stable_rank"] == 0.0
    norm = a["norm"]
    assert (norm["n_params"], norm["n_tensors"]) == (8, 2)
    assert norm["weight_drift"] == pytest.approx(0.5)  # ‖Δ‖ = ‖0.5·1₄‖ = 1, ‖w0‖ = 2
    assert "stable_rank" not in norm
    assert a["bias"]["weight_drift"] == 0.0
    assert "stable_rank" not in block_anatomy(w0, w1, with_rank=False)["attn.q"]
    # totals are consistent with the one code path
    total = DriftAccumulator()
    for k in w0:
        total.add(k, w0[k], w1[k])
    assert sum(g["n_params"] for g in a.values()) == total.result()["n_params"]


def test_matrix_updates():
    w0 = {"a.weight": torch.zeros(6, 5), "a.bias": torch.zeros(6), "b.weight": torch.zeros(3, 3)}
    w1 = {"a.weight": torch.zeros(6, 5), "a.bias": torch.ones(6), "b.weight": torch.eye(3)}
    w1["a.weight"][:2, :2] = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    m = matrix_updates(w0, w1)
    assert list(m) == ["a.weight", "b.weight"]
    assert m["a.weight"] == {"shape": (6, 5), "stable_rank": pytest.approx(5 / 4), "rank90": 2}
    assert m["b.weight"]["rank90"] == 3


# ------------------------------------------------------------------------------------------
# The chunked, threaded accumulation: float64-reference values, identical for any thread count
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pair_sums_match_float64_reference_and_ignore_thread_count(dtype):
    from layerprobe.metrics import drift as drift_mod

    g = torch.Generator().manual_seed(0)
    a = torch.randn(1_000_003, generator=g).to(dtype)
    b = (a.double() + 1e-3 * torch.randn(1_000_003, generator=g, dtype=torch.float64)).to(dtype)
    ad, bd = a.double(), b.double()
    ref = (float(ad @ ad), float(bd @ bd), float(ad @ bd), float((bd - ad) @ (bd - ad)),
           float((bd - ad).abs().max()))
    runs = []
    saved = torch.get_num_threads()
    try:
        for torch_threads, workers in [(1, 1), (2, 2), (1, 3), (2, 1)]:
            torch.set_num_threads(torch_threads)
            runs.append(drift_mod.pair_sums(a, b, chunk=1 << 14, threads=workers))
    finally:
        torch.set_num_threads(saved)
    assert all(r == runs[0] for r in runs)  # byte-identical whatever the threads
    for got, want in zip(runs[0], ref):
        assert got == pytest.approx(want, rel=1e-12)
    acc = DriftAccumulator(chunk=1 << 14)
    assert acc.add("w", a, b) == (True, True)
    assert acc.result()["weight_drift"] == pytest.approx(math.sqrt(ref[3] / ref[0]), rel=1e-9)


def test_add_reports_non_finite_sides():
    acc = DriftAccumulator()
    assert acc.add("w", torch.tensor([1.0, float("inf")]), torch.tensor([1.0, 2.0])) == (False, True)
    assert acc.add("v", torch.tensor([1.0, 2.0]), torch.tensor([float("nan"), 2.0])) == (True, False)
    assert math.isnan(acc.result()["max_abs_change"])


def test_cosine_of_a_tiny_update_next_to_huge_weights():
    """was: Σb² and Σab derived from a's sums cancelled to garbage (cosine null) when ‖b‖ ≪ ‖a‖."""
    from layerprobe.metrics.drift import DriftAccumulator

    g = torch.Generator().manual_seed(0)
    a, b = 1e4 * torch.randn(300, 70, generator=g), 1e-4 * torch.randn(300, 70, generator=g)
    acc = DriftAccumulator()
    acc.add("w", a, b)
    a64, b64 = a.double(), b.double()
    ref = float((a64 * b64).sum() / (a64.norm() * b64.norm()))
    assert acc.result()["cosine"] == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert acc.sq_w1 == pytest.approx(float((b64 * b64).sum()), rel=1e-12)
    zero = DriftAccumulator()
    zero.add("w", a, torch.zeros_like(a))
    assert zero.sq_w1 == 0.0 and math.isnan(zero.result()["cosine"])  # one side all-zero: undefined


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 0), (0, 3, 2), (2, 0, 3), (0, 0, 0)])
def test_update_rank_of_an_empty_update(shape):
    """was: RuntimeError (reshape of 0 elements into (0, -1) is ambiguous) for zero-element tensors on both sides."""
    assert update_rank(torch.zeros(shape)) == {"stable_rank": 0.0, "rank90": 0}
    assert matrix_updates({"w": torch.zeros(shape)}, {"w": torch.zeros(shape)})["w"]["rank90"] == 0
