"""A Hugging Face model directory, checked before ``transformers`` sees it; its parameters.

* :func:`check_model_dir` is the one guard every path that builds a model or config from a user's
  directory goes through: no ``auto_map`` (custom code) in any config file
  (:func:`refuse_auto_map`), a ``model_type`` that ships with transformers, ``architectures``
  naming a model class of that type (:func:`model_class`, never ``Trainer``, ``pipeline``, ...), a
  plausible layer count that matches the weights, and a configuration whose parameter count the
  weight files can hold (the model built on the meta device by :func:`build_meta_model`).
* Checkpoints carry more than parameters: buffers (``embeddings.position_ids`` in files saved by
  older transformers, GPT-2's causal ``attn.bias``) and, in some files, both names of a tied weight
  (``lm_head.weight`` beside ``wte.weight``). Weight drift is a property of parameters, so
  comparisons align on parameters (:func:`drop_non_parameters`): for a model directory the
  architecture built on the meta device decides (tied aliases dropped); for a bare file (no
  config), integer and bool tensors are dropped (ids and masks, never trained).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from layerprobe.errors import LayerProbeError, LayerProbeWarning, one_line
from layerprobe.io.checkpoints import _hf_weights_file
from layerprobe.io.files import load_json

__all__ = [
    "CONFIG_FILES",
    "DIMENSION_KEYS",
    "LAYER_KEYS",
    "MAX_DIMENSION",
    "MAX_LAYERS",
    "USABLE_ATTENTION",
    "build_meta_model",
    "check_config_values",
    "check_model_dir",
    "drop_non_parameters",
    "model_class",
    "parameter_names_of_dir",
    "refuse_auto_map",
    "sentence_transformer_dir",
    "unusable_attention",
]

#: largest layer count a config may claim
MAX_LAYERS = 4096
#: config keys that give a block count
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: config sizes that must be positive integers (a 0 divides by zero while transformers builds the
#: model or counts its parameters; a vocabulary of 0 leaves no token to embed)
DIMENSION_KEYS = ("hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "n_embd", "n_head", "n_inner", "n_positions", "d_model", "d_ff",
                  "d_kv", "num_heads", "n_heads", "dim", "hidden_dim", "ffn_dim", "encoder_attention_heads",
                  "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim")
#: largest size a config may give for one of :data:`DIMENSION_KEYS`
MAX_DIMENSION = 1 << 24
#: how deep sub-configurations (``text_config``, ``encoder``, ...) are checked
_CONFIG_DEPTH = 4
#: config files of a model directory that may ask for custom code
CONFIG_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "preprocessor_config.json",
                "processor_config.json", "special_tokens_map.json", "adapter_config.json")


def _count(cfg: dict, key: str, path: str, low: int = 0, high: int = 1 << 31, where: str = "") -> int | None:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise LayerProbeError(f"{where}{key} = {one_line(repr(v), 40)} is not a plausible value "
                              f"(expected an integer in [{low}, {high}])", path)
    return v

def check_config_values(cfg: dict, f: str, config_class: Any = None) -> None:
    """The one check of a config's values before transformers builds anything from it.

    Every size in :data:`DIMENSION_KEYS` is an integer in ``[1, MAX_DIMENSION]`` and every layer
    count (:data:`LAYER_KEYS`) one in ``[0, MAX_LAYERS]``, at the top and in nested sub-configs
    (``text_config``, ``encoder``, ...); a bool, a float, a string, 0 or a negative number is
    refused (``num_attention_heads = 0`` was a ZeroDivisionError while counting parameters). With
    ``config_class``, a top-level key that names a read-only property or a method of that class
    (``sub_configs``, ``to_dict``) is refused too: transformers cannot set it and prints the whole
    config (34 lines) to stderr before failing.

    Raises:
        LayerProbeError: one line naming ``f``, the key (with its sub-config path) and the value.

    >>> check_config_values({"hidden_size": 32, "text_config": {"num_attention_heads": 0}}, "config.json")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: config.json: text_config.num_attention_heads = 0 is not a plausible value (expected an integer in [1, 16777216])
    """
    import inspect

    def walk(d: dict, where: str, depth: int) -> None:
        for key in DIMENSION_KEYS:
            _count(d, key, f, 1, MAX_DIMENSION, where)
        for key in LAYER_KEYS:
            _count(d, key, f, 0, MAX_LAYERS, where)
        if depth < _CONFIG_DEPTH:
            for key, value in d.items():
                if isinstance(value, dict):
                    walk(value, f"{where}{key}.", depth + 1)

    walk(cfg, "", 0)
    if config_class is None:
        return
    for key in cfg:
        attr = inspect.getattr_static(config_class, key, None) if isinstance(key, str) else None
        fixed = isinstance(attr, property) and attr.fset is None
        if fixed or key.startswith("__") or (attr is not None and not isinstance(attr, property) and callable(attr)):
            raise LayerProbeError(f"key {one_line(repr(key), 60)} cannot be set in a {config_class.__name__} (it is a "
                                  f"{'read-only property' if fixed else 'method or internal name'} of the class); "
                                  "remove it from config.json", f)


#: attention implementations that need nothing beyond torch; any other one a config asks for (a
#: flash-attention package, a kernel downloaded from the Hub, a name transformers does not know) is
#: replaced by transformers' default for the class (``sdpa`` where supported, else ``eager``)
USABLE_ATTENTION = (None, "eager", "sdpa")
#: ``(config file, implementation)`` already warned about in this process
_ATTENTION_WARNED: set[tuple[str, str]] = set()


def unusable_attention(cfg: dict, f: str) -> str | None:
    """The attention implementation ``config.json`` asks for when it is not one of
    :data:`USABLE_ATTENTION` (then the model is built with transformers' default and one
    :class:`~layerprobe.errors.LayerProbeWarning` line says so), else None.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     unusable_attention({"_attn_implementation": "flash_attention_2"}, "doc/config.json"), len(w)
    ('flash_attention_2', 1)
    >>> unusable_attention({"_attn_implementation": "sdpa"}, "config.json") is None
    True
    """
    import warnings

    from layerprobe.errors import LayerProbeWarning

    def walk(d: dict, depth: int) -> Any:
        for key in ("_attn_implementation", "attn_implementation"):
            v = d.get(key)
            for x in (v.values() if isinstance(v, dict) else [v]):
                if not (x is None or (isinstance(x, str) and x in USABLE_ATTENTION)):
                    return x
        if depth < _CONFIG_DEPTH:
            for value in d.values():
                found = walk(value, depth + 1) if isinstance(value, dict) else None
                if found is not None:
                    return found
        return None

    asked = walk(cfg, 0)
    if asked is None:
        return None
    name = asked if isinstance(asked, str) else repr(asked)
    if (f, name) in _ATTENTION_WARNED:  # the guard, the meta build and the loader all ask: one line per file
        return name
    _ATTENTION_WARNED.add((f, name))
    warnings.warn(f"{f}: attention implementation {one_line(repr(name), 60)} needs more than torch (a flash-attention "
                  "package or a downloaded kernel) or is unknown; the model is built with transformers' default "
                  "(sdpa or eager) instead", LayerProbeWarning, stacklevel=1)  # one place: shown once
    return name


def refuse_auto_map(path: str | os.PathLike) -> None:
    """Refuse a directory whose config files ask for custom Python code (``auto_map``): the one check.

    Every config file a model or adapter directory may hold is read bounded (:func:`load_json`).
    """
    path = os.fspath(path)
    for name in CONFIG_FILES:
        f = os.path.join(path, name)
        if not os.path.lexists(f):
            continue
        cfg = load_json(f, name)
        if name == "config.json" and not isinstance(cfg, dict):
            raise LayerProbeError(f"expected a JSON object, found {type(cfg).__name__}", f)
        if isinstance(cfg, dict) and "auto_map" in cfg:
            raise LayerProbeError(
                "refused: 'auto_map' asks for custom Python code from the model directory "
                "(remote code is never run); use a model whose class ships with transformers", f)

def model_class(cfg: dict, f: str) -> Any:
    """The transformers model class ``config.json`` names (``architectures[0]``), None when it names
    none (then ``AutoModel``); refuses anything else: the one class lookup.

    Only classes shipped with transformers are returned (a name is looked up as an attribute of the
    ``transformers`` package; nothing is imported from the model directory).
    """
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise LayerProbeError("no 'model_type': cannot tell which transformers architecture this is", f)
    if model_type not in CONFIG_MAPPING_NAMES:
        raise LayerProbeError(f"unknown model_type {one_line(repr(model_type), 60)}: not an architecture that "
                              f"ships with transformers {transformers.__version__} (custom code is never run)", f)
    archs = cfg.get("architectures")
    if archs is None:
        return None
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise LayerProbeError("'architectures' must be a list of class names", f)
    for arch in archs[:1]:
        cls = getattr(transformers, arch, None) if arch.isidentifier() else None
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            raise LayerProbeError(f"architectures names {one_line(repr(arch), 60)}, which is not a model class "
                                  f"shipped with transformers", f)
        owned = getattr(getattr(cls, "config_class", None), "model_type", None)
        if owned and owned != model_type:
            raise LayerProbeError(f"architectures names {arch} (a {owned!r} model) but model_type is "
                                  f"{model_type!r}", f)
        return cls
    return None

def _weights(path: str) -> tuple[list[str], int, dict[str, torch.dtype]]:
    """Tensor names, total element count and dtypes of the directory's weights (headers only)."""
    from layerprobe.io.checkpoints import open_checkpoint

    with open_checkpoint(path) as src:
        keys = list(src.keys())
        total = 0
        for k in keys:
            total += math.prod(src.shape(k))
        return keys, total, {k: src.dtype(k) for k in keys}

#: the sentence-transformers module type that holds the Hugging Face model
ST_TRANSFORMER = "sentence_transformers.models.Transformer"


def sentence_transformer_dir(path: str | os.PathLike) -> str | None:
    """The Hugging Face model inside a sentence-transformers directory, or None for any other path.

    A sentence-transformers save has ``modules.json`` listing its modules in order; the
    ``sentence_transformers.models.Transformer`` module's ``path`` (``0_Transformer/``, or ``""``
    when the model sits at the top) holds ``config.json`` and the weights. Pooling and dense layers
    after it are not part of what layerprobe measures (the blocks are in the transformer).

    Raises:
        LayerProbeError: a ``modules.json`` without a transformer module, or one pointing outside.
    """
    from layerprobe.io.files import load_json

    path = os.fspath(path)
    f = os.path.join(path, "modules.json")
    if not (os.path.isdir(path) and os.path.isfile(f)):
        return None
    if os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "0_Transformer")):
        return path  # the transformer saved at the top (sentence-transformers >= 3 may do so)
    modules = load_json(f, "sentence-transformers modules.json")
    entries = modules if isinstance(modules, list) else []
    for m in entries:
        if isinstance(m, dict) and m.get("type") == ST_TRANSFORMER and isinstance(m.get("path", ""), str):
            sub = os.path.normpath(os.path.join(path, m.get("path") or ""))
            if os.path.commonpath([os.path.abspath(sub), os.path.abspath(path)]) != os.path.abspath(path):
                raise LayerProbeError(f"modules.json points outside the directory ({m.get('path')!r})", f)
            return sub
    raise LayerProbeError(f"modules.json lists no {ST_TRANSFORMER} module (the model layerprobe measures)", f)


def check_model_dir(path: str | os.PathLike, *, build: bool = True, weights: bool = True) -> dict:
    """The one guard for a Hugging Face model directory; returns the parsed ``config.json``.

    Run before anything from ``transformers`` reads the directory. Checks, in order: a directory
    with a regular, bounded ``config.json`` holding a JSON object; no ``auto_map`` in any config
    file; a ``model_type`` shipped with transformers and ``architectures`` naming a model class of
    that type; layer count within :data:`MAX_LAYERS` and equal to the blocks in the weights; weights
    that are readable (every safetensors header, index entries inside the directory, ``.bin`` with
    the weights-only loader); and, when ``build``, a configuration whose parameter count (the model
    built on the meta device) the weight files can hold. ``weights=False`` (names only, e.g.
    ``freeze-list``) checks the config alone.

    Raises:
        LayerProbeError: one line naming the offending file.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise LayerProbeError("expected a Hugging Face model directory", path)
    f = os.path.join(path, "config.json")
    if not os.path.lexists(f):
        raise LayerProbeError("no config.json: expected a Hugging Face model directory", path)
    refuse_auto_map(path)
    cfg = load_json(f, "config.json")
    cls = model_class(cfg, f)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    check_config_values(cfg, f, CONFIG_MAPPING[cfg["model_type"]])  # sizes, layer counts, keys it can set
    claimed = {k: _count(cfg, k, f, 0, MAX_LAYERS) for k in LAYER_KEYS}
    if not weights:
        return cfg
    quant = cfg.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        raise LayerProbeError(f"a quantized checkpoint (quantization_config, quant_method {one_line(repr(method), 40)}) "
                              "is not supported: layerprobe compares floating-point weights; dequantize the model and "
                              "save it again (or compare the unquantized original)", f)
    keys, elements, dtypes = _weights(path)
    from layerprobe.model.blocks import blocks_from_names

    try:
        found = len(blocks_from_names(keys).blocks)
    except LayerProbeError:
        found = None
    groups = cfg.get("num_hidden_groups")  # ALBERT: its layers share num_hidden_groups stored groups
    if isinstance(groups, int) and not isinstance(groups, bool) and 1 <= groups <= MAX_LAYERS:
        claimed = {"num_hidden_groups": groups}
    for key, n in claimed.items():
        if n is not None and found and n != found:
            raise LayerProbeError(f"{key} = {n} but the weights hold {found} blocks (a layer missing from the "
                                  f"weights would be initialised at random)", f)
        if n is not None:
            break
    if build:
        meta = build_meta_model(path, cls)
        n_params = sum(p.numel() for p in meta.parameters())  # tied weights once
        names = {n for n, _ in meta.named_parameters()}
        for k in keys:  # transformers would cast integer "weights" to float silently
            if not dtypes[k].is_floating_point and (k in names or _matches(k, names)):
                raise LayerProbeError(f"parameter {one_line(repr(k), 80)} is stored as {dtypes[k]}, expected a "
                                      "floating-point tensor (quantized or broken weights)", _hf_weights_file(path))
        stray = _stray_block_weights(meta, keys, dtypes)
        if stray:  # said, not refused: transformers renames some at load (a mixture of experts' per-expert weights)
            warnings.warn(f"{_hf_weights_file(path)}: the weight files hold {len(stray)} block weight(s) the configured "
                          f"model has under no such name, e.g. {one_line(repr(stray[0]), 80)}: transformers converts "
                          "some at load (per-expert weights into fused ones); any it does not are left out",
                          LayerProbeWarning, stacklevel=2)
        if n_params is not None and n_params > elements:
            raise LayerProbeError(f"the configuration implies {n_params:,} parameters but the weight files hold "
                                  f"{elements:,} values (missing weights would be initialised at random)", f)
    return cfg

#: buffer names that files saved by older transformers hold inside blocks (not parameters, never trained)
_OLD_BUFFERS = (".inv_freq", ".position_ids", ".bias_k", ".masked_bias", ".attn.bias")


def _stray_block_weights(meta: torch.nn.Module, keys: list[str], dtypes: dict[str, torch.dtype]) -> list[str]:
    """Floating-point tensors in the files that sit in the model's block stack (``encoder.layer.<N>.``)
    but are neither a parameter nor a buffer (nor a tied alias) of the configured model."""
    import re

    params = {n for n, _ in meta.named_parameters(remove_duplicate=False)}
    known = params | {n for n, _ in meta.named_buffers(remove_duplicate=False)}
    stacks = {m.group(1) for n in params if (m := re.match(r"(.*?\.)\d+\.", n))}
    tails = {n.split(".", i)[-1] for n in known for i in range(1, n.count(".") + 1)}  # every dotted suffix
    out = []
    for k in keys:
        if not dtypes[k].is_floating_point or k in known or ("." + k).endswith(_OLD_BUFFERS):
            continue
        parts = k.split(".")
        if k in tails or any(".".join(parts[i:]) in known for i in range(1, len(parts))):
            continue  # the same name up to a base-model prefix on either side
        if any(re.match(rf"(?:.*\.)?{re.escape(st)}\d+\.", k) for st in stacks):
            out.append(k)
    return sorted(out)


def build_meta_model(path: str | os.PathLike, cls: Any = None) -> torch.nn.Module:
    """The configured model built on the meta device (no memory, no weights): the one builder.

    ``cls`` is :func:`model_class` of the config (None: ``AutoModel``). Run after
    :func:`check_model_dir` (or :func:`refuse_auto_map`): no remote code is ever trusted.

    Raises:
        LayerProbeError: transformers cannot build the configuration.
    """
    import warnings

    import transformers
    from transformers.utils import logging as hf_logging

    path = os.fspath(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(hf_logging.CRITICAL)  # transformers logs a whole config before some errors
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
        f = os.path.join(path, "config.json")
        if unusable_attention(load_json(f, "config.json"), f) is not None:
            config._attn_implementation = None  # transformers' default for the class (recursively)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Initializing zero-element tensors is a no-op"
            return cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, ArithmeticError,
            IndexError) as exc:
        raise LayerProbeError(f"cannot build the configured model: {one_line(exc, 200)}",
                              os.path.join(path, "config.json")) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _meta_model(directory: str) -> torch.nn.Module | None:
    """The directory's architecture on the meta device, or None (no config, custom code, unknown class)."""
    f = os.path.join(directory, "config.json")
    if not os.path.isfile(f):
        return None
    try:
        refuse_auto_map(directory)  # custom code: never built
        cfg = load_json(f, "config.json")
        cls = model_class(cfg, f)
        check_config_values(cfg, f)  # no size of 0 reaches transformers
        return build_meta_model(directory, cls)
    except Exception:  # noqa: BLE001 - an unknown architecture falls back to the dtype rule
        return None


def parameter_names_of_dir(directory: str | os.PathLike) -> tuple[set[str], set[str]] | None:
    """``(parameter names, buffer and tied-alias names)`` of the directory's architecture, or None.

    Parameter names are those of ``named_parameters()`` (each tied weight once); the second set
    holds every buffer name and every alias of a tied parameter.
    """
    model = _meta_model(os.fspath(directory))
    if model is None:
        return None
    params = {n for n, _ in model.named_parameters()}
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - params
    buffers = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    return params, buffers | aliases


def _matches(key: str, names: Iterable[str]) -> bool:
    """``key`` names one of ``names`` up to a base-model prefix on either side."""
    for n in names:
        if key == n or key.endswith("." + n) or n.endswith("." + key):
            return True
    return False


def drop_non_parameters(keys: list[str], dtypes: dict[str, torch.dtype], directory: str | None) -> tuple[list[str], list[str]]:
    """Split checkpoint keys into ``(parameters, dropped)``.

    With a model directory the architecture decides: a key that names none of its parameters (a
    buffer, a tied alias, a stale tensor) is dropped; integer/bool tensors are dropped always.

    >>> drop_non_parameters(["embeddings.position_ids", "encoder.layer.0.w"],
    ...                     {"embeddings.position_ids": torch.int64, "encoder.layer.0.w": torch.float32}, None)
    (['encoder.layer.0.w'], ['embeddings.position_ids'])
    """
    known = parameter_names_of_dir(directory) if directory else None
    keep, dropped = [], []
    for k in keys:
        if dtypes[k].is_complex:
            raise LayerProbeError(f"tensor {one_line(repr(k), 80)} has complex dtype {dtypes[k]}, expected real "
                                  "floating-point weights", directory)
        if not dtypes[k].is_floating_point:
            if known is not None and (k in known[0] or (k not in known[1] and _matches(k, known[0]))):
                raise LayerProbeError(f"parameter {one_line(repr(k), 80)} is stored as {dtypes[k]}, expected a "
                                      "floating-point tensor (quantized or broken weights)", directory)
            dropped.append(k)
        elif known is not None and k not in known[0] and not _matches(k, known[0]):
            dropped.append(k)
        else:
            keep.append(k)
    return keep, dropped
