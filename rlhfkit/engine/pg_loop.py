"""The one policy-gradient loop every composition runs (PPO, RLOO, GRPO, REINFORCE++, ReMax, plugins).

Read it top to bottom, CleanRL style; each step is numbered the same in the code:

    for step in ctx.steps():                 # the step scope logs, steps schedulers, evaluates, keeps the ledger
        1. rollout: k samples per prompt (ReMax: plus a greedy completion per prompt as its baseline)
        2. rewards: the score, with the KL penalty placed where the config says (token/sequence reward, loss, none)
        3. advantages: the registered estimator (critic values first when it needs them), optionally whitened
        4. update: epochs x minibatches of whole prompt groups: policy loss (+ beta KL in the loss) (+ critic loss)
        5. metrics: statistics named by the loop; the scope adds objective/*, perf/*, ledger/*, memory/*

The random draws (rollout sampling, then one permutation of the prompt groups per epoch) come in the order the
original PPO and RLOO files drew them, so their numbers are unchanged (tests/test_engine_pins.py).
"""

from __future__ import annotations

import torch

from rlhfkit.engine import functional as F
from rlhfkit.engine.rollout import padding_free_mode, response_logprobs, token_scores
from rlhfkit.engine.steps import Phase
from rlhfkit.registry import resolve

REWARD_PLACEMENTS = ("token_reward", "sequence_reward")


class Parts:
    """The registered parts of a composition, resolved once (imports happen here, in the cell)."""

    def __init__(self, composition, config):
        from rlhfkit.plugins import get_registry

        registry = get_registry()
        self.estimator = registry.get("advantage_estimator", composition.advantage)
        self.loss = registry.get("policy_loss", composition.policy_loss)
        self.advantage_fn = resolve(self.estimator.fn)
        self.loss_fn = resolve(self.loss.fn)
        self.agg_fn = resolve(registry.get("loss_aggregation", config.loss_agg).fn)
        self.kl_fn = resolve(registry.get("kl_estimator", config.kl_estimator).fn)
        self.k = getattr(config, composition.samples_per_prompt) if composition.samples_per_prompt else 1
        self.critic = composition.critic
        # Sequence advantages with a token-level loss are broadcast to every token of their completion; the
        # reverse (a token advantage for a sequence loss) has no meaning.
        if self.estimator.reward_level == "token" and self.loss.level == "sequence":
            raise ValueError(f"advantage {composition.advantage!r} is per token; policy loss "
                             f"{composition.policy_loss!r} needs one advantage per completion")
        if self.estimator.needs_groups and self.k < 2:
            raise ValueError(f"advantage {composition.advantage!r} needs samples_per_prompt k >= 2")


def critic_values(value_model, input_ids, attention_mask, query_len: int, padding_free: str = "off") -> torch.Tensor:
    """V(s_t) for each response token t: the critic read at the position that predicts token t.  (B, T)."""
    values = token_scores(value_model, input_ids, attention_mask, padding_free)
    return values[:, query_len - 1 : -1]


def run_policy_gradient(ctx, composition) -> None:
    """Train ``ctx.policy`` with ``composition`` (a :class:`rlhfkit.algorithms.PolicyGradient`) until the budget
    is spent."""
    cfg = ctx.config
    parts = Parts(composition, cfg)
    for step in ctx.steps():
        # 1. Rollout: each prompt k times, consecutively (prompt-major: a group is k adjacent rows).
        prompts = ctx.prompt_sampler.next(cfg.batch_size // parts.k, repeats=parts.k)
        rollout = ctx.rollout(prompts)
        mask = rollout.mask
        values = _critic_values(ctx, rollout) if parts.critic else None

        # 2. Rewards with the KL penalty where it is placed; the penalty's sequence value is what is optimised.
        kl = parts.kl_fn(logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs, mask=mask)
        penalty = F.sequence_sum(kl, mask) if cfg.kl_placement != "none" else None
        rewards = _rewards(ctx, parts, rollout, kl, penalty)
        baseline = _greedy_baseline(ctx, parts, prompts) if parts.estimator.needs_greedy_baseline else None

        # 3. Advantages (and returns, for the critic), whitened over the batch if asked.
        reward_key = "token_rewards" if parts.estimator.reward_level == "token" else "seq_rewards"
        advantages, returns = parts.advantage_fn(
            **{reward_key: rewards}, values=values, mask=mask, k=parts.k, baseline_rewards=baseline,
            gamma=getattr(cfg, "gamma", 1.0), lam=getattr(cfg, "lam", 1.0),
        )
        if cfg.whiten_advantages:
            advantages = F.masked_whiten(advantages, mask) if advantages.dim() == 2 else F.whiten(advantages)

        # 4. Epochs x minibatches of whole prompt groups (a group's baseline stays intact in its minibatch).
        _update(ctx, parts, step, rollout, advantages, values, returns)

        # 5. Metrics: the scope adds the shared keys when the step ends.
        step.record_rollout(rollout, kl_penalty=penalty)
        step.metrics.update(_advantage_metrics(mask, rewards, advantages, values, returns))


def _critic_values(ctx, rollout) -> torch.Tensor:
    with ctx.phase(Phase.SCORING), torch.no_grad():
        ctx.value_model.eval()
        values = critic_values(ctx.value_model, rollout.input_ids, rollout.attention_mask, rollout.query_ids.size(1),
                               padding_free_mode(ctx))
    ctx.ledger.forward("critic", int(rollout.attention_mask.sum()))
    return torch.where(rollout.mask.bool(), values, 0.0)


def _rewards(ctx, parts, rollout, kl, penalty):
    """Token rewards (B, T) or sequence rewards (B,), as the estimator reads them, with the KL placed."""
    cfg, beta, mask = ctx.config, ctx.kl_controller.value, rollout.mask
    token_level = parts.estimator.reward_level == "token"
    if cfg.kl_placement == "token_reward" and token_level:
        rewards = F.token_rewards(rollout.scores, kl, mask, rollout.last_index, beta)
    else:
        in_reward = cfg.kl_placement in REWARD_PLACEMENTS
        seq = rollout.scores - beta * penalty if in_reward else rollout.scores.clone()
        rewards = F.score_at_last_token(seq, mask, rollout.last_index) if token_level else seq
    if cfg.whiten_rewards:
        rewards = F.masked_whiten(rewards, mask, shift_mean=False) if token_level else F.whiten(rewards)
    return rewards


def _greedy_baseline(ctx, parts, prompts) -> torch.Tensor:
    """ReMax: the reward of a greedy completion of each row's prompt, KL-penalised like the samples' reward."""
    cfg = ctx.config
    greedy = ctx.rollout(prompts, greedy=True)
    reward = greedy.scores
    if cfg.kl_placement in REWARD_PLACEMENTS:
        kl = parts.kl_fn(logprobs=greedy.logprobs, ref_logprobs=greedy.ref_logprobs, mask=greedy.mask)
        reward = reward - ctx.kl_controller.value * F.sequence_sum(kl, greedy.mask)
    return reward


def _update(ctx, parts, step, rollout, advantages, values, returns) -> None:
    cfg = ctx.config
    groups = cfg.batch_size // parts.k
    groups_per_minibatch = cfg.batch_size // cfg.num_minibatches // parts.k
    ctx.policy.train()
    if parts.critic:
        ctx.value_model.train()
    with ctx.phase(Phase.TRAINING):
        for _epoch in range(cfg.num_epochs):
            order = torch.randperm(groups, generator=ctx.generator, device=ctx.generator.device).to(ctx.device)
            for start in range(0, groups, groups_per_minibatch):
                chosen = order[start : start + groups_per_minibatch]
                idx = (chosen.unsqueeze(1) * parts.k + torch.arange(parts.k, device=ctx.device)).reshape(-1)
                _minibatch(ctx, parts, step, rollout.select(idx), rollout.mask[idx], advantages[idx],
                           None if values is None else values[idx], None if returns is None else returns[idx])


def _minibatch(ctx, parts, step, mb, mask, advantages, values, returns) -> None:
    """One optimizer step of the policy (and critic) on one minibatch."""
    cfg = ctx.config
    tokens = int(mb.attention_mask.sum())
    padding_free = padding_free_mode(ctx)
    logprobs, entropy = response_logprobs(ctx.policy, mb.input_ids, mb.attention_mask, mb.responses,
                                          cfg.temperature, with_entropy=True, padding_free=padding_free)
    ctx.ledger.forward("policy", tokens)
    if parts.loss.level == "token" and advantages.dim() == 1:
        advantages = advantages.unsqueeze(1).expand_as(logprobs)
    losses, stats = parts.loss_fn(logprobs=logprobs, old_logprobs=mb.logprobs, advantages=advantages, mask=mask,
                                  cliprange=cfg.cliprange)
    loss = pg_loss = F.aggregate(losses, mask, parts.agg_fn)
    if cfg.kl_placement == "loss":
        kl_loss = parts.agg_fn(parts.kl_fn(logprobs=logprobs, ref_logprobs=mb.ref_logprobs, mask=mask), mask)
        loss = pg_loss + ctx.kl_controller.value * kl_loss
        step.stat("loss/kl", kl_loss.item())
    if parts.critic:
        new_values = critic_values(ctx.value_model, mb.input_ids, mb.attention_mask, mb.query_ids.size(1), padding_free)
        ctx.ledger.forward("critic", tokens)
        vf_loss, vf_clipfrac = F.clipped_value_loss(values=new_values, old_values=values, returns=returns, mask=mask,
                                                    cliprange_value=cfg.cliprange_value)
        ctx.check_finite(step.index, pg_loss=loss, vf_loss=vf_loss)
    else:
        ctx.check_finite(step.index, pg_loss=loss)
    grad_norm = ctx.optimizer_step(loss, ctx.policy, tokens=tokens)
    if parts.critic:
        # vf_coef scales the critic's loss, which AdamW (its own optimizer) almost cancels: see PPOConfig.vf_coef.
        ctx.optimizer_step(cfg.vf_coef * vf_loss, ctx.value_model, tokens=tokens)
    step.stat("loss/policy", pg_loss.item())
    if parts.critic:
        step.stat("loss/value", vf_loss.item())
        step.stat("val/clipfrac", vf_clipfrac.item())
    for name, value in stats.items():
        step.stat(name if "/" in name else f"policy/{name}", value.item())
    step.stat("policy/entropy", F.masked_mean(entropy.detach(), mask).item())
    step.stat("policy/grad_norm", grad_norm)


def _advantage_metrics(mask, rewards, advantages, values, returns) -> dict:
    if advantages.dim() == 1:
        return {"val/advantage_std": advantages.std().item(), "val/rlhf_reward_mean": rewards.mean().item()}
    metrics = {"val/advantage_mean": F.masked_mean(advantages, mask).item()}
    if values is not None:
        metrics["val/mean"] = F.masked_mean(values, mask).item()
    if returns is not None:
        metrics["val/return_mean"] = F.masked_mean(returns, mask).item()
    return metrics
