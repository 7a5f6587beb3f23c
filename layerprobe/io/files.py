"""Guards for everything read from disk: regular files only, bounded reads, one model-directory check.

Every function raises a one-line :class:`~layerprobe.errors.LayerProbeError` naming the file.

* :func:`regular_file` refuses FIFOs, devices, sockets and directories (a FIFO would hang a read,
  ``/dev/zero`` would read until memory runs out) and unreadable files ("permission denied", not
  "no such file").
* :func:`read_bounded` / :func:`load_json` read at most a fixed number of bytes; JSON that nests
  too deeply, holds a number with thousands of digits or a lone surrogate is refused.
* :func:`check_model_dir` is the one guard every path that builds a model or config from a user's
  directory goes through, before ``transformers`` sees it: no ``auto_map`` (custom code) in any
  config file, a ``model_type`` that ships with transformers, ``architectures`` naming a model class
  of that type (never ``Trainer``, ``pipeline``, ...), a plausible layer count that matches the
  weights, and a configuration whose parameter count the weight files can hold.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> os.mkfifo(os.path.join(d, "p.csv"))
>>> regular_file(os.path.join(d, "p.csv"), "probe file")
Traceback (most recent call last):
...
layerprobe.errors.LayerProbeError: ...p.csv: probe file is a FIFO (named pipe), expected a regular file
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

from layerprobe.errors import LayerProbeError, one_line

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_LAYERS",
    "check_exists",
    "check_model_dir",
    "json_loads",
    "load_json",
    "max_positions",
    "read_bounded",
    "regular_file",
]

#: largest JSON file read (config, index, comparison, tokenizer config): 64 MiB
MAX_JSON_BYTES = 64 << 20
#: largest layer count a config may claim
MAX_LAYERS = 4096
#: config keys that give a block count
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: config files of a model directory that may ask for custom code
_CONFIG_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "preprocessor_config.json",
                 "processor_config.json", "special_tokens_map.json", "adapter_config.json")

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: str | os.PathLike, what: str = "file") -> int:
    """Check that ``path`` is a readable regular file (symlinks followed); return its size in bytes.

    Raises:
        LayerProbeError: missing, a directory, a FIFO/device/socket, or not readable.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LayerProbeError(f"{what} not found (no such file)", path) from None
    except PermissionError:
        raise LayerProbeError(f"cannot read {what}: permission denied", path) from None
    except OSError as exc:
        raise LayerProbeError(f"cannot read {what} ({one_line(exc.strerror or exc)})", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise LayerProbeError(f"{what} is a directory, expected a regular file", path)
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise LayerProbeError(f"{what} is {kind}, expected a regular file", path)
    if not stat.S_ISREG(st.st_mode):
        raise LayerProbeError(f"{what} is not a regular file", path)
    if not os.access(path, os.R_OK):
        raise LayerProbeError(f"cannot read {what}: permission denied", path)
    return st.st_size


def check_exists(path: str | os.PathLike, what: str = "file", missing: str | None = None) -> os.stat_result:
    """``os.stat(path)`` (symlinks followed), with a one-line reason when it fails.

    ``os.path.exists`` answers False for every failure, so "not found" used to be reported for a
    symlink loop, a dangling link, a name too long for the file system or a parent that is a file.

    Raises:
        LayerProbeError: ``missing`` (default ``"<what> not found"``) for a missing path, else what
            really went wrong.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> os.symlink(os.path.join(d, "b"), os.path.join(d, "a")); os.symlink(os.path.join(d, "a"), os.path.join(d, "b"))
    >>> check_exists(os.path.join(d, "a"), "probe file")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: ...a: probe file is a symbolic link loop (too many levels of symbolic links)
    """
    import errno

    path = os.fspath(path)
    try:
        return os.stat(path)
    except OSError as exc:
        code = exc.errno
    if code == errno.ELOOP:
        raise LayerProbeError(f"{what} is a symbolic link loop (too many levels of symbolic links)", path)
    if code == errno.ENAMETOOLONG:
        raise LayerProbeError(f"{what} name is too long for the file system", path)
    if code == errno.ENOTDIR:
        raise LayerProbeError(f"{what} not found (a parent of the path is a file, not a directory)", path)
    if code in (errno.EACCES, errno.EPERM):
        raise LayerProbeError(f"cannot read {what}: permission denied", path)
    missing = missing or f"{what} not found"
    if code == errno.ENOENT and os.path.islink(path):
        raise LayerProbeError(f"{missing} (a symbolic link to {one_line(repr(os.readlink(path)), 200)}, which does "
                              f"not exist)", path)
    if code == errno.ENOENT:
        raise LayerProbeError(missing, path)
    raise LayerProbeError(f"cannot read {what} ({one_line(os.strerror(code) if code else 'unknown error')})", path)


def unique_keys(path: str | os.PathLike, what: str) -> Any:
    """A ``json.loads`` ``object_pairs_hook`` refusing an object that names a key twice (ambiguous:
    readers disagree on which one counts).

    >>> json.loads('{"a": 1, "a": 2}', object_pairs_hook=unique_keys("h.json", "the header names"))
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: h.json: the header names 'a' twice (ambiguous)
    """
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise LayerProbeError(f"{what} {one_line(repr(k), 80)} twice (ambiguous)", path)
            out[k] = v
        return out

    return hook


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> _ = open(p, "w").write("{}")
    >>> read_bounded(p, 10)
    b'{}'
    """
    path = os.fspath(path)
    size = regular_file(path, what)
    if size > limit:
        raise LayerProbeError(f"{what} is too large ({size:,} bytes; at most {limit:,} are read)", path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise LayerProbeError(f"cannot read {what} ({one_line(exc.strerror or exc)})", path) from None
    if len(data) > limit:
        raise LayerProbeError(f"{what} is too large (more than {limit:,} bytes)", path)
    return data


def _has_lone_surrogate(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_lone_surrogate(v) for v in obj)
    return False


def json_loads(text: str | bytes, path: str | os.PathLike | None = None, what: str = "JSON") -> Any:
    """``json.loads`` that turns every way JSON can go wrong into one line naming the file.

    Refused: invalid UTF-8, malformed JSON, nesting too deep (RecursionError), numbers too long to
    convert, NaN/Infinity literals, and strings holding a lone surrogate (``"\\ud800"``).

    >>> json_loads('{"a": [1, 2]}')
    {'a': [1, 2]}
    >>> json_loads("[" * 100000)
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: malformed JSON: nested too deeply
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LayerProbeError(f"{what} is not UTF-8 text (invalid byte at offset {exc.start})", path) from None

    def _no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise LayerProbeError(f"malformed {what}: nested too deeply", path) from None
    except ValueError as exc:  # JSONDecodeError, and int() past the digit limit
        raise LayerProbeError(f"malformed {what} ({one_line(exc, 120)})", path) from None
    try:
        if _has_lone_surrogate(obj):
            raise LayerProbeError(f"malformed {what}: a string holds a lone surrogate (not valid Unicode)", path)
    except RecursionError:
        raise LayerProbeError(f"malformed {what}: nested too deeply", path) from None
    return obj


def load_json(path: str | os.PathLike, what: str = "JSON file", limit: int = MAX_JSON_BYTES) -> Any:
    """Read and parse a JSON file through :func:`read_bounded` and :func:`json_loads`."""
    return json_loads(read_bounded(path, limit, what), path, "JSON")


# --------------------------------------------------------------------------- model directories


def _count(cfg: dict, key: str, path: str, low: int = 0, high: int = 1 << 31) -> int | None:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise LayerProbeError(f"{key} = {one_line(repr(v), 40)} is not a plausible value "
                              f"(expected an integer in [{low}, {high}])", path)
    return v


def _check_auto_map(path: str) -> None:
    for name in _CONFIG_FILES:
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


def _model_class(cfg: dict, f: str) -> Any:
    """The transformers model class the config names; refuses anything else."""
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


def _weights(path: str) -> tuple[list[str], int]:
    """Parameter names and total element count of the directory's weights (headers only)."""
    from layerprobe.io.checkpoints import open_checkpoint

    with open_checkpoint(path) as src:
        keys = list(src.keys())
        total = 0
        for k in keys:
            total += math.prod(src.shape(k))
        return keys, total


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
    _check_auto_map(path)
    cfg = load_json(f, "config.json")
    cls = _model_class(cfg, f)
    for key in ("hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings", "n_embd",
                "d_model", "num_attention_heads", "n_head", "n_positions"):
        _count(cfg, key, f, 0, 1 << 24)
    claimed = {k: _count(cfg, k, f, 0, MAX_LAYERS) for k in LAYER_KEYS}
    if not weights:
        return cfg
    keys, elements = _weights(path)
    from layerprobe.model.blocks import blocks_from_names

    try:
        found = len(blocks_from_names(keys).blocks)
    except LayerProbeError:
        found = None
    for key, n in claimed.items():
        if n is not None and found and n != found:
            raise LayerProbeError(f"{key} = {n} but the weights hold {found} blocks (a layer missing from the "
                                  f"weights would be initialised at random)", f)
        if n is not None:
            break
    if build:
        n_params = _meta_parameter_count(path, cls)
        if n_params is not None and n_params > elements:
            raise LayerProbeError(f"the configuration implies {n_params:,} parameters but the weight files hold "
                                  f"{elements:,} values (missing weights would be initialised at random)", f)
    return cfg


def _meta_parameter_count(path: str, cls: Any) -> int | None:
    """Parameters of the configured model built on the meta device (no memory), tied weights once."""
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
        with torch.device("meta"):
            model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise LayerProbeError(f"cannot build the configured model: {one_line(exc, 200)}",
                              os.path.join(path, "config.json")) from None
    return sum(p.numel() for p in model.parameters())


def max_positions(model: Any) -> int | None:
    """The longest input the model's position embeddings allow (None when unbounded or unknown)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        return None
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_loading_info(model: Any, info: dict, path: str) -> None:
    """Refuse a loaded model whose block or embedding weights were not all in the files.

    ``info`` is transformers' ``output_loading_info``. Weights of the blocks and embeddings that
    were missing, had another shape (initialised at random) or were left over in the files mean
    the model measured is not the one saved. A missing task head is tolerated (it is never measured
    and snapshots leave it out).
    """
    from layerprobe.model.blocks import find_blocks

    try:
        blocks = find_blocks(model)
    except LayerProbeError:
        return
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()]
    if mismatched:
        raise LayerProbeError(f"{len(mismatched)} weight(s) in the files have another shape than the config "
                              f"implies, e.g. {one_line(str(mismatched[0]), 80)}", path)

    def in_entry(name: str) -> bool:
        return blocks.entry_of(name) is not None

    missing = sorted(k for k in info.get("missing_keys") or () if in_entry(k))
    if missing:
        raise LayerProbeError(f"{len(missing)} block/embedding weight(s) missing from the weight files (would be "
                              f"initialised at random), e.g. {one_line(missing[0], 80)}", path)
    from layerprobe.model.blocks import blocks_from_names

    unexpected = [k for k in info.get("unexpected_keys") or () if not k.endswith(("position_ids", ".bias_k"))]
    try:
        extra = blocks_from_names(unexpected).blocks if unexpected else []
    except LayerProbeError:
        extra = []
    if extra:
        raise LayerProbeError(f"the weight files hold block weights the model does not use, e.g. "
                              f"{one_line(unexpected[0], 80)} (config and weights disagree)", path)


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model", "vocab.model")


def load_tokenizer(path: str, model: Any = None) -> Any:
    """The directory's own tokenizer, or None when it has no tokenizer files.

    Never a stand-in: transformers builds a tokenizer from the config alone when the files are
    missing (every word becomes ``[UNK]``), so a tokenizer is only loaded from a directory that
    holds one of its vocabulary files. Unreadable tokenizer files and a vocabulary larger than the
    model's embedding table (ids past the vocabulary) are refused.
    """
    present = [n for n in _TOKENIZER_FILES if os.path.lexists(os.path.join(path, n))]
    if not present:
        return None
    for n in present:
        regular_file(os.path.join(path, n), "tokenizer file")
    if os.path.lexists(os.path.join(path, "tokenizer.json")):
        load_json(os.path.join(path, "tokenizer.json"), "tokenizer.json")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - tokenizers raise many types (Exception from Rust)
        raise LayerProbeError(f"cannot read the tokenizer ({type(exc).__name__}: {one_line(exc, 150)})",
                              os.path.join(path, present[0])) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if isinstance(tok, bool) or not callable(tok):
        raise LayerProbeError("the tokenizer files do not give a usable tokenizer", path)
    emb = model.get_input_embeddings() if model is not None and hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    if isinstance(rows, int) and len(tok) > rows:
        raise LayerProbeError(f"the tokenizer has {len(tok)} tokens but the model's embedding table has {rows} rows "
                              f"(token ids past the vocabulary)", path)
    return tok


#: the default truncation length (``options.DEFAULT_MAX_LENGTH``); capped to a smaller model silently
_DEFAULT_MAX_LENGTH = 128


def fit_max_length(model: Any, max_length: int) -> int:
    """``max_length`` if the model's positions allow it; the default is capped, anything else refused.

    >>> from transformers import BertConfig, BertModel
    >>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                          intermediate_size=20, vocab_size=50, max_position_embeddings=64))
    >>> fit_max_length(m, 128), fit_max_length(m, 32)
    (64, 32)
    """
    limit = max_positions(model)
    if limit is None or max_length <= limit:
        return max_length
    if max_length == _DEFAULT_MAX_LENGTH:
        return limit
    raise LayerProbeError(f"--max-length {max_length} is past the model's {limit} positions "
                          f"(max_position_embeddings); use --max-length {limit} or less")
