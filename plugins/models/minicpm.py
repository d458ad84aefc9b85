"""MiniCPM family adapter.

- MiniCPM3 (``model_type = "minicpm3"``) is native in transformers: multi-head latent attention (low-rank
  q and kv projections), MiniCPM's scaled embeddings/residuals/logits.  The tiny presets are MiniCPM3.
- MiniCPM 1/2 (``model_type = "minicpm"``, e.g. MiniCPM-2B) ship their own modelling code (``auto_map``):
  they load through the Auto classes only when the recipe row says ``trust_remote_code = true``; otherwise
  validation refuses them in one line.  Their architecture numbers (Llama-like) are known without code.
"""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import ModelAdapter
from rlhfkit_plugins.models._shared import MLA_LORA, TINY, preset

_MLA_TINY = dict(
    num_key_value_heads=4,
    q_lora_rank=32,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=16,
    scale_emb=12,
    scale_depth=1.4,
    dim_model_base=64,
    initializer_range=0.02,
)


class MiniCPMAdapter(ModelAdapter):
    name = "minicpm"
    description = "MiniCPM3 (native) and MiniCPM 1/2 (remote code, opt-in with trust_remote_code)"
    model_types = ("minicpm3",)
    trust_remote_code_types = ("minicpm",)
    config_class = "transformers:MiniCPM3Config"
    causal_lm_class = "transformers:MiniCPM3ForCausalLM"
    sequence_classification_class = "transformers:MiniCPM3ForSequenceClassification"
    lora_target_modules = MLA_LORA
    presets = {
        "tiny": preset(TINY, **_MLA_TINY),
    }
    known_checkpoints = {
        # remote code: numbers from its config.json (Llama-like decoder, tied embeddings)
        "minicpm-2b": dict(model_type="minicpm", hidden_size=2304, intermediate_size=5760, num_hidden_layers=40,
                           num_attention_heads=36, num_key_value_heads=36, vocab_size=122753,
                           max_position_embeddings=4096, tie_word_embeddings=True, scale_emb=12,
                           dim_model_base=256, scale_depth=1.4),
        "minicpm3-4b": dict(model_type="minicpm3", hidden_size=2560, intermediate_size=6400, num_hidden_layers=62,
                            num_attention_heads=40, num_key_value_heads=40, q_lora_rank=768, kv_lora_rank=256,
                            qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, vocab_size=73448,
                            max_position_embeddings=32768, tie_word_embeddings=True, scale_emb=12,
                            dim_model_base=256, scale_depth=1.4),
    }
    checkpoint_hub_ids = {
        "minicpm-2b": "openbmb/MiniCPM-2B-sft-bf16",
        "minicpm3-4b": "openbmb/MiniCPM3-4B",
    }


ADAPTER = MiniCPMAdapter()


@hookimpl
def register_model_adapters(register):
    register(ADAPTER)


@hookimpl
def detect_model_family(model_config):
    return ADAPTER.detect(model_config)
