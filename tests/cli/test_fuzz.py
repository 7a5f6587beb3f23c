"""Random byte flips and truncations of every file kind through the CLI: exit 0 or one line.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import shutil

import pytest

from hostile import assert_one_line, run

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _mutate(data: bytes, flips, cut) -> bytes:
    b = bytearray(data)
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b[: max(0, len(b) - cut)]) if cut else bytes(b)


FUZZ_KINDS = ["snapshot", "probe", "comparison", "config", "safetensors_in_dir", "tokenizer"]


def _fuzz_once(f2, tmp_path, kind, flips, cut, capsys, monkeypatch):
    if kind == "snapshot":
        p = tmp_path / "s.pt"
        p.write_bytes(_mutate(f2["snap"].read_bytes(), flips, cut))
        argv = ["compare", p, f2["snap_b"], "--quiet", "--no-ci"]
    elif kind == "probe":
        p = tmp_path / "p.txt"
        p.write_bytes(_mutate(f2["probe"].read_bytes(), flips, cut))
        argv = ["compare", f2["good"], f2["good"], "--probe", p, "--quiet", "--no-ci", "--no-anatomy"]
    elif kind == "comparison":
        p = tmp_path / "c.json"
        p.write_bytes(_mutate(f2["cmp"].read_bytes(), flips, cut))
        argv = ["freeze-list", p, f2["good"]]
    else:
        d = tmp_path / "m"
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(f2["good"], d)
        name = {"config": "config.json", "safetensors_in_dir": "model.safetensors", "tokenizer": "tokenizer.json"}[kind]
        (d / name).write_bytes(_mutate((d / name).read_bytes(), flips, cut))
        argv = ["compare", f2["good"], d, "--probe", f2["probe"], "--quiet", "--no-ci", "--no-anatomy"]
    rc, _, err = run(argv, capsys, monkeypatch)
    if rc != 0:
        assert_one_line(rc, err)


def _fuzz(kind, n):
    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))
    @given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4),
           cut=st.integers(0, 5000))
    def check(f2, tmp_path, capsys, monkeypatch, flips, cut):
        _fuzz_once(f2, tmp_path, kind, flips, cut, capsys, monkeypatch)
    return check


@pytest.mark.parametrize("kind", FUZZ_KINDS)
def test_fuzz_every_file_kind_fast(f2, tmp_path, capsys, monkeypatch, kind):
    _fuzz(kind, 3)(f2, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("kind", FUZZ_KINDS)
def test_fuzz_every_file_kind(f2, tmp_path, capsys, monkeypatch, kind):
    _fuzz(kind, 60)(f2, tmp_path, capsys, monkeypatch)
