"""The bad-input catalogue (docs/errors.md), each case through the CLI.

Every case: exit code 2, one line on stderr naming the file and the problem, no traceback, and
no output file left behind (the ``--out`` folder holds nothing, ``-o`` is never created).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_bert
from layerprobe.cli import main
from layerprobe.snapshot.take import Snapshot

LAYERPROBE = os.path.join(os.path.dirname(sys.executable), "layerprobe")


def _sd(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def f(tmp_path_factory, tokenizer, texts):
    """Good and bad inputs of every kind (paths by name)."""
    root = tmp_path_factory.mktemp("errors")
    p = {"root": root}
    model = tiny_bert(0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    p["model"] = root / "model"
    sd = _sd(model)
    save_file(sd, str(root / "good.safetensors"))
    p["safetensors"] = root / "good.safetensors"
    torch.save(sd, root / "good.pt")
    p["pt"] = root / "good.pt"
    # Probes
    p["probe"] = root / "probe.csv"
    p["probe"].write_text("text\n" + "\n".join(f'"{t}"' for t in texts[:12]) + "\n")
    p["probe2"] = root / "probe2.csv"
    p["probe2"].write_text("text\n" + "\n".join(f'"{t}"' for t in texts[12:24]) + "\n")
    p["probe_nocol"] = root / "probe_nocol.csv"
    p["probe_nocol"].write_text("sentence\n" + "\n".join(f'"{t}"' for t in texts[:5]) + "\n")
    p["probe_empty"] = root / "probe_empty.csv"
    p["probe_empty"].write_bytes(b"")
    p["probe_header_only"] = root / "probe_header_only.csv"
    p["probe_header_only"].write_text("text\n")
    p["probe_latin1"] = root / "probe_latin1.txt"
    p["probe_latin1"].write_bytes("caf\xe9 tr\xe8s bon\nmauvais film\n".encode("latin-1"))
    p["probe_one"] = root / "probe_one.csv"
    p["probe_one"].write_text("text\ngood movie\n")
    # Snapshots
    for name, probe in (("snap", "probe"), ("snap_other_probe", "probe2"), ("snap_one", "probe_one")):
        assert main(["snapshot", str(p["model"]), "--probe", str(p[probe]), "-o", str(root / f"{name}.pt"),
                     "--quiet", "--max-length", "16"]) == 0
        p[name] = root / f"{name}.pt"
    snap = Snapshot.load(p["snap"])
    nan_snap = Snapshot.load(p["snap"])
    first = next(iter(nan_snap.representations))
    nan_snap.representations[first] = nan_snap.representations[first].clone()
    nan_snap.representations[first][0, 0] = float("nan")
    nan_snap.save(root / "snap_nan_reps.pt")
    p["snap_nan_reps"] = root / "snap_nan_reps.pt"
    const = Snapshot.load(p["snap"])
    last = list(const.representations)[-1]
    const.representations[last] = torch.ones_like(const.representations[last])
    const.save(root / "snap_constant.pt")
    p["snap_constant"] = root / "snap_constant.pt"
    assert snap.fingerprint != Snapshot.load(p["snap_other_probe"]).fingerprint
    # Broken files
    p["empty"] = root / "empty.pt"
    p["empty"].write_bytes(b"")
    data = p["pt"].read_bytes()
    p["truncated_pt"] = root / "truncated.pt"
    p["truncated_pt"].write_bytes(data[: len(data) // 2])
    p["corrupt_pt"] = root / "corrupt.pt"
    p["corrupt_pt"].write_bytes(data[:200] + bytes(len(data) - 400) + data[-200:])
    st = p["safetensors"].read_bytes()
    p["truncated_st"] = root / "truncated.safetensors"
    p["truncated_st"].write_bytes(st[: len(st) // 2])
    p["corrupt_st"] = root / "corrupt.safetensors"
    p["corrupt_st"].write_bytes(st[:8] + b"{not json" + st[17:])
    p["text"] = root / "notes.pt"
    p["text"].write_text("this is not a checkpoint\n" * 20)
    p["json_not_ckpt"] = root / "weights.safetensors"
    p["json_not_ckpt"].write_text(json.dumps({"hello": "world"}))
    # Mismatched models
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=4, n_head=2, vocab_size=64, n_positions=64))
    save_file(_sd(gpt2), str(root / "gpt2.safetensors"))
    p["other_arch"] = root / "gpt2.safetensors"
    save_file(_sd(tiny_bert(0, num_hidden_layers=3)), str(root / "three_blocks.safetensors"))
    p["three_blocks"] = root / "three_blocks.safetensors"
    save_file(_sd(tiny_bert(0, intermediate_size=40)), str(root / "wider.safetensors"))
    p["wider"] = root / "wider.safetensors"
    missing = {k: v for k, v in sd.items() if k != "encoder.layer.1.attention.self.query.bias"}
    save_file(missing, str(root / "missing_key.safetensors"))
    p["missing_key"] = root / "missing_key.safetensors"
    nan = dict(sd)
    nan["encoder.layer.2.output.dense.weight"] = nan["encoder.layer.2.output.dense.weight"].clone()
    nan["encoder.layer.2.output.dense.weight"][0, 0] = float("nan")
    save_file(nan, str(root / "nan.safetensors"))
    p["nan_weights"] = root / "nan.safetensors"
    inf = dict(sd)
    inf["embeddings.word_embeddings.weight"] = inf["embeddings.word_embeddings.weight"].clone()
    inf["embeddings.word_embeddings.weight"][3, 1] = math.inf
    torch.save(inf, root / "inf.pt")
    p["inf_weights"] = root / "inf.pt"
    p["a_file"] = root / "a_regular_file"
    p["a_file"].write_text("x")
    return p


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _files_under(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


#: (test id, argv template, substrings expected in the one-line message, file named in it)
#: ``{x}`` is replaced by the fixture path ``x``; ``{OUT}`` by a fresh output folder.
CASES = [
    ("missing_file", ["compare", "{root}/nope.pt", "{snap}"], ["no such file"], "{root}/nope.pt"),
    ("missing_model_dir", ["snapshot", "{root}/nope", "--probe", "{probe}", "-o", "{OUT}/s.pt"],
     ["expected a Hugging Face model directory"], "{root}/nope"),
    ("empty_file", ["compare", "{empty}", "{snap}"], ["empty"], "{empty}"),
    ("truncated_pt", ["compare", "{snap}", "{truncated_pt}"], ["truncated or corrupted"], "{truncated_pt}"),
    ("corrupted_pt", ["compare", "{corrupt_pt}", "{pt}"], ["corrupted"], "{corrupt_pt}"),
    ("truncated_safetensors", ["compare", "{truncated_st}", "{safetensors}"], ["safetensors"], "{truncated_st}"),
    ("corrupted_safetensors", ["compare", "{safetensors}", "{corrupt_st}"], ["safetensors"], "{corrupt_st}"),
    ("not_a_checkpoint", ["compare", "{text}", "{snap}"], ["not a checkpoint"], "{text}"),
    ("json_named_safetensors", ["compare", "{json_not_ckpt}", "{safetensors}"], [""], "{json_not_ckpt}"),
    ("architecture_differs", ["compare", "{safetensors}", "{other_arch}"], ["keys differ", "architectures"], "{other_arch}"),
    ("block_count_differs", ["compare", "{safetensors}", "{three_blocks}"], ["block count differs", "4", "3"],
     "{three_blocks}"),
    ("shapes_differ", ["compare", "{safetensors}", "{wider}"], ["shapes differ", "[37]", "[40]"],
     "{wider}"),
    ("keys_differ", ["compare", "{safetensors}", "{missing_key}"],
     ["keys differ", "attention.self.query.bias"], "{safetensors}"),
    ("fingerprints_differ", ["compare", "{snap}", "{snap_other_probe}"], ["probe fingerprints differ"],
     "{snap_other_probe}"),
    ("nan_in_weights", ["compare", "{safetensors}", "{nan_weights}"], ["NaN/Inf", "block.2"], "{nan_weights}"),
    ("inf_in_weights", ["compare", "{inf_weights}", "{pt}"], ["NaN/Inf", "embeddings"], "{inf_weights}"),
    ("nan_in_activations", ["compare", "{snap}", "{snap_nan_reps}"], ["NaN/Inf", "representations"],
     "{snap_nan_reps}"),
    ("constant_representations", ["compare", "{snap}", "{snap_constant}"],
     ["constant (zero-variance)", "CKA is undefined"], "{snap_constant}"),
    ("probe_without_text_column", ["compare", "{model}", "{model}", "--probe", "{probe_nocol}"], ["text"],
     "{probe_nocol}"),
    ("probe_empty", ["compare", "{model}", "{model}", "--probe", "{probe_empty}"], ["empty"], "{probe_empty}"),
    ("probe_header_only", ["snapshot", "{model}", "--probe", "{probe_header_only}", "-o", "{OUT}/s.pt"], [""],
     "{probe_header_only}"),
    ("probe_not_utf8", ["snapshot", "{model}", "--probe", "{probe_latin1}", "-o", "{OUT}/s.pt"], ["UTF-8"],
     "{probe_latin1}"),
    ("probe_missing", ["compare", "{model}", "{model}", "--probe", "{root}/none.csv"], ["not found"],
     "{root}/none.csv"),
    ("too_few_examples_snapshots", ["compare", "{snap_one}", "{snap_one}"], ["at least 4 distinct", "got 1"], "{snap_one}"),
    ("too_few_examples_probe", ["compare", "{model}", "{model}", "--probe", "{probe_one}", "--max-length", "16"],
     ["at least 4 distinct", "got 1"], "{model}"),
    ("out_dir_under_a_file", ["compare", "{snap}", "{snap}", "--out", "{a_file}/out"], ["cannot write"],
     "{a_file}/out"),
    ("out_dir_is_a_file", ["compare", "{snap}", "{snap}", "--out", "{a_file}"], ["is a file"], "{a_file}"),
    ("snapshot_output_under_a_file", ["snapshot", "{model}", "--probe", "{probe}", "-o", "{a_file}/s.pt"],
     ["cannot"], "{a_file}"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(f, capsys, tmp_path, case):
    _, argv, expected, named = case
    out_dir = tmp_path / "out"
    subs = {**{k: str(v) for k, v in f.items()}, "OUT": str(out_dir)}

    def fill(s):
        for k, v in subs.items():
            s = s.replace("{" + k + "}", v)
        return s

    argv = [fill(a) for a in argv]
    if argv[0] == "compare" and "--out" not in argv:
        argv += ["--out", str(out_dir), "--format", "json"]
    argv.append("--quiet")
    rc, out, err = run(argv, capsys)
    assert rc == 2, (argv, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    msg = lines[0]
    assert msg.startswith("layerprobe: error: "), msg
    assert fill(named) in msg, msg
    for e in expected:
        assert e.lower() in msg.lower(), msg
    assert out == ""
    assert _files_under(out_dir) == [], "partial output left behind"
    if os.environ.get("LAYERPROBE_CATALOGUE"):  # regenerate docs/errors.md's example messages
        with open(os.environ["LAYERPROBE_CATALOGUE"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps([case[0], msg.replace(str(f["root"]) + "/", "")]) + "\n")
    assert not os.path.exists(os.path.join(str(f["a_file"]), "s.pt"))


def test_catalogue_documents_every_case():
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "errors.md"), encoding="utf-8").read()
    for case in CASES:
        assert f"test_bad_input[{case[0]}]" in doc, case[0]


def test_existing_output_is_unchanged_on_error(f, capsys, tmp_path):
    out = tmp_path / "out"
    assert run(["compare", f["snap"], f["snap"], "--out", out, "--format", "json", "--quiet"], capsys)[0] == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    rc, _, err = run(["compare", f["snap"], f["snap_constant"], "--out", out, "--quiet"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before


def test_snapshot_output_not_created_on_error(f, capsys, tmp_path):
    target = tmp_path / "s.pt"
    rc, _, err = run(["snapshot", f["model"], "--probe", f["probe_empty"], "-o", target, "--quiet"], capsys)
    assert rc == 2 and not target.exists() and os.listdir(tmp_path) == []


def test_console_script_bad_input(f, tmp_path):
    """The real entry point: one line, exit 2, no traceback, nothing written."""
    for argv, named in (
        (["compare", str(f["truncated_pt"]), str(f["snap"]), "--out", str(tmp_path / "o")], f["truncated_pt"]),
        (["compare", str(f["snap"]), str(f["snap_other_probe"]), "--format", "json"], f["snap_other_probe"]),
    ):
        proc = subprocess.run([LAYERPROBE, *argv], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert str(named) in proc.stderr
        assert proc.stdout == ""
    assert _files_under(tmp_path / "o") == []


# ------------------------------------------------------------------------------- determinism

def test_compare_json_is_byte_identical(f, capsys, tmp_path):
    outs = [run(["compare", f["snap"], f["snap"], "--format", "json", "--quiet"], capsys)[1] for _ in range(2)]
    assert outs[0] and outs[0] == outs[1]


def test_out_files_are_byte_identical(f, capsys, tmp_path):
    outs, files = [], []
    for i in range(2):
        rc, out, err = run(["compare", f["safetensors"], f["nan_weights"].with_name("good.pt"), "--format", "json",
                            "--out", tmp_path / f"o{i}", "--quiet"], capsys)
        assert rc == 0, err
        outs.append(out.encode())
        files.append({n: (tmp_path / f"o{i}" / n).read_bytes() for n in ("comparison.json", "comparison.csv",
                                                                          "groups.csv")})
    assert outs[0] == outs[1]
    assert files[0] == files[1]
    assert outs[0] == files[0]["comparison.json"]


def test_weights_json_is_byte_identical(f, capsys):
    outs = [run(["compare", f["safetensors"], f["pt"], "--format", "json", "--quiet"], capsys)[1] for _ in range(2)]
    assert outs[0] == outs[1] and json.loads(outs[0])["blocks"]


def test_mixed_dtypes_compare_in_float64(tmp_path, capsys):
    """fp32 against bf16/fp16: drift equals the float64 reference over the stored values."""
    from layerprobe.metrics.drift import weight_drift

    sd = _sd(tiny_bert(1))
    torch.manual_seed(1)
    tuned = {k: (v + 0.01 * torch.randn_like(v)) for k, v in sd.items()}
    save_file(sd, str(tmp_path / "a.safetensors"))
    for dt in (torch.bfloat16, torch.float16):
        low = {k: v.to(dt) for k, v in tuned.items()}
        save_file(low, str(tmp_path / "b.safetensors"))
        rc, out, err = run(["compare", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--format", "json",
                            "--quiet"], capsys)
        assert rc == 0, err
        blocks = {e["name"]: e for e in json.loads(out)["blocks"]}
        prefix = "encoder.layer.2."
        ref = weight_drift({k: sd[k].double() for k in sd if k.startswith(prefix)},
                           {k: low[k].double() for k in low if k.startswith(prefix)})
        assert blocks["block.2"]["weight_drift"] == pytest.approx(ref, rel=1e-12)
        assert 0.0 < blocks["block.2"]["weight_drift"] < 1.0
