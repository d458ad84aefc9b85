"""Built-in data sets: the synthetic gold-reward task, the arithmetic exact-match task and real preference data (files or the hub)."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import DatasetSpec
from rlhfkit_plugins.datasets.arithmetic import ArithmeticOptions
from rlhfkit_plugins.datasets.hh_rlhf import HHRLHFOptions
from rlhfkit_plugins.datasets.hub import HubOptions
from rlhfkit_plugins.datasets.preference_jsonl import PreferenceFileOptions
from rlhfkit_plugins.datasets.synthetic import SyntheticOptions


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            name="synthetic",
            default=True,  # a recipe without [data] name: no download, trains on two CPU cores
            options_class=SyntheticOptions,
            build="rlhfkit_plugins.datasets.synthetic:build",
            description="offline word-lexicon task with a known gold reward (over-optimisation visible)",
        )
    )
    register(
        DatasetSpec(
            name="hh_rlhf",
            options_class=HHRLHFOptions,
            build="rlhfkit_plugins.datasets.hh_rlhf:build",
            description="Anthropic HH-RLHF .jsonl/.jsonl.gz files (prompt = conversation up to the last assistant turn)",
        )
    )
    register(
        DatasetSpec(
            name="preference_jsonl",
            options_class=PreferenceFileOptions,
            build="rlhfkit_plugins.datasets.preference_jsonl:build",
            description="generic JSONL/JSON/Parquet with prompt/chosen/rejected (TRL standard or conversational)",
        )
    )
    register(
        DatasetSpec(
            name="arithmetic",
            options_class=ArithmeticOptions,
            build="rlhfkit_plugins.datasets.arithmetic:build",
            description="offline additions ('7 + 5 =') with noisy SFT answers; gold = exact match (fn:arith_exact)",
        )
    )
    register(
        DatasetSpec(
            name="hub",
            options_class=HubOptions,
            build="rlhfkit_plugins.datasets.hub:build",
            description="a hub preference data set through `datasets` (online only)",
        )
    )


