"""take_snapshot / Snapshot.save / Snapshot.load: plain tensors, safe loading, stable probe identity."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_bert
from layerprobe import Snapshot, take_snapshot
from layerprobe.errors import LayerProbeError


def test_snapshot_contents(bert, tokenizer, texts):
    s = take_snapshot(bert, tokenizer, texts, progress=False, max_length=32)
    assert s.names == ["embeddings", "block.0", "block.1", "block.2", "block.3"]
    assert all(r.shape == (48, 32) and r.dtype == torch.float64 for r in s.representations.values())
    assert s.meta["n_examples"] == 48 and s.meta["pooling"] == "mean" and s.meta["max_length"] == 32
    assert len(s.fingerprint) == 64
    assert set(s.weights) == {"embeddings", "block.0", "block.1", "block.2", "block.3", "other"}
    assert "attention.self.query.weight" in s.weights["block.0"]
    assert s.meta["param_shapes"]["block.0"]["attention.self.query.weight"] == [32, 32]
    # copies, not live references
    w = s.weights["block.0"]["attention.self.query.weight"]
    assert w.data_ptr() != bert.encoder.layer[0].attention.self.query.weight.data_ptr()


def test_batch_size_and_order_do_not_change_results(bert, tokenizer, texts):
    a = take_snapshot(bert, tokenizer, texts, batch_size=5, progress=False)
    b = take_snapshot(bert, tokenizer, texts, batch_size=48, progress=False)
    assert a.fingerprint == b.fingerprint
    for k in a.representations:
        torch.testing.assert_close(a.representations[k], b.representations[k], rtol=1e-5, atol=1e-6)
    one = take_snapshot(bert, tokenizer, texts[7:8], progress=False)
    torch.testing.assert_close(one.representations["block.3"][0], a.representations["block.3"][7], rtol=1e-5, atol=1e-6)


def test_fingerprint_tracks_the_probe(bert, tokenizer, texts):
    a = take_snapshot(bert, tokenizer, texts, progress=False)
    assert take_snapshot(bert, tokenizer, texts[:-1], progress=False).fingerprint != a.fingerprint
    assert take_snapshot(bert, tokenizer, texts, max_length=4, progress=False).fingerprint != a.fingerprint
    other = tiny_bert(1)
    assert take_snapshot(other, tokenizer, texts, progress=False).fingerprint == a.fingerprint


def test_round_trip_loads_with_weights_only(tmp_path, bert, tokenizer, texts):
    s = take_snapshot(bert, tokenizer, texts, pooling="tokens", max_tokens=5, progress=False)
    path = s.save(tmp_path / "s.pt")
    raw = torch.load(path, weights_only=True)  # no code runs, no custom classes needed
    assert raw["format"] == "layerprobe-snapshot"
    t = Snapshot.load(path)
    assert t.meta == s.meta
    assert torch.equal(t.token_examples, s.token_examples)
    for k in s.representations:
        assert torch.equal(t.representations[k], s.representations[k])
    assert t.token_examples.max() == 47 and s.representations["block.0"].dtype == torch.float32


def test_token_rows_in_example_order(bert, tokenizer, texts):
    s = take_snapshot(bert, tokenizer, texts, pooling="tokens", batch_size=7, progress=False)
    ex = s.token_examples
    assert torch.all(ex[1:] >= ex[:-1])
    n_tokens = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert torch.bincount(ex).tolist() == n_tokens


def test_train_mode_is_kept(bert, tokenizer, texts):
    bert.train()
    take_snapshot(bert, tokenizer, texts[:4], progress=False)
    assert bert.training


def test_load_refuses_files_it_does_not_understand(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(2)}, p)
    with pytest.raises(LayerProbeError, match="not a layerprobe snapshot"):
        Snapshot.load(p)
    torch.save({"format": "layerprobe-snapshot", "format_version": 99}, p)
    with pytest.raises(LayerProbeError, match="version 99 is not supported"):
        Snapshot.load(p)
    torch.save({"format": "layerprobe-snapshot", "format_version": 1, "meta": {"entries": [{"name": "e"}]},
                "representations": {"e": torch.zeros(3)}, "weights": {}}, p)
    with pytest.raises(LayerProbeError, match="not a 2-D tensor"):
        Snapshot.load(p)


def test_errors(bert, tokenizer):
    with pytest.raises(LayerProbeError, match="empty"):
        take_snapshot(bert, tokenizer, [], progress=False)
    with pytest.raises(LayerProbeError, match="tokenizer is needed"):
        take_snapshot(bert, None, ["a"], progress=False)
    with pytest.raises(LayerProbeError, match="unknown pooling"):
        take_snapshot(bert, tokenizer, ["good"], pooling="max", progress=False)


@pytest.mark.parametrize("block,scale", [(2, 1e38), (0, 1e38), (3, 1e30)])
def test_overflowing_activations_give_no_snapshot(tmp_path, tokenizer, texts, capsys, block, scale):
    """was: snapshot wrote NaN representations with exit 0 (compare refused the same model later)."""
    from layerprobe.cli import main

    m = tiny_bert(0)
    with torch.no_grad():
        m.encoder.layer[block].output.dense.weight.mul_(scale)
    m.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "p.txt").write_text("\n".join(texts[:8]) + "\n")
    capsys.readouterr()  # transformers' own progress bar while saving
    rc = main(["snapshot", str(tmp_path / "m"), "--probe", str(tmp_path / "p.txt"), "-o", str(tmp_path / "s.pt"),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{tmp_path / 'm'}: non-finite values (NaN/Inf) in the representations in block.{block}" in err
    assert not (tmp_path / "s.pt").exists()


def _last_line(err: str) -> str:
    """What a terminal shows last: the text after the final carriage return of stderr's last line."""
    return err.rstrip("\n").split("\n")[-1].split("\r")[-1]


def test_progress_bar_ends_its_line(bert, tokenizer, texts, capsys):
    """Issue 19 item 10: the bar was cleared on close (``leave=False``), leaving a ``\\r`` that glued the
    next stderr line onto it; it now stays, complete, and ends with a newline."""
    take_snapshot(bert, tokenizer, texts[:8], batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert err.endswith("\n") and _last_line(err).startswith("probe: 100%") and "2/2" in _last_line(err)
    take_snapshot(bert, tokenizer, texts[:8], batch_size=4, progress="probe checkpoint-500")  # names what it probes
    assert _last_line(capsys.readouterr().err).startswith("probe checkpoint-500: 100%")


def test_progress_bar_ends_its_line_when_a_forward_pass_raises(bert, tokenizer, texts, capsys):
    """The error message printed after a failed probe starts on a line of its own."""
    calls = []

    def second_batch_fails(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    handle = bert.register_forward_pre_hook(second_batch_fails)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            take_snapshot(bert, tokenizer, texts[:8], batch_size=4, progress=True)
        err = capsys.readouterr().err  # read while the traceback (and its frames) is still alive
    finally:
        handle.remove()
    assert err.endswith("\n") and "1/2" in _last_line(err)


def test_models_that_needed_more_than_the_probe_inputs(tokenizer, texts):
    """A seq2seq LM (T5) runs with its decoder start token and its encoder is the stack; a decoder classifier
    whose config names no padding token takes padded batches (the tokenizer's pad); both give the same
    representations as one example per pass."""
    import transformers as T

    torch.manual_seed(0)
    v = tokenizer.vocab_size
    t5 = T.T5ForConditionalGeneration(T.T5Config(d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2,
                                                 vocab_size=v, decoder_start_token_id=0))
    qwen = T.Qwen2ForSequenceClassification(T.Qwen2Config(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=v, num_labels=2, pad_token_id=None))
    for model, stack in ((t5, "encoder.block"), (qwen, "layers")):
        snap = take_snapshot(model, tokenizer, texts[:12], batch_size=4, progress=False)
        one = take_snapshot(model, tokenizer, texts[:12], batch_size=1, progress=False)
        assert snap.meta["stack"] == stack and len(snap.representations) == 3
        for name in snap.representations:
            torch.testing.assert_close(snap.representations[name], one.representations[name], rtol=1e-4, atol=1e-5)
    assert qwen.config.pad_token_id is None  # the user's config is left as it was


def test_an_entry_never_called_is_an_error_not_a_weights_only_snapshot(tokenizer, texts):
    """Blocks that are containers (Funnel's ModuleList of layers) never run: no representation to compare."""
    from torch import nn

    class Stacked(nn.Module):  # a block stack of ModuleLists, as Funnel's encoder.blocks
        def __init__(self, bert):
            super().__init__()
            self.bert = bert
            self.encoder = nn.Module()
            self.encoder.blocks = nn.ModuleList([nn.ModuleList([nn.Linear(32, 32)]) for _ in range(2)])

        def get_input_embeddings(self):
            return self.bert.get_input_embeddings()

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            h = self.bert.embeddings(input_ids)
            for group in self.encoder.blocks:
                for layer in group:
                    h = layer(h)
            return h

    from layerprobe import find_blocks

    model = Stacked(tiny_bert())
    blocks = find_blocks(model, blocks=r"encoder\.blocks\.\d+$", embeddings="bert.embeddings")
    with pytest.raises(LayerProbeError, match=r"entry block\.0 \(encoder\.blocks\.0\).* never called"):
        take_snapshot(model, tokenizer, texts[:8], blocks=blocks, progress=False)
