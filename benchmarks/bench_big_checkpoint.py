"""Benchmark: weights-only ``layerprobe compare`` between two big sharded safetensors checkpoints.

Generates a synthetic Llama-like pair (A float32, B bfloat16 = A + noise), sharded one block
per file with a ``model.safetensors.index.json``, then measures in subprocesses:

* ``layerprobe compare A B --format json --quiet`` — wall time, peak RSS (``/usr/bin/time -v``,
  else polling ``VmHWM`` in ``/proc/<pid>/status``), throughput (bytes of A + B per second);
* a plain read of the same files (every tensor read once with ``safe_open``) — same figures;
* the RSS of a Python that only imports layerprobe (the fixed overhead).

and reports the largest single tensor and peak RSS / largest tensor. The pair is written to
``--workdir`` (default: a fresh folder under /tmp) and deleted afterwards unless ``--keep``.

    python benchmarks/bench_big_checkpoint.py              # ~2 x 4+ GB pair, minutes
    python benchmarks/bench_big_checkpoint.py --quick      # ~50 MB pair, seconds (CI smoke)

Results: ``benchmarks/results/big_checkpoint.{md,json}`` (``--quick`` writes to ``--results``
only when given explicitly).
"""

# %%
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 1e9

#: Full mode: Llama-7B-like widths; 10 blocks make even the bf16 side > 4 GB.
FULL = dict(blocks=10, hidden=4096, inter=11008, vocab=32000)
#: Quick mode: ~50 MB for the fp32 side.
QUICK = dict(blocks=4, hidden=256, inter=688, vocab=8000)


def tensor_specs(blocks: int, hidden: int, inter: int, vocab: int) -> list[tuple[str, tuple[int, ...], int]]:
    """``(name, shape, shard index)`` in file order, Llama naming."""
    specs = [("model.embed_tokens.weight", (vocab, hidden), 0)]
    for i in range(blocks):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            specs.append((p + f"self_attn.{n}.weight", (hidden, hidden), i + 1))
        specs.append((p + "mlp.gate_proj.weight", (inter, hidden), i + 1))
        specs.append((p + "mlp.up_proj.weight", (inter, hidden), i + 1))
        specs.append((p + "mlp.down_proj.weight", (hidden, inter), i + 1))
        specs.append((p + "input_layernorm.weight", (hidden,), i + 1))
        specs.append((p + "post_attention_layernorm.weight", (hidden,), i + 1))
    specs.append(("model.norm.weight", (hidden,), blocks + 1))
    specs.append(("lm_head.weight", (vocab, hidden), blocks + 1))
    return specs


def generate_pair(workdir: str, blocks: int, hidden: int, inter: int, vocab: int, seed: int = 0) -> tuple[str, str]:
    """Write A (float32) and B (bfloat16, A plus 1% noise) as sharded HF directories."""
    import torch
    from safetensors.torch import save_file

    specs = tensor_specs(blocks, hidden, inter, vocab)
    n_shards = blocks + 2
    dirs = {}
    for side in ("a_fp32", "b_bf16"):
        d = os.path.join(workdir, side)
        os.makedirs(d, exist_ok=True)
        dirs[side] = d
    g = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    for shard in range(n_shards):
        fname = f"model-{shard + 1:05d}-of-{n_shards:05d}.safetensors"
        part_a: dict[str, torch.Tensor] = {}
        part_b: dict[str, torch.Tensor] = {}
        for name, shape, s in specs:
            if s != shard:
                continue
            if len(shape) == 1:
                w = torch.ones(shape)
            else:
                w = torch.randn(shape, generator=g).mul_(0.02)
            part_a[name] = w
            noise = torch.randn(shape, generator=g).mul_(0.0002 * (1 + int(name.split(".")[2]) if ".layers." in name else 1))
            part_b[name] = (w + noise).to(torch.bfloat16)
            del noise
            weight_map[name] = fname
        save_file(part_a, os.path.join(dirs["a_fp32"], fname), metadata={"format": "pt"})
        del part_a
        save_file(part_b, os.path.join(dirs["b_bf16"], fname), metadata={"format": "pt"})
        del part_b
    for d in dirs.values():
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    return dirs["a_fp32"], dirs["b_bf16"]


def dir_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))


def largest_tensor_bytes(d: str) -> tuple[str, int]:
    from safetensors import safe_open

    best = ("", 0)
    for f in sorted(os.listdir(d)):
        if not f.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(d, f), framework="pt") as h:
            for k in h.keys():
                sl = h.get_slice(k)
                n = 1
                for x in sl.get_shape():
                    n *= x
                size = n * {"F32": 4, "BF16": 2, "F16": 2, "F64": 8}[sl.get_dtype()]
                if size > best[1]:
                    best = (k, size)
    return best


# %%
def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; return wall seconds, peak RSS bytes, exit code and output."""
    timev = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    t0 = time.perf_counter()
    if timev:
        proc = subprocess.run([timev, "-v", *cmd], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        peak = int(m.group(1)) * 1024 if m else None
        stderr = proc.stderr[: proc.stderr.find("\tCommand being timed")] if m else proc.stderr
        return {"wall_s": wall, "peak_rss_bytes": peak, "rc": proc.returncode, "stdout": proc.stdout,
                "stderr": stderr, "rss_method": "/usr/bin/time -v"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def poll():
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
                if m:
                    peak[0] = max(peak[0], int(m.group(1)) * 1024)
            except OSError:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    return {"wall_s": time.perf_counter() - t0, "peak_rss_bytes": peak[0], "rc": proc.returncode, "stdout": out,
            "stderr": err, "rss_method": "VmHWM polling"}


PLAIN_READ = """
import os, sys
from safetensors import safe_open
n = 0
for d in sys.argv[1:]:
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), framework="pt") as h:
                for k in h.keys():
                    t = h.get_tensor(k)
                    n += t.numel() * t.element_size()
                    del t
print(n)
"""

IMPORT_ONLY = "import torch, layerprobe.cli, layerprobe.comparison.compare, layerprobe.io.checkpoints"


def layerprobe_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "layerprobe")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "layerprobe.cli"]


def run_benchmark(a: str, b: str) -> dict:
    py = sys.executable
    total = dir_bytes(a) + dir_bytes(b)
    name, largest = max(largest_tensor_bytes(a), largest_tensor_bytes(b), key=lambda x: x[1])
    base = measure([py, "-c", IMPORT_ONLY])
    plain = measure([py, "-c", PLAIN_READ, a, b])
    comp = measure([*layerprobe_cmd(), "compare", a, b, "--format", "json", "--quiet"])
    if comp["rc"] != 0:
        raise SystemExit(f"layerprobe compare failed (exit {comp['rc']}): {comp['stderr'][-2000:]}")
    result = json.loads(comp["stdout"])
    peak = comp["peak_rss_bytes"]
    fixed = base["peak_rss_bytes"]
    bound = 3 * largest + fixed + 600 * 2**20  # + float64 chunk temporaries (4 x 16M x 8 B) and slack
    return {
        "bytes_a": dir_bytes(a),
        "bytes_b": dir_bytes(b),
        "bytes_total": total,
        "largest_tensor": {"name": name, "bytes": largest},
        "import_only": {"peak_rss_bytes": fixed},
        "plain_read": {"wall_s": plain["wall_s"], "peak_rss_bytes": plain["peak_rss_bytes"],
                       "gb_per_s": total / GB / plain["wall_s"]},
        "compare": {"wall_s": comp["wall_s"], "peak_rss_bytes": peak, "gb_per_s": total / GB / comp["wall_s"],
                    "n_blocks": sum(e["kind"] == "block" for e in result["blocks"]),
                    "drift": {e["name"]: e["weight_drift"] for e in result["blocks"]}},
        "ratio_peak_rss_to_largest_tensor": peak / largest,
        "ratio_peak_rss_minus_import_to_largest_tensor": (peak - fixed) / largest,
        "bound_bytes": bound,
        "within_bound": peak <= bound,
        "rss_method": comp["rss_method"],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }


def to_markdown(r: dict, cfg: dict) -> str:
    mb = lambda x: f"{x / 2**20:,.0f} MiB"  # noqa: E731
    gbs = lambda x: f"{x / GB:.2f} GB"  # noqa: E731
    lines = [
        "# Big checkpoints: weights-only compare, streamed tensor by tensor",
        "",
        f"Synthetic Llama-like pair ({cfg['blocks']} blocks, hidden {cfg['hidden']}, intermediate {cfg['inter']}, "
        f"vocab {cfg['vocab']}), sharded safetensors, one shard per block: A float32 ({gbs(r['bytes_a'])}), "
        f"B bfloat16 ({gbs(r['bytes_b'])}). Generated by `benchmarks/bench_big_checkpoint.py` (not committed).",
        f"Largest single tensor: `{r['largest_tensor']['name']}`, {mb(r['largest_tensor']['bytes'])} (float32).",
        "",
        "| run | wall | throughput (A+B bytes / wall) | peak RSS |",
        "|---|---|---|---|",
        f"| plain read (safe_open, every tensor once) | {r['plain_read']['wall_s']:.1f} s | "
        f"{r['plain_read']['gb_per_s']:.2f} GB/s | {mb(r['plain_read']['peak_rss_bytes'])} |",
        f"| `layerprobe compare A B --format json` | {r['compare']['wall_s']:.1f} s | "
        f"{r['compare']['gb_per_s']:.2f} GB/s | {mb(r['compare']['peak_rss_bytes'])} |",
        f"| python importing layerprobe only | | | {mb(r['import_only']['peak_rss_bytes'])} |",
        "",
        f"Peak RSS / largest tensor: **{r['ratio_peak_rss_to_largest_tensor']:.2f}** "
        f"({r['ratio_peak_rss_minus_import_to_largest_tensor']:.2f} after subtracting the import-only RSS). "
        f"Bound 3 x largest tensor + import RSS + 600 MiB (float64 chunks): {mb(r['bound_bytes'])} — "
        f"{'within' if r['within_bound'] else 'EXCEEDED'}.",
        "",
        f"Peak RSS measured with {r['rss_method']}; {r['machine']['cpus']} CPUs shared with other jobs, so wall "
        "times are indicative. Both runs read the files after generation (page cache in whatever state "
        "the machine left it). Update ranks are skipped for matrices above 2**22 elements "
        "(`compare.RANK_MAX_NUMEL`): drift, cosine and max change are exact for every tensor.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~50 MB pair (CI smoke)")
    ap.add_argument("--workdir", help="where to write the pair (default: a new folder under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated pair")
    ap.add_argument("--blocks", type=int)
    ap.add_argument("--reuse", action="store_true", help="reuse a pair already in --workdir (implies --keep)")
    ap.add_argument("--results", help="folder for big_checkpoint.{md,json} "
                    "(default benchmarks/results in full mode, none with --quick)")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.blocks:
        cfg["blocks"] = args.blocks
    workdir = args.workdir or tempfile.mkdtemp(prefix="layerprobe_big_")
    os.makedirs(workdir, exist_ok=True)
    need = sum(math.prod(shape) for _, shape, _ in tensor_specs(**cfg)) * 6  # 4 B (A) + 2 B (B)
    free = shutil.disk_usage(workdir).free
    if need * 1.1 > free and not args.reuse:
        raise SystemExit(f"{workdir}: needs {need / GB:.1f} GB free, has {free / GB:.1f} GB")
    try:
        t0 = time.perf_counter()
        if args.reuse and os.path.isfile(os.path.join(workdir, "b_bf16", "model.safetensors.index.json")):
            a, b = os.path.join(workdir, "a_fp32"), os.path.join(workdir, "b_bf16")
        else:
            a, b = generate_pair(workdir, **cfg)
        gen_s = time.perf_counter() - t0
        r = run_benchmark(a, b)
        r["config"] = cfg
        r["generate_s"] = gen_s
        r["quick"] = args.quick
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({k: v for k, v in r.items() if k != "machine"}, indent=1))
    results = args.results or (None if args.quick else os.path.join(ROOT, "benchmarks", "results"))
    if results:
        os.makedirs(results, exist_ok=True)
        with open(os.path.join(results, "big_checkpoint.json"), "w") as f:
            json.dump(r, f, indent=1, sort_keys=True)
            f.write("\n")
        with open(os.path.join(results, "big_checkpoint.md"), "w") as f:
            f.write(to_markdown(r, cfg))
    return 0 if r["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
