"""Shared rollout: batched sampling with a KV cache, scoring, reference log-probs, critic values.

Every algorithm goes through the same functions here, so a PPO/RLOO comparison differs only in what each
algorithm does with the rollout.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields

import torch

from rlhfkit.engine.core import INVALID_LOGPROB, entropy_from_logits, selective_log_softmax, truncate_after_eos
from rlhfkit.engine.steps import Phase


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: the first real token is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def unwrap(model):
    """The transformers model under DDP/DeepSpeed/peft wrappers (peft layers stay injected)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


DROPOUT_CONFIG_KEYS = ("attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "dropout")
"""Config fields that HF models read as functional dropout probabilities (not ``nn.Dropout`` modules)."""


def disable_dropout(model) -> None:
    """Dropout off everywhere: rollout log-probs must equal the training forward's log-probs.

    Call it after peft has added its layers (LoRA dropout is an ``nn.Dropout`` inside each adapter).
    Attention dropout is no module: HF attention layers pass ``self.attention_dropout`` (copied from the
    config at construction) to the attention function when training, so both the config and every module's
    copy are zeroed.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
        config = getattr(module, "config", None)
        for key in DROPOUT_CONFIG_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)


class _LlamaDecoder:
    """Lean one-token decode step for Llama-architecture causal LMs (the model's own modules, none of its glue).

    HF's forward does per call what decoding does not need: output capturing and kwarg wrappers, a
    4-D mask built from the 2-D mask, rotary embeddings for one position, and ``torch.cat`` of the whole
    KV cache per layer.  This keeps a preallocated KV buffer, a preallocated attention mask, rotary tables
    for every position computed once, and calls the model's own submodules (so LoRA/quantised layers apply)
    with the same tensor operations HF's sdpa path runs for one query token (``pack_gqa`` and a shared
    boolean padding mask), so the numbers are those of ``model(...)``.  Prefill stays HF's forward.
    """

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
        self.plain = self._plain_weights(base)

    @staticmethod
    def _plain_weights(base):
        """Per-layer weights when every module on the decode path is a stock module without hooks (no LoRA,
        no quantisation, no accelerate offload hooks): then the step runs their exact tensor ops functionally,
        without ~30 ``Module.__call__`` per layer.  ``None`` otherwise (the modules are called)."""
        from transformers.activations import SiLUActivation
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

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
            if not all(type(m) is nn.Linear for m in linears) or not all(type(m) is LlamaRMSNorm for m in norms):
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
        if type(body.norm) is not LlamaRMSNorm or body.embed_tokens.max_norm is not None:
            return None
        for m in modules:
            if m._forward_hooks or m._forward_pre_hooks or m.training:
                return None
        return layers

    @staticmethod
    def supports(model, cache) -> bool:
        base = unwrap(model)
        cfg = getattr(base, "config", None)
        body = getattr(base, "model", None)
        return (
            cfg is not None
            and getattr(cfg, "model_type", None) == "llama"
            and type(base).__name__ == "LlamaForCausalLM"
            and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and getattr(getattr(body, "rotary_emb", None), "rope_type", None) == "default"
            and not getattr(cfg, "pretraining_tp", 1) > 1
            and len(getattr(cache, "layers", ())) >= cfg.num_hidden_layers
            and all(hasattr(layer, "keys") and layer.keys is not None for layer in cache.layers[: cfg.num_hidden_layers])
        )

    def __call__(self, tokens: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``is_real`` False: a finished row's pad); returns logits (batch, vocab)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

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
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
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
        """The same tensor ops as the module path (LlamaRMSNorm, Linear, rotary, SiLU MLP), called directly."""
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


@torch.no_grad()

def lean_decoder(model, cache, attention_mask, positions, max_new_tokens: int):
    """The lean decoder :func:`sample` uses for ``model`` after a prefill into ``cache``, or ``None`` where it
    decodes through ``model(...)``; public for benchmarks that time decoding without the sampling logic."""
    if _LlamaDecoder.supports(model, cache):
        return _LlamaDecoder(model, cache, attention_mask, positions, max_new_tokens)
    return None


def sample(
    model,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator,
    top_k: int = 0,
    fast: bool = True,
):
    """Sample completions with a KV cache; returns ``(responses, logprobs)``.

    ``logprobs`` are log softmax(logits / temperature) of the sampled tokens over the full vocabulary (as
    the training forward computes them, even with top-k sampling), so they serve as the rollout's
    "old" log-probs without a second forward pass.  Finished rows are fed pad and stop attending.
    ``fast=False`` decodes with the model's own forward every step (the reference the fast path is tested
    against); for Llama models the default uses :class:`_LlamaDecoder`, same numbers, less overhead.
    """
    from transformers import DynamicCache

    batch = query_ids.size(0)
    device = query_ids.device
    attention_mask = query_mask.long()
    positions = position_ids_from_mask(attention_mask)
    cache = DynamicCache()
    out = model(
        input_ids=query_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1]
    decoder = None
    if fast and max_new_tokens > 1 and _LlamaDecoder.supports(model, cache):
        decoder = _LlamaDecoder(model, cache, attention_mask, positions, max_new_tokens)
        out = cache = None  # the decoder holds its own copy of the prefill KV: free HF's
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=device)
    steps = 0
    for step in range(max_new_tokens):
        logits = logits.float()
        if temperature != 1.0:  # x / 1.0 is x: skip the op
            logits = logits / temperature
        sampling_logits = logits
        if top_k:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            sampling_logits = logits.masked_fill(logits < kth, float("-inf"))
        # Gumbel-max: one uniform draw per vocabulary entry from our own generator, deterministic per seed.
        uniform = torch.rand(sampling_logits.shape, generator=generator, device=device)
        gumbel = uniform.clamp_(1e-20, 1.0).log_().neg_().log_().neg_()
        next_token = torch.argmax(sampling_logits + gumbel, dim=-1)
        # log_softmax + gather (one (batch, vocab) row block per step; on CPU this is ~3x cheaper than
        # logit - logsumexp, whose kernel runs max/sub/exp/sum/log as separate passes).
        token_logprob = torch.log_softmax(logits, dim=-1).gather(-1, next_token.unsqueeze(-1)).squeeze(-1)
        is_real = ~finished
        next_token = next_token.masked_fill_(finished, pad_token_id)
        tokens[:, step] = next_token
        logprobs[:, step] = token_logprob
        steps = step + 1
        finished |= next_token == eos_token_id
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        if decoder is not None:
            logits = decoder(next_token, is_real)
            continue
        attention_mask = torch.cat([attention_mask, is_real.long().unsqueeze(1)], dim=1)
        out = model(
            input_ids=next_token.unsqueeze(1),
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]
        next_position = next_position + 1
    return tokens[:, :steps], logprobs[:, :steps]


def forward_response_logits(model, input_ids, attention_mask, response_len: int, temperature: float):
    """Logits (divided by temperature) that predict each response token: shape (batch, response_len, vocab)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=response_len + 1,
        use_cache=False,
    )
    return out.logits[:, :-1] / temperature


def response_logprobs(model, input_ids, attention_mask, responses, temperature, with_entropy=False):
    """Log-probs of ``responses`` (the last columns of ``input_ids``) under ``model``."""
    logits = forward_response_logits(model, input_ids, attention_mask, responses.size(1), temperature)
    logprobs = selective_log_softmax(logits, responses)
    if with_entropy:
        return logprobs, entropy_from_logits(logits)
    return logprobs


def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-position output of a one-label sequence classifier: ``score(hidden_state)``, shape (batch, len).

    The reward model is read at one position of this (the last real token); the critic at every position.
    """
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return base.score(hidden).squeeze(-1).float()


def score_at(model, input_ids, attention_mask, index: torch.Tensor) -> torch.Tensor:
    """The reward model's score read at ``index`` (the last real token) of each row."""
    scores = token_scores(model, input_ids, attention_mask)
    return scores[torch.arange(scores.size(0), device=scores.device), index]


@dataclass
class Rollout:
    """One batch of sampled episodes with everything both algorithms need."""

    query_ids: torch.Tensor
    responses: torch.Tensor
    """Sampled tokens, pad after the first EOS."""
    input_ids: torch.Tensor
    """query + response."""
    attention_mask: torch.Tensor
    mask: torch.Tensor
    """1.0 for response tokens up to and including the first EOS."""
    last_index: torch.Tensor
    contains_eos: torch.Tensor
    logprobs: torch.Tensor
    """Policy log-probs at sampling time (INVALID_LOGPROB where masked)."""
    ref_logprobs: torch.Tensor
    raw_scores: torch.Tensor
    """Reward-model scores as read."""
    scores: torch.Tensor
    """Scores after the missing-EOS penalty: what the algorithm optimises."""
    prompts: list
    completions: list

    def select(self, index) -> "Rollout":
        """Rows ``index`` of every tensor field (minibatching)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                values[f.name] = value[index]
            else:
                values[f.name] = [value[i] for i in index.tolist()]
        return Rollout(**values)


@contextmanager
def reference_mode(policy, reference):
    """Yield the model that computes reference log-probs.

    Under LoRA the reference is the base policy with its adapters disabled (no second copy in memory).
    """
    if reference is None:
        with unwrap_peft(policy).disable_adapter():
            yield policy
    else:
        yield reference


def unwrap_peft(model):
    while hasattr(model, "module") and not hasattr(model, "disable_adapter"):
        model = model.module
    return model


def _generation_model(ctx):
    """``ctx.generation_model()``, looked up once per policy object (accelerate's unwrap_model costs a package
    metadata lookup per call, a few ms per step on small models)."""
    policy = ctx.policy
    cached = ctx.__dict__.get("_rlhfkit_generation_model")
    if cached is not None and cached[0] is policy:
        return cached[1]
    model = ctx.generation_model()
    plan = getattr(ctx, "plan", None)
    if plan is None or getattr(plan, "zero_stage", 0) != 3:  # ZeRO-3 may hand out a different view per call
        ctx.__dict__["_rlhfkit_generation_model"] = (policy, model)
    return model


def make_rollout(ctx, prompts: list[str], greedy: bool = False) -> Rollout:
    """Sample one completion per prompt (repeat prompts for k samples), score it, get reference log-probs.

    ``greedy``: argmax decoding (a ReMax baseline) from a throwaway generator, so the cell's own random draws
    are untouched; its completions are generated compute in the ledger but not episodes.
    """
    cfg = ctx.config
    tok = ctx.tokenizer
    query = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(ctx.device)
    policy = ctx.policy
    policy.eval()
    with ctx.memory.phase(Phase.GENERATION.value), torch.inference_mode(), ctx.generation_context():
        responses, logprobs = sample(
            _generation_model(ctx),
            query.input_ids,
            query.attention_mask,
            cfg.response_length,
            cfg.temperature,
            tok.eos_token_id,
            tok.pad_token_id,
            torch.Generator(device=ctx.device).manual_seed(0) if greedy else ctx.generator,
            top_k=1 if greedy else cfg.top_k,
        )
    # Out of inference mode (cheap copies): these feed autograd graphs in the update.
    responses, logprobs = responses.clone(), logprobs.clone()
    responses, mask, last_index, contains_eos = truncate_after_eos(responses, tok.eos_token_id, tok.pad_token_id)
    logprobs = torch.where(mask.bool(), logprobs, INVALID_LOGPROB)
    input_ids = torch.cat([query.input_ids, responses], dim=1)
    attention_mask = torch.cat([query.attention_mask, mask.long()], dim=1)
    with ctx.memory.phase(Phase.SCORING.value), torch.inference_mode():
        with reference_mode(policy, ctx.reference) as ref_model:
            ref_logprobs = response_logprobs(ref_model, input_ids, attention_mask, responses, cfg.temperature)
        ref_logprobs = torch.where(mask.bool(), ref_logprobs, INVALID_LOGPROB)
        raw_scores = score_at(ctx.reward_model, input_ids, attention_mask, query.input_ids.size(1) + last_index)
    # Clone out of inference mode: these tensors are used in autograd graphs later.
    ref_logprobs, raw_scores = ref_logprobs.clone(), raw_scores.clone()
    scores = raw_scores - cfg.missing_eos_penalty * (~contains_eos).float()
    ledger = getattr(ctx, "ledger", None)
    if ledger is not None:
        real_tokens = int(attention_mask.sum())
        ledger.generated(len(prompts), len(set(prompts)), int(mask.sum()), int(query.attention_mask.sum()), not greedy)
        ledger.forward("reference", real_tokens)
        ledger.forward("reward", real_tokens)
    completions = tok.batch_decode(responses, skip_special_tokens=True)
    return Rollout(
        query_ids=query.input_ids,
        responses=responses,
        input_ids=input_ids,
        attention_mask=attention_mask,
        mask=mask,
        last_index=last_index,
        contains_eos=contains_eos,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        raw_scores=raw_scores,
        scores=scores,
        prompts=list(prompts),
        completions=completions,
    )
