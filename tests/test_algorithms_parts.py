"""Every registered part against numbers worked out by hand from its paper's formula."""

import math

import pytest
import torch

from rlhfkit.engine import functional as F

M = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1 ends after 2 tokens


def test_gae_by_hand():
    # gamma = 0.9, lam = 0.5; row 0: r = [0, 0, 1], V = [0.5, 0.6, 0.7]; V after the last token is 0.
    # t=2: delta = 1 + 0 - 0.7 = 0.3                     A2 = 0.3
    # t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03              A1 = 0.03 + 0.45*0.3 = 0.165
    # t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04              A0 = 0.04 + 0.45*0.165 = 0.11425
    # row 1 (2 real tokens): r = [0, 2, x], V = [1, 1, y]: t=1: delta = 2 - 1 = 1; t=0: 0.9 - 1 = -0.1, A0 = -0.1+0.45
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 7.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, float("inf")]])  # inf at padding must not leak
    adv, ret = F.gae_advantages(token_rewards=rewards, values=values, mask=M, gamma=0.9, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([0.11425, 0.165, 0.3])
    assert adv.tolist()[1] == pytest.approx([0.35, 1.0, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.61425, 0.765, 1.0])
    assert ret.tolist()[1] == pytest.approx([1.35, 2.0, 0.0])


def test_rloo_leave_one_out_by_hand():
    # k = 3, rewards of one prompt [1, 2, 6]: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    adv, ret = F.rloo_advantages(seq_rewards=torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), k=3)
    assert ret is None
    assert adv.tolist() == pytest.approx([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])


def test_grpo_group_normalisation_by_hand():
    # group [1, 2, 3, 6]: mean 3; unbiased var = (4 + 1 + 0 + 9) / 3 = 14/3; std = sqrt(14/3) = 2.16025
    adv, _ = F.grpo_advantages(seq_rewards=torch.tensor([1.0, 2.0, 3.0, 6.0]), k=4, eps=0.0)
    s = math.sqrt(14 / 3)
    assert adv.tolist() == pytest.approx([-2 / s, -1 / s, 0.0, 3 / s])
    # a group with equal rewards: std 0, eps keeps it finite and the advantages are 0
    adv, _ = F.grpo_advantages(seq_rewards=torch.tensor([5.0, 5.0]), k=2)
    assert adv.tolist() == [0.0, 0.0]


def test_reinforce_pp_returns_and_global_whitening_by_hand():
    # gamma = 0.5.  row 0 r = [1, 0, 2]: G2 = 2, G1 = 0 + 0.5*2 = 1, G0 = 1 + 0.5*1 = 1.5
    # row 1 r = [0, 4, (pad 9)]: G1 = 4, G0 = 2 (the padded reward is ignored)
    # batch of returns over real tokens: [1.5, 1, 2, 2, 4]: mean 2.1, unbiased var = (0.36+1.21+0.01+0.01+3.61)/4 = 1.3
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 9.0]])
    adv, ret = F.reinforce_pp_advantages(token_rewards=rewards, mask=M, gamma=0.5)
    assert ret.tolist()[0] == pytest.approx([1.5, 1.0, 2.0]) and ret.tolist()[1] == pytest.approx([2.0, 4.0, 0.0])
    s = math.sqrt(1.3 + 1e-8)
    assert adv.tolist()[0] == pytest.approx([(1.5 - 2.1) / s, (1 - 2.1) / s, (2 - 2.1) / s], abs=1e-6)
    assert adv.tolist()[1] == pytest.approx([(2 - 2.1) / s, (4 - 2.1) / s, 0.0], abs=1e-6)


def test_remax_baseline_by_hand():
    # A = r - r(greedy of the same prompt): [3 - 1, 0 - 1, 2 - 2.5]
    adv, _ = F.remax_advantages(seq_rewards=torch.tensor([3.0, 0.0, 2.0]), baseline_rewards=torch.tensor([1.0, 1.0, 2.5]))
    assert adv.tolist() == pytest.approx([2.0, -1.0, -0.5])


def test_kl_estimators_by_hand_and_finite_at_padding():
    # log pi = -1, log ref = -2 -> log_ratio = 1: k1 = 1; k2 = 0.5; k3 = (e^-1 - 1) + 1 = e^-1
    lp, ref = torch.tensor([[-1.0, 1.0]]), torch.tensor([[-2.0, -80.0]])
    mask = torch.tensor([[1.0, 0.0]])  # position 1 is padding (INVALID_LOGPROB = 1.0 vs a far-off reference)
    assert F.kl_k1(logprobs=lp, ref_logprobs=ref, mask=mask).tolist()[0] == pytest.approx([1.0, 0.0])
    assert F.kl_k2(logprobs=lp, ref_logprobs=ref, mask=mask).tolist()[0] == pytest.approx([0.5, 0.0])
    assert F.kl_k3(logprobs=lp, ref_logprobs=ref, mask=mask).tolist()[0] == pytest.approx([math.exp(-1), 0.0])
    # log_ratio = -1: k3 = (e - 1) - 1 = e - 2
    assert F.kl_k3(logprobs=ref[:, :1], ref_logprobs=lp[:, :1], mask=mask[:, :1]).item() == pytest.approx(math.e - 2)
    # a huge log-ratio: clamped to -20 -> k3 = e^20 - 21, then clamped to 10; never inf or NaN
    big = F.kl_k3(logprobs=torch.tensor([[-100.0]]), ref_logprobs=torch.tensor([[0.0]]), mask=torch.ones(1, 1))
    assert big.item() == 10.0


def test_masked_mean_ignores_inf_at_padding():
    values = torch.tensor([[1.0, 3.0, float("inf")]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert F.masked_mean(values, mask).item() == 2.0
    assert F.masked_sum(values, mask, 1).tolist() == [4.0]


def test_token_clip_loss_by_hand():
    # eps = 0.2.  token 0: log r = log 1.5, A = 1 -> max(-1.5, -1.2) = -1.2 (clipped)
    # token 1: r = 0.5, A = 1 -> max(-0.5, -0.8) = -0.5;  token 2: r = 0.5, A = -2 -> max(1.0, 1.6) = 1.6
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    losses, stats = F.token_clip_loss(logprobs=new, old_logprobs=old, advantages=adv, mask=torch.ones(1, 3), cliprange=0.2)
    assert losses.tolist()[0] == pytest.approx([-1.2, -0.5, 1.6])
    assert stats["clipfrac"].item() == 1.0  # all three ratios are outside [0.8, 1.2]
    assert stats["ratio"].item() == pytest.approx((1.5 + 0.5 + 0.5) / 3)


def test_sequence_clip_loss_by_hand():
    # sequence log-ratio = sum of the real tokens' log-ratios: row 0 log 1.1 + 0 = log 1.1 (not clipped), A = 2
    # -> -2.2; row 1: log-ratio log 2 (padded token ignored), A = -1 -> max(2, 1.2) = 2
    new = torch.tensor([[math.log(1.1), 0.0, 0.0], [math.log(2.0), 0.0, 5.0]])
    losses, stats = F.sequence_clip_loss(logprobs=new, old_logprobs=torch.zeros(2, 3), advantages=torch.tensor([2.0, -1.0]),
                                         mask=M, cliprange=0.2)
    assert losses.tolist() == pytest.approx([-2.2, 2.0])
    assert stats["clipfrac"].item() == 0.5


def test_vanilla_pg_loss_by_hand():
    # -A * log pi: [-(1)(-0.5), -(-2)(-1), padding 0]
    losses, _ = F.vanilla_pg_loss(logprobs=torch.tensor([[-0.5, -1.0, 1.0]]), old_logprobs=torch.zeros(1, 3),
                                  advantages=torch.tensor([[1.0, -2.0, 3.0]]), mask=torch.tensor([[1.0, 1.0, 0.0]]))
    assert losses.tolist()[0] == pytest.approx([0.5, -2.0, 0.0])


def test_loss_aggregations_by_hand():
    # row 0 (3 tokens): [1, 2, 3]; row 1 (2 tokens): [4, 6, pad 100]
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 100.0]])
    assert F.agg_token_mean(losses, M).item() == pytest.approx(16 / 5)  # (1+2+3+4+6) / 5
    assert F.agg_seq_mean_token_sum(losses, M).item() == pytest.approx((6 + 10) / 2)
    assert F.agg_seq_mean_token_mean(losses, M).item() == pytest.approx((2 + 5) / 2)
    assert F.aggregate(torch.tensor([1.0, 3.0]), M, F.agg_token_mean).item() == 2.0  # sequence level: mean


def test_clipped_value_loss_by_hand():
    # old V = 0, new V = 1, clip 0.2 -> clipped V = 0.2; return 2: max((1-2)^2, (0.2-2)^2) = 3.24; 0.5 * 3.24
    loss, clipfrac = F.clipped_value_loss(values=torch.ones(1, 1), old_values=torch.zeros(1, 1), returns=torch.full((1, 1), 2.0),
                                          mask=torch.ones(1, 1), cliprange_value=0.2)
    assert loss.item() == pytest.approx(1.62)
    assert clipfrac.item() == 1.0


def test_parts_are_registered_lazily_with_provenance():
    from rlhfkit.plugins import get_registry

    registry = get_registry()
    builtin = sorted(n for n, e in registry.entries["advantage_estimator"].items() if e.distribution == "rlhfkit")
    assert builtin == ["gae", "grpo", "reinforce_pp", "remax", "rloo"]  # (the example plugin adds group_mean)
    assert registry.names("policy_loss") == ["sequence_clip", "token_clip", "vanilla_pg"]
    assert registry.names("loss_aggregation") == ["seq_mean_token_mean", "seq_mean_token_sum", "token_mean"]
    assert registry.names("kl_estimator") == ["k1", "k2", "k3"]
    entry = registry.entries["advantage_estimator"]["gae"]
    assert entry.distribution == "rlhfkit" and isinstance(entry.obj.fn, str)
    for name in ("objective/gold", "eval/kl", "gold_final", "peak_memory_bytes", "episodes_per_s", "tokens_per_s"):
        assert name in registry.names("metric")
    assert registry.get("metric", "peak_memory_bytes").higher_is_better is False
    assert registry.get("metric", "eval/kl").higher_is_better is None
