"""The callback's state saved with each Trainer checkpoint (integrations/hf_state.py): read back through the
safety boundary on resume — a damaged or hostile ``layerprobe_state.json`` is one line naming it."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import tiny_bert
from layerprobe.errors import LayerProbeError
from layerprobe.integrations.hf import STATE_JSON
from test_hf import _callback, _trainer


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tokenizer, texts):
    out = tmp_path_factory.mktemp("saved") / "run"
    _trainer(tiny_bert(0, head=True), tokenizer, texts, out, [_callback(tokenizer, texts)], save_strategy="steps",
             save_steps=4).train()
    return out


def _good(saved_run):
    return json.loads((saved_run / "checkpoint-4" / STATE_JSON).read_text())


@pytest.mark.parametrize("case", ["list", "no_tracker", "step_text", "step_other", "rows_not_list", "not_json",
                                  "too_large", "fifo"])
def test_a_damaged_state_is_one_line_naming_the_file(saved_run, tmp_path, tokenizer, texts, case):
    out = tmp_path / "run"
    if case == "fifo":  # a run of its own: the Trainer state of a copy points back at the intact original
        _trainer(tiny_bert(0, head=True), tokenizer, texts, out, [_callback(tokenizer, texts)],
                 save_strategy="steps", save_steps=4).train()
    else:
        shutil.copytree(saved_run, out)
    path = out / "checkpoint-4" / STATE_JSON
    good = _good(saved_run)
    if case == "list":
        path.write_text("[]")
    elif case == "no_tracker":
        path.write_text(json.dumps({k: v for k, v in good.items() if k != "tracker"}))
    elif case == "step_text":
        path.write_text(json.dumps({**good, "step": "4"}))
    elif case == "step_other":
        path.write_text(json.dumps({**good, "step": 6}))
    elif case == "rows_not_list":
        path.write_text(json.dumps({**good, "tracker": {**good["tracker"], "rows": 5}}))
    elif case == "not_json":
        path.write_text('{"step": 4, "tracker": ')
    elif case == "too_large":  # sparse: refused from its size, never read (before: json.load of all of it)
        with open(path, "r+b") as f:
            f.truncate(65 << 20)
    elif case == "fifo":  # never opened (it would block waiting for a writer): not a state file
        path.unlink()
        os.mkfifo(path)
    trainer = _trainer(tiny_bert(0, head=True), tokenizer, texts, out, [_callback(tokenizer, texts)],
                       save_strategy="steps", save_steps=4)
    with pytest.raises(LayerProbeError) as exc:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    msg = str(exc.value)
    assert "\n" not in msg and STATE_JSON in msg


def test_an_intact_state_resumes(saved_run, tmp_path, tokenizer, texts):
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    cb = _callback(tokenizer, texts)
    _trainer(tiny_bert(0, head=True), tokenizer, texts, out, [cb], save_strategy="steps",
             save_steps=4).train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert cb.resumed_from == 4 and len(cb.tracker.rows) > len(_good(saved_run)["tracker"]["rows"])
