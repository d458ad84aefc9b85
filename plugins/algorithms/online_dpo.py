"""Online DPO (Guo et al., 2024, "Direct Language Model Alignment from Online AI Feedback"; TRL's
OnlineDPOTrainer), on the general path.

Per step: ``batch_size / 2`` prompts x 2 samples from the policy (one shared rollout); the reward model's score
(minus the missing-EOS penalty, as every algorithm sees it) picks chosen y_w and rejected y_l of each prompt;
a tie (equal scores) is skipped; then the DPO loss -log sigmoid(beta h) against the reference, with
h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) on sequence log-probs
(rlhfkit/engine/preference.py runs the epochs x minibatches).  No KL penalty: beta is the leash.
"""

import torch

from rlhfkit.engine.preference import pairs_from_rollout, preference_update


def select_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(2P,)`` scores of P prompts x 2 samples (prompt-major) -> (chosen rows, rejected rows, ties): the
    higher score is chosen; a pair with equal scores is left out and counted."""
    grouped = scores.view(-1, 2)
    first = torch.arange(grouped.size(0), device=scores.device) * 2
    first_wins = grouped[:, 0] > grouped[:, 1]
    kept = grouped[:, 0] != grouped[:, 1]
    chosen = torch.where(first_wins, first, first + 1)
    rejected = torch.where(first_wins, first + 1, first)
    return chosen[kept], rejected[kept], int((~kept).sum())


def train(ctx) -> None:
    cfg = ctx.config
    prompts_per_step = cfg.batch_size // 2
    for step in ctx.steps():
        rollout = ctx.rollout(ctx.prompt_sampler.next(prompts_per_step, repeats=2))
        chosen, rejected, ties = select_pairs(rollout.scores)
        preference_update(ctx, step, pairs_from_rollout(rollout, chosen, rejected), cfg.loss_type)
        step.record_rollout(rollout)  # no kl_penalty: nothing is optimised against a KL term
        step.stat("tie_fraction", ties / prompts_per_step)
        if chosen.numel():
            step.stat("chosen_score", rollout.scores[chosen].mean().item())
            step.stat("rejected_score", rollout.scores[rejected].mean().item())
