"""Weight files as inputs (``io/checkpoints.py``, ``io/torch_files.py``): safetensors headers,
pickles, sharded indexes, training checkpoints, tensor counts, through the CLI.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from hostile import commands_for, assert_one_line, run, strict_json, variant


def test_pickled_bin_refused_with_stdin_y(f2, capsys, monkeypatch, tmp_path):
    from helpers_malicious import make_malicious_pt

    d = variant(f2, "evil_bin", drop=("model.safetensors",))
    make_malicious_pt(os.path.join(d, "pytorch_model.bin"), f2["marker"])
    for argv in commands_for(f2, d, tmp_path).values():
        if argv[0] == "freeze-list":
            continue
        rc, _, err = run(argv, capsys, monkeypatch)
        assert_one_line(rc, err, "pytorch_model.bin")
        assert not f2["marker"].exists()


def raw_safetensors(path, header, data=b""):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


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
def test_safetensors_headers_refused(f3, capsys, tmp_path, case):
    spec, needle = HEADERS[case]
    p = tmp_path / f"{case}.safetensors"
    if isinstance(spec, bytes):
        p.write_bytes(spec)
    else:
        raw_safetensors(p, *spec)
    for argv in (["compare", p, f3["a"]], ["compare", f3["a"], p]):
        rc, out, err = run([*argv, "--quiet", "--format", "json"], capsys)
        assert_one_line(rc, err, f"{case}.safetensors", needle)
        assert out == ""


def test_out_of_order_offsets_read_the_right_bytes(f3, capsys, tmp_path):
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


@pytest.mark.parametrize("obj, needle", [
    (torch.ones(3), "holds a Tensor"), ([torch.ones(3)], "holds a list"), (5, "holds a int"),
    (None, "holds a NoneType"), ({"a": {"b": torch.ones(2)}}, "value of 'a' has type dict"),
    ({}, "state dict is empty"), ({"state_dict": {}}, "state dict is empty"),
])
def test_pt_that_is_not_a_state_dict(f3, capsys, tmp_path, obj, needle):
    torch.save(obj, tmp_path / "x.pt")
    rc, _, err = run(["compare", tmp_path / "x.pt", f3["a"], "--quiet"], capsys)
    assert_one_line(rc, err, "x.pt", needle)


def test_bin_and_training_checkpoint_compare_like_safetensors(f3, capsys, tmp_path):
    sd = load_file(str(f3["a"]))
    torch.save(sd, tmp_path / "w.bin")
    torch.save({"model": sd, "optimizer": {"state": {}}, "epoch": 3}, tmp_path / "ckpt.pt")
    ref = strict_json(run(["compare", f3["a"], f3["b"], "--format", "json", "--quiet"], capsys)[1])["blocks"]
    for p in (tmp_path / "w.bin", tmp_path / "ckpt.pt"):
        rc, out, err = run(["compare", p, f3["b"], "--format", "json", "--quiet"], capsys)
        assert rc == 0, err
        assert [b["weight_drift"] for b in strict_json(out)["blocks"]] == [b["weight_drift"] for b in ref]


def test_pickle_asking_for_builtins_exec_is_refused(f3, capsys, tmp_path):
    """A hand-written pickle (no torch.save at all) whose only content is ``exec(code)``."""
    code = f"open({str(f3['marker'])!r}, 'w').close()"
    evil = (b"\x80\x02cbuiltins\nexec\nq\x00X" + struct.pack("<I", len(code)) + code.encode()
            + b"q\x01\x85q\x02Rq\x03.")
    for name in ("evil.bin", "evil.pt", "evil.pth"):
        (tmp_path / name).write_bytes(evil)
        for argv in (["compare", tmp_path / name, f3["a"]], ["compare", f3["snap"], tmp_path / name]):
            rc, _, err = run([*argv, "--quiet"], capsys)
            assert_one_line(rc, err, name, "unsafe pickle", "it asks for exec")
    assert not f3["marker"].exists()


def _sharded(f3, name, index, shards=True, cfg=True):
    d = f3["root"] / name
    if d.exists():
        return d
    d.mkdir()
    sd = load_file(str(f3["good"] / "model.safetensors"))
    keys = list(sd)
    if shards:
        save_file({k: sd[k] for k in keys[:10]}, str(d / "s1.safetensors"))
        save_file({k: sd[k] for k in keys[10:]}, str(d / "s2.safetensors"))
    if cfg:
        shutil.copy(f3["good"] / "config.json", d / "config.json")
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
def test_sharded_index_refused(f3, capsys, case):
    index, needle = INDEXES[case]
    d = _sharded(f3, f"index_{case}", index)
    rc, _, err = run(["compare", d, f3["good"], "--quiet"], capsys)
    assert_one_line(rc, err, f"index_{case}", needle)


def test_shard_that_is_a_directory(f3, capsys):
    d = _sharded(f3, "index_shard_dir", {"weight_map": {"bert.embeddings.word_embeddings.weight": "sub"}}, shards=False)
    (d / "sub").mkdir()
    rc, _, err = run(["compare", d, f3["good"], "--quiet"], capsys)
    assert_one_line(rc, err, "sub", "missing")


def test_index_file_as_input_and_without_metadata(f3, capsys):
    d = _sharded(f3, "index_plain", lambda wm: {"weight_map": wm})  # no "metadata", as some tools write
    # was: "not a checkpoint: no PyTorch zip or pickle header" (open_checkpoint accepted it, the CLI did not)
    rc, out, err = run(["compare", d / "model.safetensors.index.json", f3["good"], "--format", "json", "--quiet"],
                       capsys)
    assert rc == 0, err
    assert all(b["weight_drift"] == 0.0 for b in strict_json(out)["blocks"])
    # was: "cannot load the model: 'metadata'" (transformers' KeyError)
    rc, _, err = run(["compare", d, f3["good"], "--probe", f3["probe"], "--quiet"], capsys)
    assert_one_line(rc, err, "model.safetensors.index.json", "'metadata'", "(no --probe)")


def test_same_file_on_both_sides(f3, capsys):
    rc, out, _ = run(["compare", f3["a"], f3["a"], "--format", "json", "--quiet"], capsys)
    assert rc == 0 and all(b["weight_drift"] == 0.0 and b["weight_cosine"] == 1.0 for b in strict_json(out)["blocks"])
    rc, out, _ = run(["compare", f3["snap"], f3["snap"], "--format", "json", "--quiet", "--no-ci"], capsys)
    assert rc == 0 and all(b["cka"] == pytest.approx(1.0) for b in strict_json(out)["blocks"])


def test_zero_base_weights_give_strict_json(f3, capsys, tmp_path):
    """Drift from an all-zero base is infinite: JSON null (never an Infinity literal), CSV 'inf'."""
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(f3["a"])).items()}, str(tmp_path / "z.safetensors"))
    rc, out, err = run(["compare", tmp_path / "z.safetensors", f3["a"], "--format", "json", "--quiet"], capsys)
    assert rc == 0, err
    blocks = strict_json(out)["blocks"]
    assert all(b["weight_drift"] is None and b["weight_cosine"] is None for b in blocks)
    rc, out, _ = run(["compare", tmp_path / "z.safetensors", f3["a"], "--format", "csv", "--quiet"], capsys)
    assert rc == 0 and out.splitlines()[1].split(",")[6] == "inf"


# ------------------------------------------------------------------ issue 20: tensor counts bounded before loading

def _many_safetensors(path, n):
    """A header-only .safetensors of ``n`` zero-element tensors (about 50 bytes each on disk)."""
    header = {f"encoder.layer.{i}.w": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    h = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h)
    return path


@pytest.mark.parametrize("fmt", ["safetensors", "zip", "legacy", "views"])
def test_tensor_count_is_bounded_at_and_over(f3, capsys, monkeypatch, tmp_path, fmt):
    """MAX_TENSORS per file, counted from the header / zip directory / pickle before any tensor is built
    (lowered to 8 here; the real bound is tested below with a small file)."""
    import layerprobe.io.torch_files as tf

    monkeypatch.setattr(tf, "MAX_TENSORS", 8)
    for n, ok in ((8, True), (9, False)):
        p = tmp_path / f"{fmt}_{n}.{'safetensors' if fmt == 'safetensors' else 'pt'}"
        if fmt == "safetensors":
            save_file({f"encoder.layer.{i}.w": torch.ones(1) for i in range(n)}, str(p))
        else:
            shared = torch.ones(1)
            sd = {f"encoder.layer.{i}.w": shared if fmt == "views" else torch.ones(1) for i in range(n)}
            torch.save(sd, p, _use_new_zipfile_serialization=fmt != "legacy")
        rc, _, err = run(["compare", p, p, "--quiet"], capsys)
        if ok:
            assert rc == 0, err
        else:
            assert_one_line(rc, err, p.name, "more than the 8 accepted in one checkpoint file")


def test_a_million_tensor_header_is_refused_before_parsing(capsys, tmp_path):
    import time

    p = _many_safetensors(tmp_path / "many.safetensors", 100_001)  # 5 MB of header, no data
    t = time.monotonic()
    rc, _, err = run(["compare", p, p, "--quiet"], capsys)
    assert_one_line(rc, err, "many.safetensors", "holds 100,001 tensors", "more than the 100,000 accepted")
    assert time.monotonic() - t < 5


def test_a_zip_directory_of_too_many_members_is_refused_unread(capsys, tmp_path):
    """The zip directory's own count (its end record, O(1)) refuses a .pt before the pickle is read."""
    import zipfile

    p = tmp_path / "members.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("members/data.pkl", b"\x80\x02}q\x00.")
    from layerprobe.io import torch_files as tf

    raw = bytearray(p.read_bytes())
    i = raw.rfind(b"PK\x05\x06")
    raw[i + 8:i + 12] = (0xFFFE).to_bytes(2, "little") * 2  # the end record claims 65,534 members
    p.write_bytes(bytes(raw))
    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf, "MAX_TENSORS", 1000)
        rc, _, err = run(["compare", p, p, "--quiet"], capsys)
    assert_one_line(rc, err, "members.pt", "zip directory lists 65,534 members")


@pytest.mark.slow
def test_a_pt_of_100001_tensors_is_refused(capsys, tmp_path):
    p = tmp_path / "many.pt"
    torch.save({f"encoder.layer.{i}.w": torch.zeros(0) for i in range(100_001)}, p)
    rc, _, err = run(["compare", p, p, "--quiet"], capsys)
    assert_one_line(rc, err, "many.pt", "more than the 100,000 accepted")


# ------------------------------------------------------------------ issue 20: an intact file asking for a missing class

@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("owner", ["__main__", "torch.nn"])
def test_intact_pt_asking_for_a_missing_class_is_named(capsys, monkeypatch, tmp_path, owner, legacy):
    """was: "truncated or corrupted" for an intact file saved with a class this Python does not have."""
    import importlib

    module = importlib.import_module(owner)
    gone = type("TrainArgsGone", (), {"__module__": owner})  # a class of the script that saved the file
    monkeypatch.setattr(module, "TrainArgsGone", gone, raising=False)
    p = tmp_path / "ckpt.pt"
    torch.save({"encoder.layer.0.w": torch.ones(2, 2), "args": gone()}, p, _use_new_zipfile_serialization=not legacy)
    monkeypatch.delattr(module, "TrainArgsGone")
    rc, _, err = run(["compare", p, p, "--quiet"], capsys)
    line = assert_one_line(rc, err, "ckpt.pt", f"it asks for {owner}.TrainArgsGone, a class that does not exist here",
                           "unsafe pickle")
    assert "corrupted" not in line
    if not legacy:  # the same name with one byte changed: the zip's CRC no longer matches, so it is damage
        raw = bytearray(p.read_bytes())
        i = raw.find(b"TrainArgsGone")
        raw[i] = ord("X")
        p.write_bytes(bytes(raw))
        rc, _, err = run(["compare", p, p, "--quiet"], capsys)
        assert_one_line(rc, err, "ckpt.pt", "truncated or corrupted")


# ------------------------------------------------------------------ issue 20: zero-element tensors on both sides

@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 0), (0, 3, 2), (2, 0, 3)])
def test_zero_element_tensors_on_both_sides(capsys, tmp_path, shape):
    """was: RuntimeError from update_rank (reshape of 0 elements); now exit 0, rank 0, strict JSON."""
    g = torch.Generator().manual_seed(0)
    sd = {"encoder.layer.0.attention.self.query.weight": torch.randn(4, 4, generator=g),
          "encoder.layer.0.attention.self.key.weight": torch.zeros(shape),
          "encoder.layer.1.attention.self.query.weight": torch.zeros(shape)}
    save_file(sd, str(tmp_path / "a.safetensors"))
    save_file({k: v + 0.1 for k, v in sd.items()}, str(tmp_path / "b.safetensors"))
    rc, out, err = run(["compare", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--format", "json",
                        "--quiet"], capsys)
    assert rc == 0, err
    doc = strict_json(out)
    assert doc["blocks"][1]["n_params"] == 0 and doc["blocks"][0]["weight_drift"] > 0


def _damage(sd, key, how):
    t = sd[key]
    if how == "meta":
        return torch.empty(t.shape, device="meta")
    if how == "sparse":
        return t.to_sparse()
    if how == "complex":
        return t.to(torch.complex64)
    if how == "quantized":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch; files still hold them
            return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)
    raise AssertionError(how)


@pytest.mark.parametrize("how, needle", [
    ("meta", "is on the meta device"), ("sparse", "is a sparse_coo tensor, expected a dense one"),
    ("complex", "has complex dtype torch.complex64"), ("quantized", "is a quantized tensor (torch.qint8)"),
])
def test_state_dict_tensors_that_are_not_dense_real_weights(f3, capsys, tmp_path, how, needle):
    """Meta, sparse, complex and quantized tensors were a traceback or (complex) a drift of the real part."""
    sd = load_file(str(f3["a"]))
    key = next(k for k in sd if k.endswith("layer.0.output.dense.weight"))
    sd[key] = _damage(sd, key, how)
    torch.save(sd, tmp_path / "x.pt")
    for argv in (["compare", f3["a"], tmp_path / "x.pt"], ["compare", tmp_path / "x.pt", f3["snap"]]):
        rc, out, err = run([*argv, "--quiet"], capsys)
        assert_one_line(rc, err, "x.pt", repr(key), needle)
        assert out == ""


def test_complex_safetensors_refused(f3, capsys, tmp_path):
    sd = load_file(str(f3["a"]))
    key = next(k for k in sd if k.endswith("layer.0.output.dense.weight"))
    sd[key] = sd[key].to(torch.complex64)
    save_file(sd, str(tmp_path / "c.safetensors"))
    rc, _, err = run(["compare", f3["a"], tmp_path / "c.safetensors", "--quiet"], capsys)
    assert_one_line(rc, err, "c.safetensors", repr(key), "complex dtype C64")


def test_integer_buffers_still_pass_the_tensor_check(f3, capsys, tmp_path):
    from layerprobe.io.torch_files import tensor_problem

    assert tensor_problem(torch.arange(4)) is None and tensor_problem(torch.ones(2, dtype=torch.bfloat16)) is None
    sd = load_file(str(f3["a"]))
    torch.save({**sd, "embeddings.position_ids": torch.arange(16)[None]}, tmp_path / "ids.pt")
    ref = strict_json(run(["compare", f3["a"], f3["b"], "--format", "json", "--quiet"], capsys)[1])["blocks"]
    rc, out, err = run(["compare", tmp_path / "ids.pt", f3["b"], "--format", "json", "--quiet"], capsys)
    assert rc == 0, err
    assert [b["weight_drift"] for b in strict_json(out)["blocks"]] == [b["weight_drift"] for b in ref]
