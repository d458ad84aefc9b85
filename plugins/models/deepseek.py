"""Deepseek family adapter.

Two architectures under one family:

- deepseek-llm and deepseek-coder are Llama-architecture checkpoints (``model_type = "llama"``).  They are
  claimed as ``deepseek`` when their config says so: ``"rlhfkit_family": "deepseek"``, a ``_name_or_path``
  or ``architectures`` entry mentioning deepseek, or Deepseek's own vocabulary (32256 tokens for
  deepseek-coder, 102400 for deepseek-llm).  Otherwise write ``deepseek:PATH`` in the recipe.
- DeepseekV2/V3 (``deepseek_v2``, ``deepseek_v3``): MoE with multi-head latent attention, native in
  transformers.  ``tiny-moe`` is a DeepseekV2 with four small routed experts (two per token) and one
  shared expert, after one dense layer; it trains on a CPU.
"""

from rlhfkit import architecture
from rlhfkit.architecture import MoeLayout, get
from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import ModelAdapter
from rlhfkit_plugins.models._shared import LLAMA_STYLE_LORA, MLA_LORA, TINY, preset

DEEPSEEK_VOCAB_SIZES = (32256, 102400)
"""deepseek-coder (32256) and deepseek-llm (102400) vocabularies: a Llama config with one of them is Deepseek's."""

_LLAMA = ("transformers:LlamaConfig", "transformers:LlamaForCausalLM", "transformers:LlamaForSequenceClassification")


def is_deepseek_llama(model_config: dict) -> bool:
    """A ``model_type = "llama"`` config that is a deepseek-llm/coder checkpoint."""
    if model_config.get("model_type") != "llama":
        return False
    if model_config.get("rlhfkit_family"):
        return model_config["rlhfkit_family"] == "deepseek"
    hints = [str(model_config.get("_name_or_path") or "")] + [str(a) for a in model_config.get("architectures") or []]
    if any("deepseek" in h.lower() for h in hints):
        return True
    return model_config.get("vocab_size") in DEEPSEEK_VOCAB_SIZES


def moe_layout(config: dict) -> MoeLayout | None:
    """DeepseekV2/V3's MoE layers from their config keys: ``first_k_dense_replace`` dense layers first, then an
    MoE block every ``moe_layer_freq`` layers; V3's router adds a per-expert score-correction bias."""
    routed = int(get(config, "n_routed_experts", 0) or 0)
    if not routed:
        return None
    first_dense = int(get(config, "first_k_dense_replace", 0))
    every = int(get(config, "moe_layer_freq", 1) or 1)
    hidden = int(config["hidden_size"])
    return MoeLayout(
        routed_experts=routed,
        experts_per_token=int(get(config, "num_experts_per_tok", 0) or 0),
        expert_intermediate_size=int(get(config, "moe_intermediate_size", get(config, "intermediate_size", 4 * hidden))),
        layers=tuple(i for i in range(int(config["num_hidden_layers"])) if i >= first_dense and i % every == 0),
        shared_experts=int(get(config, "n_shared_experts", 0) or 0),
        router_bias=config.get("model_type") == "deepseek_v3",
    )


class DeepseekAdapter(ModelAdapter):
    name = "deepseek"
    description = "deepseek-llm/coder (Llama architecture) and DeepseekV2/V3 MoE (native)"
    model_types = ("deepseek_v2", "deepseek_v3")
    config_class = _LLAMA[0]
    causal_lm_class = _LLAMA[1]
    sequence_classification_class = _LLAMA[2]
    model_classes = {
        "llama": _LLAMA,
        "deepseek_v2": (
            "transformers:DeepseekV2Config",
            "transformers:DeepseekV2ForCausalLM",
            "transformers:DeepseekV2ForSequenceClassification",
        ),
        "deepseek_v3": (
            "transformers:DeepseekV3Config",
            "transformers:DeepseekV3ForCausalLM",
            "transformers:DeepseekV3ForSequenceClassification",
        ),
    }
    # Llama-style names for deepseek-llm/coder, MLA names for V2/V3 (routed experts are fused 3-D
    # parameters in transformers, so LoRA reaches the attention, dense layers and shared experts).
    lora_target_modules = tuple(dict.fromkeys(LLAMA_STYLE_LORA + MLA_LORA))
    presets = {
        # deepseek-coder shape (Llama architecture), tiny; the family mark travels into the saved config.json
        # so its SFT/reward checkpoints are detected as deepseek again
        "tiny": preset(TINY, rlhfkit_family="deepseek"),
        # DeepseekV2: MLA + MoE (1 dense layer, then 4 routed experts, 2 per token, 1 shared)
        "tiny-moe": preset(
            TINY,
            model_type="deepseek_v2",
            num_key_value_heads=4,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_nope_head_dim=8,
            qk_rope_head_dim=8,
            v_head_dim=16,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            first_k_dense_replace=1,
            topk_method="greedy",
        ),
    }
    known_checkpoints = {
        "deepseek-coder-1.3b": dict(model_type="llama", hidden_size=2048, intermediate_size=5504,
                                    num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                                    vocab_size=32256, max_position_embeddings=16384, rope_theta=100000.0,
                                    bos_token_id=32013, eos_token_id=32014, tie_word_embeddings=False),
        "deepseek-coder-6.7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                    vocab_size=32256, max_position_embeddings=16384, rope_theta=100000.0,
                                    bos_token_id=32013, eos_token_id=32014, tie_word_embeddings=False),
        "deepseek-coder-33b": dict(model_type="llama", hidden_size=7168, intermediate_size=19200,
                                   num_hidden_layers=62, num_attention_heads=56, num_key_value_heads=8,
                                   vocab_size=32256, max_position_embeddings=16384, rope_theta=100000.0,
                                   bos_token_id=32013, eos_token_id=32014, tie_word_embeddings=False),
        "deepseek-llm-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                                num_hidden_layers=30, num_attention_heads=32, num_key_value_heads=32,
                                vocab_size=102400, max_position_embeddings=4096, bos_token_id=100000,
                                eos_token_id=100001, tie_word_embeddings=False),
        "deepseek-llm-67b": dict(model_type="llama", hidden_size=8192, intermediate_size=22016,
                                 num_hidden_layers=95, num_attention_heads=64, num_key_value_heads=8,
                                 vocab_size=102400, max_position_embeddings=4096, bos_token_id=100000,
                                 eos_token_id=100001, tie_word_embeddings=False),
        "deepseek-v2-lite": dict(model_type="deepseek_v2", hidden_size=2048, intermediate_size=10944,
                                 moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
                                 num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2,
                                 num_experts_per_tok=6, first_k_dense_replace=1, kv_lora_rank=512,
                                 q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                                 vocab_size=102400, max_position_embeddings=163840, tie_word_embeddings=False),
        "deepseek-v2": dict(model_type="deepseek_v2", hidden_size=5120, intermediate_size=12288,
                            moe_intermediate_size=1536, num_hidden_layers=60, num_attention_heads=128,
                            num_key_value_heads=128, n_routed_experts=160, n_shared_experts=2,
                            num_experts_per_tok=6, first_k_dense_replace=1, kv_lora_rank=512, q_lora_rank=1536,
                            qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=102400,
                            max_position_embeddings=163840, tie_word_embeddings=False),
        "deepseek-v3": dict(model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432,
                            moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
                            num_key_value_heads=128, n_routed_experts=256, n_shared_experts=1,
                            num_experts_per_tok=8, first_k_dense_replace=3, n_group=8, topk_group=4,
                            kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64,
                            v_head_dim=128, vocab_size=129280, max_position_embeddings=163840,
                            tie_word_embeddings=False),
    }
    # deepseek-llm/coder are plain Llama: the Llama step (it declines the V2/V3 MoE models)
    fast_decoder = "rlhfkit_plugins.models._decode:LlamaDecoder"
    checkpoint_hub_ids = {
        "deepseek-coder-1.3b": "deepseek-ai/deepseek-coder-1.3b-base",
        "deepseek-coder-6.7b": "deepseek-ai/deepseek-coder-6.7b-base",
        "deepseek-coder-33b": "deepseek-ai/deepseek-coder-33b-base",
        "deepseek-llm-7b": "deepseek-ai/deepseek-llm-7b-base",
        "deepseek-llm-67b": "deepseek-ai/deepseek-llm-67b-base",
        "deepseek-v2-lite": "deepseek-ai/DeepSeek-V2-Lite",
        "deepseek-v2": "deepseek-ai/DeepSeek-V2",
        "deepseek-v3": "deepseek-ai/DeepSeek-V3",
    }

    def claims(self, model_config: dict) -> bool:
        return super().claims(model_config) or is_deepseek_llama(model_config)

    def architecture_numbers(self, config: dict) -> dict:
        return architecture.architecture_numbers(config, qkv_bias=self.qkv_bias, moe=moe_layout(config))


ADAPTER = DeepseekAdapter()


@hookimpl
def register_model_adapters(register):
    register(ADAPTER)


@hookimpl
def detect_model_family(model_config):
    return ADAPTER.detect(model_config)
