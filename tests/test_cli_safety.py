"""No code from a file ever runs, through every command and argument that accepts a file.

A crafted ``.pt`` whose unpickling would create a marker file is fed to each file-accepting
position of every subcommand; each run must exit 2 with one line on stderr (suggesting
safetensors where the file is a pickle), no traceback, and the marker must never appear. A model
directory whose ``config.json`` asks for custom code (``auto_map``) is refused the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import tiny_bert
from helpers_malicious import make_malicious_pt, pickle_globals
from layerprobe.cli import build_parser, main

LAYERPROBE = os.path.join(os.path.dirname(sys.executable), "layerprobe")


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc, err, marker, safetensors=True):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("layerprobe: error: ")
    if safetensors:
        assert "safetensors" in lines[0], lines[0]
    assert not os.path.exists(marker), "the malicious payload ran"


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer, texts):
    """Good inputs of every kind, a malicious .pt (zip and legacy), and malicious model dirs."""
    root = tmp_path_factory.mktemp("safety")
    marker = root / "PWNED"
    good_dir = root / "good"
    model = tiny_bert(0)
    model.save_pretrained(good_dir)
    tokenizer.save_pretrained(good_dir)
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(root / "good.safetensors"))
    torch.save(sd, root / "good_sd.pt")
    probe = root / "probe.csv"
    probe.write_text("text\n" + "\n".join(f'"{t}"' for t in texts) + "\n")
    assert main(["snapshot", str(good_dir), "--probe", str(probe), "-o", str(root / "snap.pt"), "--quiet",
                 "--max-length", "16"]) == 0
    evil = make_malicious_pt(root / "evil.pt", marker)
    evil_legacy = make_malicious_pt(root / "evil_legacy.pt", marker, via="system", legacy=True)
    assert any(g.endswith("open") for g in pickle_globals(evil)), "the payload must be live"
    # An HF directory whose weights are the malicious pickle.
    bin_dir = root / "evil_bin_dir"
    bin_dir.mkdir()
    shutil.copy(good_dir / "config.json", bin_dir / "config.json")
    tokenizer.save_pretrained(bin_dir)
    make_malicious_pt(bin_dir / "pytorch_model.bin", marker)
    # A sharded .bin directory with one malicious shard.
    sharded = root / "evil_sharded_dir"
    sharded.mkdir()
    shutil.copy(good_dir / "config.json", sharded / "config.json")
    tokenizer.save_pretrained(sharded)
    keys = list(sd)
    torch.save({k: sd[k] for k in keys[:5]}, sharded / "pytorch_model-00001-of-00002.bin")
    make_malicious_pt(sharded / "pytorch_model-00002-of-00002.bin", marker)
    weight_map = {k: "pytorch_model-00001-of-00002.bin" if i < 5 else "pytorch_model-00002-of-00002.bin"
                  for i, k in enumerate(keys)}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    # A directory whose config asks for custom code that would create the marker on import.
    remote = root / "evil_remote_code_dir"
    shutil.copytree(good_dir, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", "AutoModel": "evil_code.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "evil_code.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return {
        "marker": marker, "good_dir": good_dir, "safetensors": root / "good.safetensors",
        "state_dict": root / "good_sd.pt", "snapshot": root / "snap.pt", "probe": probe,
        "evil": evil, "evil_legacy": evil_legacy, "bin_dir": bin_dir, "sharded": sharded, "remote": remote,
        "out": root / "out",
    }


@pytest.fixture(autouse=True)
def _no_marker(files):
    assert not os.path.exists(files["marker"])
    yield
    assert not os.path.exists(files["marker"]), "the malicious payload ran"


# ------------------------------------------------------------------------------- compare A B

OTHER_KINDS = ["snapshot", "state_dict", "safetensors", "good_dir"]


@pytest.mark.parametrize("evil_kind", ["evil", "evil_legacy"])
@pytest.mark.parametrize("other", OTHER_KINDS)
@pytest.mark.parametrize("position", ["a", "b"])
def test_compare_refuses_malicious_pt(files, capsys, evil_kind, other, position):
    pair = [files[evil_kind], files[other]] if position == "a" else [files[other], files[evil_kind]]
    rc, out, err = run(["compare", *pair, "--format", "json", "--out", files["out"], "--quiet"], capsys)
    assert_refused(rc, err, files["marker"])
    assert str(files[evil_kind]) in err
    assert out == ""
    assert not os.path.exists(files["out"] / "comparison.json")


@pytest.mark.parametrize("with_probe", [False, True])
@pytest.mark.parametrize("evil_dir", ["bin_dir", "sharded"])
@pytest.mark.parametrize("position", ["a", "b"])
def test_compare_refuses_model_dir_with_malicious_bin(files, capsys, evil_dir, position, with_probe):
    pair = [files[evil_dir], files["good_dir"]] if position == "a" else [files["good_dir"], files[evil_dir]]
    extra = ["--probe", files["probe"], "--max-length", "16"] if with_probe else []
    rc, _, err = run(["compare", *pair, *extra, "--quiet"], capsys)
    assert_refused(rc, err, files["marker"])
    assert "pytorch_model" in err


@pytest.mark.parametrize("evil_kind", ["evil", "evil_legacy"])
def test_compare_probe_as_malicious_pt(files, capsys, evil_kind):
    # A probe file is never unpickled; whatever the reader says, nothing runs.
    rc, _, err = run(["compare", files["good_dir"], files["good_dir"], "--probe", files[evil_kind], "--quiet"],
                     capsys)
    assert_refused(rc, err, files["marker"], safetensors=False)
    assert str(files[evil_kind]) in err


def test_compare_refuses_remote_code_dir(files, capsys):
    for pair in ([files["remote"], files["good_dir"]], [files["good_dir"], files["remote"]]):
        rc, _, err = run(["compare", *pair, "--probe", files["probe"], "--quiet"], capsys)
        assert_refused(rc, err, files["marker"], safetensors=False)
        assert "auto_map" in err and "config.json" in err


# ------------------------------------------------------------------------------- snapshot MODEL

@pytest.mark.parametrize("evil_dir", ["bin_dir", "sharded"])
def test_snapshot_refuses_model_dir_with_malicious_bin(files, capsys, evil_dir, tmp_path):
    out = tmp_path / "s.pt"
    rc, _, err = run(["snapshot", files[evil_dir], "--probe", files["probe"], "-o", out, "--quiet"], capsys)
    assert_refused(rc, err, files["marker"])
    assert not out.exists()


def test_snapshot_refuses_remote_code_dir(files, capsys, tmp_path):
    out = tmp_path / "s.pt"
    rc, _, err = run(["snapshot", files["remote"], "--probe", files["probe"], "-o", out, "--quiet"], capsys)
    assert_refused(rc, err, files["marker"], safetensors=False)
    assert "auto_map" in err
    assert not out.exists()


@pytest.mark.parametrize("evil_kind", ["evil", "evil_legacy"])
def test_snapshot_model_as_malicious_file(files, capsys, evil_kind, tmp_path):
    rc, _, err = run(["snapshot", files[evil_kind], "--probe", files["probe"], "-o", tmp_path / "s.pt"], capsys)
    assert_refused(rc, err, files["marker"], safetensors=False)


@pytest.mark.parametrize("evil_kind", ["evil", "evil_legacy"])
def test_snapshot_probe_as_malicious_pt(files, capsys, evil_kind, tmp_path):
    rc, _, err = run(["snapshot", files["good_dir"], "--probe", files[evil_kind], "-o", tmp_path / "s.pt"], capsys)
    assert_refused(rc, err, files["marker"], safetensors=False)
    assert not (tmp_path / "s.pt").exists()


# ------------------------------------------------------------------------------- other subcommands

def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


#: Subcommands and how to feed them the malicious file at each file-accepting position.
#: ``{evil}`` is the malicious .pt, ``{dir}`` a folder holding only it, ``{good}`` a good model dir.
EXTRA_COMMANDS = {
    "plot-trajectory": [["plot-trajectory", "{dir}"], ["plot-trajectory", "{evil}"]],
    "freeze-list": [["freeze-list", "{evil}", "{good}"], ["freeze-list", "{json}", "{bin_dir}"],
                    ["freeze-list", "{json}", "{evil}"]],
    "show": [["show", "{evil}"], ["show", "{evil}", "--format", "json"], ["show", "{dir}"]],
}
#: Invocations that never read the malicious weights, so they may succeed (marker still checked):
#: freeze-list builds the architecture from config.json on the meta device and reads no weights.
NEVER_READ_WEIGHTS = {("freeze-list", "{json}", "{bin_dir}")}
COVERED = {"snapshot", "compare", "demo"} | set(EXTRA_COMMANDS)


def test_every_subcommand_is_covered():
    """A new file-accepting subcommand must be added here (and to EXTRA_COMMANDS)."""
    missing = set(_subcommands()) - COVERED
    assert not missing, f"add the malicious-pickle check for: {sorted(missing)}"


@pytest.mark.parametrize("command", sorted(EXTRA_COMMANDS))
def test_other_subcommands_refuse_malicious_pt(files, capsys, tmp_path, command):
    if command not in _subcommands():
        pytest.skip(f"{command} does not exist (yet)")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("snapshot.pt", "step-0001.pt", "checkpoint.pt", "pytorch_model.bin"):
        shutil.copy(files["evil"], run_dir / name)
    cmp_json = tmp_path / "comparison.json"
    assert main(["compare", str(files["snapshot"]), str(files["snapshot"]), "--format", "json", "--quiet"]) == 0
    cmp_json.write_text(capsys.readouterr().out)
    subs = {"{evil}": files["evil"], "{dir}": run_dir, "{good}": files["good_dir"], "{json}": cmp_json,
            "{bin_dir}": files["bin_dir"]}
    for template in EXTRA_COMMANDS[command]:
        argv = [str(subs.get(a, a)) for a in template]
        rc, _, err = run(argv, capsys)
        assert not os.path.exists(files["marker"]), argv
        if tuple(template) in NEVER_READ_WEIGHTS:
            assert rc == 0 and err == "", (argv, err)
            continue
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


# ------------------------------------------------------------------------------- real entry point

def test_console_script_refuses_malicious_pt(files):
    proc = subprocess.run([LAYERPROBE, "compare", str(files["evil"]), str(files["snapshot"]), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert re.search(r"safetensors", proc.stderr)
    assert not os.path.exists(files["marker"])
