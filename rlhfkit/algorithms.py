"""What a policy-gradient algorithm is made of (no torch here: algorithm plugins import this at load time).

An algorithm such as PPO or GRPO is a :class:`PolicyGradient` composition of registered parts (an advantage
estimator, a policy loss, a loss aggregation, a KL estimator and placement from its config) run by the one
shared loop in :mod:`rlhfkit.engine.pg_loop`.  See docs/writing-algorithms.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyGradient:
    """A policy-gradient algorithm as parts.  The KL estimator, its placement, beta, the loss aggregation,
    epochs, minibatches and whitening come from the algorithm's config (they are grid axes)."""

    advantage: str
    """Registered advantage estimator (``rlhfkit plugins``: kind ``advantage_estimator``)."""
    policy_loss: str
    """Registered policy loss (kind ``policy_loss``)."""
    critic: bool = False
    """Train a critic (value model) with the clipped value loss; needs ``AlgorithmSpec.needs_value_model``."""
    samples_per_prompt: str | None = None
    """Name of the config field holding k, the completions per prompt (``"k"``); ``None``: one each."""


__all__ = ["PolicyGradient"]
