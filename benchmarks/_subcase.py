"""Shared by the benchmarks that time each case in a fresh process (clean peak RSS, cold imports)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hwm_kb() -> int:
    """This process's peak resident set (VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_in_subprocess(script: str, kind: str, *args: str, timeout: float, env: dict | None = None) -> dict:
    """Run ``script --case kind *args`` in a fresh interpreter; its last stdout line is the JSON result."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    r = subprocess.run([sys.executable, os.path.abspath(script), "--case", kind, *args],
                       capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"case {kind} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])
