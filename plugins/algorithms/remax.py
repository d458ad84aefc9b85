"""ReMax (Li et al., 2024): REINFORCE with the reward of a greedy completion of the same prompt as baseline.

- one sampled completion per prompt, reward = score - beta * sequence k1 KL (``sequence_reward``);
- baseline: the same reward of the greedy (argmax) completion of the prompt (``remax`` estimator).  The greedy
  completion is extra generation and scoring: the ledger counts its tokens (not as episodes);
- REINFORCE on the completion's log-prob (``sequence_clip``; with one epoch the ratio is 1 and the gradient
  is plain REINFORCE), no critic, advantages not whitened.
"""

from rlhfkit.algorithms import PolicyGradient
from rlhfkit.engine.pg_loop import run_policy_gradient

REMAX = PolicyGradient(advantage="remax", policy_loss="sequence_clip")


def train(ctx) -> None:
    run_policy_gradient(ctx, REMAX)
