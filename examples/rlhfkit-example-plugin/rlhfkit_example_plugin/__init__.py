"""An example third-party rlhfkit plugin: the model for plugin authors.

It registers these through the ``rlhfkit`` entry-point group (see ``setup.cfg``):

* ``critic-full``, a memory strategy *part*: combined with ``lora`` (``"lora+critic-full"``) the policy trains
  LoRA adapters while PPO's critic (value model) trains all of its weights.  A critic starts from the reward
  model and has to learn a new head and new values quickly; full training often fits it better than a
  low-rank update, at the cost of one full set of optimizer states for the critic only.
* ``jsonl``, a reporter that writes the run's results table as ``results.jsonl`` (one JSON object per cell),
  handy for ``jq`` or for loading into another tool.
* ``group_reinforce``, an RL algorithm (``group_reinforce.py``): REINFORCE with a group-mean baseline, a
  composition of registered parts over rlhfkit's shared loop, with its own advantage estimator ``group_mean``.
  It passes ``rlhfkit.testing.check_algorithm("group_reinforce")``.

This module is imported every time ``rlhfkit`` starts (``rlhfkit --help`` included), so it imports nothing
heavy at module level: only ``rlhfkit.hookspecs`` and ``rlhfkit.registry``, which are torch-free.  Anything
heavy (torch, transformers, pandas) belongs inside the functions that need it.
"""

from __future__ import annotations

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import AdvantageEstimatorSpec, AlgorithmSpec, MemoryStrategy, Reporter
from rlhfkit_example_plugin.group_reinforce import GroupReinforceConfig

__version__ = "0.1.0"


class CriticFull(MemoryStrategy):
    """Train the critic's full weights while the policy uses LoRA."""

    name = "critic-full"
    description = "with lora: PPO's critic trains all its weights, the policy trains LoRA adapters"

    def apply(self, plan) -> None:
        # ``value_model_lora=None`` means "follow plan.lora"; False forces a fully trained critic.
        plan.value_model_lora = False

    def check(self, plan) -> None:
        # check() runs after every part has applied, so the order in "critic-full+lora" does not matter.
        if not plan.uses_lora:
            raise ValueError(
                "'critic-full' only makes sense with LoRA (the critic is already fully trained otherwise); "
                "combine it with a LoRA part, e.g. 'lora+critic-full'"
            )


def write_jsonl(context):
    """Write ``context.results`` (a pandas DataFrame, one row per cell) to ``<output_dir>/results.jsonl``."""
    path = context.output_dir / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    context.results.to_json(path, orient="records", lines=True, date_format="iso")
    return [path]


@hookimpl
def register_memory_strategies(register):
    register(CriticFull())


@hookimpl
def register_reporters(register):
    register(
        Reporter(
            name="jsonl",
            write=write_jsonl,
            description="results.jsonl: one JSON object per cell",
            default=False,
        )
    )


@hookimpl
def register_advantage_estimators(register):
    register(AdvantageEstimatorSpec("group_mean", "rlhfkit_example_plugin.group_reinforce:group_mean_advantages",
                                    needs_groups=True, description="reward minus the mean reward of its prompt's group"))


@hookimpl
def register_algorithms(register):
    register(
        AlgorithmSpec(
            name="group_reinforce",
            config_class=GroupReinforceConfig,
            trainer="rlhfkit_example_plugin.group_reinforce:train",
            description="REINFORCE with a group-mean baseline and the plain policy-gradient loss (example)",
            samples_per_prompt_field="k",
        )
    )
