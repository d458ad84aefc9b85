"""RLOO settings (the recipe's ``[algorithms.rloo]`` table)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.engine.config import RLConfig


@dataclass
class RLOOConfig(RLConfig):
    k: int = 4
    """Completions sampled per prompt; each one's baseline is the mean reward of the other k - 1."""
    kl_in_reward: bool = True
    """Subtract beta * sequence KL from the reward (as in the RLOO paper); otherwise no KL term at all."""

    def __post_init__(self):
        super().__post_init__()
        if self.k < 2:
            raise ValueError("k must be >= 2 (the leave-one-out baseline needs another sample)")
        if self.batch_size % self.k:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by k ({self.k})")
        if (self.batch_size // self.num_minibatches) % self.k:
            raise ValueError("each minibatch must hold whole groups of k completions")
