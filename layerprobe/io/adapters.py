"""LoRA / PEFT adapter directories compared with their base model.

``compare(base_dir, adapter_dir)`` (CLI: ``layerprobe compare BASE ADAPTER_DIR``) gives the same
table and JSON as two full models:

* **drift** — each adapted weight is ``W₀ + scale·B·A``; its update norm ``‖scale·B·A‖_F`` is
  :func:`lora_update_norm` (from the r×r Gram matrices, never the full product). Without a probe
  the weights table serves ``W₀ + scale·B·A`` one tensor at a time (the merged model is never
  built), so drift, cosine and update rank per group come out of the usual accumulators;
* **CKA** — with a probe the base model is loaded, the adapter is applied with ``peft`` (an
  optional extra: ``pip install layerprobe[peft]``) and the probe runs through the adapted model.

Adapter weights are read safely: ``adapter_model.safetensors`` with safetensors, an
``adapter_model.bin`` with the weights-only loader; nothing from the directory is executed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import torch

from layerprobe.errors import LayerProbeError, one_line

__all__ = ["ADAPTER_CONFIG", "MAX_PATTERN_CHARS", "MAX_PATTERN_SECONDS", "TASK_CLASSES", "adapter_tensors",
           "base_key_of", "base_mismatch", "base_model_dir", "check_adapter_loaded", "find_key", "is_adapter_dir",
           "load_base_for_adapter", "lora_delta", "lora_update_norm", "pattern_matcher", "pattern_value",
           "peft_config_for", "read_adapter", "read_adapter_parts", "saved_modules_info"]

ADAPTER_CONFIG = "adapter_config.json"
#: longest regular expression an adapter config may hold (``target_modules``/``exclude_modules`` as a
#: string, a key of ``alpha_pattern``/``rank_pattern``); a module path is well under 256 characters
MAX_PATTERN_CHARS = 256
#: time for matching every pattern of one adapter config against the module names, all together
MAX_PATTERN_SECONDS = 2.0
#: most entries in one of the config's name lists or pattern mappings
_MAX_PATTERNS = 4096
#: what peft reads as a regex fragment but layerprobe accepts only as a plain module path
#: (``modules_to_save``, ``layers_pattern``, list items of ``target_modules``/``exclude_modules``)
_PLAIN_NAME = re.compile(r"[\w.\-]{1,256}")


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A directory holding ``adapter_config.json`` (a PEFT adapter, not a full model)."""
    return os.path.isfile(os.path.join(os.fspath(path), ADAPTER_CONFIG))


def lora_update_norm(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> float:
    """``‖scale · B @ A‖_F`` without forming ``B @ A``: ``sqrt(tr((BᵀB)(AAᵀ)))·|scale|``.

    Args:
        a: ``(r, in)`` LoRA A.
        b: ``(out, r)`` LoRA B.
        scale: ``lora_alpha / r`` (or ``/ sqrt(r)`` with rsLoRA).

    >>> a, b = torch.randn(2, 5, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    >>> abs(lora_update_norm(a, b, 0.5) - torch.linalg.norm(0.5 * b @ a).item()) < 1e-12
    True
    """
    a64, b64 = a.detach().double(), b.detach().double()
    val = float(((b64.T @ b64) * (a64 @ a64.T)).sum())
    return abs(scale) * math.sqrt(max(val, 0.0))


def _read_config(path: str) -> dict:
    from layerprobe.io.files import load_json
    from layerprobe.io.model_dir import refuse_auto_map

    f = os.path.join(path, ADAPTER_CONFIG)
    cfg = load_json(f, "adapter config")  # bounded; deep nesting, NaN, bad UTF-8: one line
    if not isinstance(cfg, dict):
        raise LayerProbeError("adapter config is not a JSON object", f)
    refuse_auto_map(path)  # no custom code from the adapter directory either
    for key, integer in (("r", True), ("lora_alpha", False)):
        v = cfg.get(key)
        if v is not None and not _plausible(v, integer):
            raise LayerProbeError(f"{key} = {one_line(repr(v), 40)} is not a plausible value (expected a positive "
                                  f"{'integer' if integer else 'finite number'})", f)
    for key, integer in (("alpha_pattern", False), ("rank_pattern", True)):
        patterns = cfg.get(key)
        if patterns is not None and not (isinstance(patterns, dict)
                                         and all(_plausible(v, integer) for v in patterns.values())):
            raise LayerProbeError(f"{key} must map module names to positive "
                                  f"{'integers' if integer else 'finite numbers'}", f)
        for pattern in patterns or {}:
            _check_regex(pattern, f"{key} key", f)
        if patterns is not None and len(patterns) > _MAX_PATTERNS:
            raise LayerProbeError(f"{key} has {len(patterns):,} entries, more than the {_MAX_PATTERNS:,} accepted", f)
    for key in ("target_modules", "exclude_modules"):
        v = cfg.get(key)
        if isinstance(v, str):
            _check_regex(v, key, f)  # peft: re.fullmatch(v, module name)
        elif v is not None:
            _check_names(v, key, f)  # peft: equal to, or ending in ".<item>"
    for key in ("modules_to_save", "layers_pattern"):
        v = cfg.get(key)
        if v is not None:  # peft builds regexes around these (rf"(^|.*\.){m}($|\..*)")
            _check_names([v] if key == "layers_pattern" and isinstance(v, str) else v, key, f)
    return cfg


def _check_regex(pattern: Any, what: str, f: str) -> None:
    """A regular expression from an adapter config: a string of at most :data:`MAX_PATTERN_CHARS`
    characters that compiles (compiling is bounded by the length; matching is bounded in time by
    :func:`pattern_matcher`)."""
    if not isinstance(pattern, str) or not pattern:
        raise LayerProbeError(f"{what} {one_line(repr(pattern), 60)} is not a regular expression (expected a "
                              "non-empty string)", f)
    if len(pattern) > MAX_PATTERN_CHARS:
        raise LayerProbeError(f"{what} is a regular expression of {len(pattern):,} characters, more than the "
                              f"{MAX_PATTERN_CHARS} accepted", f)
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise LayerProbeError(f"{what} {one_line(repr(pattern), 60)} is not a valid regular expression "
                              f"({one_line(exc, 80)})", f) from None


def _check_names(names: Any, what: str, f: str) -> None:
    if not isinstance(names, list) or len(names) > _MAX_PATTERNS or \
            not all(isinstance(n, str) and _PLAIN_NAME.fullmatch(n) for n in names):
        bad = next((n for n in names if not (isinstance(n, str) and _PLAIN_NAME.fullmatch(n))), names) \
            if isinstance(names, list) else names
        raise LayerProbeError(f"{what} must be a list of at most {_MAX_PATTERNS:,} module names (letters, digits, "
                              f"'_', '.', '-'; at most 256 characters), got {one_line(repr(bad), 60)}", f)


def pattern_matcher(path: str | os.PathLike, seconds: float = MAX_PATTERN_SECONDS) -> Any:
    r"""``match(pattern, name, full)``: peft's matching rule for one adapter's patterns, bounded in time.

    ``full=True`` is peft's rule for a string ``target_modules`` (``re.fullmatch(pattern, name)``);
    ``full=False`` its rule for an ``alpha_pattern``/``rank_pattern`` key
    (``re.match(rf"(.*\.)?({key})$", name)``, ``peft.utils.other.get_pattern_key``). Matching runs on
    the ``regex`` engine with a timeout: all calls of one matcher together get ``seconds``; a pattern
    that backtracks catastrophically is a one-line error naming the config, never minutes of CPU.

    >>> match = pattern_matcher("a")
    >>> match("query", "encoder.layer.0.attention.self.query", False), match("query", "x.query_2", False)
    (True, False)
    >>> match(r".*\.(query|value)", "encoder.layer.0.attention.self.query", True)
    True
    """
    import time

    import regex

    f = os.path.join(os.fspath(path), ADAPTER_CONFIG)
    deadline = time.monotonic() + seconds

    def match(pattern: str, name: str, full: bool) -> bool:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            if full:
                return regex.fullmatch(pattern, name, timeout=left) is not None
            return regex.match(rf"(.*\.)?({pattern})$", name, timeout=left) is not None
        except TimeoutError:
            raise LayerProbeError(f"matching the regular expression {one_line(repr(pattern), 60)} against the "
                                  f"module names takes more than {seconds:g} s (catastrophic backtracking?); "
                                  "use module names or a simpler expression", f) from None
        except (regex.error, RecursionError, OverflowError) as exc:
            raise LayerProbeError(f"{one_line(repr(pattern), 60)} is not a usable regular expression "
                                  f"({one_line(exc, 80)})", f) from None

    return match


def pattern_value(patterns: dict, module: str, default: Any, match: Any) -> Any:
    r"""The value peft gives ``module`` from ``alpha_pattern``/``rank_pattern``: that of the first key
    (in the config's order) whose regex matches the module path, else the default.

    >>> m = pattern_matcher("a")
    >>> pattern_value({r"layer\.[01]\..*query": 16, "query": 8}, "encoder.layer.1.attention.self.query", 4, m)
    16
    >>> pattern_value({"query": 8}, "encoder.layer.1.attention.self.value", 4, m)
    4
    """
    for key in patterns:
        if match(key, module, False):
            return patterns[key]
    return patterns.get(module, default)


def _plausible(v: Any, integer: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        return False
    return math.isfinite(v) and 0 < v < 1 << 31


def adapter_tensors(path: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors, read with the checked loaders (safetensors, or ``.bin`` weights only)."""
    from layerprobe.io.checkpoints import load_pt_or_snapshot

    st = os.path.join(path, "adapter_model.safetensors")
    if os.path.isfile(st):
        from layerprobe.io.checkpoints import SafetensorsSource

        with SafetensorsSource(st) as src:  # the checked reader: a broken file is one line naming it
            return {k: src.get(k) for k in src.keys()}
    binf = os.path.join(path, "adapter_model.bin")
    if os.path.isfile(binf):
        kind, obj = load_pt_or_snapshot(binf)  # weights only
        if kind != "state_dict" or not isinstance(obj, dict):
            raise LayerProbeError("expected adapter weights", binf)
        return dict(obj)
    raise LayerProbeError("no adapter weights (expected adapter_model.safetensors or adapter_model.bin)", path)


def _weights_file(path: str) -> str:
    """The adapter's weights file (safetensors preferred, as :func:`adapter_tensors` reads it)."""
    st = os.path.join(path, "adapter_model.safetensors")
    return st if os.path.isfile(st) else os.path.join(path, "adapter_model.bin")


def _targeted(cfg: dict, module: str, match: Any) -> bool:
    """Whether the config's ``target_modules`` names ``module`` (peft's rule; True when it names none
    to check against: no ``target_modules``, ``"all-linear"``)."""
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        return targets == "all-linear" or match(targets, module, True)
    if isinstance(targets, (list, tuple, set)) and targets:
        return any(module == t or module.endswith("." + t) for t in targets if isinstance(t, str))
    return True


def _strip(key: str) -> str:
    return key[len("base_model.model."):] if key.startswith("base_model.model.") else key


_LORA_PARTS = ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_embedding_A", "A"),
               (".lora_embedding_B", "B"))


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, dict[str, Any]]]:
    """``(adapter config, {module path: {"A", "B", "scale"}})`` of a LoRA adapter directory.

    Module paths are those of the base model (``base_model.model.`` stripped). Other PEFT methods
    and DoRA are refused with a one-line error.
    """
    cfg, modules, _ = read_adapter_parts(os.fspath(path))
    return cfg, modules


def read_adapter_parts(path: str) -> tuple[dict, dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """:func:`read_adapter` plus the adapter's other tensors: ``modules_to_save`` (e.g. a trained
    task head), ``{parameter path: tensor}`` with ``base_model.model.`` stripped."""
    cfg = _read_config(path)
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise LayerProbeError(f"peft_type {cfg.get('peft_type')!r} is not supported (LoRA adapters only)", path)
    if cfg.get("use_dora"):
        raise LayerProbeError("DoRA adapters are not supported (the update is not B·A·scale)", path)
    tensors = adapter_tensors(path)
    r0 = int(cfg.get("r") or 8)  # validated by _read_config; null means the default
    alpha = float(cfg["lora_alpha"] if cfg.get("lora_alpha") is not None else r0)
    alpha_pattern, rslora = cfg.get("alpha_pattern") or {}, bool(cfg.get("use_rslora"))
    match = pattern_matcher(path)
    modules: dict[str, dict[str, Any]] = {}
    saved: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        name = _strip(k)
        for part, slot in _LORA_PARTS:
            if name.endswith(part):
                entry = modules.setdefault(name[: -len(part)], {})
                entry[slot] = t
                entry["embedding"] = "embedding" in part
                break
        else:
            saved[name] = t
    out = {}
    wfile = _weights_file(path)
    f = os.path.join(path, ADAPTER_CONFIG)
    rank_pattern = cfg.get("rank_pattern") or {}
    for m, ab in modules.items():
        if "A" not in ab or "B" not in ab:
            raise LayerProbeError(f"adapter module {m!r} lacks lora_A or lora_B", path)
        a, b = ab["A"], ab["B"]  # A (r, in), B (out, r); embeddings: A (r, vocab), B (dim, r)
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or not a.is_floating_point() \
                or not b.is_floating_point():
            raise LayerProbeError(f"LoRA module {one_line(repr(m), 80)}: lora_A is {list(a.shape)} {a.dtype} and "
                                  f"lora_B {list(b.shape)} {b.dtype}; expected floating-point A (r, in) and B (out, r) "
                                  "of the same rank r", wfile)
        want = pattern_value(rank_pattern, m, r0, match)
        if int(a.shape[0]) != int(want):
            raise LayerProbeError(f"LoRA module {one_line(repr(m), 80)} has rank {int(a.shape[0])} (lora_A "
                                  f"{list(a.shape)}, lora_B {list(b.shape)}) but the config gives r = {want}"
                                  f"{' (rank_pattern)' if want != r0 else ''}; adapter config and weights disagree",
                                  f)
        if not _targeted(cfg, m, match):
            raise LayerProbeError(f"LoRA module {one_line(repr(m), 80)} is in the weights but not in the config's "
                                  f"target_modules ({one_line(repr(cfg.get('target_modules')), 80)}"
                                  f"{', a regular expression matched against the whole module path' if isinstance(cfg.get('target_modules'), str) else ''}"
                                  "); adapter config and weights disagree", f)
        r = int(a.shape[0]) or r0
        al = float(pattern_value(alpha_pattern, m, alpha, match))  # peft's rule: the keys are regexes
        scale = al / math.sqrt(r) if rslora else al / r
        out[m] = {"A": a, "B": b, "scale": scale, "embedding": ab["embedding"]}
    if not out:
        raise LayerProbeError("no LoRA weights (lora_A/lora_B) in the adapter", path)
    return cfg, out, saved


def lora_delta(mod: dict[str, Any], fan_in_fan_out: bool, shape: tuple[int, ...]) -> torch.Tensor:
    """``scale · B @ A`` of one adapted module (float64), laid out as the base weight of ``shape``."""
    d = (mod["B"].double() @ mod["A"].double()) * mod["scale"]
    if mod.get("embedding") or fan_in_fan_out or tuple(d.shape) != tuple(shape):
        d = d.T
    if tuple(d.shape) != tuple(shape):
        raise LayerProbeError(f"LoRA update shape {list(d.shape)} does not fit the base weight {list(shape)}")
    return d


def base_key_of(module: str, keys: Sequence[str]) -> str | None:
    """The base checkpoint key of an adapted module's weight (up to a base-model prefix), or None."""
    target = module + ".weight"
    for k in keys:
        if k == target or k.endswith("." + target) or target.endswith("." + k):
            return k
    return None


def base_model_dir(path: str, cfg: dict, base: Any) -> str:
    """The base model directory: the one given, else ``base_model_name_or_path`` when it is a local directory."""
    if isinstance(base, (str, os.PathLike)) and os.path.isdir(os.fspath(base)):
        return os.fspath(base)
    named = cfg.get("base_model_name_or_path")
    if isinstance(named, str) and named and os.path.isdir(named):
        return named
    raise LayerProbeError("an adapter needs its base model: give the base model directory as the first input "
                          f"(adapter_config names {named!r}, not a local directory)", path)


def base_mismatch(path: str, cfg: dict, base: Any, base_dir: str) -> str | None:
    """A note when the adapter is applied to another base than the one its config names, else None.

    Said when ``base_model_name_or_path`` is an existing local directory other than ``base_dir``
    (the given base), or when the given base is not a directory and the config's base is used
    instead. A hub id (not a local directory) cannot be compared and gives no note.

    >>> import tempfile
    >>> a, b = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> base_mismatch("ad", {"base_model_name_or_path": a}, b, b).startswith("adapter_config.json names base")
    True
    >>> base_mismatch("ad", {"base_model_name_or_path": a}, a, a) is None
    True
    """
    named = cfg.get("base_model_name_or_path")
    if not (isinstance(named, str) and named and os.path.isdir(named)):
        return None
    given = os.fspath(base) if isinstance(base, (str, os.PathLike)) else None
    if os.path.realpath(named) == os.path.realpath(base_dir):
        if given is None or os.path.realpath(given) == os.path.realpath(base_dir):
            return None
        return (f"the given base {one_line(given, 120)} is not a model directory: the adapter is applied to the base "
                f"its adapter_config.json names, {one_line(named, 120)}")
    return (f"adapter_config.json names base {one_line(named, 120)} (an existing directory), but the adapter is "
            f"applied to the given base {one_line(base_dir, 120)}: check that this is the model it was trained on")


#: peft ``task_type`` -> the transformers class the adapter was trained on (its keys carry that
#: class's prefix, e.g. ``bert.`` in ``base_model.model.bert.encoder...`` for sequence classification)
TASK_CLASSES = {"SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification",
                "QUESTION_ANS": "AutoModelForQuestionAnswering", "CAUSAL_LM": "AutoModelForCausalLM",
                "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM", "FEATURE_EXTRACTION": "AutoModel"}


def find_key(name: str, keys: Sequence[str]) -> str | None:
    """The base checkpoint key of an adapter parameter path (either may carry a model prefix)."""
    for k in keys:
        if k == name or k.endswith("." + name) or name.endswith("." + k):
            return k
    return None


def _missing_modules(model: Any, modules: dict, saved: dict) -> list[str]:
    """Adapter module paths (LoRA targets and ``modules_to_save``) that ``model`` does not have."""
    have = {n for n, _ in model.named_modules()}
    wanted = list(modules) + sorted({k.rsplit(".", 1)[0] for k in saved})
    return [m for m in wanted if m not in have]


def load_base_for_adapter(base_dir: str, cfg: dict, modules: dict, saved: dict, path: str, device: str | None,
               dtype: str | None) -> tuple[Any, Any]:
    """The base model in the class the adapter was trained on: as saved, or (when the adapter's
    module paths are not in it) the class of the adapter's ``task_type`` with the adapter's head
    size; a module still missing is an error, since peft would leave it silently unloaded."""
    from layerprobe.io.hf_model import load_hf_model

    model, tok = load_hf_model(base_dir, device=device, dtype=dtype)
    missing = _missing_modules(model, modules, saved)
    task = str(cfg.get("task_type") or "").upper()
    auto = TASK_CLASSES.get(task)
    if missing and auto is not None and auto != "AutoModel":
        extra: dict[str, Any] = {}
        heads = [t for k, t in saved.items() if k.endswith(".weight") and t.dim() == 2]
        if task in ("SEQ_CLS", "TOKEN_CLS") and heads:
            extra["num_labels"] = min(int(t.shape[0]) for t in heads)
        model, tok = load_hf_model(base_dir, device=device, dtype=dtype, auto_class=auto, **extra)
        missing = _missing_modules(model, modules, saved)
    if missing:
        as_what = f"{type(model).__name__}" + (f", loaded for task_type {task}" if auto else "")
        raise LayerProbeError(f"{len(missing)} adapter module(s) are not in the base model ({as_what}), e.g. "
                              f"{one_line(missing[0], 80)}: the adapter was trained on another architecture", path)
    return model, tok


def peft_config_for(path: str, cfg: dict, model: Any, modules: Sequence[str]) -> Any:
    """The adapter's ``LoraConfig`` for peft with every regular expression resolved to module names.

    peft matches a string ``target_modules``/``exclude_modules`` and the keys of
    ``alpha_pattern``/``rank_pattern`` with Python's ``re``, which has no time limit: a pattern
    that backtracks catastrophically ran for minutes. Here they are matched by
    :func:`pattern_matcher` (peft's rule, bounded in time) against ``model``'s module names (the
    patterns against the adapter's ``modules``, the only ones they apply to), and peft receives the
    result: the matched names as a set and the patterns keyed by escaped module paths, so no regex
    from the file reaches ``re``. The adapter applied is the same.
    """
    from peft import LoraConfig

    match = pattern_matcher(path)
    names = [n for n, _ in model.named_modules() if n]
    try:
        config = LoraConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LayerProbeError(f"peft cannot read the adapter config ({one_line(exc, 120)})",
                              os.path.join(path, ADAPTER_CONFIG)) from None
    for key in ("target_modules", "exclude_modules"):
        pattern = cfg.get(key)
        if isinstance(pattern, str):
            matched = {n for n in names if match(pattern, n, True)}
            if key == "target_modules":
                if not matched:
                    raise LayerProbeError(f"target_modules {one_line(repr(pattern), 60)} matches none of the "
                                          f"{len(names):,} modules of the base model ({type(model).__name__})",
                                          os.path.join(path, ADAPTER_CONFIG))
                config.layers_to_transform, config.layers_pattern = None, None  # ignored with a string
            setattr(config, key, matched)
    if getattr(config, "fan_in_fan_out", False):
        found = dict(model.named_modules())
        linear = [m for m in modules if isinstance(found.get(m), torch.nn.Linear)]
        if linear:  # peft turns it off for nn.Linear with a two-line UserWarning per module: one line here
            import warnings

            from layerprobe.errors import LayerProbeWarning

            warnings.warn(f"{os.path.join(path, ADAPTER_CONFIG)}: fan_in_fan_out = true does not apply to the "
                          f"nn.Linear module(s) it adapts (e.g. {one_line(linear[0], 60)}); applied as false, "
                          "as peft does", LayerProbeWarning, stacklevel=2)
            if len(linear) == len(modules):
                config.fan_in_fan_out = False
    for key in ("alpha_pattern", "rank_pattern"):
        patterns = cfg.get(key) or {}
        if patterns:
            default = getattr(config, "lora_alpha" if key == "alpha_pattern" else "r")
            setattr(config, key, {re.escape(n): v for n in modules
                                  if (v := pattern_value(patterns, n, default, match)) != default})
    return config


def check_adapter_loaded(peft_model: Any, path: str, update_norm: float) -> float:
    """Every adapter key loaded (none missing, none left over) and the update the model applies is
    the adapter's own: returns the applied update norm ``sqrt(Σ‖ΔW‖²)``."""
    from peft.utils import get_peft_model_state_dict

    from layerprobe.model.unwrap import lora_layers

    in_file = {_strip(k) for k in adapter_tensors(path)}
    in_model = {_strip(k) for k in get_peft_model_state_dict(peft_model)}
    for what, keys in (("missing from the model", in_file - in_model), ("not in the adapter file", in_model - in_file)):
        if keys:
            raise LayerProbeError(f"{len(keys)} adapter key(s) {what}, e.g. {one_line(sorted(keys)[0], 80)}: "
                                  "the adapter does not fit the base model as loaded", path)
    total = 0.0
    for layer in lora_layers(peft_model).values():
        lay: Any = layer
        for name in lay.active_adapters:
            if name in getattr(lay, "lora_A", {}) or name in getattr(lay, "lora_embedding_A", {}):
                with torch.no_grad():
                    total += float(lay.get_delta_weight(name).double().pow(2).sum())
    applied = math.sqrt(total)
    if not math.isclose(applied, update_norm, rel_tol=1e-3, abs_tol=1e-9):
        raise LayerProbeError(f"the loaded model applies an update of norm {applied:.6g}, the adapter's own is "
                              f"{update_norm:.6g}: the adapter did not load as saved", path)
    return applied


def saved_modules_info(saved: dict[str, torch.Tensor], keys: Sequence[str], get: Any) -> dict[str, dict[str, Any]]:
    """Per ``modules_to_save`` module: parameters, whether the base has it, and its drift there."""
    out: dict[str, dict[str, Any]] = {}
    for name, t in sorted(saved.items()):
        module = name.rsplit(".", 1)[0]
        info = out.setdefault(module, {"n_params": 0, "in_base": True, "_d2": 0.0, "_w2": 0.0})
        info["n_params"] += int(t.numel())
        k = find_key(name, keys)
        if k is None:
            info["in_base"] = False
            continue
        w0 = get(k).double()
        if tuple(w0.shape) != tuple(t.shape):
            raise LayerProbeError(f"adapter tensor {name!r} has shape {list(t.shape)}, the base's {k!r} "
                                  f"{list(w0.shape)}")
        info["_d2"] += float((t.double() - w0).pow(2).sum())
        info["_w2"] += float(w0.pow(2).sum())
    for info in out.values():
        d2, w2 = info.pop("_d2"), info.pop("_w2")
        info["weight_drift"] = (math.sqrt(d2 / w2) if w2 > 0 else None) if info["in_base"] else None
    return out
