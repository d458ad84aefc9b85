"""Rollout tensor helpers (EOS truncation, log-softmax at the sampled token, entropy) and the KL controllers.

The registered algorithm parts (masked reductions, KL estimators, advantage estimators, losses) live in
:mod:`rlhfkit.engine.functional`.

Conventions: tensors are ``(batch, response_len)``; ``mask`` is 1.0 for real response tokens (up to and
including the first EOS) and 0.0 for the padding after it.
"""

from __future__ import annotations

import torch

INVALID_LOGPROB = 1.0
"""Written into log-prob tensors at padded positions so that a masking bug shows up loudly."""


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row; the row length where there is none."""
    row_len = bools.size(-1)
    positions = torch.arange(row_len, device=bools.device)
    return torch.where(bools, positions, row_len).min(dim=-1).values


def truncate_after_eos(responses: torch.Tensor, eos_token_id: int, pad_token_id: int):
    """Replace everything after the first EOS with pad.

    Returns ``(responses, mask, last_index, contains_eos)``: the float mask covers tokens up to and including
    the first EOS; ``last_index`` is that EOS's position (or the last position when there is no EOS).
    """
    is_eos = responses == eos_token_id
    first_eos = first_true_indices(is_eos)
    contains_eos = first_eos < responses.size(1)
    last_index = torch.where(contains_eos, first_eos, responses.size(1) - 1)
    positions = torch.arange(responses.size(1), device=responses.device).unsqueeze(0)
    mask = positions <= last_index.unsqueeze(1)
    truncated = torch.where(mask, responses, torch.full_like(responses, pad_token_id))
    return truncated, mask.float(), last_index, contains_eos


LOGITS_PER_BLOCK = 1 << 25
"""At most this many logits (32M: 128 MiB in float32) are turned into float32 at once by
:func:`selective_log_softmax` and :func:`entropy_from_logits`."""


def _token_blocks(logits: torch.Tensor):
    """``(flat, rows)``: ``logits`` as ``(tokens, vocab)`` and how many token rows one block of at most
    :data:`LOGITS_PER_BLOCK` logits holds (at least one row: a vocabulary larger than the bound is one row)."""
    vocab = max(1, logits.size(-1))
    return logits.reshape(-1, logits.size(-1)), max(1, LOGITS_PER_BLOCK // vocab)


def selective_log_softmax(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] without a full-vocabulary float32 copy of the whole batch.

    Computed in float32, block by block over the flattened ``(batch x len)`` token rows, each block at most
    :data:`LOGITS_PER_BLOCK` logits, so peak extra memory is one block.  (Blocks used to be
    ``max(8, 2**25 // (len x vocab))`` batch rows: at least 8 whole sequences, 4.98e9 logits = 20 GB for
    Qwen2-7B at 4,097 tokens, issue 17.)  Per token row the computation is the same whatever the block size,
    so the values do not depend on it (tests/test_packing.py).
    """
    flat, rows = _token_blocks(logits)
    flat_tokens = tokens.reshape(-1, 1)
    if rows >= flat.size(0):
        block = logits.float()
        return block.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(block, dim=-1)
    out = torch.empty(flat_tokens.size(0), dtype=torch.float32, device=logits.device)
    for start in range(0, flat.size(0), rows):
        block = flat[start : start + rows].float()
        picked = block.gather(-1, flat_tokens[start : start + rows]).squeeze(-1)
        out[start : start + rows] = picked - torch.logsumexp(block, dim=-1)
    return out.view(tokens.shape)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, in float32 blocks of at most :data:`LOGITS_PER_BLOCK` logits (the
    same values per row as one block).  Callers that only report it run it without autograd (its float32
    softmax would otherwise be kept for backward: ``response_logprobs``)."""
    flat, rows = _token_blocks(logits)
    if rows >= flat.size(0):
        return _entropy(logits)
    out = torch.empty(flat.size(0), dtype=torch.float32, device=logits.device)
    for start in range(0, flat.size(0), rows):
        out[start : start + rows] = _entropy(flat[start : start + rows])
    return out.view(logits.shape[:-1])


class AdaptiveKLController:
    """Ziegler et al. (2019): multiply beta by 1 + clip(KL/target - 1, +-0.2) * n / horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass
