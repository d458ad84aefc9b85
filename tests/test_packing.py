"""Padding-free forwards (issue 17): rows grouped by length and trimmed give the padded forward's values.

A batch of left-padded queries and right-padded completions of mixed lengths is scored once over the whole
padded batch (``padding_free="off"``, the old path) and once group by group (``"on"``); log-probs, entropies,
gradients, critic values and reward scores must agree at every real position to float tolerance (trimming
changes the number of masked columns attention reduces over, so not bit for bit).  Also: the chunked
log-softmax and entropy give the same bits whatever the block size, and a block never holds more than the
bound.
"""

import pytest
import torch

from rlhfkit.engine import core
from rlhfkit.engine.core import entropy_from_logits, selective_log_softmax
from rlhfkit.engine.pg_loop import critic_values
from rlhfkit.engine.rollout import length_groups, response_logprobs, row_ends, score_at

VOCAB, QUERY, RESPONSE, BATCH = 40, 5, 12, 10
ATOL = 1e-5


def _config(vocab_size=VOCAB, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, **kw)


@pytest.fixture(scope="module")
def models():
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    policy = LlamaForCausalLM(_config()).eval()
    torch.manual_seed(1)
    reward = LlamaForSequenceClassification(_config(num_labels=1)).eval()
    return policy, reward


@pytest.fixture(scope="module")
def batch():
    """Left-padded queries, completions of lengths 1..RESPONSE right-padded with 0 (as make_rollout builds)."""
    gen = torch.Generator().manual_seed(3)
    query = torch.randint(3, VOCAB, (BATCH, QUERY), generator=gen)
    query_mask = torch.ones(BATCH, QUERY, dtype=torch.long)
    query_mask[::3, :2] = 0
    query = query.masked_fill(query_mask == 0, 0)
    lengths = torch.tensor([1, 12, 3, 7, 2, 12, 5, 9, 4, 6])
    mask = torch.arange(RESPONSE)[None] < lengths[:, None]
    responses = torch.randint(3, VOCAB, (BATCH, RESPONSE), generator=gen).masked_fill(~mask, 0)
    input_ids = torch.cat([query, responses], 1)
    attention_mask = torch.cat([query_mask, mask.long()], 1)
    return input_ids, attention_mask, responses, mask, lengths


def test_groups_cover_every_row_once_and_reach_its_last_token(models, batch):
    input_ids, attention_mask, *_ = batch
    groups = length_groups(attention_mask, models[0], "on")
    assert groups is not None and 1 < len(groups) <= 4
    rows = torch.cat([g[0] for g in groups]).sort().values
    assert rows.tolist() == list(range(BATCH))
    ends = row_ends(attention_mask)
    for rows, width in groups:
        assert int(ends[rows].max()) == width
    assert sum(len(r) * w for r, w in groups) < BATCH * input_ids.size(1)
    assert length_groups(attention_mask, models[0], "off") is None
    # auto: a model this small pays more per extra call than the padding costs -> one padded forward
    assert length_groups(attention_mask, models[0], "auto") is None


def test_logprobs_and_entropy_equal_the_padded_forward(models, batch):
    policy, _ = models
    input_ids, attention_mask, responses, mask, _ = batch
    with torch.no_grad():
        padded, padded_entropy = response_logprobs(policy, input_ids, attention_mask, responses, 0.7, with_entropy=True)
        packed, packed_entropy = response_logprobs(policy, input_ids, attention_mask, responses, 0.7, with_entropy=True,
                                                   padding_free="on")
    assert packed.shape == padded.shape == (BATCH, RESPONSE)
    torch.testing.assert_close(packed[mask], padded[mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(packed_entropy[mask], padded_entropy[mask], atol=ATOL, rtol=0)


def test_gradients_equal_the_padded_forward(models, batch):
    policy, _ = models
    input_ids, attention_mask, responses, mask, _ = batch
    grads = []
    for mode in ("off", "on"):
        policy.zero_grad(set_to_none=True)
        logprobs = response_logprobs(policy, input_ids, attention_mask, responses, 1.0, padding_free=mode)
        torch.where(mask, logprobs, 0.0).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    policy.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_rewards_and_critic_values_equal_the_padded_forward(models, batch):
    _, reward = models
    input_ids, attention_mask, _, mask, lengths = batch
    with torch.no_grad():
        last = QUERY + lengths - 1
        torch.testing.assert_close(score_at(reward, input_ids, attention_mask, last, padding_free="on"),
                                   score_at(reward, input_ids, attention_mask, last), atol=ATOL, rtol=0)
        packed = critic_values(reward, input_ids, attention_mask, QUERY, padding_free="on")
        padded = critic_values(reward, input_ids, attention_mask, QUERY)
    torch.testing.assert_close(packed[mask], padded[mask], atol=ATOL, rtol=0)


def test_chunked_log_softmax_and_entropy_are_bitwise_the_one_block_values(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=gen)
    tokens = torch.randint(0, 50, (3, 7), generator=gen)
    whole = selective_log_softmax(logits, tokens), entropy_from_logits(logits)
    seen = []
    real_float = torch.Tensor.float

    def spy(self):  # every block turned into float32 is recorded
        seen.append(self.numel())
        return real_float(self)

    monkeypatch.setattr(core, "LOGITS_PER_BLOCK", 120)  # 2 token rows of 50 logits per block
    monkeypatch.setattr(torch.Tensor, "float", spy)
    chunked = selective_log_softmax(logits, tokens), entropy_from_logits(logits)
    monkeypatch.undo()
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    assert seen and max(seen) <= 120  # blocks along tokens: the bound holds even within one sequence


def test_a_cell_trains_with_padding_free_forwards():
    from engine_harness import run

    off, _ = run("ppo", response_length=10, batch_size=8, steps=2)
    on, _ = run("ppo", response_length=10, batch_size=8, steps=2, padding_free="on")
    for a, b in zip(off, on):
        assert a["objective/length"] == b["objective/length"]  # same samples
        for key in ("objective/scores", "objective/entropy", "loss/policy", "val/mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), key


def test_dropping_finished_rows_from_decoding_changes_no_number(monkeypatch):
    """sample(drop_finished=True) drops finished rows from the lean decoder's batch; the kept rows' tokens and the
    generator's state after are those of decoding every row to the end, and on this model the log-probs too (bit
    for bit; on the default recipe's model they differ at rounding level, so ``[rl] drop_finished_rows`` is off
    by default)."""
    from transformers import LlamaForCausalLM

    from rlhfkit.engine.rollout import sample
    from rlhfkit_plugins.models._decode import LlamaDecoder

    kept = []
    select = LlamaDecoder.select_rows
    monkeypatch.setattr(LlamaDecoder, "select_rows", lambda self, rows: (kept.append(len(rows)), select(self, rows)))
    torch.manual_seed(0)
    policy = LlamaForCausalLM(_config(vocab_size=12, eos_token_id=2)).eval()  # 1/12 EOS per step: lengths vary
    query = torch.randint(3, 12, (24, 4), generator=torch.Generator().manual_seed(1))
    query_mask = torch.ones_like(query)
    query_mask[::5, :1] = 0
    runs = []
    for drop in (False, True):
        gen = torch.Generator().manual_seed(5)
        with torch.inference_mode():
            tokens, logprobs = sample(policy, query, query_mask, 30, 1.0, 2, 0, gen, drop_finished=drop)
        runs.append((tokens, logprobs, torch.rand(3, generator=gen)))
    (tokens, logprobs, after), (tokens2, logprobs2, after2) = runs
    assert torch.equal(tokens, tokens2) and torch.equal(after, after2)
    real = torch.ones_like(tokens, dtype=torch.bool)
    real[:, 1:] = (tokens[:, :-1] != 2).cumprod(1).bool()  # up to and including the first EOS
    assert 0 < int((tokens == 2).any(1).sum()) < 24  # some rows finished early, some did not
    assert torch.equal(logprobs[real], logprobs2[real])
    assert kept and kept[-1] < 24  # rows were dropped


@pytest.mark.parametrize("fast", [True, False])
def test_a_shared_prompt_prefill_samples_what_one_prefill_per_row_samples(monkeypatch, fast):
    """k rows of the same prompt share one prompt forward (``[rl] share_prompt_prefill``): the lean decoder and
    HF's own decoding both continue from the copied cache with the same tokens, the same random draws and the
    same log-probs (to rounding), and the prompt forward ran over the distinct prompts only."""
    from transformers import LlamaForCausalLM

    from rlhfkit.engine import rollout

    torch.manual_seed(0)
    policy = LlamaForCausalLM(_config(vocab_size=12, eos_token_id=2)).eval()
    prompts = torch.randint(3, 12, (3, 4), generator=torch.Generator().manual_seed(1))
    prompts[1, :1] = 0
    mask = (prompts != 0).long()
    query, query_mask = prompts.repeat_interleave(4, dim=0), mask.repeat_interleave(4, dim=0)  # k = 4, prompt-major
    rows_prefilled = []
    forward = policy.forward

    def counting(*a, **kw):
        if kw.get("logits_to_keep") == 1:
            rows_prefilled.append(kw["input_ids"].size(0))
        return forward(*a, **kw)

    monkeypatch.setattr(policy, "forward", counting)
    runs = []
    for share in ("off", "on"):
        gen = torch.Generator().manual_seed(5)
        with torch.inference_mode():
            tokens, logprobs = rollout.sample(policy, query, query_mask, 12, 1.0, 2, 0, gen, fast=fast, share_prefill=share)
        runs.append((tokens, logprobs, torch.rand(3, generator=gen)))
    (tokens, logprobs, after), (tokens2, logprobs2, after2) = runs
    assert rows_prefilled == [12, 3]
    assert torch.equal(tokens, tokens2) and torch.equal(after, after2)
    assert len({tuple(t) for t in tokens[:4].tolist()}) > 1  # the k samples of one prompt differ
    assert torch.allclose(logprobs, logprobs2, atol=ATOL, rtol=0)


def test_auto_shares_the_prefill_only_for_models_past_the_compute_bound_size():
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from rlhfkit.engine import rollout

    torch.manual_seed(0)
    tiny = LlamaForCausalLM(_config()).eval()  # 2N ~ 0.05 MFLOP a token
    big = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                       num_attention_heads=8, num_key_value_heads=4, pad_token_id=0)).eval()  # ~6 MFLOP
    assert rollout._flops_per_token(tiny) < rollout.COMPUTE_BOUND_FLOPS_PER_TOKEN <= rollout._flops_per_token(big)
    query = torch.tensor([[5, 6, 7]] * 4)
    mask = torch.ones_like(query)
    prefilled = []
    for model in (tiny, big):
        forward = model.forward
        model.forward = lambda *a, _f=forward, **kw: (prefilled.append(kw["input_ids"].size(0)), _f(*a, **kw))[1]
        cache = DynamicCache()
        with torch.inference_mode():
            logits = rollout._prefill(model, query, mask, rollout.position_ids_from_mask(mask), cache, "auto")
        assert logits.size(0) == 4 and cache.layers[0].keys.size(0) == 4  # every row gets its copy
        assert torch.equal(logits[0], logits[3])
    assert prefilled == [4, 1]


def test_the_ledger_counts_the_prompt_tokens_a_shared_prefill_forwarded():
    """RLOO (k=2) with the prefill shared: the policy's forward tokens are each completion's tokens plus each
    *distinct* prompt's tokens once; without sharing, every row's prompt."""
    from engine_harness import tiny_context

    from rlhfkit.engine.rollout import make_rollout

    counted = {}
    for share in ("off", "on"):
        ctx, _ = tiny_context("rloo", k=2, share_prompt_prefill=share, response_length=6)
        prompts = ctx.prompt_sampler.next(4, repeats=2)
        before = ctx.ledger.forward_tokens["policy"]
        rollout = make_rollout(ctx, prompts)
        prompt_mask = rollout.attention_mask[:, : rollout.query_ids.size(1)]
        completion = int(rollout.mask.sum())
        counted[share] = (ctx.ledger.forward_tokens["policy"] - before, completion, prompt_mask)
        ctx.memory.close()
    off, on = counted["off"], counted["on"]
    assert off[0] == off[1] + int(off[2].sum())
    assert on[0] == on[1] + int(on[2][::2].sum())  # prompt-major: rows 0, 2, 4, 6 are the distinct prompts
    assert on[0] < off[0]


def test_a_generation_wrapper_without_modules_samples_with_auto_sharing():
    """Under ZeRO-3 without gathering the sampler calls a forward-counting wrapper with no ``modules()``
    (context._SyncedGeneration); the rollout decides the sharing on the trained policy, not on that wrapper
    (deciding on the wrapper crashed the 2-process ZeRO-3 cells)."""
    from engine_harness import tiny_context

    from rlhfkit.engine import rollout

    class Wrapper:  # what _SyncedGeneration exposes: a call, nothing else
        def __init__(self, model):
            self._model = model

        def __call__(self, *a, **kw):
            return self._model(*a, **kw)

    ctx, _ = tiny_context("rloo", k=2, share_prompt_prefill="auto")
    ctx.generation_model = lambda: Wrapper(ctx.policy)
    try:
        made = rollout.make_rollout(ctx, ctx.prompt_sampler.next(4, repeats=2))
    finally:
        ctx.memory.close()
    assert made.responses.size(0) == 8
