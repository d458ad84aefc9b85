"""REINFORCE++ settings (the recipe's ``[algorithms.reinforce_pp]`` table); defaults from Hu (2025)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.engine.config import RLConfig


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
