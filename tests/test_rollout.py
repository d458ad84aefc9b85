"""Shared rollout pieces on a tiny random Llama: left padding, reused log-probs, scoring, LoRA reference."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rlhfkit.engine.core import truncate_after_eos
from rlhfkit.engine.rollout import reference_mode, response_logprobs, sample, score_at

PAD, EOS = 0, 2


def tiny_config(**kw):
    return LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1, **kw
    )


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


def left_padded_queries():
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12], [PAD, 13, 14, 15, 16]])
    return ids, (ids != PAD).long()


def test_sampled_logprobs_equal_a_full_forward(policy):
    ids, mask = left_padded_queries()
    gen = torch.Generator().manual_seed(3)
    responses, logprobs = sample(policy, ids, mask, 8, temperature=0.7, eos_token_id=EOS, pad_token_id=PAD, generator=gen)
    responses, rmask, _, _ = truncate_after_eos(responses, EOS, PAD)
    full = torch.cat([ids, responses], 1)
    full_mask = torch.cat([mask, rmask.long()], 1)
    with torch.no_grad():
        recomputed = response_logprobs(policy, full, full_mask, responses, temperature=0.7)
    assert torch.allclose(logprobs * rmask, recomputed * rmask, atol=1e-4)


def test_left_padding_does_not_change_what_is_sampled(policy):
    """Row 0 alone and row 0 padded in a batch must give the same distribution (same logprob of same tokens)."""
    ids, mask = left_padded_queries()
    gen = torch.Generator().manual_seed(5)
    responses, _ = sample(policy, ids, mask, 6, 1.0, EOS, PAD, gen)
    responses, rmask, _, _ = truncate_after_eos(responses, EOS, PAD)
    alone = torch.cat([ids[:1, 2:], responses[:1]], 1)
    batched = torch.cat([ids, responses], 1)
    with torch.no_grad():
        lp_alone = response_logprobs(policy, alone, torch.cat([mask[:1, 2:], rmask[:1].long()], 1), responses[:1], 1.0)
        lp_batch = response_logprobs(policy, batched, torch.cat([mask, rmask.long()], 1), responses, 1.0)
    assert torch.allclose(lp_alone * rmask[:1], lp_batch[:1] * rmask[:1], atol=1e-4)


def test_sampling_is_reproducible_and_seed_dependent(policy):
    ids, mask = left_padded_queries()
    a = sample(policy, ids, mask, 8, 1.0, EOS, PAD, torch.Generator().manual_seed(1))[0]
    b = sample(policy, ids, mask, 8, 1.0, EOS, PAD, torch.Generator().manual_seed(1))[0]
    c = sample(policy, ids, mask, 8, 1.0, EOS, PAD, torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_one_is_greedy(policy):
    ids, mask = left_padded_queries()
    sampled = sample(policy, ids, mask, 4, 1.0, EOS, PAD, torch.Generator().manual_seed(0), top_k=1)[0]
    with torch.no_grad():
        first = policy(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    assert torch.equal(sampled[:, 0], first.argmax(-1))


def test_reward_read_at_last_real_token_matches_transformers():
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(tiny_config(num_labels=1)).eval()
    seq = torch.tensor([[5, 6, 7, 3, EOS]])
    with torch.no_grad():
        expected = rm(input_ids=seq).logits[0, 0]
        padded = torch.tensor([[PAD, PAD, 5, 6, 7, 3, EOS, PAD]])
        got = score_at(rm, padded, (padded != PAD).long(), torch.tensor([6]))
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


def test_lora_reference_is_the_base_with_adapters_disabled(policy):
    from peft import LoraConfig, get_peft_model

    base = LlamaForCausalLM(tiny_config()).eval()
    base.load_state_dict(policy.state_dict())
    ids, mask = left_padded_queries()
    with torch.no_grad():
        before = response_logprobs(base, ids, mask, ids[:, -3:], 1.0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        adapted = response_logprobs(peft_model, ids, mask, ids[:, -3:], 1.0)
        with reference_mode(peft_model, None) as ref:
            reference = response_logprobs(ref, ids, mask, ids[:, -3:], 1.0)
    assert not torch.allclose(adapted, before, atol=1e-4)  # adapters change the policy...
    assert torch.allclose(reference, before, atol=1e-6)  # ...but not the reference
