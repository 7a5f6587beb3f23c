"""The freeze study's measurements: gradient norms per entry (against a hand computation), the time their
hooks take (subtracted from training CPU), and the full-step CPU reference."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import tiny_bert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "analyses"))

import study_measure as sm  # noqa: E402

from layerprobe.model.blocks import find_blocks  # noqa: E402


def test_grad_norms_per_entry_match_a_hand_computation_and_hooks_are_timed(tokenizer, texts):
    m = tiny_bert(0, head=True).train()
    blocks = find_blocks(m)
    rec = sm.GradNormRecorder(m, blocks)
    batch = tokenizer(texts[:8], padding=True, return_tensors="pt")
    m(**batch, labels=torch.tensor([i % 2 for i in range(8)])).loss.backward()
    rec.check(1)
    want_l1, want_sq = {}, {}
    for n, p in m.named_parameters():
        e = blocks.entry_of(n)
        if e is not None and p.grad is not None:
            want_l1[e.name] = want_l1.get(e.name, 0.0) + float(p.grad.double().abs().sum())
            want_sq[e.name] = want_sq.get(e.name, 0.0) + float(p.grad.double().pow(2).sum())
    row = rec.rows[0]
    for i, name in enumerate(rec.names):
        assert row["l1"][i] == pytest.approx(want_l1[name], rel=1e-9)
        assert row["l2"][i] == pytest.approx(want_sq[name] ** 0.5, rel=1e-6)  # squares taken in float32
    assert rec.cpu_seconds > 0.0
    rec.close()
    before = rec.cpu_seconds
    m.zero_grad()
    m(**batch, labels=torch.tensor([0] * 8)).loss.backward()
    assert rec.cpu_seconds == before  # hooks removed


def test_reference_step_leaves_the_model_as_it_was(tokenizer, texts):
    m = tiny_bert(0, head=True)
    for p in m.bert.embeddings.parameters():
        p.requires_grad_(False)
    state = {n: p.detach().clone() for n, p in m.named_parameters()}
    t = sm.reference_step_cpu(m, tokenizer, texts, [i % 2 for i in range(len(texts))], 16, 8, 1e-3)
    assert t > 0.0
    assert all(torch.equal(p, state[n]) for n, p in m.named_parameters())
    assert not any(p.requires_grad for p in m.bert.embeddings.parameters())
