"""Round 3: hostile inputs the first two rounds did not cover, through every subcommand and the API.

Every case gives exit 0 with correct (strict-JSON) output, or exit 2 with exactly one line on stderr
naming the file and the problem; nothing half-written, no code from a file ever runs. Cases marked
"was:" in a comment were bugs before this round. Catalogue: docs/errors.md ("Round 3").
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys

import pytest
import torch
from conftest import tiny_bert
from helpers_malicious import model_variant as shared_variant
from safetensors.torch import load_file, save_file

from layerprobe.cli import build_parser, main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def f(tmp_path_factory, tokenizer, texts):
    root = tmp_path_factory.mktemp("hostile3")
    good = root / "good"
    tiny_bert(0, head=True).save_pretrained(good)
    tokenizer.save_pretrained(good)
    probe = root / "probe.txt"
    probe.write_text("\n".join(texts[:16]) + "\n")
    for name in ("a", "b"):
        assert main(["snapshot", str(good), "--probe", str(probe), "-o", str(root / f"snap_{name}.pt"), "--quiet",
                     "--max-length", "16"]) == 0
    assert main(["compare", str(root / "snap_a.pt"), str(root / "snap_b.pt"), "--out", str(root / "cmp"),
                 "--quiet", "--no-ci"]) == 0
    sd = {k: v.detach().clone().contiguous() for k, v in tiny_bert(0).state_dict().items()}
    save_file(sd, str(root / "a.safetensors"))
    g = torch.Generator().manual_seed(1)
    save_file({k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in sd.items()}, str(root / "b.safetensors"))
    return {"root": root, "good": good, "probe": probe, "snap": root / "snap_a.pt", "snap_b": root / "snap_b.pt",
            "cmp": root / "cmp" / "comparison.json", "a": root / "a.safetensors", "b": root / "b.safetensors",
            "marker": root / "PWNED"}


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc, err, *needles):
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("layerprobe: error: "), (rc, err)
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


def strict_json(text):
    def refuse(name):
        raise AssertionError(f"{name} in the JSON output")

    return json.loads(text, parse_constant=refuse)


def raw_safetensors(path, header, data=b""):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def model_variant(f, name, cfg=None, files=None, drop=()):
    return shared_variant(f["root"], f["good"], name, cfg=cfg, drop=drop, files=files)


# ------------------------------------------------------------------ paths: loops, dangling links, odd names

def _link(tmp_path, name, target):
    p = tmp_path / name
    os.symlink(target, p)
    return p


@pytest.mark.parametrize("case", ["loop_input", "loop_probe", "dangling_input", "name_too_long", "parent_is_file",
                                  "loop_out", "dangling_out", "zero_length_safetensors", "probe_plain_dir",
                                  "freeze_list_model_is_file", "config_json_is_dir"])
def test_paths_that_cannot_be_read(f, capsys, tmp_path, case):
    loop = tmp_path / "loop1"
    _link(tmp_path, "loop2", loop)
    _link(tmp_path, "loop1", tmp_path / "loop2")
    dangling = _link(tmp_path, "dangling", tmp_path / "nowhere")
    long_name = tmp_path / ("x" * 300 + ".safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    (tmp_path / "plain_dir").mkdir()
    argv, needles = {  # was: "no such file or directory" / "not found" / "File exists" for the first five
        "loop_input": (["compare", loop, f["a"]], ["loop1", "symbolic link loop"]),
        "loop_probe": (["compare", f["snap"], f["snap_b"], "--probe", loop], ["loop1", "symbolic link loop"]),
        "dangling_input": (["compare", dangling, f["a"]], ["dangling", "nowhere", "does not exist"]),
        "name_too_long": (["compare", long_name, f["a"]], ["too long"]),
        "parent_is_file": (["compare", f["a"] / "x", f["a"]], ["parent of the path is a file"]),
        "loop_out": (["compare", f["snap"], f["snap_b"], "--out", loop], ["loop1", "leads nowhere"]),
        "dangling_out": (["compare", f["snap"], f["snap_b"], "--out", dangling], ["dangling", "leads nowhere"]),
        "zero_length_safetensors": (["compare", empty, f["a"]], ["empty.safetensors", "empty (0 bytes)"]),
        "probe_plain_dir": (["compare", f["snap"], f["snap_b"], "--probe", tmp_path / "plain_dir"],
                            ["plain_dir", "not a saved dataset"]),
        "freeze_list_model_is_file": (["freeze-list", f["cmp"], f["a"]], ["a.safetensors", "model directory"]),
        "config_json_is_dir": (["compare", f["good"], model_variant(f, "cfg_dir", drop=("config.json",),
                                                                   files={"config.json": None}), "--probe",
                                f["probe"]], ["config.json is a directory"]),
    }[case]
    rc, out, err = run([*argv, "--quiet"] if argv[0] == "compare" else argv, capsys)
    assert_one_line(rc, err, *needles)
    assert out == ""


def test_unreadable_files(f, capsys, monkeypatch, tmp_path):
    """chmod 000 (faked through os.access: root reads any file, and the tests may run as root)."""
    locked = {str(tmp_path / n) for n in ("w.safetensors", "p.txt", "c.json", "w.pt")}
    shutil.copy(f["a"], tmp_path / "w.safetensors")
    shutil.copy(f["probe"], tmp_path / "p.txt")
    shutil.copy(f["cmp"], tmp_path / "c.json")
    shutil.copy(f["snap"], tmp_path / "w.pt")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) in locked else real_access(p, mode))
    for argv, name in ((["compare", tmp_path / "w.safetensors", f["a"]], "w.safetensors"),
                       (["compare", f["snap"], tmp_path / "w.pt"], "w.pt"),
                       (["compare", f["good"], f["good"], "--probe", tmp_path / "p.txt"], "p.txt"),
                       (["freeze-list", tmp_path / "c.json", f["good"]], "c.json")):
        rc, _, err = run([*argv, "--quiet"] if argv[0] == "compare" else argv, capsys)
        assert_one_line(rc, err, name, "permission denied")


@pytest.mark.parametrize("name", ["new\nline.pt", "esc\x1b[31mred.pt", "tab\tand\u2028sep.pt", "名前 ü.pt"])
def test_odd_file_names_stay_on_one_line(f, capsys, tmp_path, name):
    """was: a newline in a name cut the message to the name's first part; an escape code reached the terminal."""
    p = tmp_path / name
    p.write_text("not a checkpoint")
    rc, _, err = run(["compare", p, f["a"], "--quiet"], capsys)
    line = assert_one_line(rc, err, "not a checkpoint")
    assert "\x1b" not in line and "\u2028" not in line
    escaped = name.replace("\n", "\\n").replace("\x1b", "\\x1b").replace("\u2028", "\\u2028")
    assert escaped in line  # the whole name, visibly escaped


# ------------------------------------------------------------------ safetensors headers

W = "encoder.layer.0.w"
W1 = "encoder.layer.1.w"
F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

HEADERS = {
    "length_past_end": (struct.pack("<Q", 10**6) + b'{"a":1}', "invalid header length"),
    "not_json": ((b"{not json}  ", b""), "invalid JSON"),
    "json_array": ((b"[1, 2, 3]   ", b""), "invalid"),
    "no_tensors": (({}, b""), "holds no tensors"),  # was: "no repeated block stack" without a file name
    "only_metadata": (({"__metadata__": {"format": "pt"}}, b""), "holds no tensors"),
    "duplicate_name": ((b'{"%s":%s,"%s":%s}' % (W.encode(), json.dumps(F32x2).encode(), W.encode(),
                                                 json.dumps(F32x2).encode()), b"\0" * 8), "twice"),  # was: accepted
    "overlapping": (({W: F32x2, W1: {**F32x2, "data_offsets": [4, 12]}}, b"\0" * 12), "invalid offset"),
    "reversed_offsets": (({W: {**F32x2, "data_offsets": [8, 0]}}, b"\0" * 8), "invalid offset"),
    "unknown_dtype": (({W: {**F32x2, "dtype": "F99"}}, b"\0" * 8), "F99"),
    "negative_dim": (({W: {**F32x2, "shape": [-2]}}, b"\0" * 8), "invalid value"),
    "float_dim": (({W: {**F32x2, "shape": [2.0]}}, b"\0" * 8), "invalid type"),
    "huge_dims_overflow": (({W: {**F32x2, "shape": [1 << 40, 1 << 30]}}, b"\0" * 8), "overflow"),
    "huge_dims_matching_offsets": (({W: {"dtype": "F32", "shape": [1 << 30, 1 << 10], "data_offsets": [0, 1 << 42]}},
                                    b"\0" * 8), "not fully covered"),  # a 4 TiB claim, never allocated
    "trailing_garbage": (({W: F32x2}, b"\0" * 16), "not fully covered"),
    "int_only": (({W: {**F32x2, "dtype": "I32"}, W1: {**F32x2, "dtype": "BOOL", "data_offsets": [8, 10]}},
                  b"\0" * 10), "holds no parameters"),  # was: "no repeated block stack" without a file name
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_safetensors_headers_refused(f, capsys, tmp_path, case):
    spec, needle = HEADERS[case]
    p = tmp_path / f"{case}.safetensors"
    if isinstance(spec, bytes):
        p.write_bytes(spec)
    else:
        raw_safetensors(p, *spec)
    for argv in (["compare", p, f["a"]], ["compare", f["a"], p]):
        rc, out, err = run([*argv, "--quiet", "--format", "json"], capsys)
        assert_one_line(rc, err, f"{case}.safetensors", needle)
        assert out == ""


def test_out_of_order_offsets_read_the_right_bytes(f, capsys, tmp_path):
    """Offsets need not follow the header's order: each tensor is read from its own bytes."""
    import numpy as np

    from layerprobe.io.checkpoints import open_checkpoint

    x, y = np.arange(4, dtype=np.float32), np.arange(10, 16, dtype=np.float32)
    p = raw_safetensors(tmp_path / "rev.safetensors",
                        {W: {"dtype": "F32", "shape": [2, 2], "data_offsets": [24, 40]},
                         W1: {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, y.tobytes() + x.tobytes())
    with open_checkpoint(p) as src:
        assert src.get(W).flatten().tolist() == x.tolist() and src.get(W1).flatten().tolist() == y.tolist()
    save_file({W: torch.from_numpy(x).reshape(2, 2), W1: torch.from_numpy(y).reshape(2, 3)},
              str(tmp_path / "plain.safetensors"))
    rc, out, err = run(["compare", p, tmp_path / "plain.safetensors", "--format", "json", "--quiet"], capsys)
    assert rc == 0, err
    assert all(b["weight_drift"] == 0.0 for b in strict_json(out)["blocks"])


# ------------------------------------------------------------------ .pt / .bin containers and pickles

@pytest.mark.parametrize("obj, needle", [
    (torch.ones(3), "holds a Tensor"), ([torch.ones(3)], "holds a list"), (5, "holds a int"),
    (None, "holds a NoneType"), ({"a": {"b": torch.ones(2)}}, "value of 'a' has type dict"),
    ({}, "state dict is empty"), ({"state_dict": {}}, "state dict is empty"),
])
def test_pt_that_is_not_a_state_dict(f, capsys, tmp_path, obj, needle):
    torch.save(obj, tmp_path / "x.pt")
    rc, _, err = run(["compare", tmp_path / "x.pt", f["a"], "--quiet"], capsys)
    assert_one_line(rc, err, "x.pt", needle)


def test_bin_and_training_checkpoint_compare_like_safetensors(f, capsys, tmp_path):
    sd = load_file(str(f["a"]))
    torch.save(sd, tmp_path / "w.bin")
    torch.save({"model": sd, "optimizer": {"state": {}}, "epoch": 3}, tmp_path / "ckpt.pt")
    ref = strict_json(run(["compare", f["a"], f["b"], "--format", "json", "--quiet"], capsys)[1])["blocks"]
    for p in (tmp_path / "w.bin", tmp_path / "ckpt.pt"):
        rc, out, err = run(["compare", p, f["b"], "--format", "json", "--quiet"], capsys)
        assert rc == 0, err
        assert [b["weight_drift"] for b in strict_json(out)["blocks"]] == [b["weight_drift"] for b in ref]


def test_pickle_asking_for_builtins_exec_is_refused(f, capsys, tmp_path):
    """A hand-written pickle (no torch.save at all) whose only content is ``exec(code)``."""
    code = f"open({str(f['marker'])!r}, 'w').close()"
    evil = (b"\x80\x02cbuiltins\nexec\nq\x00X" + struct.pack("<I", len(code)) + code.encode()
            + b"q\x01\x85q\x02Rq\x03.")
    for name in ("evil.bin", "evil.pt", "evil.pth"):
        (tmp_path / name).write_bytes(evil)
        for argv in (["compare", tmp_path / name, f["a"]], ["compare", f["snap"], tmp_path / name]):
            rc, _, err = run([*argv, "--quiet"], capsys)
            assert_one_line(rc, err, name, "unsafe pickle", "it asks for exec")
    assert not f["marker"].exists()


# ------------------------------------------------------------------ sharded checkpoints

def _sharded(f, name, index, shards=True, cfg=True):
    d = f["root"] / name
    if d.exists():
        return d
    d.mkdir()
    sd = load_file(str(f["good"] / "model.safetensors"))
    keys = list(sd)
    if shards:
        save_file({k: sd[k] for k in keys[:10]}, str(d / "s1.safetensors"))
        save_file({k: sd[k] for k in keys[10:]}, str(d / "s2.safetensors"))
    if cfg:
        shutil.copy(f["good"] / "config.json", d / "config.json")
    if callable(index):
        index = index({k: "s1.safetensors" if i < 10 else "s2.safetensors" for i, k in enumerate(keys)})
    (d / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return d


INDEXES = {
    "deeply_nested": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # was: RecursionError traceback
    "nan_literal": ('{"weight_map": {"a": "s1.safetensors"}, "metadata": {"total_size": NaN}}', "NaN"),  # was: read
    "points_at_itself": (lambda wm: {"weight_map": {**wm, next(iter(wm)): "model.safetensors.index.json"}},
                         "is not a shard file name"),  # was: read the index as a safetensors file
    "points_outside": (lambda wm: {"weight_map": {**wm, next(iter(wm)): "../good/model.safetensors"}},
                       "is not a shard file name"),
    "empty_weight_map": ({"weight_map": {}}, "no 'weight_map'"),
    "entry_missing": (lambda wm: {"weight_map": dict(list(wm.items())[1:])}, "the weight files hold"),
    "shard_lacks_tensor": (lambda wm: {"weight_map": {**wm, "bert.encoder.layer.0.extra.weight": "s1.safetensors"}},
                           "missing from shard"),
}


@pytest.mark.parametrize("case", sorted(INDEXES))
def test_sharded_index_refused(f, capsys, case):
    index, needle = INDEXES[case]
    d = _sharded(f, f"index_{case}", index)
    rc, _, err = run(["compare", d, f["good"], "--quiet"], capsys)
    assert_one_line(rc, err, f"index_{case}", needle)


def test_shard_that_is_a_directory(f, capsys):
    d = _sharded(f, "index_shard_dir", {"weight_map": {"bert.embeddings.word_embeddings.weight": "sub"}}, shards=False)
    (d / "sub").mkdir()
    rc, _, err = run(["compare", d, f["good"], "--quiet"], capsys)
    assert_one_line(rc, err, "sub", "missing")


def test_index_file_as_input_and_without_metadata(f, capsys):
    d = _sharded(f, "index_plain", lambda wm: {"weight_map": wm})  # no "metadata", as some tools write
    # was: "not a checkpoint: no PyTorch zip or pickle header" (open_checkpoint accepted it, the CLI did not)
    rc, out, err = run(["compare", d / "model.safetensors.index.json", f["good"], "--format", "json", "--quiet"],
                       capsys)
    assert rc == 0, err
    assert all(b["weight_drift"] == 0.0 for b in strict_json(out)["blocks"])
    # was: "cannot load the model: 'metadata'" (transformers' KeyError)
    rc, _, err = run(["compare", d, f["good"], "--probe", f["probe"], "--quiet"], capsys)
    assert_one_line(rc, err, "model.safetensors.index.json", "'metadata'", "(no --probe)")


# ------------------------------------------------------------------ config and tokenizer files

@pytest.mark.parametrize("name, content, needle", [
    ("config.json", b"", "malformed JSON"),
    ("config.json", b'{"model_type": "bert", "hidden_dropout_prob": NaN}', "NaN"),
    ("tokenizer.json", b"[]", "cannot read the tokenizer"),
    ("tokenizer.json", b'{"model": 5}', "cannot read the tokenizer"),
    ("special_tokens_map.json", b"[1", "malformed JSON"),
])
def test_broken_config_and_tokenizer_files(f, capsys, name, content, needle):
    d = model_variant(f, f"broken_{name}_{len(content)}", files={name: content})
    rc, _, err = run(["compare", f["good"], d, "--probe", f["probe"], "--quiet", "--no-ci"], capsys)
    assert_one_line(rc, err, name, needle)


# ------------------------------------------------------------------ values: same file, zeros, extremes

def test_same_file_on_both_sides(f, capsys):
    rc, out, _ = run(["compare", f["a"], f["a"], "--format", "json", "--quiet"], capsys)
    assert rc == 0 and all(b["weight_drift"] == 0.0 and b["weight_cosine"] == 1.0 for b in strict_json(out)["blocks"])
    rc, out, _ = run(["compare", f["snap"], f["snap"], "--format", "json", "--quiet", "--no-ci"], capsys)
    assert rc == 0 and all(b["cka"] == pytest.approx(1.0) for b in strict_json(out)["blocks"])


def test_zero_base_weights_give_strict_json(f, capsys, tmp_path):
    """Drift from an all-zero base is infinite: JSON null (never an Infinity literal), CSV 'inf'."""
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(f["a"])).items()}, str(tmp_path / "z.safetensors"))
    rc, out, err = run(["compare", tmp_path / "z.safetensors", f["a"], "--format", "json", "--quiet"], capsys)
    assert rc == 0, err
    blocks = strict_json(out)["blocks"]
    assert all(b["weight_drift"] is None and b["weight_cosine"] is None for b in blocks)
    rc, out, _ = run(["compare", tmp_path / "z.safetensors", f["a"], "--format", "csv", "--quiet"], capsys)
    assert rc == 0 and out.splitlines()[1].split(",")[6] == "inf"


def test_cosine_of_a_tiny_update_next_to_huge_weights():
    """was: Σb² and Σab derived from a's sums cancelled to garbage (cosine null) when ‖b‖ ≪ ‖a‖."""
    from layerprobe.metrics.drift import DriftAccumulator

    g = torch.Generator().manual_seed(0)
    a, b = 1e4 * torch.randn(300, 70, generator=g), 1e-4 * torch.randn(300, 70, generator=g)
    acc = DriftAccumulator()
    acc.add("w", a, b)
    a64, b64 = a.double(), b.double()
    ref = float((a64 * b64).sum() / (a64.norm() * b64.norm()))
    assert acc.result()["cosine"] == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert acc.sq_w1 == pytest.approx(float((b64 * b64).sum()), rel=1e-12)
    zero = DriftAccumulator()
    zero.add("w", a, torch.zeros_like(a))
    assert zero.sq_w1 == 0.0 and math.isnan(zero.result()["cosine"])  # one side all-zero: undefined


# ------------------------------------------------------------------ LoRA adapter directories (no peft needed)

def _adapter(f, name, cfg=None, files=None):
    d = f["root"] / f"adapter_{name}"
    if d.exists():
        return d
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(4):
        m = f"base_model.model.bert.encoder.layer.{i}.attention.self.query"
        tensors[f"{m}.lora_A.weight"] = 0.02 * torch.randn(2, 32, generator=g)
        tensors[f"{m}.lora_B.weight"] = 0.02 * torch.randn(32, 2, generator=g)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"],
              "base_model_name_or_path": str(f["good"])}
    if cfg:
        cfg(config)
    (d / "adapter_config.json").write_text(json.dumps(config))
    for n, v in (files or {}).items():
        (d / n).write_bytes(v if isinstance(v, bytes) else v.encode())
    return d


ADAPTERS = {  # every one was a traceback (ValueError, TypeError, AttributeError, RecursionError, SafetensorError)
    "alpha_string": (dict(cfg=lambda c: c.update(lora_alpha="big")), "lora_alpha"),
    "r_string": (dict(cfg=lambda c: c.update(r="two")), "r = 'two'"),
    "r_zero": (dict(cfg=lambda c: c.update(r=0)), "r = 0"),
    "alpha_pattern_list": (dict(cfg=lambda c: c.update(alpha_pattern=[1])), "alpha_pattern"),
    "config_deeply_nested": (dict(files={"adapter_config.json": "[" * 100_000 + "]" * 100_000}), "nested too deeply"),
    "config_nan": (dict(files={"adapter_config.json": '{"peft_type": "LORA", "r": 2, "lora_alpha": NaN}'}), "NaN"),
    "auto_map": (dict(cfg=lambda c: c.update(auto_map={"AutoModel": "evil.M"})), "auto_map"),  # was: accepted
    "corrupt_weights": (dict(files={"adapter_model.safetensors": b"\x10\0\0\0\0\0\0\0{garbage garbage"}),
                        "adapter_model.safetensors"),
    "empty_weights": (dict(files={"adapter_model.safetensors": b""}), "empty (0 bytes)"),
}


@pytest.mark.parametrize("case", sorted(ADAPTERS))
def test_adapter_dirs_refused(f, capsys, case):
    spec, needle = ADAPTERS[case]
    d = _adapter(f, case, **spec)
    rc, _, err = run(["compare", f["good"], d, "--quiet"], capsys)
    assert_one_line(rc, err, f"adapter_{case}", needle)


def test_adapter_with_null_alpha_uses_the_default(f, capsys):
    ok = strict_json(run(["compare", f["good"], _adapter(f, "ok"), "--format", "json", "--quiet"], capsys)[1])
    d = _adapter(f, "alpha_null", cfg=lambda c: c.update(lora_alpha=None))  # null: alpha = r = 2, scale 1
    rc, out, err = run(["compare", f["good"], d, "--format", "json", "--quiet"], capsys)
    assert rc == 0, err  # was: TypeError traceback
    drifts = [b["weight_drift"] for b in strict_json(out)["blocks"]]
    assert drifts[1] > 0 and drifts[1] == pytest.approx(ok["blocks"][1]["weight_drift"] / 2, rel=1e-3)  # 2/2 vs 4/2


def test_unreadable_trainer_state_is_ignored(f, capsys, tmp_path):
    """trainer_state.json is optional information. was: a deeply nested one crashed a series (RecursionError)."""
    run_dir = tmp_path / "run"
    for step in (1, 2):
        shutil.copytree(f["good"], run_dir / f"checkpoint-{step}")
    (run_dir / "checkpoint-2" / "trainer_state.json").write_text("[" * 100_000 + "]" * 100_000)
    (run_dir / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": true, "max_steps": -1}')
    rc, out, err = run(["compare", f["good"], run_dir, "--out", tmp_path / "o", "--quiet"], capsys)
    assert rc == 0, err
    assert "steps [0, 1, 2]" in err  # the summary goes to stderr, stdout holds the table (issue 19 item 10)


# ------------------------------------------------------------------ outputs: stdout, disk full, signals, inputs

class _FullStream(io.StringIO):
    def write(self, s):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_stdout_closed_or_full(f, capsys, monkeypatch, stdout):
    """was: AttributeError / OSError tracebacks with exit 1."""
    for argv in (["compare", f["snap"], f["snap_b"], "--quiet", "--no-ci"], ["freeze-list", f["cmp"], f["good"]]):
        monkeypatch.setattr(sys, "stdout", None if stdout == "closed" else _FullStream())
        rc = main([str(a) for a in argv])
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert_one_line(rc, err, "standard output", "closed" if stdout == "closed" else "No space left")


def test_broken_pipe_is_quiet(f):
    """``layerprobe compare a b | head -c 10``. was: a BrokenPipeError traceback, exit 1."""
    code = ("import os, sys\nr, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"  # a pipe whose reader is gone
            "from layerprobe.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, "-c", code, "compare", str(f["snap"]), str(f["snap_b"]), "--format", "json",
                        "--quiet", "--no-ci"], capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 128 + signal.SIGPIPE and p.stderr == "", p.stderr


def test_disk_full_leaves_nothing(f, capsys, monkeypatch, tmp_path):
    """was: an OSError traceback (exit 1) for -o and for --out, naming the temporary folder."""
    import layerprobe.io.outputs as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.json").write_text("old")
    monkeypatch.setattr(atomic.os, "fsync", full)
    for argv, named in (
        (["snapshot", f["good"], "--probe", f["probe"], "-o", tmp_path / "s.pt", "--quiet", "--max-length", "16"],
         tmp_path / "s.pt"),
        (["freeze-list", f["cmp"], f["good"], "-o", tmp_path / "names.txt"], tmp_path / "names.txt"),
        (["compare", f["snap"], f["snap_b"], "--out", out, "--quiet", "--no-ci"], out),
    ):
        rc, _, err = run(argv, capsys)
        line = assert_one_line(rc, err, "No space left on device", named)
        assert ".tmp" not in line  # the user's path, not the temporary one
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["comparison.json"]
    assert (out / "comparison.json").read_text() == "old"


def test_sigint_while_saving_a_snapshot(f, tmp_path):
    code = ("import os, signal, sys, torch\n"
            "def slow(obj, fh, *a, **k):\n"
            "    fh.write(b'half a snapshot')\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "torch.save = slow\n"
            "from layerprobe.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    target = tmp_path / "s.pt"
    p = subprocess.run([sys.executable, "-c", code, "snapshot", str(f["good"]), "--probe", str(f["probe"]), "-o",
                        str(target), "--quiet", "--max-length", "16"], capture_output=True, text=True, timeout=120,
                       env=ENV)
    assert p.returncode == 130 and p.stderr.strip() == "layerprobe: interrupted", p.stderr
    assert os.listdir(tmp_path) == []


def test_outputs_never_replace_an_input(f, capsys, tmp_path):
    """was: ``-o`` naming the comparison JSON, the trajectory CSV or the probe overwrote it."""
    cmp = tmp_path / "c.json"
    shutil.copy(f["cmp"], cmp)
    traj = tmp_path / "t.csv"
    traj.write_text("step,block,cka_to_start,cka_to_previous,weight_drift\n0,block.0,1,1,0\n")
    probe = tmp_path / "probe.txt"
    shutil.copy(f["probe"], probe)
    model = model_variant(f, "model_for_outputs")
    probe_named_like_output = tmp_path / "o" / "comparison.csv"
    probe_named_like_output.parent.mkdir()
    shutil.copy(f["probe"], probe_named_like_output)
    before = {p: p.read_bytes() for p in (cmp, traj, probe, model / "config.json", probe_named_like_output)}
    for argv in (["freeze-list", cmp, f["good"], "-o", cmp],
                 ["plot-trajectory", traj, "-o", traj],
                 ["snapshot", f["good"], "--probe", probe, "-o", probe],
                 ["snapshot", model, "--probe", probe, "-o", model / "config.json"],
                 ["compare", model, f["good"], "--probe", probe_named_like_output, "--out", tmp_path / "o"]):
        rc, _, err = run(argv, capsys)
        assert_one_line(rc, err, "would replace an input")
    assert {p: p.read_bytes() for p in before} == before


def test_outputs_in_a_missing_directory(f, capsys, tmp_path):
    """Every ``-o`` creates missing parent folders, as ``snapshot -o`` and ``compare --out`` always did
    (was: freeze-list and plot-trajectory failed after their work); one under a file is refused first."""
    traj = tmp_path / "t.csv"
    traj.write_text("step,block,cka_to_start,cka_to_previous,weight_drift\n0,block.0,1,1,0\n")
    cases = (["snapshot", f["good"], "--probe", f["probe"], "--quiet", "--max-length", "16", "-o"],
             ["freeze-list", f["cmp"], f["good"], "-o"], ["plot-trajectory", traj, "-o"])
    for argv, name in zip(cases, ("s.pt", "n.txt", "t.png")):
        rc, _, err = run([*argv, tmp_path / name / "new" / name], capsys)
        assert rc == 0 and (tmp_path / name / "new" / name).stat().st_size > 0, err
        rc, _, err = run([*argv, traj / name], capsys)
        assert_one_line(rc, err, "t.csv", "cannot")
    assert sorted(os.listdir(tmp_path)) == ["n.txt", "s.pt", "t.csv", "t.png"]


# ------------------------------------------------------------------ options

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
def test_compare_option_values(f, capsys, flags, needle):
    flags = [x.replace("{a}", str(f["a"])) for x in flags]
    rc, out, err = run(["compare", f["snap"], f["snap_b"], "--quiet", *flags], capsys)
    assert_one_line(rc, err, needle)
    assert out == ""


def test_ignored_settings_refused_for_weights_only(f, capsys):
    rc, _, err = run(["compare", f["a"], f["b"], "--blocks", "encoder.layer.*", "--quiet"], capsys)
    assert_one_line(rc, err, "--blocks")
    rc, _, err = run(["compare", f["good"], f["good"], "--dtype", "float16", "--quiet"], capsys)  # no probe: no run
    assert_one_line(rc, err, "--dtype")


@pytest.mark.parametrize("flags, needle", [
    (["--embeddings", "no.such.module"], "embeddings pattern 'no.such.module' matches no module"),  # was: dropped
    (["--batch-size", "0"], "--batch-size"),
    (["--max-length", "-3"], "--max-length"),
    (["--pooling", "tokens", "--max-tokens", "0"], "--max-tokens"),
])
def test_snapshot_option_values(f, capsys, tmp_path, flags, needle):
    rc, _, err = run(["snapshot", f["good"], "--probe", f["probe"], "-o", tmp_path / "s.pt", "--quiet", *flags],
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


def test_freeze_list_for_another_model_names_the_comparison(f, capsys, tmp_path):
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"recommendation": {"freeze": ["block.99"]}}))
    rc, _, err = run(["freeze-list", c, f["good"]], capsys)
    assert_one_line(rc, err, str(c), "unknown entries ['block.99']")  # was: no file named


def test_recommend_api_reads_comparison_files_safely(f, tmp_path):
    """was: FileNotFoundError / RecursionError / TypeError from ``recommend(path)``."""
    from layerprobe import recommend
    from layerprobe.errors import LayerProbeError

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "ints.json").write_text('{"blocks": [1, 2]}')
    for path, needle in ((tmp_path / "none.json", "not found"), (tmp_path / "deep.json", "nested too deeply"),
                         (tmp_path / "ints.json", "dicts with a 'name'")):
        with pytest.raises(LayerProbeError, match=needle) as info:
            recommend(str(path))
        assert str(path) in str(info.value)
    assert recommend(str(f["cmp"])).freeze == strict_json(f["cmp"].read_text())["recommendation"]["freeze"]


@pytest.mark.parametrize("rows, needle", [
    ("1e308,b,1,1,0\n-1e308,b,1,1,0\n", "'step'"),  # was: ValueError traceback from matplotlib
    ("0,b,nan,nan,-inf\n", "'weight_drift'"),
    ("0,b,5,1,0\n", "'cka_to_start'"),
])
def test_trajectory_values_checked(capsys, tmp_path, rows, needle):
    p = tmp_path / "t.csv"
    p.write_text("step,block,cka_to_start,cka_to_previous,weight_drift\n" + rows)
    rc, _, err = run(["plot-trajectory", p, "-o", tmp_path / "t.png"], capsys)
    assert_one_line(rc, err, "t.csv", needle)
    assert not (tmp_path / "t.png").exists()


# ------------------------------------------------------------------ demo: fail fast, write together

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
