"""Probe files as inputs (``io/probe_files.py``): special files, huge lines and fields, odd JSON,
saved datasets.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hostile import assert_one_line, run


@pytest.mark.parametrize("which", ["probe_fifo", "probe_device", "comparison_fifo", "checkpoint_device"])
def test_special_files_are_refused_not_read(f2, tmp_path, which):
    """In a subprocess with a timeout and a memory limit: a regression fails instead of hanging."""
    fifo = tmp_path / "p.txt"
    os.mkfifo(fifo)
    dev = tmp_path / "zero.txt"
    os.symlink("/dev/zero", dev)  # read-only use of the device, through a temporary link
    argv = {"probe_fifo": ["snapshot", f2["good"], "--probe", fifo, "-o", tmp_path / "x.pt"],
            "probe_device": ["compare", f2["good"], f2["good"], "--probe", dev],
            "comparison_fifo": ["freeze-list", fifo, f2["good"]],
            "checkpoint_device": ["compare", dev, f2["snap"]]}[which]
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from layerprobe.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_line(p.returncode, p.stderr, "expected a regular file")


def test_huge_single_line_probe_refused(f2, capsys, monkeypatch, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("good " * 2_000_000)
    rc, _, err = run(["snapshot", f2["good"], "--probe", big, "-o", tmp_path / "x.pt"], capsys, monkeypatch)
    assert_one_line(rc, err, "more than the 1,000,000 accepted")


@pytest.mark.parametrize("name, content, needle", [
    ("deep.jsonl", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "nested too deeply"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("bigint.jsonl", '{"text": "good", "n": ' + "9" * 5000 + "}\n", "digits"),
    ("surrogate.jsonl", '{"text": "good \\ud800 movie"}\n', "lone surrogate"),
])
def test_odd_json_probes_refused(f2, capsys, monkeypatch, tmp_path, name, content, needle):
    (tmp_path / name).write_text(content)
    rc, _, err = run(["snapshot", f2["good"], "--probe", tmp_path / name, "-o", tmp_path / "x.pt"], capsys, monkeypatch)
    assert_one_line(rc, err, name, needle)
