"""The engine's math against numbers worked out by hand."""

import math

import pytest
import torch

from rlhfkit.engine.core import AdaptiveKLController, selective_log_softmax, truncate_after_eos
from rlhfkit.engine.functional import (
    gae_advantages,
    kl_k1,
    kl_k3,
    masked_mean,
    masked_var,
    masked_whiten,
    rloo_advantages,
    token_rewards,
)


def generalized_advantage_estimation(rewards, values, mask, gamma, lam):
    return gae_advantages(token_rewards=rewards, values=values, mask=mask, gamma=gamma, lam=lam)


def leave_one_out_advantages(rewards, k):
    return rloo_advantages(seq_rewards=rewards, k=k)[0]


def test_gae_by_hand_gamma_one():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    adv, ret = generalized_advantage_estimation(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=2: delta = 1 - 0.7 = 0.3; t=1: 0.7 - 0.6 + 0.5*0.3 = 0.25; t=0: 0.6 - 0.5 + 0.5*0.25 = 0.225
    assert adv[0].tolist() == pytest.approx([0.225, 0.25, 0.3])
    assert ret[0].tolist() == pytest.approx([0.725, 0.85, 1.0])


def test_gae_ignores_everything_after_the_last_real_token():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = generalized_advantage_estimation(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=1: delta = 1 + 0.9*0 - 0.6 = 0.4; t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04, gae = 0.04 + 0.45*0.4 = 0.22
    assert adv[0].tolist() == pytest.approx([0.22, 0.4, 0.0])
    assert ret[0].tolist() == pytest.approx([0.72, 1.0, 0.0])


def test_leave_one_out_baseline_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # baselines: (2+3+6)/3, (1+3+6)/3, (1+2+6)/3, (1+2+3)/3
    assert leave_one_out_advantages(rewards, 4).tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0])
    assert leave_one_out_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2).tolist() == pytest.approx([-2, 2, 0, 0])
    with pytest.raises(ValueError, match="groups of k=3"):
        leave_one_out_advantages(rewards, 3)


def test_leave_one_out_advantages_sum_to_zero_per_group():
    rewards = torch.randn(24, generator=torch.Generator().manual_seed(0))
    adv = leave_one_out_advantages(rewards, 4).view(-1, 4)
    assert adv.sum(1).abs().max() < 1e-5
    # RLOO advantage equals k/(k-1) * (r - group mean)
    expected = 4 / 3 * (rewards.view(-1, 4) - rewards.view(-1, 4).mean(1, keepdim=True))
    assert torch.allclose(adv, expected, atol=1e-6)


def test_masked_whiten_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_var(values, mask).item() == pytest.approx(1.0)  # unbiased: (1 + 0 + 1) / 2
    assert masked_whiten(values, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    kept = masked_whiten(values, mask, shift_mean=False)
    assert kept[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_kl_estimators_by_hand():
    logp, ref, mask = torch.tensor([[-1.0]]), torch.tensor([[-2.0]]), torch.ones(1, 1)
    assert kl_k1(logprobs=logp, ref_logprobs=ref, mask=mask).item() == pytest.approx(1.0)
    # k3 = (q/p - 1) - log(q/p) with log(q/p) = ref - logp = -1: e^-1 - 1 + 1
    assert kl_k3(logprobs=logp, ref_logprobs=ref, mask=mask).item() == pytest.approx(math.exp(-1) - 1 + 1)
    assert kl_k3(logprobs=ref, ref_logprobs=logp, mask=mask).item() == pytest.approx(math.exp(1) - 1 - 1)


def test_token_level_rewards_put_score_on_last_real_token():
    scores = torch.tensor([2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards = token_rewards(scores, kl, mask, torch.tensor([1]), kl_coef=0.5)
    assert rewards[0].tolist() == pytest.approx([-0.05, -0.1 + 2.0, 0.0])


def test_truncate_after_eos_masks_padding():
    responses = torch.tensor([[5, 2, 7, 8], [5, 6, 7, 8], [2, 9, 2, 9]])
    out, mask, last, has_eos = truncate_after_eos(responses, eos_token_id=2, pad_token_id=0)
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert last.tolist() == [1, 3, 0]
    assert has_eos.tolist() == [True, False, True]


def test_selective_log_softmax_matches_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(11, 5, 37, generator=g)
    tokens = torch.randint(0, 37, (11, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, tokens), expected, atol=1e-6)


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=1000)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    ctl.update(current_kl=5.7, n_steps=10000)  # error -0.05
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.95)
