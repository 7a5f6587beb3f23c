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

from layerprobe.freezing.apply import trainable_parameters
from layerprobe.model.batching import collate, encode, pad_id
from layerprobe.options import TRAINING_MAX_LENGTH

__all__ = ["TrainConfig", "evaluate", "fine_tune", "lr_factor", "peak_rss_mb", "predict", "schedule_steps",
           "seed_everything", "train_loop"]


@dataclass(frozen=True)
class TrainConfig:
    """The fixed budget of one fine-tuning run."""

    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = TRAINING_MAX_LENGTH
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


def schedule_steps(n_examples: int, config: TrainConfig) -> tuple[int, int]:
    """``(total_steps, warmup_steps)`` of :func:`train_loop` for ``n_examples`` and ``config``."""
    per_epoch = (n_examples + config.batch_size - 1) // config.batch_size
    total = max(1, int(round(per_epoch * config.epochs)))
    return total, int(config.warmup * total)


def lr_factor(step: int, total: int, warm: int) -> float:
    """The learning-rate multiplier used for optimizer step ``step`` (0-based): linear warm-up, linear decay.

    >>> [round(lr_factor(s, 10, 2), 3) for s in (0, 1, 2, 9)]
    [0.5, 1.0, 1.0, 0.125]
    """
    if step < warm:
        return (step + 1) / max(1, warm)
    return max(0.0, (total - step) / max(1, total - warm))


def train_loop(
    model: nn.Module,
    n_examples: int,
    batch_loss: Callable[[list[int]], torch.Tensor],
    config: TrainConfig = TrainConfig(),
    on_step: Sequence[Callable[[int, nn.Module], None]] = (),
    progress: bool = True,
    desc: str = "fine-tune",
    on_epoch: Callable[[int, nn.Module], bool] | None = None,
) -> dict:
    """The one training loop: AdamW over trainable parameters, warm-up + linear decay, seeded order.

    Args:
        model: trained in place; parameters with ``requires_grad=False`` get no update.
        n_examples: size of the training set.
        batch_loss: maps a list of example indices to the batch's scalar loss.
        config: the budget (epochs, lr, batch size, warm-up, weight decay, seed).
        on_step: callbacks ``(step, model)`` after each optimizer step.
        on_epoch: called ``(epoch, model)`` after each complete epoch (1-based); returning True
            stops training there (early stopping). The schedule still spans ``config.epochs``.

    Returns:
        ``{"seconds", "cpu_seconds", "steps", "epochs", "trainable_params", "peak_rss_mb",
        "final_loss"}`` (``epochs``: complete epochs run, fractional for a partial last one).
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
    total, warm = schedule_steps(n_examples, config)

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: lr_factor(step, total, warm))
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    _reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    step, loss_val, epoch, stop = 0, float("nan"), 0, False
    # the bar ends its line (a cleared bar left "\r": the next stderr line was glued on), also on an error
    with tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=True) as bar:
        while step < total and not stop:
            order = torch.randperm(n_examples, generator=gen).tolist()
            epoch_start = step
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
            if step - epoch_start == per_epoch:
                epoch += 1
                if on_epoch is not None and on_epoch(epoch, model):
                    stop = True
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "steps": step,
        "epochs": step / per_epoch,
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
    on_epoch: Callable[[int, nn.Module], bool] | None = None,
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

    return train_loop(model, len(data), batch_loss, config, on_step, progress, desc, on_epoch)


@torch.no_grad()
def predict(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int = TRAINING_MAX_LENGTH, batch_size: int = 64,
            progress: bool = False) -> np.ndarray:
    """Predicted class per text (eval mode; restores the model's mode)."""
    was = model.training
    model.eval()
    data = encode(tokenizer, texts, max_length)
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    preds = np.empty(len(data), dtype=np.int64)
    pad = pad_id(tokenizer)
    with tqdm(range(0, len(order), batch_size), desc="evaluate", unit="batch", disable=not progress,
              leave=True) as bar:  # ends its line, as every bar
        for i in bar:
            idx = order[i : i + batch_size]
            logits = model(**collate([data[j] for j in idx], pad)).logits
            preds[idx] = logits.argmax(-1).numpy()
    model.train(was)
    return preds


def evaluate(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int = TRAINING_MAX_LENGTH,
             batch_size: int = 64, progress: bool = False) -> float:
    """Accuracy on ``texts``."""
    preds = predict(model, tokenizer, texts, max_length, batch_size, progress)
    return float((preds == np.asarray(labels)).mean())
