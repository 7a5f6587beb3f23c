"""Find the embedding layer and the ordered stack of repeated blocks of a transformer.

The rule is generic, not a per-architecture table:

* **The block stack** is the ``nn.ModuleList`` whose children all share one class and that holds
  the most parameters (``bert.encoder.layer``, ``transformer.h``, ``model.layers``, ...).
* **The embeddings** are the highest ancestor of ``model.get_input_embeddings()`` that does not
  contain the block stack (``bert.embeddings``; for GPT-2 just ``transformer.wte``), plus every
  other module outside the stack that is an ``nn.Embedding`` or has "embed" in its name
  (GPT-2's ``wpe``, ELECTRA's ``embeddings_project``, DeBERTa's ``rel_embeddings``).
* Everything else (final norm, pooler, task head) is ``"other"``.

Entries are named architecture-independently: ``"embeddings"``, ``"block.0"``, ``"block.1"``, ...
The same names are used by compare, the JSON output, the trajectory CSV and ``freeze``.

Parameter names are made *canonical* by stripping the model's ``base_model_prefix``
(``bert.``, ``transformer.``, ...), so a bare ``BertModel`` and a ``BertForSequenceClassification``
agree on every name inside the blocks.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from layerprobe.errors import LayerProbeError

__all__ = ["EMBEDDINGS", "OTHER", "BlockRef", "Blocks", "block_modules", "blocks_from_names", "find_blocks",
           "find_stack"]

EMBEDDINGS = "embeddings"
OTHER = "other"


@dataclass(frozen=True)
class BlockRef:
    """One entry of the stack: the embeddings or one repeated block.

    Attributes:
        name: ``"embeddings"`` or ``"block.<i>"``.
        kind: ``"embeddings"`` or ``"block"``.
        index: ``-1`` for the embeddings, else the block's position in the stack.
        modules: canonical module paths whose parameters belong to this entry.
    """

    name: str
    kind: str
    index: int
    modules: tuple[str, ...]

    def owns(self, canonical_param: str) -> bool:
        return any(canonical_param == m or canonical_param.startswith(m + ".") for m in self.modules)

    def relative(self, canonical_param: str) -> str:
        """Name of a parameter relative to this entry (shared by every model of the family)."""
        if self.kind == "block":
            return canonical_param[len(self.modules[0]) + 1 :]
        return canonical_param


@dataclass(frozen=True)
class Blocks:
    """The result of :func:`find_blocks`: embeddings first, then the blocks in order.

    Attributes:
        entries: embeddings entry (if any) then one entry per block.
        stack: canonical path of the block stack, e.g. ``"encoder.layer"``.
        prefix: the model's base-model prefix stripped from parameter names ("" if none).
    """

    entries: tuple[BlockRef, ...]
    stack: str
    prefix: str = ""

    def __iter__(self) -> Iterator[BlockRef]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def blocks(self) -> list[BlockRef]:
        return [e for e in self.entries if e.kind == "block"]

    def __getitem__(self, name: str) -> BlockRef:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"no entry {name!r}; entries are {self.names}")

    def canonical(self, param_name: str) -> str:
        if self.prefix and param_name.startswith(self.prefix + "."):
            return param_name[len(self.prefix) + 1 :]
        return param_name

    def entry_of(self, param_name: str) -> BlockRef | None:
        """The entry owning a (full or canonical) parameter name, or None for "other"."""
        c = self.canonical(param_name)
        for e in self.entries:
            if e.owns(c):
                return e
        return None

    def group(self, param_names: Iterable[str]) -> dict[str, list[str]]:
        """Assign parameter names to entries; returns ``{entry name or "other": [names]}``.

        Every entry appears (possibly with an empty list) followed by ``"other"``.
        """
        out: dict[str, list[str]] = {e.name: [] for e in self.entries}
        out[OTHER] = []
        for p in param_names:
            e = self.entry_of(p)
            out[e.name if e else OTHER].append(p)
        return out


def _match_modules(paths: Iterable[str], pattern: str) -> list[str]:
    """Module paths matching a glob (``encoder.layer.*``); if the glob matches none, a regex."""
    paths = [p for p in paths if p]
    hits = [p for p in paths if fnmatch.fnmatchcase(p, pattern)]
    if not hits:
        try:
            hits = [p for p in paths if re.fullmatch(pattern, p)]
        except re.error:
            hits = []
    return hits


def _is_embedding_like(path: str, module: nn.Module | None) -> bool:
    last = path.rsplit(".", 1)[-1].lower()
    return isinstance(module, nn.Embedding) or "embed" in last or last in {"wte", "wpe"}


def _side_path(model: nn.Module, side: str) -> str | None:
    """The module path of an encoder-decoder model's ``side`` ("encoder" or "decoder"; None for any other model)."""
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return None
    get = getattr(model, f"get_{side}", None)
    try:
        mod = get() if callable(get) else None
    except (AttributeError, NotImplementedError, TypeError):
        return None
    if not isinstance(mod, nn.Module) or mod is model:
        return None
    return next((p for p, m in model.named_modules() if m is mod), None)


def find_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The largest ``nn.ModuleList`` of the model (the block stack) and its module path.

    In an encoder-decoder model (``config.is_encoder_decoder``) the stack is the encoder's: the bottom of
    the model, which the decoder reads (its own stack, with cross-attention, is usually the larger one)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    enc = _side_path(model, "encoder")
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if enc and not path.startswith(enc + "."):
            continue
        if len({type(c) for c in mod}) != 1:
            continue
        n = sum(p.numel() for p in mod.parameters())
        if n and (best is None or n > best[0]):
            best = (n, path, mod)
    if best is None:
        raise LayerProbeError(
            f"{type(model).__name__}: no repeated block stack found "
            "(no nn.ModuleList of same-class modules); pass blocks='<pattern>'"
        )
    return best[1], best[2]


def find_blocks(
    model: nn.Module,
    blocks: str | None = None,
    embeddings: str | Sequence[str] | None = None,
) -> Blocks:
    """Find the embeddings and the ordered block stack of any Hugging Face transformer.

    Args:
        model: the model (bare or with a task head).
        blocks: optional override, a glob or regex over module paths matching every block, e.g.
            ``"encoder.layer.*"``; matched modules are ordered by their numeric suffix, and each is
            named by it (``encoder.layer.3`` is ``block.3`` whatever else matched).
        embeddings: optional override, module path pattern(s) of the embedding stage; ``""``
            means "no embeddings entry".

    Returns:
        :class:`Blocks` with canonical names (base-model prefix stripped).

    >>> from transformers import BertConfig, BertModel
    >>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                          intermediate_size=20, vocab_size=50))
    >>> b = find_blocks(m)
    >>> b.names, b.stack
    (['embeddings', 'block.0', 'block.1'], 'encoder.layer')
    """
    named = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and not any(p.startswith(prefix + ".") for p in named):
        prefix = ""  # a bare base model: its names carry no prefix

    def canon(path: str) -> str:
        return path[len(prefix) + 1 :] if prefix and path.startswith(prefix + ".") else path

    if blocks is not None:
        matched = _match_modules(named, blocks)
        matched = [p for p in matched if not any(q != p and p.startswith(q + ".") for q in matched)]
        if not matched:
            raise LayerProbeError(f"block pattern {blocks!r} matches no module of {type(model).__name__}")

        def order(p: str) -> tuple[int, str]:
            m = re.search(r"(\d+)$", p)
            return (int(m.group(1)) if m else 0, p)

        block_paths = sorted(matched, key=order)
        stack_path = block_paths[0].rsplit(".", 1)[0] if "." in block_paths[0] else ""
    else:
        stack_path, stack = find_stack(model)
        block_paths = [f"{stack_path}.{i}" for i in range(len(stack))]

    def in_blocks(path: str) -> bool:
        return any(path == b or path.startswith(b + ".") for b in block_paths)

    def contains_blocks(path: str) -> bool:
        return path == "" or any(b.startswith(path + ".") for b in block_paths)

    if embeddings is not None:
        pats = [embeddings] if isinstance(embeddings, str) else list(embeddings)
        emb_paths = []
        for pat in pats:
            if not pat:  # "" means no embeddings entry
                continue
            hits = _match_modules(named, pat)
            if not hits:  # like a block pattern: never a silently missing entry
                raise LayerProbeError(f"embeddings pattern {pat!r} matches no module of {type(model).__name__} "
                                      f"(use '' for no embeddings entry)")
            emb_paths.extend(hits)
    else:
        emb_paths = []
        get_emb = getattr(model, "get_input_embeddings", None)
        emb = None
        try:
            emb = get_emb() if get_emb else None
        except (NotImplementedError, AttributeError):
            emb = None
        emb_path = next((p for p, m in named.items() if m is emb), None) if emb is not None else None
        if emb_path:
            top = emb_path
            while "." in top and not contains_blocks(top.rsplit(".", 1)[0]):
                top = top.rsplit(".", 1)[0]
            emb_paths.append(top)
        dec = _side_path(model, "decoder")
        dec = None if dec is not None and contains_blocks(dec) else dec
        for p, m in named.items():
            if not p or in_blocks(p) or contains_blocks(p):
                continue
            if dec and (p == dec or p.startswith(dec + ".")):
                continue  # blocks in the encoder: the decoder's own embeddings (positions) belong to the decoder
            if any(p == e or p.startswith(e + ".") for e in emb_paths):
                continue
            if _is_embedding_like(p, m) and any(True for _ in m.parameters(recurse=True)):
                emb_paths.append(p)
    # keep only outermost embedding paths, in model order
    emb_paths = [p for p in emb_paths if not any(q != p and p.startswith(q + ".") for q in emb_paths)]
    position = {p: i for i, p in enumerate(named)}
    emb_paths.sort(key=lambda p: position.get(p, 0))

    entries: list[BlockRef] = []
    if emb_paths:
        entries.append(BlockRef(EMBEDDINGS, "embeddings", -1, tuple(canon(p) for p in emb_paths)))
    # a block keeps the model's own layer index (an override matching encoder.layer.3-5 gives block.3,
    # block.4, block.5), so names agree with the default discovery and freeze(model, ["block.3"])
    own = [re.search(r"(\d+)$", p) for p in block_paths]
    indices = [int(m.group(1)) for m in own if m] if all(own) else list(range(len(block_paths)))
    if len(set(indices)) != len(indices):  # e.g. blocks from two stacks with the same numbers
        indices = list(range(len(block_paths)))
    for i, p in zip(indices, block_paths):
        entries.append(BlockRef(f"block.{i}", "block", i, (canon(p),)))
    return Blocks(tuple(entries), canon(stack_path), prefix)


def blocks_from_names(param_names: Sequence[str]) -> Blocks:
    """Infer the entries from parameter names alone (a state dict without a model or config).

    The stack is the ``<path>.<i>.`` prefix holding the most parameters with indices 0..N-1 (an
    encoder-decoder's encoder stack when names have both an ``encoder`` and a ``decoder`` component);
    the embeddings are parameters outside it whose path has a component containing "embed"
    (or GPT-2's ``wte``/``wpe``). A leading component shared by every name that also contains
    the stack (``bert.``, ``model.``, ...) is treated as the base-model prefix.

    >>> b = blocks_from_names(["bert.embeddings.word_embeddings.weight",
    ...     "bert.encoder.layer.0.output.dense.weight", "bert.encoder.layer.1.output.dense.weight",
    ...     "classifier.weight"])
    >>> b.names, b.stack, b.prefix
    (['embeddings', 'block.0', 'block.1'], 'encoder.layer', 'bert')
    """
    counts: dict[str, dict[int, int]] = {}
    for n in param_names:
        for m in re.finditer(r"\.(\d+)\.", n):
            path = n[: m.start()]
            counts.setdefault(path, {}).setdefault(int(m.group(1)), 0)
            counts[path][int(m.group(1))] += 1
    # an encoder-decoder's names: the encoder's stack, as find_blocks takes it from the model
    sides = {part for path in counts for part in path.split(".")}
    two_sided = "encoder" in sides and "decoder" in sides
    best = None
    for path, idx in counts.items():
        if sorted(idx) != list(range(len(idx))):
            continue
        if two_sided and "decoder" in path.split("."):
            continue
        total = sum(idx.values())
        if best is None or total > best[0]:
            best = (total, path, len(idx))
    if best is None:
        raise LayerProbeError("no repeated block stack found in parameter names (expected '<path>.<i>.<param>')")
    _, stack, n_blocks = best
    # A leading component is the base-model prefix when it wraps both the stack and the
    # embeddings (``bert.encoder.layer`` and ``bert.embeddings``), not when only the stack sits
    # under it (bare DistilBERT's ``transformer.layer`` beside ``embeddings``).
    prefix = ""
    if "." in stack:
        first = stack.split(".", 1)[0]
        embed = [n for n in param_names
                 if not n.startswith(stack + ".") and any(_is_embedding_like(c, None) for c in n.split(".")[:-1])]
        if embed and all(n.startswith(first + ".") for n in embed):
            prefix = first

    def canon(n: str) -> str:
        return n[len(prefix) + 1 :] if prefix and n.startswith(prefix + ".") else n

    cstack = canon(stack)
    emb_modules: list[str] = []
    for n in param_names:
        c = canon(n)
        if c.startswith(cstack + ".") or (two_sided and "decoder" in c.split(".")[:-1]):
            continue  # (the decoder's own embeddings belong to the decoder)
        parts = c.split(".")[:-1]
        for k, part in enumerate(parts):
            low = part.lower()
            if "embed" in low or low in {"wte", "wpe", "shared"}:  # BART/T5: "shared", the token embedding
                mod = ".".join(parts[: k + 1])
                if mod not in emb_modules:
                    emb_modules.append(mod)
                break
    emb_modules = [p for p in emb_modules if not any(q != p and p.startswith(q + ".") for q in emb_modules)]
    entries: list[BlockRef] = []
    if emb_modules:
        entries.append(BlockRef(EMBEDDINGS, "embeddings", -1, tuple(emb_modules)))
    entries += [BlockRef(f"block.{i}", "block", i, (f"{cstack}.{i}",)) for i in range(n_blocks)]
    return Blocks(tuple(entries), cstack, prefix)


def block_modules(model: nn.Module, blocks: Blocks) -> dict[str, list[nn.Module]]:
    """Map each entry name to its live modules in ``model``."""
    named = dict(model.named_modules())
    out: dict[str, list[nn.Module]] = {}
    for e in blocks:
        mods = []
        for c in e.modules:
            full = f"{blocks.prefix}.{c}" if blocks.prefix and f"{blocks.prefix}.{c}" in named else c
            if full not in named:
                raise LayerProbeError(f"module {full!r} of entry {e.name!r} not found in {type(model).__name__}")
            mods.append(named[full])
        out[e.name] = mods
    return out
