"""Memory planner: the per-device peak of every cell and phase, predicted from architecture numbers.

Nothing is built or loaded: the numbers come from the model family's config (``adapter.architecture``: a
tiny preset's config, a checkpoint's config.json, or a well-known checkpoint's published numbers), the memory
plan (``zero3+lora+gc``), the algorithm's batch settings and the hardware.  The parts, per device:

- weights: bytes per parameter by dtype (fp32 4, bf16/fp16 2, NF4 with double quantisation ~0.516);
- trainable state: gradients + AdamW moments (+ DeepSpeed's fp32 copy of each partition), divided
  by N under ZeRO-2 (gradients and optimizer states) and ZeRO-3 (weights too), moved to the host by offload;
- DeepSpeed buffers: ZeRO-2 gradient buckets (with ``overlap_comm``: DeepSpeed's documented 4.5 x
  (reduce + all-gather bucket) footprint; without: one reduce bucket), ZeRO-3 reduce and prefetch buckets;
- generation: KV cache (2 x layers x kv_heads x head_dim x tokens x bytes), one step's logits, and under
  ZeRO-3 the gather of the whole policy into new full-size tensors (the own shard stays allocated), or with
  ``zero3_gather_for_generation = false`` only the largest single module gathered by DeepSpeed's hooks;
- ZeRO-3 forward/backward: parameters gathered module by module, up to DeepSpeed's max live parameters;
- scoring: reference / reward / critic forwards of the rollout batch (logits copies tokens x vocab x 4 B);
- training: activations of a minibatch (all layers, or only layer inputs + one layer under gradient
  checkpointing), logits copies, gradients; PPO keeps the policy's and the critic's graphs alive together;
  the AdamW step's temporary (one fp32 copy of the trainable state) where it exceeds the freed activations;
- frozen models (reference, reward model) replicated on every device, except under ZeRO-3, where the cell
  wraps them in inference-only ZeRO-3 engines (sharded like the trained ones, gathered layer by layer);
- framework overhead: a constant per process (see docs/memory.md for how the CPU value was calibrated).

The peak of a cell is the max over its phases; it fits when peak <= the device's memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

GiB = 1024**3
MiB = 1024**2
PHASES = ("generation", "scoring", "training")

# Device memory as nvidia-smi reports it (MiB).  "cpu" is the machine's RAM; any other device:
# ``rlhfkit plan --gpu-memory-gib N`` (or ``[run] gpu_memory_gib``).
GPUS: dict[str, int] = {
    "A100-40GB": 40960 * MiB,
    "A100-80GB": 81920 * MiB,
    "H100-80GB": 81559 * MiB,
    "H100-94GB": 95830 * MiB,
    "H200": 143771 * MiB,
    "L40S-48GB": 46068 * MiB,
    "L40-48GB": 46068 * MiB,
    "A6000-48GB": 49140 * MiB,
    "A10-24GB": 23028 * MiB,
    "A10G-24GB": 23028 * MiB,
    "L4-24GB": 23034 * MiB,
    "RTX-4090-24GB": 24564 * MiB,
    "RTX-3090-24GB": 24576 * MiB,
    "V100-16GB": 16384 * MiB,
    "V100-32GB": 32768 * MiB,
    "T4-16GB": 15360 * MiB,
}
# Other spellings of the same devices (after upper-casing and turning spaces/underscores into '-').
GPU_ALIASES = {
    "H100": "H100-80GB", "H100-SXM": "H100-80GB", "H100-PCIE": "H100-80GB", "H100-NVL": "H100-94GB",
    "H100-NVL-94GB": "H100-94GB", "H200-141GB": "H200", "L40S": "L40S-48GB", "L40": "L40-48GB",
    "A6000": "A6000-48GB", "RTX-A6000": "A6000-48GB", "A10": "A10-24GB", "A10G": "A10G-24GB", "L4": "L4-24GB",
    "RTX-4090": "RTX-4090-24GB", "4090": "RTX-4090-24GB", "RTX-3090": "RTX-3090-24GB", "3090": "RTX-3090-24GB",
    "T4": "T4-16GB",
}


def gpu_capacity(name: str) -> tuple[str, int | None]:
    """The canonical name of a device and its memory in bytes (None for ``cpu``: this machine's RAM).
    Case-insensitive; ``80G``/``80GB`` and ``NVIDIA`` prefixes are accepted.  One-line ValueError otherwise."""
    key = re.sub(r"[\s_]+", "-", name.strip().upper()).removeprefix("NVIDIA-")
    key = re.sub(r"(\d+)G(B)?$", r"\1GB", key)
    if key == "CPU":
        return "cpu", None
    canonical = {n.upper(): n for n in GPUS}.get(key) or GPU_ALIASES.get(key)
    if canonical is None:
        from rlhfkit.validation import hint

        raise ValueError(
            f"unknown GPU {name!r}; known: {', '.join(GPUS)}, cpu; or give the capacity with --gpu-memory-gib"
            f"{hint(key, [*GPUS, *GPU_ALIASES])}"
        )
    return canonical, GPUS[canonical]
# CUDA context, cuBLAS workspace and caching-allocator slack per process (not measured here: no GPU).
GPU_FRAMEWORK_BYTES = 1 * GiB
# CPU: resident memory a cell process adds beyond its tensors once its libraries are imported (allocator
# arenas, autograd bookkeeping, thread pools, gloo/DeepSpeed state).  Calibrated from measured tiny cells
# (benchmarks/bench_memory.py; see docs/memory.md).
CPU_FRAMEWORK_BYTES = 30 * MiB
CPU_DEEPSPEED_BYTES = 1 * MiB
# ZeRO-3 bookkeeping per partitioned parameter tensor (its ds_* attributes, partition tensor and hooks), host
# memory: 33 KiB measured by initialising ZeRO-3 engines over 100 and 400 one-parameter modules of the same
# total size on this machine (+9.9 MiB for 300 more tensors).  It is why ZeRO-3 + LoRA (peft adds two tensors
# per adapted layer) costs more host memory than ZeRO-3 on the same model.
ZERO3_HOST_BYTES_PER_TENSOR = 33 * 1024

NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 absmax blocks
DS_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce/all-gather bucket (elements)
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000  # DeepSpeed's default stage3_max_live_parameters
TRAIN_LOGIT_COPIES = 4  # logits, /temperature, log-softmax, softmax for entropy (and their gradient)
SCORE_LOGIT_COPIES = 2  # logits, /temperature (+ the chunked log-softmax)
GEN_LOGIT_COPIES = 4  # one step: logits, log-softmax, uniform draws, gumbel-perturbed logits


@dataclass
class CellPlan:
    cell: str
    model: str
    algorithm: str
    memory: str
    hardware: str
    num_devices: int
    capacity_bytes: int
    phases: dict[str, int]
    parts: dict[str, dict[str, int]]
    assumptions: dict = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.capacity_bytes

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(peak_bytes=self.peak_bytes, peak_phase=self.peak_phase, fits=self.fits)
        return out

    def rows(self) -> list[dict]:
        """One JSON object per phase (what ``rlhfkit plan --json`` prints)."""
        return [
            {
                "cell": self.cell,
                "phase": phase,
                "peak_bytes": value,
                "fits": value <= self.capacity_bytes,
                "cell_peak_bytes": self.peak_bytes,
                "cell_fits": self.fits,
                "hardware": self.hardware,
                "num_devices": self.num_devices,
                "capacity_bytes": self.capacity_bytes,
                "parts": self.parts[phase],
            }
            for phase, value in self.phases.items()
        ]


# --- architecture -----------------------------------------------------------------------------------------


def _model_ref(recipe, model_name: str, which: str) -> str:
    entry = recipe.models[model_name]
    return entry.policy if which == "policy" else entry.reward


def _artifact_config(recipe, model_name: str, which: str, artifacts_root) -> dict | None:
    """The config.json the stages wrote (exact vocabulary), when they have run."""
    if artifacts_root is None:
        return None
    from rlhfkit.artifacts import artifact_dirs

    dirs = artifact_dirs(recipe, recipe.models[model_name], Path(artifacts_root))
    path = Path(dirs.sft if which == "policy" else dirs.reward_model) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cell_architecture(recipe, model_name: str, which: str = "policy", artifacts_root=None) -> dict:
    """Architecture numbers of a recipe row's policy or reward model (see ``ModelAdapter.architecture``)."""
    from rlhfkit.models import adapter_for, parse_model_spec

    entry = recipe.models[model_name]
    spec = parse_model_spec(_model_ref(recipe, model_name, which), entry.trust_remote_code)
    adapter = adapter_for(spec)
    written = _artifact_config(recipe, model_name, which, artifacts_root)
    if written is not None:
        return adapter.architecture(written)
    if getattr(spec, "is_reference", False):
        # Published config numbers: computed straight from the dict (no transformers import needed).
        from rlhfkit.registry import architecture_numbers

        return architecture_numbers(dict(adapter.known_checkpoints[spec.reference]), qkv_bias=adapter.qkv_bias)
    if spec.is_preset:
        vocab = _task_info(recipe)["vocab_size"]
        return adapter.architecture(adapter.preset_config(spec.preset, vocab_size=vocab))
    return adapter.architecture(spec)


_TASK_CACHE: dict = {}


def _task_info(recipe, artifacts_root=None) -> dict:
    """Vocabulary size (tiny presets) and the longest prompt in tokens."""
    key = (id(recipe), str(artifacts_root))
    if key in _TASK_CACHE:
        return _TASK_CACHE[key]
    from rlhfkit.stages.pipeline import build_task

    task = build_task(recipe)
    prompts = list(task.rl_prompts) + list(task.eval_prompts)
    info = {"vocab_size": task.tokenizer_vocab_size}
    tokenizer = None
    if artifacts_root is not None:
        from rlhfkit.artifacts import artifact_dirs

        entry = next(iter(recipe.models.values()))
        path = artifact_dirs(recipe, entry, Path(artifacts_root)).tokenizer
        if Path(path).is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer is not None:
        info["prompt_tokens"] = max(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
        info["vocab_size"] = len(tokenizer)
    elif task.tokenizer_kind == "word":
        info["prompt_tokens"] = max(len(p.split()) for p in prompts)
    else:
        info["prompt_tokens"] = max(int(len(p) / 3.5) + 1 for p in prompts)
    _TASK_CACHE[key] = info
    return info


# --- parts ------------------------------------------------------------------------------------------------

_LORA_SHAPES = {
    "q_proj": lambda a: (a["hidden_size"], a["num_heads"] * a["head_dim"]),
    "k_proj": lambda a: (a["hidden_size"], a["num_kv_heads"] * a["head_dim"]),
    "v_proj": lambda a: (a["hidden_size"], a["num_kv_heads"] * a["v_head_dim"]),
    "o_proj": lambda a: (a["num_heads"] * a["v_head_dim"], a["hidden_size"]),
    "gate_proj": lambda a: (a["hidden_size"], a["intermediate_size"]),
    "up_proj": lambda a: (a["hidden_size"], a["intermediate_size"]),
    "down_proj": lambda a: (a["intermediate_size"], a["hidden_size"]),
}


def lora_parameters(arch: dict, r: int, targets) -> int:
    """LoRA A and B matrices: r x (in + out) per adapted linear layer (dense Llama-style names)."""
    per_layer = sum(r * sum(_LORA_SHAPES[t](arch)) for t in targets if t in _LORA_SHAPES)
    return per_layer * arch["num_layers"]


def largest_module_parameters(arch: dict) -> int:
    """Parameters of the biggest single module (embedding, LM head or one linear layer)."""
    linears = [int(i) * int(o) for _, i, o, *_ in arch.get("linear_layers") or ()]
    return max([arch["vocab_size"] * arch["hidden_size"], *linears])


def parameter_tensors(arch: dict, is_causal_lm: bool = True, lora_targets=()) -> int:
    """Weight tensors of a dense decoder (linear weights, two norms per layer, final norm, embedding, head),
    plus LoRA's A and B per adapted linear layer."""
    linears = arch.get("linear_layers") or ()
    count = sum(int(n) for _, _, _, n in linears) + 2 * arch["num_layers"] + 2
    count += (0 if arch["tied_embeddings"] else 1) if is_causal_lm else 1  # LM head / score head
    count += 2 * sum(int(n) for name, _, _, n in linears if name in set(lora_targets))
    return count


def classifier_parameters(arch: dict) -> int:
    """A sequence classifier of the same backbone: no LM head, a one-output score head."""
    head = 0 if arch["tied_embeddings"] else arch["vocab_size"] * arch["hidden_size"]
    return arch["num_parameters"] - head + arch["hidden_size"]


def layer_activation_elements(arch: dict) -> int:
    """Elements one decoder layer keeps for backward, per token (SDPA attention: no T x T matrix kept)."""
    H, I = arch["hidden_size"], arch["intermediate_size"]
    q = arch["num_heads"] * arch["head_dim"]
    kv = arch["num_kv_heads"] * arch["head_dim"]
    # input, normed input, q/k/v, roped q/k, attention output, residual, normed, gate/up/act/product
    return 4 * H + 3 * q + 3 * kv + 4 * I


def _bytes_of(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


@dataclass
class _Model:
    """One model's contribution: stored weights, trainable parameters, the per-token activation numbers."""

    arch: dict
    weight_bytes: float
    trainable: int
    kind: str  # "policy", "reference", "reward", "value"
    tensors: int = 0
    """Parameter tensors (ZeRO-3 keeps bookkeeping per tensor)."""


def plan_cell(recipe, cell, hardware: str = "cpu", num_devices: int | None = None, artifacts_root=None,
              capacity_bytes: int | None = None) -> CellPlan:
    """Predict the per-device peak of one cell in each phase (``capacity_bytes``: a custom device memory)."""
    from rlhfkit.memory import LoraSettings, build_memory_plan
    from rlhfkit.models import adapter_for, parse_model_spec
    from rlhfkit.plugins import get_registry

    plan = build_memory_plan(cell.memory)
    algo = get_registry().get("algorithm", cell.algorithm)
    cfg = recipe.config_for(cell)
    n = num_devices or recipe.run.num_processes
    precision = recipe.run.precision
    gpu = hardware != "cpu" and not hardware.startswith("cpu")
    if hardware == "cpu":
        import psutil

        capacity = psutil.virtual_memory().total
    elif hardware in GPUS:
        capacity = GPUS[hardware]
    else:
        capacity = 0
        if hardware.startswith("cuda"):
            try:
                import torch

                capacity = torch.cuda.get_device_properties(0).total_memory
            except Exception:
                capacity = 0
    if capacity_bytes:
        capacity = capacity_bytes
    info = _task_info(recipe, artifacts_root)
    arch_p = cell_architecture(recipe, cell.model, "policy", artifacts_root)
    arch_r = cell_architecture(recipe, cell.model, "reward", artifacts_root)
    entry = recipe.models[cell.model]
    adapter_p = adapter_for(parse_model_spec(entry.policy, entry.trust_remote_code))
    adapter_r = adapter_for(parse_model_spec(entry.reward, entry.trust_remote_code))
    lora = plan.lora or LoraSettings()

    zero = plan.zero_stage
    mixed = precision in ("bf16", "fp16")
    frozen_b = _bytes_of(precision) if (mixed and (gpu or precision == "bf16")) else 4
    # Trainable models: fp32 under accelerate (autocast); DeepSpeed casts its engines to 16 bit and keeps
    # fp32 master weights in the optimizer.
    train_w_b = 2 if (zero and mixed) else 4
    grad_b = train_w_b
    master_b = 4 if zero else 0  # DeepSpeed keeps an fp32 copy of each partition, also when training in fp32
    adam_b = 8
    act_b = 2 if mixed else 4

    def quantized_bytes(arch, params, is_causal_lm):
        """NF4 linear layers; embeddings, LM head, norms kept and cast to fp32 by prepare_model_for_kbit."""
        kept = arch["num_embedding_parameters"] if is_causal_lm else arch["vocab_size"] * arch["hidden_size"]
        kept += (2 * arch["num_layers"] + 1) * arch["hidden_size"]
        return (params - kept) * NF4_BYTES + kept * 4

    P = arch_p["num_parameters"]
    R = classifier_parameters(arch_r)
    models: list[_Model] = []
    if plan.uses_lora:
        lp = lora_parameters(arch_p, lora.r, lora.target_modules or adapter_p.lora_target_modules)
        base = quantized_bytes(arch_p, P, True) if plan.quantization else P * frozen_b
        targets_p = lora.target_modules or adapter_p.lora_target_modules
        models.append(_Model(arch_p, base + lp * train_w_b, lp, "policy", parameter_tensors(arch_p, True, targets_p)))
    else:
        models.append(_Model(arch_p, P * train_w_b, P, "policy", parameter_tensors(arch_p)))
        models.append(_Model(arch_p, P * frozen_b, 0, "reference", parameter_tensors(arch_p)))
    models.append(_Model(arch_r, R * frozen_b, 0, "reward", parameter_tensors(arch_r, False)))
    if algo.needs_value_model:
        value_lora = plan.value_model_lora if plan.value_model_lora is not None else plan.uses_lora
        if value_lora:
            lv = lora_parameters(arch_r, lora.r, lora.target_modules or adapter_r.lora_target_modules)
            lv += arch_r["hidden_size"]  # modules_to_save: a trainable copy of the score head
            base = quantized_bytes(arch_r, R, False) if plan.quantization else R * frozen_b
            targets_r = lora.target_modules or adapter_r.lora_target_modules
            tensors = parameter_tensors(arch_r, False, targets_r) + 1  # + the trainable copy of the score head
            models.append(_Model(arch_r, base + lv * train_w_b, lv, "value", tensors))
        else:
            models.append(_Model(arch_r, R * train_w_b, R, "value", parameter_tensors(arch_r, False)))

    trained = [m for m in models if m.trainable]
    frozen_total = 0.0
    sharded_total = 0.0
    for m in models:
        if zero == 3:  # trained models are engines; frozen ones are sharded inference-style engines (cell.py)
            params_on_device = m.weight_bytes / n
            if plan.offload_parameters and gpu:
                params_on_device = 0.0
            sharded_total += params_on_device
        else:
            frozen_total += m.weight_bytes
    weights = frozen_total + sharded_total

    # Optimizer state (after the first step it stays): AdamW moments + master weights, sharded by ZeRO.
    optimizer = 0.0
    grads_peak = 0.0
    for m in trained:
        states = m.trainable * (adam_b + master_b)
        grads = m.trainable * grad_b
        if zero:
            states /= n
            grads /= n
        if plan.offload_optimizer and gpu:
            states = 0.0
            grads = 0.0 if zero == 2 else grads
        optimizer += states
        grads_peak = max(grads_peak, grads)

    # DeepSpeed buffers, one set per engine.
    buffers = 0.0
    if zero:
        # The cell writes one DeepSpeed config for both engines, buckets sized by the policy (cell.py).
        bucket = max(1, min(DS_BUCKET_ELEMENTS, int(P)))
        for m in trained:
            if zero == 2:
                buffers += (4.5 * 2 * bucket if gpu else bucket) * grad_b
            else:
                hidden = m.arch["hidden_size"]  # one reduce bucket per dtype + the prefetch bucket
                buffers += bucket * grad_b + 0.9 * hidden * hidden * train_w_b
    framework = GPU_FRAMEWORK_BYTES if gpu else CPU_FRAMEWORK_BYTES + (CPU_DEEPSPEED_BYTES if zero else 0)
    if zero == 3 and not gpu:  # on a GPU this is host memory, not the device's
        framework += sum(m.tensors for m in models) * ZERO3_HOST_BYTES_PER_TENSOR

    # Batch shapes.
    k = getattr(cfg, algo.samples_per_prompt_field, 1) if algo.samples_per_prompt_field else 1
    rows_gen = max(cfg.batch_size, cfg.eval_batch_size)
    rows_mb = cfg.batch_size // max(1, getattr(cfg, "num_minibatches", 1))
    t_q = info["prompt_tokens"]
    t_r = cfg.response_length
    t = t_q + t_r
    kv_b = frozen_b if plan.uses_lora else train_w_b
    static = weights + optimizer + buffers + framework

    # Generation: KV cache of the whole batch at full length, one step's logits, ZeRO-3 gather.
    kv = arch_p["kv_cache_elements_per_token"] * rows_gen * t * kv_b
    gen_logits = rows_gen * arch_p["vocab_size"] * 4 * GEN_LOGIT_COPIES
    gather = 0.0
    gather_whole = getattr(cfg, "zero3_gather_for_generation", True)
    generation = {"static": static, "kv_cache": kv, "logits": gen_logits}
    if zero == 3 and gather_whole:
        # GatheredParameters all-gathers every parameter into a new full-size tensor; the process's own
        # partition (ds_tensor, counted in weights) stays allocated meanwhile.
        gather = models[0].weight_bytes
    elif zero == 3:
        # Hooks on: each module's parameters are gathered before its forward and released after it, so
        # beyond the shards one module's full parameters are live (the prefetch bucket is in zero_buffers).
        module = largest_module_parameters(arch_p) * (frozen_b if plan.uses_lora else train_w_b)
        generation["zero3_largest_module"] = module
    generation["zero3_gather"] = gather

    def live(m):
        """ZeRO-3 forward/backward gathers parameters module by module, at most stage3_max_live_parameters."""
        params = m.weight_bytes / (frozen_b if not m.trainable else train_w_b)
        return min(ZERO3_MAX_LIVE_PARAMETERS, params) * (train_w_b if m.trainable else frozen_b)

    # Scoring: the biggest of the reference log-probs, reward-model and critic forwards (no graphs kept).
    ref_logits = rows_gen * (t_r + 1) * arch_p["vocab_size"] * 4 * SCORE_LOGIT_COPIES
    transient_p = rows_gen * t * layer_activation_elements(arch_p) * act_b
    transient_r = rows_gen * t * (layer_activation_elements(arch_r) + 2 * arch_r["hidden_size"]) * act_b
    scoring = {"static": static, "forward": max(ref_logits + transient_p, transient_r)}
    if zero == 3:
        scoring["zero3_live_parameters"] = max(live(m) for m in models)

    # Training: activations of one minibatch (policy, plus the critic's graph under PPO), logits, gradients.
    def activations(arch, tokens):
        per_layer = layer_activation_elements(arch) * tokens * act_b
        if plan.gradient_checkpointing:
            return arch["num_layers"] * arch["hidden_size"] * tokens * act_b + per_layer
        return arch["num_layers"] * per_layer

    tokens_mb = rows_mb * t
    train_act = activations(arch_p, tokens_mb)
    train_logits = rows_mb * (t_r + 1) * arch_p["vocab_size"] * 4 * TRAIN_LOGIT_COPIES
    if algo.needs_value_model:
        train_act += activations(arch_r, tokens_mb)
    # The AdamW step (foreach, as the cell builds it) runs after backward has freed the activations; its one
    # temporary, sqrt of the second moments, is a copy of the model's trainable (ZeRO: partitioned) fp32 state.
    step_temporary = max((m.trainable * 4 / (n if zero else 1) for m in trained), default=0.0)
    if plan.offload_optimizer and gpu:
        step_temporary = 0.0
    training = {"static": static, "activations": train_act, "logits": train_logits, "gradients": grads_peak,
                "optimizer_step_excess": max(0.0, step_temporary - train_act - train_logits)}
    if zero == 3:
        training["zero3_live_parameters"] = sum(live(m) for m in trained)

    parts = {"generation": generation, "scoring": scoring, "training": training}
    detail = {"weights": weights, "optimizer": optimizer, "zero_buffers": buffers, "framework": framework}
    parts = {
        phase: {**{key: int(v) for key, v in detail.items()}, **{key: int(v) for key, v in p.items() if key != "static"}}
        for phase, p in parts.items()
    }
    phases = {phase: int(sum(p.values())) for phase, p in parts.items()}
    return CellPlan(
        cell=cell.id,
        model=cell.model,
        algorithm=cell.algorithm,
        memory=cell.memory,
        hardware=hardware,
        num_devices=n,
        capacity_bytes=int(capacity),
        phases=phases,
        parts=parts,
        assumptions={
            "precision": precision,
            "policy_parameters": P,
            "reward_parameters": R,
            "trainable": {m.kind: m.trainable for m in trained},
            "rollout_rows": rows_gen,
            "minibatch_rows": rows_mb,
            "samples_per_prompt": k,
            "prompt_tokens": t_q,
            "response_tokens": t_r,
            "gradient_checkpointing": plan.gradient_checkpointing,
            "frozen_models": "sharded (ZeRO-3 inference engines)" if zero == 3 else "replicated",
            "zero3_gather_for_generation": bool(gather_whole) if zero == 3 else None,
        },
    )


def plan_recipe(recipe, gpu: str | None = None, num_gpus: int | None = None, artifacts_root=None,
                gpu_memory_gib: float | None = None) -> list[CellPlan]:
    """Plans of every cell.  Hardware from the arguments (the CLI), else the recipe's ``[run]`` keys ``gpu``,
    ``num_gpus`` and ``gpu_memory_gib``, else this machine's CPU memory; never from the description text.
    Devices default to ``[run] num_processes``."""
    gpu = gpu or recipe.run.gpu or None
    num_gpus = num_gpus or recipe.run.num_gpus or recipe.run.num_processes
    memory_gib = gpu_memory_gib or recipe.run.gpu_memory_gib or None
    hardware, capacity = gpu_capacity(gpu) if gpu else ("cpu", None)
    if memory_gib:
        capacity = int(memory_gib * GiB)
        if not gpu:
            hardware = f"{memory_gib:g}GiB-device"
    return [plan_cell(recipe, cell, hardware, num_gpus, artifacts_root, capacity) for cell in recipe.cells()]


def format_bytes(value: float) -> str:
    if value >= GiB:
        return f"{value / GiB:.1f} GiB"
    return f"{value / MiB:.1f} MiB"


__all__ = ["plan_cell", "plan_recipe", "cell_architecture", "CellPlan", "GPUS", "format_bytes", "gpu_capacity"]
