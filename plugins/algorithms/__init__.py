"""Built-in RL algorithms: compositions over the shared loop (rlhfkit/engine/pg_loop.py); configs import no torch."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import AlgorithmSpec
from rlhfkit_plugins.algorithms.metrics import register_metrics  # noqa: F401  (hookimpls of this plugin)
from rlhfkit_plugins.algorithms.parts import (  # noqa: F401
    register_advantage_estimators,
    register_kl_estimators,
    register_policy_losses,
)
from rlhfkit_plugins.algorithms.dpo_config import DPOConfig, OnlineDPOConfig
from rlhfkit_plugins.algorithms.grpo_config import GRPOConfig
from rlhfkit_plugins.algorithms.reinforce_pp_config import ReinforcePPConfig
from rlhfkit_plugins.algorithms.remax_config import ReMaxConfig
from rlhfkit_plugins.algorithms.ppo_config import PPOConfig
from rlhfkit_plugins.algorithms.rloo_config import RLOOConfig


@hookimpl
def register_algorithms(register):
    register(
        AlgorithmSpec(
            name="ppo",
            default_in_grid=True,  # the grid of a recipe without [grid] algorithms: the classic pair
            config_class=PPOConfig,
            trainer="rlhfkit_plugins.algorithms.ppo:train",
            description="PPO with a critic initialised from the reward model, GAE, clipped losses",
            needs_value_model=True,
        )
    )
    register(
        AlgorithmSpec(
            name="rloo",
            default_in_grid=True,  # the grid of a recipe without [grid] algorithms: the classic pair
            config_class=RLOOConfig,
            trainer="rlhfkit_plugins.algorithms.rloo:train",
            description="REINFORCE leave-one-out: k samples per prompt, no critic",
            samples_per_prompt_field="k",
        )
    )
    register(
        AlgorithmSpec(
            name="grpo",
            config_class=GRPOConfig,
            trainer="rlhfkit_plugins.algorithms.grpo:train",
            description="GRPO: k samples, group mean/std advantages, token clip, k3 KL in the loss (reverse-KL)",
            samples_per_prompt_field="k",
        )
    )
    register(
        AlgorithmSpec(
            name="reinforce_pp",
            config_class=ReinforcePPConfig,
            trainer="rlhfkit_plugins.algorithms.reinforce_pp:train",
            description="REINFORCE++: k1 KL in token rewards, token-level returns whitened over the batch",
        )
    )
    register(
        AlgorithmSpec(
            name="remax",
            config_class=ReMaxConfig,
            trainer="rlhfkit_plugins.algorithms.remax:train",
            description="ReMax: REINFORCE with a greedy completion's reward as baseline (extra generation)",
        )
    )
    register(
        AlgorithmSpec(
            name="online_dpo",
            config_class=OnlineDPOConfig,
            trainer="rlhfkit_plugins.algorithms.online_dpo:train",
            description="online DPO: 2 samples per prompt, the reward model picks chosen/rejected, DPO loss vs reference",
        )
    )
    register(
        AlgorithmSpec(
            name="dpo",
            config_class=DPOConfig,
            trainer="rlhfkit_plugins.algorithms.dpo:train",
            description="DPO (offline): the task's preference pairs, DPO loss vs reference, no generation",
        )
    )
