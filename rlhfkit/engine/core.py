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


def selective_log_softmax(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] without keeping a full-vocabulary log-prob tensor per row.

    Computed row-block by row-block in float32, so peak extra memory is one block, not a copy of the
    whole ``(batch, len, vocab)`` tensor.
    """
    # Rows per block: 8 for large vocabularies (as before), more when rows are small, so that small models do
    # not pay a Python round per 8 rows; a block holds at most ~32M logits either way.  Per row the
    # computation is the same, so the values do not depend on the block size.
    per_row = max(1, logits[0].numel()) if logits.size(0) else 1
    rows = max(8, (1 << 25) // per_row)
    if rows >= logits.size(0):
        block = logits.float()
        return block.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(block, dim=-1)
    out = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.size(0), rows):
        block = logits[start : start + rows].float()
        picked = block.gather(-1, tokens[start : start + rows].unsqueeze(-1)).squeeze(-1)
        out[start : start + rows] = picked - torch.logsumexp(block, dim=-1)
    return out


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


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
