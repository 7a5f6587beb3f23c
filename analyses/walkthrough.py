# %% [markdown]
# # layerprobe walkthrough: one comparison with the Python API
#
# We take the shipped MiniLM-L6, snapshot it on a small probe set, fine-tune it briefly on Rotten
# Tomatoes, snapshot again, compare the two snapshots block by block, read the freeze advice, act on
# it with the freeze helpers and plot the result.
#
# Run as a script (`python analyses/walkthrough.py [--smoke] [--out DIR]`) or cell by cell in an
# editor that understands `# %%` cells. `--smoke` uses tiny sizes (CI runs it).

# %%
import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

parser = argparse.ArgumentParser()
parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
parser.add_argument("--out", default=None, help="where to write comparison.json and blocks.png")
args, _ = parser.parse_known_args()  # tolerate notebook-kernel arguments
OUT = args.out or tempfile.mkdtemp(prefix="layerprobe_walkthrough_")
os.makedirs(OUT, exist_ok=True)
SIZES = dict(train=16, test=16, probe=16, max_length=24) if args.smoke else dict(train=2000, test=500, probe=384,
                                                                                  max_length=64)
PROGRESS = not args.smoke
print("sizes:", SIZES, "| output:", OUT)

# %% [markdown]
# ## 1. Data: disjoint train / test / probe sets
# The probe set is what both snapshots run over; it must be the same examples for base and tuned
# (layerprobe checks a fingerprint of the token ids) and should not be the training data.

# %%
from layerprobe.demo.corpora import load_rotten_tomatoes, sample, split

df = load_rotten_tomatoes()
rest, test = split(df, SIZES["test"], seed=0)
rest, probe = split(rest, SIZES["probe"], seed=1)
train = sample(rest, SIZES["train"], seed=2, stratify=True)
print(len(train), "train,", len(test), "test,", len(probe), "probe")

# %% [markdown]
# ## 2. The base model and its snapshot
# `take_snapshot` runs the probe once, captures every entry (embeddings, block.0..block.5) with
# mean pooling over real tokens (padding excluded) and copies the weights.

# %%
from layerprobe.demo.shipped import default_model_path, load_classifier
from layerprobe.demo.train import TrainConfig, evaluate, fine_tune
from layerprobe.snapshot.take import take_snapshot

model, tok = load_classifier(default_model_path(), num_labels=2, seed=0)
base = take_snapshot(model, tok, probe["text"].tolist(), max_length=SIZES["max_length"], progress=PROGRESS)
print("entries:", base.names)
print("representation shape of block.0:", tuple(base.representations["block.0"].shape))
acc0 = evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), SIZES["max_length"])

# %% [markdown]
# ## 3. A short full fine-tuning, then the tuned snapshot

# %%
stats = fine_tune(model, tok, train["text"].tolist(), train["label"].tolist(),
                  TrainConfig(epochs=1, lr=1e-4, batch_size=8 if args.smoke else 32, max_length=SIZES["max_length"]),
                  progress=PROGRESS)
acc1 = evaluate(model, tok, test["text"].tolist(), test["label"].tolist(), SIZES["max_length"])
print(f"{stats['steps']} steps in {stats['seconds']:.1f}s; test accuracy {acc0:.3f} -> {acc1:.3f}")
tuned = take_snapshot(model, tok, probe["text"].tolist(), max_length=SIZES["max_length"], progress=PROGRESS)
base.save(os.path.join(OUT, "base.pt"))  # plain tensors; loads with weights_only=True
tuned.save(os.path.join(OUT, "tuned.pt"))

# %% [markdown]
# ## 4. Compare: CKA (similarity, 1 = unchanged) and relative weight drift (distance, 0 = unchanged)

# %%
from layerprobe.comparison.compare import compare

result = compare(base, tuned)
frame = result.to_frame()
print(frame[["cka", "weight_drift", "advice"]].to_string())
with open(os.path.join(OUT, "comparison.json"), "w") as f:
    f.write(result.to_json())

# %% [markdown]
# ## 5. The advice, and other thresholds
# The rule is a pure function of the per-entry numbers, so it can be re-run without a model.
# The freeze study (`analyses/freeze_study.py`) checks which threshold keeps accuracy.

# %%
from layerprobe.freezing.rule import Thresholds, recommend

rec = result.recommendation
print("freeze:", rec.freeze, "| train:", rec.train)
for name, why in rec.reasons.items():
    print(f"  {name:>10}: {why}")
for thr in (0.9, 0.99):
    print(f"min_cka={thr}:", recommend(result.blocks, Thresholds(min_cka=thr)).freeze)

# %% [markdown]
# ## 6. Act on it: freeze the advised prefix on a fresh model before fine-tuning

# %%
from layerprobe.freezing.apply import bottom_prefix, freeze, trainable_parameters
from layerprobe.model.blocks import find_blocks

fresh, _ = load_classifier(default_model_path(), num_labels=2, seed=0)
before = trainable_parameters(fresh)
after = freeze(fresh, rec.freeze)
print(f"trainable parameters: {before:,} -> {after:,}")
print("the bottom half, for comparison:", bottom_prefix(find_blocks(fresh), 3))

# %% [markdown]
# ## 7. Plot (from the saved result only)

# %%
from layerprobe.results.plots import plot_blocks

plot_blocks(result.to_dict(), os.path.join(OUT, "blocks.png"),
            title=f"MiniLM-L6 on Rotten Tomatoes (accuracy {acc0:.2f} → {acc1:.2f})")
print("wrote", os.path.join(OUT, "blocks.png"))
