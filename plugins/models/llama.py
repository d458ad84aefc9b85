"""Llama family adapter (LlamaConfig / LlamaForCausalLM / LlamaForSequenceClassification)."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import ModelAdapter


class LlamaAdapter(ModelAdapter):
    name = "llama"
    description = "Llama 2/3 and Llama-architecture checkpoints"
    model_types = ("llama",)
    config_class = "transformers:LlamaConfig"
    causal_lm_class = "transformers:LlamaForCausalLM"
    sequence_classification_class = "transformers:LlamaForSequenceClassification"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    presets = {
        # ~0.1M parameters: the default main job on two CPU cores.
        "tiny": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        ),
        # ~1.5M parameters: a little more room for real text.
        "small": dict(
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        ),
    }


@hookimpl
def register_model_adapters(register):
    register(LlamaAdapter())


@hookimpl
def detect_model_family(model_config):
    if model_config.get("model_type") in LlamaAdapter.model_types:
        return "llama"
    return None
