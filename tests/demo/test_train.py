"""The demo's training loop and evaluation: their progress bars end their line."""

from __future__ import annotations

import torch

from conftest import tiny_bert
from layerprobe.demo.train import TrainConfig, predict, train_loop


def test_training_and_evaluation_bars_end_their_line(tokenizer, texts, capsys):
    """Issue 19 item 10: ``leave=False`` bars were cleared with a trailing ``\\r``, so the next line
    written to stderr (a warning, an error, the next tool's output) was glued onto the cleared bar."""
    m = tiny_bert(0, head=True)
    labels = torch.tensor([i % 2 for i in range(8)])
    inputs = tokenizer(texts[:8], padding=True, return_tensors="pt")

    def batch_loss(idx):
        return m(**{k: v[idx] for k, v in inputs.items()}, labels=labels[idx]).loss

    train_loop(m, 8, batch_loss, TrainConfig(epochs=1, batch_size=4), progress=True, desc="fine-tune")
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.rstrip("\n").split("\n")[-1].split("\r")[-1].startswith("fine-tune: 100%")
    predict(m, tokenizer, texts[:8], batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.rstrip("\n").split("\n")[-1].split("\r")[-1].startswith("evaluate: 100%")
