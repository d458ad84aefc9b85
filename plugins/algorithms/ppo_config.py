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
    """Scale of the value loss.  The critic has its own AdamW optimizer, and Adam's update is invariant to a
    constant scale of the loss (up to its eps and to gradient clipping, which a smaller loss reaches less
    often), so this is almost a no-op (10x vf_coef: a 1.18x larger critic update on the tiny test models, through
    eps alone): it does NOT trade the critic off against the policy as it does with one shared optimizer.  Kept as a loss scale so results stay the same; tune ``value_learning_rate`` to change
    how fast the critic learns (tests/test_engine_steps.py shows the two effects)."""
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
