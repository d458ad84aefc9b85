"""Ready models a ``[[models]]`` row brings: ``train_sft = false`` (the policy is an SFT checkpoint) and
``train_reward = false`` (the reward model is a trained one-label sequence classifier), and reward models with
their own tokenizer.

No torch and no transformers here: the checks read ``config.json`` and the file listing, so ``rlhfkit validate``
and ``rlhfkit run`` refuse a bad checkpoint in one line before any stage runs (called from
:func:`rlhfkit.recipe.check_trainable`), and the runner can compute artifact keys.

Which tokenizer the reward model reads is decided here, statically (the planner and the cell must agree):

- a preset reward model, or a reward checkpoint that is the policy's own checkpoint, is built on the policy's
  tokenizer (the tokenizer stage's);
- any other reward checkpoint (given, or trained by rlhfkit from a checkpoint of another family) keeps its
  own tokenizer; whether that tokenizer is really different is decided by comparing vocabularies
  (:mod:`rlhfkit.engine.reward_tokens`), not names.
- Architecture-only references (``family:known-checkpoint``) are planning-only and are planned as before:
  one tokenizer for both models.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlhfkit.rewards import has_reward_model

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""Any one of these makes a directory a checkpoint with weights (sharded checkpoints have the index)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
"""Any one of these holds a tokenizer's vocabulary (``tokenizer_config.json`` alone does not)."""
_CLASSIFIER = re.compile(r"ForSequenceClassification$")
_CAUSAL_LM = re.compile(r"For(CausalLM|ConditionalGeneration)$")


def checkpoint_dir(text: str, trust_remote_code: bool = False) -> Path | None:
    """The local directory of a model reference (``./ckpt`` or ``family:./ckpt``), or None (preset, known
    checkpoint, hub id)."""
    from rlhfkit.models import parse_model_spec

    spec = parse_model_spec(text, trust_remote_code)
    if spec.checkpoint is None:
        return None
    path = Path(spec.checkpoint).expanduser()
    return path if path.is_dir() else None


def is_checkpoint(text: str, trust_remote_code: bool = False) -> bool:
    """A checkpoint (local directory or hub id), not a preset or an architecture-only reference."""
    from rlhfkit.models import parse_model_spec

    return parse_model_spec(text, trust_remote_code).checkpoint is not None


def reward_has_own_tokenizer(entry) -> bool:
    """Whether the row's reward model keeps its own tokenizer (see the module docstring)."""
    if not has_reward_model(entry) or not is_checkpoint(entry.reward, entry.trust_remote_code):
        return False
    return entry.reward != entry.policy or not entry.train_reward


def content_fingerprint(path: Path) -> dict:
    """What an artifact built from a given checkpoint depends on: its resolved path and the size and
    modification time of every file in it (cheap, no hashing of GBs of weights; a rewritten or replaced file
    changes its mtime, so a changed checkpoint gets a new artifact key)."""
    path = Path(path).expanduser().resolve()
    files = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        files[file.relative_to(path).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return {"path": str(path), "files": files}


def _config(path: Path) -> dict:
    from rlhfkit.modelspec import read_checkpoint_config

    return read_checkpoint_config(str(path))


def num_labels(config: dict) -> int:
    """Labels of a classifier config as transformers reads them (``id2label``, else ``num_labels``, else 2)."""
    if isinstance(config.get("id2label"), dict) and config["id2label"]:
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


def _check_files(path: Path, where: str, text: str, needs: str) -> None:
    names = {p.name for p in path.iterdir()}
    if not names & set(WEIGHT_FILES):
        raise ValueError(f"{where}: checkpoint {text!r} has no weights (none of {', '.join(WEIGHT_FILES)}); {needs}")
    if not names & set(TOKENIZER_FILES):
        raise ValueError(f"{where}: checkpoint {text!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                         f"{needs} with its own tokenizer (tokenizer.save_pretrained into the same directory)")


def check_row(entry, where: str) -> None:
    """One line (``ValueError``) when a row's local checkpoints cannot be used as the row says.

    - a policy checkpoint needs weights and a tokenizer (SFT trains from it, or it is the SFT policy);
      with ``train_sft = false`` it must be a causal LM;
    - a reward checkpoint with its own tokenizer needs weights and a tokenizer; with ``train_reward = false``
      it must be a ``...ForSequenceClassification`` with exactly one label (a scalar reward).
    """
    policy = checkpoint_dir(entry.policy, entry.trust_remote_code)
    if policy is not None:
        needs = "train_sft = false needs an SFT checkpoint" if not entry.train_sft else "SFT trains from a checkpoint"
        _check_files(policy, f"{where}.policy", entry.policy, needs)
        archs = _config(policy).get("architectures") or []
        if not entry.train_sft and archs and not any(_CAUSAL_LM.search(a) for a in archs):
            raise ValueError(f"{where}.policy: checkpoint {entry.policy!r} is a {archs[0]}, not a causal LM; "
                             "train_sft = false needs a ...ForCausalLM checkpoint")
    if not reward_has_own_tokenizer(entry):
        return
    reward = checkpoint_dir(entry.reward, entry.trust_remote_code)
    if reward is None:
        return
    needs = ("train_reward = false needs a trained reward model" if not entry.train_reward
             else "a reward model trained from a checkpoint of its own")
    _check_files(reward, f"{where}.reward", entry.reward, needs)
    if entry.train_reward:
        return
    config = _config(reward)
    archs = config.get("architectures") or []
    if not any(_CLASSIFIER.search(a) for a in archs):
        shown = archs[0] if archs else "checkpoint without 'architectures'"
        raise ValueError(f"{where}.reward: checkpoint {entry.reward!r} is a {shown}, not a ...ForSequenceClassification; "
                         "train_reward = false needs a trained reward model (one label); set train_reward = true to "
                         "train one from it")
    labels = num_labels(config)
    if labels != 1:
        raise ValueError(f"{where}.reward: checkpoint {entry.reward!r} has {labels} labels (num_labels = {labels}); "
                         "train_reward = false needs a reward model with num_labels = 1 (one scalar score); set "
                         "train_reward = true to train one from it")


__all__ = ["WEIGHT_FILES", "TOKENIZER_FILES", "checkpoint_dir", "is_checkpoint", "has_reward_model", "reward_has_own_tokenizer",
           "content_fingerprint", "num_labels", "check_row"]
