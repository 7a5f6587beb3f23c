"""Model directories as inputs (``io/model_dir.py``, ``io/hf_model.py``): custom code, wrong classes,
configs and weights that disagree, broken config files, through every subcommand.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from hostile import commands_for, assert_one_line, model_variant, run, variant


def _evil(f2):
    return f"open({str(f2['marker'])!r}, 'w').close()\n"


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


#: damage only in the weight files: ``freeze-list`` reads the config alone (names, no weights), so it must work
WEIGHTS_ONLY = ("more_layers_than_weights", "index_leaving_dir", "corrupt_safetensors")
COMMANDS = ("snapshot", "compare_probe", "compare_weights", "freeze_list")


def _model_dir(f2, case):
    spec = MODEL_DIRS[case]
    return variant(f2, case, cfg=spec.get("cfg"), drop=spec.get("drop", ()),
                   files={**spec.get("files", {}), "evil.py": _evil(f2)})


@pytest.mark.parametrize("case, command", [(case, command) for case in sorted(MODEL_DIRS) for command in COMMANDS
                                           if not (command == "freeze_list" and case in WEIGHTS_ONLY)])
def test_model_dir_refused_on_every_path(f2, capsys, monkeypatch, tmp_path, case, command):
    d = _model_dir(f2, case)
    rc, _, err = run(commands_for(f2, d, tmp_path)[command], capsys, monkeypatch)
    assert_one_line(rc, err, os.path.basename(d))
    assert not f2["marker"].exists(), "code from the model directory ran"
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("case, spec, needle", [
    ("missing_tensor", "missing", "parameters but the weight files hold"),
    ("no_tokenizer", dict(drop=("tokenizer.json", "tokenizer_config.json")), "no tokenizer"),
    ("broken_tokenizer", dict(files={"tokenizer.json": "{not json"}), "tokenizer.json"),
    ("vocab_smaller_than_tokenizer", dict(cfg=lambda c: c.update(vocab_size=10)), "another shape"),
    ("truncated_safetensors", "truncated", "not a readable safetensors file"),
])
def test_hf_path_refuses_wrong_models(f2, capsys, monkeypatch, tmp_path, case, spec, needle):

    if spec == "missing":
        d = variant(f2, case)
        sd = load_file(os.path.join(d, "model.safetensors"))
        sd.pop(next(k for k in sd if "layer.2.attention.self.query.weight" in k))
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    elif spec == "truncated":
        d = variant(f2, case)
        data = (f2["good"] / "model.safetensors").read_bytes()
        (f2["root"] / case / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        d = variant(f2, case, cfg=spec.get("cfg"), drop=spec.get("drop", ()), files=spec.get("files"))
    for argv in (commands_for(f2, d, tmp_path)["snapshot"], commands_for(f2, d, tmp_path)["compare_probe"]):
        rc, _, err = run(argv, capsys, monkeypatch)
        assert_one_line(rc, err, needle)


def test_max_length_fits_the_model(f2, capsys, monkeypatch, tmp_path):
    long_probe = tmp_path / "long.txt"
    long_probe.write_text("\n".join(["good movie " * 100] * 3))
    rc, _, err = run(["snapshot", f2["good"], "--probe", long_probe, "-o", tmp_path / "x.pt", "--quiet",
                      "--max-length", "500"], capsys, monkeypatch)
    assert_one_line(rc, err, "past the model's 64 positions")
    rc, out, _ = run(["snapshot", f2["good"], "--probe", long_probe, "-o", tmp_path / "x.pt", "--quiet"],
                     capsys, monkeypatch)
    assert rc == 0 and torch.load(tmp_path / "x.pt", weights_only=True)["meta"]["max_length"] == 64


def test_load_report_never_precedes_the_error(f2, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    d = variant(f2, "vocab_mismatch_report", cfg=lambda c: c.update(vocab_size=10))
    rc, out, err = run(commands_for(f2, d, tmp_path)["snapshot"], capsys, monkeypatch)
    assert_one_line(rc, err)
    assert "LOAD REPORT" not in out + err


def test_configless_shard_dir_compares_weights_only(f2, capsys, monkeypatch, tmp_path):
    """A directory of weights without config.json is compared weights-only (nothing to build or run)."""
    d = variant(f2, "configless", drop=("config.json",), files={"evil.py": _evil(f2)})
    out = tmp_path / "c"
    rc, _, err = run(["compare", d, f2["good"], "--out", out, "--quiet"], capsys, monkeypatch)
    assert rc == 0, err
    rep = json.loads((out / "comparison.json").read_text())
    assert len(rep["blocks"]) == 5  # embeddings + the tiny model's 4 blocks
    assert all(b["weight_drift"] == 0.0 and b["weight_cosine"] == pytest.approx(1.0) for b in rep["blocks"])
    assert all(b["cka"] is None for b in rep["blocks"])  # weights only: no representations
    assert not f2["marker"].exists()


@pytest.mark.parametrize("case", ["index_leaving_dir", "corrupt_safetensors"])
def test_configless_bad_weights_refused(f2, capsys, monkeypatch, tmp_path, case):
    spec = MODEL_DIRS[case]
    d = variant(f2, f"configless_{case}", drop=(*spec.get("drop", ()), "config.json"), files=spec["files"])
    rc, _, err = run(["compare", d, f2["good"], "--quiet"], capsys, monkeypatch)
    assert_one_line(rc, err, os.path.basename(d))


@pytest.mark.parametrize("name, content, needle", [
    ("config.json", b"", "malformed JSON"),
    ("config.json", b'{"model_type": "bert", "hidden_dropout_prob": NaN}', "NaN"),
    ("tokenizer.json", b"[]", "cannot read the tokenizer"),
    ("tokenizer.json", b'{"model": 5}', "cannot read the tokenizer"),
    ("special_tokens_map.json", b"[1", "malformed JSON"),
])
def test_broken_config_and_tokenizer_files(f3, capsys, name, content, needle):
    d = model_variant(f3, f"broken_{name}_{len(content)}", files={name: content})
    rc, _, err = run(["compare", f3["good"], d, "--probe", f3["probe"], "--quiet", "--no-ci"], capsys)
    assert_one_line(rc, err, name, needle)


# ------------------------------------------------------------------ issue 20: config values checked once, at the boundary

CONFIG_VALUES = {  # was: ZeroDivisionError / IndexError tracebacks while counting parameters, or a UserWarning
    "heads_zero": (lambda c: c.update(num_attention_heads=0), "num_attention_heads = 0"),
    "heads_negative": (lambda c: c.update(num_attention_heads=-2), "num_attention_heads = -2"),
    "heads_float": (lambda c: c.update(num_attention_heads=2.0), "num_attention_heads = 2.0"),
    "heads_bool": (lambda c: c.update(num_attention_heads=True), "num_attention_heads = True"),
    "hidden_zero": (lambda c: c.update(hidden_size=0), "hidden_size = 0"),
    "hidden_string": (lambda c: c.update(hidden_size="32"), "hidden_size = '32'"),
    "intermediate_zero": (lambda c: c.update(intermediate_size=0), "intermediate_size = 0"),
    "vocab_zero": (lambda c: c.update(vocab_size=0), "vocab_size = 0"),
    "positions_zero": (lambda c: c.update(max_position_embeddings=0), "max_position_embeddings = 0"),
    "hidden_huge": (lambda c: c.update(hidden_size=1 << 30), "hidden_size = 1073741824"),
    "nested_zero": (lambda c: c.update(text_config={"hidden_size": 0}), "text_config.hidden_size = 0"),
    "kv_heads_zero": (lambda c: c.update(num_key_value_heads=0), "num_key_value_heads = 0"),
    "sub_configs": (lambda c: c.update(sub_configs={"text_config": "x"}), "key 'sub_configs' cannot be set"),
    "sub_configs_list": (lambda c: c.update(sub_configs=[1, 2]), "key 'sub_configs' cannot be set"),
    "read_only_property": (lambda c: c.update(use_return_dict=False), "key 'use_return_dict' cannot be set"),
    "method_name": (lambda c: c.update(to_dict=1), "key 'to_dict' cannot be set"),
    "dunder": (lambda c: c.update(__class__="x"), "key '__class__' cannot be set"),
}


@pytest.mark.parametrize("command", ["snapshot", "compare_probe", "compare_weights", "freeze_list"])
@pytest.mark.parametrize("case", sorted(CONFIG_VALUES))
def test_config_values_refused_in_one_line(f2, capsys, monkeypatch, tmp_path, case, command):
    """Exactly one line (transformers used to print the whole config, 34 lines, for sub_configs)."""
    edit, needle = CONFIG_VALUES[case]
    d = variant(f2, f"cfgval_{case}", cfg=edit)
    rc, _, err = run(commands_for(f2, d, tmp_path)[command], capsys, monkeypatch)
    assert_one_line(rc, err, f"cfgval_{case}/config.json", needle)
    assert not (tmp_path / "x.pt").exists()


def test_config_values_at_the_bounds_are_accepted():
    from layerprobe.io.model_dir import MAX_DIMENSION, MAX_LAYERS, check_config_values

    check_config_values({"hidden_size": 1, "num_attention_heads": MAX_DIMENSION, "num_hidden_layers": 0,
                         "text_config": {"num_hidden_layers": MAX_LAYERS, "hidden_size": None}}, "config.json")


@pytest.mark.parametrize("case", WEIGHTS_ONLY)
def test_freeze_list_reads_the_config_only(f2, capsys, monkeypatch, tmp_path, case):
    # damage confined to the weight files does not concern freeze-list, which builds the model on the meta device
    # from the config: it answers as for the intact directory, and still runs no code from the directory
    good_rc, good_out, _ = run(commands_for(f2, f2["good"], tmp_path)["freeze_list"], capsys, monkeypatch)
    rc, out, err = run(commands_for(f2, _model_dir(f2, case), tmp_path)["freeze_list"], capsys, monkeypatch)
    assert (good_rc, rc, err) == (0, 0, "")
    assert out == good_out and out.strip()
    assert not f2["marker"].exists(), "code from the model directory ran"


def _json_blocks(f2, d, capsys, monkeypatch, probe=True):
    argv = ["compare", f2["good"], d, "--format", "json", "--quiet", *(["--probe", f2["probe"]] if probe else [])]
    rc, out, err = run(argv, capsys, monkeypatch)
    return rc, (json.loads(out)["blocks"] if rc == 0 else None), err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("key, value", [("_attn_implementation", "flash_attention_2"),
                                        ("attn_implementation", "../../evil"),
                                        ("_attn_implementation", "kernels-community/flash-attn")])
def test_unusable_attention_implementation_falls_back_with_one_warning(f2, capsys, monkeypatch, tmp_path, command,
                                                                       key, value):
    """flash_attention_2 without its package was an ImportError traceback on every path; a Hub kernel
    name must never be fetched: the model is built with transformers' default, and one line says so."""
    d = variant(f2, f"attn_{command}_{key}_{value.replace('/', '_')}", cfg=lambda c: c.update({key: value}))
    rc, out, err = run(commands_for(f2, d, tmp_path)[command], capsys, monkeypatch)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 0 and len(lines) == 1, err
    assert lines[0].startswith("layerprobe: warning: ") and repr(value) in lines[0] and "config.json" in lines[0]
    if command == "snapshot":
        assert (tmp_path / "x.pt").exists()


def test_unusable_attention_gives_the_same_result_as_the_default(f2, capsys, monkeypatch):
    d = variant(f2, "attn_same_result", cfg=lambda c: c.update(_attn_implementation="flash_attention_2"))
    rc, blocks, err = _json_blocks(f2, d, capsys, monkeypatch)
    assert rc == 0, err
    assert all(b["cka"] == pytest.approx(1.0) and b["weight_drift"] == 0.0 for b in blocks)
    assert len(blocks) == 5


@pytest.mark.parametrize("command", ["snapshot", "compare_probe", "compare_weights"])
@pytest.mark.parametrize("quant", [{"quant_method": "bitsandbytes", "load_in_8bit": True},
                                   {"quant_method": "gptq", "bits": 4}])
def test_quantized_checkpoint_refused_consistently(f2, capsys, monkeypatch, tmp_path, command, quant):
    """With --probe it was an ImportError traceback (bitsandbytes / optimum); without, exit 0."""
    d = variant(f2, f"quant_{quant['quant_method']}", cfg=lambda c: c.update(quantization_config=quant))
    rc, _, err = run(commands_for(f2, d, tmp_path)[command], capsys, monkeypatch)
    assert_one_line(rc, err, f"quant_{quant['quant_method']}/config.json", "quantized checkpoint",
                    repr(quant["quant_method"]), "not supported")
    assert not (tmp_path / "x.pt").exists()


def _edit_weights(f2, name, edit):
    d = variant(f2, name)
    sd = load_file(os.path.join(d, "model.safetensors"))
    edit(sd)
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    return d


@pytest.mark.parametrize("probe", [False, True])
def test_integer_parameter_refused_not_reported_missing(f2, capsys, monkeypatch, probe):
    """Integer weights were 'parameter keys differ ... only in base' (no probe) or cast silently (probe)."""
    key = "bert.encoder.layer.1.output.dense.weight"
    d = _edit_weights(f2, "int_param", lambda sd: sd.update({key: sd[key].round().to(torch.int32)}))
    rc, _, err = _json_blocks(f2, d, capsys, monkeypatch, probe=probe)
    assert_one_line(rc, err, "int_param/model.safetensors", repr(key), "stored as torch.int32")


@pytest.mark.parametrize("probe", [False, True])
def test_block_weight_the_model_lacks_is_said(f2, capsys, monkeypatch, probe):
    """A stray block tensor was dropped silently (other.unmatched: [], exit 0): now one warning line names it
    (not an error: transformers renames some at load, e.g. a mixture of experts' per-expert weights)."""
    d = _edit_weights(f2, "stray_block", lambda sd: sd.update({"bert.encoder.layer.9.foo.weight": torch.ones(4, 4)}))
    rc, blocks, err = _json_blocks(f2, d, capsys, monkeypatch, probe=probe)
    assert rc == 0 and "Traceback" not in err
    warned = [line for line in err.splitlines() if line.startswith("layerprobe: warning:")]
    assert len(warned) == 1 and "stray_block/model.safetensors" in warned[0]
    assert "'bert.encoder.layer.9.foo.weight'" in warned[0] and "1 block weight(s)" in warned[0]


def test_old_buffers_in_blocks_are_not_stray(f2, capsys, monkeypatch):
    d = _edit_weights(f2, "old_buffers", lambda sd: sd.update(
        {"bert.encoder.layer.0.attention.self.rotary_emb.inv_freq": torch.ones(4)}))
    rc, blocks, err = _json_blocks(f2, d, capsys, monkeypatch, probe=False)
    assert rc == 0, err
    assert all(b["weight_drift"] == 0.0 for b in blocks)


def test_albert_layers_sharing_their_groups_are_not_missing(tmp_path):
    """ALBERT stores num_hidden_groups layer groups for num_hidden_layers layers: 1 group for 3 layers is
    whole (it was refused as 'num_hidden_layers = 3 but the weights hold 1 blocks'); a group missing is not."""
    import json

    import transformers as T

    from layerprobe.errors import LayerProbeError
    from layerprobe.io.model_dir import check_model_dir

    torch.manual_seed(0)
    m = T.AlbertModel(T.AlbertConfig(vocab_size=40, embedding_size=8, hidden_size=16, num_hidden_layers=3,
                                     num_attention_heads=2, intermediate_size=24, num_hidden_groups=1))
    m.save_pretrained(tmp_path / "albert")
    assert check_model_dir(tmp_path / "albert")["num_hidden_layers"] == 3
    cfg_path = tmp_path / "albert" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "num_hidden_groups": 2}))
    with pytest.raises(LayerProbeError, match=r"num_hidden_groups = 2 but the weights hold 1 blocks"):
        check_model_dir(tmp_path / "albert")
