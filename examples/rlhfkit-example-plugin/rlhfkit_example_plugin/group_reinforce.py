"""``group_reinforce``: REINFORCE with a group-mean baseline and the plain policy-gradient loss.

Written only against rlhfkit's public contract (docs/writing-algorithms.md): a ``PolicyGradient`` composition of
registered parts run by the shared loop.  k completions per prompt; each completion's advantage is its reward
minus the mean reward of its prompt's k completions (no std division, unlike GRPO; the sample itself stays in
its baseline, unlike RLOO); the loss is -A log pi per token.  Its own part, the ``group_mean`` estimator, is
registered beside it.  No torch import at module level: rlhfkit imports this module at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.algorithms import PolicyGradient
from rlhfkit.engine.config import KLPlacement, RLConfig

GROUP_REINFORCE = PolicyGradient(advantage="group_mean", policy_loss="vanilla_pg", samples_per_prompt="k")


@dataclass
class GroupReinforceConfig(RLConfig):
    k: int = 4
    """Completions per prompt: the group whose mean reward is the baseline."""
    kl_placement: KLPlacement = "sequence_reward"
    """beta * sequence k1 KL on each completion's reward."""
    whiten_advantages: bool = False
    """Off: the baseline already centres the advantages."""

    def __post_init__(self):
        super().__post_init__()
        self.check_groups(self.k)


def group_mean_advantages(*, seq_rewards, k: int, **_):
    """A_i = r_i - mean of the k rewards of its prompt; ``(B,)`` prompt-major -> ``((B,), None)``."""
    grouped = seq_rewards.view(-1, k)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1), None


def train(ctx) -> None:
    from rlhfkit.engine.pg_loop import run_policy_gradient  # torch: only inside the cell

    run_policy_gradient(ctx, GROUP_REINFORCE)
