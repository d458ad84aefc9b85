"""An honest FLOP floor for one RL step (issue 17): the FLOPs the step must do, divided by this machine's
measured matrix-multiply throughput at the model's own shapes.

What the step must do, counted from the architecture (``rlhfkit.architecture``) and the real token counts of
each sequence (no padding, nothing recomputed):

- generation: every real token through the policy once (the prompt as prefill, each generated token but the
  last fed back), causal attention over the growing cache, the LM head at each generated position;
- scoring: the reference over every real token (LM head at the response positions), the reward model over
  every real token (its score head at the last one), PPO's critic over every real token;
- training: per epoch, every row's real tokens through the policy forward and backward (backward = 2x forward
  for full fine-tuning: input and weight gradients; 1x with LoRA: input gradients only, the adapters' own
  FLOPs are left out), PPO's critic likewise (always full);
- attention (QK^T and PV) counts the causal half: 2 x 2 x n(n+1)/2 x heads x head_dim per layer and sequence.

Not counted: the optimizer step, sampling logic, norms, activations, softmax (memory-bound, not FLOPs).

The rate is measured, not assumed: ``torch.matmul`` of ``[M x in] x [in x out]`` for every linear layer shape of
one decoder layer, at the ``M`` of the phase (prompt tokens for the prefill, the batch for a decode step, the
phase's real tokens for scoring and training), one thread, best of a few repeats: the fastest this machine
multiplies these matrices, so floor time <= any real implementation's time.
"""

from __future__ import annotations

import time


def arch_of(model) -> dict:
    from rlhfkit.architecture import architecture_numbers
    from rlhfkit.engine.rollout import unwrap

    return architecture_numbers(unwrap(model).config.to_dict())


def linear_flops_per_token(arch: dict) -> float:
    """2 x the multiply-adds of every decoder linear layer, per token (embedding lookups are no matmul)."""
    return 2.0 * sum(i * o * c for _name, i, o, c in arch["linear_layers"])


def attention_flops(arch: dict, n: int, new: int | None = None) -> float:
    """QK^T and PV of causal attention for the last ``new`` (default all) of ``n`` positions, every layer."""
    new = n if new is None else new
    pairs = new * (n - new) + new * (new + 1) / 2  # each new position attends to itself and everything before
    return 2.0 * 2.0 * pairs * arch["num_heads"] * arch["head_dim"] * arch["num_layers"]


def lm_head_flops(arch: dict) -> float:
    return 2.0 * arch["hidden_size"] * arch["vocab_size"]


def step_flops(arch: dict, rows: list[tuple[int, int]], algorithm: str, epochs: int, lora: bool) -> dict:
    """FLOPs per phase of one step; ``rows`` = (real prompt tokens, real response tokens) per completion."""
    lin, head = linear_flops_per_token(arch), lm_head_flops(arch)
    gen = score = train = 0.0
    for q, r in rows:
        n = q + r
        fed = n - 1  # the last sampled token is never fed back
        gen += lin * fed + attention_flops(arch, fed) + head * r
        policy_fwd = lin * n + attention_flops(arch, n) + head * r
        critic_fwd = lin * n + attention_flops(arch, n) + 2.0 * arch["hidden_size"] * r
        score += policy_fwd + lin * n + attention_flops(arch, n)  # reference, reward model
        train += epochs * policy_fwd * (2.0 if lora else 3.0)
        if algorithm == "ppo":
            score += critic_fwd
            train += epochs * critic_fwd * 3.0
    return {"generation": gen, "scoring": score, "training": train}


def matmul_rate(arch: dict, m: int, repeats: int = 5) -> float:
    """FLOP/s of ``torch.matmul`` over one decoder layer's linear shapes at ``m`` rows (best of ``repeats``)."""
    import torch

    m = max(1, int(m))
    shapes = [(i, o) for _name, i, o, _c in arch["linear_layers"]]
    xs = {i: torch.randn(m, i) for i, _o in shapes}
    ws = [(xs[i], torch.randn(i, o)) for i, o in shapes]
    flops = sum(2.0 * m * i * o for i, o in shapes)
    for x, w in ws:  # warm-up
        torch.matmul(x, w)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x, w in ws:
            torch.matmul(x, w)
        best = min(best, time.perf_counter() - start)
    return flops / best


def floor_seconds(arch: dict, steps_rows: list[list[tuple[int, int]]], algorithm: str, epochs: int, minibatches: int,
                  lora: bool) -> dict:
    """Per-phase floor seconds per step (mean over ``steps_rows``) and the rates used."""
    batch = len(steps_rows[0])
    mean_prompt = sum(q for rows in steps_rows for q, _ in rows) / sum(len(r) for r in steps_rows)
    mean_tokens = sum(q + r for rows in steps_rows for q, r in rows) / sum(len(r) for r in steps_rows)
    rates = {
        "prefill": matmul_rate(arch, batch * mean_prompt),
        "decode": matmul_rate(arch, batch),
        "scoring": matmul_rate(arch, batch * mean_tokens),
        "training": matmul_rate(arch, batch * mean_tokens / minibatches),
    }
    lin, head = linear_flops_per_token(arch), lm_head_flops(arch)
    out = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
    flops_total = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
    for rows in steps_rows:
        f = step_flops(arch, rows, algorithm, epochs, lora)
        prefill = sum(lin * q + attention_flops(arch, q) for q, _ in rows)
        out["generation"] += prefill / rates["prefill"] + (f["generation"] - prefill) / rates["decode"]
        out["scoring"] += f["scoring"] / rates["scoring"]
        out["training"] += f["training"] / rates["training"]
        for k in flops_total:
            flops_total[k] += f[k]
    n = len(steps_rows)
    return {"floor_s": {k: v / n for k, v in out.items()}, "flops": {k: v / n for k, v in flops_total.items()},
            "rates_gflops": {k: v / 1e9 for k, v in rates.items()}, "lin_flops_per_token": lin, "head_flops": head}
