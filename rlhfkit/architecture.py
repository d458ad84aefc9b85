"""Architecture arithmetic of decoder-only transformers: pure functions over a ``config.json``-like dict.

Parameter counts, layer shapes, KV-cache sizes and LoRA parameter counts, computed from the numbers alone (no
torch, no transformers, nothing from rlhfkit), so the memory planner can size a 670B model offline and tests
can check every number against an instantiation.  What is generic lives here: Llama-style attention and MLPs,
multi-head latent attention (read from the ``kv_lora_rank`` keys MiniCPM3 and DeepseekV2/V3 share) and
mixture-of-experts layers described by a :class:`MoeLayout`.  What one family does its own way (fused
projections, where its experts sit, a router bias) is passed in by that family's adapter
(``ModelAdapter.architecture_numbers`` overrides in the model plugins), so no family is named here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MoeLayout:
    """The mixture-of-experts layers of a model, as its family reads them from its own config keys."""

    routed_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    layers: tuple[int, ...]
    """Indices of the decoder layers whose MLP is the MoE block (the others are dense)."""
    shared_experts: int = 0
    """Experts every token goes through, held as one MLP of ``shared_experts x expert_intermediate_size``."""
    router_bias: bool = False
    """The router carries one bias per routed expert (DeepSeek-V3's score-correction bias)."""


@dataclass(frozen=True)
class Attention:
    """One attention block: parameters, linear layers ``(name, in, out)``, and the shapes the KV cache needs."""

    parameters: int
    linears: list
    head_dim: int
    v_head_dim: int
    kv_heads: int
    kv_elements: int
    """K and V elements cached per token in one layer, as transformers caches them."""


def get(config: dict, key: str, default=None):
    """``config[key]``, with ``default`` for a missing key or an explicit ``None``."""
    value = config.get(key)
    return default if value is None else value


def dense_attention(c: dict, qkv_bias: bool = False, fused_qkv: bool = False) -> Attention:
    """Multi-head/grouped-query attention with separate (or one fused ``qkv_proj``) projections."""
    H, nh = int(c["hidden_size"]), int(c["num_attention_heads"])
    nkv = int(get(c, "num_key_value_heads", nh))
    hd = int(get(c, "head_dim", H // nh))
    params = H * nh * hd + 2 * H * nkv * hd + nh * hd * H
    if get(c, "attention_bias", False):
        params += nh * hd + 2 * nkv * hd + H
    elif qkv_bias:
        params += nh * hd + 2 * nkv * hd
    if fused_qkv:
        linears = [("qkv_proj", H, nh * hd + 2 * nkv * hd), ("o_proj", nh * hd, H)]
    else:
        linears = [("q_proj", H, nh * hd), ("k_proj", H, nkv * hd), ("v_proj", H, nkv * hd), ("o_proj", nh * hd, H)]
    return Attention(params, linears, hd, hd, nkv, 2 * nkv * hd)


def latent_attention(c: dict) -> Attention:
    """Multi-head latent attention: low-rank q (optional) and kv projections, a decoupled rotary part."""
    H, nh = int(c["hidden_size"]), int(c["num_attention_heads"])
    q_rank = get(c, "q_lora_rank", 0) or 0
    kv_rank = int(c["kv_lora_rank"])
    nope, rope, v_dim = int(c["qk_nope_head_dim"]), int(c["qk_rope_head_dim"]), int(c["v_head_dim"])
    qk_dim = nope + rope
    b = 1 if get(c, "attention_bias", False) else 0
    if q_rank:  # down-projection, its norm, up-projection
        params = H * q_rank + b * q_rank + q_rank + q_rank * nh * qk_dim
        linears = [("q_a_proj", H, q_rank), ("q_b_proj", q_rank, nh * qk_dim)]
    else:
        params = H * nh * qk_dim
        linears = [("q_proj", H, nh * qk_dim)]
    params += H * (kv_rank + rope) + b * (kv_rank + rope) + kv_rank + kv_rank * nh * (nope + v_dim)
    params += nh * v_dim * H + b * H
    linears += [("kv_a_proj_with_mqa", H, kv_rank + rope), ("kv_b_proj", kv_rank, nh * (nope + v_dim)),
                ("o_proj", nh * v_dim, H)]
    # transformers caches the decompressed per-head K (nope + rope) and V, not the latent
    return Attention(params, linears, qk_dim, v_dim, nh, nh * (qk_dim + v_dim))


def mlp_parameters(hidden: int, inter: int, bias: bool) -> int:
    """A gated MLP (gate, up, down)."""
    return 3 * hidden * inter + (2 * inter + hidden if bias else 0)


def mlp_linears(hidden: int, inter: int, count: int, fused_gate_up: bool = False) -> list:
    """``(name, in, out, count)`` of a gated MLP's linear layers in ``count`` decoder layers."""
    if not count:
        return []
    if fused_gate_up:
        return [("gate_up_proj", hidden, 2 * inter, count), ("down_proj", inter, hidden, count)]
    return [("gate_proj", hidden, inter, count), ("up_proj", hidden, inter, count), ("down_proj", inter, hidden, count)]


def moe_parameters(hidden: int, moe: MoeLayout, bias: bool) -> tuple[int, int]:
    """(total, active per token) parameters of one MoE block: router, routed experts, shared experts."""
    router = moe.routed_experts * hidden + (moe.routed_experts if moe.router_bias else 0)
    expert = mlp_parameters(hidden, moe.expert_intermediate_size, bias)
    shared = mlp_parameters(hidden, moe.expert_intermediate_size * moe.shared_experts, bias) if moe.shared_experts else 0
    return router + moe.routed_experts * expert + shared, router + moe.experts_per_token * expert + shared


def architecture_numbers(c: dict, qkv_bias: bool = False, fused_qkv: bool = False, fused_gate_up: bool = False,
                         moe: MoeLayout | None = None) -> dict:
    """The numbers a memory planner needs (see ``ModelAdapter.architecture`` for the keys).

    ``qkv_bias``: q/k/v projections carry a bias whatever ``attention_bias`` says; ``fused_qkv`` /
    ``fused_gate_up``: one linear layer holds q, k and v (gate and up), same numbers, other LoRA targets;
    ``moe``: the family's MoE layers (``None``: every layer dense).  Routed experts are fused 3-D parameters in
    transformers 5, not linear layers: ``linear_layers`` lists the shared experts only.
    """
    H, L, V = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    I = int(get(c, "intermediate_size", 4 * H))
    tied = bool(get(c, "tie_word_embeddings", False))
    mlp_bias = bool(get(c, "mlp_bias", False))
    mla = bool(get(c, "kv_lora_rank", 0))
    attn = latent_attention(c) if mla else dense_attention(c, qkv_bias, fused_qkv)
    n_moe = len(moe.layers) if moe else 0
    moe_total, moe_active = moe_parameters(H, moe, mlp_bias) if moe else (0, 0)
    embed, head, norms = V * H, 0 if tied else V * H, 2 * H
    dense_layer = attn.parameters + mlp_parameters(H, I, mlp_bias) + norms
    outer = embed + head + H + (L - n_moe) * dense_layer + n_moe * (attn.parameters + norms)
    linear_layers = [(name, i, o, L) for name, i, o in attn.linears] + mlp_linears(H, I, L - n_moe, fused_gate_up)
    if moe and moe.shared_experts:
        linear_layers += mlp_linears(H, moe.expert_intermediate_size * moe.shared_experts, n_moe, fused_gate_up)
    return {
        "model_type": c.get("model_type"),
        "hidden_size": H,
        "num_layers": L,
        "num_heads": int(c["num_attention_heads"]),
        "num_kv_heads": attn.kv_heads,
        "head_dim": attn.head_dim,
        "v_head_dim": attn.v_head_dim,
        "intermediate_size": I,
        "vocab_size": V,
        "tied_embeddings": tied,
        "num_experts": moe.routed_experts if moe else 0,
        "experts_per_token": moe.experts_per_token if moe else 0,
        "num_shared_experts": moe.shared_experts if moe else 0,
        "moe_intermediate_size": moe.expert_intermediate_size if moe else 0,
        "num_moe_layers": n_moe,
        "mla": mla,
        "kv_cache_elements_per_token": L * attn.kv_elements,
        "num_parameters": int(outer + n_moe * moe_total),
        "num_active_parameters": int(outer + n_moe * moe_active),
        "num_embedding_parameters": int(embed + head),
        "max_position_embeddings": c.get("max_position_embeddings"),
        "linear_layers": [list(x) for x in linear_layers],
    }


def lora_parameters(arch: dict, r: int, target_modules) -> int:
    """Parameters LoRA of rank ``r`` adds on the ``target_modules`` among ``arch["linear_layers"]``."""
    targets = set(target_modules)
    return sum(r * (fan_in + fan_out) * count for name, fan_in, fan_out, count in arch["linear_layers"] if name in targets)
