"""GRPO (Shao et al., 2024, DeepSeekMath): group-normalised advantages, token-level clipped loss, KL in the loss.

- k completions per prompt; A_i = (r_i - mean of the group) / (std of the group + eps), the same for every
  token of completion i (``grpo`` estimator);
- PPO's clipped surrogate per token (``token_clip``), each completion's tokens averaged, then the completions
  (``loss_agg = "seq_mean_token_mean"``, the paper's 1/G sum_i 1/|o_i| sum_t);
- the KL penalty beta * k3 sits in the loss (``kl_placement = "loss"``, ``kl_estimator = "k3"``): its gradient
  is that of the reverse KL(ref || pi), labelled so in reports.  Rewards carry no KL.
"""

from rlhfkit.algorithms import PolicyGradient
from rlhfkit.engine.pg_loop import run_policy_gradient

GRPO = PolicyGradient(advantage="grpo", policy_loss="token_clip", samples_per_prompt="k")


def train(ctx) -> None:
    run_policy_gradient(ctx, GRPO)
