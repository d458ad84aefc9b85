"""GRPO settings (the recipe's ``[algorithms.grpo]`` table); defaults from DeepSeekMath (Shao et al., 2024)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.engine.config import KLPlacement, LossAggregation, RLConfig


@dataclass
class GRPOConfig(RLConfig):
    k: int = 4
    """Completions per prompt (the group whose mean and std normalise the rewards)."""
    kl_placement: KLPlacement = "loss"
    """GRPO adds beta * KL to the loss instead of penalising the reward."""
    kl_estimator: str = "k3"
    """k3 in the loss: the gradient of the reverse KL(ref || pi), as in DeepSeekMath."""
    kl_coef: float = 0.04
    """beta: DeepSeekMath's 0.04."""
    loss_agg: LossAggregation = "seq_mean_token_mean"
    """The paper's objective: mean over each completion's tokens, then over completions."""
    whiten_advantages: bool = False
    """Off: the group normalisation already scales advantages."""

    def __post_init__(self):
        super().__post_init__()
        self.check_groups(self.k)
