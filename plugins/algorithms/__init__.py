"""Built-in RL algorithms: one readable file each (ppo.py, rloo.py); configs import no torch."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import AlgorithmSpec
from rlhfkit_plugins.algorithms.metrics import register_metrics  # noqa: F401  (hookimpls of this plugin)
from rlhfkit_plugins.algorithms.parts import (  # noqa: F401
    register_advantage_estimators,
    register_kl_estimators,
    register_policy_losses,
)
from rlhfkit_plugins.algorithms.ppo_config import PPOConfig
from rlhfkit_plugins.algorithms.rloo_config import RLOOConfig


@hookimpl
def register_algorithms(register):
    register(
        AlgorithmSpec(
            name="ppo",
            config_class=PPOConfig,
            trainer="rlhfkit_plugins.algorithms.ppo:train",
            description="PPO with a critic initialised from the reward model, GAE, clipped losses",
            needs_value_model=True,
        )
    )
    register(
        AlgorithmSpec(
            name="rloo",
            config_class=RLOOConfig,
            trainer="rlhfkit_plugins.algorithms.rloo:train",
            description="REINFORCE leave-one-out: k samples per prompt, no critic",
            samples_per_prompt_field="k",
        )
    )
