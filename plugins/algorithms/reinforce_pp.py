"""REINFORCE++ (Hu, 2025): token-level returns of KL-penalised rewards, whitened over the batch; no critic.

- per-token reward: -beta * k1 at every token plus the score at the last one (``token_reward``, as PPO);
- the return G_t = sum_{s >= t} gamma^(s-t) r_s is the advantage, whitened over every token of the batch
  (``reinforce_pp`` estimator: the global batch is the baseline, no group, no critic);
- PPO's clipped token-level loss (``token_clip``), token mean.
"""

from rlhfkit.algorithms import PolicyGradient
from rlhfkit.engine.pg_loop import run_policy_gradient

REINFORCE_PP = PolicyGradient(advantage="reinforce_pp", policy_loss="token_clip")


def train(ctx) -> None:
    run_policy_gradient(ctx, REINFORCE_PP)
