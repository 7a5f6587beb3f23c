"""Run under torchrun (2 CPU processes, gloo): FSDP2 (``fully_shard``) + LayerProbeCallback.

A hand-written loop drives the callback's Trainer events, as the Trainer would. Usage:
torchrun --nproc_per_node 2 fsdp_train.py OUT_DIR. Each rank writes OUT_DIR/rank<r>.json.
"""

import copy
import json
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import WORDS, make_tokenizer, tiny_bert  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from transformers import TrainerControl  # noqa: E402

from layerprobe import FreezePolicy, LayerProbeCallback  # noqa: E402
from layerprobe.errors import LayerProbeError  # noqa: E402
from layerprobe.model.unwrap import _full  # noqa: E402

out = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
tok = make_tokenizer()
g = torch.Generator().manual_seed(0)
texts = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (8,), generator=g)) for _ in range(32)]
model = tiny_bert(0, head=True)
model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
start = copy.deepcopy(model)
for layer in model.bert.encoder.layer:
    fully_shard(layer)
fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
args = SimpleNamespace(output_dir=out, train_batch_size=8, per_device_train_batch_size=8,
                       gradient_accumulation_steps=1)
state = SimpleNamespace(global_step=0, max_steps=6, is_world_process_zero=rank == 0)
control = TrainerControl()

refused = LayerProbeCallback(tokenizer=tok, probe_texts=texts[:8], every_n_steps=2, max_length=12,
                             freeze_policy=FreezePolicy(threshold=1.0))
try:
    refused.on_train_begin(args, state, control, model=model)
    policy_error = ""
except LayerProbeError as e:
    policy_error = str(e)

cb = LayerProbeCallback(tokenizer=tok, probe_texts=texts[:16], every_n_steps=2, max_length=12)
cb.on_train_begin(args, state, control, model=model)
enc = tok(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
labels = torch.tensor([i % 2 for i in range(len(texts))])
model.train()
for step in range(6):
    cb.on_step_begin(args, state, control, optimizer=opt)
    sl = slice(rank * 4 + 8 * (step % 2), rank * 4 + 8 * (step % 2) + 4)
    loss = model(input_ids=enc["input_ids"][sl], attention_mask=enc["attention_mask"][sl], labels=labels[sl]).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    state.global_step = step + 1
    cb.on_step_end(args, state, control)
cb.on_train_end(args, state, control)

# the reference drift from the gathered final weights against the unsharded start (rank 0)
full = {n: _full(p.detach()) for n, p in model.named_parameters()}
drift = []
for name in cb.tracker.blocks.names:
    ps = [n for n in full if cb.tracker.blocks.entry_of(n) is not None and cb.tracker.blocks.entry_of(n).name == name]
    w0 = dict(start.named_parameters())
    num = sum(float((full[n].double() - w0[n].detach().double()).pow(2).sum()) for n in ps)
    den = sum(float(w0[n].detach().double().pow(2).sum()) for n in ps)
    drift.append((num / den) ** 0.5)
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"advice": cb.advice().to_dict(), "policy_error": policy_error, "drift_reference": drift}, f)
dist.destroy_process_group()
