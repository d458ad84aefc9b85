"""DPO stage (optional, ``dpo = true`` in a ``[[models]]`` row): the SFT policy trained on the task's preference
pairs with ``trl.DPOTrainer`` before RL, as in the usual SFT -> DPO -> PPO pipeline.

Its policy is the RL start *and* the reference policy of the row's cells, so the KL penalty of RL keeps the
policy near the DPO policy, not the SFT one.  The pairs are tokenized here as every other stage and the rollout
tokenize (``prompt + answer + eos``, no special tokens added) and handed to TRL pre-tokenized.  The stage's own
measurement of what DPO did is the implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` of the chosen and
rejected answers, on the training pairs and the held-out pairs: ``dpo/*_reward_accuracy`` (chosen ranked above
rejected) and ``dpo/*_margin`` (chosen minus rejected), both 0 before training (the policy is the reference).
Nothing here imports torch at module import time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.stages.sft import (
    _remove_instance_forward,
    common_training_args,
    encode_prompt_completion,
    quiet_progress,
    silence_trainer,
)
from rlhfkit.validation import check_choices


@dataclass
class DPOStageConfig:
    """Settings of the DPO stage (the recipe's ``[dpo]`` table), used by ``[[models]]`` rows with ``dpo = true``."""

    beta: float = 0.1
    """DPO's inverse temperature: the strength of the implicit KL leash to the SFT policy (higher stays closer)."""
    learning_rate: float = 5e-4
    """Peak AdamW learning rate (tiny models like 1e-4 to 1e-3; larger checkpoints want about 5e-7 to 5e-6)."""
    epochs: int = 1
    """Passes over the training preference pairs."""
    batch_size: int = 32
    """Preference pairs per optimisation step (each pair is two sequences)."""
    max_length: int = 128
    """Longest tokenized prompt + answer (+ EOS); longer sequences keep their start.  A pair whose prompt alone
    fills it has no answer token left and is dropped (counted in ``dpo/dropped_pairs``)."""
    max_pairs: int = 0
    """Train on at most this many of the task's training pairs (the first ones); 0 = all."""
    warmup_ratio: float = 0.1
    """Fraction of the optimisation steps spent warming the learning rate up linearly from zero."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "linear"
    """Learning-rate schedule after warm-up: ``"cosine"``, ``"linear"`` (decay to zero) or ``"constant"``."""
    seed: int = 0
    """Seed of the stage (data order): the same seed gives the same model, bit for bit."""

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.beta <= 0:
            raise ValueError("beta must be > 0")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.max_pairs < 0:
            raise ValueError("max_pairs must be >= 0 (0 = all)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        check_choices(self)  # lr_scheduler


def encode_pairs(tokenizer, pairs, max_length: int) -> tuple[list[dict], int]:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` per pair (tokenized as the SFT stage does: the answer
    starts where the tokenized prompt and prompt + answer diverge, shared by both answers), and how many pairs were
    dropped for having no answer token within ``max_length``."""
    encoded, dropped = [], 0
    for p in pairs:
        chosen, start_c = encode_prompt_completion(tokenizer, p["prompt"], p["chosen"], max_length)
        rejected, start_r = encode_prompt_completion(tokenizer, p["prompt"], p["rejected"], max_length)
        start = min(start_c, start_r)
        if start >= len(chosen) or start >= len(rejected):
            dropped += 1
            continue
        encoded.append({"prompt_ids": chosen[:start], "chosen_ids": chosen[start:], "rejected_ids": rejected[start:]})
    return encoded, dropped


def answer_logps(model, encoded: list[dict], pad_id: int, batch_size: int = 64):
    """Summed log-probabilities of the chosen and rejected answers (EOS included) under ``model``: a float32
    tensor (n, 2).  Right padding, as TRL's collator pads, so positions are 0..len-1."""
    import torch

    device = next(model.parameters()).device
    rows = [(e["prompt_ids"], e[key]) for e in encoded for key in ("chosen_ids", "rejected_ids")]
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                chunk = rows[i : i + batch_size]
                width = max(len(p) + len(a) for p, a in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                answer = torch.zeros((len(chunk), width), dtype=torch.bool)
                for j, (p, a) in enumerate(chunk):
                    ids[j, : len(p) + len(a)] = torch.tensor(p + a)
                    mask[j, : len(p) + len(a)] = 1
                    answer[j, len(p) : len(p) + len(a)] = True
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
                logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                token = logps.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
                out.append((token * answer[:, 1:].to(device)).sum(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).view(-1, 2) if out else torch.zeros(0, 2)


def implicit_reward_metrics(policy_logps, ref_logps, beta: float, prefix: str) -> dict:
    """DPO's implicit rewards of chosen and rejected answers: accuracy (chosen strictly above rejected), margin,
    mean chosen/rejected reward and the sigmoid DPO loss, under ``prefix`` (``dpo/train_``, ``dpo/eval_``)."""
    import torch

    if len(policy_logps) == 0:
        return {}
    rewards = beta * (policy_logps - ref_logps)
    margin = rewards[:, 0] - rewards[:, 1]
    return {
        f"{prefix}reward_accuracy": float((margin > 0).float().mean()),
        f"{prefix}margin": float(margin.mean()),
        f"{prefix}chosen_reward": float(rewards[:, 0].mean()),
        f"{prefix}rejected_reward": float(rewards[:, 1].mean()),
        f"{prefix}loss": float(-torch.nn.functional.logsigmoid(margin).mean()),
    }


def _trainer_class():
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on data already tokenized by :func:`encode_pairs` (TRL would add the tokenizer's special
        tokens, which rollouts never do)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PreTokenizedDPOTrainer


def train_dpo(model, ref_model, tokenizer, task, config: DPOStageConfig, output_dir: Path) -> dict:
    """Train ``model`` (the SFT policy) against ``ref_model`` (a frozen copy of it) on ``task.pairs`` with
    ``trl.DPOTrainer``; save model + tokenizer to ``output_dir``.  Returns the implicit-reward metrics of the
    trained policy on the training and held-out pairs (``dpo/train_*``, ``dpo/eval_*``: see
    :func:`implicit_reward_metrics`), ``dpo/trainer_mean_loss`` (TRL's mean loss over all steps), counts, steps
    and seconds."""
    start = time.perf_counter()  # the stage's wall time includes importing TRL
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pairs = list(task.pairs)[: config.max_pairs or None]
    train, dropped = encode_pairs(tokenizer, pairs, config.max_length)
    if not train:
        raise ValueError(f"dpo: the data set has no preference pairs to train on ({len(pairs)} pairs, {dropped} "
                         f"longer than dpo.max_length {config.max_length} before their answer)")
    held_out, _ = encode_pairs(tokenizer, task.eval_pairs, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    score_batch = max(2 * config.batch_size, 64)
    # The reference's log-probs once, before training: the policy is still the SFT model.
    ref_train = answer_logps(model, train, pad_id, score_batch)
    ref_eval = answer_logps(model, held_out, pad_id, score_batch)

    set_seed(config.seed)
    args = DPOConfig(**common_training_args(config, output_dir), beta=config.beta, max_length=config.max_length,
                     truncation_mode="keep_start", disable_dropout=True)
    with quiet_progress():
        trainer = _trainer_class()(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(train),
                                   processing_class=tokenizer)
        silence_trainer(trainer)
        try:
            result = trainer.train()
        finally:
            _remove_instance_forward(model)
        model.eval()
        metrics = {"dpo/trainer_mean_loss": float(result.training_loss)}
        for rows, ref, prefix in ((train, ref_train, "dpo/train_"), (held_out, ref_eval, "dpo/eval_")):
            metrics.update(implicit_reward_metrics(answer_logps(model, rows, pad_id, score_batch), ref, config.beta, prefix))
        model.save_pretrained(str(output_dir))
        tokenizer.save_pretrained(str(output_dir))
    metrics.update({
        "dpo/train_pairs": len(train),
        "dpo/dropped_pairs": dropped,
        "dpo/eval_pairs": len(held_out),
        "dpo/steps": int(result.global_step),
        "dpo/seconds": time.perf_counter() - start,
    })
    return metrics


def ensure_dpo(recipe, task, tokenizer, dirs, notes: list | None = None, stages: dict | None = None,
               trust_remote_code: bool = False) -> dict:
    """The row's DPO policy at ``dirs.dpo``: reused when its artifact is complete (the key covers the data, the
    SFT artifact, ``[dpo]`` and the seed), else trained from the SFT policy at ``dirs.sft`` (also the frozen
    reference) and published.  Records ``stages["dpo"]`` = ``"trained"`` or ``"cached"``."""
    from rlhfkit.artifacts import publish, read_marker, reusable, staging_dir

    if reusable(dirs.dpo, notes):
        if stages is not None:
            stages["dpo"] = "cached"
        return read_marker(dirs.dpo)["metrics"]
    from transformers import AutoModelForCausalLM

    from rlhfkit.stages.sft import quiet_progress

    with quiet_progress():  # no "Loading weights" bars in the stage log
        model = AutoModelForCausalLM.from_pretrained(str(dirs.sft), trust_remote_code=trust_remote_code)
        ref_model = AutoModelForCausalLM.from_pretrained(str(dirs.sft), trust_remote_code=trust_remote_code)
    tmp = staging_dir(dirs.dpo)
    metrics = train_dpo(model, ref_model, tokenizer, task, recipe.dpo, tmp)
    publish(tmp, dirs.dpo, {"kind": "dpo", "source": str(dirs.sft), "metrics": metrics})
    if stages is not None:
        stages["dpo"] = "trained"
    return metrics
