"""RLOO (REINFORCE Leave-One-Out) for RLHF, in one file.

Ahmadian et al. (2024), "Back to Basics", as in TRL's RLOOTrainer before 1.x:
- k completions per prompt; each completion's reward is the reward-model score (minus the missing-EOS
  penalty, done in the shared rollout) minus beta * its sequence KL to the reference;
- the baseline of a completion is the mean reward of the other k - 1 completions of the same prompt;
- the whole completion is one action: its log-prob is the sum over its tokens, and the loss is the
  (PPO-clipped, for num_epochs > 1) REINFORCE loss on that sequence log-prob;
- no critic, so no value model in memory: RLOO's memory advantage over PPO.
"""

from __future__ import annotations

import time

import torch

from rlhfkit.engine.core import kl_per_token, leave_one_out_advantages, masked_mean, mean_stats
from rlhfkit.engine.rollout import response_logprobs


def train(ctx) -> None:
    cfg = ctx.config
    k = cfg.k
    prompts_per_step = cfg.batch_size // k
    minibatch_size = cfg.batch_size // cfg.num_minibatches
    groups_per_minibatch = minibatch_size // k

    for step in range(cfg.steps):
        step_start = time.perf_counter()

        # 1. Rollout: each prompt k times, consecutively (prompt-major order).
        prompts = ctx.prompt_sampler.next(prompts_per_step, repeats=k)
        rollout = ctx.rollout(prompts)
        mask = rollout.mask

        # 2. Sequence-level reward: score - beta * sum_t KL_t.
        kl = kl_per_token(rollout.logprobs, rollout.ref_logprobs, cfg.kl_estimator) * mask
        seq_kl = kl.sum(1)
        rewards = rollout.scores - ctx.kl_controller.value * seq_kl if cfg.kl_in_reward else rollout.scores.clone()
        if cfg.whiten_rewards:
            rewards = (rewards - rewards.mean()) / (rewards.std() + 1e-8)

        # 3. Leave-one-out baseline within each prompt's group of k.
        advantages = leave_one_out_advantages(rewards, k)
        if cfg.whiten_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        old_seq_logprobs = (rollout.logprobs * mask).sum(1)

        # 4. REINFORCE on whole sequences; minibatches hold whole groups so baselines stay intact.
        stats = {k_: [] for k_ in ("pg_loss", "clipfrac", "approxkl", "entropy", "ratio", "grad_norm")}
        ctx.policy.train()
        with ctx.memory.phase("training"):
            for _epoch in range(cfg.num_epochs):
                group_order = torch.randperm(prompts_per_step, generator=ctx.generator, device=ctx.generator.device).to(ctx.device)
                for start in range(0, prompts_per_step, groups_per_minibatch):
                    groups = group_order[start : start + groups_per_minibatch]
                    idx = (groups.unsqueeze(1) * k + torch.arange(k, device=ctx.device)).reshape(-1)
                    mb = rollout.select(idx)
                    mb_mask, mb_adv = mask[idx], advantages[idx]

                    new_logprobs, entropy = response_logprobs(
                        ctx.policy, mb.input_ids, mb.attention_mask, mb.responses, cfg.temperature, with_entropy=True
                    )
                    new_seq_logprobs = (new_logprobs * mb_mask).sum(1)
                    log_ratio = new_seq_logprobs - old_seq_logprobs[idx]
                    ratio = torch.exp(log_ratio)
                    pg_losses = -mb_adv * ratio
                    pg_losses_clipped = -mb_adv * torch.clamp(ratio, 1.0 - cfg.cliprange, 1.0 + cfg.cliprange)
                    pg_loss = torch.max(pg_losses, pg_losses_clipped).mean()

                    ctx.check_finite(step, pg_loss=pg_loss)
                    grad_norm = ctx.optimizer_step(pg_loss, ctx.policy_optimizer, None, ctx.policy)

                    with torch.no_grad():
                        stats["pg_loss"].append(pg_loss.item())
                        stats["clipfrac"].append((torch.abs(ratio - 1.0) > cfg.cliprange).float().mean().item())
                        stats["approxkl"].append(0.5 * (log_ratio**2).mean().item())
                        stats["entropy"].append(masked_mean(entropy, mb_mask).item())
                        stats["ratio"].append(ratio.mean().item())
                        stats["grad_norm"].append(grad_norm)

        # 5. Metrics (same keys as every algorithm, plus RLOO's own).
        metrics = ctx.rollout_metrics(
            step,
            rollout,
            kl,
            time.perf_counter() - step_start,
            {
                **mean_stats(stats),
                "val/advantage_std": advantages.std().item(),
                "val/rlhf_reward_mean": rewards.mean().item(),
            },
        )
        ctx.end_step(step, metrics, seq_kl.mean().item(), cfg.batch_size)
