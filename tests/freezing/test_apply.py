"""freeze/unfreeze, the online FreezePolicy, and the freeze-list CLI on tiny BERTs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_bert
from layerprobe import LayerProbeError, find_blocks, freeze, parameter_names, unfreeze
from layerprobe.cli import main
from layerprobe.freezing.apply import bottom_prefix, trainable_parameters
from layerprobe import FreezePolicy


def _count(m, prefix):
    return sum(p.numel() for n, p in m.named_parameters() if n.startswith(prefix))


def test_freeze_unfreeze_counts():
    m = tiny_bert(0, head=True)
    total = trainable_parameters(m)
    assert total == sum(p.numel() for p in m.parameters())
    emb, l0 = _count(m, "bert.embeddings."), _count(m, "bert.encoder.layer.0.")
    assert freeze(m, ["embeddings", "block.0"]) == total - emb - l0
    assert all(not p.requires_grad for n, p in m.named_parameters() if n.startswith("bert.embeddings."))
    assert m.classifier.weight.requires_grad and m.bert.encoder.layer[1].output.dense.weight.requires_grad
    assert unfreeze(m, ["block.0"]) == total - emb
    assert unfreeze(m, ["embeddings"]) == total
    with pytest.raises(LayerProbeError, match="unknown entries"):
        freeze(m, ["block.9"])


def test_parameter_names_and_bottom_prefix():
    m = tiny_bert(0, head=True)
    b = find_blocks(m)
    assert bottom_prefix(b, 2) == ["embeddings", "block.0", "block.1"]
    assert bottom_prefix(b, 1, embeddings=False) == ["block.0"]
    names = parameter_names(m, ["block.1"])
    assert names and all(n.startswith("bert.encoder.layer.1.") for n in names)
    assert len(names) == len(list(m.bert.encoder.layer[1].parameters()))


def test_adamw_skips_frozen_params_even_with_weight_decay():
    m = tiny_bert(0, head=True).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randint(5, 60, (4, 7))
    y = torch.tensor([0, 1, 0, 1])
    m(input_ids=x, labels=y).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    freeze(m, ["embeddings", "block.0"])  # frozen after the optimizer already holds state for them
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for _ in range(2):
        m(input_ids=x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for n, p in m.named_parameters():
        if n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")):
            assert p.grad is None and torch.equal(p, before[n]), n
    assert not torch.equal(m.bert.encoder.layer[3].output.dense.weight,
                           before["bert.encoder.layer.3.output.dense.weight"])


def _changes(**kw):
    base = {"embeddings": 1.0, "block.0": 1.0, "block.1": 1.0, "block.2": 1.0, "block.3": 1.0}
    base.update({k.replace("_", "."): v for k, v in kw.items()})
    return base


def test_policy_freezes_only_a_bottom_prefix_after_patience():
    m, pol = tiny_bert(0, head=True), FreezePolicy(threshold=0.01, patience=2)
    b = find_blocks(m)
    still = _changes(embeddings=0.0, block_0=0.001, block_2=0.0)  # block.1 moves, block.2 is still
    assert pol.decide(10, still, m, b) == []  # patience 2 not reached
    assert pol.decide(20, still, m, b) == ["embeddings", "block.0"]  # block.2 blocked by block.1
    assert not m.bert.encoder.layer[0].attention.self.query.weight.requires_grad
    assert m.bert.encoder.layer[2].attention.self.query.weight.requires_grad
    log = {(r["step"], r["block"]): r for r in pol.log}
    assert len(pol.log) == 10  # one decision per entry per check
    assert log[(20, "block.2")]["action"] == "train" and "block.1 below" in log[(20, "block.2")]["reason"]
    assert log[(20, "block.1")]["action"] == "train" and log[(20, "block.1")]["change"] == 1.0
    assert log[(20, "block.0")]["action"] == "freeze" and log[(20, "block.0")]["streak"] == 2
    assert log[(20, "block.0")]["trainable_params"] == trainable_parameters(m)
    # block.1 settles: it joins the prefix after 2 still checks; block.2 follows (its streak kept counting)
    still2 = _changes(embeddings=0.0, block_0=0.0, block_1=0.0, block_2=0.0)
    assert pol.decide(30, still2, m, b) == []
    assert pol.decide(40, still2, m, b) == ["block.1", "block.2"]
    assert pol.frozen == ["embeddings", "block.0", "block.1", "block.2"]
    # min_train_blocks=1: block.3 (the top) never freezes
    assert pol.decide(50, _changes(block_3=0.0), m, b) == []
    assert pol.decide(60, _changes(block_3=0.0), m, b) == []
    assert m.bert.encoder.layer[3].output.dense.weight.requires_grad
    assert "min_train_blocks" in pol.log[-1]["reason"]
    df = pol.log_frame()
    assert set(df["action"]) == {"train", "freeze", "frozen"}


def test_policy_nan_and_every_n_steps():
    m = tiny_bert(0, head=True)
    pol = FreezePolicy(threshold=0.5, patience=1, every_n_steps=20)
    b = find_blocks(m)
    assert pol.decide(10, _changes(embeddings=0.0), m, b) == [] and pol.log == []  # not a decision step
    assert pol.decide(20, _changes(embeddings=math.nan), m, b) == []  # NaN is never "still"
    assert pol.decide(40, _changes(embeddings=0.0), m, b) == ["embeddings"]
    with pytest.raises(LayerProbeError):
        FreezePolicy(patience=0)


def test_cli_freeze_list(tmp_path, capsys):
    m = tiny_bert(0, head=True)
    m.save_pretrained(tmp_path / "model")
    from layerprobe import compare
    from layerprobe.freezing.rule import Thresholds

    c = compare(m, m, thresholds=Thresholds(max_drift=0.1), progress=False)  # nothing moved: all but the top
    freeze = c.recommendation.freeze
    assert freeze == ["embeddings", "block.0", "block.1", "block.2"]
    (tmp_path / "comparison.json").write_text(c.to_json())
    out = tmp_path / "freeze.txt"
    assert main(["freeze-list", str(tmp_path / "comparison.json"), str(tmp_path / "model"), "-o", str(out)]) == 0
    names = out.read_text().splitlines()
    assert names == parameter_names(m, freeze)
    assert names[0].startswith("bert.embeddings.") and names[-1].startswith("bert.encoder.layer.2.")
    capsys.readouterr()
    assert main(["freeze-list", str(tmp_path / "comparison.json"), str(tmp_path / "model")]) == 0
    assert capsys.readouterr().out.splitlines() == names


def test_cli_freeze_list_bad_input(tmp_path, capsys):
    m = tiny_bert(0, head=True)
    m.save_pretrained(tmp_path / "model")
    (tmp_path / "bad.json").write_text("{}")
    assert main(["freeze-list", str(tmp_path / "bad.json"), str(tmp_path / "model")]) == 2
    (tmp_path / "c.json").write_text(json.dumps({"recommendation": {"freeze": ["block.99"]}}))
    assert main(["freeze-list", str(tmp_path / "c.json"), str(tmp_path / "model")]) == 2
    assert main(["freeze-list", str(tmp_path / "c.json"), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("layerprobe: error") == 3
