"""The registered parts of policy-gradient algorithms (estimators, losses, aggregations, KL estimators).

Each part is a pure function in :mod:`rlhfkit.engine.functional`, registered by a lazy ``"module:attr"``
reference so that loading plugins never imports torch.
"""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import AdvantageEstimatorSpec, KLEstimatorSpec, LossAggregationSpec, PolicyLossSpec

F = "rlhfkit.engine.functional:"

REWARD_PLACEMENTS = ("token_reward", "sequence_reward")


@hookimpl
def register_advantage_estimators(register):
    register(AdvantageEstimatorSpec("gae", F + "gae_advantages", reward_level="token", needs_critic=True,
                                    description="GAE(gamma, lambda) with a learned critic (PPO)"))
    register(AdvantageEstimatorSpec("rloo", F + "rloo_advantages", needs_groups=True,
                                    description="leave-one-out baseline: mean reward of the other k-1 samples"))
    register(AdvantageEstimatorSpec("grpo", F + "grpo_advantages", needs_groups=True,
                                    description="group mean/std normalisation over the k samples of a prompt"))
    register(AdvantageEstimatorSpec("reinforce_pp", F + "reinforce_pp_advantages", reward_level="token",
                                    description="REINFORCE++: token-level returns, whitened over the batch"))
    register(AdvantageEstimatorSpec("remax", F + "remax_advantages", needs_greedy_baseline=True,
                                    description="ReMax: reward minus the reward of a greedy completion"))


@hookimpl
def register_policy_losses(register):
    register(PolicyLossSpec("token_clip", F + "token_clip_loss", level="token",
                            description="PPO clipped surrogate per token"))
    register(PolicyLossSpec("sequence_clip", F + "sequence_clip_loss", level="sequence",
                            description="clipped REINFORCE on the sequence log-prob ratio (RLOO)"))
    register(PolicyLossSpec("vanilla_pg", F + "vanilla_pg_loss", level="token",
                            description="plain policy gradient -A log pi per token"))
    register(LossAggregationSpec("token_mean", F + "agg_token_mean", description="mean over all real tokens"))
    register(LossAggregationSpec("seq_mean_token_sum", F + "agg_seq_mean_token_sum",
                                 description="sum over a completion's tokens, mean over completions"))
    register(LossAggregationSpec("seq_mean_token_mean", F + "agg_seq_mean_token_mean",
                                 description="mean over a completion's tokens, then over completions"))


@hookimpl
def register_kl_estimators(register):
    register(KLEstimatorSpec("k1", F + "kl_k1", placements=REWARD_PLACEMENTS, auto_for=REWARD_PLACEMENTS + ("none",), gradient_label="KL(pi||ref)",
                             description="log-ratio; in the (detached) reward its gradient is that of KL(pi||ref)"))
    register(KLEstimatorSpec("k2", F + "kl_k2", placements=("loss",), auto_for=("loss",), gradient_label="KL(pi||ref)",
                             description="0.5 log-ratio^2; in the loss its gradient is that of KL(pi||ref)"))
    register(KLEstimatorSpec("k3", F + "kl_k3", placements=("loss",), gradient_label="reverse-KL gradient (GRPO)",
                             description="(r-1)-log r, clamped as verl; in the loss: gradient of KL(ref||pi)"))
