"""Built-in data sets."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import DatasetSpec
from rlhfkit_plugins.datasets.synthetic import SyntheticOptions


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            name="synthetic",
            options_class=SyntheticOptions,
            build="rlhfkit_plugins.datasets.synthetic:build",
            description="offline word-lexicon task with a known gold reward (over-optimisation visible)",
        )
    )
