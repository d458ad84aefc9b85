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


def build_models(spec: dict, recipe, plan, algorithm_spec, device, dtype, frozen_dtype=None):
    """Policy (trainable), reference (or None under LoRA), reward model (frozen), critic (PPO).

    ``dtype`` is the trainable models' storage dtype (fp32: accelerate autocasts under bf16; DeepSpeed casts
    the engines itself), ``frozen_dtype`` that of the frozen reference and reward model (bf16 under bf16
    precision, else ``dtype``).  Under LoRA the frozen base of the policy is stored in ``frozen_dtype`` too.
    Frozen models are replicated in every process, also under ZeRO-3 (see docs/memory.md).
    """
    frozen_dtype = frozen_dtype or dtype
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhfkit.engine.rollout import disable_dropout
    from rlhfkit.models import adapter_for, parse_model_spec

    entry = recipe.models[spec["cell"]["model"]]
    dirs = artifact_dirs(recipe, entry, Path(spec["artifacts_root"]))
    adapter = adapter_for(parse_model_spec(entry.policy, entry.trust_remote_code))
    rm_adapter = adapter_for(parse_model_spec(entry.reward, entry.trust_remote_code))
    # Checkpoints that ship their own modelling code (MiniCPM 1/2) load only where the recipe row allows it.
    remote = {"trust_remote_code": entry.trust_remote_code}
    load_kwargs = {**_load_kwargs(plan, frozen_dtype if plan.uses_lora else dtype), **remote}

    policy = AutoModelForCausalLM.from_pretrained(str(dirs.sft), **load_kwargs)
    if plan.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if plan.uses_lora:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if plan.quantization:
            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=plan.gradient_checkpointing)
        policy = get_peft_model(policy, _lora_config(plan, adapter, "CAUSAL_LM"))
    # After peft: its LoRA dropout layers exist only now.  Switched off before them, a LoRA dropout > 0 stayed
    # on in training forwards but off in sampling (inference mode), so rollout and training log-probs differed.
    disable_dropout(policy)
    if not plan.uses_lora:
        reference = _freeze(AutoModelForCausalLM.from_pretrained(str(dirs.sft), dtype=frozen_dtype, **remote)).to(device)
        disable_dropout(reference)

    reward_model = _freeze(
        AutoModelForSequenceClassification.from_pretrained(str(dirs.reward_model), dtype=frozen_dtype, **remote)
    ).to(device)
    disable_dropout(reward_model)

    value_model = None
    if algorithm_spec.needs_value_model:
        value_lora = plan.value_model_lora if plan.value_model_lora is not None else plan.uses_lora
        value_kwargs = load_kwargs if value_lora else {"dtype": dtype, **remote}
        value_model = AutoModelForSequenceClassification.from_pretrained(str(dirs.reward_model), **value_kwargs)
        if plan.gradient_checkpointing:
            value_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if value_lora:
            from peft import get_peft_model, prepare_model_for_kbit_training

            if plan.quantization:
                value_model = prepare_model_for_kbit_training(
                    value_model, use_gradient_checkpointing=plan.gradient_checkpointing
                )
            value_model = get_peft_model(value_model, _lora_config(plan, rm_adapter, "SEQ_CLS", modules_to_save=["score"]))
        disable_dropout(value_model)  # after peft, as for the policy
    return policy, reference, reward_model, value_model, dirs


class LinearDecay:
    """LR multiplier 1 - i / horizon, floored at 0.  ``horizon`` is the arm's own planned steps; the engine may
    re-plan it (flops/seconds budgets) once the cost of a step is known."""

    def __init__(self, horizon: int):
        self.horizon = horizon

    def __call__(self, i: int) -> float:
        return max(0.0, 1.0 - i / self.horizon)


def _optimizer(model, cfg, lr, steps):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one multi-tensor kernel per AdamW op instead of a Python loop over parameters (torch's default
    # on CUDA, not on the CPU); bitwise the same updates, ~1.6x faster optimizer steps on the tiny presets.  fused=True
    # would be faster still but rounds differently, so results at a fixed seed would change.
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, eps=1e-5, foreach=True)
    if cfg.lr_schedule == "linear":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LinearDecay(steps))
    else:
        scheduler = None
    return optimizer, scheduler


# DeepSpeed's own default bucket size (elements); capped at the model's size so tiny models get tiny buffers.
DS_BUCKET_ELEMENTS = 500_000_000


def zero_bucket_elements(num_parameters: int) -> int:
    """Reduce/all-gather bucket size the cell writes into the DeepSpeed config (the planner uses the same)."""
    return int(max(1, min(DS_BUCKET_ELEMENTS, num_parameters)))


def deepspeed_config(plan, config, num_parameters: int, hidden_size: int, cuda: bool) -> dict:
    """The DeepSpeed config of a ZeRO plan (handed to accelerate's DeepSpeedPlugin).

    Mixed precision is filled in by accelerate from ``[run] precision``; gradient clipping is DeepSpeed's
    (``accelerator.clip_grad_norm_`` does nothing under DeepSpeed).  The client optimizer is our torch AdamW
    (also under offload: no JIT-compiled DeepSpeedCPUAdam needed).
    """
    bucket = zero_bucket_elements(num_parameters)
    zero: dict = {
        "stage": plan.zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": bool(cuda),  # no CUDA streams on the CPU: nothing to overlap
        "reduce_bucket_size": bucket,
    }
    if plan.zero_stage == 2:
        zero["allgather_bucket_size"] = bucket
    if plan.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if plan.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(cuda)}
    if plan.offload_parameters and plan.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": bool(cuda)}
    minibatch = max(1, config.batch_size // max(1, getattr(config, "num_minibatches", 1)))
    return {
        "train_micro_batch_size_per_gpu": minibatch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(config.max_grad_norm),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _ensure_distributed_env() -> None:
    """DeepSpeed wants torch.distributed even for one process: a one-rank group on a free local port."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _preimport(plan, recipe=None, model_name=None) -> None:
    """Import what model building and generation will import, so the memory baseline holds library code.

    Measured on tiny models, the modules imported lazily by from_pretrained (the family's modelling code,
    safetensors) and by transformers' generation checks (DeepSpeed, when installed) were ~120 MiB of resident
    memory: more than the models.  Importing them first keeps them out of the measured phases.
    """
    import importlib.util

    import safetensors.torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, DynamicCache  # noqa: F401

    if recipe is not None and model_name is not None:
        from rlhfkit.models import adapter_for, parse_model_spec
        from rlhfkit.registry import resolve

        entry = recipe.models[model_name]
        for ref in (entry.policy, entry.reward):
            try:
                adapter = adapter_for(parse_model_spec(ref, entry.trust_remote_code))
                for lazy in adapter.classes()[1:]:
                    resolve(lazy)
            except Exception:  # a family without its classes importable here: measured as before
                pass
    if plan.uses_lora:
        import peft  # noqa: F401
    if plan.quantization:
        import bitsandbytes  # noqa: F401
    if plan.zero_stage or importlib.util.find_spec("deepspeed") is not None:
        import deepspeed  # noqa: F401  (transformers imports it lazily in generation when it is installed)
    if plan.zero_stage:
        # DeepSpeedEngine.__init__ imports these lazily; the Muon optimizer module pulls in torch._dynamo,
        # torch._inductor, sympy and networkx: ~45 MiB resident, measured as "DeepSpeed memory" of a
        # 0.1M-parameter model before they moved here (peft imports the same, so LoRA cells already had them).
        for lazy in ("deepspeed.runtime.zero.muon.muon_optimizer", "deepspeed.module_inject.auto_ep_layer"):
            try:
                importlib.import_module(lazy)
            except ImportError:  # another DeepSpeed version: whatever it imports lazily is measured
                pass


def _zero3_inference(model, accelerator):
    """A frozen model sharded like the trained ones: an inference-only ZeRO-3 engine (no optimizer).

    Under ZeRO-3 every process keeps 1/N of the reference / reward model's weights and gathers them layer by
    layer in forward (the way TRL prepares reference and reward models for DeepSpeed ZeRO-3).
    """
    import copy

    import deepspeed

    full = accelerator.state.deepspeed_plugin.deepspeed_config
    keep = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16", "steps_per_print",
            "wall_clock_breakdown")
    config = {k: copy.deepcopy(full[k]) for k in keep if k in full}
    zero = copy.deepcopy(full["zero_optimization"])
    zero.pop("offload_optimizer", None)
    config["zero_optimization"] = zero
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def _gather_rank_peaks(accelerator, memory) -> list[dict] | None:
    """Every rank's per-phase peaks, gathered to all ranks (rank 0 writes them); None with one process."""
    if accelerator.num_processes == 1:
        return None
    import torch.distributed as dist

    mine = {"rank": accelerator.process_index, **{k: int(v) for k, v in memory.peaks.items()}, "peak": int(memory.peak)}
    gathered: list = [None] * accelerator.num_processes
    dist.all_gather_object(gathered, mine)
    return gathered


def _planned(recipe, cell, num_processes: int, cuda: bool, artifacts_root) -> dict | None:
    """The planner's per-phase prediction for this cell on this machine (None when it cannot say)."""
    try:
        from rlhfkit.planner import plan_cell

        hardware = "cuda-local" if cuda else "cpu"
        return plan_cell(recipe, cell, hardware, num_processes, artifacts_root).as_dict()
    except Exception as exc:  # a planning gap must not fail a training run
        return {"error": f"{type(exc).__name__}: {exc}"}


def build_context(config, accelerator, plan, models, tokenizer, task, memory, logger, seed: int,
                  algorithm: str = ""):
    """Optimizers, accelerate/DeepSpeed preparation and the :class:`TrainContext` of built models.

    ``models`` is ``(policy, reference, reward_model, value_model)`` as :func:`build_models` returns them;
    ``seed`` seeds the sampling generator and the prompt order.  Shared by ``run_cell`` and in-process tests,
    so a test trains exactly what a cell trains.
    """
    import torch

    from rlhfkit.engine.context import PromptSampler, TrainContext

    policy, reference, reward_model, value_model = models
    device = accelerator.device
    distributed = accelerator.num_processes > 1
    horizon = config.planned_steps()  # this arm's own budget, never a step count shared across arms
    policy_optimizer, policy_scheduler = _optimizer(policy, config, config.learning_rate, horizon)
    value_optimizer = value_scheduler = None
    if value_model is not None:
        value_lr = getattr(config, "value_learning_rate", None) or config.learning_rate
        value_optimizer, value_scheduler = _optimizer(value_model, config, value_lr, horizon)
    if plan.zero_stage or not distributed:
        # One DeepSpeed engine per trained model (accelerate refuses two models in one prepare call; the
        # engines step themselves in TrainContext.optimizer_step, not through accelerator.backward).
        policy, policy_optimizer = accelerator.prepare(policy, policy_optimizer)
        if value_model is not None:
            value_model, value_optimizer = accelerator.prepare(value_model, value_optimizer)
    else:
        # Several processes without ZeRO: replicas on the device, gradients averaged over processes by
        # TrainContext.optimizer_step (an explicit all-reduce: the critic's forward bypasses a DDP wrapper).
        policy = policy.to(device)
        policy_optimizer = accelerator.prepare_optimizer(policy_optimizer, device_placement=False)
        if value_model is not None:
            value_model = value_model.to(device)
            value_optimizer = accelerator.prepare_optimizer(value_optimizer, device_placement=False)

    if plan.zero_stage == 3:
        reward_model = _zero3_inference(reward_model, accelerator)
        if reference is not None:
            reference = _zero3_inference(reference, accelerator)

    generator = torch.Generator(device=device).manual_seed(seed)
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
        algorithm=algorithm,
    )
    return ctx


def run_cell(spec: dict) -> dict:
    import torch
    from accelerate import Accelerator

    from rlhfkit.engine.context import MetricsLogger
    from rlhfkit.engine.memory_tracker import PhaseMemory, return_freed_memory_to_os
    from rlhfkit.memory import build_memory_plan
    from rlhfkit.plugins import get_plugin_manager, get_registry
    from rlhfkit.recipe import Cell, load_recipe
    from rlhfkit.registry import resolve
    from rlhfkit.stages.pipeline import build_task, load_tokenizer

    started = time.perf_counter()
    if spec.get("threads"):
        # Processes of one cell share the cell's threads (torch.distributed.run sets WORLD_SIZE).
        world = int(os.environ.get("WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, spec["threads"] // world))
    recipe = load_recipe(spec["recipe"])
    cell = Cell(**spec["cell"])
    cell_dir = Path(spec["cell_dir"])
    registry = get_registry()
    algorithm = registry.get("algorithm", cell.algorithm)
    config = recipe.config_for(cell)
    plan = build_memory_plan(cell.memory)

    want_cuda = recipe.run.device == "cuda" or (recipe.run.device == "auto" and torch.cuda.is_available())
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[recipe.run.precision]
    _preimport(plan, recipe, cell.model)
    ds_plugin = None
    if plan.zero_stage:
        # DeepSpeed through accelerate: on a CPU-only machine DeepSpeed picks its "cpu" accelerator and gloo.
        if not want_cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        _ensure_distributed_env()
        from accelerate import DeepSpeedPlugin

        from rlhfkit.planner import cell_architecture

        arch = cell_architecture(recipe, cell.model, "policy", spec["artifacts_root"])
        ds_plugin = DeepSpeedPlugin(
            hf_ds_config=deepspeed_config(plan, config, arch["num_parameters"], arch["hidden_size"], want_cuda),
            zero3_init_flag=False,  # models load whole, then the engine partitions the trainable ones
        )
        # accelerate only uses DeepSpeed when not told cpu=True; DeepSpeed itself runs on the CPU here.
        handlers = []
        if not want_cuda:  # accelerate finds no backend of its own for DeepSpeed on a CPU: gloo
            from accelerate.utils import InitProcessGroupKwargs

            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        accelerator = Accelerator(mixed_precision=mixed, deepspeed_plugin=ds_plugin, kwargs_handlers=handlers)
    else:
        accelerator = Accelerator(cpu=not want_cuda, mixed_precision=mixed)
    device = accelerator.device
    # Per-rank seeds: every process samples different completions (and prompts), reproducibly.
    seed = cell.seed * 1000 + accelerator.process_index
    seed_everything(seed)
    measurement = "cuda-allocator" if device.type == "cuda" else f"cpu-{recipe.run.cpu_memory}"
    if measurement == "cpu-live" and not return_freed_memory_to_os():  # resident set = live memory
        measurement = "cpu-resident"  # not glibc: the allocator keeps what it keeps
    memory = PhaseMemory(device)

    task = build_task(recipe)
    entry = recipe.models[cell.model]
    tokenizer = load_tokenizer(artifact_dirs(recipe, entry, Path(spec["artifacts_root"])).tokenizer)
    memory.reset_baseline()  # measured memory = models, optimizer states, activations: not the task/tokenizer
    dtype = torch.float32
    frozen_dtype = torch.bfloat16 if recipe.run.precision == "bf16" else (
        torch.float16 if recipe.run.precision == "fp16" and want_cuda else dtype)
    policy, reference, reward_model, value_model, dirs = build_models(
        spec, recipe, plan, algorithm, device, dtype, frozen_dtype=frozen_dtype
    )

    logger = MetricsLogger(cell_dir / "metrics.jsonl", cell, get_plugin_manager().hook, accelerator.is_main_process)
    ctx = build_context(config, accelerator, plan, (policy, reference, reward_model, value_model), tokenizer, task,
                        memory, logger, seed, algorithm=cell.algorithm)
    policy = ctx.policy
    # ZeRO-3 leaves partitioned parameters empty; ds_numel is the full size.
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in policy.parameters() if p.requires_grad)
    sft_eval = ctx.evaluate(0)
    train_start = time.perf_counter()
    resolve(algorithm.trainer)(ctx)
    train_seconds = time.perf_counter() - train_start
    # The budget decides the last step (ctx.last_step), not config.steps.
    last = ctx.last_step
    final_eval = ctx.evaluations[-1] if ctx.evaluations[-1]["eval/step"] == last else ctx.evaluate(last)
    memory.close()
    logger.close()
    rank_peaks = _gather_rank_peaks(accelerator, memory)
    rank_info = {"rank": accelerator.process_index, "baseline_bytes": memory.baseline, "peaks": memory.peaks}
    if plan.zero_stage == 3:
        # What this process really holds of the trained policy: its ZeRO-3 partition (ds_tensor) per parameter.
        trained = [p for p in policy.parameters() if p.requires_grad]
        rank_info["zero3_trainable_numel"] = sum(int(p.ds_numel) for p in trained)
        rank_info["zero3_local_trainable_numel"] = sum(int(p.ds_tensor.numel()) for p in trained)
    (cell_dir / f"memory-rank{accelerator.process_index}.json").write_text(json.dumps(rank_info))
    planned = _planned(recipe, cell, accelerator.num_processes, want_cuda, spec["artifacts_root"]) if accelerator.is_main_process else None

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
        "steps_run": ctx.last_step,
        **ctx.ledger.as_metrics(),
    }
    conditions = {"device": str(device), "threads": torch.get_num_threads(),
                  "parallel_cells": int(spec.get("parallel_cells", 1)), "num_processes": accelerator.num_processes}
    summary["run_conditions"] = "{device}/threads={threads}/parallel={parallel_cells}/procs={num_processes}".format(**conditions)
    if planned and "error" not in planned:
        summary["planned_memory_bytes"] = planned["peak_bytes"]
        for phase in ("generation", "scoring", "training"):
            summary[f"planned_{phase}_bytes"] = planned["phases"][phase]
    if rank_peaks is not None:
        summary["rank_peak_bytes"] = [r["peak"] for r in rank_peaks]
    return {
        "summary": summary,
        "evaluations": ctx.evaluations,
        "memory_plan": plan.strategy,
        "device": str(device),
        "memory_measurement": measurement,
        "num_processes": accelerator.num_processes,
        "rank_memory": rank_peaks,
        "planned_memory": planned,
        "threads": torch.get_num_threads(),
        "artifacts": dirs.as_dict(),
        "run_conditions": conditions,
        "is_main": accelerator.is_main_process,
    }


# Messages of allocation failures that do not arrive as MemoryError / torch.OutOfMemoryError: torch's CPU
# allocator raises a plain RuntimeError ("[enforce fail at alloc_cpu.cpp] ... DefaultCPUAllocator: can't allocate
# memory: you tried to allocate 59 GB. Error code 12 (Cannot allocate memory)"), C++ extensions surface
# std::bad_alloc as RuntimeError("std::bad_alloc"), CUDA as "CUDA out of memory".
_OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "std::bad_alloc",
    "failed to allocate memory",
)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):  # numpy's _ArrayMemoryError is a MemoryError
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


def classify_exception(exc: BaseException) -> str:
    """``diverged``, ``oom`` (CPU or CUDA allocation failure) or ``failed``.

    Libraries often re-raise an allocation failure wrapped in their own exception (``raise X from exc``), so
    the cause/context chain is searched too (a few links: a cycle cannot loop).
    """
    from rlhfkit.engine.context import DivergedError

    if isinstance(exc, DivergedError):
        return "diverged"
    seen, link = 0, exc
    while link is not None and seen < 8:
        if _is_oom(link):
            return "oom"
        link = link.__cause__ or link.__context__
        seen += 1
    return "failed"


# How long a finished rank waits at the final barrier for the others (they are at most writing their last
# files; a peer that died is reported by torchrun, so waiting longer would only delay that report).
FINAL_BARRIER_TIMEOUT_S = 300


def leave_process_group(wait_for_peers: bool) -> None:
    """Leave torch.distributed in step with the other ranks, before the interpreter tears down.

    Without this each rank left whenever it returned: rank 0 still writing result.json (and planning) while
    rank 1 had already exited, and the gloo process group and DeepSpeed's communication objects were destroyed
    by interpreter finalization in whatever order it chose, with the peer's sockets open or already closed.
    An abort at that point (rank 1 SIGABRT after status ok, then torchrun SIGTERMs rank 0) is the CI failure
    of issue 14.  Here every rank first meets the others (a monitored barrier on gloo names a rank that never
    arrives), then destroys the group explicitly while everything it uses is still alive.
    """
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait_for_peers and dist.get_world_size() > 1:
            if dist.get_backend() == "gloo":
                from datetime import timedelta

                dist.monitored_barrier(timeout=timedelta(seconds=FINAL_BARRIER_TIMEOUT_S))
            else:
                dist.barrier()
    except Exception as exc:  # a peer that failed: its own status says why; leave anyway
        print(f"final barrier: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
    finally:
        dist.destroy_process_group()


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
        leave_process_group(wait_for_peers=False)  # a peer may be stuck in a collective this rank left
        return 1
    if out.pop("is_main"):
        write_json_atomic(result_path, {**base, "status": "ok", "error": None, **out})
    sys.stdout.flush()
    sys.stderr.flush()
    leave_process_group(wait_for_peers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
