"""The CLI through its real entry points: snapshot -> compare, formats, --out, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import pin_default_rule, tiny_bert
from layerprobe.cli import main

NAMES = ["embeddings", "block.0", "block.1", "block.2", "block.3"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("models")
    base, tuned = tiny_bert(0, head=True), tiny_bert(0, head=True)
    with torch.no_grad():
        for p in tuned.bert.encoder.layer[3].parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn_like(p))
    for name, m in (("base", base), ("tuned", tuned)):
        m.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "base", root / "tuned"


@pytest.fixture(scope="module")
def probe_csv(tmp_path_factory, texts):
    p = tmp_path_factory.mktemp("probe") / "probe.csv"
    p.write_text("text,label\n" + "\n".join(f'"{t}",1' for t in texts) + "\n")
    return p


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, model_dirs, probe_csv):
    out = tmp_path_factory.mktemp("snaps")
    for name, d in zip(("base", "tuned"), model_dirs):
        assert main(["snapshot", str(d), "--probe", str(probe_csv), "-o", str(out / f"{name}.pt"), "--quiet",
                     "--max-length", "32"]) == 0
    return out / "base.pt", out / "tuned.pt"


def test_snapshot_writes_a_loadable_file(snapshots, capsys):
    from layerprobe import Snapshot

    s = Snapshot.load(snapshots[0])
    assert s.names == NAMES and s.meta["n_examples"] == 48 and s.meta["max_length"] == 32
    assert s.meta["model_class"] == "BertForSequenceClassification"  # loaded with its own class (issue 12)


def test_compare_table(snapshots, capsys):
    assert main(["compare", str(snapshots[0]), str(snapshots[1])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["entry", "CKA", "drift"]
    assert "advice: freeze embeddings, block.0, block.1, block.2; train block.3" in out
    assert "block.3: train: CKA" in out


def test_compare_json_and_out_dir(snapshots, capsys, tmp_path):
    out_dir = tmp_path / "res"
    assert main(["compare", str(snapshots[0]), str(snapshots[1]), "--format", "json", "--out", str(out_dir),
                 "--min-cka", "0.9"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [b["name"] for b in d["blocks"]] == NAMES
    assert d["blocks"][0]["cka"] == pytest.approx(1.0) and d["blocks"][-1]["cka"] < 0.999
    assert d["recommendation"]["thresholds"]["min_cka"] == 0.9
    assert sorted(os.listdir(out_dir)) >= ["blocks.png", "comparison.csv", "comparison.json", "groups.csv"]
    assert json.loads((out_dir / "comparison.json").read_text()) == d
    assert (out_dir / "blocks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("fmt,first", [("csv", "index,name,kind,cka"), ("markdown", "| entry | CKA")])
def test_compare_formats(snapshots, capsys, fmt, first):
    assert main(["compare", str(snapshots[0]), str(snapshots[1]), "--format", fmt]) == 0
    assert capsys.readouterr().out.startswith(first)


def test_compare_models_with_probe_equals_snapshots(model_dirs, probe_csv, snapshots, capsys):
    assert main(["compare", *map(str, model_dirs), "--probe", str(probe_csv), "--max-length", "32",
                 "--format", "json", "--quiet"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert main(["compare", *map(str, snapshots), "--format", "json"]) == 0
    files = json.loads(capsys.readouterr().out)
    for a, b in zip(direct["blocks"], files["blocks"]):
        assert a["cka"] == pytest.approx(b["cka"], abs=1e-12) and a["weight_drift"] == b["weight_drift"]


def test_weights_only_says_why(model_dirs, capsys):
    assert main(["compare", *map(str, model_dirs)]) == 0
    out = capsys.readouterr().out
    assert "note: CKA not computed" in out and "no probe given" in out
    assert "advice: freeze nothing" in out


def test_bad_input_is_one_line_exit_2(tmp_path, snapshots, capsys):
    assert main(["compare", str(tmp_path / "nope.pt"), str(snapshots[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pt" in err and "Traceback" not in err
    assert main(["compare", str(snapshots[0]), str(snapshots[1]), "--min-cka", "2"]) == 2
    assert "--min-cka" in capsys.readouterr().err


def test_console_script_runs(snapshots):
    exe = os.path.join(os.path.dirname(sys.executable), "layerprobe")
    r = subprocess.run([exe, "compare", str(snapshots[0]), str(snapshots[1]), "--format", "json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["meta"]["cka_computed"] is True
    r = subprocess.run([exe, "compare", "missing-a.pt", "missing-b.pt"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("layerprobe: error: missing-a.pt") and r.stdout == ""


def test_light_start_up():
    """``import layerprobe`` and ``layerprobe --version/--help`` load neither torch nor transformers."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\nimport layerprobe\nfrom layerprobe.cli import main\n"
            "for argv in (['--version'], ['--help'], ['compare', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: main(argv)\n"
            "        except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_compare_relative_rule_flag(snapshots, capsys):
    # only block.3 moved: every lower entry's change is ~0 relative to it, so the relative rule freezes them
    assert main(["compare", str(snapshots[0]), str(snapshots[1]), "--format", "json",
                 "--max-relative-change", "0.05"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["recommendation"]["thresholds"]["max_relative_change"] == 0.05
    assert d["recommendation"]["freeze"] == NAMES[:-1]
    assert "top block's change" in d["recommendation"]["reasons"]["block.2"]
    for bad in ("1.5", "-0.1", "nan"):
        assert main(["compare", str(snapshots[0]), str(snapshots[1]), "--max-relative-change", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--max-relative-change must be in [0, 1]" in err


def test_compare_revert_flag_on_model_directories(model_dirs, probe_csv, snapshots, capsys):
    """--revert on two classifier directories: meta.revert has one row per prefix; only block.3 changed,
    so reverting up to block.2 leaves the outputs exactly in place. On snapshots (no model to run): exit 2,
    one line saying why."""
    assert main(["compare", *map(str, model_dirs), "--probe", str(probe_csv), "--max-length", "32", "--revert",
                 "--format", "json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)["meta"]["revert"]["rows"]
    assert [r["k"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["kl"] for r in rows[:4]] == [0.0] * 4 and rows[4]["kl"] > 0
    assert main(["compare", *map(str, snapshots), "--revert"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "revert test" in err and "Traceback" not in err


def test_compare_calibrate_flag(model_dirs, probe_csv, snapshots, capsys):
    """--calibrate on two model directories: the step cost is measured (meta.step_cost, the advice's saving says
    so); on snapshots or a series: exit 2, one line."""
    assert main(["compare", *map(str, model_dirs), "--probe", str(probe_csv), "--max-length", "32", "--calibrate",
                 "--no-revert", "--format", "json", "--quiet"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["meta"]["step_cost"]["served"]) == {"embeddings", "block.0", "block.1", "block.2", "block.3"}
    assert main(["compare", *map(str, snapshots), "--calibrate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "calibrating the step cost needs" in err
    assert main(["compare", *map(str, snapshots), str(snapshots[1]), "--calibrate"]) == 2
    assert "--calibrate applies to one comparison" in capsys.readouterr().err


def _subparsers():
    import argparse

    from layerprobe.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_option_says_what_it_does(command, capsys):
    """Issue 19 item 10: ``--batch-size`` and ``--format`` (and the demo's flags) had no help text."""
    import argparse

    bare = [a.option_strings or [a.dest] for a in _subparsers()[command]._actions
            if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert bare == []
    if command == "compare":
        assert main(["compare", "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--batch-size N probe examples per forward pass (default 32)" in out
        assert "--format {table,json,csv,markdown} what is printed on stdout" in out


def test_demo_flag_defaults_are_the_demo_config():
    from layerprobe.demo.run import DemoConfig

    demo = _subparsers()["demo"]
    for field in ("train_size", "probe_size", "test_size", "epochs", "lr", "seed"):
        assert demo.get_default(field) == getattr(DemoConfig(), field), field


@pytest.fixture(scope="module")
def saved(snapshots, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "res"
    with pytest.MonkeyPatch.context() as mp:  # the tests' default rule (conftest), not the file as shipped
        pin_default_rule(mp, "cka")
        assert main(["compare", *map(str, snapshots), "--out", str(out), "--quiet"]) == 0
    return out / "comparison.json"


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "markdown"])
def test_show_prints_a_saved_comparison_as_compare_printed_it(snapshots, saved, capsys, fmt):
    """Issue 19 item 10: a saved comparison.json could be neither re-rendered nor re-plotted."""
    assert main(["compare", *map(str, snapshots), "--format", fmt]) == 0
    printed = capsys.readouterr().out
    assert main(["show", str(saved), "--format", fmt]) == 0
    assert capsys.readouterr().out == printed


def test_show_plots_a_saved_comparison(saved, capsys, tmp_path):
    png = tmp_path / "figs" / "blocks.png"
    assert main(["show", str(saved), "--plot", str(png), "--title", "again"]) == 0
    out, err = capsys.readouterr()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.startswith("entry") and f"wrote {png}" in err
    assert main(["show", str(saved), "--plot", str(saved)]) == 2  # never over its input
    assert saved.read_text().startswith("{")


def test_show_plots_the_cross_layer_map(saved, capsys, tmp_path):
    """issue 19 leftover: show --plot drew only the per-entry figure; the cross-layer map had no way back."""
    with_map = tmp_path / "golden.json"
    with_map.write_text(json.dumps(_golden_doc()))  # compared with cross_layer=True
    png, blocks = tmp_path / "maps" / "cross.png", tmp_path / "maps" / "blocks.png"
    assert main(["show", str(with_map), "--plot-cross-layer", str(png), "--plot", str(blocks)]) == 0
    out, err = capsys.readouterr()
    assert png.read_bytes()[:8] == blocks.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}: the cross-layer CKA map" in err and out.startswith("entry")
    # no map in the file: one line before anything is drawn; one file for both figures: refused
    other = tmp_path / "none.png"
    assert main(["show", str(saved), "--plot-cross-layer", str(other), "--plot", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no cross-layer map" in err and "--cross-layer" in err
    assert not other.exists() and not (tmp_path / "b.png").exists()
    assert main(["show", str(with_map), "--plot-cross-layer", str(png), "--plot", str(png)]) == 2
    assert "name the same file" in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["symlink", "linked_dir", "hardlink"])
def test_show_refuses_one_file_for_both_figures_however_spelled(tmp_path, capsys, monkeypatch, spelling):
    """review-b: only abspath was compared, so a symlink or a hard link let the second figure replace the first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "golden.json").write_text(json.dumps(_golden_doc()))
    (tmp_path / "figs").mkdir()
    if spelling == "symlink":  # the link's target does not exist yet
        os.symlink("a.png", "figs/l.png")
        first, second = "figs/a.png", "figs/l.png"
    elif spelling == "linked_dir":
        os.symlink("figs", "also")
        first, second = "figs/a.png", "also/a.png"
    else:
        (tmp_path / "figs" / "a.png").write_bytes(b"old")
        os.link("figs/a.png", "figs/h.png")
        first, second = "figs/a.png", "figs/h.png"
    assert main(["show", "golden.json", "--plot", first, "--plot-cross-layer", second]) == 2
    err = capsys.readouterr().err
    assert err == f"layerprobe: error: {first}: --plot and --plot-cross-layer name the same file; give each its own\n"
    assert sorted(os.listdir("figs")) == (["a.png", "h.png"] if spelling == "hardlink" else
                                          ["l.png"] if spelling == "symlink" else [])
    if spelling == "hardlink":
        assert (tmp_path / "figs" / "a.png").read_bytes() == b"old"


def _cross(doc, **change):
    return {**doc, "cross_layer": {**doc["cross_layer"], **change}}


@pytest.mark.parametrize("case, message", [
    ("no_names", "its cross-layer map names no entries"),  # before: IndexError traceback
    ("ragged", "its cross-layer map 'base' is not 5 x 5 (a row and a column per name)"),  # before: a ValueError
    ("narrow", "its cross-layer map 'tuned' is not 5 x 5 (a row and a column per name)"),  # before: drawn, wrong
    ("fewer_names", "its cross-layer map 'base_vs_tuned' is not 4 x 4 (a row and a column per name)"),
    ("too_many", "its cross-layer map has 3,000 entries, more than the 256 drawn"),  # before: std::bad_alloc
])
def test_show_refuses_a_malformed_cross_layer_map_before_drawing(tmp_path, capsys, case, message):
    doc = _golden_doc()
    x = doc["cross_layer"]
    doc = {"no_names": lambda: _cross(doc, names=[], base_vs_tuned=[], base=[], tuned=[]),
           "ragged": lambda: _cross(doc, base=[x["base"][0], x["base"][1][:3], *x["base"][2:]]),
           "narrow": lambda: _cross(doc, tuned=[r[:2] for r in x["tuned"]]),
           "fewer_names": lambda: _cross(doc, names=x["names"][:4]),
           "too_many": lambda: _cross(doc, names=[f"e{i}" for i in range(3000)])}[case]()
    src = tmp_path / "c.json"
    src.write_text(json.dumps(doc))
    cross, blocks = tmp_path / "out" / "cross.png", tmp_path / "out" / "blocks.png"
    assert main(["show", str(src), "--plot-cross-layer", str(cross), "--plot", str(blocks)]) == 2
    out, err = capsys.readouterr()
    assert err == f"layerprobe: error: {src}: {message}: cannot draw --plot-cross-layer\n" and out == ""
    assert not cross.exists() and not blocks.exists()


def _golden_doc():
    with open(os.path.join(os.path.dirname(__file__), "golden", "comparison.json"), encoding="utf-8") as f:
        return json.load(f)


def _bad_files(tmp_path):
    doc = _golden_doc()
    cases = {"missing.json": (None, "not found"), "dir.json": (None, "directory"), "fifo.json": (None, "FIFO"),
             "list.json": ("[1, 2]", "expected a JSON object, found an array"),
             "cut.json": ('{"blocks": [', "malformed JSON"),
             "nan.json": ('{"blocks": [NaN]}', "malformed JSON"),
             "other.json": ('{"name": "x"}', "$ is missing 'schema_version'"),
             "cka.json": (json.dumps({**doc, "blocks": [{**doc["blocks"][0], "cka": "high"}]}),
                          "$.blocks[0].cka must be number or null, found the string 'high'"),
             "extra.json": (json.dumps({**doc, "recommendation": {**doc["recommendation"], "why": 1}}),
                            "$.recommendation has an unknown field 'why'"),
             "newer.json": (json.dumps({**doc, "schema_version": 99}), "schema_version 99 is newer")}
    for name, (text, _) in cases.items():
        if name == "dir.json":
            (tmp_path / name).mkdir()
        elif name == "fifo.json":
            os.mkfifo(tmp_path / name)
        elif text is not None:
            (tmp_path / name).write_text(text)
    return {tmp_path / name: needle for name, (_, needle) in cases.items()}


def test_show_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    """Comparison.load read with a bare open/json.load: a FIFO hung, a missing field was a KeyError."""
    for path, needle in _bad_files(tmp_path).items():
        assert main(["show", str(path)]) == 2, path
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"layerprobe: error: {path}: ") and needle in err, err


def test_comparison_load_refuses_a_bad_file_naming_it(tmp_path):
    from layerprobe.errors import LayerProbeError
    from layerprobe.results.comparison import Comparison

    for path, needle in _bad_files(tmp_path).items():
        with pytest.raises(LayerProbeError) as info:
            Comparison.load(path)
        assert str(info.value).startswith(f"{path}: ") and needle in str(info.value)


def test_show_reads_a_schema_1_file_and_renders_missing_numbers(tmp_path, capsys):
    doc = _golden_doc()
    rec = {k: v for k, v in doc["recommendation"].items() if k not in ("candidates", "tolerance", "predictor")}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**doc, "schema_version": 1, "recommendation": rec}))
    assert main(["show", str(old)]) == 0
    capsys.readouterr()
    holes = tmp_path / "holes.json"  # nulls the schema allows, where the renderer formatted numbers
    holes.write_text(json.dumps({**doc, "recommendation": {
        **doc["recommendation"], "freeze": ["embeddings"], "train": doc["recommendation"]["train"][1:],
        "frozen_param_fraction": None, "est_compute_saving": None,
        "candidates": [{**c, "memory_saved_mb": None} for c in doc["recommendation"]["candidates"]]}}))
    assert main(["show", str(holes)]) == 0
    assert "frozen parameters: — of the model; training compute saved: —" in capsys.readouterr().out


def test_compare_no_revert_skips_the_revert_test(model_dirs, probe_csv, capsys):
    assert main(["compare", *map(str, model_dirs), "--probe", str(probe_csv), "--max-length", "32", "--no-revert",
                 "--format", "json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "revert" not in doc["meta"] and not any("revert test" in n for n in doc["recommendation"]["notes"])
