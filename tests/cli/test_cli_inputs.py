"""The command line itself (``cli.py``): option values, stdout closed or full, help, no command.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys

import pytest

from layerprobe.cli import build_parser, main
from hostile import ENV, assert_one_line, run


@pytest.mark.parametrize("flags, needle", [
    (["--seed", "-1"], "--seed"),
    (["--max-drift", "-1"], "max_drift"),
    (["--max-drift", "nan"], "max_drift"),
    (["--min-train-blocks", "-2"], "min_train_blocks"),
    (["--min-train-blocks", "99"], "more than the 4 blocks"),
    (["--n-boot", "1000000000000"], "--n-boot"),
    (["--pooling", "first"], "pooling"),
    (["--text-column", "foo"], "applies only with --probe"),
    (["--max-tokens", "3"], "applies only with --pooling tokens"),
    (["--out", ""], "empty"),
])
def test_nonsense_flags_refused(f2, capsys, monkeypatch, flags, needle):
    rc, _, err = run(["compare", f2["snap"], f2["snap_b"], "--quiet", *flags], capsys, monkeypatch)
    assert_one_line(rc, err, needle)


class _FullStream(io.StringIO):
    def write(self, s):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_stdout_closed_or_full(f3, capsys, monkeypatch, stdout):
    """was: AttributeError / OSError tracebacks with exit 1."""
    for argv in (["compare", f3["snap"], f3["snap_b"], "--quiet", "--no-ci"], ["freeze-list", f3["cmp"], f3["good"]]):
        monkeypatch.setattr(sys, "stdout", None if stdout == "closed" else _FullStream())
        rc = main([str(a) for a in argv])
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert_one_line(rc, err, "standard output", "closed" if stdout == "closed" else "No space left")


def test_broken_pipe_is_quiet(f3):
    """``layerprobe compare a b | head -c 10``. was: a BrokenPipeError traceback, exit 1."""
    code = ("import os, sys\nr, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"  # a pipe whose reader is gone
            "from layerprobe.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, "-c", code, "compare", str(f3["snap"]), str(f3["snap_b"]), "--format", "json",
                        "--quiet", "--no-ci"], capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 128 + signal.SIGPIPE and p.stderr == "", p.stderr


@pytest.mark.parametrize("flags, needle", [
    (["--ci-level", "0"], "--ci-level must be in (0, 1)"),  # was: "need 0 < ci_level < 1 and n_boot >= 1 ..."
    (["--ci-level", "1"], "--ci-level"),
    (["--ci-level", "nan"], "--ci-level"),
    (["--min-cka", "nan"], "--min-cka"),
    (["--min-cka", "inf"], "--min-cka"),
    (["--n-boot", "0"], "--n-boot"),
    (["--max-examples", "0"], "--max-examples"),
    (["--seed", "nan"], "invalid int value"),  # argparse errors: was the usage block, then the error
    (["--format", "xml"], "invalid choice"),
    (["--bogus"], "unrecognized arguments"),
    (["--blocks", "encoder.layer.*"], "--blocks (blocks=) applies only to a model run here"),  # was: ignored
    (["--embeddings", ""], "--embeddings"),
    (["--dtype", "bfloat16"], "--dtype"),
    (["--weights-a", "{a}"], "already holds weights"),  # was: replaced the snapshot's own weights
])
def test_compare_option_values(f3, capsys, flags, needle):
    flags = [x.replace("{a}", str(f3["a"])) for x in flags]
    rc, out, err = run(["compare", f3["snap"], f3["snap_b"], "--quiet", *flags], capsys)
    assert_one_line(rc, err, needle)
    assert out == ""


def test_ignored_settings_refused_for_weights_only(f3, capsys):
    rc, _, err = run(["compare", f3["a"], f3["b"], "--blocks", "encoder.layer.*", "--quiet"], capsys)
    assert_one_line(rc, err, "--blocks")
    rc, _, err = run(["compare", f3["good"], f3["good"], "--dtype", "float16", "--quiet"], capsys)  # no probe: no run
    assert_one_line(rc, err, "--dtype")


@pytest.mark.parametrize("flags, needle", [
    (["--embeddings", "no.such.module"], "embeddings pattern 'no.such.module' matches no module"),  # was: dropped
    (["--batch-size", "0"], "--batch-size"),
    (["--max-length", "-3"], "--max-length"),
    (["--pooling", "tokens", "--max-tokens", "0"], "--max-tokens"),
])
def test_snapshot_option_values(f3, capsys, tmp_path, flags, needle):
    rc, _, err = run(["snapshot", f3["good"], "--probe", f3["probe"], "-o", tmp_path / "s.pt", "--quiet", *flags],
                     capsys)
    assert_one_line(rc, err, needle)
    assert os.listdir(tmp_path) == []


def test_no_command_is_one_line(capsys):
    rc, out, err = run([], capsys)
    assert_one_line(rc, err, "required: command")


@pytest.mark.parametrize("command", sorted(dict(next(a for a in build_parser()._actions
                                                     if a.__class__.__name__ == "_SubParsersAction").choices)))
def test_help_for_every_subcommand(capsys, command):
    rc, out, err = run([command, "--help"], capsys)
    assert rc == 0 and err == "" and out.startswith(f"usage: layerprobe {command}")
