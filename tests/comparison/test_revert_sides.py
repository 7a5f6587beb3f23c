"""compare(revert=True) on hostile and unusual sides: a LoRA adapter as the tuned side, a decoder with a
tied head, two families, a base head for another number of labels, inputs that cannot run it."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_bert
from layerprobe import compare
from layerprobe.cli import main
from layerprobe.errors import LayerProbeError
from layerprobe.options import CKAOptions, ProbeOptions

OPTS = {"probe_options": ProbeOptions(max_length=16), "cka_options": CKAOptions(ci=False)}


def _tuned(seed: int = 1, scale: float = 0.05, **kw):
    m = tiny_bert(0, head=True, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m


def test_a_lora_adapter_as_the_tuned_side_is_reverted_by_its_update(tmp_path, tokenizer, texts):
    """Before: 'base has no weight for ...query.base_layer.weight'. Now the prefix's LoRA update is
    removed (lora_B = 0); the rows equal the revert test on the merged model with the base's prefix."""
    peft = pytest.importorskip("peft")
    from layerprobe.freezing.revert import revert_test
    from layerprobe.model.batching import collate
    from layerprobe.snapshot.take import tokenize_probe

    tiny_bert(0).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    cfg = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=2, lora_alpha=4, target_modules=["query", "value"],
                          init_lora_weights=False)
    pm = peft.get_peft_model(tiny_bert(0, head=True), cfg)
    pm.save_pretrained(tmp_path / "adapter")
    c = compare(str(tmp_path / "base"), str(tmp_path / "adapter"), texts[:16], revert=True, **OPTS)
    rows = c.meta["revert"]["rows"]
    merged = pm.merge_and_unload().eval()
    state = {f"bert.{n}": t for n, t in tiny_bert(0).state_dict().items()}
    examples, _ = tokenize_probe(tokenizer, texts[:16], 16)
    ref = revert_test(merged, state, [collate(examples, tokenizer.pad_token_id)])
    assert [r["k"] for r in rows] == [0, 1, 2, 3, 4]
    for got, want in zip(rows, ref):
        assert got["kl"] == pytest.approx(want["kl"], rel=1e-4, abs=1e-12)
        assert got["agreement"] == want["agreement"]
    assert rows[0]["kl"] == 0.0 and rows[4]["kl"] > 0  # no LoRA in the embeddings; every block has one


def test_a_decoder_with_a_tied_head_says_the_head_is_reverted_with_the_embeddings(tmp_path, tokenizer, texts):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    base, tuned = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    c = compare(base, tuned, texts[:16], tokenizer, revert=True, **OPTS)
    assert [r["k"] for r in c.meta["revert"]["rows"]] == [0, 1, 2]
    assert any("transformer.wte.weight is tied to lm_head.weight" in n for n in c.recommendation.notes)
    untied = GPT2LMHeadModel(GPT2Config(**{**cfg.to_dict(), "tie_word_embeddings": False}))
    c = compare(untied, untied, texts[:16], tokenizer, revert=True, **OPTS)
    assert not any("tied" in n for n in c.recommendation.notes)
    assert [r["kl"] for r in c.meta["revert"]["rows"]] == [0.0, 0.0, 0.0]


def test_two_families_are_refused_before_the_revert_test_runs(tokenizer, texts):
    """Before: 'the revert test cannot run: ... has no weight for transformer.wte.weight'."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=4, n_head=2))
    with pytest.raises(LayerProbeError, match="parameter keys differ in embeddings .*different architectures"):
        compare(tiny_bert(0), gpt, texts[:16], tokenizer, revert=True, **OPTS)


def test_a_base_head_for_another_number_of_labels_is_listed_not_an_error(tokenizer, texts):
    """Base weights matter only for the prefix: a 5-label base head against a 2-label tuned head was
    'parameter shapes differ for other/classifier.weight' (exit 2); now it is listed in other.unmatched
    with a note, and the revert rows equal those against a 2-label base with the same prefix."""
    tuned = _tuned()
    c5 = compare(tiny_bert(0, head=True, num_labels=5), tuned, texts[:16], tokenizer, revert=True, **OPTS)
    c2 = compare(tiny_bert(0, head=True), tuned, texts[:16], tokenizer, revert=True, **OPTS)
    assert c5.other["unmatched"] == ["classifier.bias", "classifier.weight"]
    assert any("classifier.bias (+1 more) outside the entries has another shape" in n for n in c5.recommendation.notes)
    assert c5.meta["revert"] == c2.meta["revert"]
    assert [e["weight_drift"] for e in c5.blocks] == [e["weight_drift"] for e in c2.blocks]


def test_rows_that_the_given_predictor_does_not_read_are_said_so(tokenizer, texts):
    from layerprobe.freezing.predict import Predictor
    from layerprobe.freezing.rule import recommend

    c = compare(tiny_bert(0, head=True), _tuned(), texts[:16], tokenizer, revert=True, **OPTS)
    cka_rel = Predictor("cka_rel", (0.0, 1.0), (0.0, 0.2), (0.0, 0.0), ("x",))
    r = recommend(c.blocks, revert=c.meta["revert"]["rows"], predictor=cka_rel)
    assert any("revert test's rows are not used by the cka_rel predictor (no revert predictor was given)" in n
               for n in r.notes)


def test_a_default_revert_test_that_cannot_finish_is_a_note_not_an_error(tokenizer, texts, monkeypatch):
    """compare runs the revert test by default where it can: a revert test that cannot finish (here: more
    reference outputs than the bound) must not stop the comparison (revert=None: a note); asked for
    (revert=True): one line."""
    import layerprobe.comparison.compare as cmp
    from layerprobe.freezing import revert as rv

    monkeypatch.setattr(cmp, "shipped_prefers_revert", lambda: True)  # whatever the study's latest fit reads
    monkeypatch.setattr(rv, "MAX_REVERT_OUTPUTS", 1)
    c = compare(tiny_bert(0, head=True), _tuned(), texts[:16], tokenizer, **OPTS)
    assert c.meta.get("revert") is None
    assert any("revert test not run: the tuned model's outputs on 16 probe texts hold 16 x 2 values" in n
               for n in c.recommendation.notes)
    with pytest.raises(LayerProbeError, match="the revert test cannot run: the tuned model's outputs on 16 probe"):
        compare(tiny_bert(0, head=True), _tuned(), texts[:16], tokenizer, revert=True, **OPTS)


@pytest.mark.parametrize("case", ["weights_tuned", "snapshots", "no_probe", "weights_both"])
def test_cli_revert_that_cannot_run_is_one_line(f3, capsys, case):
    good, probe = str(f3["good"]), str(f3["probe"])
    args = {"weights_tuned": [good, str(f3["b"]), "--probe", probe],
            "snapshots": [str(f3["snap"]), str(f3["snap_b"])],
            "no_probe": [good, good],
            "weights_both": [str(f3["a"]), str(f3["b"]), "--probe", probe]}[case]
    assert main(["compare", *args, "--revert", "--quiet", "--max-length", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "revert test" in err and "Traceback" not in err


def test_cli_revert_with_a_weights_only_base_runs(f3, capsys, tmp_path):
    """The base's weights are all the revert test needs of it: a .safetensors base and a model tuned side."""
    from safetensors.torch import save_file

    sd = {f"bert.{k}": v.contiguous() for k, v in tiny_bert(0).state_dict().items()}
    save_file(sd, str(tmp_path / "base.safetensors"))
    assert main(["compare", str(tmp_path / "base.safetensors"), str(f3["good"]), "--probe", str(f3["probe"]),
                 "--revert", "--quiet", "--max-length", "16", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["meta"]["revert"]["rows"]
    assert [r["kl"] for r in rows] == [0.0] * 5  # the same weights


def test_a_long_probe_is_thinned_evenly_for_the_revert_test(tokenizer, texts, monkeypatch):
    import layerprobe.comparison.revert_sides as rs
    from layerprobe.freezing.revert import revert_test
    from layerprobe.model.batching import collate
    from layerprobe.snapshot.take import tokenize_probe

    monkeypatch.setattr(rs, "MAX_REVERT_TEXTS", 8)
    base, tuned = tiny_bert(0, head=True), tiny_bert(0, head=True)
    with torch.no_grad():
        for p in tuned.bert.encoder.layer[1].parameters():
            p.add_(0.3 * torch.randn_like(p))
    probe = texts[:24]
    c = compare(base, tuned, probe, tokenizer, revert=True, probe_options=ProbeOptions(max_length=16),
                cka_options=CKAOptions(n_boot=20))
    chosen = [probe[round(i * 23 / 7)] for i in range(8)]
    examples, _ = tokenize_probe(tokenizer, chosen, 16)
    ref = revert_test(tuned, {n: p for n, p in base.state_dict().items()}, [collate(examples, tokenizer.pad_token_id)])
    assert [r["kl"] for r in c.meta["revert"]["rows"]] == pytest.approx([r["kl"] for r in ref], rel=1e-6, abs=1e-12)
