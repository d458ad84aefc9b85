"""The parts algorithms are composed of, as pure functions on tensors (the way verl's ``core_algos.py`` is).

Shapes: ``B`` completions, ``T`` response tokens.  ``mask`` is ``(B, T)``, 1.0 for real response tokens (up
to and including the first EOS), 0.0 for padding.  Padded positions of log-prob tensors hold
``INVALID_LOGPROB``; every masked reduction here selects with ``torch.where`` rather than multiplying by the
mask, because ``inf * 0`` is NaN: a KL estimate that overflows at a padded position must vanish, not poison
the batch.

Registered functions (advantage estimators, policy losses, aggregations, KL estimators) take keyword
arguments and ignore the ones they do not use (``**_``), so the loop can hand every part the same inputs.
"""

from __future__ import annotations

import torch

from rlhfkit.engine.core import INVALID_LOGPROB  # noqa: F401  (re-exported: the padding value of log-probs)

# ---- masked reductions --------------------------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set; whatever sits at masked positions (inf, NaN) is ignored."""
    kept = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the masked entries (all of them, or per ``dim``)."""
    return masked_sum(values, mask, dim) / (mask.sum() if dim is None else mask.sum(dim))


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
    """Zero mean (optional) and unit variance over the unmasked entries of a ``(B, T)`` tensor; 0 elsewhere."""
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


def whiten(values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit (unbiased) standard deviation of a ``(B,)`` tensor of per-sequence values."""
    return (values - values.mean()) / (values.std() + eps)


def sequence_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T) -> (B,)``: per-sequence sum over real tokens (a sequence log-prob, a sequence KL)."""
    return masked_sum(values, mask, 1)


# ---- KL estimators: per-token estimates of KL(policy || reference) from samples of the policy ---------------
# log_ratio = log pi(y_t) - log pi_ref(y_t), y ~ pi.  Schulman, "Approximating KL divergence" (2020).

KL_LOG_RATIO_CLAMP = 20.0
"""|log-ratio| is clamped before exponentiating (k3), as verl does: exp(20) is large but finite in float32."""
KL_VALUE_CLAMP = 10.0
"""The k3 estimate is clamped to [-10, 10] (verl's ``low_var_kl``): one wild token cannot dominate the loss."""


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def kl_k1(*, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, **_) -> torch.Tensor:
    """k1 = log_ratio: unbiased, can be negative; its detached value in the reward gives grad KL(pi||ref)."""
    return _masked(logprobs - ref_logprobs, mask)


def kl_k2(*, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, **_) -> torch.Tensor:
    """k2 = 0.5 * log_ratio^2: biased, >= 0; as a loss term its gradient is that of KL(pi||ref) (on-policy)."""
    return _masked(0.5 * (logprobs - ref_logprobs) ** 2, mask)


def kl_k3(*, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, **_) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_ref/pi: unbiased, >= 0.  As a loss term (GRPO) its gradient is that of
    the reverse KL(ref||pi).  The log-ratio is clamped to +-20 and the value to +-10 (verl)."""
    log_ratio = torch.clamp(logprobs - ref_logprobs, -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    k3 = torch.expm1(-log_ratio) + log_ratio
    return _masked(torch.clamp(k3, -KL_VALUE_CLAMP, KL_VALUE_CLAMP), mask)


# ---- rewards --------------------------------------------------------------------------------------------------


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """``(B, T)``: -beta * KL_t at every real token, plus the sequence score ``(B,)`` at its last real token."""
    rewards = _masked(-kl_coef * kl, mask)
    rewards[torch.arange(rewards.size(0), device=rewards.device), last_index] += scores
    return rewards


def score_at_last_token(seq_rewards: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """``(B,) -> (B, T)``: a sequence reward placed on the last real token (for token-level estimators)."""
    rewards = torch.zeros(mask.shape, dtype=seq_rewards.dtype, device=seq_rewards.device)
    rewards[torch.arange(rewards.size(0), device=rewards.device), last_index] = seq_rewards
    return rewards


# ---- advantage estimators -------------------------------------------------------------------------------------


def gae_advantages(*, token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                   lam: float, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al., 2016) over response tokens; V after the last real token is 0 (the episode ends).

    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}.  Returns ``(advantages, returns)``,
    both ``(B, T)``, ``returns = advantages + values``, 0 where masked.
    """
    rewards, values = _masked(token_rewards, mask), _masked(values, mask)
    length = rewards.size(1)
    reversed_advantages = []
    last_gae = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        reversed_advantages.append(last_gae)
    advantages = _masked(torch.stack(reversed_advantages[::-1], dim=1), mask)
    return advantages, _masked(advantages + values, mask)


def _groups(seq_rewards: torch.Tensor, k: int) -> torch.Tensor:
    if seq_rewards.numel() % k:
        raise ValueError(f"{seq_rewards.numel()} rewards cannot be split into groups of k={k}")
    return seq_rewards.view(-1, k)


def rloo_advantages(*, seq_rewards: torch.Tensor, k: int, **_) -> tuple[torch.Tensor, None]:
    """RLOO (Ahmadian et al., 2024): A_i = r_i - mean of the other k - 1 rewards of the same prompt.

    ``seq_rewards`` ``(B,)`` is grouped prompt-major (the k samples of a prompt are consecutive); returns ``(B,)``.
    """
    grouped = _groups(seq_rewards, k)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1), None


def grpo_advantages(*, seq_rewards: torch.Tensor, k: int, eps: float = 1e-6, **_) -> tuple[torch.Tensor, None]:
    """GRPO (Shao et al., 2024, DeepSeekMath): A_i = (r_i - mean_group) / (std_group + eps), unbiased std as verl.

    ``(B,)`` grouped prompt-major -> ``(B,)``; the loop broadcasts it to every token of the completion.
    """
    grouped = _groups(seq_rewards, k)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1), None


def reinforce_pp_advantages(*, token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                            **_) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu, 2025): G_t = r_t + gamma G_{t+1} over the KL-penalised token rewards, then whitened over
    the whole batch (no critic, no group baseline).  Returns ``(advantages, returns)``, both ``(B, T)``."""
    rewards = _masked(token_rewards, mask)
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.size(1))):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    returns = _masked(returns, mask)
    return masked_whiten(returns, mask), returns


def remax_advantages(*, seq_rewards: torch.Tensor, baseline_rewards: torch.Tensor, **_) -> tuple[torch.Tensor, None]:
    """ReMax (Li et al., 2024): A_i = r_i - r(greedy completion of the same prompt).  ``(B,), (B,) -> (B,)``."""
    return seq_rewards - baseline_rewards, None


# ---- policy losses: per-token (B, T) or per-sequence (B,) terms, plus statistics ------------------------------


def token_clip_loss(*, logprobs, old_logprobs, advantages, mask, cliprange: float, **_):
    """PPO's clipped surrogate per token: max(-A r_t, -A clip(r_t, 1-eps, 1+eps)), r_t = pi/pi_old.

    ``(B, T)`` inputs (``advantages`` ``(B, T)``) -> ``(loss (B, T), stats)``; stats are token means.
    """
    log_ratio = _masked(logprobs - old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    losses = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange))
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((torch.abs(ratio - 1.0) > cliprange).float(), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return losses, stats


def sequence_clip_loss(*, logprobs, old_logprobs, advantages, mask, cliprange: float, **_):
    """The completion as one action (RLOO): clipped REINFORCE on the sequence log-prob ratio.

    ``(B, T)`` log-probs, ``(B,)`` advantages -> ``(loss (B,), stats)``; stats are sequence means.
    """
    log_ratio = sequence_sum(logprobs, mask) - sequence_sum(old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    losses = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange))
    with torch.no_grad():
        stats = {
            "clipfrac": (torch.abs(ratio - 1.0) > cliprange).float().mean(),
            "approxkl": 0.5 * (log_ratio**2).mean(),
            "ratio": ratio.mean(),
        }
    return losses, stats


def vanilla_pg_loss(*, logprobs, old_logprobs, advantages, mask, **_):
    """Plain policy gradient per token: -A_t log pi(y_t) (no ratio, no clipping; on-policy only).

    ``(B, T)`` inputs -> ``(loss (B, T), stats)``; ``ratio`` is reported for monitoring only.
    """
    losses = -advantages * _masked(logprobs, mask)
    with torch.no_grad():
        log_ratio = _masked(logprobs - old_logprobs, mask)
        stats = {"approxkl": 0.5 * masked_mean(log_ratio**2, mask), "ratio": masked_mean(torch.exp(log_ratio), mask)}
    return losses, stats


# ---- loss aggregation: (B, T) per-token terms -> scalar --------------------------------------------------------


def agg_token_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over every real token of the batch (long completions weigh more; PPO, DAPO)."""
    return masked_mean(losses, mask)


def agg_seq_mean_token_sum(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over each completion's tokens, mean over completions (Dr. GRPO without the constant)."""
    return masked_sum(losses, mask, 1).mean()


def agg_seq_mean_token_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each completion's tokens, then over completions (the original GRPO)."""
    return (masked_sum(losses, mask, 1) / mask.sum(1).clamp(min=1)).mean()


def aggregate(losses: torch.Tensor, mask: torch.Tensor, mode) -> torch.Tensor:
    """A ``(B,)`` sequence-level loss is averaged over completions whatever the mode (one term per sequence);
    a ``(B, T)`` token-level loss goes through the aggregation ``mode`` (a callable)."""
    if losses.dim() == 1:
        return losses.mean()
    return mode(losses, mask)


# ---- preference losses: one term per (chosen, rejected) pair ------------------------------------------------

DPO_LOSS_TYPES = ("sigmoid", "hinge")


def dpo_loss(*, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float,
             loss_type: str = "sigmoid", **_):
    """DPO (Rafailov et al., 2023) on sequence log-probs (sums over each completion's real tokens), ``(P,)`` each.

    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l));
    ``sigmoid``: -log sigmoid(beta h) (DPO); ``hinge``: max(0, 1 - beta h) (SLiC, Zhao et al., 2023).
    Returns ``(losses (P,), chosen_rewards (P,), rejected_rewards (P,))``: the implicit rewards
    beta (log pi - log ref), detached (statistics).
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    else:
        raise ValueError(f"loss_type must be one of: {', '.join(DPO_LOSS_TYPES)} (got {loss_type!r})")
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def clipped_value_loss(*, values, old_values, returns, mask, cliprange_value: float):
    """PPO's clipped value loss, 0.5 * token mean of max((V - G)^2, (clip(V) - G)^2); ``(B, T)`` -> scalar, clipfrac."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    losses, losses_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(losses, losses_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((losses_clipped > losses).float(), mask)
    return loss, clipfrac
