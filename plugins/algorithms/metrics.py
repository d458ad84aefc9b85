"""Metric specs of the keys every cell writes (CONTRACT §6): label, unit, and which direction is better."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import MetricSpec

BUILTIN_METRICS = (
    MetricSpec("objective/gold", "gold reward (training batch)", "", True, "true reward of the rollout's completions"),
    MetricSpec("objective/scores", "proxy reward (training batch)", "", True, "reward-model score after EOS penalty"),
    MetricSpec("objective/kl", "KL to reference (k1, sequence)", "nats", None, "monitoring: always the k1 sequence KL"),
    MetricSpec("objective/kl_penalty", "KL penalty optimised", "nats", None,
               "the KL term the algorithm optimises against, where it is placed, with its estimator"),
    MetricSpec("eval/gold", "gold reward (held out)", "", True, "true reward on held-out prompts"),
    MetricSpec("eval/kl", "KL to SFT (held out)", "nats", None, "a budget, not a score: no verdict"),
    MetricSpec("eval/score", "proxy reward (held out)", "", True, "reward-model score on held-out prompts"),
    MetricSpec("gold_final", "final gold reward", "", True, "held-out gold reward at the end of training"),
    MetricSpec("kl_final", "final KL to SFT", "nats", None, "held-out KL at the end of training"),
    MetricSpec("peak_memory_bytes", "peak memory", "bytes", False, "highest measured memory of any phase"),
    MetricSpec("episodes_per_s", "episodes per second", "1/s", True, "training throughput"),
    MetricSpec("tokens_per_s", "tokens per second", "1/s", True, "generated tokens per training second"),
    MetricSpec("ledger/flops", "estimated FLOPs", "FLOP", None, "2N per forward token + 4N per backward token"),
    MetricSpec("ledger/updates", "policy updates", "", None, "policy optimizer steps"),
    MetricSpec("loss/policy", "policy loss", "", None, "the aggregated policy loss"),
    MetricSpec("loss/value", "value loss", "", None, "the critic's clipped value loss"),
    MetricSpec("policy/entropy", "entropy", "nats/token", None, "policy entropy on the training minibatches"),
)


@hookimpl
def register_metrics(register):
    for spec in BUILTIN_METRICS:
        register(spec)
