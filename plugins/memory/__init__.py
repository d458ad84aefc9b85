"""Built-in memory strategies.  Each is one composable part that edits the memory plan.

Parts compose with '+' (``"zero3+lora+gc"``); every part's :meth:`check` sees the finished plan and refuses
combinations that cannot work, with the reason, before anything runs (``rlhfkit validate`` exits 2).
"""

import dataclasses
import os

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


def _lora_settings(params) -> LoraSettings:
    """The part's validated settings (``lora(r=8)``), or LoRA's defaults."""
    return dataclasses.replace(params) if params is not None else LoraSettings()


class Lora(MemoryStrategy):
    name = "lora"
    description = "LoRA adapters (peft); reference policy = base with adapters disabled; settings: lora(r=,alpha=,dropout=,target_modules=)"
    params_class = LoraSettings

    def apply(self, plan):
        plan.lora = _lora_settings(self.params)

    def check(self, plan):
        if "qlora" in plan.parts:
            raise ValueError("'qlora' already trains LoRA adapters; drop 'lora'")


class QLora(MemoryStrategy):
    name = "qlora"
    description = "QLoRA: frozen base in 4-bit NF4 (bitsandbytes, double quantisation) + LoRA adapters; settings as lora's"
    params_class = LoraSettings

    def apply(self, plan):
        plan.quantization = "nf4"
        plan.lora = _lora_settings(self.params)

    def check(self, plan):
        if plan.zero_stage == 3:
            raise ValueError(
                "'qlora' cannot be combined with 'zero3': ZeRO-3 would partition the packed 4-bit weights "
                "(bitsandbytes Params4bit), which this engine does not support; use 'zero2+qlora'"
            )

    def check_recipe(self, recipe):
        """Before a run (``rlhfkit validate``/``run``): refuse models bitsandbytes cannot run in 4 bits on this CPU."""
        check_qlora_on_cpu(recipe)


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


# bitsandbytes (0.4x-0.50) on a CPU with AVX512-BF16: Linear4bit.forward in eval mode without gradients (our
# sampling) repacks the 4-bit weight for a fused kernel (functional._convert_weight_packed_for_cpu), which
# asserts out_features % 32 == 0 and reshapes absmax by in_features // blocksize (64).  Measured here with
# bitsandbytes 0.50.2: 352 -> 128 fails ("shape '[128, 5]' is invalid"), 128 -> 80 fails ("N must be
# divisible by block_n"); 128 -> 352, 128 -> 96 and 192 -> 64 run.  CPUs without AVX512-BF16 never repack.
QLORA_CPU_IN_MULTIPLE = 64
QLORA_CPU_OUT_MULTIPLE = 32


def cpu_has_avx512_bf16() -> bool:
    """Whether this machine's CPU reports the ``avx512_bf16`` flag (Linux /proc/cpuinfo; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return any(line.startswith("flags") and " avx512_bf16" in line for line in handle)
    except OSError:
        return False


def qlora_cpu_problem(model_ref: str, arch: dict, avx512_bf16: bool | None = None) -> str | None:
    """Why 'qlora' cannot run ``model_ref`` on this CPU (one line), or None when it can.

    ``arch`` is the model's architecture numbers (``rlhfkit.models.model_architecture``): its
    ``linear_layers`` rows ``[name, in_features, out_features, count]`` are the layers bitsandbytes turns
    into 4-bit (the LM/score heads stay unquantized).  ``avx512_bf16`` None reads this machine's CPU flags.
    """
    if avx512_bf16 is None:
        avx512_bf16 = cpu_has_avx512_bf16()
    if not avx512_bf16:
        return None
    for name, fan_in, fan_out, *_ in arch.get("linear_layers", []):
        if fan_in % QLORA_CPU_IN_MULTIPLE or fan_out % QLORA_CPU_OUT_MULTIPLE:
            return (
                f"model {model_ref!r}: 'qlora' cannot run on this CPU (AVX512-BF16): {name} is {fan_in} -> {fan_out}, "
                f"but bitsandbytes repacks 4-bit layers for its AVX512-BF16 kernel when sampling and needs in_features "
                f"a multiple of {QLORA_CPU_IN_MULTIPLE} and out_features a multiple of {QLORA_CPU_OUT_MULTIPLE}; use "
                f"'lora', a CUDA device, or a model whose layer sizes fit"
            )
    return None


def _runs_on_cpu(device: str) -> bool:
    # Cheap on purpose (validate does not import torch): "auto" means CUDA where an NVIDIA driver is loaded.
    return device == "cpu" or (device == "auto" and not os.path.exists("/proc/driver/nvidia/version"))


def check_qlora_on_cpu(recipe, avx512_bf16: bool | None = None) -> None:
    """For ``rlhfkit validate``: raise ``ValueError`` (one line) when a grid cell uses 'qlora' on a CPU that
    bitsandbytes cannot run its model on (see :func:`qlora_cpu_problem`).  The policy is always quantized; the
    critic (loaded from the reward model) too when the algorithm trains one.  A model whose architecture
    cannot be read here (an offline hub id) is left to the run."""
    from rlhfkit.memory import split_strategy
    from rlhfkit.models import model_architecture
    from rlhfkit.plugins import get_registry

    if not _runs_on_cpu(recipe.run.device):
        return
    registry = get_registry()
    seen = set()
    for cell in recipe.cells():
        if "qlora" not in split_strategy(cell.memory):
            continue
        entry = recipe.models[cell.model]
        refs = [entry.policy]
        if registry.get("algorithm", cell.algorithm).needs_value_model:
            refs.append(entry.reward)
        for ref in refs:
            if ref in seen:
                continue
            seen.add(ref)
            try:
                arch = model_architecture(ref, entry.trust_remote_code)
            except Exception:  # noqa: BLE001 - validate names unreadable models elsewhere; nothing to decide here
                continue
            problem = qlora_cpu_problem(ref, arch, avx512_bf16)
            if problem:
                raise ValueError(f"grid.memory {cell.memory!r}: {problem}")


@hookimpl
def register_memory_strategies(register):
    for strategy in (Full(), Lora(), QLora(), Zero2(), Zero3(), Offload(), GradientCheckpointing()):
        register(strategy)
