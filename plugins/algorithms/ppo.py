"""PPO for RLHF, in one file.

Follows "The N Implementation Details of RLHF with PPO" (Huang et al., 2024) and TRL's PPOv2:
- the critic is initialised from the reward model (a sequence classifier read at every token);
- the reward is the reward-model score at the last real token minus beta * KL(policy || reference) per token;
- completions without EOS lose ``missing_eos_penalty`` (done in the shared rollout);
- GAE (gamma, lambda) over response tokens, advantages whitened per batch, rewards optionally whitened;
- clipped policy loss, clipped value loss, several epochs over shuffled minibatches;
- log-probs use logits / temperature, exactly as sampled; dropout is off in every model.
"""

from __future__ import annotations

import time

import torch

from rlhfkit.engine.core import (
    generalized_advantage_estimation,
    kl_per_token,
    masked_mean,
    masked_whiten,
    mean_stats,
    token_level_rewards,
)
from rlhfkit.engine.rollout import response_logprobs, token_scores


def critic_values(value_model, input_ids, attention_mask, query_len: int) -> torch.Tensor:
    """V(s_t) for each response token t: the critic read at the position that predicts token t."""
    values = token_scores(value_model, input_ids, attention_mask)
    return values[:, query_len - 1 : -1]


def train(ctx) -> None:
    cfg = ctx.config
    minibatch_size = cfg.batch_size // cfg.num_minibatches

    for step in range(cfg.steps):
        step_start = time.perf_counter()

        # 1. Rollout: sample, score, reference log-probs (shared with every algorithm).
        prompts = ctx.prompt_sampler.next(cfg.batch_size)
        rollout = ctx.rollout(prompts)
        mask = rollout.mask
        query_len = rollout.query_ids.size(1)
        with ctx.memory.phase("scoring"), torch.no_grad():
            ctx.value_model.eval()
            values = critic_values(ctx.value_model, rollout.input_ids, rollout.attention_mask, query_len) * mask

        # 2. Per-token rewards: -beta * KL everywhere, plus the score at the last real token.
        kl = kl_per_token(rollout.logprobs, rollout.ref_logprobs, cfg.kl_estimator) * mask
        rewards = token_level_rewards(rollout.scores, kl, mask, rollout.last_index, ctx.kl_controller.value)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)

        # 3. Advantages and returns by GAE; whiten advantages over the batch.
        advantages, returns = generalized_advantage_estimation(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # 4. PPO epochs over shuffled minibatches.
        stats = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "approxkl", "entropy", "ratio", "grad_norm")}
        ctx.policy.train()
        ctx.value_model.train()
        with ctx.memory.phase("training"):
            for _epoch in range(cfg.num_epochs):
                order = torch.randperm(cfg.batch_size, generator=ctx.generator, device=ctx.generator.device).to(ctx.device)
                for start in range(0, cfg.batch_size, minibatch_size):
                    idx = order[start : start + minibatch_size]
                    mb = rollout.select(idx)
                    mb_mask, mb_adv, mb_ret, mb_values = mask[idx], advantages[idx], returns[idx], values[idx]

                    new_logprobs, entropy = response_logprobs(
                        ctx.policy, mb.input_ids, mb.attention_mask, mb.responses, cfg.temperature, with_entropy=True
                    )
                    log_ratio = (new_logprobs - mb.logprobs) * mb_mask
                    ratio = torch.exp(log_ratio)
                    pg_losses = -mb_adv * ratio
                    pg_losses_clipped = -mb_adv * torch.clamp(ratio, 1.0 - cfg.cliprange, 1.0 + cfg.cliprange)
                    pg_loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mb_mask)

                    new_values = critic_values(ctx.value_model, mb.input_ids, mb.attention_mask, query_len)
                    new_values_clipped = mb_values + torch.clamp(new_values - mb_values, -cfg.cliprange_value, cfg.cliprange_value)
                    vf_losses = (new_values - mb_ret) ** 2
                    vf_losses_clipped = (new_values_clipped - mb_ret) ** 2
                    vf_loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), mb_mask)

                    ctx.check_finite(step, pg_loss=pg_loss, vf_loss=vf_loss)
                    grad_norm = ctx.optimizer_step(pg_loss, ctx.policy_optimizer, None, ctx.policy)
                    ctx.optimizer_step(cfg.vf_coef * vf_loss, ctx.value_optimizer, None, ctx.value_model)

                    with torch.no_grad():
                        stats["pg_loss"].append(pg_loss.item())
                        stats["vf_loss"].append(vf_loss.item())
                        stats["clipfrac"].append(masked_mean((torch.abs(ratio - 1.0) > cfg.cliprange).float(), mb_mask).item())
                        stats["vf_clipfrac"].append(masked_mean((vf_losses_clipped > vf_losses).float(), mb_mask).item())
                        stats["approxkl"].append(0.5 * masked_mean(log_ratio**2, mb_mask).item())
                        stats["entropy"].append(masked_mean(entropy, mb_mask).item())
                        stats["ratio"].append(masked_mean(ratio, mb_mask).item())
                        stats["grad_norm"].append(grad_norm)

        # 5. Metrics (same keys as every algorithm, plus PPO's own).
        seq_kl = kl.sum(1).mean().item()
        metrics = ctx.rollout_metrics(
            step,
            rollout,
            kl,
            time.perf_counter() - step_start,
            {
                **mean_stats(stats),
                "val/mean": masked_mean(values, mask).item(),
                "val/advantage_mean": masked_mean(advantages, mask).item(),
                "val/return_mean": masked_mean(returns, mask).item(),
            },
        )
        ctx.end_step(step, metrics, seq_kl, cfg.batch_size)
