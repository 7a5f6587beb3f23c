"""Paths that cannot be read (``io/files.py``): loops, dangling links, odd names, permissions.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import os
import shutil

import pytest

from hostile import assert_one_line, model_variant, run


def _link(tmp_path, name, target):
    p = tmp_path / name
    os.symlink(target, p)
    return p


@pytest.mark.parametrize("case", ["loop_input", "loop_probe", "dangling_input", "name_too_long", "parent_is_file",
                                  "loop_out", "dangling_out", "zero_length_safetensors", "probe_plain_dir",
                                  "freeze_list_model_is_file", "config_json_is_dir"])
def test_paths_that_cannot_be_read(f3, capsys, tmp_path, case):
    loop = tmp_path / "loop1"
    _link(tmp_path, "loop2", loop)
    _link(tmp_path, "loop1", tmp_path / "loop2")
    dangling = _link(tmp_path, "dangling", tmp_path / "nowhere")
    long_name = tmp_path / ("x" * 300 + ".safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    (tmp_path / "plain_dir").mkdir()
    argv, needles = {  # was: "no such file or directory" / "not found" / "File exists" for the first five
        "loop_input": (["compare", loop, f3["a"]], ["loop1", "symbolic link loop"]),
        "loop_probe": (["compare", f3["snap"], f3["snap_b"], "--probe", loop], ["loop1", "symbolic link loop"]),
        "dangling_input": (["compare", dangling, f3["a"]], ["dangling", "nowhere", "does not exist"]),
        "name_too_long": (["compare", long_name, f3["a"]], ["too long"]),
        "parent_is_file": (["compare", f3["a"] / "x", f3["a"]], ["parent of the path is a file"]),
        "loop_out": (["compare", f3["snap"], f3["snap_b"], "--out", loop], ["loop1", "leads nowhere"]),
        "dangling_out": (["compare", f3["snap"], f3["snap_b"], "--out", dangling], ["dangling", "leads nowhere"]),
        "zero_length_safetensors": (["compare", empty, f3["a"]], ["empty.safetensors", "empty (0 bytes)"]),
        "probe_plain_dir": (["compare", f3["snap"], f3["snap_b"], "--probe", tmp_path / "plain_dir"],
                            ["plain_dir", "not a saved dataset"]),
        "freeze_list_model_is_file": (["freeze-list", f3["cmp"], f3["a"]], ["a.safetensors", "model directory"]),
        "config_json_is_dir": (["compare", f3["good"], model_variant(f3, "cfg_dir", drop=("config.json",),
                                                                   files={"config.json": None}), "--probe",
                                f3["probe"]], ["config.json is a directory"]),
    }[case]
    rc, out, err = run([*argv, "--quiet"] if argv[0] == "compare" else argv, capsys)
    assert_one_line(rc, err, *needles)
    assert out == ""


def test_unreadable_files(f3, capsys, monkeypatch, tmp_path):
    """chmod 000 (faked through os.access: root reads any file, and the tests may run as root)."""
    locked = {str(tmp_path / n) for n in ("w.safetensors", "p.txt", "c.json", "w.pt")}
    shutil.copy(f3["a"], tmp_path / "w.safetensors")
    shutil.copy(f3["probe"], tmp_path / "p.txt")
    shutil.copy(f3["cmp"], tmp_path / "c.json")
    shutil.copy(f3["snap"], tmp_path / "w.pt")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) in locked else real_access(p, mode))
    for argv, name in ((["compare", tmp_path / "w.safetensors", f3["a"]], "w.safetensors"),
                       (["compare", f3["snap"], tmp_path / "w.pt"], "w.pt"),
                       (["compare", f3["good"], f3["good"], "--probe", tmp_path / "p.txt"], "p.txt"),
                       (["freeze-list", tmp_path / "c.json", f3["good"]], "c.json")):
        rc, _, err = run([*argv, "--quiet"] if argv[0] == "compare" else argv, capsys)
        assert_one_line(rc, err, name, "permission denied")


@pytest.mark.parametrize("name", ["new\nline.pt", "esc\x1b[31mred.pt", "tab\tand\u2028sep.pt", "名前 ü.pt"])
def test_odd_file_names_stay_on_one_line(f3, capsys, tmp_path, name):
    """was: a newline in a name cut the message to the name's first part; an escape code reached the terminal."""
    p = tmp_path / name
    p.write_text("not a checkpoint")
    rc, _, err = run(["compare", p, f3["a"], "--quiet"], capsys)
    line = assert_one_line(rc, err, "not a checkpoint")
    assert "\x1b" not in line and "\u2028" not in line
    escaped = name.replace("\n", "\\n").replace("\x1b", "\\x1b").replace("\u2028", "\\u2028")
    assert escaped in line  # the whole name, visibly escaped
