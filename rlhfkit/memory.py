"""Memory plans: what a composed memory strategy (``"zero3+lora+gc"``) asks of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.plugins import get_registry


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
    """Module names to adapt; ``None`` takes the model family's default."""


@dataclass
class MemoryPlan:
    """The engine's instructions, built by applying each strategy part in order."""

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


def split_strategy(name: str) -> list[str]:
    parts = [p.strip() for p in name.split("+")]
    if not name or any(not p for p in parts):
        raise ValueError(f"memory strategy {name!r} is malformed; write parts joined by '+', e.g. 'zero3+lora'")
    if len(set(parts)) != len(parts):
        raise ValueError(f"memory strategy {name!r} names a part twice")
    return parts


def build_memory_plan(name: str) -> MemoryPlan:
    """Compose a strategy name into a plan; raise ``ValueError`` naming the part that is unknown or refuses."""
    registry = get_registry()
    plan = MemoryPlan(strategy=name)
    parts = split_strategy(name)
    strategies = []
    for part in parts:
        if part not in registry.entries["memory_strategy"]:
            raise ValueError(
                f"memory strategy {name!r}: unknown part {part!r}; allowed: {', '.join(registry.names('memory_strategy'))}"
            )
        strategies.append(registry.get("memory_strategy", part))
    for strategy in strategies:
        strategy.apply(plan)
        plan.parts.append(strategy.name)
    for strategy in strategies:
        try:
            strategy.check(plan)
        except ValueError as exc:
            raise ValueError(f"memory strategy {name!r}: {exc}") from None
    return plan
