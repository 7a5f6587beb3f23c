"""Parameter groups: which part of a block (attention q/k/v/out, feed-forward in/out, norm, bias,
embeddings) a parameter belongs to, from its name alone."""

from __future__ import annotations

import re

__all__ = ["GROUPS", "param_group"]

#: Parameter groups in their reporting order.
GROUPS = (
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.qkv",
    "attn.out",
    "ffn.in",
    "ffn.out",
    "norm",
    "bias",
    "embed.word",
    "embed.position",
    "embed.type",
    "embed.other",
    "other",
)

_Q = {"query", "q_proj", "q_lin", "query_proj", "wq", "q_linear", "to_q", "pos_query_proj"}
_K = {"key", "k_proj", "k_lin", "key_proj", "wk", "k_linear", "to_k", "pos_key_proj"}
_V = {"value", "v_proj", "v_lin", "value_proj", "wv", "v_linear", "to_v"}
_QKV = {"c_attn", "qkv", "query_key_value", "qkv_proj", "wqkv", "in_proj_weight", "in_proj",
        "to_qkv", "w_pack", "qkv_linear"}
_OUT = {"o_proj", "out_lin", "out_proj", "attn_out"}
# Names that mean q/k/v/out only inside an attention module.
_Q_CTX, _K_CTX, _V_CTX = {"q"}, {"k"}, {"v"}
_OUT_CTX = {"o", "wo", "dense", "c_proj", "proj", "out", "to_out", "output"}
_FFN_IN = {"c_fc", "gate_proj", "up_proj", "fc1", "w1", "w3", "wi", "wi_0", "wi_1", "lin1",
           "dense_h_to_4h", "fc_in", "gate_up_proj", "w12"}
_FFN_OUT = {"down_proj", "fc2", "w2", "wo", "lin2", "dense_4h_to_h", "fc_out"}
_FFN_CTX = {"mlp", "ffn", "feed_forward", "feedforward", "densereludense", "intermediate"}
_EMB_WORD = {"word_embeddings", "wte", "embed_tokens", "tok_embeddings", "token_embedding",
             "word_embedding", "shared"}
_EMB_POS = {"position_embeddings", "wpe", "embed_positions", "position_embedding", "pos_embed",
            "pos_embedding", "rel_embeddings", "embed_pos", "distance_embedding",
            "relative_attention_bias"}
_EMB_TYPE = {"token_type_embeddings", "segment_embeddings", "token_type_embedding"}
_EMB_OTHER = {"cls_token", "mask_token", "dist_token", "distillation_token", "patch_embeddings",
              "patch_embed", "register_tokens"}
_WEIGHT_PARAMS = {"weight", "kernel", "w", "scale", "g", "weight_g", "weight_v"}
_LN = re.compile(r"^(ln(\d+|_.*)?|.*_ln)$")


def param_group(name: str) -> str:
    """Classify a parameter name into a group of :data:`GROUPS`.

    Rules, in order: any parameter of a norm layer (a name component containing ``norm`` —
    LayerNorm, layer_norm, layernorm, rmsnorm — or ``ln``, ``ln_1``, ``ln_f``) → ``norm``; any
    other bias → ``bias``; embeddings → ``embed.word`` / ``embed.position`` / ``embed.type`` /
    ``embed.other``; attention projections → ``attn.q/k/v/qkv/out``; feed-forward → ``ffn.in``
    / ``ffn.out``; anything else → ``other``. Works on names relative to a block
    (``attention.self.query.weight``) or full names (``bert.encoder.layer.0....``); covers
    BERT/RoBERTa/ELECTRA, DistilBERT, DeBERTa-v2, GPT-2, Llama, ViT and T5 naming.

    Args:
        name: a parameter name, dot separated.

    >>> param_group("attention.output.dense.weight"), param_group("output.dense.weight")
    ('attn.out', 'ffn.out')
    >>> param_group("attn.c_attn.weight"), param_group("ln_1.bias"), param_group("mlp.c_proj.bias")
    ('attn.qkv', 'norm', 'bias')
    """
    parts = [p.lower() for p in str(name).split(".") if p]
    if not parts:
        return "other"
    if any("norm" in p or _LN.match(p) for p in parts):
        return "norm"
    param = parts[-1]
    if param == "bias" or param.endswith("_bias"):
        return "bias"
    mods = parts[:-1] if param in _WEIGHT_PARAMS else parts
    leaf = mods[-1] if mods else param
    parent = mods[-2] if len(mods) > 1 else ""

    if any(p in _EMB_WORD for p in mods):
        return "embed.word"
    if any(p in _EMB_POS for p in mods):
        return "embed.position"
    if any(p in _EMB_TYPE for p in mods):
        return "embed.type"
    if any(p in _EMB_OTHER or "embed" in p for p in mods):
        return "embed.other"

    in_attn = any("attn" in p or "attention" in p for p in mods)
    if leaf in _Q or (in_attn and leaf in _Q_CTX):
        return "attn.q"
    if leaf in _K or (in_attn and leaf in _K_CTX):
        return "attn.k"
    if leaf in _V or (in_attn and leaf in _V_CTX):
        return "attn.v"
    if leaf in _QKV:
        return "attn.qkv"
    if leaf in _OUT or (in_attn and leaf in _OUT_CTX):
        return "attn.out"
    if in_attn:
        return "other"

    in_ffn = any(p in _FFN_CTX for p in mods)
    if leaf in _FFN_IN or (leaf == "dense" and parent == "intermediate"):
        return "ffn.in"
    if leaf in _FFN_OUT or (leaf == "dense" and parent == "output") or (
        in_ffn and leaf in {"c_proj", "proj", "dense_out"}
    ):
        return "ffn.out"
    return "other"
