"""A cell built in one place: the model set built exactly, prepared (accelerate/DeepSpeed), and its context.

:func:`build_cell` takes a cell spec (what the runner writes to ``SPEC.json``) and returns everything a run
of the cell needs; :func:`summarise` turns a finished run into its :class:`~rlhfkit.cellspec.result.CellResult`.
The cell process (``python -m rlhfkit.cell``), the benchmarks and in-process tests all go through them;
:func:`build_context` is the lower layer for tests that bring their own models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlhfkit.cellspec.modelset import DeepSpeedSettings, ModelRole, ModelSet, adamw_fused

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def _load_kwargs(role: ModelRole) -> dict:
    import torch

    kwargs = {"dtype": _torch_dtype(role.dtype)}
    if role.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if role.dtype == "bf16" else torch.float32,
        )
    return kwargs


def _load(role: ModelRole, dirs, trust_remote_code: bool):
    """The role's starting weights, as the role says to store them."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if role.head == "causal_lm" else AutoModelForSequenceClassification
    # "sft" is the row's policy start: its DPO policy when the row has a DPO stage (policy and reference alike).
    path = dirs.policy_start if role.start == "sft" else dirs.reward_model
    kwargs = _load_kwargs(role)
    if role.head == "classifier" and role.start == "sft":
        kwargs["num_labels"] = 1  # a critic from the SFT policy: its backbone, a fresh one-label score head
    # Checkpoints that ship their own modelling code (MiniCPM 1/2) load only where the recipe row allows it.
    return cls.from_pretrained(str(path), **kwargs, trust_remote_code=trust_remote_code)


def _lora_config(role: ModelRole, default_targets):
    from peft import LoraConfig

    settings = role.lora
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules or default_targets),
        task_type="CAUSAL_LM" if role.head == "causal_lm" else "SEQ_CLS",
        modules_to_save=list(role.modules_to_save) or None,
    )


def _build_trained(role: ModelRole, dirs, adapter, trust_remote_code: bool):
    """A trained role: loaded, gradient checkpointing, then (LoRA) k-bit preparation and adapters."""
    from rlhfkit.engine.rollout import disable_dropout

    model = _load(role, dirs, trust_remote_code)
    if role.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if role.trainable == "lora":
        from peft import get_peft_model, prepare_model_for_kbit_training

        if role.quantization:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=role.gradient_checkpointing)
        model = get_peft_model(model, _lora_config(role, adapter.lora_target_modules))
    # After peft: its LoRA dropout layers exist only now.  Switched off before them, a LoRA dropout > 0 stayed
    # on in training forwards but off in sampling (inference mode), so rollout and training log-probs differed.
    disable_dropout(model)
    return model


def _build_frozen(role: ModelRole, dirs, device, trust_remote_code: bool):
    from rlhfkit.engine.rollout import disable_dropout

    model = _load(role, dirs, trust_remote_code)
    model.eval()
    model.requires_grad_(False)
    model = model.to(device if role.device == "accelerator" else role.device)
    disable_dropout(model)
    return model


PARTITIONED_INIT = True
"""Build ZeRO-3 models under DeepSpeed's partitioned init (``ModelRole.partitioned_init``).  False loads them
whole and lets the engines partition them (what ``benchmarks/bench_zero3_load.py`` measures as "before")."""


@contextmanager
def _model_init(role: ModelRole):
    """transformers builds a model under ``deepspeed.zero.Init`` exactly while a stage-3 ``HfDeepSpeedConfig`` is
    alive (``is_deepspeed_zero3_enabled``): the cell's accelerate DeepSpeed plugin keeps one alive from the
    Accelerator on (``zero3_init_flag``).  A role the model set does not shard at load (a quantised base, a
    strategy's host-kept frozen model, or ``PARTITIONED_INIT`` off) is built with it switched off meanwhile."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled() or (role.partitioned_init and PARTITIONED_INIT):
        yield
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    alive = hf_deepspeed._hf_deepspeed_config_weak_ref()
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(alive)


def _is_partitioned(model) -> bool:
    """Whether a built model's base weights are ZeRO-3 parameters (LoRA adapters and peft's copy of the score
    head are created after the load, whole and small: the engine partitions them)."""
    base = [p for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n]
    return bool(base) and all(hasattr(p, "ds_id") for p in base)


def build_models(model_set: ModelSet, recipe, model_name: str, dirs, device):
    """Exactly the model set: (policy, reference or None when it is the LoRA base, reward model, critic or None).

    Built in this order (policy, reference, reward model, critic): LoRA initialisation draws from torch's
    generator, so the order fixes a cell's random numbers.  Trained models stay where they load; accelerate or
    DeepSpeed places them in :func:`build_context`.
    """
    from rlhfkit.models import adapter_for, parse_model_spec

    entry = recipe.models[model_name]
    remote = entry.trust_remote_code
    adapters = {"policy": adapter_for(parse_model_spec(entry.policy, remote))}
    if model_set.reward is not None:  # a function reward (reward = "fn:...") names no model
        adapters["reward"] = adapter_for(parse_model_spec(entry.reward, remote))
    built = {"reward": None}
    for role in model_set.roles():
        if not role.separate:
            built[role.role] = None
            continue
        built[role.role] = build_role(role, dirs, adapters[role.arch_of], device, remote)
    return built["policy"], built["reference"], built["reward"], built.get("critic")


def build_role(role: ModelRole, dirs, adapter, device, trust_remote_code: bool = False):
    """One separate model of the set: loaded (under ZeRO-3 through DeepSpeed's partitioned init), trained roles
    with gradient checkpointing and LoRA as the role says, frozen ones in eval mode on their device."""
    with _model_init(role):
        if role.trained:
            return _build_trained(role, dirs, adapter, trust_remote_code)
        return _build_frozen(role, dirs, device, trust_remote_code)


def zero3_load_report(model_set: ModelSet, models) -> str | None:
    """One line for the cell's log: which models were built sharded (partitioned init), which whole."""
    if model_set.zero_stage != 3:
        return None
    names = ("policy", "reference", "reward", "critic")
    how = {name: ("partitioned init" if _is_partitioned(m) else "loaded whole, partitioned by its engine")
           for name, m in zip(names, models) if m is not None}
    return "ZeRO-3 load: " + ", ".join(f"{name} {text}" for name, text in how.items())


class LinearDecay:
    """LR multiplier 1 - i / horizon, floored at 0.  ``horizon`` is the arm's own planned steps; the engine may
    re-plan it (flops/seconds budgets) once the cost of a step is known."""

    def __init__(self, horizon: int):
        self.horizon = horizon

    def __call__(self, i: int) -> float:
        return max(0.0, 1.0 - i / self.horizon)


def _optimizer(model, cfg, lr, steps, choice=None, cuda: bool = False, zero_stage: int = 0):
    import torch

    from rlhfkit.registry import resolve

    params = [p for p in model.parameters() if p.requires_grad]
    if choice is None or choice.factory is None:
        # foreach: one multi-tensor kernel per AdamW op instead of a Python loop over parameters (torch's
        # default on CUDA, not on the CPU); bitwise the same updates as the loop.  fused: one pass, faster
        # still, rounded differently ([rl] adamw_kernel, modelset.adamw_fused).
        trainable = sum(p.numel() for p in params)
        if adamw_fused(getattr(cfg, "adamw_kernel", "foreach"), trainable, cuda, zero_stage):
            kernel = {"fused": True}
        else:
            kernel = {"foreach": True}
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, eps=1e-5, **kernel)
    else:
        optimizer = resolve(choice.factory)(params, lr=lr, weight_decay=cfg.weight_decay, eps=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LinearDecay(steps)) if cfg.lr_schedule == "linear" else None
    return optimizer, scheduler


def deepspeed_config(settings: DeepSpeedSettings, config) -> dict:
    """The DeepSpeed config of the model set's ZeRO settings (handed to accelerate's DeepSpeedPlugin).

    Mixed precision is filled in by accelerate from ``[run] precision``; gradient clipping is DeepSpeed's
    (``accelerator.clip_grad_norm_`` does nothing under DeepSpeed).  The client optimizer is ours (also under
    offload: no JIT-compiled DeepSpeedCPUAdam needed).
    """
    zero: dict = {
        "stage": settings.stage,
        "contiguous_gradients": settings.contiguous_gradients,
        "overlap_comm": settings.overlap_comm,
        "reduce_bucket_size": settings.reduce_bucket_size,
    }
    if settings.allgather_bucket_size is not None:
        zero["allgather_bucket_size"] = settings.allgather_bucket_size
    if settings.stage == 3:
        zero["stage3_prefetch_bucket_size"] = settings.prefetch_bucket_size
        zero["stage3_param_persistence_threshold"] = settings.param_persistence_threshold
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": settings.pin_memory}
    if settings.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": settings.pin_memory}
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


def _accelerator(model_set: ModelSet, config, precision: str, cuda: bool):
    """accelerate's Accelerator; with DeepSpeed (ZeRO) its plugin carries the model set's config."""
    from accelerate import Accelerator

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if model_set.deepspeed is None:
        return Accelerator(cpu=not cuda, mixed_precision=mixed)
    # DeepSpeed through accelerate: on a CPU-only machine DeepSpeed picks its "cpu" accelerator and gloo.
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _ensure_distributed_env()
    from accelerate import DeepSpeedPlugin

    ds_plugin = DeepSpeedPlugin(
        hf_ds_config=deepspeed_config(model_set.deepspeed, config),
        # ZeRO-3: models are built under deepspeed.zero.Init and loaded shard by shard (build_models).  accelerate
        # 1.15 keeps transformers' HfDeepSpeedConfig alive from the Accelerator on whatever this flag says, so
        # ZeRO-3 cells have loaded this way since they exist; the flag now says so (docs/memory.md: load phase).
        zero3_init_flag=model_set.zero_stage == 3,
    )
    handlers = []
    if not cuda:  # accelerate finds no backend of its own for DeepSpeed on a CPU: gloo
        from accelerate.utils import InitProcessGroupKwargs

        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    # accelerate only uses DeepSpeed when not told cpu=True; DeepSpeed itself runs on the CPU here.
    return Accelerator(mixed_precision=mixed, deepspeed_plugin=ds_plugin, kwargs_handlers=handlers)


def _preimport(plan, recipe=None, model_name=None) -> None:
    """Import what model building and generation will import, so the memory baseline holds library code.

    Measured on tiny models, the modules imported lazily by from_pretrained (the family's modelling code,
    safetensors) and by transformers' generation checks (DeepSpeed, when installed) were ~120 MiB of resident
    memory: more than the models.  Importing them first keeps them out of the measured phases.  ``plan`` is a
    model set or a memory plan (both say ``uses_lora`` and ``zero_stage``).
    """
    import importlib.util

    import safetensors.torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, DynamicCache  # noqa: F401

    if recipe is not None and model_name is not None:
        _preimport_families(recipe, model_name)
    if plan.uses_lora:
        import peft  # noqa: F401
    for role in plan.trained() if hasattr(plan, "trained") else ():
        for module in role.optimizer.preimport if role.optimizer else ():
            importlib.import_module(module)
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


def _preimport_families(recipe, model_name: str) -> None:
    from rlhfkit.models import adapter_for, parse_model_spec
    from rlhfkit.registry import resolve

    from rlhfkit.rewards import has_reward_model

    entry = recipe.models[model_name]
    for ref in (entry.policy, entry.reward) if has_reward_model(entry) else (entry.policy,):
        try:
            adapter = adapter_for(parse_model_spec(ref, entry.trust_remote_code))
            for lazy in adapter.classes()[1:]:
                resolve(lazy)
        except Exception:  # a family without its classes importable here: measured as before
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


def _role_optimizer(plan, role: str):
    """The optimizer choice of a trained role (a memory plan without a model set: torch AdamW)."""
    found = getattr(plan, role, None)
    return found.optimizer if isinstance(found, ModelRole) else None


def _prepare_trained(accelerator, plan, model, optimizer):
    if plan.zero_stage or accelerator.num_processes == 1:
        # One DeepSpeed engine per trained model (accelerate refuses two models in one prepare call; the
        # engines step themselves in TrainContext.optimizer_step, not through accelerator.backward).
        return accelerator.prepare(model, optimizer)
    # Several processes without ZeRO: replicas on the device, gradients averaged over processes by
    # TrainContext.optimizer_step (an explicit all-reduce: the critic's forward bypasses a DDP wrapper).
    return model.to(accelerator.device), accelerator.prepare_optimizer(optimizer, device_placement=False)


def reward_mix(entry, task):
    """The row's reward functions and weights (:class:`rlhfkit.rewards.RewardMix`), or ``None`` when the row
    optimises its reward model's score alone: the rollout then scores exactly as it always has."""
    from rlhfkit.rewards import RewardMix, is_plain_model

    return None if is_plain_model(entry) else RewardMix(entry, task)


def build_context(config, accelerator, plan, models, tokenizer, task, memory, logger, seed: int,
                  algorithm: str = "", reward_tokenizer=None):
    """Optimizers, accelerate/DeepSpeed preparation and the :class:`TrainContext` of built models.

    ``plan`` is the cell's :class:`ModelSet` (or, for tests that bring their own models, a memory plan);
    ``models`` is ``(policy, reference, reward_model, value_model)`` as :func:`build_models` returns them;
    ``seed`` seeds the sampling generator and the prompt order.
    """
    import torch

    from rlhfkit.engine.context import PromptSampler, TrainContext

    policy, reference, reward_model, value_model = models
    horizon = config.planned_steps()  # this arm's own budget, never a step count shared across arms
    placement = dict(cuda=accelerator.device.type == "cuda", zero_stage=plan.zero_stage)  # AdamW's kernel rule
    policy_optimizer, policy_scheduler = _optimizer(policy, config, config.learning_rate, horizon,
                                                    _role_optimizer(plan, "policy"), **placement)
    value_optimizer = value_scheduler = None
    if value_model is not None:
        value_lr = getattr(config, "value_learning_rate", None) or config.learning_rate
        value_optimizer, value_scheduler = _optimizer(value_model, config, value_lr, horizon,
                                                      _role_optimizer(plan, "critic"), **placement)
    policy, policy_optimizer = _prepare_trained(accelerator, plan, policy, policy_optimizer)
    if value_model is not None:
        value_model, value_optimizer = _prepare_trained(accelerator, plan, value_model, value_optimizer)
    if plan.zero_stage == 3:
        if reward_model is not None:
            reward_model = _zero3_inference(reward_model, accelerator)
        if reference is not None:
            reference = _zero3_inference(reference, accelerator)
    device = accelerator.device
    return TrainContext(
        config=config, accelerator=accelerator, policy=policy, policy_optimizer=policy_optimizer,
        policy_scheduler=policy_scheduler, reference=reference, reward_model=reward_model, tokenizer=tokenizer,
        task=task, memory=memory, logger=logger, generator=torch.Generator(device=device).manual_seed(seed),
        prompt_sampler=PromptSampler(task.rl_prompts, seed), value_model=value_model,
        value_optimizer=value_optimizer, value_scheduler=value_scheduler, plan=plan,
        is_main=accelerator.is_main_process, algorithm=algorithm, reward_tokenizer=reward_tokenizer,
    )


@dataclass
class BuiltCell:
    """A cell ready to train: its recipe row, model set, accelerator and context."""

    spec: dict
    recipe: Any
    cell: Any
    algorithm: Any
    """The :class:`rlhfkit.registry.AlgorithmSpec`."""
    model_set: ModelSet
    accelerator: Any
    ctx: Any
    dirs: Any
    cuda: bool
    measurement: str
    started: float


def _wants_cuda(recipe) -> bool:
    import torch

    return recipe.run.device == "cuda" or (recipe.run.device == "auto" and torch.cuda.is_available())


def _measurement(device, cpu_memory: str) -> str:
    from rlhfkit.engine.memory_tracker import return_freed_memory_to_os

    measurement = "cuda-allocator" if device.type == "cuda" else f"cpu-{cpu_memory}"
    if measurement == "cpu-live" and not return_freed_memory_to_os():  # resident set = live memory
        measurement = "cpu-resident"  # not glibc: the allocator keeps what it keeps
    return measurement


def _checkpointer(spec: dict, recipe, config, model_set, accelerator, metrics: Path | None):
    """The cell's :class:`Checkpointer` when ``[run] checkpoint_every`` asks for one and the cell can have one."""
    from rlhfkit.engine.checkpoint import Checkpointer, fingerprint, supported

    every = recipe.run.checkpoint_every
    if not every or not spec.get("cell_dir"):
        return None
    why_not = supported(model_set, accelerator.num_processes)
    if why_not is not None:
        print(f"checkpoint_every = {every} ignored: {why_not}", file=sys.stderr)
        return None
    key = fingerprint(spec["cell"], dataclasses.asdict(config), model_set.as_dict(), recipe.run.precision)
    return Checkpointer(Path(spec["cell_dir"]) / "checkpoint", every, key, metrics)


def build_cell(spec: dict, config_overrides: dict | None = None, broadcast: bool = True) -> BuiltCell:
    """Everything a cell needs before its SFT evaluation, from its spec (``recipe``, ``cell``,
    ``artifacts_root``, optional ``cell_dir`` for metrics.jsonl, ``threads``).

    ``config_overrides`` replace algorithm config fields (benchmarks); ``broadcast=False`` sends the metric
    lines to no plugin hooks (trackers), as benchmarks want.
    """
    import torch

    from rlhfkit.artifacts import artifact_dirs
    from rlhfkit.cellspec.arch import cell_model_set
    from rlhfkit.chat import chat_task
    from rlhfkit.engine.context import MetricsLogger
    from rlhfkit.engine.memory_tracker import PhaseMemory
    from rlhfkit.engine.reward_tokens import load_reward_tokenizer
    from rlhfkit.plugins import get_plugin_manager, get_registry
    from rlhfkit.recipe import Cell, load_recipe
    from rlhfkit.stages.pipeline import build_task, load_tokenizer

    started = time.perf_counter()
    if spec.get("threads"):
        # Processes of one cell share the cell's threads (torch.distributed.run sets WORLD_SIZE).
        torch.set_num_threads(max(1, spec["threads"] // int(os.environ.get("WORLD_SIZE", "1"))))
    recipe = load_recipe(spec["recipe"])
    cell = Cell(**spec["cell"])
    algorithm = get_registry().get("algorithm", cell.algorithm)
    config = recipe.config_for(cell)
    if config_overrides:
        config = replace(config, **config_overrides)
    cuda = _wants_cuda(recipe)
    model_set = cell_model_set(recipe, cell, cuda, spec["artifacts_root"])
    _preimport(model_set, recipe, cell.model)
    accelerator = _accelerator(model_set, config, recipe.run.precision, cuda)
    # Per-rank seeds: every process samples different completions (and prompts), reproducibly.
    seed = cell.seed * 1000 + accelerator.process_index
    seed_everything(seed)
    measurement = _measurement(accelerator.device, recipe.run.cpu_memory)
    memory = PhaseMemory(accelerator.device)
    task = build_task(recipe, cell.data_seed)  # the stratum's data draw: the one its SFT and reward model saw
    dirs = artifact_dirs(recipe, recipe.models[cell.model], Path(spec["artifacts_root"]), cell.data_seed)
    tokenizer = load_tokenizer(dirs.tokenizer)
    task = chat_task(task, tokenizer, recipe.chat_template)  # as the stages saw it (unchanged without a template)
    reward_tokenizer = load_reward_tokenizer(dirs, tokenizer, given=not recipe.models[cell.model].train_reward)
    memory.reset_baseline()  # measured memory = models, optimizer states, activations: not the task/tokenizer
    models = build_models(model_set, recipe, cell.model, dirs, accelerator.device)
    report = zero3_load_report(model_set, models)
    if report and accelerator.is_main_process:
        print(report, file=sys.stderr)
    metrics = Path(spec["cell_dir"]) / "metrics.jsonl" if spec.get("cell_dir") else None
    hook = get_plugin_manager().hook if broadcast else None
    logger = MetricsLogger(metrics, cell, hook, accelerator.is_main_process, run=recipe.run_context(spec["recipe"]))
    ctx = build_context(config, accelerator, model_set, models, tokenizer, task, memory, logger, seed,
                        algorithm=cell.algorithm, reward_tokenizer=reward_tokenizer)
    ctx.reward_mix = reward_mix(recipe.models[cell.model], task)
    ctx.checkpointer = _checkpointer(spec, recipe, config, model_set, accelerator, metrics)
    return BuiltCell(spec=spec, recipe=recipe, cell=cell, algorithm=algorithm, model_set=model_set,
                     accelerator=accelerator, ctx=ctx, dirs=dirs, cuda=cuda, measurement=measurement, started=started)


def train(built: BuiltCell) -> tuple[dict, dict, float]:
    """Evaluate the SFT policy, run the algorithm's trainer, evaluate the last step.

    Returns (SFT evaluation, final evaluation, training seconds).  The budget decides the last step
    (``ctx.last_step``), not ``config.steps``.
    """
    from rlhfkit.registry import resolve

    ctx = built.ctx
    if ctx.checkpointer is not None and ctx.checkpointer.restore(ctx):  # a preempted cell: on from its checkpoint
        sft_eval = {k: v for k, v in ctx.evaluations[0].items() if k != "samples"}
    else:
        sft_eval = ctx.evaluate(0)
    train_start = time.perf_counter()
    resolve(built.algorithm.trainer)(ctx)
    train_seconds = time.perf_counter() - train_start
    last = ctx.last_step
    final_eval = ctx.evaluations[-1] if ctx.evaluations[-1]["eval/step"] == last else ctx.evaluate(last)
    return sft_eval, final_eval, train_seconds


def _gather_rank_peaks(accelerator, memory) -> list[dict] | None:
    """Every rank's per-phase peaks, gathered to all ranks (rank 0 writes them); None with one process."""
    if accelerator.num_processes == 1:
        return None
    import torch.distributed as dist

    mine = {"rank": accelerator.process_index, **{k: int(v) for k, v in memory.peaks.items()}, "peak": int(memory.peak)}
    gathered: list = [None] * accelerator.num_processes
    dist.all_gather_object(gathered, mine)
    return gathered


def _planned(built: BuiltCell) -> dict | None:
    """The planner's per-phase prediction for this cell on this machine (an error text when it cannot say)."""
    try:
        from rlhfkit.planner import plan_cell

        hardware = "cuda-local" if built.cuda else "cpu"
        plan = plan_cell(built.recipe, built.cell, hardware, built.accelerator.num_processes, built.spec["artifacts_root"])
        return plan.as_dict()
    except Exception as exc:  # a planning gap must not fail a training run
        return {"error": f"{type(exc).__name__}: {exc}"}


def _write_rank_memory(built: BuiltCell) -> None:
    """``memory-rank<r>.json``: this rank's baseline and peaks, and under ZeRO-3 its share of the policy."""
    ctx, accelerator = built.ctx, built.accelerator
    info = {"rank": accelerator.process_index, "baseline_bytes": ctx.memory.baseline, "peaks": ctx.memory.peaks}
    if built.model_set.zero_stage == 3:
        # What this process really holds of the trained policy: its ZeRO-3 partition (ds_tensor) per parameter.
        trained = [p for p in ctx.policy.parameters() if p.requires_grad]
        info["zero3_trainable_numel"] = sum(int(p.ds_numel) for p in trained)
        info["zero3_local_trainable_numel"] = sum(int(p.ds_tensor.numel()) for p in trained)
    if built.spec.get("cell_dir"):
        (Path(built.spec["cell_dir"]) / f"memory-rank{accelerator.process_index}.json").write_text(json.dumps(info))


def summarise(built: BuiltCell, sft_eval: dict, final_eval: dict, train_seconds: float):
    """End the measurement and turn a trained cell into its :class:`CellResult` (rank 0's is the one written)."""
    import torch

    from rlhfkit.cellspec.result import CellResult, CellSummary

    ctx, accelerator = built.ctx, built.accelerator
    ctx.memory.close()
    ctx.logger.close()
    rank_peaks = _gather_rank_peaks(accelerator, ctx.memory)
    _write_rank_memory(built)
    planned = _planned(built) if accelerator.is_main_process else None
    # ZeRO-3 leaves partitioned parameters empty; ds_numel is the full size.
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in ctx.policy.parameters() if p.requires_grad)
    conditions = {"device": str(accelerator.device), "threads": torch.get_num_threads(),
                  "parallel_cells": int(built.spec.get("parallel_cells", 1)), "num_processes": accelerator.num_processes}
    summary = CellSummary.of(ctx, sft_eval, final_eval, train_seconds, trainable, time.perf_counter() - built.started,
                             conditions, planned, rank_peaks)
    return CellResult(
        summary=summary, evaluations=ctx.evaluations, memory_plan=built.model_set.strategy,
        device=str(accelerator.device), memory_measurement=built.measurement,
        num_processes=accelerator.num_processes, rank_memory=rank_peaks, planned_memory=planned,
        threads=torch.get_num_threads(), artifacts=built.dirs.as_dict(), run_conditions=conditions,
        model_set=built.model_set.as_dict(),
    )


__all__ = ["build_cell", "train", "summarise", "build_context", "build_models", "build_role", "deepspeed_config",
           "BuiltCell", "seed_everything", "zero3_load_report"]
