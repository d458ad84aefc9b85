"""The model set: one description of a cell's models, built by the cell and sized by the planner.

Pure rules first, then the builder against the planner on tiny saved models (same trainable parameters, same
stored bytes), then a strategy that only shapes the model set (the example plugin's ``adamw8bit``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rlhfkit.cellspec.build import build_models, deepspeed_config
from rlhfkit.cellspec.modelset import derive_model_set, zero_bucket_elements
from rlhfkit.memory import build_memory_plan, strategy_parts
from rlhfkit.plugins import get_registry
from rlhfkit.recipe import Cell, load_recipe


def model_set(memory: str, algorithm: str = "ppo", precision: str = "fp32", cuda: bool = False, arch=None):
    plan = build_memory_plan(memory)
    spec = get_registry().get("algorithm", algorithm)
    return derive_model_set(plan, spec, precision, cuda, arch or {"num_parameters": 1000, "hidden_size": 8},
                            strategy_parts(memory))


def test_full_ppo_has_four_separate_models():
    ms = model_set("full")
    assert [r.role for r in ms.roles()] == ["policy", "reference", "reward", "critic"]
    assert ms.policy.trainable == "full" and ms.reference.trainable == "none" and ms.reference.separate
    assert (ms.critic.start, ms.critic.head, ms.critic.trainable) == ("reward_model", "classifier", "full")
    assert ms.critic.modules_to_save == ()  # fully trained: the score head trains anyway
    assert ms.deepspeed is None and ms.zero_stage == 0


def test_lora_reference_is_the_base_and_critic_follows_with_its_score_head():
    ms = model_set("lora")
    assert not ms.reference.separate and ms.reference.adapters_off_of == "policy"
    assert ms.critic.trainable == "lora" and ms.critic.modules_to_save == ("score",)
    assert ms.policy.lora.r == 16 and ms.policy.lora.alpha == 32


def test_rloo_has_no_critic():
    assert model_set("lora", "rloo").critic is None


def test_qlora_quantises_lora_bases_only_and_bf16_stores_frozen_models_in_bf16():
    ms = model_set("qlora", precision="bf16")
    assert ms.policy.quantization == ms.critic.quantization == "nf4" and ms.reward.quantization is None
    assert ms.policy.dtype == ms.reward.dtype == "bf16"
    full = model_set("full", precision="bf16")
    assert full.policy.dtype == "fp32" and full.reference.dtype == "bf16"  # trained full weights load in fp32
    assert model_set("full", precision="fp16").reference.dtype == "fp32"  # no fp16 matmuls on the CPU
    assert model_set("full", precision="fp16", cuda=True).reference.dtype == "fp16"


def test_zero3_shards_frozen_models_as_inference_engines():
    ms = model_set("zero3+offload")
    assert ms.reward.zero_stage == ms.reference.zero_stage == 3 and ms.reward.offload_parameters
    assert ms.policy.offload_optimizer and not ms.reward.offload_optimizer
    assert model_set("zero2").reward.zero_stage == 0  # replicated


def test_the_deepspeed_config_comes_from_the_model_set_settings():
    arch = {"num_parameters": 90432, "hidden_size": 64}
    ms = model_set("zero3+offload", arch=arch, cuda=True)
    config = deepspeed_config(ms.deepspeed, SimpleNamespace(batch_size=8, num_minibatches=2, max_grad_norm=1.0))
    zero = config["zero_optimization"]
    assert zero["reduce_bucket_size"] == zero_bucket_elements(90432) == 90432
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64) and zero["stage3_param_persistence_threshold"] == 640
    assert zero["overlap_comm"] and zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert zero_bucket_elements(7 * 10**9) == 500_000_000


def test_a_zero_model_set_needs_the_policy_architecture():
    with pytest.raises(ValueError, match="architecture"):
        derive_model_set(build_memory_plan("zero2"), get_registry().get("algorithm", "ppo"))


# --- the builder builds what the planner sizes ------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Tiny SFT policy and reward model saved as the stages would save them."""
    from rlhfkit.testing import tiny_llama_config, tiny_models, tiny_task, tiny_tokenizer

    root = tmp_path_factory.mktemp("modelset")
    tokenizer = tiny_tokenizer(tiny_task())
    policy, _, reward, _ = tiny_models(tokenizer, False)
    policy.save_pretrained(root / "sft")
    reward.save_pretrained(root / "rm")
    arch = get_registry().get("model_adapter", "llama").architecture(tiny_llama_config(tokenizer).to_dict())
    return SimpleNamespace(sft=root / "sft", policy_start=root / "sft", reward_model=root / "rm"), arch


@pytest.mark.parametrize("memory", ["full", "lora", "lora+gc", "qlora", "lora(r=4,alpha=8,target_modules=q_proj|v_proj)"])
def test_built_models_match_the_planned_sizes(saved_models, small_recipe, memory):
    import torch

    from rlhfkit.planner import _size_role

    dirs, arch = saved_models
    recipe = load_recipe(small_recipe(algorithms=("ppo",)))
    ms = model_set(memory, arch=arch)
    built = dict(zip(("policy", "reference", "reward", "critic"), build_models(ms, recipe, "llama-tiny", dirs, "cpu")))
    assert (built["reference"] is None) == (not ms.reference.separate)
    targets = get_registry().get("model_adapter", "llama").lora_target_modules
    for role in ms.roles():
        model = built[role.role]
        if model is None:
            continue
        planned = _size_role(role, ms, arch, targets)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == planned.trainable, role.role
        if not role.quantization:
            # (peft's modules_to_save keeps the original score head beside its trainable copy: both counted)
            stored = sum(p.numel() * p.element_size() for p in model.parameters())
            assert stored == planned.weight_bytes, role.role
        assert all(not p.requires_grad for p in model.parameters()) == (not role.trained)
        assert model.is_gradient_checkpointing == (role.gradient_checkpointing and role.trained)
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


# --- a strategy that shapes the model set (examples/rlhfkit-example-plugin) --------------------------------


def _example_installed() -> bool:
    return "adamw8bit" in get_registry().entries["memory_strategy"]


needs_example = pytest.mark.skipif(not _example_installed(), reason="rlhfkit-example-plugin is not installed")


@needs_example
def test_adamw8bit_is_planned_from_the_model_set(small_recipe):
    from rlhfkit.planner import plan_cell

    recipe = load_recipe(small_recipe(algorithms=("ppo",)))
    full = plan_cell(recipe, Cell("llama-tiny", "ppo", "full", 1), "cpu", 1)
    eight = plan_cell(recipe, Cell("llama-tiny", "ppo", "adamw8bit", 1), "cpu", 1)
    # llama:tiny (H=64, I=128, 2 layers, 256-word vocabulary, tied embeddings): tensors of 4096 elements and
    # more get 8-bit states (embedding 16384, q/o 4096, gate/up/down 8192); k/v (2048), norms and the score
    # head (64) keep fp32 states.
    big = 16384 + 2 * (2 * 4096 + 3 * 8192)
    small_p = 2 * 2 * 2048 + 5 * 64
    per_param = 2 + 2 * 4 / 256
    expected = 2 * (big * per_param + small_p * 8) + 64 * 8  # policy and critic; + the critic's score head
    assert eight.parts["training"]["optimizer"] == int(expected)
    assert full.parts["training"]["optimizer"] == 8 * (2 * (big + small_p) + 64)
    assert eight.assumptions["model_set"]["policy"].endswith("adamw8bit")
    with pytest.raises(ValueError, match="'adamw8bit' cannot be combined with a ZeRO stage"):
        build_memory_plan("zero2+adamw8bit")


@needs_example
def test_adamw8bit_cell_trains_in_process():
    """Two PPO steps with the optimizers the model set names (bitsandbytes on the CPU)."""
    import bitsandbytes as bnb
    import torch
    from accelerate import Accelerator
    from engine_harness import tiny_models, tiny_task, tiny_tokenizer

    from rlhfkit.cellspec.build import build_context
    from rlhfkit.engine.context import MetricsLogger
    from rlhfkit.engine.memory_tracker import PhaseMemory
    from rlhfkit.registry import resolve

    spec = get_registry().get("algorithm", "ppo")
    ms = model_set("adamw8bit")
    task = tiny_task()
    tokenizer = tiny_tokenizer(task)
    config = spec.config_class(steps=2, batch_size=8, response_length=6, eval_every=100, eval_batch_size=4)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    ctx = build_context(config, accelerator, ms, tiny_models(tokenizer, True), tokenizer, task,
                        PhaseMemory(accelerator.device), MetricsLogger(None, None, None), 1000, algorithm="ppo")
    assert isinstance(ctx.policy_optimizer.optimizer, bnb.optim.AdamW8bit)
    assert isinstance(ctx.value_optimizer.optimizer, bnb.optim.AdamW8bit)
    resolve(spec.trainer)(ctx)
    ctx.memory.close()
    assert len(ctx.logger.history) == 2 and all(torch.isfinite(torch.tensor(h["loss/policy"])) for h in ctx.logger.history)
    # The planner's rule: 8-bit states for tensors of 4096 elements and more (none in this 32-wide model), else fp32.
    states = ctx.policy_optimizer.optimizer.state
    assert states and all((s["state1"].dtype == torch.uint8) == (p.numel() >= 4096) for p, s in states.items())


# --- strategies with settings: lora(r=4) ------------------------------------------------------------------


def test_lora_settings_reach_the_model_set():
    ms = model_set("zero2+lora(r=4, alpha=8, dropout=0.05, target_modules=q_proj|v_proj)")
    assert (ms.policy.lora.r, ms.policy.lora.alpha, ms.policy.lora.dropout) == (4, 8, 0.05)
    assert ms.policy.lora.target_modules == ("q_proj", "v_proj") and ms.critic.lora == ms.policy.lora
    assert model_set("qlora(r=8)").policy.lora.r == 8
    assert model_set("lora(target_modules=q_proj)").policy.lora.target_modules == ("q_proj",)


@pytest.mark.parametrize("memory, message", [
    ("lora(rank=8)", "lora: unknown key 'rank'; allowed: alpha, dropout, r, target_modules; did you mean 'r'?"),
    ("lora(r=0)", "lora: r must be >= 1"),
    ("lora(r=8.5)", "lora.r: expected an integer, got 8.5"),
    ("zero3(r=4)+lora", "part 'zero3' takes no settings"),
    ("lora(r=4", "part 'lora(r=4' is malformed"),
    ("lora(r)", "setting 'r' of 'lora' is malformed; write key=value"),
    ("lora(r=4,r=8)", "lora: 'r' is set twice"),
])
def test_strategy_settings_are_refused_in_one_line(memory, message):
    with pytest.raises(ValueError) as info:
        build_memory_plan(memory)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_strategy_settings_in_a_recipe(small_recipe):
    from rlhfkit.recipe import RecipeError

    recipe = load_recipe(small_recipe(extra=""))
    grid = {**recipe.raw["grid"], "memory": ["lora(r=4)", "zero2+lora(alpha=8, r=4)", "lora"]}
    from rlhfkit.recipe import parse_recipe

    parsed = parse_recipe({**recipe.raw, "grid": grid})
    ids = sorted({c.id.split("__")[2] for c in parsed.cells()})
    assert ids == ["lora", "lora_r4", "zero2-lora_alpha8_r4"]
    with pytest.raises(RecipeError, match=r"grid.memory\[1\]: 'lora\(r=16\)' is the same strategy as grid.memory\[0\]"):
        parse_recipe({**recipe.raw, "grid": {**grid, "memory": ["lora", "lora(r=16)"]}})
    with pytest.raises(RecipeError, match=r"grid.memory\[0\]: memory strategy 'lora\(rank=4\)': .*did you mean 'r'\?$"):
        parse_recipe({**recipe.raw, "grid": {**grid, "memory": ["lora(rank=4)"]}})


def test_cell_ids_of_strategies_with_settings_are_stable_and_file_safe():
    from rlhfkit.memory import strategy_id

    assert strategy_id("zero3+lora") == "zero3-lora"  # no settings: the id it always had
    assert strategy_id("lora(r=4, alpha=8)") == strategy_id("lora(alpha=8,r=4)") == "lora_alpha8_r4"
    assert strategy_id("lora(target_modules=q_proj|v_proj)") == "lora_target_modulesq_proj.v_proj"
    odd = strategy_id("lora(target_modules='a/b c')")
    assert "/" not in odd and " " not in odd and odd != strategy_id("lora(target_modules='a/b.c')")


def test_the_planner_sizes_lora_rank_from_the_settings(small_recipe):
    """llama:tiny (H=64, I=128, 2 layers, 2 KV heads of 16): LoRA adds r x (in + out) per adapted layer:
    q 64+64, k 64+32, v 64+32, o 64+64, gate/up 64+128, down 128+64 = 1024 per layer, 2048 per unit of r."""
    from rlhfkit.planner import plan_cell

    recipe = load_recipe(small_recipe(algorithms=("rloo",)))
    r16 = plan_cell(recipe, Cell("llama-tiny", "rloo", "lora", 1), "cpu", 1)
    r4 = plan_cell(recipe, Cell("llama-tiny", "rloo", "lora(r=4)", 1), "cpu", 1)
    extra = (16 - 4) * 2048
    assert r16.assumptions["trainable"]["policy"] - r4.assumptions["trainable"]["policy"] == extra
    states16, states4 = r16.assumptions["model_states"]["policy"], r4.assumptions["model_states"]["policy"]
    assert states16["weights"] - states4["weights"] == extra * 4  # fp32 adapters
    assert states16["optimizer"] - states4["optimizer"] == extra * 8  # AdamW moments
    assert r4.assumptions["model_set"]["policy"].startswith("from sft, LoRA r=4")


def test_a_lora_r4_cell_trains_in_process(saved_models, small_recipe):
    """Two RLOO steps on the tiny saved models built from the model set of ``lora(r=4)``: rank-4 adapters."""
    import torch
    from accelerate import Accelerator

    from rlhfkit.cellspec.build import build_context
    from rlhfkit.engine.context import MetricsLogger
    from rlhfkit.engine.memory_tracker import PhaseMemory
    from rlhfkit.registry import resolve
    from rlhfkit.testing import tiny_task, tiny_tokenizer

    dirs, arch = saved_models
    recipe = load_recipe(small_recipe(algorithms=("rloo",)))
    ms = model_set("lora(r=4,alpha=8)", "rloo", arch=arch)
    models = build_models(ms, recipe, "llama-tiny", dirs, "cpu")
    ranks = {m.r["default"] for m in models[0].modules() if hasattr(m, "lora_A") and isinstance(m.r, dict)}
    assert ranks == {4}
    spec = get_registry().get("algorithm", "rloo")
    task = tiny_task()
    config = spec.config_class(steps=2, batch_size=8, response_length=6, eval_every=100, eval_batch_size=4)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    ctx = build_context(config, accelerator, ms, models, tiny_tokenizer(task), task, PhaseMemory(accelerator.device),
                        MetricsLogger(None, None, None), 1000, algorithm="rloo")
    resolve(spec.trainer)(ctx)
    ctx.memory.close()
    assert len(ctx.logger.history) == 2
    assert all(torch.isfinite(torch.tensor(h["loss/policy"])) for h in ctx.logger.history)
