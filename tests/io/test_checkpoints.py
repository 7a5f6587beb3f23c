"""Tests for layerprobe.io.checkpoints (and layerprobe.io.outputs): round-trips, laziness, every error."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from layerprobe.io.outputs import (
    atomic_save_torch,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
)
from layerprobe.io.checkpoints import (
    check_finite,
    checkpoint_kind,
    load_pt_or_snapshot,
    open_checkpoint,
    safe_torch_load,
)
from layerprobe.errors import LayerProbeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_malicious_pt(path, marker, via="open", legacy=False):
    """A ``torch.save`` file whose unpickling would create ``marker`` (never actually loaded)."""

    class Payload:
        def __reduce__(self):
            if via == "open":
                return (open, (os.fspath(marker), "w"))
            return (os.system, (f"touch '{os.fspath(marker)}'",))

    torch.save(
        {"w": torch.ones(2), "evil": Payload()}, os.fspath(path), _use_new_zipfile_serialization=not legacy
    )
    return os.fspath(path)


def expect_error(fn, path, *match):
    """Call ``fn``; require a one-line LayerProbeError naming ``path`` and containing ``match``."""
    with pytest.raises(LayerProbeError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and "\x1b" not in msg, msg
    assert os.path.basename(os.fspath(path)) in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


def tiny_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "embeddings.weight": torch.randn(11, 4, generator=g),
        "encoder.layer.0.weight": torch.randn(4, 4, generator=g),
        "encoder.layer.0.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "encoder.layer.1.weight": torch.randn(4, 4, generator=g).to(torch.float16),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def assert_same(src, state):
    assert sorted(src.keys()) == sorted(state)
    for k, t in state.items():
        assert src.shape(k) == tuple(t.shape)
        assert src.dtype(k) == t.dtype
        assert src.nbytes(k) == t.numel() * t.element_size()
        got = src.get(k)
        assert got.device.type == "cpu" and got.dtype == t.dtype
        assert torch.equal(got, t), k


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_success_and_failure(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half-written new data")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temp file left
    fresh = tmp_path / "never.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(fresh, "w") as f:
            f.write("x")
            raise KeyboardInterrupt
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    atomic_write_text(tmp_path / "t.txt", "caf\u00e9\nline\r\n")
    assert (tmp_path / "t.txt").read_bytes() == "caf\u00e9\nline\r\n".encode()


def test_atomic_save_torch_roundtrip(tmp_path):
    state = tiny_state()
    p = atomic_save_torch(state, tmp_path / "s.pt")
    loaded = safe_torch_load(p)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_atomic_write_missing_or_bad_directory(tmp_path):
    missing = tmp_path / "no" / "such"
    msg = expect_error(lambda: atomic_write_bytes(missing / "x.bin", b""), missing, "cannot write to output directory")
    assert "does not exist" in msg
    afile = tmp_path / "afile"
    afile.write_text("x")
    expect_error(lambda: ensure_writable_dir(afile / "sub"), afile / "sub", "cannot write to output directory")
    expect_error(lambda: ensure_writable_dir(afile), afile, "is a file")
    made = ensure_writable_dir(tmp_path / "a" / "b")
    assert os.path.isdir(made)


def test_unwritable_directory_by_access_check(tmp_path, monkeypatch):
    # Tests run as root, where chmod cannot make a directory unwritable: fake os.access instead.
    import layerprobe.io.outputs as atomic_mod

    monkeypatch.setattr(atomic_mod.os, "access", lambda p, mode: False)
    expect_error(lambda: ensure_writable_dir(tmp_path), tmp_path, "not writable")
    expect_error(lambda: atomic_write_bytes(tmp_path / "x.bin", b""), tmp_path, "not writable")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def _unprivileged(check):
    """Run ``check()`` here, or as root (who writes anywhere) in a forked child that dropped to nobody."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        check()
        return
    import traceback

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no permission overrides, then the same assertions
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            check()
        except BaseException:  # noqa: BLE001 - reported to the parent
            os.write(w, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


def test_ensure_writable_dir_read_only():
    """A read-only directory is refused before any work (as root too: checked as an unprivileged user)."""
    import shutil
    import tempfile

    base = tempfile.mkdtemp()  # under /tmp, reachable by an unprivileged user
    os.chmod(base, 0o755)
    ro = os.path.join(base, "ro")
    os.mkdir(ro)
    os.chmod(ro, 0o555)
    try:
        def check():
            expect_error(lambda: ensure_writable_dir(ro), ro, "not writable")
            expect_error(lambda: atomic_write_bytes(os.path.join(ro, "x"), b""), ro, "not writable")

        _unprivileged(check)
        assert os.listdir(ro) == []
    finally:
        os.chmod(ro, 0o755)
        shutil.rmtree(base)


# ----------------------------------------------------------------------------- safe_torch_load


@pytest.mark.parametrize("via", ["open", "system"])
@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_never_runs(tmp_path, via, legacy):
    marker = tmp_path / "MARKER"
    p = make_malicious_pt(tmp_path / "evil.pt", marker, via=via, legacy=legacy)
    if not legacy:  # the payload is live: the pickle really names open / os.system
        from helpers_malicious import pickle_globals

        assert ("io.open" if via == "open" else f"{os.system.__module__}.system") in pickle_globals(p)
    for fn in (safe_torch_load, open_checkpoint, checkpoint_kind, load_pt_or_snapshot):
        msg = expect_error(lambda fn=fn: fn(p), p, "refused: the file needs arbitrary Python objects")
        assert "unsafe pickle" in msg and ".safetensors" in msg
    assert not marker.exists()


def test_shared_malicious_helper(tmp_path):
    from helpers_malicious import make_malicious_pt as shared

    marker = tmp_path / "M"
    p = shared(tmp_path / "x.bin", marker, via="system")
    expect_error(lambda: open_checkpoint(p), p, "refused")
    assert not marker.exists()


def test_safe_torch_load_formats_and_errors(tmp_path):
    state = tiny_state()
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.pt"):
        loaded = safe_torch_load(tmp_path / name)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())

    expect_error(lambda: safe_torch_load(tmp_path / "missing.pt"), "missing.pt", "not found")
    (tmp_path / "empty.pt").write_bytes(b"")
    expect_error(lambda: safe_torch_load(tmp_path / "empty.pt"), "empty.pt", "empty (0 bytes)")
    data = (tmp_path / "zip.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    expect_error(lambda: safe_torch_load(tmp_path / "trunc.pt"), "trunc.pt",
                 "not a readable PyTorch file: truncated or corrupted")
    legacy = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "ltrunc.pt").write_bytes(legacy[: len(legacy) // 3])
    expect_error(lambda: safe_torch_load(tmp_path / "ltrunc.pt"), "ltrunc.pt", "truncated or corrupted")
    (tmp_path / "notes.pt").write_text("these are my notes, not weights\n")
    expect_error(lambda: safe_torch_load(tmp_path / "notes.pt"), "notes.pt", "not a checkpoint")
    import pickle

    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4))  # written, never loaded
    expect_error(lambda: safe_torch_load(tmp_path / "plain.pkl"), "plain.pkl", "not a checkpoint")
    expect_error(lambda: safe_torch_load(tmp_path), tmp_path, "is a directory")


def test_corrupted_zip_payload_is_reported_as_corrupted(tmp_path):
    torch.save(tiny_state(), tmp_path / "ok.pt")
    data = bytearray((tmp_path / "ok.pt").read_bytes())
    i = data.index(b"_rebuild_tensor_v2")
    data[i + 8 : i + 18] = b"x" * 10  # garble a torch internal name inside the pickle
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    msg = expect_error(lambda: safe_torch_load(tmp_path / "bad.pt"), "bad.pt", "truncated or corrupted")
    assert "unsafe" not in msg


# ----------------------------------------------------------------------------- sources


def test_safetensors_source_roundtrip_lazy_and_ordered(tmp_path):
    state = tiny_state()
    p = tmp_path / "m.safetensors"
    save_file(state, p)
    assert checkpoint_kind(p) == "safetensors"
    with open_checkpoint(p) as src:
        assert src.kind == "safetensors" and src.path == os.fspath(p)
        assert_same(src, state)
        keys = src.keys()
        assert keys == open_checkpoint(p).keys()  # stable order
        assert "encoder.layer.0.weight" in src and len(src) == 5
        expect_error(lambda: src.get("nope"), p, "no tensor named 'nope'")
    expect_error(lambda: src.get("step"), p, "closed")


def test_safetensors_corrupted_header(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file(tiny_state(), p)
    data = bytearray(p.read_bytes())
    data[12:24] = b"#" * 12
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    expect_error(lambda: open_checkpoint(tmp_path / "bad.safetensors"), "bad.safetensors",
                 "not a readable safetensors file: corrupted header")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    expect_error(lambda: open_checkpoint(tmp_path / "huge.safetensors"), "huge.safetensors", "corrupted")
    (tmp_path / "trunc.safetensors").write_bytes(bytes(p.read_bytes()[:-7]))
    expect_error(lambda: open_checkpoint(tmp_path / "trunc.safetensors"), "trunc.safetensors", "corrupted")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    expect_error(lambda: open_checkpoint(tmp_path / "empty.safetensors"), "empty.safetensors", "empty")


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_state_dict_file_roundtrip(tmp_path, wrap):
    state = tiny_state()
    obj = state if wrap is None else {wrap: state, "epoch": 3, "lr": 0.1}
    p = tmp_path / "ckpt.pth"
    torch.save(obj, p)
    assert checkpoint_kind(p) == "state_dict"
    with open_checkpoint(p) as src:
        assert src.kind == "state_dict" and src.keys() == list(state)
        assert_same(src, state)


def test_state_dict_errors(tmp_path):
    torch.save({"a": torch.ones(1), "epoch": 3}, tmp_path / "mixed.pt")
    expect_error(lambda: open_checkpoint(tmp_path / "mixed.pt"), "mixed.pt",
                 "value of 'epoch' has type int, expected a tensor")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    expect_error(lambda: open_checkpoint(tmp_path / "list.pt"), "list.pt", "holds a list, expected a state dict")
    torch.save({}, tmp_path / "empty_dict.pt")
    expect_error(lambda: open_checkpoint(tmp_path / "empty_dict.pt"), "empty_dict.pt", "state dict is empty")
    torch.save({"state_dict": {"a": torch.ones(1)}, "model": {"b": torch.ones(1)}}, tmp_path / "two.pt")
    expect_error(lambda: open_checkpoint(tmp_path / "two.pt"), "two.pt", "ambiguous")
    expect_error(lambda: open_checkpoint(tmp_path / "gone.bin"), "gone.bin", "not found")


def test_snapshot_detected_once(tmp_path):
    snap = {"format": "layerprobe-snapshot", "version": 1, "blocks": ["a"], "a": torch.ones(2, 2)}
    p = tmp_path / "snap.pt"
    torch.save(snap, p)
    assert checkpoint_kind(p) == "snapshot"
    kind, obj = load_pt_or_snapshot(p)
    assert kind == "snapshot" and obj["version"] == 1 and torch.equal(obj["a"], torch.ones(2, 2))
    expect_error(lambda: open_checkpoint(p), p, "layerprobe snapshot, not model weights")
    torch.save(tiny_state(), tmp_path / "w.pt")
    kind, obj = load_pt_or_snapshot(tmp_path / "w.pt")
    assert kind == "state_dict" and list(obj) == list(tiny_state())


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, vocab_size=99)
    torch.manual_seed(0)
    bare = BertModel(cfg).eval()
    cls = BertForSequenceClassification(cfg).eval()
    root = tmp_path_factory.mktemp("hf")
    bare.save_pretrained(root / "sharded", max_shard_size="50KB")
    cls.save_pretrained(root / "cls")
    return root, {k: v.detach().clone() for k, v in bare.state_dict().items()}, cls


def test_hf_sharded_safetensors_dir(tiny_bert):
    root, state, _ = tiny_bert
    d = root / "sharded"
    shards = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    assert len(shards) >= 2 and (d / "model.safetensors.index.json").exists()
    assert checkpoint_kind(d) == "hf_dir"
    with open_checkpoint(d) as src:
        assert src.kind == "hf_dir"
        assert not src._open  # nothing opened until a tensor is asked for
        name = "encoder.layer.1.output.dense.weight"
        assert torch.equal(src.get(name), state[name])
        assert len(src._open) == 1  # only the shard holding that tensor
        assert_same(src, state)
        index = json.loads((d / "model.safetensors.index.json").read_text())
        assert src.keys() == list(index["weight_map"])
    with open_checkpoint(d / "model.safetensors.index.json") as src:  # the index named directly
        assert src.kind == "hf_dir" and sorted(src.keys()) == sorted(state)


def test_hf_dir_errors(tiny_bert, tmp_path):
    root, _, _ = tiny_bert
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(root / "sharded", d)
    victim = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))[-1]
    (d / victim).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage header}")
    with open_checkpoint(d) as src:
        name = next(k for k, v in json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].items() if v == victim)
        expect_error(lambda: src.get(name), victim, "corrupted header")
    os.remove(d / victim)
    expect_error(lambda: open_checkpoint(d), victim, f"shard '{victim}' listed in model.safetensors.index.json is missing")
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    msg = expect_error(lambda: open_checkpoint(empty), empty, "no model weights found")
    assert msg.endswith("(expected model.safetensors, model.safetensors.index.json, pytorch_model.bin)")
    expect_error(lambda: checkpoint_kind(empty), empty, "no model weights found")
    bad_index = tmp_path / "badindex"
    bad_index.mkdir()
    (bad_index / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../../etc/passwd"}}')
    expect_error(lambda: open_checkpoint(bad_index), "model.safetensors.index.json", "not a shard file name")


def test_hf_pytorch_bin_dirs(tmp_path):
    state = tiny_state()
    single = tmp_path / "single"
    single.mkdir()
    torch.save(state, single / "pytorch_model.bin")
    with open_checkpoint(single) as src:
        assert src.kind == "hf_dir" and src.keys() == list(state)
        assert_same(src, state)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = list(state)
    weight_map = {}
    for i, chunk in enumerate((names[:2], names[2:])):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({k: state[k] for k in chunk}, sharded / fname, _use_new_zipfile_serialization=i == 0)
        weight_map.update(dict.fromkeys(chunk, fname))
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with open_checkpoint(sharded) as src:
        assert src.keys() == names
        assert torch.equal(src.get(names[0]), state[names[0]]) and len(src._open) == 1
        assert torch.equal(src.get(names[-1]), state[names[-1]]) and len(src._open) == 1  # one shard held
        assert_same(src, state)
    # A name listed in the index but absent from its shard.
    weight_map["ghost.weight"] = "pytorch_model-00001-of-00002.bin"
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with open_checkpoint(sharded) as src:
        expect_error(lambda: src.get("ghost.weight"), "pytorch_model-00001-of-00002.bin",
                     "'ghost.weight' is listed in pytorch_model.bin.index.json but missing")


# ----------------------------------------------------------------------------- checks


def test_check_finite():
    check_finite("w", torch.ones(3))
    check_finite("ids", torch.arange(3))
    t = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")], dtype=torch.bfloat16)
    with pytest.raises(LayerProbeError) as info:
        check_finite("encoder.w", t, "m.pt")
    assert str(info.value) == ("m.pt: non-finite values (NaN/Inf) in parameter 'encoder.w': "
                               "3 of 4 values (1 NaN, 2 Inf)")
