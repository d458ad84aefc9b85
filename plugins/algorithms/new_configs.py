"""Settings of GRPO, REINFORCE++ and ReMax (``[algorithms.grpo]``, ``[algorithms.reinforce_pp]``,
``[algorithms.remax]``).  Their defaults follow each paper; every shared key is in :class:`RLConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.engine.config import RLConfig


@dataclass
class GRPOConfig(RLConfig):
    k: int = 4
    """Completions per prompt (the group whose mean and std normalise the rewards)."""
    kl_placement: str = "loss"
    """GRPO adds beta * KL to the loss instead of penalising the reward."""
    kl_estimator: str = "k3"
    """k3 in the loss: the gradient of the reverse KL(ref || pi), as in DeepSeekMath."""
    kl_coef: float = 0.04
    """beta: DeepSeekMath's 0.04."""
    loss_agg: str = "seq_mean_token_mean"
    """The paper's objective: mean over each completion's tokens, then over completions."""
    whiten_advantages: bool = False
    """Off: the group normalisation already scales advantages."""

    def __post_init__(self):
        super().__post_init__()
        self.check_groups(self.k)


@dataclass
class ReinforcePPConfig(RLConfig):
    gamma: float = 1.0
    """Discount of the token-level returns."""
    whiten_advantages: bool = False
    """Off: the estimator already whitens the returns over the whole batch (REINFORCE++'s baseline)."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.gamma <= 1:
            raise ValueError("gamma must be in [0, 1]")


@dataclass
class ReMaxConfig(RLConfig):
    kl_placement: str = "sequence_reward"
    """beta * sequence KL on the completion's reward (and on the greedy baseline's, alike)."""
    whiten_advantages: bool = False
    """Off, as in the paper: r - r(greedy) is the advantage."""
