"""Shared rollout: batched sampling with a KV cache, scoring, reference log-probs, critic values.

Every algorithm goes through the same functions here, so a PPO/RLOO comparison differs only in what each
algorithm does with the rollout.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields

import torch

from rlhfkit.engine.core import INVALID_LOGPROB, entropy_from_logits, selective_log_softmax, truncate_after_eos


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


def disable_dropout(model) -> None:
    """Dropout off everywhere: rollout log-probs must equal the training forward's log-probs."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


@torch.no_grad()
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
):
    """Sample completions with a KV cache; returns ``(responses, logprobs)``.

    ``logprobs`` are log softmax(logits / temperature) of the sampled tokens over the full vocabulary (as
    the training forward computes them, even with top-k sampling), so they serve as the rollout's
    "old" log-probs without a second forward pass.  Finished rows are fed pad and stop attending.
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
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float() / temperature
        log_probs = torch.log_softmax(logits, dim=-1)
        sampling_logits = logits
        if top_k:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            sampling_logits = logits.masked_fill(logits < kth, float("-inf"))
        # Gumbel-max: one uniform draw per vocabulary entry from our own generator, deterministic per seed.
        uniform = torch.rand(sampling_logits.shape, generator=generator, device=device)
        gumbel = -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0)))
        next_token = torch.argmax(sampling_logits + gumbel, dim=-1)
        token_logprob = log_probs.gather(-1, next_token.unsqueeze(-1)).squeeze(-1)
        is_real = ~finished
        next_token = torch.where(is_real, next_token, torch.full_like(next_token, pad_token_id))
        tokens.append(next_token)
        logprobs.append(token_logprob)
        finished = finished | (next_token == eos_token_id)
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, is_real.long().unsqueeze(1)], dim=1)
        out = model(
            input_ids=next_token.unsqueeze(1),
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        )
        next_position = next_position + 1
    return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)


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


def make_rollout(ctx, prompts: list[str]) -> Rollout:
    """Sample one completion per prompt (repeat prompts for k samples), score it, get reference log-probs."""
    cfg = ctx.config
    tok = ctx.tokenizer
    query = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(ctx.device)
    policy = ctx.policy
    policy.eval()
    with ctx.memory.phase("generation"), torch.no_grad(), ctx.generation_context():
        responses, logprobs = sample(
            ctx.generation_model(),
            query.input_ids,
            query.attention_mask,
            cfg.response_length,
            cfg.temperature,
            tok.eos_token_id,
            tok.pad_token_id,
            ctx.generator,
            top_k=cfg.top_k,
        )
    responses, mask, last_index, contains_eos = truncate_after_eos(responses, tok.eos_token_id, tok.pad_token_id)
    logprobs = torch.where(mask.bool(), logprobs, INVALID_LOGPROB)
    input_ids = torch.cat([query.input_ids, responses], dim=1)
    attention_mask = torch.cat([query.attention_mask, mask.long()], dim=1)
    with ctx.memory.phase("scoring"), torch.inference_mode():
        with reference_mode(policy, ctx.reference) as ref_model:
            ref_logprobs = response_logprobs(ref_model, input_ids, attention_mask, responses, cfg.temperature)
        ref_logprobs = torch.where(mask.bool(), ref_logprobs, INVALID_LOGPROB)
        raw_scores = score_at(ctx.reward_model, input_ids, attention_mask, query.input_ids.size(1) + last_index)
    # Clone out of inference mode: these tensors are used in autograd graphs later.
    ref_logprobs, raw_scores = ref_logprobs.clone(), raw_scores.clone()
    scores = raw_scores - cfg.missing_eos_penalty * (~contains_eos).float()
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
