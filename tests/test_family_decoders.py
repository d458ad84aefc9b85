"""The lean decode step belongs to the model family: the rollout asks the policy's family for one
(``ModelAdapter.decoder``) and decodes with the model's own forward when it has none.  Each decoder must give
the tokens and log-probs of ``model(...)`` (the rollout's log-probs are the training forward's)."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlhfkit.engine.rollout import fast_decoder, model_family, sample

PAD, EOS = 0, 2
ATOL = 1e-5
SHAPE = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1)


def _queries():
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12], [PAD, 13, 14, 15, 16], [PAD, PAD, PAD, 3, 4]])
    return ids, (ids != PAD).long()


@pytest.fixture(scope="module")
def qwen2():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SHAPE, use_sliding_window=False)).eval()
    with torch.no_grad():  # HF initialises biases to zero: make the q/k/v biases count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    return model


def _decoder(model, ids, mask, steps=8):
    with torch.no_grad():
        cache = DynamicCache()
        model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return fast_decoder(model, cache, mask, (mask.cumsum(-1) - 1).clamp(min=0), steps)


def _fast_and_plain(model, ids, mask, temperature=1.0, top_k=0, steps=24):
    runs = []
    for fast in (True, False):
        gen = torch.Generator().manual_seed(11)
        runs.append(sample(model, ids, mask, steps, temperature, EOS, PAD, gen, top_k=top_k, fast=fast))
    return runs


def test_families_name_their_decoders():
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**SHAPE)).eval()
    ids, mask = _queries()
    assert model_family(llama).name == "llama"
    assert type(_decoder(llama, ids, mask)).__name__ == "LlamaDecoder"
    # deepseek-llm/coder are plain Llama: their family hands out the Llama step
    deepseek = LlamaForCausalLM(LlamaConfig(**SHAPE, rlhfkit_family="deepseek")).eval()
    assert model_family(deepseek).name == "deepseek"
    assert type(_decoder(deepseek, ids, mask)).__name__ == "LlamaDecoder"


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 5)])
def test_qwen2_decoder_equals_the_models_own_forward(qwen2, padded, temperature, top_k):
    ids, mask = _queries()
    if not padded:
        ids, mask = ids[1:2].repeat(3, 1), mask[1:2].repeat(3, 1)
    assert type(_decoder(qwen2, ids, mask)).__name__ == "Qwen2Decoder"
    fast, plain = _fast_and_plain(qwen2, ids, mask, temperature, top_k)
    assert fast[0].tolist() == plain[0].tolist()
    assert torch.allclose(fast[1], plain[1], atol=ATOL, rtol=0)


def test_qwen2_plain_and_module_paths_agree(qwen2, monkeypatch):
    from rlhfkit_plugins.models._decode import Qwen2Decoder

    ids, mask = _queries()
    assert Qwen2Decoder._plain_weights(qwen2) is not None
    plain = sample(qwen2, ids, mask, 16, 1.0, EOS, PAD, torch.Generator().manual_seed(5))
    monkeypatch.setattr(Qwen2Decoder, "_plain_weights", staticmethod(lambda base: None))
    modules = sample(qwen2, ids, mask, 16, 1.0, EOS, PAD, torch.Generator().manual_seed(5))
    assert plain[0].tolist() == modules[0].tolist()
    assert torch.allclose(plain[1], modules[1], atol=ATOL, rtol=0)


def test_qwen2_with_sliding_window_layers_falls_back():
    torch.manual_seed(0)
    config = Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    model = Qwen2ForCausalLM(config).eval()
    ids, mask = _queries()
    assert _decoder(model, ids, mask) is None


def test_family_without_a_decoder_uses_the_models_forward():
    torch.manual_seed(0)
    model = Phi3ForCausalLM(Phi3Config(**SHAPE, original_max_position_embeddings=64)).eval()
    ids, mask = _queries()
    assert model_family(model).name == "phi3" and not model_family(model).fast_decoder
    assert _decoder(model, ids, mask) is None
    fast, plain = _fast_and_plain(model, ids, mask)
    assert fast[0].tolist() == plain[0].tolist()
    assert torch.equal(fast[1], plain[1])


def test_model_of_no_registered_family_uses_the_models_forward():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, rlhfkit_family="nobody")).eval()
    assert model_family(model) is None
    ids, mask = _queries()
    fast, plain = _fast_and_plain(model, ids, mask, steps=8)
    assert fast[0].tolist() == plain[0].tolist()
