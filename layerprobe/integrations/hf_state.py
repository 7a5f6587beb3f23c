"""The :class:`~layerprobe.integrations.hf.LayerProbeCallback` state saved with each Trainer checkpoint.

``checkpoint-N/layerprobe_state.json`` (rows, policy state, probe plan, frozen parameters) and
``checkpoint-N/layerprobe_state.safetensors`` (the start's and the latest check's representations)
are written while the Trainer saves the checkpoint (the callback's ``ExportableState.state()``);
the start weights go once to ``<output_dir>/layerprobe_reference.safetensors``. A resumed run reads
them back in ``on_train_begin``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from layerprobe.errors import LayerProbeError, one_line
from layerprobe.io.files import load_json

__all__ = ["REFERENCE_FILE", "STATE_JSON", "STATE_TENSORS", "restore_state", "save_state", "stored_state"]

#: written into each Trainer checkpoint (``checkpoint-N/``): the run state a resume needs
STATE_JSON = "layerprobe_state.json"
#: the start's and the latest check's probe representations, beside :data:`STATE_JSON`
STATE_TENSORS = "layerprobe_state.safetensors"
#: the start weights (the drift reference), once per run in ``output_dir``
REFERENCE_FILE = "layerprobe_reference.safetensors"


def save_state(cb: Any, ckpt: str) -> dict[str, Any] | None:
    """Write the callback's run state into the checkpoint directory ``ckpt``; returns where it is."""
    from safetensors.torch import save_file

    from layerprobe.freezing.policy import policy_state
    from layerprobe.io.outputs import atomic_write_text

    if not os.path.isdir(ckpt):
        return None
    fields, reps, weights = cb.tracker.export_state()
    assert cb.output_dir is not None
    ref = os.path.join(cb.output_dir, REFERENCE_FILE)
    if not os.path.isfile(ref):
        tmp = ref + ".tmp"
        save_file(weights, tmp)
        os.replace(tmp, ref)
    save_file(reps, os.path.join(ckpt, STATE_TENSORS))
    model = cb._trained_model()
    doc = {"version": 1, "step": cb._step, "tracker": fields,
           "policy": policy_state(cb.policy) if cb.policy is not None else None,
           "probe_plan": cb.probe_plan, "reference": os.path.abspath(ref),
           "frozen_params": sorted(n for n, p in model.named_parameters() if not p.requires_grad)}
    atomic_write_text(os.path.join(ckpt, STATE_JSON), json.dumps(doc))
    return {"dir": os.path.abspath(ckpt), "step": cb._step}


def restore_state(cb: Any, args: Any, state: Any, model: nn.Module, resume: dict[str, Any]) -> None:
    """Continue the run saved in the checkpoint being resumed (see :meth:`state`). The state file is read through
    the safety boundary (regular file, bounded, strict JSON) and a field of the wrong shape is one line naming it."""
    step = int(state.global_step)
    dirs = [os.path.join(args.output_dir, f"checkpoint-{step}"), str(resume.get("dir") or "")]
    ckpt = next((d for d in dirs if d and os.path.isfile(os.path.join(d, STATE_JSON))), None)
    if ckpt is None:
        raise LayerProbeError(f"LayerProbeCallback: resuming at step {step}, but {STATE_JSON} is in neither "
                              f"{dirs[0]} nor {dirs[1] or '(no recorded directory)'}")
    where = os.path.join(ckpt, STATE_JSON)
    doc = load_json(where, "layerprobe state", allow_nan=True)  # bounded, regular file (NaN: an undefined CKA)
    if not isinstance(doc, dict) or not isinstance(doc.get("tracker"), dict) or \
            not isinstance(doc.get("step"), int) or isinstance(doc.get("step"), bool):
        raise LayerProbeError("not a layerprobe state: expected an object with an integer 'step' and a "
                              "'tracker' object (written by LayerProbeCallback with the checkpoint)", where)
    try:
        _restore(cb, model, doc, step, ckpt, where)
    except LayerProbeError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # a field of the wrong shape (or Infinity)
        raise LayerProbeError(f"malformed layerprobe state ({type(exc).__name__}: {one_line(exc, 200)})",
                              where) from None
    cb.resumed_from = step
    cb._write()


def stored_state(state: Any, name: str) -> dict[str, Any] | None:
    """The pointer :meth:`LayerProbeCallback.state` left in the resumed ``trainer_state.json``."""
    stored = (getattr(state, "stateful_callbacks", None) or {}).get(name)
    if isinstance(stored, list):
        stored = stored[0] if stored else None
    if not isinstance(stored, dict):
        return None
    value = (stored.get("attributes") or {}).get("resume_state")
    return value if isinstance(value, dict) else None


def _restore(cb: Any, model: nn.Module, doc: dict[str, Any], step: int, ckpt: str, where: str) -> None:
    """Put the callback, the model's frozen parameters and the policy back as ``doc`` (the saved state) says."""
    from safetensors.torch import load_file

    from layerprobe.freezing.policy import restore_policy_state

    if doc["step"] != step:
        raise LayerProbeError(f"LayerProbeCallback: {where} is of step {doc.get('step')}, "
                              f"the Trainer resumes at step {step}")
    _check_fields(doc)
    cb._attach_model(model)
    if cb._measures:
        if not os.path.isfile(str(doc["reference"])):
            raise LayerProbeError(f"LayerProbeCallback: the drift reference {one_line(doc['reference'], 300)} is gone "
                                  "(written once per run in output_dir)")
        weights = _tensors(load_file, str(doc["reference"]), "the drift reference")
        reps = _tensors(load_file, os.path.join(ckpt, STATE_TENSORS), "the saved probe representations")
        cb.tracker.restore_state(model, doc["tracker"], reps, weights)
    else:
        from layerprobe.tracking.tracker import checked_revert_rows

        cb.tracker.every_n_steps = int(doc["tracker"]["every_n_steps"])
        cb.tracker.rows = [dict(r) for r in doc["tracker"]["rows"]]
        cb.tracker.revert_rows = checked_revert_rows(doc["tracker"].get("revert_rows"),
                                                     where)  # advice() agrees on every rank
    cb.probe_plan = doc.get("probe_plan")
    frozen = set(doc.get("frozen_params") or ())  # a list of names (_check_fields): a string is not its characters
    for n, p in model.named_parameters():  # before the first resumed step
        if n in frozen:
            p.requires_grad_(False)
    if cb.policy is not None and doc.get("policy") is not None:
        restore_policy_state(cb.policy, doc["policy"])
        attach = getattr(cb.policy, "_attach_cache", None)
        if attach is not None and getattr(cb.policy, "cache", False) and cb.policy.frozen:
            attach(model, cb.tracker.blocks)
    cb._logged_freezes = len(cb.policy.frozen) if cb.policy is not None else 0


def _check_fields(doc: dict[str, Any]) -> None:
    """The fields read later in the run, held to their shape now (a ValueError names the field): before, rows
    without a step, ``every_n_steps`` 0 or a policy of the wrong shape failed at a later check, from inside
    ``Trainer.train``, and ``frozen_params`` as a string or an object froze nothing."""
    tracker = doc["tracker"]
    rows = tracker.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and type(r.get("step")) is int for r in rows):
        raise ValueError("tracker.rows must be a list of rows, each with an integer 'step'")
    for key in ("every_n_steps", "n_probe"):
        v = tracker.get(key)
        if type(v) is not int or v < 1:  # noqa: E721 (true is not a count)
            raise ValueError(f"tracker.{key} must be an integer >= 1, got {one_line(repr(v), 40)}")
    names = doc.get("frozen_params")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"frozen_params must be a list of parameter names, got {one_line(repr(names), 40)}")
    if doc.get("policy") is not None and not isinstance(doc["policy"], dict):
        raise ValueError(f"policy must be an object or null, got {type(doc['policy']).__name__}")


def _tensors(load_file: Any, path: str, what: str) -> dict[str, Any]:
    """``load_file(path)``, or one line naming ``path``: missing, unreadable or not a safetensors file."""
    from safetensors import SafetensorError

    try:
        tensors: dict[str, Any] = load_file(path)
    except (OSError, SafetensorError) as exc:
        raise LayerProbeError(f"LayerProbeCallback: cannot read {what} ({one_line(exc, 200)})", path) from None
    return tensors
