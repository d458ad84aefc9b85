"""Phi-3 family adapter (``model_type = "phi3"``: Phi-3/3.5 mini and medium).

Phi3 fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``: those are the LoRA targets, and its
architecture numbers list them so (same parameter counts as separate projections).
"""

from rlhfkit import architecture
from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import ModelAdapter
from rlhfkit_plugins.models._shared import SMALL, TINY, preset


class Phi3Adapter(ModelAdapter):
    name = "phi3"
    description = "Phi-3 / Phi-3.5 mini and medium (native in transformers)"
    model_types = ("phi3",)
    config_class = "transformers:Phi3Config"
    causal_lm_class = "transformers:Phi3ForCausalLM"
    sequence_classification_class = "transformers:Phi3ForSequenceClassification"
    lora_target_modules = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    presets = {
        "tiny": preset(TINY, original_max_position_embeddings=256),
        "small": preset(SMALL, original_max_position_embeddings=1024),
    }
    known_checkpoints = {
        "phi-3-mini-4k": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                              max_position_embeddings=4096, original_max_position_embeddings=4096,
                              tie_word_embeddings=False),
        "phi-3-medium-4k": dict(model_type="phi3", hidden_size=5120, intermediate_size=17920, num_hidden_layers=40,
                                num_attention_heads=40, num_key_value_heads=10, vocab_size=32064,
                                max_position_embeddings=4096, original_max_position_embeddings=4096,
                                tie_word_embeddings=False),
    }
    checkpoint_hub_ids = {
        "phi-3-mini-4k": "microsoft/Phi-3-mini-4k-instruct",
        "phi-3-medium-4k": "microsoft/Phi-3-medium-4k-instruct",
    }

    def architecture_numbers(self, config: dict) -> dict:
        return architecture.architecture_numbers(config, qkv_bias=self.qkv_bias, fused_qkv=True, fused_gate_up=True)


ADAPTER = Phi3Adapter()


@hookimpl
def register_model_adapters(register):
    register(ADAPTER)


@hookimpl
def detect_model_family(model_config):
    return ADAPTER.detect(model_config)
