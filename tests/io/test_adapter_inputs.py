"""LoRA adapter directories as inputs (``io/adapters.py``): configs, weights, patterns, bases.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from hostile import assert_one_line, run, strict_json


def _adapter(f3, name, cfg=None, files=None):
    d = f3["root"] / f"adapter_{name}"
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
              "base_model_name_or_path": str(f3["good"])}
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
def test_adapter_dirs_refused(f3, capsys, case):
    spec, needle = ADAPTERS[case]
    d = _adapter(f3, case, **spec)
    rc, _, err = run(["compare", f3["good"], d, "--quiet"], capsys)
    assert_one_line(rc, err, f"adapter_{case}", needle)


def test_adapter_with_null_alpha_uses_the_default(f3, capsys):
    ok = strict_json(run(["compare", f3["good"], _adapter(f3, "ok"), "--format", "json", "--quiet"], capsys)[1])
    d = _adapter(f3, "alpha_null", cfg=lambda c: c.update(lora_alpha=None))  # null: alpha = r = 2, scale 1
    rc, out, err = run(["compare", f3["good"], d, "--format", "json", "--quiet"], capsys)
    assert rc == 0, err  # was: TypeError traceback
    drifts = [b["weight_drift"] for b in strict_json(out)["blocks"]]
    assert drifts[1] > 0 and drifts[1] == pytest.approx(ok["blocks"][1]["weight_drift"] / 2, rel=1e-3)  # 2/2 vs 4/2


# ------------------------------------------------------------------ issue 20: patterns are peft's regexes, bounded

PATTERN_CASES = [  # (patterns in config order, module path): the key peft picks, the reference below
    ({"query": 8}, "bert.encoder.layer.1.attention.self.query"),
    ({r"layer\.[01]\..*query": 16, "query": 8}, "bert.encoder.layer.1.attention.self.query"),
    ({r"layer\.[01]\..*query": 16, "query": 8}, "bert.encoder.layer.3.attention.self.query"),
    ({"self.query": 3}, "bert.encoder.layer.0.attention.self.query"),
    ({"elf.query": 3}, "bert.encoder.layer.0.attention.self.query"),  # endswith matched; peft needs a dot before
    ({"query": 3}, "bert.encoder.layer.0.attention.self.query_proj"),
    ({r"layer.\d+.attention.self.(query|value)": 5}, "bert.encoder.layer.11.attention.self.value"),
    ({r"encoder": 5}, "bert.encoder.layer.1.attention.self.query"),
    ({r".*": 2, "query": 9}, "bert.encoder.layer.1.attention.self.query"),
    ({"bert.encoder.layer.1.attention.self.query": 7}, "bert.encoder.layer.1.attention.self.query"),
    ({r"(query|key)$": 7}, "x.key"),
]


@pytest.mark.parametrize("patterns, module", PATTERN_CASES)
def test_pattern_keys_follow_peft(patterns, module):
    """Our reading of alpha_pattern/rank_pattern against peft's own get_pattern_key (independent reference)."""
    pytest.importorskip("peft")
    from peft.utils.other import get_pattern_key

    from layerprobe.io.adapters import pattern_matcher, pattern_value

    expected = patterns.get(get_pattern_key(list(patterns), module), -1)
    assert pattern_value(patterns, module, -1, pattern_matcher("a")) == expected


@pytest.fixture(scope="module")
def pattern_adapter(tmp_path_factory, tokenizer):
    """A real peft adapter whose alpha_pattern/rank_pattern keys are regexes (endswith would miss them)."""
    peft = pytest.importorskip("peft")
    from conftest import tiny_bert

    root = tmp_path_factory.mktemp("lora_patterns")
    base = tiny_bert(0)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False,
                          alpha_pattern={r"layer\.[01]\..*query": 32}, rank_pattern={r"layer\.3\..*value": 4})
    torch.manual_seed(0)
    pm = peft.get_peft_model(tiny_bert(0), cfg)
    pm.save_pretrained(root / "adapter")
    return root / "base", root / "adapter", pm


def test_alpha_and_rank_patterns_scale_as_in_peft(pattern_adapter):
    """was: keys matched with endswith, so layer\\.[01]\\..*query never matched: drift 8x too low there."""
    import math

    import layerprobe as lp
    from layerprobe.io.adapters import read_adapter
    from layerprobe.model.unwrap import lora_layers

    base_dir, adapter_dir, pm = pattern_adapter
    _, modules = read_adapter(adapter_dir)
    layers = {name.replace("base_model.model.", ""): layer for name, layer in lora_layers(pm).items()}
    for name, mod in modules.items():
        layer = next(v for k, v in layers.items() if k.endswith(name))
        assert mod["scale"] == pytest.approx(layer.scaling["default"], rel=1e-12), name
    assert modules["encoder.layer.1.attention.self.query"]["scale"] == 16.0  # 32 / 2
    assert modules["encoder.layer.2.attention.self.query"]["scale"] == 2.0  # 4 / 2
    assert modules["encoder.layer.3.attention.self.value"]["scale"] == 1.0  # 4 / r 4
    c = lp.compare(str(base_dir), str(adapter_dir))
    with torch.no_grad():
        applied = math.sqrt(sum(float(v.get_delta_weight("default").double().pow(2).sum())
                                for v in lora_layers(pm).values()))
    assert c.meta["adapter"]["b"]["update_norm"] == pytest.approx(applied, rel=1e-6)  # peft: float32


def test_pattern_adapter_with_probe_applies_the_same_update(pattern_adapter, texts):
    import layerprobe as lp

    base_dir, adapter_dir, _ = pattern_adapter
    c = lp.compare(str(base_dir), str(adapter_dir), probe=texts[:12], probe_options=lp.ProbeOptions(max_length=16),
                   cka_options=lp.CKAOptions(ci=False))
    info = c.meta["adapter"]["b"]
    assert info["applied_update_norm"] == pytest.approx(info["update_norm"], rel=1e-6)


BACKTRACKING = r"(\w+\.?)+(query)"  # Python's re takes minutes on 'bert.encoder.layer.0.attention.self.key'


def test_backtracking_target_modules_is_bounded(f3, capsys):
    """was: peft ran re.fullmatch(target_modules, name) on every module name for minutes. Now the pattern
    is matched on the regex engine within MAX_PATTERN_SECONDS and peft gets the module names."""
    pytest.importorskip("peft")
    import time

    weights = strict_json(run(["compare", f3["good"], _adapter(f3, "ok"), "--format", "json", "--quiet"], capsys)[1])
    d = _adapter(f3, "backtracking", cfg=lambda c: c.update(target_modules=BACKTRACKING))
    t = time.monotonic()
    rc, out, err = run(["compare", f3["good"], d, "--probe", f3["probe"], "--format", "json", "--quiet", "--no-ci",
                        "--max-length", "16"], capsys)
    assert rc == 0, err
    assert time.monotonic() - t < 60
    doc = strict_json(out)
    assert doc["meta"]["adapter"]["b"]["applied_update_norm"] == pytest.approx(
        weights["meta"]["adapter"]["b"]["update_norm"], rel=1e-6)


def test_pattern_matching_past_its_time_budget_is_one_line():
    from layerprobe.errors import LayerProbeError
    from layerprobe.io.adapters import pattern_matcher

    with pytest.raises(LayerProbeError, match=r"adapter_config.json: matching the regular expression .* takes more "
                                              r"than 0 s \(catastrophic backtracking\?\)"):
        pattern_matcher("ad", seconds=0)(BACKTRACKING, "bert.encoder.layer.0.attention.self.key", True)


PATTERN_CONFIGS = {  # refused when the config is read: weights-only and with a probe alike
    "target_too_long": (lambda c: c.update(target_modules="q" * 257), "257 characters, more than the 256 accepted"),
    "target_invalid": (lambda c: c.update(target_modules="(("), "is not a valid regular expression"),
    "target_empty": (lambda c: c.update(target_modules=""), "is not a regular expression"),
    "exclude_too_long": (lambda c: c.update(exclude_modules="(a|b)*" * 50), "exclude_modules is a regular expression"),
    "alpha_key_too_long": (lambda c: c.update(alpha_pattern={"a" * 300: 8}), "alpha_pattern key is a regular"),
    "alpha_key_invalid": (lambda c: c.update(alpha_pattern={"[": 8}), "not a valid regular expression"),
    "rank_not_int": (lambda c: c.update(rank_pattern={"query": 2.5}), "rank_pattern must map"),
    "rank_list": (lambda c: c.update(rank_pattern=["query"]), "rank_pattern must map"),
    "target_list_regex": (lambda c: c.update(target_modules=["(a+)+$"]), "target_modules must be a list"),
    "modules_to_save_regex": (lambda c: c.update(modules_to_save=["(cl|c)+assifier"]), "modules_to_save must be"),
    "modules_to_save_str": (lambda c: c.update(modules_to_save="classifier"), "modules_to_save must be"),
    "layers_pattern_regex": (lambda c: c.update(layers_pattern="(la|l)+yer"), "layers_pattern must be"),
    "too_many_patterns": (lambda c: c.update(alpha_pattern={f"m{i}": 2 for i in range(4097)}), "4,097 entries"),
}


@pytest.mark.parametrize("probe", [False, True])
@pytest.mark.parametrize("case", sorted(PATTERN_CONFIGS))
def test_adapter_patterns_refused(f3, capsys, case, probe):
    edit, needle = PATTERN_CONFIGS[case]
    d = _adapter(f3, case, cfg=edit)
    argv = ["compare", f3["good"], d, "--quiet"] + (["--probe", f3["probe"], "--max-length", "16"] if probe else [])
    rc, _, err = run(argv, capsys)
    assert_one_line(rc, err, f"adapter_{case}/adapter_config.json", needle)


def test_patterns_at_the_length_limit_are_read(f3, capsys):
    from layerprobe.io.adapters import read_adapter

    key = r"layer\.[01]\..*query|" + "z" * 235  # 256 characters in all
    assert len(key) == 256
    d = _adapter(f3, "at_limit", cfg=lambda c: c.update(alpha_pattern={key: 8}))
    rc, out, err = run(["compare", f3["good"], d, "--format", "json", "--quiet"], capsys)
    assert rc == 0, err
    scales = {m: v["scale"] for m, v in read_adapter(d)[1].items()}
    assert scales["bert.encoder.layer.1.attention.self.query"] == 4.0 and \
        scales["bert.encoder.layer.2.attention.self.query"] == 2.0


# ------------------------------------------------------------------ issue 20: which base the adapter is applied to

def test_adapter_over_another_base_than_its_config_names_is_noted(f3, capsys, tmp_path):
    """was: applied to the given base without a word. Now: a note in meta and notes, one line on stderr."""
    import shutil

    other = tmp_path / "other_base"
    shutil.copytree(f3["good"], other)
    d = _adapter(f3, "ok")  # names f3["good"]
    rc, out, err = run(["compare", other, d, "--format", "json", "--quiet"], capsys)
    assert rc == 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerprobe: warning: ") and str(f3["good"]) in lines[0], err
    doc = strict_json(out)
    note = doc["meta"]["adapter"]["b"]["base_note"]
    assert str(f3["good"]) in note and str(other) in note
    assert any(note in n for n in doc["recommendation"]["notes"])
    rc, out, err = run(["compare", f3["good"], d, "--format", "json", "--quiet"], capsys)  # its own base: silent
    assert rc == 0 and err == "" and "base_note" not in strict_json(out)["meta"]["adapter"]["b"]
    rc, out, err = run(["compare", f3["good"] / "model.safetensors", d, "--quiet"], capsys)  # a file: config's base
    assert rc == 0 and "is not a model directory: the adapter is applied to the base" in err
    assert "is not a model directory" in out  # the table's notes


def test_base_named_only_in_the_adapter_config_passes_the_model_dir_checks(f3, capsys, tmp_path):
    """was: the config's base was read with no model-directory checks (auto_map, config values)."""
    import shutil

    import layerprobe as lp
    from layerprobe.errors import LayerProbeError

    for name, edit, needle in (("evil_base", lambda c: c.update(auto_map={"AutoModel": "evil.M"}), "auto_map"),
                               ("zero_heads", lambda c: c.update(num_attention_heads=0), "num_attention_heads = 0"),
                               ("layers_off", lambda c: c.update(num_hidden_layers=3), "num_hidden_layers = 3")):
        base = tmp_path / name
        shutil.copytree(f3["good"], base)
        cfg = json.loads((base / "config.json").read_text())
        edit(cfg)
        (base / "config.json").write_text(json.dumps(cfg))
        d = _adapter(f3, f"named_{name}", cfg=lambda c, b=base: c.update(base_model_name_or_path=str(b)))
        for probe in ([], ["--probe", f3["probe"], "--max-length", "16"]):
            rc, _, err = run(["compare", f3["snap"], d, "--quiet", *probe], capsys)
            assert_one_line(rc, err, f"{name}/config.json", needle)
        with pytest.raises(LayerProbeError, match=needle):
            lp.compare(f3["a"], str(d))


def _reshaped(f3, name, key_part, shape):
    d = _adapter(f3, name)
    from safetensors.torch import load_file

    sd = load_file(str(d / "adapter_model.safetensors"))
    key = next(k for k in sd if key_part in k)
    sd[key] = 0.02 * torch.ones(shape)
    save_file(sd, str(d / "adapter_model.safetensors"))
    return d


@pytest.mark.parametrize("probe", [False, True])
def test_lora_a_and_b_of_different_ranks_name_the_file_module_and_shapes(f3, capsys, probe):
    """A lora_A of rank 3 beside a lora_B of rank 2 was a size-mismatch RuntimeError traceback."""
    d = _reshaped(f3, "w_shape", "layer.1.attention.self.query.lora_A", (3, 32))
    rc, _, err = run(["compare", f3["good"], d, "--quiet", *(["--probe", f3["probe"]] if probe else [])], capsys)
    assert_one_line(rc, err, "adapter_w_shape/adapter_model.safetensors",
                    "'bert.encoder.layer.1.attention.self.query'", "lora_A is [3, 32]", "lora_B [32, 2]")


@pytest.mark.parametrize("probe", [False, True])
@pytest.mark.parametrize("case, cfg, needle", [
    ("r_mismatch", lambda c: c.update(r=8), "has rank 2 (lora_A [2, 32], lora_B [32, 2]) but the config gives r = 8"),
    ("rank_pattern_mismatch", lambda c: c.update(rank_pattern={"layer.2.attention.self.query": 4}),
     "bert.encoder.layer.2.attention.self.query' has rank 2"),
    ("targets_other", lambda c: c.update(target_modules=["value"]), "not in the config's target_modules (['value']"),
    ("targets_regex_other", lambda c: c.update(target_modules="query"), "a regular expression matched against"),
])
def test_adapter_config_and_weights_that_disagree(f3, capsys, case, cfg, needle, probe):
    """r = 8 over rank-2 tensors ran with exit 0 (and with --probe was cut to 'Error(s) in loading ...')."""
    d = _adapter(f3, case, cfg=cfg)
    rc, _, err = run(["compare", f3["good"], d, "--quiet", *(["--probe", f3["probe"]] if probe else [])], capsys)
    assert_one_line(rc, err, f"adapter_{case}/adapter_config.json", needle)


def test_rank_pattern_that_agrees_is_accepted(f3, capsys):
    d = _adapter(f3, "rank_pattern_ok", cfg=lambda c: c.update(r=8, rank_pattern={"query": 2}))
    rc, out, err = run(["compare", f3["good"], d, "--quiet", "--format", "json"], capsys)
    assert rc == 0, err
    assert strict_json(out)["meta"]["inputs"]["b"].endswith("adapter_rank_pattern_ok")


def test_fan_in_fan_out_on_linear_is_one_warning_line(f3, capsys):
    """peft's two-line UserWarning per module leaked to stderr on success."""
    d = _adapter(f3, "fan_in_fan_out", cfg=lambda c: c.update(fan_in_fan_out=True))
    ref = _adapter(f3, "fan_ref")
    rc, out, err = run(["compare", f3["good"], d, "--probe", f3["probe"], "--quiet", "--format", "json"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 0 and len(lines) == 1 and lines[0].startswith("layerprobe: warning: ") and "fan_in_fan_out" in lines[0]
    rc2, out2, err2 = run(["compare", f3["good"], ref, "--probe", f3["probe"], "--quiet", "--format", "json"], capsys)
    assert rc2 == 0, err2
    assert [b["cka"] for b in strict_json(out)["blocks"]] == [b["cka"] for b in strict_json(out2)["blocks"]]
