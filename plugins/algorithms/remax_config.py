"""ReMax settings (the recipe's ``[algorithms.remax]`` table); defaults from Li et al. (2023)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.engine.config import KLPlacement, RLConfig


@dataclass
class ReMaxConfig(RLConfig):
    kl_placement: KLPlacement = "sequence_reward"
    """beta * sequence KL on the completion's reward (and on the greedy baseline's, alike)."""
    whiten_advantages: bool = False
    """Off, as in the paper: r - r(greedy) is the advantage."""
