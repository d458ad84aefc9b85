"""Preference pairs as a training batch, and the one update that DPO-style algorithms share.

Online DPO builds its pairs from a rollout (two samples per prompt, the reward model picks), offline DPO from
the task's preference data; both then run :func:`preference_update`: ``num_epochs`` x ``num_minibatches`` of
whole pairs, a registered-style pure loss (:func:`rlhfkit.engine.functional.dpo_loss`) on sequence log-probs.
Rows are laid out as the rollout lays them: left-padded prompt, then the completion, right-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.engine import functional as F
from rlhfkit.engine.rollout import reference_mode, response_logprobs
from rlhfkit.engine.steps import Phase


@dataclass
class PairBatch:
    """P preference pairs as 2P rows: row 2i is pair i's chosen completion, row 2i+1 its rejected one."""

    input_ids: torch.Tensor
    """(2P, prompt + response) prompt left-padded, response right-padded."""
    attention_mask: torch.Tensor
    responses: torch.Tensor
    """(2P, T) the completions' tokens, pad after the end."""
    mask: torch.Tensor
    """(2P, T) 1.0 on real completion tokens."""
    ref_logps: torch.Tensor
    """(2P,) sequence log-probs under the reference."""

    @property
    def num_pairs(self) -> int:
        return self.responses.size(0) // 2

    def select(self, pairs: torch.Tensor) -> "PairBatch":
        """Pairs ``pairs`` (indices of pairs, not rows), each still as its (chosen, rejected) rows."""
        rows = torch.stack([2 * pairs, 2 * pairs + 1], dim=1).reshape(-1)
        return PairBatch(self.input_ids[rows], self.attention_mask[rows], self.responses[rows], self.mask[rows],
                         self.ref_logps[rows])


def pairs_from_rollout(rollout, chosen: torch.Tensor, rejected: torch.Tensor) -> PairBatch:
    """The rollout's rows ``chosen[i]``/``rejected[i]`` as pair i; reference log-probs are the rollout's."""
    rows = torch.stack([chosen, rejected], dim=1).reshape(-1)
    ref_logps = F.sequence_sum(rollout.ref_logprobs, rollout.mask)
    return PairBatch(rollout.input_ids[rows], rollout.attention_mask[rows], rollout.responses[rows],
                     rollout.mask[rows], ref_logps[rows])


def encode_pairs(ctx, pairs: list[dict]) -> PairBatch:
    """Tokenise ``{"prompt", "chosen", "rejected"}`` pairs as the rollout lays out its rows (the completion's
    tokens then EOS, as the SFT stage trains it, cut at ``response_length``) and get reference log-probs (under
    LoRA: the policy with adapters off).  Counts the reference forward in the ledger."""
    tok, cfg = ctx.tokenizer, ctx.config
    prompts = [p["prompt"] for p in pairs for _ in range(2)]
    completions = [c for p in pairs for c in (p["chosen"], p["rejected"])]
    query = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids = [(row + [tok.eos_token_id])[: cfg.response_length]
           for row in tok(completions, add_special_tokens=False)["input_ids"]]
    width = max(len(row) for row in ids)
    responses = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), width)
    for i, row in enumerate(ids):
        responses[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1.0
    responses, mask = responses.to(ctx.device), mask.to(ctx.device)
    input_ids = torch.cat([query.input_ids.to(ctx.device), responses], dim=1)
    attention_mask = torch.cat([query.attention_mask.to(ctx.device), mask.long()], dim=1)
    with ctx.phase(Phase.SCORING), torch.no_grad(), reference_mode(ctx.policy, ctx.reference) as ref_model:
        ref_logprobs = response_logprobs(ref_model, input_ids, attention_mask, responses, cfg.temperature)
    ctx.ledger.forward("reference", int(attention_mask.sum()))
    return PairBatch(input_ids, attention_mask, responses, mask, F.sequence_sum(ref_logprobs, mask))


def preference_update(ctx, step, batch: PairBatch, loss_type: str = "sigmoid") -> None:
    """``num_epochs`` x ``num_minibatches`` optimizer steps of the DPO loss over whole pairs (beta = ``kl_coef``).
    Minibatches split the pairs as evenly as they go; with no pairs (all tied) nothing is updated."""
    cfg = ctx.config
    if batch.num_pairs == 0:
        return
    ctx.policy.train()
    with ctx.phase(Phase.TRAINING):
        for _epoch in range(cfg.num_epochs):
            order = torch.randperm(batch.num_pairs, generator=ctx.generator, device=ctx.generator.device)
            for chosen in torch.tensor_split(order.to(ctx.device), cfg.num_minibatches):
                if chosen.numel():
                    _pair_minibatch(ctx, step, batch.select(chosen), loss_type)


def _pair_minibatch(ctx, step, mb: PairBatch, loss_type: str) -> None:
    cfg = ctx.config
    tokens = int(mb.attention_mask.sum())
    logprobs = response_logprobs(ctx.policy, mb.input_ids, mb.attention_mask, mb.responses, cfg.temperature)
    ctx.ledger.forward("policy", tokens)
    logps = F.sequence_sum(logprobs, mb.mask)
    losses, chosen_rewards, rejected_rewards = F.dpo_loss(
        chosen_logps=logps[0::2], rejected_logps=logps[1::2], ref_chosen_logps=mb.ref_logps[0::2],
        ref_rejected_logps=mb.ref_logps[1::2], beta=cfg.kl_coef, loss_type=loss_type,
    )
    loss = losses.mean()
    ctx.check_finite(step.index, dpo_loss=loss)
    grad_norm = ctx.optimizer_step(loss, ctx.policy, tokens=tokens)
    margins = chosen_rewards - rejected_rewards
    step.stat("loss/policy", loss.item())
    step.stat("reward_chosen", chosen_rewards.mean().item())
    step.stat("reward_rejected", rejected_rewards.mean().item())
    step.stat("reward_margin", margins.mean().item())
    step.stat("reward_accuracy", (margins > 0).float().mean().item())
    step.stat("logps_chosen", logps[0::2].detach().mean().item())
    step.stat("logps_rejected", logps[1::2].detach().mean().item())
    step.stat("policy/grad_norm", grad_norm)
