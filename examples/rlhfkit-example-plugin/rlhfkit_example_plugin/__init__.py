"""An example third-party rlhfkit plugin: the model for plugin authors.

It registers these through the ``rlhfkit`` entry-point group (see ``setup.cfg``):

* ``critic-full``, a memory strategy *part*: combined with ``lora`` (``"lora+critic-full"``) the policy trains
  LoRA adapters while PPO's critic (value model) trains all of its weights.  A critic starts from the reward
  model and has to learn a new head and new values quickly; full training often fits it better than a
  low-rank update, at the cost of one full set of optimizer states for the critic only.
* ``adamw8bit``, a memory strategy part that changes the cell's *model set* rather than the plan's flags:
  every trained model (policy, critic) steps with bitsandbytes' 8-bit AdamW, whose two moments take 1 byte
  each (plus an fp32 scale per 256 values) instead of 4.  It overrides ``MemoryStrategy.shape``: the cell
  builds the optimizer it names and ``rlhfkit plan`` sizes the state it declares, with no edit of rlhfkit.
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

from rlhfkit.cellspec.modelset import OptimizerChoice
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


# bitsandbytes' 8-bit optimizers: two uint8 moments + one fp32 absmax per block of 256 values per moment;
# tensors under 4096 elements keep 32-bit states (``min_8bit_size``), checked on bitsandbytes 0.50: a
# 4096 x 512 weight held state1/state2 uint8 of 2,097,152 each and absmax1/absmax2 fp32 of 8,192 each.
EIGHT_BIT_STATE_BYTES = 2 + 2 * 4 / 256
EIGHT_BIT_MIN_NUMEL = 4096


def adamw8bit_optimizer(params, lr, weight_decay, eps):
    """The optimizer the cell builds for each trained model under ``adamw8bit`` (bitsandbytes imported here,
    at build time, never when rlhfkit starts)."""
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, eps=eps)


class AdamW8bit(MemoryStrategy):
    """8-bit AdamW states for every trained model: the optimizer part of the memory shrinks about 4x."""

    name = "adamw8bit"
    description = "bitsandbytes 8-bit AdamW for the trained models: ~2 bytes of optimizer state per parameter, not 8"

    def apply(self, plan) -> None:
        pass  # nothing in the plan's flags: the effect is on the model set (shape)

    def check(self, plan) -> None:
        if plan.zero_stage:
            raise ValueError(
                "'adamw8bit' cannot be combined with a ZeRO stage: DeepSpeed hands its client optimizer one flat "
                "fp32 partition per engine, which this part does not size or test; use it without 'zero2'/'zero3'"
            )

    def shape(self, model_set) -> None:
        for role in model_set.trained():
            role.optimizer = OptimizerChoice(
                name="adamw8bit",
                factory=adamw8bit_optimizer,
                state_bytes=EIGHT_BIT_STATE_BYTES,
                small_tensor_state_bytes=8.0,
                min_state_numel=EIGHT_BIT_MIN_NUMEL,
                step_temporary_bytes=0.0,  # bitsandbytes steps tensor by tensor: no copy of the whole state
                preimport=("bitsandbytes",),
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
    register(AdamW8bit())


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
