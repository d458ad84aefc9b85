"""RLOO (REINFORCE Leave-One-Out) for RLHF.

Ahmadian et al. (2024), "Back to Basics", as in TRL's RLOOTrainer before 1.x:
- k completions per prompt; each completion's reward is the reward-model score (minus the missing-EOS
  penalty, done in the shared rollout) minus beta * its sequence KL to the reference (``sequence_reward``, k1);
- the baseline of a completion is the mean reward of the other k - 1 completions of the same prompt;
- the whole completion is one action: its log-prob is the sum over its tokens, and the loss is the
  (PPO-clipped, for num_epochs > 1) REINFORCE loss on that sequence log-prob (``sequence_clip``);
- no critic, so no value model in memory: RLOO's memory advantage over PPO.
"""

from rlhfkit.algorithms import PolicyGradient
from rlhfkit.engine.pg_loop import run_policy_gradient

RLOO = PolicyGradient(advantage="rloo", policy_loss="sequence_clip", samples_per_prompt="k")


def train(ctx) -> None:
    run_policy_gradient(ctx, RLOO)
