"""Evaluation on held-out prompts: proxy score, gold reward and KL to the reference."""

from __future__ import annotations

import torch

from rlhfkit.engine.core import kl_per_token


def evaluate_policy(ctx, step: int) -> dict:
    """Sample one completion per held-out prompt with a fixed generator and measure it.

    The generator is reseeded every call, so the SFT policy (step 0) and every later checkpoint of every
    cell draw the same random numbers: differences come from the policy, not from sampling luck.
    """
    prompts = ctx.task.eval_prompts[: ctx.config.eval_batch_size]
    saved_generator = ctx.generator
    ctx.generator = torch.Generator(device="cpu" if ctx.device.type == "cpu" else ctx.device).manual_seed(ctx.eval_seed)
    try:
        rollout = ctx.rollout(prompts)
    finally:
        ctx.generator = saved_generator
    kl = kl_per_token(rollout.logprobs, rollout.ref_logprobs, "k1") * rollout.mask
    seq_kl = kl.sum(1)
    result = {
        "eval/step": step,
        "eval/score": rollout.raw_scores.mean().item(),
        "eval/kl": seq_kl.mean().item(),
        "eval/length": rollout.mask.sum(1).mean().item(),
        "eval/eos_rate": rollout.contains_eos.float().mean().item(),
    }
    gold = ctx.gold(rollout.prompts, rollout.completions)
    if gold is not None:
        result["eval/gold"] = gold.mean().item()
    result["eval/samples"] = [
        {"prompt": p, "completion": c} for p, c in zip(rollout.prompts[:4], rollout.completions[:4])
    ]
    return result
