"""Issue 11: hostile and broken inputs through the real CLI, on every path.

Every case must give exit 0 with correct output or exit 2 with exactly one line on stderr; no code
from a file ever runs (each payload would create a marker file; stdin answers ``y`` to any prompt),
nothing is half-written, nothing hangs. Cases are listed in docs/errors.md ("Round 2").
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import tiny_bert
from helpers_malicious import model_variant as shared_variant

from layerprobe.cli import main

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def f(tmp_path_factory, tokenizer, texts):
    root = tmp_path_factory.mktemp("hostile")
    good = root / "good"
    tiny_bert(0, head=True).save_pretrained(good)
    tokenizer.save_pretrained(good)
    probe = root / "probe.txt"
    probe.write_text("\n".join(texts) + "\n")
    for name in ("a", "b"):
        assert main(["snapshot", str(good), "--probe", str(probe), "-o", str(root / f"snap_{name}.pt"),
                     "--quiet"]) == 0
    assert main(["compare", str(root / "snap_a.pt"), str(root / "snap_b.pt"), "--out", str(root / "cmp"),
                 "--quiet"]) == 0
    return {"root": root, "good": good, "probe": probe, "marker": root / "PWNED",
            "snap": root / "snap_a.pt", "snap_b": root / "snap_b.pt", "cmp": root / "cmp" / "comparison.json"}


def variant(f, name, cfg=None, drop=(), files=None):
    """A copy of the good model directory with config edits, files dropped or files added."""
    return str(shared_variant(f["root"], f["good"], name, cfg=cfg, drop=drop, files=files))


def run(argv, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))  # a prompt must never be answered
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("layerprobe: error: "), (rc, err)
    for n in needles:
        assert n in lines[0], lines[0]


def _evil(f):
    return f"open({str(f['marker'])!r}, 'w').close()\n"


# ------------------------------------------------------------------ class 1: code can run

def _commands(f, d, tmp_path):
    return {
        "snapshot": ["snapshot", d, "--probe", f["probe"], "-o", tmp_path / "x.pt", "--quiet"],
        "compare_probe": ["compare", f["good"], d, "--probe", f["probe"], "--quiet"],
        "compare_weights": ["compare", d, f["good"], "--quiet"],
        "freeze_list": ["freeze-list", f["cmp"], d],
    }


MODEL_DIRS = {
    "auto_map": dict(cfg=lambda c: c.update(auto_map={"AutoConfig": "evil.C", "AutoModel": "evil.M"})),
    "unknown_model_type": dict(cfg=lambda c: c.update(model_type="evilmodel")),
    "unknown_model_type_auto_map": dict(cfg=lambda c: c.update(model_type="evilmodel",
                                                                 auto_map={"AutoConfig": "evil.C"})),
    "architectures_trainer": dict(cfg=lambda c: c.update(architectures=["Trainer"])),
    "architectures_pipeline": dict(cfg=lambda c: c.update(architectures=["pipeline"])),
    "architectures_other_type": dict(cfg=lambda c: c.update(architectures=["GPT2Model"])),
    "architectures_not_a_list": dict(cfg=lambda c: c.update(architectures="BertModel")),
    "tokenizer_auto_map": dict(files={"tokenizer_config.json": json.dumps(
        {"auto_map": {"AutoTokenizer": ["evil.T", None]}, "tokenizer_class": "BertTokenizer"})}),
    "huge_layer_count": dict(cfg=lambda c: c.update(num_hidden_layers=1_000_000)),
    "more_layers_than_weights": dict(cfg=lambda c: c.update(num_hidden_layers=6)),
    "hidden_size_bool": dict(cfg=lambda c: c.update(hidden_size=True)),
    "config_deeply_nested": dict(files={"config.json": "[" * 100_000 + "]" * 100_000}),
    "config_not_object": dict(files={"config.json": "[1, 2]"}),
    "index_leaving_dir": dict(drop=("model.safetensors",), files={"model.safetensors.index.json": json.dumps(
        {"weight_map": {"bert.embeddings.word_embeddings.weight": "../good/model.safetensors"}})}),
    "corrupt_safetensors": dict(files={"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage garbage"}),
}


@pytest.mark.parametrize("command", ["snapshot", "compare_probe", "compare_weights", "freeze_list"])
@pytest.mark.parametrize("case", sorted(MODEL_DIRS))
def test_model_dir_refused_on_every_path(f, capsys, monkeypatch, tmp_path, case, command):
    spec = MODEL_DIRS[case]
    d = variant(f, case, cfg=spec.get("cfg"), drop=spec.get("drop", ()),
                files={**spec.get("files", {}), "evil.py": _evil(f)})
    if command == "freeze_list" and case in ("more_layers_than_weights", "index_leaving_dir", "corrupt_safetensors"):
        pytest.skip("freeze-list reads the config only (names, no weights)")
    rc, _, err = run(_commands(f, d, tmp_path)[command], capsys, monkeypatch)
    assert_one_line(rc, err, os.path.basename(d))
    assert not f["marker"].exists(), "code from the model directory ran"
    assert not (tmp_path / "x.pt").exists()


def test_pickled_bin_refused_with_stdin_y(f, capsys, monkeypatch, tmp_path):
    from helpers_malicious import make_malicious_pt

    d = variant(f, "evil_bin", drop=("model.safetensors",))
    make_malicious_pt(os.path.join(d, "pytorch_model.bin"), f["marker"])
    for argv in _commands(f, d, tmp_path).values():
        if argv[0] == "freeze-list":
            continue
        rc, _, err = run(argv, capsys, monkeypatch)
        assert_one_line(rc, err, "pytorch_model.bin")
        assert not f["marker"].exists()


# ------------------------------------------------------------------ class 3: HF loading path

@pytest.mark.parametrize("case, spec, needle", [
    ("missing_tensor", "missing", "parameters but the weight files hold"),
    ("no_tokenizer", dict(drop=("tokenizer.json", "tokenizer_config.json")), "no tokenizer"),
    ("broken_tokenizer", dict(files={"tokenizer.json": "{not json"}), "tokenizer.json"),
    ("vocab_smaller_than_tokenizer", dict(cfg=lambda c: c.update(vocab_size=10)), "another shape"),
    ("truncated_safetensors", "truncated", "not a readable safetensors file"),
])
def test_hf_path_refuses_wrong_models(f, capsys, monkeypatch, tmp_path, case, spec, needle):
    from safetensors.torch import load_file, save_file

    if spec == "missing":
        d = variant(f, case)
        sd = load_file(os.path.join(d, "model.safetensors"))
        sd.pop(next(k for k in sd if "layer.2.attention.self.query.weight" in k))
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    elif spec == "truncated":
        d = variant(f, case)
        data = (f["good"] / "model.safetensors").read_bytes()
        (f["root"] / case / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        d = variant(f, case, cfg=spec.get("cfg"), drop=spec.get("drop", ()), files=spec.get("files"))
    for argv in (_commands(f, d, tmp_path)["snapshot"], _commands(f, d, tmp_path)["compare_probe"]):
        rc, _, err = run(argv, capsys, monkeypatch)
        assert_one_line(rc, err, needle)


def test_max_length_fits_the_model(f, capsys, monkeypatch, tmp_path):
    long_probe = tmp_path / "long.txt"
    long_probe.write_text("\n".join(["good movie " * 100] * 3))
    rc, _, err = run(["snapshot", f["good"], "--probe", long_probe, "-o", tmp_path / "x.pt", "--quiet",
                      "--max-length", "500"], capsys, monkeypatch)
    assert_one_line(rc, err, "past the model's 64 positions")
    rc, out, _ = run(["snapshot", f["good"], "--probe", long_probe, "-o", tmp_path / "x.pt", "--quiet"],
                     capsys, monkeypatch)
    assert rc == 0 and torch.load(tmp_path / "x.pt", weights_only=True)["meta"]["max_length"] == 64


def test_load_report_never_precedes_the_error(f, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    d = variant(f, "vocab_mismatch_report", cfg=lambda c: c.update(vocab_size=10))
    rc, out, err = run(_commands(f, d, tmp_path)["snapshot"], capsys, monkeypatch)
    assert_one_line(rc, err)
    assert "LOAD REPORT" not in out + err


# ------------------------------------------------------------------ class 4: resources

@pytest.mark.parametrize("which", ["probe_fifo", "probe_device", "comparison_fifo", "checkpoint_device"])
def test_special_files_are_refused_not_read(f, tmp_path, which):
    """In a subprocess with a timeout and a memory limit: a regression fails instead of hanging."""
    fifo = tmp_path / "p.txt"
    os.mkfifo(fifo)
    dev = tmp_path / "zero.txt"
    os.symlink("/dev/zero", dev)  # read-only use of the device, through a temporary link
    argv = {"probe_fifo": ["snapshot", f["good"], "--probe", fifo, "-o", tmp_path / "x.pt"],
            "probe_device": ["compare", f["good"], f["good"], "--probe", dev],
            "comparison_fifo": ["freeze-list", fifo, f["good"]],
            "checkpoint_device": ["compare", dev, f["snap"]]}[which]
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from layerprobe.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_line(p.returncode, p.stderr, "expected a regular file")


def test_huge_single_line_probe_refused(f, capsys, monkeypatch, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("good " * 2_000_000)
    rc, _, err = run(["snapshot", f["good"], "--probe", big, "-o", tmp_path / "x.pt"], capsys, monkeypatch)
    assert_one_line(rc, err, "more than the 1,000,000 accepted")


# ------------------------------------------------------------------ class 5: tampered / odd files

SNAPSHOT_TAMPERS = {
    "missing_representation": lambda d: d["representations"].pop("block.1"),
    "zero_width_representation": lambda d: d["representations"].__setitem__("block.1", torch.zeros(20, 0)),
    "bool_representation": lambda d: d["representations"].__setitem__("block.1", torch.ones(20, 32, dtype=torch.bool)),
    "entry_is_string": lambda d: d["meta"]["entries"].__setitem__(0, "embeddings"),
    "entry_without_kind": lambda d: d["meta"]["entries"][0].pop("kind"),
    "token_examples_string": lambda d: d.__setitem__("token_examples", "abc"),
    "n_examples_negative": lambda d: d["meta"].__setitem__("n_examples", -3),
    "n_examples_string": lambda d: d["meta"].__setitem__("n_examples", "many"),
    "max_length_string": lambda d: d["meta"].__setitem__("max_length", "x"),
    "format_version_negative": lambda d: d.__setitem__("format_version", -1),
    "duplicate_entry": lambda d: d["meta"]["entries"].append(dict(d["meta"]["entries"][0])),
    "fingerprint_int": lambda d: d["meta"].__setitem__("fingerprint", 5),
}


@pytest.mark.parametrize("case", sorted(SNAPSHOT_TAMPERS))
def test_tampered_snapshot_refused(f, capsys, monkeypatch, tmp_path, case):
    d = copy.deepcopy(torch.load(f["snap"], weights_only=True))
    SNAPSHOT_TAMPERS[case](d)
    torch.save(d, tmp_path / "t.pt")
    rc, _, err = run(["compare", tmp_path / "t.pt", f["snap_b"], "--quiet"], capsys, monkeypatch)
    assert_one_line(rc, err, "t.pt")


@pytest.mark.parametrize("name, content, needle", [
    ("deep.jsonl", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "nested too deeply"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("bigint.jsonl", '{"text": "good", "n": ' + "9" * 5000 + "}\n", "digits"),
    ("surrogate.jsonl", '{"text": "good \\ud800 movie"}\n', "lone surrogate"),
])
def test_odd_json_probes_refused(f, capsys, monkeypatch, tmp_path, name, content, needle):
    (tmp_path / name).write_text(content)
    rc, _, err = run(["snapshot", f["good"], "--probe", tmp_path / name, "-o", tmp_path / "x.pt"], capsys, monkeypatch)
    assert_one_line(rc, err, name, needle)


@pytest.mark.parametrize("flags, needle", [
    (["--seed", "-1"], "--seed"),
    (["--max-drift", "-1"], "max_drift"),
    (["--max-drift", "nan"], "max_drift"),
    (["--min-train-blocks", "-2"], "min_train_blocks"),
    (["--min-train-blocks", "99"], "more than the 4 blocks"),
    (["--n-boot", "1000000000000"], "--n-boot"),
    (["--pooling", "first"], "pooling"),
    (["--text-column", "foo"], "applies only with --probe"),
    (["--max-tokens", "3"], "applies only with --pooling tokens"),
    (["--out", ""], "empty"),
])
def test_nonsense_flags_refused(f, capsys, monkeypatch, flags, needle):
    rc, _, err = run(["compare", f["snap"], f["snap_b"], "--quiet", *flags], capsys, monkeypatch)
    assert_one_line(rc, err, needle)


# ------------------------------------------------------------------ class 2: outputs

def test_output_targets_never_replaced(f, capsys, monkeypatch, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "adir").mkdir()
    for target in (fifo, tmp_path / "adir", ""):
        for argv in (["snapshot", f["good"], "--probe", f["probe"], "-o", target, "--quiet"],
                     ["freeze-list", f["cmp"], f["good"], "-o", target]):
            rc, _, err = run(argv, capsys, monkeypatch)
            assert_one_line(rc, err)
    assert os.path.exists(fifo) and not os.path.isfile(fifo)
    real = tmp_path / "real.pt"
    real.write_text("old")
    os.symlink(real, tmp_path / "link.pt")
    rc, _, _ = run(["snapshot", f["good"], "--probe", f["probe"], "-o", tmp_path / "link.pt", "--quiet"],
                   capsys, monkeypatch)
    assert rc == 0 and os.path.islink(tmp_path / "link.pt") and real.stat().st_size > 100  # written through


def test_out_dir_appears_together_or_not_at_all(f, capsys, monkeypatch, tmp_path):
    import layerprobe.results.plots as plots

    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.json").write_text("old")
    (out / "notes.txt").write_text("mine")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_blocks", boom)
    rc, _, _ = run(["compare", f["snap"], f["snap_b"], "--out", out, "--quiet"], capsys, monkeypatch)
    assert rc == 130 and sorted(os.listdir(out)) == ["comparison.json", "notes.txt"]
    assert (out / "comparison.json").read_text() == "old"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".out.")] == []  # the temporary dir is gone
    monkeypatch.undo()
    rc, _, _ = run(["compare", f["snap"], f["snap_b"], "--out", out, "--quiet"], capsys, monkeypatch)
    assert rc == 0 and (out / "notes.txt").read_text() == "mine"
    assert {"comparison.json", "comparison.csv", "groups.csv", "blocks.png"} <= set(os.listdir(out))


def test_sigterm_cleans_temporary_files(f, tmp_path):
    code = ("import os, signal, sys\n"
            "import layerprobe.results.plots as plots\n"
            "def slow(*a, **k): os.kill(os.getpid(), signal.SIGTERM)\n"
            "plots.plot_blocks = slow\n"
            "from layerprobe.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", code, "compare", str(f["snap"]), str(f["snap_b"]), "--out", str(out),
                        "--quiet"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 143, p.stderr
    assert not out.exists() or os.listdir(out) == []
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


# ------------------------------------------------------------------ fuzzing: byte flips and truncations

def _mutate(data: bytes, flips, cut) -> bytes:
    b = bytearray(data)
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b[: max(0, len(b) - cut)]) if cut else bytes(b)


FUZZ_KINDS = ["snapshot", "probe", "comparison", "config", "safetensors_in_dir", "tokenizer"]


def _fuzz_once(f, tmp_path, kind, flips, cut, capsys, monkeypatch):
    if kind == "snapshot":
        p = tmp_path / "s.pt"
        p.write_bytes(_mutate(f["snap"].read_bytes(), flips, cut))
        argv = ["compare", p, f["snap_b"], "--quiet", "--no-ci"]
    elif kind == "probe":
        p = tmp_path / "p.txt"
        p.write_bytes(_mutate(f["probe"].read_bytes(), flips, cut))
        argv = ["compare", f["good"], f["good"], "--probe", p, "--quiet", "--no-ci", "--no-anatomy"]
    elif kind == "comparison":
        p = tmp_path / "c.json"
        p.write_bytes(_mutate(f["cmp"].read_bytes(), flips, cut))
        argv = ["freeze-list", p, f["good"]]
    else:
        d = tmp_path / "m"
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(f["good"], d)
        name = {"config": "config.json", "safetensors_in_dir": "model.safetensors", "tokenizer": "tokenizer.json"}[kind]
        (d / name).write_bytes(_mutate((d / name).read_bytes(), flips, cut))
        argv = ["compare", f["good"], d, "--probe", f["probe"], "--quiet", "--no-ci", "--no-anatomy"]
    rc, _, err = run(argv, capsys, monkeypatch)
    if rc != 0:
        assert_one_line(rc, err)


def _fuzz(kind, n):
    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))
    @given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4),
           cut=st.integers(0, 5000))
    def check(f, tmp_path, capsys, monkeypatch, flips, cut):
        _fuzz_once(f, tmp_path, kind, flips, cut, capsys, monkeypatch)
    return check


@pytest.mark.parametrize("kind", FUZZ_KINDS)
def test_fuzz_every_file_kind_fast(f, tmp_path, capsys, monkeypatch, kind):
    _fuzz(kind, 3)(f, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("kind", FUZZ_KINDS)
def test_fuzz_every_file_kind(f, tmp_path, capsys, monkeypatch, kind):
    _fuzz(kind, 60)(f, tmp_path, capsys, monkeypatch)


# --------------------------------------------- weight shards without config.json (weights-only)

def test_configless_shard_dir_compares_weights_only(f, capsys, monkeypatch, tmp_path):
    """A directory of weights without config.json is compared weights-only (nothing to build or run)."""
    d = variant(f, "configless", drop=("config.json",), files={"evil.py": _evil(f)})
    out = tmp_path / "c"
    rc, _, err = run(["compare", d, f["good"], "--out", out, "--quiet"], capsys, monkeypatch)
    assert rc == 0, err
    rep = json.loads((out / "comparison.json").read_text())
    assert len(rep["blocks"]) == 5  # embeddings + the tiny model's 4 blocks
    assert all(b["weight_drift"] == 0.0 and b["weight_cosine"] == pytest.approx(1.0) for b in rep["blocks"])
    assert all(b["cka"] is None for b in rep["blocks"])  # weights only: no representations
    assert not f["marker"].exists()


@pytest.mark.parametrize("case", ["index_leaving_dir", "corrupt_safetensors"])
def test_configless_bad_weights_refused(f, capsys, monkeypatch, tmp_path, case):
    spec = MODEL_DIRS[case]
    d = variant(f, f"configless_{case}", drop=(*spec.get("drop", ()), "config.json"), files=spec["files"])
    rc, _, err = run(["compare", d, f["good"], "--quiet"], capsys, monkeypatch)
    assert_one_line(rc, err, os.path.basename(d))
