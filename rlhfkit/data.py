"""The data a recipe trains on, whatever its source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

GoldReward = Callable[[Sequence[str], Sequence[str]], list[float]]


@dataclass
class PreferenceTask:
    """Everything the three RLHF stages read, in plain text.

    Completions never repeat the prompt: a chosen answer is ``prompt + chosen``.
    """

    name: str
    sft: list[dict]
    """Demonstrations ``{"prompt", "completion"}`` for the SFT stage."""
    pairs: list[dict]
    """Training preference pairs ``{"prompt", "chosen", "rejected"}`` for the reward model."""
    eval_pairs: list[dict]
    """Held-out pairs: the reward model's pairwise accuracy is measured on these."""
    rl_prompts: list[str]
    """Prompts the RL stage samples from."""
    eval_prompts: list[str]
    """Held-out prompts: SFT and final policies are evaluated on these (gold reward, score, KL)."""
    gold_reward: GoldReward | None = None
    """The true reward of (prompt, completion) pairs, when the task knows it (synthetic tasks)."""
    tokenizer_kind: str = "bpe"
    """Tokenizer trained for tiny models: ``"word"`` (whitespace words) or ``"bpe"`` (byte-level BPE)."""
    tokenizer_vocab_size: int = 4096
    stats: dict = field(default_factory=dict)
    """Counts worth reporting: rows read, rows dropped and why."""
    prompt_metadata: dict = field(default_factory=dict)
    """Per-prompt data for reward functions, keyed by the prompt text as it appears in ``rl_prompts`` and
    ``eval_prompts`` (e.g. ``{"7 + 5 =": {"answer": 12}}``); empty when the task has none."""

    def tokenizer_corpus(self) -> list[str]:
        texts = [row["prompt"] + row["completion"] for row in self.sft]
        texts += [row["prompt"] + row["chosen"] for row in self.pairs]
        texts += [row["prompt"] + row["rejected"] for row in self.pairs]
        texts += list(self.rl_prompts)
        return texts
