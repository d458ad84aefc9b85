"""Evaluation on held-out prompts: proxy score, gold reward and KL to the reference, with standard errors."""

from __future__ import annotations

import math

import torch

from rlhfkit.engine.functional import kl_k1, sequence_sum


def eval_prompt_rows(eval_prompts: list[str], rows: int, samples_per_prompt: int) -> tuple[list[str], list[int]]:
    """The evaluation batch: ``rows`` completions over ``ceil(rows / samples_per_prompt)`` distinct prompts.

    Prompts are cycled (row j gets prompt j mod P), so the batch always has ``rows`` completions (what the
    memory planner sizes) even when the task has fewer held-out prompts than asked for.  Returns the prompt of
    every row and the index of its prompt (the cluster that standard errors are taken over).
    """
    if not eval_prompts:
        raise ValueError("the task has no held-out evaluation prompts")
    distinct = min(len(eval_prompts), max(1, math.ceil(rows / samples_per_prompt)))
    clusters = [j % distinct for j in range(rows)]
    return [eval_prompts[c] for c in clusters], clusters


def clustered_mean_se(values: torch.Tensor, clusters: list[int]) -> tuple[float, float]:
    """Mean of per-prompt means, and its standard error over prompts.

    Completions of one prompt are not independent draws of the evaluation distribution (they share the
    prompt), so the SE is taken over prompts (sample SD of the per-prompt means / sqrt(P)), not over rows.
    With a single prompt the rows are the only replication: SE over rows.
    """
    values = values.double().cpu()
    index = torch.tensor(clusters)
    n_clusters = int(index.max()) + 1
    sums = torch.zeros(n_clusters, dtype=torch.float64).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=n_clusters).double()
    means = sums / counts
    units = means if n_clusters > 1 else values
    se = float(units.std(unbiased=True) / math.sqrt(units.numel())) if units.numel() > 1 else float("nan")
    return float(means.mean()), se


def evaluate_policy(ctx, step: int) -> dict:
    """Sample ``eval_samples_per_prompt`` completions per held-out prompt with a fixed generator and measure them.

    The generator is reseeded every call, so the SFT policy (step 0) and every later checkpoint of every
    cell draw the same random numbers: differences come from the policy, not from sampling luck.
    """
    cfg = ctx.config
    prompts, clusters = eval_prompt_rows(ctx.task.eval_prompts, cfg.eval_batch_size, cfg.eval_samples_per_prompt)
    saved_generator = ctx.generator
    ctx.generator = torch.Generator(device="cpu" if ctx.device.type == "cpu" else ctx.device).manual_seed(ctx.eval_seed)
    try:
        rollout = ctx.rollout(prompts)
    finally:
        ctx.generator = saved_generator
    # Always k1 (the log-ratio), whatever the algorithm optimises: the KL axis every arm is compared on.
    seq_kl = sequence_sum(kl_k1(logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs, mask=rollout.mask),
                          rollout.mask)
    result = {"eval/step": step, **_progress(ctx, step)}
    measured = {"score": rollout.raw_scores, "kl": seq_kl}
    gold = ctx.gold(rollout.prompts, rollout.completions)
    if gold is not None:
        measured["gold"] = gold
    # eval/score is the optimised reward (raw_scores: the weighted sum when the row mixes components), at step 0
    # and at the end alike; each component is reported beside it (eval/reward/model, eval/reward/fn:NAME).
    for key, values in (rollout.reward_parts or {}).items():
        measured[f"reward/{key}"] = values
    for name, values in measured.items():
        result[f"eval/{name}"], result[f"eval/{name}_se"] = clustered_mean_se(values, clusters)
    result["eval/length"] = rollout.mask.sum(1).mean().item()
    result["eval/eos_rate"] = rollout.contains_eos.float().mean().item()
    result["eval/prompts"] = max(clusters) + 1
    # One completion of each of the first four distinct prompts: the same prompts for every cell and checkpoint.
    first_rows = [clusters.index(c) for c in sorted(set(clusters))[:4]]
    result["eval/samples"] = [{"prompt": rollout.prompts[j], "completion": rollout.completions[j]} for j in first_rows]
    return result


def _progress(ctx, step: int) -> dict:
    """Where in its budget the cell is: episodes so far, budget fraction, and the policy's learning rate then
    (the report must not call a plateau "gold stops improving" when the LR had already decayed to 0)."""
    scheduler = ctx.policy_scheduler
    lr = scheduler.get_last_lr()[0] if scheduler is not None else ctx.config.learning_rate
    fraction = ctx.budget_fraction() if hasattr(ctx, "budget_fraction") else step / ctx.config.steps
    return {"eval/episodes": ctx.episodes, "eval/fraction": fraction, "eval/lr": lr}
