"""The planner's model states against DeepSpeed's own estimators (estimate_zero2/zero3_model_states_mem_needs),
6.7B and 8B configurations on 1, 2 and 8 GPUs: full fine-tuning, offload, LoRA.

Model states of the trained policy per GPU: its weights, optimizer state (+ fp32 master partition), gradient
partition and the step's fp32 gradient copy.  DeepSpeed's ZeRO-3 estimate adds 4 x the largest layer (16-bit
parameters and gradients of the largest module gathered whole); the planner counts gathered modules per phase
instead, so the same term is added to its side here.  LoRA: DeepSpeed's estimate of the trainable (adapter)
parameters plus the frozen base, which the estimator does not know (bf16: 2 B/param, ZeRO-3: 1/N of it).
"""

from __future__ import annotations

import textwrap

import pytest

deepspeed = pytest.importorskip("deepspeed")
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: E402
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs  # noqa: E402

from rlhfkit.planner import largest_module_parameters, plan_cell  # noqa: E402
from rlhfkit.recipe import Cell, load_recipe  # noqa: E402

MODELS = {"6.7b": "deepseek:deepseek-coder-6.7b", "8b": "llama:llama-3-8b"}
STRATEGIES = ["zero2", "zero2+offload", "zero3", "zero3+offload", "zero2+lora", "zero3+lora"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    rows = "".join(f'[[models]]\nname = "{k}"\npolicy = "{v}"\nreward = "{v}"\n' for k, v in MODELS.items())
    text = textwrap.dedent(f"""
        name = "ds_estimators"
        [data]
        name = "synthetic"
        {{rows}}
        [grid]
        algorithms = ["rloo"]
        memory = {STRATEGIES!r}
        seeds = [0]
        [rl]
        batch_size = 8
        response_length = 16
        [run]
        device = "cuda"
        precision = "bf16"
        """).replace("{rows}", rows).replace("'", '"')
    path = tmp_path_factory.mktemp("ds") / "recipe.toml"
    path.write_text(text)
    return load_recipe(path)


def planner_states(recipe, model, memory, n):
    plan = plan_cell(recipe, Cell(model, "rloo", memory, 0), "A100-80GB", n)
    policy = plan.assumptions["model_states"]["policy"]
    arch_params = plan.assumptions["policy_parameters"]
    return sum(policy.values()), plan.assumptions["trainable"]["policy"], arch_params


def deepspeed_states(memory, total, trainable, largest, n):
    offload = "offload" in memory
    if "zero3" in memory:
        gpu = estimate_zero3_model_states_mem_needs(trainable, largest, n, 1, cpu_offload=offload,
                                                    cpu_offload_params=offload, zero_init=True)[1]
    else:
        gpu = estimate_zero2_model_states_mem_needs(trainable, n, 1, cpu_offload=offload)[1]
    if "lora" in memory:  # the frozen bf16 base beside the adapters
        gpu += 2 * (total - trainable) / (n if "zero3" in memory else 1)
    return gpu


@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("memory", STRATEGIES)
def test_model_states_agree_with_deepspeeds_estimators(recipe, model, memory, n):
    from rlhfkit.cellspec.arch import cell_architecture

    planned, trainable, total = planner_states(recipe, model, memory, n)
    arch = cell_architecture(recipe, model, "policy")
    largest = largest_module_parameters(arch)
    if "zero3" in memory:
        planned += 4 * (largest if "lora" not in memory else 0)  # gathered 16-bit params + grads of one module
    expected = deepspeed_states(memory, total, trainable, largest if "lora" not in memory else 0, n)
    error = (planned - expected) / expected
    # ZeRO-3 without offload on 8 GPUs: DeepSpeed's code keeps a 16-bit gradient partition
    # (grad_partitions_flat_buffer, 2 B/param / N) and makes the step's fp32 copy of the whole partition
    # (4 B/param / N, under sub_group_size), 20 B/param / N in all; its estimator counts 18.
    tolerance = 0.12 if (memory == "zero3" and n == 8) else 0.10
    assert abs(error) <= tolerance, (model, memory, n, planned / 2**30, expected / 2**30, error)
