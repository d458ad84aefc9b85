"""Built-in memory strategies.  Each is one composable part that edits the memory plan.

Parts compose with '+' (``"zero3+lora+gc"``); every part's :meth:`check` sees the finished plan and refuses
combinations that cannot work, with the reason, before anything runs (``rlhfkit validate`` exits 2).
"""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.cellspec.modelset import LoraSettings
from rlhfkit.registry import MemoryStrategy


class Full(MemoryStrategy):
    name = "full"
    description = "train every weight; frozen models replicated"

    def apply(self, plan):
        pass

    def check(self, plan):
        if len(plan.parts) > 1:
            raise ValueError("'full' cannot be combined with other parts; name the parts you want instead")


class Lora(MemoryStrategy):
    name = "lora"
    description = "LoRA adapters (peft); reference policy = base with adapters disabled"

    def apply(self, plan):
        if plan.lora is None:
            plan.lora = LoraSettings()

    def check(self, plan):
        if "qlora" in plan.parts:
            raise ValueError("'qlora' already trains LoRA adapters; drop 'lora'")


class QLora(MemoryStrategy):
    name = "qlora"
    description = "QLoRA: frozen base in 4-bit NF4 (bitsandbytes, double quantisation) + LoRA adapters"

    def apply(self, plan):
        plan.quantization = "nf4"
        if plan.lora is None:
            plan.lora = LoraSettings()

    def check(self, plan):
        if plan.zero_stage == 3:
            raise ValueError(
                "'qlora' cannot be combined with 'zero3': ZeRO-3 would partition the packed 4-bit weights "
                "(bitsandbytes Params4bit), which this engine does not support; use 'zero2+qlora'"
            )


class _Zero(MemoryStrategy):
    stage = 0

    def apply(self, plan):
        if plan.zero_stage and plan.zero_stage != self.stage:
            plan.zero_stage = -1  # two ZeRO stages named: check() refuses
        else:
            plan.zero_stage = self.stage

    def check(self, plan):
        if plan.zero_stage == -1:
            raise ValueError("'zero2' and 'zero3' are alternatives; name one ZeRO stage")


class Zero2(_Zero):
    name = "zero2"
    stage = 2
    description = "DeepSpeed ZeRO-2 (accelerate DeepSpeedPlugin): gradients and optimizer states sharded over processes"


class Zero3(_Zero):
    name = "zero3"
    stage = 3
    description = "DeepSpeed ZeRO-3: parameters too sharded; the policy is gathered for generation"


class Offload(MemoryStrategy):
    name = "offload"
    description = "ZeRO-Offload: optimizer states (ZeRO-2/3) and parameters (ZeRO-3 only) kept in CPU memory"

    def apply(self, plan):
        plan.offload_optimizer = True
        plan.offload_parameters = True  # takes effect under ZeRO-3 only (ZeRO-2 has no parameter offload)

    def check(self, plan):
        if plan.zero_stage not in (2, 3):
            raise ValueError("'offload' needs a ZeRO stage to offload from; write 'zero2+offload' or 'zero3+offload'")


class GradientCheckpointing(MemoryStrategy):
    name = "gc"
    description = "gradient checkpointing: keep layer inputs only, recompute activations in backward"

    def apply(self, plan):
        plan.gradient_checkpointing = True


@hookimpl
def register_memory_strategies(register):
    for strategy in (Full(), Lora(), QLora(), Zero2(), Zero3(), Offload(), GradientCheckpointing()):
        register(strategy)
