"""Settings of DPO and online DPO (``[algorithms.dpo]``, ``[algorithms.online_dpo]``); no torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.engine.config import RLConfig

DPO_LOSS_TYPES = ("sigmoid", "hinge")  # as rlhfkit.engine.functional.DPO_LOSS_TYPES (which imports torch)


@dataclass
class DPOConfig(RLConfig):
    """Each step trains on ``batch_size / 2`` pairs (``batch_size`` completions: matched episodes with the
    policy-gradient arms), ``num_epochs`` x ``num_minibatches`` optimizer steps of whole pairs."""

    kl_coef: float = 0.1
    """DPO's beta (TRL's default 0.1): the weight of the implicit KL leash to the reference.  Sweeping
    ``kl_coef`` in a grid therefore sweeps beta for DPO as it sweeps the KL penalty for the others."""
    kl_placement: Literal["token_reward", "sequence_reward", "loss", "none"] = "none"
    """Must be ``"none"``: beta already ties the policy to the reference; ``objective/kl`` still monitors
    the k1 KL of online samples, and evaluations measure KL to SFT as for every algorithm."""
    loss_type: Literal["sigmoid", "hinge"] = "sigmoid"
    """``"sigmoid"`` (DPO: -log sigmoid(beta h)) or ``"hinge"`` (SLiC: max(0, 1 - beta h))."""

    def __post_init__(self):
        super().__post_init__()
        if self.kl_placement != "none":
            raise ValueError(f"kl_placement must be 'none' for DPO (got {self.kl_placement!r}): its beta "
                             "(kl_coef) is already the KL leash to the reference")
        if self.adaptive_kl_target is not None:
            raise ValueError("adaptive_kl_target is not supported by DPO: kl_coef is DPO's fixed beta")
        if self.kl_coef <= 0:
            raise ValueError(f"kl_coef (DPO's beta) must be > 0 (got {self.kl_coef})")
        if self.batch_size % 2 or (self.batch_size // 2) % self.num_minibatches:
            raise ValueError(f"batch_size ({self.batch_size}) must be 2 x pairs, and the pairs (batch_size / 2) "
                             f"divisible by num_minibatches ({self.num_minibatches})")


@dataclass
class OnlineDPOConfig(DPOConfig):
    """Online DPO: ``batch_size / 2`` prompts x 2 samples per step; the reward model (score minus the
    missing-EOS penalty) picks chosen and rejected.  A pair whose two scores are equal is skipped (no
    preference to learn) and counted in ``online_dpo/tie_fraction``."""
