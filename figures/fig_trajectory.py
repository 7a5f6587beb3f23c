"""Per-block CKA to the start and weight drift over training steps, from a saved trajectory CSV.

Drawn from the CSV only (never a model): by default the committed
benchmarks/results/auto_freeze_trajectory.csv (MiniLM-L6 on Rotten Tomatoes in a Trainer with
``LayerProbeCallback(auto_freeze=True)``; dotted lines mark when an entry was frozen).

    .venv/bin/python figures/fig_trajectory.py [CSV] [-o figures/fig_trajectory.png]
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from layerprobe.results.trajectory import plot_trajectory, read_trajectory  # noqa: E402

DEFAULT = os.path.join(HERE, "..", "benchmarks", "results", "auto_freeze_trajectory.csv")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="?", default=DEFAULT)
    ap.add_argument("-o", "--out", default=os.path.join(HERE, "fig_trajectory.png"))
    a = ap.parse_args(argv)
    df = read_trajectory(a.csv)
    plot_trajectory(df, a.out, title="MiniLM-L6 on Rotten Tomatoes: per-block change during fine-tuning")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
