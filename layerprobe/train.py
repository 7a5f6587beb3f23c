"""A small, honest fine-tuning loop for sequence classification (used by the demo and the study).

Plain PyTorch: AdamW over the trainable parameters only, linear warm-up and decay, dynamic
padding, seeded shuffling. It reports wall time, peak resident memory and trainable parameters.
``on_step(step, model)`` callbacks let trackers (``layerprobe.track``) watch the run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import collate, encode, pad_id
from .freeze import trainable_parameters


@dataclass(frozen=True)
class TrainConfig:
    """The fixed budget of one fine-tuning run."""

    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _reset_peak_rss() -> None:
    try:  # Linux: writing 5 resets VmHWM (the peak RSS) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_loop(
    model: nn.Module,
    n_examples: int,
    batch_loss: Callable[[list[int]], torch.Tensor],
    config: TrainConfig = TrainConfig(),
    on_step: Sequence[Callable[[int, nn.Module], None]] = (),
    progress: bool = True,
    desc: str = "fine-tune",
) -> dict:
    """The one training loop: AdamW over trainable parameters, warm-up + linear decay, seeded order.

    Args:
        model: trained in place; parameters with ``requires_grad=False`` get no update.
        n_examples: size of the training set.
        batch_loss: maps a list of example indices to the batch's scalar loss.
        config: the budget (epochs, lr, batch size, warm-up, weight decay, seed).
        on_step: callbacks ``(step, model)`` after each optimizer step.

    Returns:
        ``{"seconds", "cpu_seconds", "steps", "trainable_params", "peak_rss_mb", "final_loss"}``.
    """
    seed_everything(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    per_epoch = (n_examples + config.batch_size - 1) // config.batch_size
    total = max(1, int(round(per_epoch * config.epochs)))
    warm = int(config.warmup * total)

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    _reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    step, loss_val = 0, float("nan")
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
    while step < total:
        order = torch.randperm(n_examples, generator=gen).tolist()
        for i in range(0, len(order), config.batch_size):
            if step >= total:
                break
            loss = batch_loss(order[i : i + config.batch_size])
            loss.backward()
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            loss_val = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.3f}")
            for cb in on_step:
                cb(step, model)
    bar.close()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "steps": step,
        "trainable_params": trainable_parameters(model),
        "peak_rss_mb": peak_rss_mb(),
        "final_loss": loss_val,
    }


def fine_tune(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int],
    config: TrainConfig = TrainConfig(),
    on_step: Sequence[Callable[[int, nn.Module], None]] = (),
    progress: bool = True,
    desc: str = "fine-tune",
) -> dict:
    """Fine-tune ``model`` (a ``*ForSequenceClassification``) in place; frozen params stay frozen.

    Returns:
        the dict of :func:`train_loop`.
    """
    data = encode(tokenizer, texts, config.max_length)
    y = torch.tensor(list(map(int, labels)))
    pad = pad_id(tokenizer)

    def batch_loss(idx: list[int]) -> torch.Tensor:
        return model(**collate([data[j] for j in idx], pad), labels=y[idx]).loss

    return train_loop(model, len(data), batch_loss, config, on_step, progress, desc)


@torch.no_grad()
def predict(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 64, batch_size: int = 64,
            progress: bool = False) -> np.ndarray:
    """Predicted class per text (eval mode; restores the model's mode)."""
    was = model.training
    model.eval()
    data = encode(tokenizer, texts, max_length)
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    preds = np.empty(len(data), dtype=np.int64)
    pad = pad_id(tokenizer)
    for i in tqdm(range(0, len(order), batch_size), desc="evaluate", unit="batch", disable=not progress, leave=False):
        idx = order[i : i + batch_size]
        logits = model(**collate([data[j] for j in idx], pad)).logits
        preds[idx] = logits.argmax(-1).numpy()
    model.train(was)
    return preds


def evaluate(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int = 64,
             batch_size: int = 64, progress: bool = False) -> float:
    """Accuracy on ``texts``."""
    preds = predict(model, tokenizer, texts, max_length, batch_size, progress)
    return float((preds == np.asarray(labels)).mean())
