"""One grid cell, in its own process: build models per the memory plan, train, evaluate, write results.

Run as ``python -m rlhfkit.cell SPEC.json``.  The cell writes ``metrics.jsonl`` as it goes and
``result.json`` (atomically) at the end, whatever the outcome: ``ok``, ``diverged``, ``oom`` or ``failed``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
import traceback
from pathlib import Path

from rlhfkit.artifacts import artifact_dirs


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _freeze(model):
    model.eval()
    model.requires_grad_(False)
    return model


def _lora_config(plan, adapter, task_type: str, modules_to_save=None):
    from peft import LoraConfig

    settings = plan.lora
    targets = list(settings.target_modules or adapter.lora_target_modules)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )


def _load_kwargs(plan, dtype):
    import torch

    kwargs = {"dtype": dtype}
    if plan.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32,
        )
    return kwargs


def build_models(spec: dict, recipe, plan, algorithm_spec, device, dtype):
    """Policy (trainable), reference (or None under LoRA), reward model (frozen), critic (PPO)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhfkit.engine.rollout import disable_dropout
    from rlhfkit.models import adapter_for, parse_model_spec

    entry = recipe.models[spec["cell"]["model"]]
    dirs = artifact_dirs(recipe, entry, Path(spec["artifacts_root"]))
    adapter = adapter_for(parse_model_spec(entry.policy, entry.trust_remote_code))
    rm_adapter = adapter_for(parse_model_spec(entry.reward, entry.trust_remote_code))
    load_kwargs = _load_kwargs(plan, dtype)

    policy = AutoModelForCausalLM.from_pretrained(str(dirs.sft), **load_kwargs)
    disable_dropout(policy)
    if plan.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if plan.uses_lora:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if plan.quantization:
            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=plan.gradient_checkpointing)
        policy = get_peft_model(policy, _lora_config(plan, adapter, "CAUSAL_LM"))
    else:
        reference = _freeze(AutoModelForCausalLM.from_pretrained(str(dirs.sft), dtype=dtype)).to(device)
        disable_dropout(reference)

    reward_model = _freeze(AutoModelForSequenceClassification.from_pretrained(str(dirs.reward_model), dtype=dtype)).to(device)
    disable_dropout(reward_model)

    value_model = None
    if algorithm_spec.needs_value_model:
        value_model = AutoModelForSequenceClassification.from_pretrained(str(dirs.reward_model), **load_kwargs)
        disable_dropout(value_model)
        if plan.gradient_checkpointing:
            value_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        value_lora = plan.value_model_lora if plan.value_model_lora is not None else plan.uses_lora
        if value_lora:
            from peft import get_peft_model

            value_model = get_peft_model(value_model, _lora_config(plan, rm_adapter, "SEQ_CLS", modules_to_save=["score"]))
    return policy, reference, reward_model, value_model, dirs


def _optimizer(model, cfg, lr, steps):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, eps=1e-5)
    if cfg.lr_schedule == "linear":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1.0 - i / steps))
    else:
        scheduler = None
    return optimizer, scheduler


def run_cell(spec: dict) -> dict:
    import torch
    from accelerate import Accelerator

    from rlhfkit.engine.context import MetricsLogger, PromptSampler, TrainContext
    from rlhfkit.engine.memory_tracker import PhaseMemory
    from rlhfkit.memory import build_memory_plan
    from rlhfkit.plugins import get_plugin_manager, get_registry
    from rlhfkit.recipe import Cell, load_recipe
    from rlhfkit.registry import resolve
    from rlhfkit.stages.pipeline import build_task, load_tokenizer

    started = time.perf_counter()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    recipe = load_recipe(spec["recipe"])
    cell = Cell(**spec["cell"])
    cell_dir = Path(spec["cell_dir"])
    registry = get_registry()
    algorithm = registry.get("algorithm", cell.algorithm)
    config = recipe.algorithms[cell.algorithm]
    plan = build_memory_plan(cell.memory)

    want_cuda = recipe.run.device == "cuda" or (recipe.run.device == "auto" and torch.cuda.is_available())
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[recipe.run.precision]
    accelerator = Accelerator(cpu=not want_cuda, mixed_precision=mixed)
    device = accelerator.device
    # Per-rank seeds: every process samples different completions, reproducibly.
    seed = cell.seed * 1000 + accelerator.process_index
    seed_everything(seed)
    memory = PhaseMemory(device)

    task = build_task(recipe)
    entry = recipe.models[cell.model]
    tokenizer = load_tokenizer(artifact_dirs(recipe, entry, Path(spec["artifacts_root"])).tokenizer)
    dtype = torch.float32
    policy, reference, reward_model, value_model, dirs = build_models(spec, recipe, plan, algorithm, device, dtype)

    policy_optimizer, policy_scheduler = _optimizer(policy, config, config.learning_rate, config.steps)
    policy, policy_optimizer = accelerator.prepare(policy, policy_optimizer)
    value_optimizer = value_scheduler = None
    if value_model is not None:
        value_lr = getattr(config, "value_learning_rate", None) or config.learning_rate
        value_optimizer, value_scheduler = _optimizer(value_model, config, value_lr, config.steps)
        value_model, value_optimizer = accelerator.prepare(value_model, value_optimizer)

    generator = torch.Generator(device=device).manual_seed(seed)
    logger = MetricsLogger(cell_dir / "metrics.jsonl", cell, get_plugin_manager().hook, accelerator.is_main_process)
    ctx = TrainContext(
        config=config,
        accelerator=accelerator,
        policy=policy,
        policy_optimizer=policy_optimizer,
        policy_scheduler=policy_scheduler,
        reference=reference,
        reward_model=reward_model,
        tokenizer=tokenizer,
        task=task,
        memory=memory,
        logger=logger,
        generator=generator,
        prompt_sampler=PromptSampler(task.rl_prompts, seed),
        value_model=value_model,
        value_optimizer=value_optimizer,
        value_scheduler=value_scheduler,
        plan=plan,
        is_main=accelerator.is_main_process,
    )
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    sft_eval = ctx.evaluate(0)
    train_start = time.perf_counter()
    resolve(algorithm.trainer)(ctx)
    train_seconds = time.perf_counter() - train_start
    final_eval = ctx.evaluations[-1] if ctx.evaluations[-1]["eval/step"] == config.steps else ctx.evaluate(config.steps)
    memory.close()
    logger.close()

    summary = {
        "gold_sft": sft_eval.get("eval/gold"),
        "gold_final": final_eval.get("eval/gold"),
        "score_sft": sft_eval["eval/score"],
        "score_final": final_eval["eval/score"],
        "kl_final": final_eval["eval/kl"],
        "length_final": final_eval["eval/length"],
        "eos_rate_final": final_eval["eval/eos_rate"],
        "peak_memory_bytes": memory.peak,
        "generation_peak_bytes": memory.peaks.get("generation", 0),
        "scoring_peak_bytes": memory.peaks.get("scoring", 0),
        "training_peak_bytes": memory.peaks.get("training", 0),
        "episodes": ctx.episodes,
        "episodes_per_s": ctx.episodes / train_seconds,
        "tokens_per_s": ctx.tokens / train_seconds,
        "train_s": train_seconds,
        "trainable_parameters": trainable,
        "wall_s": time.perf_counter() - started,
    }
    return {
        "summary": summary,
        "evaluations": ctx.evaluations,
        "memory_plan": plan.strategy,
        "device": str(device),
        "num_processes": accelerator.num_processes,
        "threads": torch.get_num_threads(),
        "artifacts": dirs.as_dict(),
        "is_main": accelerator.is_main_process,
    }


def classify_exception(exc: BaseException) -> str:
    from rlhfkit.engine.context import DivergedError

    if isinstance(exc, DivergedError):
        return "diverged"
    if isinstance(exc, MemoryError):
        return "oom"
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return "oom"
    except ImportError:
        pass
    if "out of memory" in str(exc).lower():
        return "oom"
    return "failed"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    cell_dir = Path(spec["cell_dir"])
    result_path = cell_dir / "result.json"
    base = {
        "cell": spec["cell"],
        "python": platform.python_version(),
        "hostname": platform.node(),
    }
    try:
        out = run_cell(spec)
    except Exception as exc:  # the cell's status records it; the grid goes on
        status = classify_exception(exc)
        (cell_dir / "error.txt").write_text(traceback.format_exc())
        write_json_atomic(result_path, {**base, "status": status, "error": f"{type(exc).__name__}: {exc}"})
        print(f"cell {spec['cell']} {status}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if out.pop("is_main"):
        write_json_atomic(result_path, {**base, "status": "ok", "error": None, **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
