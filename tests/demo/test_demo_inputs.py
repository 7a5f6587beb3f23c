"""The demo's inputs and output folder (``demo/run.py``).

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import os

from conftest import tiny_bert

from hostile import assert_one_line, run, strict_json


def test_demo_refuses_too_small_a_probe_before_any_work(capsys, tmp_path):
    """was: fine-tuned for minutes, then failed on 'linear CKA needs at least 2', leaving base.pt and tuned.pt."""
    rc, _, err = run(["demo", "--out", tmp_path / "d", "--probe-size", "1", "--quiet"], capsys)
    assert_one_line(rc, err, "probe_size must be an integer >= 4")
    assert os.listdir(tmp_path) == []


def test_demo_output_appears_together_or_not_at_all(capsys, monkeypatch, tmp_path, tokenizer, texts):
    import pandas as pd

    import layerprobe.demo.run as demo
    import layerprobe.demo.train as train

    frame = pd.DataFrame({"text": texts[:8], "label": [0, 1] * 4})
    monkeypatch.setattr(demo, "rotten_tomatoes_splits", lambda *a, **k: (frame, frame, frame))
    monkeypatch.setattr(demo, "default_model_path", lambda: "unused")
    monkeypatch.setattr(demo, "load_classifier", lambda *a: (tiny_bert(0, head=True), tokenizer))
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 0.5)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(train, "fine_tune", interrupted)
    rc, _, err = run(["demo", "--out", out, "--quiet"], capsys)
    assert rc == 130 and os.listdir(out) == ["notes.txt"], err  # was: base.pt left behind
    assert os.listdir(tmp_path) == ["d"]
    monkeypatch.setattr(train, "fine_tune", lambda *a, **k: {"steps": 0, "seconds": 0.0})
    rc, stdout, err = run(["demo", "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    assert {"base.pt", "tuned.pt", "comparison.json", "run.json", "blocks.png", "notes.txt"} <= set(os.listdir(out))
    assert "wrote base.pt" in stdout and strict_json((out / "run.json").read_text())["accuracy_after"] == 0.5
