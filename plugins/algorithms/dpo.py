"""DPO (Rafailov et al., 2023), offline, on the general path: the task's preference pairs, no generation.

Per step: ``batch_size / 2`` pairs from ``ctx.task.pairs`` (seeded epochs over the data), tokenised as the
rollout lays out its rows, reference log-probs from the reference (under LoRA the policy with adapters off),
then the DPO loss -log sigmoid(beta h) (rlhfkit/engine/preference.py runs the epochs x minibatches).
The step's episodes are the preference completions it trained on, 2 per pair (``budget = "episodes"``
matches these against the completions other arms generate); nothing counts as generated.  Evaluation
(gold, proxy, KL to SFT on held-out prompts) happens at the same points as for every algorithm.
"""

import torch

from rlhfkit.engine.context import PromptSampler
from rlhfkit.engine.preference import encode_pairs, preference_update


def train(ctx) -> None:
    cfg = ctx.config
    if not ctx.task.pairs:
        raise ValueError(f"dpo trains on preference pairs; task {ctx.task.name!r} has none")
    # A sampler of its own over the pairs, seeded from the cell's generator: the order is the seed's.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
    sampler = PromptSampler(ctx.task.pairs, seed)
    for step in ctx.steps():
        pairs = sampler.next(cfg.batch_size // 2)
        preference_update(ctx, step, encode_pairs(ctx, pairs), cfg.loss_type)
        step.record_preferences(completions=2 * len(pairs), prompts=len({p["prompt"] for p in pairs}))
