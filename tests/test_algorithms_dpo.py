"""DPO and online DPO (issue 12 §3): the loss worked out by hand, the online pair selection, the ledger."""

import math

import pytest
import torch

from engine_harness import run, tiny_context
from rlhfkit.engine import functional as F
from rlhfkit.engine.preference import encode_pairs, pairs_from_rollout
from rlhfkit_plugins.algorithms.dpo_config import DPOConfig, OnlineDPOConfig
from rlhfkit_plugins.algorithms.online_dpo import select_pairs


def test_dpo_loss_by_hand():
    # pair 0: h = (-10 - -12) - (-11 - -10) = 2 - (-1) = 3, beta h = 1.5:
    #   -log sigmoid(1.5) = log(1 + e^-1.5) = log(1.22313016) = 0.20141328; hinge max(0, 1 - 1.5) = 0
    #   implicit rewards beta * (logp - logref): 0.5 * 2 = 1.0 (chosen), 0.5 * -1 = -0.5 (rejected)
    # pair 1: h = (-5 - -4) - (-6 - -6) = -1, beta h = -0.5:
    #   -log sigmoid(-0.5) = log(1 + e^0.5) = log(2.64872127) = 0.97407698; hinge 1 + 0.5 = 1.5
    inputs = dict(chosen_logps=torch.tensor([-10.0, -5.0], requires_grad=True), rejected_logps=torch.tensor([-11.0, -6.0]),
                  ref_chosen_logps=torch.tensor([-12.0, -4.0]), ref_rejected_logps=torch.tensor([-10.0, -6.0]), beta=0.5)
    losses, chosen, rejected = F.dpo_loss(**inputs)
    assert losses.tolist() == pytest.approx([0.20141328, 0.97407698], abs=1e-7)
    assert chosen.tolist() == [1.0, -0.5] and rejected.tolist() == [-0.5, 0.0]
    # d loss / d logp_w = -beta sigmoid(-beta h): -0.5 * sigmoid(-1.5) = -0.5 * 0.18242552 = -0.09121276;
    # pair 1: -0.5 * sigmoid(0.5) = -0.5 * 0.62245933 = -0.31122967
    losses.sum().backward()
    assert inputs["chosen_logps"].grad.tolist() == pytest.approx([-0.09121276, -0.31122967], abs=1e-7)
    hinge, _, _ = F.dpo_loss(**inputs, loss_type="hinge")
    assert hinge.tolist() == [0.0, 1.5]


def test_online_pairs_pick_the_higher_score_and_skip_ties():
    # prompts 0..3, two samples each (prompt-major rows 2i, 2i+1)
    scores = torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0, 5.0, -1.0, -0.5])
    chosen, rejected, ties = select_pairs(scores)
    assert chosen.tolist() == [1, 2, 7] and rejected.tolist() == [0, 3, 6] and ties == 1


def test_pairs_from_a_rollout_carry_its_reference_sequence_logprobs():
    ctx, _ = tiny_context("online_dpo")
    rollout = ctx.rollout(ctx.prompt_sampler.next(2, repeats=2))
    batch = pairs_from_rollout(rollout, torch.tensor([1, 2]), torch.tensor([0, 3]))
    rows = [1, 0, 2, 3]
    assert torch.equal(batch.responses, rollout.responses[rows])
    expected = [float(rollout.ref_logprobs[r][rollout.mask[r].bool()].sum()) for r in rows]
    assert batch.ref_logps.tolist() == pytest.approx(expected)
    assert batch.select(torch.tensor([1])).responses.tolist() == rollout.responses[[2, 3]].tolist()


def test_encoded_pairs_are_laid_out_as_the_rollout_and_end_with_eos():
    ctx, _ = tiny_context("dpo")
    tok = ctx.tokenizer
    batch = encode_pairs(ctx, ctx.task.pairs[:2])
    # "say cat now :" is 4 words, " great happy the cat" 4 words + EOS: 9 real tokens a row, 4 rows
    assert batch.input_ids.shape == (4, 9) and int(batch.attention_mask.sum()) == 36
    assert tok.decode(batch.responses[0]).split() == ["great", "happy", "the", "cat", tok.eos_token]
    assert tok.decode(batch.responses[1], skip_special_tokens=True).split() == ["bad", "awful", "the", "dog"]
    assert ctx.ledger.forward_tokens["reference"] == 36


def test_dpo_ledger_counts_pair_tokens_and_no_generation():
    history, ctx = run("dpo")  # 2 steps x 4 pairs (batch_size 8); 1 epoch x 1 minibatch
    ledger = ctx.ledger
    # 8 rows of 9 real tokens a step (see above), 2 steps: 144 tokens through the reference once and the
    # policy forward and backward once; the reward model is not used to train
    assert ledger.generated_tokens == 0 and ledger.episodes == 16 and ledger.prompts == 8
    assert ledger.forward_tokens["reference"] == ledger.forward_tokens["policy"] == ledger.backward_tokens["policy"] == 144
    assert ledger.forward_tokens["reward"] == 0 and ledger.updates == 2
    assert [line["episode"] for line in history] == [8, 16] and history[-1]["ledger/episodes"] == 16
    final = ctx.evaluations[-1]  # evaluated by the step scope like every algorithm: gold, proxy, KL to SFT
    assert final["eval/step"] == 2 and {"eval/gold", "eval/score", "eval/kl"} <= set(final)


def test_dpo_episode_budget_counts_preference_completions():
    history, ctx = run("dpo", steps=50, budget_amount=24)  # 8 completions (4 pairs) a step: 3 steps
    assert len(history) == 3 and ctx.ledger.episodes == 24


def test_dpo_learns_the_preference():
    history, _ = run("dpo", steps=6, learning_rate=1e-2, lr_schedule="constant")
    margins = [line["dpo/reward_margin"] for line in history]
    assert margins[-1] > margins[0] and history[-1]["dpo/reward_accuracy"] == 1.0
    assert all(math.isfinite(line["loss/policy"]) for line in history)


def test_online_dpo_ledger_and_statistics():
    history, ctx = run("online_dpo", num_epochs=2, num_minibatches=2)
    last = history[-1]
    assert ctx.ledger.episodes == 16 and ctx.ledger.generated_tokens > 0
    assert {"online_dpo/tie_fraction", "online_dpo/reward_margin", "online_dpo/reward_accuracy",
            "objective/kl", "loss/policy"} <= set(last)
    assert last["objective/kl_penalty"] == 0.0
    # 4 pairs a step, 2 epochs x 2 minibatches of 2 pairs: 4 updates a step unless a tie left a minibatch empty
    assert 0 < ctx.ledger.updates <= 2 * 4 and (last["online_dpo/tie_fraction"] > 0 or ctx.ledger.updates == 8)


@pytest.mark.parametrize("config,field,bad", [(DPOConfig, "kl_placement", "sequence_reward"),
                                              (OnlineDPOConfig, "kl_placement", "loss"),
                                              (DPOConfig, "loss_type", "ipo"), (DPOConfig, "kl_coef", 0.0),
                                              (DPOConfig, "batch_size", 7), (OnlineDPOConfig, "adaptive_kl_target", 1.0)])
def test_dpo_configs_refuse_in_one_line(config, field, bad):
    kwargs = {field: bad}
    if field == "kl_placement":
        kwargs["kl_estimator"] = "k2" if bad == "loss" else "k1"
    with pytest.raises(ValueError) as err:
        config(**kwargs)
    assert "\n" not in str(err.value) and field.split("_")[0] in str(err.value)
