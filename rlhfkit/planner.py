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

The peak of a cell is the max over its phases; it fits when peak <= the device's memory.  That peak is the
worst case: every answer reaches ``response_length``.  Beside it, the typical-length peak sizes the same cell with
answers of ``[run] plan_typical_length_fraction`` x ``response_length`` (``rlhfkit plan --typical-length``); a
batch is padded to its longest answer, so it is the typical step when a batch's answers stop at similar lengths.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rlhfkit.architecture import lora_parameters  # noqa: F401  (re-exported: exact for every family's layers)
from rlhfkit.cellspec.arch import cell_architecture, cell_model_set, task_info
from rlhfkit.cellspec.modelset import DTYPE_BYTES, ZERO3_MAX_LIVE_PARAMETERS, adamw_fused  # noqa: F401  (re-exported)

ZERO3_SUB_GROUP_SIZE = 1_000_000_000  # DeepSpeed's default sub_group_size: ZeRO-3 steps its partition in these
from rlhfkit.engine.steps import Phase  # torch-free

GiB = 1024**3
PHASES = tuple(phase.value for phase in Phase)
MiB = 1024**2

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
# ZeRO-3 host bookkeeping (CPU memory, also on a GPU machine).  DeepSpeed keeps state per *module* (forward and
# backward hooks, the autograd functions around each call, the traced module order) as well as per partitioned
# parameter tensor (ds_* attributes, the partition).  `python benchmarks/bench_zero3_host.py` (DeepSpeed 0.19,
# a second engine, 10 steps, anonymous resident memory; 2026-12-01): 300 extra parameter-free modules cost
# 24.1 KiB each with one process, 24.4 with two; 300 extra one-tensor modules cost 26.6 / 22.3 KiB per tensor
# more than empty ones; with a peer every ZeRO-3 engine holds 1.5 MiB more (gloo collectives' state).  The old
# per-tensor figure (33 KiB, from one-parameter modules, where modules = tensors) missed peft's LoRA layers:
# ~10 modules per adapted linear layer for 2 tensors, so the tiny ZeRO-3 + LoRA PPO cell of the seed table's
# CPU twin planned 39.0 MiB against 53.1 measured (2 processes).
ZERO3_HOST_BYTES_PER_MODULE = 24 * 1024
ZERO3_HOST_BYTES_PER_TENSOR = 24 * 1024
ZERO3_HOST_BYTES_PER_ENGINE_PEERS = int(1.5 * MiB)
# peft's LoRA layer (peft 0.18): the wrapper, lora_dropout / lora_A / lora_B ModuleDicts with one module each,
# lora_embedding_A/B ParameterDicts and lora_magnitude_vector: 10 modules beside the base linear layer; the
# PeftModel and LoraModel wrappers: 2; a modules_to_save head: its wrapper, a ModuleDict and the copy.
LORA_MODULES_PER_TARGET = 10
PEFT_WRAPPER_MODULES = 2
MODULES_PER_SAVED_HEAD = 3

NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 absmax blocks
# Peak bytes per training logit (rows x (response + 1) x vocab) of a PPO update: forward (logits, /temperature,
# the entropy statistic's softmax, computed without autograd) and backward (the log-softmax's and the
# gather's gradients).  Measured 15.75 B with torch's allocator events, 19.66 B before the entropy stopped
# keeping its softmax for backward: `python benchmarks/bench_logit_bytes.py` (rows 4, 64 response tokens,
# vocab 85 vs 8192; tests/test_logit_bytes.py keeps it at or under this figure).
TRAIN_LOGIT_BYTES = 16
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
    load_bytes: int = 0
    """The device while the models are built, where it differs from the phases (ZeRO-3: the shards and one
    module gathered whole, before any optimizer state exists); 0 elsewhere."""
    assumptions: dict = field(default_factory=dict)
    typical_phases: dict[str, int] = field(default_factory=dict)
    """The phases with answers of ``typical_length_fraction`` x ``response_length`` (``phases``: the worst case,
    every answer at ``response_length``)."""
    typical_length_fraction: float = 1.0

    @property
    def peak_bytes(self) -> int:
        return max(*self.phases.values(), self.load_bytes)

    @property
    def typical_peak_bytes(self) -> int:
        return max(*(self.typical_phases or self.phases).values(), self.load_bytes)

    @property
    def peak_phase(self) -> str:
        phase = max(self.phases, key=self.phases.get)
        return "load" if self.load_bytes > self.phases[phase] else phase

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.capacity_bytes

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(peak_bytes=self.peak_bytes, peak_phase=self.peak_phase, fits=self.fits,
                   typical_peak_bytes=self.typical_peak_bytes)
        return out

    def rows(self) -> list[dict]:
        """One JSON object per phase (what ``rlhfkit plan --json`` prints)."""
        return [
            {
                "cell": self.cell,
                "phase": phase,
                "peak_bytes": value,
                "fits": value <= self.capacity_bytes,
                "typical_peak_bytes": self.typical_phases.get(phase, value),
                "typical_length_fraction": self.typical_length_fraction,
                "cell_peak_bytes": self.peak_bytes,
                "cell_typical_peak_bytes": self.typical_peak_bytes,
                "cell_fits": self.fits,
                "hardware": self.hardware,
                "num_devices": self.num_devices,
                "capacity_bytes": self.capacity_bytes,
                "parts": self.parts[phase],
            }
            for phase, value in self.phases.items()
        ]


# --- parts ------------------------------------------------------------------------------------------------

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


def module_count(arch: dict, lora_targets=(), modules_to_save: int = 0) -> int:
    """``nn.Module`` objects of a decoder as transformers builds it: the linear layers, six per layer (decoder
    layer, attention, MLP, activation, two norms) and seven around them (the model, its backbone, embedding,
    layer list, final norm, rotary embedding, head); peft's modules under LoRA.  Exact for Llama, Qwen2 and
    Deepseek; Phi3 (residual dropouts) and MiniCPM3 (latent-attention norms) have two more per layer."""
    linears = arch.get("linear_layers") or ()
    count = sum(int(n) for _, _, _, n in linears) + 6 * arch["num_layers"] + 7
    adapted = sum(int(n) for name, _, _, n in linears if name in set(lora_targets))
    if adapted or modules_to_save:
        count += LORA_MODULES_PER_TARGET * adapted + PEFT_WRAPPER_MODULES + MODULES_PER_SAVED_HEAD * modules_to_save
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


def trainable_tensor_numels(arch: dict, role) -> list[int]:
    """Element counts of a trained role's trainable tensors (for optimizers whose state depends on tensor
    size, e.g. bitsandbytes' 8-bit states only for tensors of 4096 elements and more)."""
    H, linears = arch["hidden_size"], arch.get("linear_layers") or ()
    if role.trainable == "lora":
        targets = set(role.lora.target_modules or role_targets(role, arch))
        numels = [n for name, i, o, c in linears if name in targets for n in [role.lora.r * int(i), role.lora.r * int(o)] * int(c)]
        return numels + [H] * len(role.modules_to_save)
    numels = [arch["vocab_size"] * H, H] + [H] * 2 * arch["num_layers"]
    numels += [int(i) * int(o) for _, i, o, c in linears for _ in range(int(c))]
    if role.head == "classifier":
        return numels + [H]
    return numels + ([] if arch["tied_embeddings"] else [arch["vocab_size"] * H])


def role_targets(role, arch: dict) -> tuple[str, ...]:
    """LoRA target modules of a role: its settings', else its family's default (set by :func:`_size_role`)."""
    return tuple(role.lora.target_modules or arch.get("_default_lora_targets") or ())


@dataclass
class _Model:
    """One model's contribution: stored weights, trainable parameters, the per-token activation numbers."""

    role: Any
    """Its :class:`rlhfkit.cellspec.modelset.ModelRole`."""
    arch: dict
    weight_bytes: float
    trainable: int
    tensors: int = 0
    """Parameter tensors (ZeRO-3 keeps bookkeeping per tensor)."""
    param_bytes: int = 4
    """Bytes per parameter of its compute weights (gathered by ZeRO-3, cached by generation)."""
    modules: int = 0
    """``nn.Module`` objects (ZeRO-3 keeps bookkeeping per module too)."""

    @property
    def kind(self) -> str:
        return self.role.role


def quantized_bytes(arch: dict, params: int, is_causal_lm: bool) -> float:
    """NF4 linear layers; embeddings, LM head, norms kept and cast to fp32 by prepare_model_for_kbit."""
    kept = arch["num_embedding_parameters"] if is_causal_lm else arch["vocab_size"] * arch["hidden_size"]
    kept += (2 * arch["num_layers"] + 1) * arch["hidden_size"]
    return (params - kept) * NF4_BYTES + kept * 4


def _size_role(role, ms, arch: dict, default_targets) -> _Model:
    """What one separate model of the set weighs, as the builder makes it (rlhfkit/cellspec/build.py)."""
    is_lm = role.head == "causal_lm"
    params = arch["num_parameters"] if is_lm else classifier_parameters(arch)
    stored = DTYPE_BYTES[role.dtype]
    if role.trainable == "lora":
        arch = {**arch, "_default_lora_targets": tuple(default_targets)}
        targets = role_targets(role, arch)
        trained = ms.trained_param_bytes(role)
        lp = lora_parameters(arch, role.lora.r, targets)
        lp += arch["hidden_size"] * len(role.modules_to_save)  # modules_to_save: a trainable copy of the score head
        base = quantized_bytes(arch, params, is_lm) if role.quantization else params * stored
        tensors = parameter_tensors(arch, is_lm, targets) + len(role.modules_to_save)
        modules = module_count(arch, targets, len(role.modules_to_save))
        return _Model(role, arch, base + lp * trained, lp, tensors, stored, modules)
    tensors, modules = parameter_tensors(arch, is_lm), module_count(arch)
    if role.trainable == "full":
        trained = ms.trained_param_bytes(role)
        return _Model(role, arch, params * trained, params, tensors, trained, modules)
    return _Model(role, arch, params * stored, 0, tensors, stored, modules)


def _capacity(hardware: str) -> int:
    if hardware == "cpu":
        import psutil

        return psutil.virtual_memory().total
    if hardware in GPUS:
        return GPUS[hardware]
    if hardware.startswith("cuda"):
        try:
            import torch

            return torch.cuda.get_device_properties(0).total_memory
        except Exception:
            return 0
    return 0


@dataclass
class _Cell:
    """What every phase of one cell's plan reads."""

    ms: Any
    models: list
    n: int
    gpu: bool
    cfg: Any
    algo: Any
    info: dict
    arch_p: dict
    arch_r: dict | None
    """``None``: no reward model (a function reward)."""
    length_fraction: float = 1.0
    """Answers' length as a fraction of ``response_length`` (1: the worst case)."""

    @property
    def zero(self) -> int:
        return self.ms.zero_stage

    @property
    def trained(self) -> list:
        return [m for m in self.models if m.trainable]

    @property
    def policy(self) -> _Model:
        return self.models[0]

    @property
    def act_b(self) -> int:
        return 2 if self.ms.precision in ("bf16", "fp16") else 4

    @property
    def rows_gen(self) -> int:
        return max(self.cfg.batch_size, self.cfg.eval_batch_size)

    @property
    def rows_mb(self) -> int:
        return self.cfg.batch_size // max(1, getattr(self.cfg, "num_minibatches", 1))

    @property
    def response_tokens(self) -> int:
        return max(1, round(self.cfg.response_length * self.length_fraction))

    @property
    def tokens(self) -> int:
        return self.info["prompt_tokens"] + self.response_tokens


def _on_device(c: _Cell, m: _Model) -> float:
    """A model's weights on one device: sharded by ZeRO-3, off the GPU when offloaded or kept on the host."""
    if m.role.zero_stage == 3:
        return 0.0 if (m.role.offload_parameters and c.gpu) else m.weight_bytes / c.n
    if m.role.device == "cpu" and c.gpu:
        return 0.0
    return m.weight_bytes


def _model_states(c: _Cell) -> dict:
    """Per device, as DeepSpeed 0.19 allocates them (runtime/zero/stage_1_and_2.py, stage3.py):

    - ``weights``: every model's stored weights (ZeRO-3: 1/N each; offloaded parameters off the GPU);
    - ``optimizer``: the optimizer's state (AdamW: 8 B/param) + DeepSpeed's fp32 master partition (4 B);
    - ``zero3_gradients``: ZeRO-3's flat 16-bit gradient partition (``grad_partitions_flat_buffer``),
      allocated when the engine is built and kept: static, in host memory under offload;
    - ``gradients``: ZeRO-0/1/2's gradients, alive from backward to the step (ZeRO-2: partitioned; under
      offload in a pinned host buffer);
    - ``step_fp32_gradients``: the fp32 copy of the gradient partition made for the step (ZeRO-1/2
      ``single_grad_partition``; ZeRO-3 ``_prepare_fp32_grad_for_sub_group``, one sub-group of at most
      ``sub_group_size`` = 1e9 elements at a time); on the host under offload.
    """
    per_role = {m.kind: {"weights": _on_device(c, m)} for m in c.models}
    for m in c.trained:
        role = m.role
        zero = role.zero_stage
        shard = c.n if zero else 1
        kept = 0.0 if (role.offload_optimizer and c.gpu) else 1.0  # offloaded: host memory
        master = 4 if zero else 0  # DeepSpeed keeps an fp32 copy of each partition, also when training in fp32
        states = role.optimizer.state_of(m.trainable, trainable_tensor_numels(m.arch, role)) + m.trainable * master
        grad = m.trainable * c.ms.trained_param_bytes(role) / shard
        copy = min(m.trainable / shard, ZERO3_SUB_GROUP_SIZE) * 4 if zero == 3 else (m.trainable / shard * 4 if zero else 0)
        per_role[m.kind].update(optimizer=kept * states / shard, gradients=kept * grad, step_fp32_gradients=kept * copy)
    trained = [per_role[m.kind] for m in c.trained]
    zero3 = c.zero == 3
    return {
        "weights": sum(r["weights"] for r in per_role.values()),
        "optimizer": sum(r["optimizer"] for r in trained),
        "zero3_gradients": sum(r["gradients"] for r in trained) if zero3 else 0.0,
        "gradients": 0.0 if zero3 else max((r["gradients"] for r in trained), default=0.0),
        "step_fp32_gradients": max((r["step_fp32_gradients"] for r in trained), default=0.0),
        "per_role": per_role,
    }


def _zero_buffers(c: _Cell) -> dict:
    """DeepSpeed's communication buffers, sized by the one config the cell writes (ModelSet.deepspeed).

    ZeRO-2 (``setup_buckets``): one reduce bucket per gradient dtype, two with ``overlap_comm`` (double
    buffering), allocated when backward starts and released when its reduction ends (``_release_ipg_buffers``)
    -- backward only, and one engine at a time.  ZeRO-3: the reduce bucket is allocated when the engine is
    built and kept (static), plus the prefetch bucket of parameters fetched ahead.
    """
    ds = c.ms.deepspeed
    if ds is None:
        return {"static": 0.0, "backward": 0.0}
    static = backward = 0.0
    for m in c.trained:
        grad_b = c.ms.trained_param_bytes(m.role)
        if ds.stage == 3:
            static += ds.reduce_bucket_size * grad_b + 0.9 * m.arch["hidden_size"] ** 2 * grad_b
        else:
            backward = max(backward, (2 if ds.overlap_comm else 1) * ds.reduce_bucket_size * grad_b)
    return {"static": static, "backward": backward}


def _framework(c: _Cell) -> float:
    if c.gpu:
        return GPU_FRAMEWORK_BYTES
    framework = CPU_FRAMEWORK_BYTES + (CPU_DEEPSPEED_BYTES if c.zero else 0)
    if c.zero == 3:  # on a GPU this is host memory, not the device's
        framework += zero3_host_bytes(c.models, c.n)
    return framework


def zero3_host_bytes(models, num_processes: int) -> int:
    """DeepSpeed ZeRO-3's host bookkeeping of the cell's engines (one per separate model)."""
    per_model = sum(m.modules * ZERO3_HOST_BYTES_PER_MODULE + m.tensors * ZERO3_HOST_BYTES_PER_TENSOR for m in models)
    return per_model + (len(models) * ZERO3_HOST_BYTES_PER_ENGINE_PEERS if num_processes > 1 else 0)


def _live(c: _Cell, m: _Model) -> float:
    """ZeRO-3 forward/backward gathers parameters module by module, at most stage3_max_live_parameters."""
    params = m.weight_bytes / m.param_bytes
    return min(c.ms.deepspeed.max_live_parameters, params) * m.param_bytes


def _generation(c: _Cell) -> dict:
    """KV cache of the whole batch at full length, one step's logits, the ZeRO-3 gather."""
    policy = c.policy
    kv = c.arch_p["kv_cache_elements_per_token"] * c.rows_gen * c.tokens * policy.param_bytes
    parts = {"kv_cache": kv, "logits": c.rows_gen * c.arch_p["vocab_size"] * 4 * GEN_LOGIT_COPIES}
    gather = 0.0
    if c.zero == 3 and getattr(c.cfg, "zero3_gather_for_generation", True):
        # GatheredParameters all-gathers every parameter into a new full-size tensor; the process's own
        # partition (ds_tensor, counted in weights) stays allocated meanwhile.
        gather = policy.weight_bytes
    elif c.zero == 3:
        # Hooks on: each module's parameters are gathered before its forward and released after it, so
        # beyond the shards one module's full parameters are live (the prefetch bucket is in zero_buffers).
        parts["zero3_largest_module"] = largest_module_parameters(c.arch_p) * policy.param_bytes
    parts["zero3_gather"] = gather
    return parts


def _scoring(c: _Cell) -> dict:
    """The biggest of the reference log-probs, reward-model and critic forwards (no graphs kept)."""
    t_r = c.response_tokens
    ref_logits = c.rows_gen * (t_r + 1) * c.arch_p["vocab_size"] * 4 * SCORE_LOGIT_COPIES
    transient_p = c.rows_gen * c.tokens * layer_activation_elements(c.arch_p) * c.act_b
    transient_r = 0 if c.arch_r is None else (
        c.rows_gen * c.tokens * (layer_activation_elements(c.arch_r) + 2 * c.arch_r["hidden_size"]) * c.act_b)
    parts = {"forward": max(ref_logits + transient_p, transient_r)}
    if c.zero == 3:
        parts["zero3_live_parameters"] = max(_live(c, m) for m in c.models)
    return parts


def _activations(c: _Cell, m: _Model, tokens: int) -> float:
    """Activations one model keeps for backward: all layers, or under gradient checkpointing the layer
    inputs plus one layer's recomputation."""
    arch = m.arch
    per_layer = layer_activation_elements(arch) * tokens * c.act_b
    if m.role.gradient_checkpointing:
        return arch["num_layers"] * arch["hidden_size"] * tokens * c.act_b + per_layer
    return arch["num_layers"] * per_layer


def _fused_adamw(c: _Cell, m: _Model) -> bool:
    """The cell's rule (modelset.adamw_fused) for a trained model on torch AdamW (a strategy's own optimizer: no)."""
    if m.role.optimizer is not None and m.role.optimizer.factory is not None:
        return False
    return adamw_fused(getattr(c.cfg, "adamw_kernel", "foreach"), int(m.trainable), c.gpu, c.zero)


def _training(c: _Cell, states: dict, buckets: float) -> dict:
    """One minibatch: backward (activations of the policy, plus the critic's graph under PPO, logits,
    gradients, ZeRO-2's buckets), then the optimizer step (gradients, the fp32 gradient copy, the optimizer's
    largest temporary), which runs after backward has freed the activations and buckets."""
    tokens_mb = c.rows_mb * c.tokens
    train_act = sum(_activations(c, m, tokens_mb) for m in c.trained if m.role.role in ("policy", "critic"))
    train_logits = c.rows_mb * (c.response_tokens + 1) * c.arch_p["vocab_size"] * TRAIN_LOGIT_BYTES
    # torch AdamW foreach: sqrt of the second moments, a copy of the trainable (ZeRO: partitioned) fp32 state;
    # fused AdamW ([rl] adamw_kernel) steps tensor by tensor in place: no temporary.
    step_temporary = 0.0
    for m in c.trained:
        if not (m.role.offload_optimizer and c.gpu) and not _fused_adamw(c, m):
            step_temporary = max(step_temporary, m.trainable * m.role.optimizer.step_temporary_bytes / (c.n if c.zero else 1))
    backward = train_act + train_logits + buckets
    step = states["step_fp32_gradients"] + step_temporary
    parts = {"activations": train_act, "logits": train_logits, "gradients": states["gradients"],
             "zero2_buckets": buckets, "optimizer_step_excess": max(0.0, step - backward)}
    if c.zero == 3:
        parts["zero3_live_parameters"] = sum(_live(c, m) for m in c.trained)
    return parts


def _load(c: _Cell) -> float:
    """The device while the models are built (rlhfkit/cellspec/build.py).  Under ZeRO-3 every model of the set
    is built under DeepSpeed's partitioned init (``ModelRole.partitioned_init``): each parameter is split as
    it is created and transformers loads the checkpoint module by module into the shards, so the device holds
    the models' shards (as in every phase), the parameters of the one module being loaded gathered whole
    (``GatheredParameters``; the shard stays), and LoRA adapters whole until their engine partitions them;
    optimizer states, gradients and buffers do not exist yet.  transformers reads the checkpoint on rank 0
    only, in host memory, as memory-mapped file pages (on the CPU, measured: rank 0 peaked 35 MiB above rank 1
    reading an 84 MiB checkpoint; not counted).  A model the set does not shard at load (a quantised base)
    loads whole.  Measured: benchmarks/bench_zero3_load.py (docs/memory.md)."""
    if c.zero != 3:
        return 0.0  # nothing is partitioned: the models sit as they will stay (counted in every phase)
    weights = gathered = 0.0
    for m in c.models:
        if not m.role.partitioned_init:
            weights += m.weight_bytes if (m.role.device == "accelerator" or not c.gpu) else 0.0
            continue
        weights += _on_device(c, m)
        if m.role.trainable == "lora":  # created after the load, partitioned by the engine
            weights += m.trainable * c.ms.trained_param_bytes(m.role) * (1 - 1 / c.n)
        gathered = max(gathered, largest_module_parameters(m.arch) * m.param_bytes)
    return _framework(c) + weights + gathered


def _cell_models(recipe, cell, ms, artifacts_root) -> tuple[list, dict, dict]:
    """The separate models of the set, sized (policy first), and the policy's and reward model's numbers."""
    from rlhfkit.models import adapter_for, parse_model_spec

    entry = recipe.models[cell.model]
    arch = {"policy": cell_architecture(recipe, cell.model, "policy", artifacts_root), "reward": None}
    refs = {"policy": entry.policy}
    if ms.reward is not None:  # a function reward (reward = "fn:...") has no reward model to size
        arch["reward"] = cell_architecture(recipe, cell.model, "reward", artifacts_root)
        refs["reward"] = entry.reward
    targets = {k: adapter_for(parse_model_spec(v, entry.trust_remote_code)).lora_target_modules for k, v in refs.items()}
    models = [_size_role(role, ms, arch[role.arch_of], targets[role.arch_of]) for role in ms.roles() if role.separate]
    return models, arch["policy"], arch["reward"]


def _phase_parts(c: _Cell) -> tuple[dict, dict, float]:
    """Every phase's parts (bytes, per device), the model states they were built from, and the static bytes
    (weights, states, static buffers, framework: in every phase)."""
    states = _model_states(c)
    buffers = _zero_buffers(c)
    detail = {"weights": states["weights"], "optimizer": states["optimizer"], "zero3_gradients": states["zero3_gradients"],
              "zero_buffers": buffers["static"], "framework": _framework(c)}
    phases_parts = {Phase.GENERATION.value: _generation(c), Phase.SCORING.value: _scoring(c),
                    Phase.TRAINING.value: _training(c, states, buffers["backward"])}
    parts = {phase: {**{k: int(v) for k, v in detail.items()}, **{k: int(v) for k, v in p.items()}}
             for phase, p in phases_parts.items()}
    return parts, states, sum(detail.values())


def plan_cell(recipe, cell, hardware: str = "cpu", num_devices: int | None = None, artifacts_root=None,
              capacity_bytes: int | None = None, typical_length_fraction: float | None = None) -> CellPlan:
    """Predict the per-device peak of one cell in each phase, from the cell's model set (``capacity_bytes``: a
    custom device memory, ``--gpu-memory-gib``): the worst case (every answer at ``response_length``) and,
    beside it, answers of ``typical_length_fraction`` x ``response_length`` (default ``[run]
    plan_typical_length_fraction``)."""
    from rlhfkit.plugins import get_registry

    gpu = hardware != "cpu" and not hardware.startswith("cpu")
    ms = cell_model_set(recipe, cell, gpu, artifacts_root)
    models, arch_p, arch_r = _cell_models(recipe, cell, ms, artifacts_root)
    c = _Cell(ms=ms, models=models, n=num_devices or recipe.run.num_processes, gpu=gpu, cfg=recipe.config_for(cell),
              algo=get_registry().get("algorithm", cell.algorithm), info=task_info(recipe, artifacts_root),
              arch_p=arch_p, arch_r=arch_r)
    parts, states, _ = _phase_parts(c)
    fraction = recipe.run.plan_typical_length_fraction if typical_length_fraction is None else typical_length_fraction
    typical = replace(c, length_fraction=fraction)
    typical_parts, _, _ = _phase_parts(typical)
    return CellPlan(
        cell=cell.id, model=cell.model, algorithm=cell.algorithm, memory=cell.memory, hardware=hardware,
        num_devices=c.n, capacity_bytes=int(capacity_bytes or _capacity(hardware)),
        phases={phase: int(sum(p.values())) for phase, p in parts.items()}, parts=parts,
        load_bytes=int(_load(c)),
        assumptions={**_assumptions(c), "typical_length": _typical_text(typical),
                     "model_states": {k: {p: int(v) for p, v in r.items()} for k, r in states["per_role"].items()}},
        typical_phases={phase: int(sum(p.values())) for phase, p in typical_parts.items()},
        typical_length_fraction=fraction,
    )


def _typical_text(typical: _Cell) -> str:
    return (f"typical: answers of {typical.length_fraction:g} x response_length ({typical.response_tokens} of "
            f"{typical.cfg.response_length} tokens; a batch is padded to its longest answer); peak_bytes: worst case, "
            "every answer at response_length")


def _assumptions(c: _Cell) -> dict:
    k = getattr(c.cfg, c.algo.samples_per_prompt_field, 1) if c.algo.samples_per_prompt_field else 1
    return {
        "precision": c.ms.precision,
        "policy_parameters": c.arch_p["num_parameters"],
        "reward_parameters": classifier_parameters(c.arch_r) if c.arch_r is not None else 0,
        "trainable": {m.kind: m.trainable for m in c.trained},
        "rollout_rows": c.rows_gen,
        "minibatch_rows": c.rows_mb,
        "samples_per_prompt": k,
        "prompt_tokens": c.info["prompt_tokens"],
        "response_tokens": c.cfg.response_length,
        "gradient_checkpointing": c.ms.gradient_checkpointing,
        "frozen_models": "sharded (ZeRO-3 inference engines)" if c.zero == 3 else "replicated",
        "zero3_gather_for_generation": bool(getattr(c.cfg, "zero3_gather_for_generation", True)) if c.zero == 3 else None,
        "model_set": {r.role: _role_summary(r) for r in c.ms.roles()},
    }


def _role_summary(role) -> str:
    """One line per role for ``rlhfkit plan --json``: what it starts from and how it is held."""
    if not role.separate:
        return f"{role.adapters_off_of} with adapters disabled"
    how = {"full": "full", "lora": f"LoRA r={role.lora.r}" if role.lora else "LoRA", "none": "frozen"}[role.trainable]
    bits = [f"from {role.start}", how, role.quantization or role.dtype]
    if role.zero_stage:
        bits.append(f"ZeRO-{role.zero_stage}")
    if role.optimizer is not None and role.optimizer.name != "adamw":
        bits.append(role.optimizer.name)
    if role.device != "accelerator":
        bits.append(f"on {role.device}")
    return ", ".join(bits)


def plan_recipe(recipe, gpu: str | None = None, num_gpus: int | None = None, artifacts_root=None,
                gpu_memory_gib: float | None = None, typical_length_fraction: float | None = None) -> list[CellPlan]:
    """Plans of every cell.  Hardware from the arguments (the CLI), else the recipe's ``[run]`` keys ``gpu``,
    ``num_gpus`` and ``gpu_memory_gib``, else this machine's CPU memory; never from the description text.
    Devices default to ``[run] num_processes``; the typical length to ``[run] plan_typical_length_fraction``."""
    gpu = gpu or recipe.run.gpu or None
    num_gpus = num_gpus or recipe.run.num_gpus or recipe.run.num_processes
    memory_gib = gpu_memory_gib or recipe.run.gpu_memory_gib or None
    hardware, capacity = gpu_capacity(gpu) if gpu else ("cpu", None)
    if memory_gib:
        capacity = int(memory_gib * GiB)
        if not gpu:
            hardware = f"{memory_gib:g}GiB-device"
    return [plan_cell(recipe, cell, hardware, num_gpus, artifacts_root, capacity, typical_length_fraction)
            for cell in recipe.cells()]


def format_bytes(value: float) -> str:
    if value >= GiB:
        return f"{value / GiB:.1f} GiB"
    return f"{value / MiB:.1f} MiB"


__all__ = ["plan_cell", "plan_recipe", "cell_architecture", "CellPlan", "GPUS", "format_bytes", "gpu_capacity"]
