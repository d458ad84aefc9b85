"""RLOO settings (the recipe's ``[algorithms.rloo]`` table)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.engine.config import KLPlacement, RLConfig


@dataclass
class RLOOConfig(RLConfig):
    k: int = 4
    """Completions sampled per prompt; each one's baseline is the mean reward of the other k - 1."""
    kl_placement: KLPlacement = "sequence_reward"
    """RLOO puts beta * sequence KL on each completion's reward (see ``RLConfig.kl_placement``)."""
    kl_in_reward: bool = True
    """Kept for old recipes: False is ``kl_placement = "none"`` (no KL term at all)."""

    def __post_init__(self):
        if not self.kl_in_reward:
            self.kl_placement = "none"
        super().__post_init__()
        self.check_groups(self.k)
