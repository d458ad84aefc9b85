"""Qwen2 family adapter (Qwen2 and Qwen2.5 checkpoints: ``model_type = "qwen2"``).

Qwen2 differs from Llama by biases on the q/k/v projections (counted in ``architecture``) and by shipping
no pad token in its base checkpoints' tokenizer config (``ensure_tokenizer`` adds one).
"""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import ModelAdapter
from rlhfkit_plugins.models._shared import LLAMA_STYLE_LORA, SMALL, TINY, preset


class Qwen2Adapter(ModelAdapter):
    name = "qwen2"
    description = "Qwen2 / Qwen2.5 (native in transformers)"
    model_types = ("qwen2",)
    config_class = "transformers:Qwen2Config"
    causal_lm_class = "transformers:Qwen2ForCausalLM"
    sequence_classification_class = "transformers:Qwen2ForSequenceClassification"
    lora_target_modules = LLAMA_STYLE_LORA
    qkv_bias = True
    presets = {
        "tiny": preset(TINY, use_sliding_window=False),
        "small": preset(SMALL, use_sliding_window=False),
    }
    known_checkpoints = {
        "qwen2-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                           num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                           max_position_embeddings=131072, rope_theta=1000000.0, tie_word_embeddings=True),
        "qwen2-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                           num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                           max_position_embeddings=131072, rope_theta=1000000.0, tie_word_embeddings=True),
        "qwen2-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                         max_position_embeddings=131072, rope_theta=1000000.0, tie_word_embeddings=False),
        "qwen2-72b": dict(model_type="qwen2", hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                          num_attention_heads=64, num_key_value_heads=8, vocab_size=152064,
                          max_position_embeddings=131072, rope_theta=1000000.0, tie_word_embeddings=False),
    }
    fast_decoder = "rlhfkit_plugins.models._decode:Qwen2Decoder"
    checkpoint_hub_ids = {
        "qwen2-0.5b": "Qwen/Qwen2-0.5B",
        "qwen2-1.5b": "Qwen/Qwen2-1.5B",
        "qwen2-7b": "Qwen/Qwen2-7B",
        "qwen2-72b": "Qwen/Qwen2-72B",
    }


ADAPTER = Qwen2Adapter()


@hookimpl
def register_model_adapters(register):
    register(ADAPTER)


@hookimpl
def detect_model_family(model_config):
    return ADAPTER.detect(model_config)
