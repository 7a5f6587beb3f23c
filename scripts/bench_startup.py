"""Start-up cost of ``import layerprobe`` and ``layerprobe --version``, before and after, in one run.

    .venv/bin/python scripts/bench_startup.py [--before REF] [--reps N]

"before" is the package at git REF (extracted with ``git archive`` into a temporary folder, the
working tree untouched); "after" is the working tree. Each measurement is a fresh interpreter;
the table shows the median wall time over N interleaved repetitions and whether torch /
transformers were imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "import layerprobe": "import layerprobe",
    "layerprobe --version": (
        "import contextlib, io\nfrom layerprobe.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--version'])\n    except SystemExit: pass"
    ),
}


def _run(src: str, code: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"}
    script = "import sys\n" + code + "\nprint(int('torch' in sys.modules), int('transformers' in sys.modules))"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=src, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout.split("\n")[-2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="208be05", help="git ref of the 'before' package (default 208be05)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.before, "layerprobe"], capture_output=True,
                                 check=True).stdout
        path = os.path.join(tmp, "before.tar")
        with open(path, "wb") as f:
            f.write(archive)
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        trees = {f"before ({args.before})": tmp, "after (working tree)": ROOT}
        times: dict[tuple[str, str], list[float]] = {}
        flags: dict[tuple[str, str], str] = {}
        for _ in range(args.reps):  # interleaved, so load changes hit both sides alike
            for tree, src in trees.items():
                for case, code in CASES.items():
                    dt, flag = _run(src, code)
                    times.setdefault((tree, case), []).append(dt)
                    flags[tree, case] = flag
    print(f"| tree | command | median wall s ({args.reps} runs) | torch imported | transformers imported |")
    print("|---|---|---|---|---|")
    for (tree, case), ts in times.items():
        torch_in, trainer_in = flags[tree, case].split()
        print(f"| {tree} | `{case}` | {statistics.median(ts):.2f} | {'yes' if torch_in == '1' else 'no'} | "
              f"{'yes' if trainer_in == '1' else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
