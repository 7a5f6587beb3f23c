"""Snapshot of a BERT-base-sized model and ``compare`` of two model directories with a probe.

No target yet (issue 13 asks to measure). One command; every ratio comes from the same run::

    python benchmarks/bench_snapshot_compare.py             # 12 blocks x 768, 512 probe texts (~4 min)
    python benchmarks/bench_snapshot_compare.py --quick     # 2 blocks x 64, 32 texts (CI smoke)

Two random BERT-base-sized models are built from a config (no download; seeds 0 and 1) and saved
as model directories with the shipped tokenizer (BERT's uncased vocabulary); the probe is Rotten
Tomatoes snippets from the shipped data. Each case runs in a fresh process (peak = that
process's VmHWM above a process that only imports the same modules):

* ``forward``: the bare forward pass over the probe (batches of 32 in probe order, no hooks) — the limit;
* ``snapshot``: ``layerprobe snapshot A --probe P -o A.pt`` (time, peak, file size);
* ``weights``: what the float32 weight copy in a snapshot costs on its own (copy and save, no
  forward pass) — the part a snapshot could leave out when the weights are already on disk;
* ``compare``: ``layerprobe compare A B --probe P --format json`` (each model runs once),
  against twice the bare forward.

Writes ``benchmarks/results/snapshot_compare.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from _subcase import hwm_kb, run_in_subprocess  # benchmarks/ is on sys.path when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FULL = dict(layers=12, hidden=768, heads=12, inter=3072, texts=512)
QUICK = dict(layers=2, hidden=64, heads=2, inter=128, texts=32)


def build(work: str, size: dict) -> tuple[str, str, str]:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from layerprobe.demo.shipped import default_model_path, rotten_tomatoes_splits

    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                     num_attention_heads=size["heads"], intermediate_size=size["inter"])
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        d = os.path.join(work, f"model_{seed}")
        BertModel(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    _, _, probe = rotten_tomatoes_splits(train_size=10, test_size=10, probe_size=size["texts"])
    probe_path = os.path.join(work, "probe.txt")
    with open(probe_path, "w") as f:
        f.write("\n".join(" ".join(t.split()) for t in probe["text"]) + "\n")
    return dirs[0], dirs[1], probe_path


def run_case(kind: str, a: str, b: str, probe: str, out: str) -> dict:
    import torch
    import transformers  # noqa: F401  (every case imports the same modules first: the baseline)

    from layerprobe.cli import main as cli_main

    try:  # ru_maxrss survives exec: reset VmHWM instead
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base_kb = hwm_kb()
    t0 = time.perf_counter()
    extra: dict = {}
    if kind == "forward":
        from transformers import AutoModel, AutoTokenizer

        from layerprobe.io.probe_files import read_probe_texts
        from layerprobe.model.batching import collate, encode, pad_id

        texts = read_probe_texts(probe)
        for d in (a,) if out == "one" else (a, b):
            model, tok = AutoModel.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
            examples = encode(tok, texts, 128)
            with torch.inference_mode():
                for i in range(0, len(examples), 32):
                    model(**collate(examples[i:i + 32], pad_id(tok)))
    elif kind == "snapshot":
        rc = cli_main(["snapshot", a, "--probe", probe, "-o", out, "--quiet"])
        assert rc == 0
        snap = torch.load(out, weights_only=True)
        nbytes = lambda group: sum(t.numel() * t.element_size() for ws in group.values()  # noqa: E731
                                   for t in (ws.values() if isinstance(ws, dict) else [ws]))
        extra = {"file_mb": os.path.getsize(out) / 2**20, "weights_mb": nbytes(snap["weights"]) / 2**20,
                 "representations_mb": nbytes(snap["representations"]) / 2**20}
    elif kind == "weights":
        from transformers import AutoModel

        from layerprobe.model.blocks import find_blocks
        from layerprobe.snapshot.take import model_weights

        model = AutoModel.from_pretrained(a)
        t1 = time.perf_counter()
        w = model_weights(model, find_blocks(model))
        t2 = time.perf_counter()
        torch.save(w, out)
        extra = {"load_s": t1 - t0, "copy_s": t2 - t1, "save_s": time.perf_counter() - t2,
                 "file_mb": os.path.getsize(out) / 2**20}
    elif kind == "compare":
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli_main(["compare", a, b, "--probe", probe, "--format", "json", "--quiet"])
        assert rc == 0
        extra = {"json_keys": sorted(json.loads(buf.getvalue()))[:8]}
    return {"kind": kind, "wall_s": time.perf_counter() - t0, "peak_rss_mb": hwm_kb() / 1024,
            "import_rss_mb": base_kb / 1024, **extra}


def _sub(kind: str, *args: str) -> dict:
    return run_in_subprocess(__file__, kind, *args, timeout=1800,
                             env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--texts", type=int, default=None, help="probe texts (default 512; 32 with --quick)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--case", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return 0
    size = dict(QUICK if args.quick else FULL)
    if args.texts:
        size["texts"] = args.texts
    work = tempfile.mkdtemp(prefix="lp_snap_")
    t_start = time.perf_counter()
    try:
        a, b, probe = build(work, size)
        cases = {"import": _sub("import", a, b, probe, "-")}
        cases["forward"] = _sub("forward", a, b, probe, "one")
        cases["snapshot"] = _sub("snapshot", a, b, probe, os.path.join(work, "a.pt"))
        cases["weights"] = _sub("weights", a, b, probe, os.path.join(work, "w.pt"))
        cases["compare"] = _sub("compare", a, b, probe, "-")
        model_mb = sum(os.path.getsize(os.path.join(a, f)) for f in os.listdir(a) if f.endswith(".safetensors")) / 2**20
    finally:
        shutil.rmtree(work, ignore_errors=True)
    imp = cases["import"]["peak_rss_mb"]
    report = {"quick": args.quick, "size": size, "cpus": os.cpu_count(), "model_file_mb": model_mb, "cases": cases,
              "snapshot_over_forward": cases["snapshot"]["wall_s"] / cases["forward"]["wall_s"],
              "compare_over_two_forwards": cases["compare"]["wall_s"] / (2 * cases["forward"]["wall_s"]),
              "peak_above_import_mb": {k: c["peak_rss_mb"] - imp for k, c in cases.items()},
              "wall_s": time.perf_counter() - t_start}
    write(report, args.out)
    return 0


def write(report: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    name = "snapshot_compare_quick" if report["quick"] else "snapshot_compare"
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(report, f, indent=1)
    c, s, p = report["cases"], report["size"], report["peak_above_import_mb"]
    sn, w = c["snapshot"], c["weights"]
    lines = [f"# Snapshot and compare with a probe{' (quick)' if report['quick'] else ''}", "",
             f"Random BERT-base-sized model ({s['layers']} blocks × {s['hidden']}, intermediate {s['inter']}, "
             f"BERT vocabulary; weights file {report['model_file_mb']:.0f} MiB), {s['texts']} Rotten Tomatoes probe "
             f"texts, max length 128, batch 32, float32 on CPU; {report['cpus']} CPUs shared with other jobs. "
             "Each case once, in a fresh process; peak = peak RSS above a process that only imports layerprobe's "
             "CLI (torch and transformers).", "",
             "| case | wall | peak above import | file | ratio |", "|---|---|---|---|---|",
             f"| bare forward pass over the probe (the limit) | {c['forward']['wall_s']:.1f} s | "
             f"{p['forward']:.0f} MiB | | 1 |",
             f"| `layerprobe snapshot A --probe P` | {sn['wall_s']:.1f} s | {p['snapshot']:.0f} MiB | "
             f"{sn['file_mb']:.0f} MiB ({sn['weights_mb']:.0f} MiB weights, {sn['representations_mb']:.1f} MiB "
             f"representations) | {report['snapshot_over_forward']:.2f}× the forward |",
             f"| its float32 weight copy alone (load {w['load_s']:.1f} s, copy {w['copy_s']:.2f} s, save "
             f"{w['save_s']:.2f} s) | {w['wall_s']:.1f} s | {p['weights']:.0f} MiB | {w['file_mb']:.0f} MiB | |",
             f"| `layerprobe compare A B --probe P` (each model runs once) | {c['compare']['wall_s']:.1f} s | "
             f"{p['compare']:.0f} MiB | | {report['compare_over_two_forwards']:.2f}× two forwards |",
             "", f"Benchmark wall time {report['wall_s']:.0f} s."]
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
