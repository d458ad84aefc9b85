"""Evaluation honesty: held-out prompts, standard errors over prompts, dropout really off in training."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhfkit.engine.evaluate import clustered_mean_se, eval_prompt_rows
from rlhfkit.engine.rollout import disable_dropout, response_logprobs


def test_eval_rows_cycle_prompts_so_the_batch_has_the_planned_size():
    prompts, clusters = eval_prompt_rows(["a", "b", "c"], rows=8, samples_per_prompt=4)
    # ceil(8 / 4) = 2 distinct prompts, each 4 times, interleaved.
    assert prompts == ["a", "b"] * 4 and clusters == [0, 1] * 4
    prompts, clusters = eval_prompt_rows(["a", "b", "c"], rows=7, samples_per_prompt=1)
    # 7 prompts asked for, only 3 held out: cycled, 3 + 2 + 2 rows.
    assert clusters == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="no held-out"):
        eval_prompt_rows([], 4, 1)


def test_standard_error_is_taken_over_prompt_means():
    # Prompt 0 rows: 1, 3 -> mean 2; prompt 1 rows: 4, 8 -> mean 6.
    # Mean of prompt means = 4; SD of (2, 6) = sqrt(((2-4)^2 + (6-4)^2) / 1) = sqrt(8); SE = sqrt(8) / sqrt(2) = 2.
    mean, se = clustered_mean_se(torch.tensor([1.0, 4.0, 3.0, 8.0]), [0, 1, 0, 1])
    assert mean == 4.0 and se == pytest.approx(2.0, abs=1e-12)
    # Unequal clusters: prompt 0 -> (1 + 2 + 3) / 3 = 2, prompt 1 -> 10: mean 6 (not the row mean 4).
    mean, _ = clustered_mean_se(torch.tensor([1.0, 10.0, 2.0, 3.0]), [0, 1, 0, 0])
    assert mean == 6.0
    # One prompt: rows are the replication. SD of (1, 2, 3) = 1, SE = 1 / sqrt(3).
    mean, se = clustered_mean_se(torch.tensor([1.0, 2.0, 3.0]), [0, 0, 0])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3), abs=1e-12)


def test_synthetic_eval_prompts_are_never_rl_prompts():
    from rlhfkit_plugins.datasets.synthetic import SyntheticOptions, build

    task = build(SyntheticOptions(num_pairs=10, num_eval_pairs=10), seed=0)  # default 2000 SFT rows
    assert len(task.rl_prompts) == 36 and len(task.eval_prompts) == 12
    assert not set(task.rl_prompts) & set(task.eval_prompts)
    # Every word of a held-out prompt is in the SFT prompts (known to the word tokenizer).
    sft_words = {w for row in task.sft for w in row["prompt"].split()}
    assert {w for p in task.eval_prompts for w in p.split()} <= sft_words


def _dropout_llama():
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.5,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_dropout_off_after_lora_and_in_attention():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_dropout_llama(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"]))
    disable_dropout(model)
    model.train()  # training forwards run in train mode: nothing random may remain
    ids = torch.randint(3, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    first = response_logprobs(model, ids, mask, ids[:, 5:], temperature=1.0)
    second = response_logprobs(model, ids, mask, ids[:, 5:], temperature=1.0)
    model.eval()
    sampled_mode = response_logprobs(model, ids, mask, ids[:, 5:], temperature=1.0)
    assert torch.equal(first, second) and torch.allclose(first, sampled_mode, atol=1e-6)
    assert model.config.attention_dropout == 0.0


def test_lora_dropout_left_on_when_disabled_before_peft():
    """The defect fixed in cell.build_models: dropout switched off before peft leaves LoRA's dropout on."""
    from peft import LoraConfig, get_peft_model

    base = _dropout_llama()
    disable_dropout(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"]))
    for module in model.modules():  # LoRA's B starts at zero: make the branch matter
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight)
    model.train()
    ids = torch.randint(3, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    torch.manual_seed(2)
    first = response_logprobs(model, ids, mask, ids[:, 5:], temperature=1.0)
    second = response_logprobs(model, ids, mask, ids[:, 5:], temperature=1.0)
    assert not torch.equal(first, second)
