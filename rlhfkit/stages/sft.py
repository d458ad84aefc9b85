"""Supervised fine-tuning stage: trains the policy on the task's demonstrations with ``trl.SFTTrainer``.

The data is in TRL's *prompt-completion* format: the loss is taken on the completion tokens only, and TRL
appends the tokenizer's EOS token to every completion so the policy learns to stop.  Nothing here imports
torch at module import time (recipes import the config dataclass without touching torch).
"""

from __future__ import annotations

from typing import Literal

from rlhfkit.validation import check_choices

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

LR_SCHEDULERS = ("cosine", "linear", "constant")
# Texts are cut at this many characters per token of the stage's max_length before they are tokenized: the
# stages keep at most max_length tokens anyway, and a tokenizer given a 10 MB row builds millions of tokens
# (the reward stage reached 8.4 GB RSS on one such row).  No tokenizer here averages more than 64 characters
# per token, so the first max_length tokens of a text are the same with or without the cut.
CHARS_PER_TOKEN = 64


@dataclass
class SFTStageConfig:
    """Settings of the SFT stage (the recipe's ``[sft]`` table)."""

    epochs: int = 3
    """Passes over the SFT demonstrations."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate (tiny models like 1e-3 to 3e-3; larger checkpoints need far less)."""
    batch_size: int = 32
    """Demonstrations per optimisation step."""
    max_length: int = 128
    """Longest tokenized prompt + completion (+ EOS); longer sequences are truncated at the end (TRL's
    ``keep_start``), so keep it above the longest example or the EOS is cut off."""
    warmup_ratio: float = 0.05
    """Fraction of the optimisation steps spent warming the learning rate up linearly from zero."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warm-up: ``"cosine"``, ``"linear"`` (decay to zero) or ``"constant"``."""
    eval_fraction: float = 0.05
    """Fraction of the demonstrations held out (the last rows) to measure ``sft/eval_loss``; 0 trains on all."""
    seed: int = 0
    """Seed of the stage (data order; the pipeline also seeds a preset's initialisation with it): the same
    seed gives the same model, bit for bit."""

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        check_choices(self)  # lr_scheduler
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")


def split_sft_rows(rows: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic train / held-out split: the last ``eval_fraction`` of the rows are held out."""
    n_eval = int(round(len(rows) * eval_fraction))
    if eval_fraction > 0 and len(rows) > 1:
        n_eval = min(max(n_eval, 1), len(rows) - 1)
    else:
        n_eval = 0
    return rows[: len(rows) - n_eval], rows[len(rows) - n_eval :]


def tokenizer_adds_special_tokens(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` adds special tokens (e.g. a BOS) that ``add_special_tokens=False`` leaves out.

    TRL tokenizes text datasets with the default (``add_special_tokens=True``) while rlhfkit's rollouts and
    scorers never add special tokens; when the two differ the stages hand TRL pre-tokenized data instead.
    """
    probe = "a b"
    return tokenizer(probe)["input_ids"] != tokenizer(probe, add_special_tokens=False)["input_ids"]


def with_eos(text: str, eos_token: str) -> str:
    """``text`` ending with ``eos_token`` (appended unless already there, as TRL does)."""
    return text if text.endswith(eos_token) else text + eos_token


def cap_chars(prompt: str, answer: str, max_length: int) -> tuple[str, str, bool]:
    """``prompt + answer`` cut at ``CHARS_PER_TOKEN * max_length`` characters, keeping the start (as the
    stages' token truncation does); and whether anything was cut."""
    limit = CHARS_PER_TOKEN * max_length
    if len(prompt) + len(answer) <= limit:
        return prompt, answer, False
    prompt = prompt[:limit]
    return prompt, answer[: limit - len(prompt)], True


def encode_prompt_completion(tokenizer, prompt: str, completion: str, max_length: int | None = None):
    """Token ids of ``prompt + completion + eos`` (no other special tokens) and the index where the completion
    starts: where the tokenized prompt and prompt + completion diverge, as TRL computes it.  With
    ``max_length`` the text is cut at ``CHARS_PER_TOKEN * max_length`` characters before tokenizing and the ids
    at ``max_length`` tokens after (the start is then at most ``len(ids)``)."""
    if max_length is not None:
        prompt, completion, _ = cap_chars(prompt, completion, max_length)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + with_eos(completion, tokenizer.eos_token), add_special_tokens=False)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    if max_length is not None:
        full_ids = full_ids[:max_length]
    return full_ids, min(start, len(full_ids))


def completion_nll(model, tokenizer, rows: list[dict], batch_size: int = 64, max_length: int | None = None) -> float:
    """Mean negative log-likelihood per completion token (EOS included) of ``rows`` under a causal LM.

    Tokenized exactly as the SFT stage trains (``prompt + completion + eos``, no special tokens added), so this
    is the held-out counterpart of TRL's completion-only training loss.
    """
    import torch

    if not rows:
        return float("nan")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    pad_id = tokenizer.pad_token_id
    try:
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                encoded = [
                    encode_prompt_completion(tokenizer, r["prompt"], r["completion"], max_length)
                    for r in rows[i : i + batch_size]
                ]
                width = max(len(ids) for ids, _ in encoded)
                input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
                labels = torch.full((len(encoded), width), -100, dtype=torch.long)
                for j, (ids, start) in enumerate(encoded):  # right padding: positions are 0..n-1 as in training
                    input_ids[j, : len(ids)] = torch.tensor(ids)
                    attention_mask[j, : len(ids)] = 1
                    labels[j, start : len(ids)] = torch.tensor(ids[start:])
                input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
                logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                logits, targets = logits[:, :-1].float(), labels[:, 1:]
                mask = targets != -100
                logprobs = torch.log_softmax(logits, dim=-1)
                token_lp = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                total += float(-(token_lp * mask).sum())
                count += int(mask.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


@contextlib.contextmanager
def quiet_progress():
    """Silence ``datasets`` (map/filter) and ``transformers`` (save) progress bars, restoring them afterwards."""
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    ds_enabled, tf_enabled = ds_logging.is_progress_bar_enabled(), tf_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if ds_enabled:
            ds_logging.enable_progress_bar()
        if tf_enabled:
            tf_logging.enable_progress_bar()


def common_training_args(config, output_dir: Path) -> dict:
    """TrainingArguments shared by the SFT and reward stages: CPU-friendly, quiet, deterministic, no checkpoints."""
    import torch
    from transformers import TrainingArguments

    use_cpu = not torch.cuda.is_available()
    # TRL defaults bf16=True and gradient checkpointing on: both only slow tiny fp32 models down on CPU.
    # transformers 5.2x renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns).
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:
        checkpointing = {"activation_checkpointing": False}
    else:
        checkpointing = {"gradient_checkpointing": False}
    return dict(
        **checkpointing,
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        # transformers 5 removed `warmup_ratio`: a float in [0, 1) passed as `warmup_steps` is the ratio.
        warmup_steps=float(config.warmup_ratio),
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=1.0,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=use_cpu,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        # Trainer.train() returns the mean training loss whatever the logging; logging would only print dicts.
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=True,
        push_to_hub=False,
    )


def silence_trainer(trainer) -> None:
    """Drop the callback that prints the final metrics dict (``disable_tqdm=True`` installs a printer)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _remove_instance_forward(model) -> None:
    """Undo TRL's ``add_fused_lm_head`` patch (an instance-level ``forward`` bound to this very model).

    Left in place, a ``copy.deepcopy`` of the model (e.g. a frozen reference policy) would run the *original*
    model's forward through the closure.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.__dict__.pop("forward", None)


def train_sft(model, tokenizer, task, config: SFTStageConfig, output_dir: Path) -> dict:
    """Fine-tune ``model`` on ``task.sft`` with ``trl.SFTTrainer``; save model + tokenizer to ``output_dir``.

    Returns ``{"sft/train_loss", "sft/eval_loss", "sft/seconds"}`` plus ``sft/eval_loss_init`` (the held-out loss
    before training) and counts.  ``sft/eval_loss`` is the completion-token NLL (EOS included) on the held-out
    rows, computed by :func:`completion_nll`; ``sft/train_loss`` is TRL's mean completion-token loss over all
    training steps.  TRL's fused LM-head patch is removed from ``model`` afterwards.
    """
    start = time.perf_counter()  # the stage's wall time includes importing TRL
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_rows, eval_rows = split_sft_rows(list(task.sft), config.eval_fraction)
    if not train_rows:
        raise ValueError("the task has no SFT demonstrations")
    eval_batch_size = max(config.batch_size, 64)
    eval_loss_init = completion_nll(model, tokenizer, eval_rows, eval_batch_size, config.max_length)

    capped = [cap_chars(r["prompt"], r["completion"], config.max_length) for r in train_rows]
    if tokenizer_adds_special_tokens(tokenizer):
        # Tokenize as rollouts do (no BOS...): TRL takes `input_ids` + `completion_mask` and builds the labels.
        columns = {"input_ids": [], "completion_mask": []}
        for prompt, completion, _ in capped:
            ids, begin = encode_prompt_completion(tokenizer, prompt, completion, config.max_length)
            columns["input_ids"].append(ids)
            columns["completion_mask"].append([0] * begin + [1] * (len(ids) - begin))
        train_dataset = Dataset.from_dict(columns)
    else:
        # TRL's prompt-completion format: it appends EOS to each completion and masks the prompt out of the loss
        # (and truncates to max_length tokens, keeping the start, as the character cap does).
        train_dataset = Dataset.from_list([{"prompt": p, "completion": c} for p, c, _ in capped])

    set_seed(config.seed)
    args = SFTConfig(
        **common_training_args(config, output_dir),
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        padding_free=False,
        eos_token=tokenizer.eos_token,
        shuffle_dataset=False,
    )
    with quiet_progress():
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer)
        silence_trainer(trainer)
        try:
            result = trainer.train()
        finally:
            _remove_instance_forward(model)
        model.eval()
        eval_loss = completion_nll(model, tokenizer, eval_rows, eval_batch_size, config.max_length)
        model.save_pretrained(str(output_dir))
        tokenizer.save_pretrained(str(output_dir))
    return {
        "sft/train_loss": float(result.training_loss),
        "sft/eval_loss": float(eval_loss),
        "sft/eval_loss_init": float(eval_loss_init),
        "sft/train_examples": len(train_rows),
        "sft/eval_examples": len(eval_rows),
        "sft/capped_rows": sum(cut for _, _, cut in capped),
        "sft/steps": int(result.global_step),
        "sft/seconds": time.perf_counter() - start,
    }
