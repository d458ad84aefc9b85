"""Tensor helpers shared by every algorithm: masking, whitening, KL, advantage estimators.

Conventions: tensors are ``(batch, response_len)``; ``mask`` is 1.0 for real response tokens (up to and
including the first EOS) and 0.0 for the padding after it.
"""

from __future__ import annotations

import torch

INVALID_LOGPROB = 1.0
"""Written into log-prob tensors at padded positions so that a masking bug shows up loudly."""


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim) / mask.sum(dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            raise ValueError("masked_var needs at least two unmasked values")
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (optional) and unit variance over the unmasked entries; masked entries are zeroed."""
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


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


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy.

    k1 = log p - log q (unbiased, can be negative); k3 = (q/p - 1) - log(q/p) (unbiased, never negative).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; allowed: k1, k3")


def token_level_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """PPO's per-token reward: -beta * KL at every token, plus the sequence score at its last token."""
    rewards = -kl_coef * kl * mask
    rewards[torch.arange(rewards.size(0), device=rewards.device), last_index] += scores
    return rewards


def generalized_advantage_estimation(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over response tokens; the value after the last real token is 0 (the episode ends).

    Returns ``(advantages, returns)`` with ``returns = advantages + values``; both are 0 where masked.
    """
    rewards = rewards * mask
    values = values * mask
    length = rewards.size(1)
    advantages_reversed = []
    last_gae = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO: each sample's baseline is the mean reward of the other k - 1 samples of its prompt.

    ``rewards`` is flat and grouped prompt-major: the k samples of a prompt are consecutive.
    """
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of k={k}")
    grouped = rewards.view(-1, k)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


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
