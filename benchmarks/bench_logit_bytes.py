"""Bytes per training logit: the peak of one PPO policy update, measured at two vocabulary sizes.

The update is the one ``rlhfkit/engine/pg_loop.py`` runs per minibatch: ``response_logprobs(...,
with_entropy=True)``, the token clip loss, aggregation, backward.  Two tiny Llama models differ only in
their vocabulary (the embedding and LM head are frozen, so no gradient of them differs); the peak of live
CPU tensors comes from torch's allocator events (``torch.profiler``, ``profile_memory=True``: every
allocation and free in order, summed to a running total).  Bytes per logit = (peak(V2) - peak(V1)) /
(rows x (response tokens + 1) x (V2 - V1)):
the LM head runs on response + 1 positions (``logits_to_keep``), as the planner counts them.  The planner's ``TRAIN_LOGIT_BYTES`` is this figure.

    python benchmarks/bench_logit_bytes.py            # rows 4, 64 response tokens, vocab 85 vs 8192
"""

from __future__ import annotations

import argparse
import sys

import torch


def _model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=512)
    model = LlamaForCausalLM(config)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied with the LM head: nothing vocab-sized trains
    return model.train()


def _update(model, rows: int, prompt: int, response: int, vocab: int) -> None:
    """One minibatch of pg_loop._minibatch for PPO (token clip loss, token-mean aggregation)."""
    from rlhfkit.engine import functional as F
    from rlhfkit.engine.rollout import response_logprobs

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, prompt + response), generator=g)
    mask = torch.ones_like(ids)
    responses = ids[:, prompt:]
    response_mask = torch.ones(rows, response)
    logprobs, entropy = response_logprobs(model, ids, mask, responses, 1.0, with_entropy=True)
    losses, _ = F.token_clip_loss(logprobs=logprobs, old_logprobs=logprobs.detach() + 0.01,
                                  advantages=torch.randn(rows, response, generator=g), mask=response_mask,
                                  cliprange=0.2)
    loss = F.aggregate(losses, response_mask, F.agg_token_mean)
    loss.backward()
    F.masked_mean(entropy.detach(), response_mask).item()


def peak_bytes(vocab: int, rows: int, prompt: int, response: int) -> int:
    """Peak of CPU tensor bytes allocated during one update, above what was live before it."""
    from torch.profiler import ProfilerActivity, profile

    model = _model(vocab)
    _update(model, rows, prompt, response, vocab)  # warm-up (lazy inits), then measure a clean update
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _update(model, rows, prompt, response, vocab)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--vocab", type=int, nargs=2, default=[85, 8192])
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    small, large = (peak_bytes(v, args.rows, args.prompt, args.response) for v in args.vocab)
    logits = args.rows * (args.response + 1) * (args.vocab[1] - args.vocab[0])  # the LM head runs on response + 1 positions
    print(f"peak vocab {args.vocab[0]}: {small / 2**20:.2f} MiB, vocab {args.vocab[1]}: {large / 2**20:.2f} MiB")
    print(f"bytes per training logit: {(large - small) / logits:.2f} (rows x (response + 1) x vocab difference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
