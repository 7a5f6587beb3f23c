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


# -- review-b: fields of the wrong shape that were read silently or failed later, from inside Trainer.train ----------

@pytest.mark.parametrize("case, message", [
    ("rows_of_pairs", "malformed layerprobe state (ValueError: tracker.rows must be a list of rows, each with an "
                      "integer 'step')"),  # before: dict([...]) made rows of them
    ("rows_without_step", "malformed layerprobe state (ValueError: tracker.rows must be a list of rows, each with "
                          "an integer 'step')"),  # before: KeyError 'step' at the next check
    ("every_zero", "malformed layerprobe state (ValueError: tracker.every_n_steps must be an integer >= 1, got 0)"),
    ("every_infinity", "malformed layerprobe state (ValueError: tracker.every_n_steps must be an integer >= 1, "
                       "got inf)"),  # before: OverflowError
    ("frozen_params_text", "malformed layerprobe state (ValueError: frozen_params must be a list of parameter "
                           "names, got 'bert.embeddings.word_embeddings.weight')"),  # before: nothing re-frozen
    ("policy_list", "malformed layerprobe state (ValueError: policy must be an object or null, got list)"),
    ("policy_frozen_text", "malformed layerprobe state (ValueError: policy.frozen has the wrong shape: "
                           "'embeddings')"),  # before: AttributeError 'str' has no 'extend' at the next freeze
    ("reference_not_tensors", "LayerProbeCallback: cannot read the drift reference (Error while deserializing "
                              "header: header too large)"),  # before: SafetensorError traceback
    ("tensors_missing", "LayerProbeCallback: cannot read the saved probe representations (No such file or "
                        "directory: "),  # before: FileNotFoundError traceback
])
def test_a_state_field_of_the_wrong_shape_is_one_line_before_training(saved_run, tmp_path, tokenizer, texts, case,
                                                                      message):
    from layerprobe.integrations.hf import STATE_TENSORS
    from layerprobe.tracking.tracker import TRAJECTORY_CSV

    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    path = out / "checkpoint-4" / STATE_JSON
    good = _good(saved_run)
    tracker = good["tracker"]
    named = path
    if case == "rows_of_pairs":
        doc = {**good, "tracker": {**tracker, "rows": [[["step", 2], ["entry", "x"]]]}}
    elif case == "rows_without_step":
        doc = {**good, "tracker": {**tracker, "rows": [{"entry": "embeddings"}]}}
    elif case == "every_zero":
        doc = {**good, "tracker": {**tracker, "every_n_steps": 0}}
    elif case == "every_infinity":
        doc = {**good, "tracker": {**tracker, "every_n_steps": float("inf")}}  # json writes Infinity
    elif case == "frozen_params_text":
        doc = {**good, "frozen_params": "bert.embeddings.word_embeddings.weight"}
    elif case == "policy_list":
        doc = {**good, "policy": [1, 2]}
    elif case == "policy_frozen_text":
        doc = {**good, "policy": {**good["policy"], "frozen": "embeddings"}}
    elif case == "reference_not_tensors":
        doc, named = {**good, "reference": str(path)}, path  # the state file itself: JSON, not safetensors
    else:
        doc, named = good, out / "checkpoint-4" / STATE_TENSORS
        named.unlink()
    path.write_text(json.dumps(doc))
    before = (out / TRAJECTORY_CSV).read_bytes()
    trainer = _trainer(tiny_bert(0, head=True), tokenizer, texts, out, [_callback(tokenizer, texts)],
                       save_strategy="steps", save_steps=4)
    with pytest.raises(LayerProbeError) as exc:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert str(exc.value).startswith(f"{named}: {message}") and "\n" not in str(exc.value)
    assert (out / TRAJECTORY_CSV).read_bytes() == before  # nothing written over the saved run
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-4",
                                                                                         "checkpoint-8"]
