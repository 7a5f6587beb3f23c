"""Run under torchrun (2 CPU processes, gloo): Trainer + LayerProbeCallback with online freezing.

Usage: torchrun --nproc_per_node 2 ddp_train.py OUT_DIR FIND_UNUSED(0|1) [TRACK(0|1|2)]
TRACK 2 also runs the revert test at every check. Each rank writes OUT_DIR/rank<r>.json: frozen parameter
names, a weight checksum, train seconds, the advice, the tracker's rows and revert-test rows.
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from conftest import WORDS, make_tokenizer, tiny_bert  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from layerprobe import FreezePolicy, LayerProbeCallback  # noqa: E402
from layerprobe.errors import LayerProbeError  # noqa: E402

out, find_unused = sys.argv[1], bool(int(sys.argv[2]))
track = 1 if len(sys.argv) < 4 else int(sys.argv[3])
tok = make_tokenizer()
g = torch.Generator().manual_seed(0)
texts = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (8,), generator=g)) for _ in range(96)]
enc = tok(texts, padding="max_length", max_length=12, truncation=True)
data = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
        for i in range(len(texts))]
model = tiny_bert(0, head=True).train()
args = TrainingArguments(output_dir=out, use_cpu=True, ddp_backend="gloo", per_device_train_batch_size=8,
                         max_steps=12, learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
                         ddp_find_unused_parameters=find_unused, disable_tqdm=True, seed=0)
cbs = [LayerProbeCallback(tokenizer=tok, probe_texts=texts[:16], every_n_steps=2, max_length=12,
                          freeze_policy=FreezePolicy(threshold=1.0, patience=1, min_train_blocks=2),
                          revert_test=track == 2)] if track else []
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=cbs)
rank = int(os.environ.get("RANK", "0"))
t0 = time.perf_counter()
try:
    trainer.train()
except LayerProbeError as err:
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"error": str(err)}, f)
    sys.exit(3)
seconds = time.perf_counter() - t0
frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"frozen": frozen, "checksum": checksum, "seconds": seconds,
               "policy_frozen": cbs[0].policy.frozen if cbs else [],
               "advice": cbs[0].advice().to_dict() if cbs else None,
               "rows": len(cbs[0].tracker.rows) if cbs else 0,
               "revert_rows": {str(k): v for k, v in cbs[0].tracker.revert_rows.items()} if cbs else {}}, f)
