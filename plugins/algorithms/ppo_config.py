"""PPO settings (the recipe's ``[algorithms.ppo]`` table)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.engine.config import RLConfig


@dataclass
class PPOConfig(RLConfig):
    num_epochs: int = 4
    """PPO epochs over each rollout batch."""
    num_minibatches: int = 4
    """Minibatches per epoch."""
    gamma: float = 1.0
    """Discount factor of GAE."""
    lam: float = 0.95
    """Lambda of GAE."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    cliprange_value: float = 0.2
    """Clip range of the value prediction around its rollout value."""
    value_learning_rate: float | None = None
    """Learning rate of the critic; ``None`` uses ``learning_rate``."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("gamma and lam must be in [0, 1]")
        if self.vf_coef < 0:
            raise ValueError("vf_coef must be >= 0")
        if self.cliprange_value <= 0:
            raise ValueError("cliprange_value must be > 0")
