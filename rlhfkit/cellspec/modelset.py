"""The models of a cell, described once: the builder (rlhfkit/cellspec/build.py) builds exactly this, the
planner (rlhfkit/planner.py) sizes exactly this.

Plain data and pure functions only: no torch, no registry import (strategies and the algorithm spec are
passed in).  The rules that used to be written twice, once in the cell and once in the planner, live here:

- no separate reference under LoRA: the reference is the policy's base with the adapters disabled;
- PPO's critic (:func:`critic_start`) starts from the reward model when there is one reading the policy's tokens
  (``AlgorithmSpec.critic_from``), otherwise from the SFT policy with a fresh one-label score head
  (``critic start = "sft"``); it follows the policy's LoRA (``MemoryPlan.value_model_lora`` overrides), keeping
  its ``score`` head trainable (peft ``modules_to_save``);
- a row whose reward is a function (``reward = "fn:NAME"``) has no reward-model role;
- QLoRA quantises the bases of LoRA-trained models only; frozen models are stored in the frozen dtype;
- trained full weights load in fp32 (accelerate autocasts; DeepSpeed casts its engines to 16 bit and keeps
  fp32 master weights), frozen ones in bf16 under bf16, fp16 under fp16 on CUDA, else fp32;
- under ZeRO-3 the frozen models are inference-only ZeRO-3 engines (sharded), else replicated;
- the DeepSpeed settings (bucket sizes: DeepSpeed's 5e8 default capped at the policy's size; ZeRO-3 prefetch
  0.9 h^2 and persistence 10 h, what accelerate's ``auto`` picks; overlap_comm on CUDA only).

Memory strategies shape the set through :meth:`rlhfkit.registry.MemoryStrategy.shape` after these rules
(e.g. an 8-bit optimizer, or the frozen models on the host), so a new strategy is a plugin, not a core edit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DS_BUCKET_ELEMENTS = 500_000_000
"""DeepSpeed's default reduce/all-gather bucket (elements)."""
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000
"""DeepSpeed's default ``stage3_max_live_parameters`` (not written into the config)."""


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft)."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: updates are scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA branch; 0 keeps rollout log-probs equal to training log-probs."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt (in a recipe: ``target_modules=q_proj|v_proj``); ``None`` takes the model family's
    default."""

    def __post_init__(self):
        if self.r < 1:
            raise ValueError("r must be >= 1")
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be >= 0 and < 1")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module (leave it out for the family's default)")


@dataclass
class MemoryPlan:
    """What a composed strategy asks for, built by applying each strategy part in order."""

    strategy: str
    """The composed name as written in the recipe (``"zero2+lora"``)."""
    parts: list[str] = field(default_factory=list)
    lora: LoraSettings | None = None
    """Train LoRA adapters instead of the full weights; the reference policy is the base, adapters off."""
    quantization: str | None = None
    """``"nf4"``: frozen base weights in 4-bit NF4 with double quantisation (QLoRA)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0 = plain data parallel)."""
    offload_optimizer: bool = False
    offload_parameters: bool = False
    gradient_checkpointing: bool = False
    value_model_lora: bool | None = None
    """Train the critic with LoRA too; ``None`` follows ``lora``."""

    @property
    def uses_lora(self) -> bool:
        return self.lora is not None


FUSED_ADAMW_MIN_TRAINABLE = 2_000_000
"""``adamw_kernel = "auto"`` fuses torch AdamW on the CPU from this many trainable parameters (on CUDA always).
Measured on Llama shapes, one thread (benchmarks/bench_adamw.py): foreach / fused 0.74 / 0.30 ms a step at 0.1M
parameters, 15.8 / 2.7 ms at 3.0M; a tiny-preset RLOO step is ~30 ms and a hidden-256 x 4-layer one ~300 ms
(PPO: 32 optimizer steps in ~2 s).  Every shipped recipe's models are under it (the largest, hh_rlhf_tiny's
llama:small with 2,048 tokens, has 1.0M; tests/test_optimizer_kernels.py), so on the CPU they keep the numbers
of earlier versions, where the saving would be ~1 % of a step."""


def adamw_fused(kernel: str, trainable: int, cuda: bool, zero_stage: int = 0) -> bool:
    """Whether a trained model's torch AdamW is the fused kernel (``[rl] adamw_kernel``), one rule for the cell
    and the planner.  Under ZeRO, DeepSpeed's optimizer wraps it, and ``auto`` keeps foreach."""
    if kernel != "auto":
        return kernel == "fused"
    return not zero_stage and (cuda or trainable >= FUSED_ADAMW_MIN_TRAINABLE)


@dataclass
class OptimizerChoice:
    """How a trained model's optimizer is built, and what its state costs (the planner reads the numbers)."""

    name: str = "adamw"
    factory: Any = None
    """``None``: torch AdamW (``foreach``), as the cell has always built it.  Else a callable or lazy
    ``"module:attr"`` called as ``factory(params, lr=, weight_decay=, eps=)`` returning a torch optimizer."""
    state_bytes: float = 8.0
    """Optimizer state per trainable parameter (AdamW: two fp32 moments)."""
    small_tensor_state_bytes: float = 8.0
    """State per parameter of tensors below ``min_state_numel`` elements (bitsandbytes keeps 32-bit states
    for tensors under 4096 elements)."""
    min_state_numel: int = 0
    step_temporary_bytes: float = 4.0
    """Largest transient of one step per trainable parameter (torch AdamW foreach: sqrt of the second moments,
    one fp32 copy of the whole state); 0 for optimizers that step tensor by tensor."""
    preimport: tuple[str, ...] = ()
    """Modules the factory imports, imported before the cell's memory baseline (library code is not the
    cell's memory)."""

    def state_of(self, trainable: int, small_numels=()) -> float:
        """State bytes of ``trainable`` parameters, of which tensors of ``small_numels`` fall under the
        small-tensor rule."""
        small = sum(n for n in small_numels if n < self.min_state_numel)
        return trainable * self.state_bytes + small * (self.small_tensor_state_bytes - self.state_bytes)


@dataclass
class ModelRole:
    """One model of a cell: where it starts, how it is trained, stored, sharded and placed."""

    role: str
    """``policy``, ``reference``, ``reward`` or ``critic``."""
    start: str
    """The stage artifact whose weights it loads: ``sft`` (the SFT policy) or ``reward_model``."""
    head: str
    """``causal_lm`` or ``classifier`` (a one-output sequence classifier)."""
    trainable: str = "none"
    """``full``, ``lora`` or ``none`` (frozen)."""
    lora: LoraSettings | None = None
    modules_to_save: tuple[str, ...] = ()
    """Modules peft keeps trainable beside the adapters (the critic's ``score`` head)."""
    quantization: str | None = None
    """``nf4``: the base is stored in 4-bit (only for LoRA-trained models)."""
    dtype: str = "fp32"
    """Storage dtype at load (``fp32``/``bf16``/``fp16``); DeepSpeed casts trained engines under bf16/fp16."""
    zero_stage: int = 0
    """Trained models: their engine's ZeRO stage.  Frozen: 3 = an inference-only ZeRO-3 engine, 0 = replicated."""
    offload_optimizer: bool = False
    offload_parameters: bool = False
    device: str = "accelerator"
    """``accelerator`` (the cell's device) or ``cpu`` (host memory, frozen models only)."""
    gradient_checkpointing: bool = False
    adapters_off_of: str | None = None
    """``policy`` for the reference under LoRA: the policy's base with adapters disabled, not a model of its own."""
    optimizer: OptimizerChoice | None = None
    """Trained models only."""

    @property
    def trained(self) -> bool:
        return self.trainable != "none"

    @property
    def separate(self) -> bool:
        """Whether the role is a model of its own (False: it reuses another role's weights)."""
        return self.adapters_off_of is None

    @property
    def partitioned_init(self) -> bool:
        """Built under DeepSpeed's partitioned init (``deepspeed.zero.Init``): every parameter is split over the
        processes as it is created and the checkpoint is loaded module by module into the shards, so the model
        never sits whole on a device.  ZeRO-3 models that are not quantised (transformers loads quantised
        models whole; QLoRA + ZeRO-3 is refused anyway)."""
        return self.zero_stage == 3 and self.quantization is None

    @property
    def arch_of(self) -> str:
        """Whose architecture numbers describe it: ``policy`` (SFT artifact) or ``reward``."""
        return "policy" if self.start == "sft" else "reward"


@dataclass
class DeepSpeedSettings:
    """The ZeRO settings the cell writes into DeepSpeed's config (and the planner sizes buffers from)."""

    stage: int
    reduce_bucket_size: int
    allgather_bucket_size: int | None
    prefetch_bucket_size: int | None
    param_persistence_threshold: int | None
    overlap_comm: bool
    offload_optimizer: bool
    offload_parameters: bool
    pin_memory: bool
    contiguous_gradients: bool = True
    max_live_parameters: int = ZERO3_MAX_LIVE_PARAMETERS


@dataclass
class ModelSet:
    """Policy, reference, reward model and (when the algorithm trains one) critic of one cell."""

    strategy: str
    parts: list[str]
    precision: str
    cuda: bool
    policy: ModelRole
    reference: ModelRole
    reward: ModelRole | None
    """``None``: the row has no reward model (its reward is a function)."""
    critic: ModelRole | None = None
    deepspeed: DeepSpeedSettings | None = None

    @property
    def zero_stage(self) -> int:
        return self.deepspeed.stage if self.deepspeed else 0

    @property
    def uses_lora(self) -> bool:
        return self.policy.trainable == "lora"

    @property
    def gradient_checkpointing(self) -> bool:
        return self.policy.gradient_checkpointing

    @property
    def quantization(self) -> str | None:
        """The quantisation any model of the set uses (``nf4``), or None."""
        return next((r.quantization for r in self.roles() if r.quantization), None)

    def roles(self) -> list[ModelRole]:
        return [r for r in (self.policy, self.reference, self.reward, self.critic) if r is not None]

    def trained(self) -> list[ModelRole]:
        return [r for r in self.roles() if r.trained]

    def trained_param_bytes(self, role: ModelRole) -> int:
        """Bytes of a trained parameter as it sits in memory: DeepSpeed casts its engines to 16 bit under
        bf16/fp16 (fp32 master copies live in the optimizer); otherwise fp32 (accelerate autocasts)."""
        return 2 if (role.zero_stage and self.precision in ("bf16", "fp16")) else 4

    def as_dict(self) -> dict:
        return asdict(self)


def frozen_dtype(precision: str, cuda: bool) -> str:
    """Storage dtype of frozen weights: bf16 under bf16; fp16 under fp16 on CUDA (no fp16 matmuls on the
    CPU); else fp32."""
    if precision == "bf16":
        return "bf16"
    return "fp16" if precision == "fp16" and cuda else "fp32"


def zero_bucket_elements(num_parameters: int) -> int:
    """Reduce/all-gather bucket: DeepSpeed's 5e8 default, capped at the policy's size (tiny models get tiny
    buffers)."""
    return int(max(1, min(DS_BUCKET_ELEMENTS, num_parameters)))


def deepspeed_settings(plan: MemoryPlan, policy_parameters: int, hidden_size: int, cuda: bool) -> DeepSpeedSettings:
    """The one place the DeepSpeed buffer sizes are decided.  One config serves both engines (policy, critic)."""
    bucket = zero_bucket_elements(policy_parameters)
    stage = plan.zero_stage
    return DeepSpeedSettings(
        stage=stage,
        reduce_bucket_size=bucket,
        allgather_bucket_size=bucket if stage == 2 else None,
        prefetch_bucket_size=int(0.9 * hidden_size * hidden_size) if stage == 3 else None,
        param_persistence_threshold=10 * hidden_size if stage == 3 else None,
        overlap_comm=bool(cuda),  # no CUDA streams on the CPU: nothing to overlap
        offload_optimizer=plan.offload_optimizer,
        offload_parameters=plan.offload_parameters and stage == 3,  # ZeRO-2 has no parameter offload
        pin_memory=bool(cuda),
    )


def _trained_role(plan: MemoryPlan, name: str, start: str, head: str, lora: bool, precision: str, cuda: bool,
                  modules_to_save: tuple[str, ...] = ()) -> ModelRole:
    return ModelRole(
        role=name, start=start, head=head,
        trainable="lora" if lora else "full",
        lora=(plan.lora or LoraSettings()) if lora else None,
        modules_to_save=modules_to_save if lora else (),
        quantization=plan.quantization if lora else None,
        # A LoRA base is frozen: stored like frozen models.  Full weights load in fp32.
        dtype=frozen_dtype(precision, cuda) if lora else "fp32",
        zero_stage=plan.zero_stage,
        offload_optimizer=plan.offload_optimizer and bool(plan.zero_stage),
        offload_parameters=plan.offload_parameters and plan.zero_stage == 3,
        gradient_checkpointing=plan.gradient_checkpointing,
        optimizer=OptimizerChoice(),
    )


def _frozen_role(plan: MemoryPlan, name: str, start: str, head: str, precision: str, cuda: bool) -> ModelRole:
    zero3 = plan.zero_stage == 3
    return ModelRole(role=name, start=start, head=head, dtype=frozen_dtype(precision, cuda),
                     zero_stage=3 if zero3 else 0, offload_parameters=zero3 and plan.offload_parameters)


def critic_start(algorithm, has_reward_model: bool = True, reward_reads_policy_tokens: bool = True) -> str:
    """Where the critic's weights start: ``reward_model`` when the algorithm asks for it (``critic_from``) and the
    row has a reward model reading the policy's tokens (the critic scores the policy's tokens at every position,
    and the RM's score head is a trained start); otherwise ``sft``: the SFT policy's backbone with a fresh
    one-label score head (no reward model: ``reward = "fn:..."``; or an RM with its own tokenizer, whose
    embeddings cannot read the policy's token ids)."""
    wanted = getattr(algorithm, "critic_from", "reward_model")
    if wanted == "reward_model" and has_reward_model and reward_reads_policy_tokens:
        return "reward_model"
    return "sft"


def derive_model_set(plan: MemoryPlan, algorithm, precision: str = "fp32", cuda: bool = False,
                     policy_arch: dict | None = None, strategies=(), has_reward_model: bool = True,
                     reward_reads_policy_tokens: bool = True) -> ModelSet:
    """The model set of a cell from its memory plan, its algorithm spec and the precision/device.

    ``policy_arch`` (architecture numbers) is needed under ZeRO (bucket sizes); ``strategies`` are the
    strategy parts, whose :meth:`shape` runs last, in the recipe's order.  ``has_reward_model=False`` (a
    function reward) leaves the reward role out; with ``reward_reads_policy_tokens=False`` too the critic
    starts from the SFT policy (:func:`critic_start`).
    """
    lora = plan.uses_lora
    policy = _trained_role(plan, "policy", "sft", "causal_lm", lora, precision, cuda)
    if lora:
        reference = ModelRole(role="reference", start="sft", head="causal_lm", dtype=policy.dtype,
                              quantization=policy.quantization, adapters_off_of="policy")
    else:
        reference = _frozen_role(plan, "reference", "sft", "causal_lm", precision, cuda)
    reward = _frozen_role(plan, "reward", "reward_model", "classifier", precision, cuda) if has_reward_model else None
    critic = None
    if getattr(algorithm, "needs_value_model", False):
        critic_lora = plan.value_model_lora if plan.value_model_lora is not None else lora
        start = critic_start(algorithm, has_reward_model, reward_reads_policy_tokens)
        critic = _trained_role(plan, "critic", start, "classifier", critic_lora, precision, cuda,
                               modules_to_save=("score",))
    deepspeed = None
    if plan.zero_stage:
        if policy_arch is None:
            raise ValueError("a ZeRO model set needs the policy's architecture numbers (bucket sizes)")
        deepspeed = deepspeed_settings(plan, policy_arch["num_parameters"], policy_arch["hidden_size"], cuda)
    model_set = ModelSet(strategy=plan.strategy, parts=list(plan.parts), precision=precision, cuda=cuda,
                         policy=policy, reference=reference, reward=reward, critic=critic, deepspeed=deepspeed)
    for strategy in strategies:
        strategy.shape(model_set)
    return model_set


__all__ = ["FUSED_ADAMW_MIN_TRAINABLE", "adamw_fused", "LoraSettings", "MemoryPlan", "OptimizerChoice", "ModelRole",
           "DeepSpeedSettings", "ModelSet", "derive_model_set", "critic_start", "deepspeed_settings", "zero_bucket_elements", "frozen_dtype", "DTYPE_BYTES"]
