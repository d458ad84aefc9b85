"""PPO for RLHF: GAE advantages from a critic, PPO's clipped token-level loss, clipped value loss.

Follows "The N Implementation Details of RLHF with PPO" (Huang et al., 2024) and TRL's PPOv2:
- the critic is initialised from the reward model (a sequence classifier read at every token);
- the reward is the reward-model score at the last real token minus beta * KL(policy || reference) per token
  (``kl_placement = "token_reward"``, k1);
- completions without EOS lose ``missing_eos_penalty`` (done in the shared rollout);
- GAE (gamma, lambda) over response tokens, advantages whitened per batch, rewards optionally whitened;
- several epochs over shuffled minibatches; log-probs use logits / temperature, exactly as sampled.
The loop itself is rlhfkit/engine/pg_loop.py, shared by every policy-gradient algorithm.
"""

from rlhfkit.algorithms import PolicyGradient
from rlhfkit.engine.pg_loop import critic_values, run_policy_gradient  # noqa: F401  (critic_values: old import path)

PPO = PolicyGradient(advantage="gae", policy_loss="token_clip", critic=True)


def train(ctx) -> None:
    run_policy_gradient(ctx, PPO)
