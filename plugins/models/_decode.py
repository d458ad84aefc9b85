"""A lean one-token decode step for Llama-shaped causal LMs (Llama, Qwen2, deepseek-llm/coder).

The rollout samples through ``ModelAdapter.decoder``: a family whose ``fast_decoder`` names a class here gets
the lean step, any other family decodes with its model's own forward.  Loaded only when a cell samples (this
module imports torch; the family plugins that name it must not).
"""

from __future__ import annotations

import importlib

import torch

from rlhfkit.engine.rollout import unwrap


class LlamaDecoder:
    """Lean one-token decode step for Llama-architecture causal LMs (the model's own modules, none of its glue).

    HF's forward does per call what decoding does not need: output capturing and kwarg wrappers, a
    4-D mask built from the 2-D mask, rotary embeddings for one position, and ``torch.cat`` of the whole
    KV cache per layer.  This keeps a preallocated KV buffer, a preallocated attention mask, rotary tables
    for every position computed once, and calls the model's own submodules (so LoRA/quantised layers apply)
    with the same tensor operations HF's sdpa path runs for one query token (``pack_gqa`` and a shared
    boolean padding mask), so the numbers are those of ``model(...)``.  Prefill stays HF's forward.

    A family of the same shape subclasses it naming its own classes (:class:`Qwen2Decoder`); the adapter points
    at it with ``fast_decoder`` and the rollout gets it through ``ModelAdapter.decoder``.
    """

    causal_lm_class = "LlamaForCausalLM"
    """The only model class decoded here (by name: a subclass may change the forward)."""
    model_type = "llama"
    modeling = "transformers.models.llama.modeling_llama"
    """The transformers module holding the family's ``apply_rotary_pos_emb`` and RMSNorm class."""
    norm_class = "LlamaRMSNorm"

    def __init__(self, model, cache, query_mask, positions, max_new_tokens):
        base = unwrap(model)
        self.lm_head = base.lm_head
        self.body = base.model
        cfg = base.config
        self.layers = list(self.body.layers[: cfg.num_hidden_layers])
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.groups = attn.num_key_value_groups
        self.scaling = attn.scaling
        batch, query_len = query_mask.shape
        self.length = query_len
        total = query_len + max_new_tokens
        self.mask = torch.zeros(batch, total, dtype=torch.bool, device=query_mask.device)
        self.mask[:, :query_len] = query_mask.bool()
        self.keys, self.values = [], []
        for layer in cache.layers[: len(self.layers)]:
            k, v = layer.keys, layer.values
            kbuf = k.new_empty(k.size(0), k.size(1), total, k.size(3))
            vbuf = v.new_empty(v.size(0), v.size(1), total, v.size(3))
            kbuf[:, :, :query_len] = k
            vbuf[:, :, :query_len] = v
            self.keys.append(kbuf)
            self.values.append(vbuf)
        # cos/sin for positions next_position + t, t < max_new_tokens: one rotary call for the whole run.
        steps = positions[:, -1:] + 1 + torch.arange(max_new_tokens, device=positions.device)
        probe = self.keys[0] if self.keys else query_mask.float()
        self.cos, self.sin = self.body.rotary_emb(probe, position_ids=steps)
        self.step = 0
        self.apply_rotary_pos_emb = importlib.import_module(self.modeling).apply_rotary_pos_emb
        self.plain = self._plain_weights(base)

    @classmethod
    def _plain_weights(cls, base):
        """Per-layer weights when every module on the decode path is a stock module without hooks (no LoRA,
        no quantisation, no accelerate offload hooks): then the step runs their exact tensor ops functionally,
        without ~30 ``Module.__call__`` per layer.  ``None`` otherwise (the modules are called)."""
        from transformers.activations import SiLUActivation

        rms_norm = getattr(importlib.import_module(cls.modeling), cls.norm_class)
        nn = torch.nn
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return None
        body = base.model
        layers = []
        modules = [body.embed_tokens, body.norm, base.lm_head]
        for layer in body.layers[: base.config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if not all(type(m) is nn.Linear for m in linears) or not all(type(m) is rms_norm for m in norms):
                return None
            if type(mlp.act_fn) not in (SiLUActivation, nn.SiLU):
                return None
            modules += [layer, attn, mlp, mlp.act_fn, *linears, *norms]
            layers.append(
                tuple((m.weight, m.bias) for m in linears)
                + ((norms[0].weight, norms[0].variance_epsilon), (norms[1].weight, norms[1].variance_epsilon))
            )
        if type(body.embed_tokens) is not nn.Embedding or type(base.lm_head) is not nn.Linear:
            return None
        if type(body.norm) is not rms_norm or body.embed_tokens.max_norm is not None:
            return None
        for m in modules:
            if m._forward_hooks or m._forward_pre_hooks or m.training:
                return None
        return layers

    @classmethod
    def supports(cls, model, cache) -> bool:
        """Whether this model and its prefilled cache take the lean step: the family's own class with sdpa
        attention, default rotary embeddings, full attention in every layer (no sliding window) and a cache
        holding every layer's keys."""
        base = unwrap(model)
        cfg = getattr(base, "config", None)
        body = getattr(base, "model", None)
        return (
            cfg is not None
            and getattr(cfg, "model_type", None) == cls.model_type
            and type(base).__name__ == cls.causal_lm_class
            and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and all(getattr(layer.self_attn, "sliding_window", None) is None for layer in body.layers)
            and getattr(getattr(body, "rotary_emb", None), "rope_type", None) == "default"
            and not getattr(cfg, "pretraining_tp", 1) > 1
            and len(getattr(cache, "layers", ())) >= cfg.num_hidden_layers
            and all(hasattr(layer, "keys") and layer.keys is not None for layer in cache.layers[: cfg.num_hidden_layers])
        )

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the decode batch's rows ``rows`` (the sampler drops finished rows, issue 17): their KV
        buffers, mask and rotary tables.  Each row's numbers do not depend on the others'."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.mask = self.mask.index_select(0, rows)
        self.cos, self.sin = self.cos.index_select(0, rows), self.sin.index_select(0, rows)

    def __call__(self, tokens: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``is_real`` False: a finished row's pad); returns logits (batch, vocab)."""
        pos = self.length
        self.mask[:, pos] = is_real
        self.length = pos + 1
        t = self.step
        self.step = t + 1
        cos, sin = self.cos[:, t : t + 1], self.sin[:, t : t + 1]
        mask = self.mask[:, None, None, : pos + 1]
        if self.plain is not None:
            return self._plain_step(tokens, pos, cos, sin, mask)
        hidden = self.body.embed_tokens(tokens.unsqueeze(1))
        batch = hidden.size(0)
        shape = (batch, 1, -1, self.head_dim)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            residual = hidden
            hidden = layer.input_layernorm(hidden)
            q = attn.q_proj(hidden).view(shape).transpose(1, 2)
            k = attn.k_proj(hidden).view(shape).transpose(1, 2)
            v = attn.v_proj(hidden).view(shape).transpose(1, 2)
            q, k = self.apply_rotary_pos_emb(q, k, cos, sin)
            out = self._attend(i, q, k, v, pos, mask, batch)
            hidden = residual + attn.o_proj(out)
            residual = hidden
            hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.lm_head(self.body.norm(hidden))[:, -1]

    def _attend(self, i, q, k, v, pos, mask, batch):
        """Write k/v at ``pos``, attend over positions ``<= pos`` as HF's sdpa path does for one query token."""
        self.keys[i][:, :, pos : pos + 1] = k
        self.values[i][:, :, pos : pos + 1] = v
        keys, values = self.keys[i][:, :, : pos + 1], self.values[i][:, :, : pos + 1]
        if self.groups > 1:
            q = q.reshape(batch, q.size(1) // self.groups, self.groups, self.head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
        out = out.reshape(batch, -1, 1, self.head_dim).transpose(1, 2).contiguous()
        return out.reshape(batch, 1, -1).contiguous()

    @staticmethod
    def _rms_norm(hidden, weight, eps):
        dtype = hidden.dtype
        h = hidden.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(dtype)

    def _plain_step(self, tokens, pos, cos, sin, mask):
        """The same tensor ops as the module path (RMSNorm, Linear with its bias, rotary, SiLU MLP), called directly."""
        F = torch.nn.functional
        norm = self._rms_norm
        body = self.body
        hidden = F.embedding(tokens.unsqueeze(1), body.embed_tokens.weight, body.embed_tokens.padding_idx)
        batch = hidden.size(0)
        shape = (batch, 1, -1, self.head_dim)
        for i, (wq, wk, wv, wo, wg, wu, wd, n1, n2) in enumerate(self.plain):
            x = norm(hidden, *n1)
            q = F.linear(x, *wq).view(shape).transpose(1, 2)
            k = F.linear(x, *wk).view(shape).transpose(1, 2)
            v = F.linear(x, *wv).view(shape).transpose(1, 2)
            # rotary (apply_rotary_pos_emb: x * cos + rotate_half(x) * sin), on q and k together
            heads = q.size(1)
            qk = torch.cat([q, k], dim=1)
            half = qk.size(-1) // 2
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = (qk * cos.unsqueeze(1)) + (rotated * sin.unsqueeze(1))
            q, k = qk[:, :heads], qk[:, heads:]
            hidden = hidden + F.linear(self._attend(i, q, k, v, pos, mask, batch), *wo)
            x = norm(hidden, *n2)
            hidden = hidden + F.linear(F.silu(F.linear(x, *wg)) * F.linear(x, *wu), *wd)
        return F.linear(norm(hidden, body.norm.weight, body.norm.variance_epsilon), self.lm_head.weight,
                        self.lm_head.bias)[:, -1]


class Qwen2Decoder(LlamaDecoder):
    """Qwen2: Llama's decoder layer plus biases on the q/k/v projections (carried by the ``nn.Linear``s, which
    both paths call with their bias); a model with sliding-window layers falls back to its own forward."""

    causal_lm_class = "Qwen2ForCausalLM"
    model_type = "qwen2"
    modeling = "transformers.models.qwen2.modeling_qwen2"
    norm_class = "Qwen2RMSNorm"
