"""Llama family adapter (LlamaConfig / LlamaForCausalLM / LlamaForSequenceClassification).

Claims ``model_type = "llama"`` checkpoints, except those that are Deepseek models in Llama clothing
(deepseek-llm, deepseek-coder): those go to the ``deepseek`` family (see ``rlhfkit_plugins.models.deepseek``).
"""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import ModelAdapter
from rlhfkit_plugins.models._shared import LLAMA_STYLE_LORA, SMALL, TINY, preset
from rlhfkit_plugins.models.deepseek import is_deepseek_llama


class LlamaAdapter(ModelAdapter):
    name = "llama"
    description = "Llama 2/3 and Llama-architecture checkpoints"
    model_types = ("llama",)
    config_class = "transformers:LlamaConfig"
    causal_lm_class = "transformers:LlamaForCausalLM"
    sequence_classification_class = "transformers:LlamaForSequenceClassification"
    lora_target_modules = LLAMA_STYLE_LORA
    presets = {
        # ~0.1M parameters (plus embeddings): the default main job on two CPU cores.
        "tiny": preset(TINY),
        # ~1.5M parameters: a little more room for real text.
        "small": preset(SMALL),
    }
    # Published config.json numbers (rope scaling left out: it does not change memory).
    known_checkpoints = {
        "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                           max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
        "llama-2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                            num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                            max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
        "llama-2-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                            num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                            max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
        "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                           max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False),
        "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                             max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True),
        "tinyllama-1.1b": dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                               num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                               max_position_embeddings=2048, tie_word_embeddings=False),
    }
    fast_decoder = "rlhfkit_plugins.models._decode:LlamaDecoder"
    checkpoint_hub_ids = {
        "llama-2-7b": "meta-llama/Llama-2-7b-hf",
        "llama-2-13b": "meta-llama/Llama-2-13b-hf",
        "llama-2-70b": "meta-llama/Llama-2-70b-hf",
        "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
        "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
        "tinyllama-1.1b": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    }

    def claims(self, model_config: dict) -> bool:
        if not model_config.get("rlhfkit_family") and is_deepseek_llama(model_config):
            return False  # the deepseek family's
        return super().claims(model_config)


ADAPTER = LlamaAdapter()


@hookimpl
def register_model_adapters(register):
    register(ADAPTER)


@hookimpl
def detect_model_family(model_config):
    return ADAPTER.detect(model_config)
