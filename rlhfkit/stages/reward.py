"""Reward-model stage: trains a one-output sequence classifier on preference pairs with ``trl.RewardTrainer``.

The pairs are in TRL's *explicit prompt* preference format (``prompt``, ``chosen``, ``rejected``): TRL appends
EOS to both answers, scores ``prompt + answer + eos`` and minimises ``-log sigmoid(r_chosen - r_rejected)``.
Held-out pairwise accuracy is measured with :func:`score_texts`, our own scorer, which reads the model the same
way the RL stage does (left padding, explicit position ids, ``score`` of the last token).  Nothing here imports
torch at module import time.
"""

from __future__ import annotations

from typing import Literal

from rlhfkit.validation import check_choices

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rlhfkit.stages.sft import (
    LR_SCHEDULERS,
    cap_chars,
    common_training_args,
    quiet_progress,
    silence_trainer,
    tokenizer_adds_special_tokens,
    with_eos,
)


@dataclass
class RewardStageConfig:
    """Settings of the reward-model stage (the recipe's ``[reward_model]`` table)."""

    epochs: int = 3
    """Passes over the training preference pairs."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (tiny models like 1e-3 to 3e-3; larger checkpoints need far less)."""
    batch_size: int = 32
    """Preference pairs per optimisation step (each pair is two sequences)."""
    max_length: int = 128
    """Longest tokenized prompt + answer (+ EOS).  TRL *drops* pairs whose chosen or rejected sequence is longer
    (it does not truncate), so keep it above the longest example.  Scoring (accuracy, score statistics)
    truncates to it: the first ``max_length - 1`` tokens and EOS."""
    warmup_ratio: float = 0.05
    """Fraction of the optimisation steps spent warming the learning rate up linearly from zero."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warm-up: ``"cosine"``, ``"linear"`` (decay to zero) or ``"constant"``."""
    center_rewards_coefficient: float | None = None
    """If set, adds ``coef * mean((r_chosen + r_rejected)^2)`` to the loss, pulling scores towards zero mean
    (Eisenstein et al. 2023; TRL suggests 0.01).  ``None`` disables it."""
    score_batch_size: int = 256
    """Sequences per forward pass when scoring pairs for accuracy and score statistics."""
    seed: int = 0
    """Seed of the stage (data order; the pipeline also seeds a preset's initialisation with it): the same
    seed gives the same model, bit for bit."""

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        check_choices(self)  # lr_scheduler
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ValueError("center_rewards_coefficient must be >= 0 (or unset)")


def _capped_ids(tokenizer, texts: list[str], max_length: int | None) -> list[list[int]]:
    """Token ids of ``texts`` (no special tokens added); with ``max_length`` a longer row keeps its first
    ``max_length - 1`` tokens and ends with EOS, so the score is still read at an EOS as in training."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_length is None:
        return ids
    eos = tokenizer.eos_token_id
    tail = [eos] if eos is not None else []
    return [row if len(row) <= max_length else row[: max_length - len(tail)] + tail for row in ids]


def score_texts(
    model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 256,
    max_length: int | None = None,
):
    """Reward-model scores of ``prompt + completion + eos`` for each pair, as a float32 CPU tensor of shape (n,).

    EOS is appended unless the completion already ends with it; no other special tokens are added (as in
    training).  Rows are left-padded, the backbone (``getattr(model, model.base_model_prefix)``) is run with the
    attention mask and ``position_ids = cumsum(mask) - 1`` (clamped at 0), so each row is scored exactly as if
    it were alone, and ``model.score`` is applied to the hidden state of the last position (the last real token
    under left padding).  With ``max_length`` each text is cut at ``CHARS_PER_TOKEN * max_length`` characters
    before tokenizing and at ``max_length`` tokens after (keeping EOS last): a chunk is padded to its longest
    row, so one 10 MB text would otherwise make every row of its chunk millions of tokens wide.
    """
    import torch

    if len(prompts) != len(completions):
        raise ValueError(f"score_texts: {len(prompts)} prompts but {len(completions)} completions")
    if max_length is not None:
        capped = [cap_chars(p, c, max_length) for p, c in zip(prompts, completions)]
        prompts, completions = [p for p, _, _ in capped], [c for _, c, _ in capped]
    texts = [p + with_eos(c, tokenizer.eos_token) for p, c in zip(prompts, completions)]
    if not texts:
        return torch.zeros(0, dtype=torch.float32)
    ids = _capped_ids(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    backbone = getattr(model, model.base_model_prefix)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    scores = []
    try:
        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                chunk = ids[i : i + batch_size]
                width = max(len(x) for x in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, row in enumerate(chunk):  # left padding: the last real token is the last position
                    if row:
                        input_ids[j, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                        attention_mask[j, width - len(row) :] = 1
                position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
                hidden = backbone(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    position_ids=position_ids.to(device),
                    use_cache=False,
                ).last_hidden_state
                scores.append(model.score(hidden[:, -1]).squeeze(-1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores)


def pairwise_accuracy(
    model, tokenizer, pairs: Sequence[dict], batch_size: int = 256, max_length: int | None = None
) -> float:
    """Fraction of ``{"prompt", "chosen", "rejected"}`` pairs whose chosen answer scores strictly higher."""
    if not pairs:
        return float("nan")
    prompts = [p["prompt"] for p in pairs]
    scores = score_texts(
        model, tokenizer, prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
        batch_size, max_length,
    )
    return _fraction_chosen_higher(scores, len(pairs))


def _fraction_chosen_higher(scores, n: int) -> float:
    """``scores`` holds n chosen then n rejected scores; the fraction of pairs ranked right (ties count wrong)."""
    return int((scores[:n] > scores[n:]).sum()) / n


def _capped_pairs(pairs: Sequence[dict], max_length: int) -> tuple[list[dict], int]:
    """Training pairs with prompt + each answer cut at ``CHARS_PER_TOKEN * max_length`` characters (TRL
    tokenizes the whole text before it drops a pair longer than ``max_length``), and how many were cut.  A
    cut pair is still longer than ``max_length`` tokens, so TRL drops it as before."""
    out, capped = [], 0
    for p in pairs:
        prompt, chosen, cut_chosen = cap_chars(p["prompt"], p["chosen"], max_length)
        _, rejected, cut_rejected = cap_chars(p["prompt"], p["rejected"], max_length)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        capped += cut_chosen or cut_rejected
    return out, capped


def train_reward_model(model, tokenizer, task, config: RewardStageConfig, output_dir: Path) -> dict:
    """Train ``model`` on ``task.pairs`` with ``trl.RewardTrainer``; save model + tokenizer to ``output_dir``.

    Returns ``reward/eval_accuracy`` (held-out pairwise accuracy on ``task.eval_pairs``, via :func:`score_texts`),
    ``reward/train_accuracy``, ``reward/train_loss``, ``reward/seconds`` and ``reward/score_mean`` /
    ``reward/score_std`` (over the chosen and rejected answers of the training pairs, for reward normalisation).
    """
    start = time.perf_counter()  # the stage's wall time includes importing TRL
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pairs, capped = _capped_pairs(task.pairs, config.max_length)
    if not pairs:
        raise ValueError("the task has no preference pairs")
    if tokenizer_adds_special_tokens(tokenizer):
        # Tokenize as score_texts and the rollouts do (no BOS...); TRL takes `chosen_ids` / `rejected_ids`.
        def encode(p, answer):
            text = p["prompt"] + with_eos(p[answer], tokenizer.eos_token)
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        train_dataset = Dataset.from_dict(
            {"chosen_ids": [encode(p, "chosen") for p in pairs], "rejected_ids": [encode(p, "rejected") for p in pairs]}
        )
    else:
        # TRL's explicit-prompt preference format: it scores prompt + answer + EOS.
        train_dataset = Dataset.from_list(pairs)

    set_seed(config.seed)
    args = RewardConfig(
        **common_training_args(config, output_dir),
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        eos_token=tokenizer.eos_token,
        disable_dropout=True,
    )
    with quiet_progress():
        trainer = RewardTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer)
        silence_trainer(trainer)
        kept = len(trainer.train_dataset)
        result = trainer.train()
        model.eval()
        prompts = [p["prompt"] for p in pairs]
        train_scores = score_texts(
            model,
            tokenizer,
            prompts + prompts,
            [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
            config.score_batch_size,
            config.max_length,
        )
        n = len(pairs)
        eval_accuracy = pairwise_accuracy(
            model, tokenizer, task.eval_pairs, config.score_batch_size, config.max_length
        )
        model.save_pretrained(str(output_dir))
        tokenizer.save_pretrained(str(output_dir))
    return {
        "reward/eval_accuracy": eval_accuracy,
        "reward/train_accuracy": _fraction_chosen_higher(train_scores, n),
        "reward/train_loss": float(result.training_loss),
        "reward/score_mean": float(train_scores.mean()),
        "reward/score_std": float(train_scores.std()),
        "reward/train_pairs": kept,
        "reward/dropped_pairs": n - kept,
        "reward/capped_pairs": capped,
        "reward/eval_pairs": len(task.eval_pairs),
        "reward/steps": int(result.global_step),
        "reward/seconds": time.perf_counter() - start,
    }
