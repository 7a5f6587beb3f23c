"""Start-up time: ``layerprobe --version`` / ``--help`` and ``import layerprobe`` against their limits.

One command, all ratios from the same run (best of ``--reps`` fresh interpreters each, interleaved)::

    python benchmarks/bench_startup.py          # 7 repetitions (~1 min)
    python benchmarks/bench_startup.py --quick  # 2 repetitions (CI smoke)

Limits (issue 13): ``--help``/``--version`` ≤ 0.3 s wall; ``import layerprobe`` ≤ 1.2× a bare
interpreter importing ``torch`` and ``transformers``. Writes ``benchmarks/results/startup.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
_SCRIPT = os.path.join(os.path.dirname(PY), "layerprobe")  # the installed entry point
CLI = [_SCRIPT] if os.path.exists(_SCRIPT) else [PY, "-m", "layerprobe.cli"]
CASES = {
    "python (bare)": [PY, "-c", "pass"],
    "import torch": [PY, "-c", "import torch"],
    "import torch, transformers": [PY, "-c", "import torch, transformers"],
    "import layerprobe": [PY, "-c", "import layerprobe"],
    "layerprobe --version": [*CLI, "--version"],
    "layerprobe --help": [*CLI, "--help"],
    "layerprobe --version imports torch?": [PY, "-c", "import sys; from layerprobe.cli import main\n"
                                            "try: main(['--version'])\nexcept SystemExit: pass\n"
                                            "print('torch' in sys.modules, file=sys.stderr)"],
}


def measure(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode not in (0,):
        raise SystemExit(f"{cmd} failed: {r.stderr[-800:]}")
    return wall, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    reps = 2 if args.quick else args.reps
    best: dict[str, float] = {}
    torch_loaded = None
    for cmd in CASES.values():  # warm the file cache once
        measure(cmd)
    for _ in range(reps):
        for name, cmd in CASES.items():
            wall, err = measure(cmd)
            if name.endswith("?"):
                torch_loaded = err == "True"
                continue
            best[name] = min(best.get(name, float("inf")), wall)
    base = best["import torch, transformers"]
    res = {"best_s": best, "reps": reps, "version_imports_torch": torch_loaded,
           "import_over_torch_transformers": best["import layerprobe"] / base,
           "version_over_limit": best["layerprobe --version"] / 0.3, "help_over_limit": best["layerprobe --help"] / 0.3}
    os.makedirs(args.out, exist_ok=True)
    name = "startup_quick" if args.quick else "startup"
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"# Start-up{' (quick)' if args.quick else ''}", "",
             f"Wall time, best of {reps} fresh interpreters per case (interleaved), 2 CPUs shared with other jobs.", "",
             "| case | best wall |", "|---|---|"]
    lines += [f"| `{k}` | {v:.3f} s |" for k, v in best.items()]
    lines += ["", f"- `layerprobe --version`: {best['layerprobe --version']:.3f} s = {res['version_over_limit']:.2f}× "
              f"the 0.3 s limit; `--help`: {best['layerprobe --help']:.3f} s = {res['help_over_limit']:.2f}×; "
              f"torch imported by `--version`: {torch_loaded}.",
              f"- `import layerprobe` / `import torch, transformers` = **{res['import_over_torch_transformers']:.2f}×** "
              "(limit 1.2×)."]
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
