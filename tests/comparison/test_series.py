"""Checkpoint series: compare BASE CKPT1 CKPT2 ... --out DIR; run directories; progress of a pilot (issue 12)."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
from conftest import tiny_bert

from layerprobe.cli import main
from layerprobe.comparison.series import SERIES_COLUMNS, checkpoint_step


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer, texts):
    """base/ and run/checkpoint-{10,20,30}/ with growing changes in block.3; a probe file."""
    root = tmp_path_factory.mktemp("series")
    m = tiny_bert(0, head=True)
    m.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(0)
    for step in (10, 20, 30):
        with torch.no_grad():
            for p in m.bert.encoder.layer[3].parameters():
                p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=g))
        d = root / "run" / f"checkpoint-{step}"
        m.save_pretrained(d)
        tokenizer.save_pretrained(d)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 120}))
    (root / "probe.txt").write_text("\n".join(texts[:20]) + "\n")
    return root


def test_series_from_a_run_directory(run, tmp_path, capsys, monkeypatch):
    import layerprobe.snapshot.take as snapshot

    calls = []
    real = snapshot.run_probe
    monkeypatch.setattr(snapshot, "run_probe", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "out"
    assert main(["compare", str(run / "base"), str(run / "run"), "--probe", str(run / "probe.txt"),
                 "--out", str(out), "--quiet", "--max-length", "16"]) == 0
    assert len(calls) == 4  # each model once over the probe
    df = pd.read_csv(out / "trajectory.csv")
    assert list(df.columns) == list(SERIES_COLUMNS)
    assert sorted(df["step"].unique()) == [0, 10, 20, 30]
    b3 = df[df["block"] == "block.3"].set_index("step")
    assert b3.loc[0, "cka_to_start"] == 1.0 and b3.loc[30, "cka_to_start"] < b3.loc[10, "cka_to_start"] < 1.0
    assert list(b3["weight_drift"]) == sorted(b3["weight_drift"]) and b3.loc[30, "weight_drift"] > 0
    assert b3.loc[20, "cka_to_previous"] < 1.0 and pd.isna(b3.loc[0, "cka_to_previous"])
    b0 = df[df["block"] == "block.0"]
    assert (b0["weight_drift"] == 0).all() and (b0["cka_to_start"] > 1 - 1e-6).all()
    assert (out / "trajectory.png").stat().st_size > 1000
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["meta"]["series"]["steps"] == [0, 10, 20, 30]
    assert doc["meta"]["progress"]["b"] == {"step": 30, "max_steps": 120, "fraction": 0.25}
    assert "steps [0, 10, 20, 30]" in capsys.readouterr().err  # stdout holds the table alone


def test_series_of_explicit_inputs_weights_only(run, tmp_path):
    ckpts = [str(run / "run" / f"checkpoint-{s}") for s in (10, 20, 30)]
    assert main(["compare", str(run / "base"), *ckpts, "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "trajectory.csv")
    assert sorted(df["step"].unique()) == [0, 10, 20, 30] and df["cka_to_start"].isna().all()


def test_series_needs_out(run, capsys):
    ckpts = [str(run / "run" / f"checkpoint-{s}") for s in (10, 20)]
    assert main(["compare", str(run / "base"), *ckpts]) == 2
    assert "--out" in capsys.readouterr().err


def test_pilot_checkpoint_says_how_far_the_run_went(run, capsys):
    assert main(["compare", str(run / "base"), str(run / "run" / "checkpoint-30")]) == 0
    assert "tuned side: step 30 of 120 (25% of the run)" in capsys.readouterr().out


def test_step_from_name_state_or_position(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "trainer_state.json").write_text('{"global_step": 7}')
    assert checkpoint_step(tmp_path / "checkpoint-500", 1) == 500
    assert checkpoint_step(tmp_path / "x", 1) == 7
    assert checkpoint_step(tmp_path / "y.pt", 3) == 3


def test_series_output_appears_together_or_not_at_all(run, tmp_path, monkeypatch):
    import layerprobe.results.trajectory as tp

    out = tmp_path / "out"
    out.mkdir()
    (out / "trajectory.csv").write_text("old\n")
    ckpts = [str(run / "run" / f"checkpoint-{s}") for s in (10, 20)]

    def boom(*a, **k):
        raise KeyboardInterrupt  # interrupted after the first two files were written

    monkeypatch.setattr(tp, "plot_trajectory", boom)
    assert main(["compare", str(run / "base"), *ckpts, "--out", str(out)]) == 130
    assert sorted(os.listdir(out)) == ["trajectory.csv"] and (out / "trajectory.csv").read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directory left behind


def test_series_bars_say_which_checkpoint_they_probe(run, tmp_path, capsys):
    """Issue 19 item 10: every bar of a series read ``probe:``; each now names its input."""
    assert main(["compare", str(run / "base"), str(run / "run"), "--probe", str(run / "probe.txt"),
                 "--out", str(tmp_path / "out"), "--max-length", "16"]) == 0
    lines = capsys.readouterr().err.split("\n")  # a line of a bar: its updates, each after a "\r"
    bars = [ln.split("\r")[-1].split(":")[0] for ln in lines if "100%" in ln]
    assert bars == ["probe base", "probe checkpoint-10", "probe checkpoint-20", "probe checkpoint-30"]


def test_a_series_prints_json_on_stdout(run, tmp_path, capsys):
    """Issue 19 item 10: a series printed "wrote ..." before the JSON and needed --out; stdout is now the
    JSON alone, with the trajectory in meta.series.trajectory, with or without --out."""
    from layerprobe.results import schema

    args = ["compare", str(run / "base"), str(run / "run"), "--probe", str(run / "probe.txt"), "--quiet",
            "--max-length", "16", "--format", "json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    doc = schema.check(json.loads(out))
    assert "meta.series.trajectory" in err and not os.listdir(tmp_path)
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out) == doc == json.loads((tmp_path / "out" / "comparison.json").read_text())
    rows = pd.DataFrame(doc["meta"]["series"]["trajectory"])
    csv = pd.read_csv(tmp_path / "out" / "trajectory.csv")
    assert list(rows.columns) == list(SERIES_COLUMNS) and len(rows) == len(csv) == 4 * 5
    pd.testing.assert_frame_equal(rows.astype(csv.dtypes.to_dict()), csv, rtol=1e-9)
    assert main([*args[:-2], "--format", "csv"]) == 2  # the trajectory has to go somewhere
    assert "--format json" in capsys.readouterr().err
# ------------------------------------------------------------------ issue 20: step order, one input per step

def test_series_given_out_of_order_is_read_in_step_order(run, tmp_path, capsys):
    """was: kept in the order given (30 10 20), so 'previous' and the trajectory were wrong."""
    ckpts = {s: str(run / "run" / f"checkpoint-{s}") for s in (10, 20, 30)}
    assert main(["compare", str(run / "base"), ckpts[30], ckpts[10], ckpts[20], "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    assert main(["compare", str(run / "base"), ckpts[10], ckpts[20], ckpts[30], "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    a = pd.read_csv(tmp_path / "a" / "trajectory.csv")
    b = pd.read_csv(tmp_path / "b" / "trajectory.csv")
    assert a["step"].tolist() == sorted(a["step"].tolist())
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("case", ["same_checkpoint_twice", "same_step_elsewhere", "before_the_base", "mixed"])
def test_series_steps_refused_before_any_work(run, tmp_path, capsys, case):
    import shutil

    c10, c20 = str(run / "run" / "checkpoint-10"), str(run / "run" / "checkpoint-20")
    other = tmp_path / "copy" / "checkpoint-20"
    if case == "same_step_elsewhere":
        shutil.copytree(c20, other)
    inputs = {"same_checkpoint_twice": [str(run / "base"), c10, c20, c10],
              "same_step_elsewhere": [str(run / "base"), c10, c20, str(other)],
              "before_the_base": [c20, c10, str(run / "run" / "checkpoint-30")],
              "mixed": [str(run / "base"), c10, str(run / "base"), c20]}[case]
    needle = {"same_checkpoint_twice": "step 10 is in the series twice", "same_step_elsewhere": "step 20 is in the "
              "series twice", "before_the_base": "step 10 is before the base's step 20",
              "mixed": "no training step for this series input"}[case]
    out = tmp_path / "out"
    rc = main(["compare", *inputs, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case, needle", [
    ("dangling", "checkpoint not found (a symbolic link to"),
    ("loop", "checkpoint is a symbolic link loop"),
    ("file", "named like a checkpoint but not a directory"),
])
def test_broken_checkpoint_entry_in_a_run_dir_is_an_error_not_skipped(run, tmp_path, capsys, case, needle):
    """A dangling link, a link loop or a file named checkpoint-N was skipped: the run became base vs checkpoint-10."""
    rd = tmp_path / "run"
    rd.mkdir()
    os.symlink(run / "run" / "checkpoint-10", rd / "checkpoint-10")
    bad = rd / "checkpoint-20"
    if case == "dangling":
        os.symlink(tmp_path / "moved_away", bad)
    elif case == "loop":
        os.symlink(bad, bad)
    else:
        bad.write_text("not a checkpoint")
    assert main(["compare", str(run / "base"), str(rd), "--format", "json", "--quiet"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and f"{bad}: {needle}" in lines[0], err
