"""Shapes shared by the built-in tiny presets (hidden 64, 2 layers: they train in seconds on a CPU core)."""

LLAMA_STYLE_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLA_LORA = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    vocab_size=4096,  # replaced by the tokenizer's size and token ids when a model is built
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

SMALL = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    vocab_size=4096,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def preset(base: dict, **changes) -> dict:
    out = dict(base)
    out.update(changes)
    return out
