"""Built-in memory strategies.  Each is one composable part that edits the memory plan."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.memory import LoraSettings
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


@hookimpl
def register_memory_strategies(register):
    register(Full())
    register(Lora())
