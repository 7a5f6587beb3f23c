"""Output targets through the CLI (``io/outputs.py``): never an input replaced, nothing
half-written on a full disk or a signal.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from hostile import ENV, assert_one_line, model_variant, run


def test_output_targets_never_replaced(f2, capsys, monkeypatch, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "adir").mkdir()
    for target in (fifo, tmp_path / "adir", ""):
        for argv in (["snapshot", f2["good"], "--probe", f2["probe"], "-o", target, "--quiet"],
                     ["freeze-list", f2["cmp"], f2["good"], "-o", target]):
            rc, _, err = run(argv, capsys, monkeypatch)
            assert_one_line(rc, err)
    assert os.path.exists(fifo) and not os.path.isfile(fifo)
    real = tmp_path / "real.pt"
    real.write_text("old")
    os.symlink(real, tmp_path / "link.pt")
    rc, _, _ = run(["snapshot", f2["good"], "--probe", f2["probe"], "-o", tmp_path / "link.pt", "--quiet"],
                   capsys, monkeypatch)
    assert rc == 0 and os.path.islink(tmp_path / "link.pt") and real.stat().st_size > 100  # written through


def test_out_dir_appears_together_or_not_at_all(f2, capsys, monkeypatch, tmp_path):
    import layerprobe.results.plots as plots

    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.json").write_text("old")
    (out / "notes.txt").write_text("mine")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_blocks", boom)
    rc, _, _ = run(["compare", f2["snap"], f2["snap_b"], "--out", out, "--quiet"], capsys, monkeypatch)
    assert rc == 130 and sorted(os.listdir(out)) == ["comparison.json", "notes.txt"]
    assert (out / "comparison.json").read_text() == "old"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".out.")] == []  # the temporary dir is gone
    monkeypatch.undo()
    rc, _, _ = run(["compare", f2["snap"], f2["snap_b"], "--out", out, "--quiet"], capsys, monkeypatch)
    assert rc == 0 and (out / "notes.txt").read_text() == "mine"
    assert {"comparison.json", "comparison.csv", "groups.csv", "blocks.png"} <= set(os.listdir(out))


def test_sigterm_cleans_temporary_files(f2, tmp_path):
    code = ("import os, signal, sys\n"
            "import layerprobe.results.plots as plots\n"
            "def slow(*a, **k): os.kill(os.getpid(), signal.SIGTERM)\n"
            "plots.plot_blocks = slow\n"
            "from layerprobe.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", code, "compare", str(f2["snap"]), str(f2["snap_b"]), "--out", str(out),
                        "--quiet"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 143, p.stderr
    assert not out.exists() or os.listdir(out) == []
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_disk_full_leaves_nothing(f3, capsys, monkeypatch, tmp_path):
    """was: an OSError traceback (exit 1) for -o and for --out, naming the temporary folder."""
    import layerprobe.io.outputs as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.json").write_text("old")
    monkeypatch.setattr(atomic.os, "fsync", full)
    for argv, named in (
        (["snapshot", f3["good"], "--probe", f3["probe"], "-o", tmp_path / "s.pt", "--quiet", "--max-length", "16"],
         tmp_path / "s.pt"),
        (["freeze-list", f3["cmp"], f3["good"], "-o", tmp_path / "names.txt"], tmp_path / "names.txt"),
        (["compare", f3["snap"], f3["snap_b"], "--out", out, "--quiet", "--no-ci"], out),
    ):
        rc, _, err = run(argv, capsys)
        line = assert_one_line(rc, err, "No space left on device", named)
        assert ".tmp" not in line  # the user's path, not the temporary one
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["comparison.json"]
    assert (out / "comparison.json").read_text() == "old"


def test_sigint_while_saving_a_snapshot(f3, tmp_path):
    code = ("import os, signal, sys, torch\n"
            "def slow(obj, fh, *a, **k):\n"
            "    fh.write(b'half a snapshot')\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "torch.save = slow\n"
            "from layerprobe.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    target = tmp_path / "s.pt"
    p = subprocess.run([sys.executable, "-c", code, "snapshot", str(f3["good"]), "--probe", str(f3["probe"]), "-o",
                        str(target), "--quiet", "--max-length", "16"], capture_output=True, text=True, timeout=120,
                       env=ENV)
    assert p.returncode == 130 and p.stderr.strip() == "layerprobe: interrupted", p.stderr
    assert os.listdir(tmp_path) == []


def test_outputs_never_replace_an_input(f3, capsys, tmp_path):
    """was: ``-o`` naming the comparison JSON, the trajectory CSV or the probe overwrote it."""
    cmp = tmp_path / "c.json"
    shutil.copy(f3["cmp"], cmp)
    traj = tmp_path / "t.csv"
    traj.write_text("step,block,cka_to_start,cka_to_previous,weight_drift\n0,block.0,1,1,0\n")
    probe = tmp_path / "probe.txt"
    shutil.copy(f3["probe"], probe)
    model = model_variant(f3, "model_for_outputs")
    probe_named_like_output = tmp_path / "o" / "comparison.csv"
    probe_named_like_output.parent.mkdir()
    shutil.copy(f3["probe"], probe_named_like_output)
    before = {p: p.read_bytes() for p in (cmp, traj, probe, model / "config.json", probe_named_like_output)}
    for argv in (["freeze-list", cmp, f3["good"], "-o", cmp],
                 ["plot-trajectory", traj, "-o", traj],
                 ["snapshot", f3["good"], "--probe", probe, "-o", probe],
                 ["snapshot", model, "--probe", probe, "-o", model / "config.json"],
                 ["compare", model, f3["good"], "--probe", probe_named_like_output, "--out", tmp_path / "o"]):
        rc, _, err = run(argv, capsys)
        assert_one_line(rc, err, "would replace an input")
    assert {p: p.read_bytes() for p in before} == before


def test_outputs_in_a_missing_directory(f3, capsys, tmp_path):
    """Every ``-o`` creates missing parent folders, as ``snapshot -o`` and ``compare --out`` always did
    (was: freeze-list and plot-trajectory failed after their work); one under a file is refused first."""
    traj = tmp_path / "t.csv"
    traj.write_text("step,block,cka_to_start,cka_to_previous,weight_drift\n0,block.0,1,1,0\n")
    cases = (["snapshot", f3["good"], "--probe", f3["probe"], "--quiet", "--max-length", "16", "-o"],
             ["freeze-list", f3["cmp"], f3["good"], "-o"], ["plot-trajectory", traj, "-o"])
    for argv, name in zip(cases, ("s.pt", "n.txt", "t.png")):
        rc, _, err = run([*argv, tmp_path / name / "new" / name], capsys)
        assert rc == 0 and (tmp_path / name / "new" / name).stat().st_size > 0, err
        rc, _, err = run([*argv, traj / name], capsys)
        assert_one_line(rc, err, "t.csv", "cannot")
    assert sorted(os.listdir(tmp_path)) == ["n.txt", "s.pt", "t.csv", "t.png"]


def test_atomic_output_dir_names_write_errors_and_passes_the_callers_own_errors_through(tmp_path):
    """An error of the work inside the block (a missing input) is not relabelled as an output problem;
    a full disk while writing the output is one line naming the output; either way nothing is left."""
    from layerprobe.io.outputs import atomic_output_dir
    from layerprobe.errors import LayerProbeError

    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        with atomic_output_dir(out):
            open(tmp_path / "missing" / "model.safetensors", "rb")
    with pytest.raises(LayerProbeError, match="cannot write to output directory") as e:
        with atomic_output_dir(out) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(tmp, "a.json"))
    assert e.value.path == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary folder
