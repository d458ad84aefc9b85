"""A reward model with its own tokenizer: the policy's completion is decoded and re-encoded for it.

When the reward model's tokenizer differs from the policy's (compared by vocabulary, token -> id, not by name),
the policy's token ids mean nothing to it (a Llama reward model fed Qwen2 ids reads other words, or indexes past
its embedding).  So before scoring, each completion is decoded with the policy's tokenizer (special tokens
skipped, as the rollout's ``completions`` are) and the text ``prompt + completion`` is encoded with the reward
model's tokenizer:

- as the reward stage trains and :func:`rlhfkit.stages.reward.score_texts` scores: ``prompt + completion +
  eos`` (EOS appended when the policy's completion ended with its EOS), no other special tokens, read at the
  last token; the score of a text inside the cell is the score computed directly with the reward model's own
  tokenizer;
- a given reward model (``train_reward = false``) whose tokenizer has a chat template is scored on that
  template instead: the prompt's turns plus ``assistant: completion`` rendered by ``apply_chat_template`` (how
  such models are trained elsewhere; :func:`rlhfkit.chat.conversation`: the data's own prompt, not the policy's
  template text, read back as HH/plain turns, else one user turn).  A reward model trained by rlhfkit is trained on plain text, so it is scored
  on plain text whatever its tokenizer ships.

With the policy's tokenizer (or one with the same vocabulary) nothing is re-encoded: the rollout's own ids are
read, as before.  The ledger counts the reward model's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers map the same strings to the same ids (added tokens included)."""
    return a is b or a.get_vocab() == b.get_vocab()


@dataclass
class RewardTokenizer:
    """The reward model's own tokenizer, and how a (prompt, completion) becomes its input."""

    tokenizer: Any
    chat_template: bool = False
    """Render ``[user: prompt, assistant: completion]`` with the tokenizer's chat template (given reward models
    that ship one), else ``prompt + completion + eos``."""

    @property
    def pad_id(self) -> int:
        """Filler of left padding.  Masked positions are never read, so a reward model without a pad token
        gets its EOS (or 0) there and keeps its embedding matrix as it is."""
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id):
            if candidate is not None:
                return candidate
        return 0

    def texts(self, prompts: list[str], completions: list[str], ended: list[bool]) -> list[str]:
        from rlhfkit.stages.sft import with_eos

        tok = self.tokenizer
        if self.chat_template:
            from rlhfkit.chat import conversation

            return [self._render(conversation(p, c)) for p, c in zip(prompts, completions)]
        eos = tok.eos_token
        return [p + (with_eos(c, eos) if end and eos else c) for p, c, end in zip(prompts, completions, ended)]

    def _render(self, messages: list[dict]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as exc:  # jinja's TemplateError and whatever a template raises
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"reward model: its tokenizer's chat template refused a conversation of "
                             f"{len(messages)} message(s) (roles {[m['role'] for m in messages]}): {first}") from None

    def encode(self, prompts, completions, ended, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(input_ids, attention_mask)`` of the reward model's own tokens."""
        ids = self.tokenizer(self.texts(prompts, completions, ended), add_special_tokens=False)["input_ids"]
        width = max(1, max(len(row) for row in ids))
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for j, row in enumerate(ids):
            if row:
                input_ids[j, width - len(row):] = torch.tensor(row, dtype=torch.long)
                mask[j, width - len(row):] = 1
        return input_ids.to(device), mask.to(device)


def load_reward_tokenizer(dirs, policy_tokenizer, given: bool) -> RewardTokenizer | None:
    """The cell's :class:`RewardTokenizer`, or None when the reward model reads the policy's ids (it was built on
    the policy's tokenizer, or its own has the same vocabulary)."""
    path = getattr(dirs, "reward_tokenizer", None)
    if path is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if same_vocabulary(policy_tokenizer, tokenizer):
        return None
    tokenizer.padding_side = "left"
    return RewardTokenizer(tokenizer, chat_template=bool(given and getattr(tokenizer, "chat_template", None)))


def reward_model_scores(ctx, prompts, completions, contains_eos, input_ids, attention_mask, index,
                        padding_free: str = "off"):
    """The reward model's raw scores of a rollout batch and the tokens it read (for the ledger).

    Without a :class:`RewardTokenizer` on ``ctx`` (``ctx.reward_tokenizer``) the rollout's ids are read at
    ``index`` (the last real token): the same forward as always.  With one, ``completions`` (the rollout's
    decoded texts, special tokens skipped) are re-encoded first (module docstring).  ``padding_free``: as in ``rollout.score_at`` (issue 17).
    """
    from rlhfkit.engine.rollout import score_at

    reader = getattr(ctx, "reward_tokenizer", None)
    if reader is None:
        return score_at(ctx.reward_model, input_ids, attention_mask, index, padding_free), int(attention_mask.sum())
    ids, mask = reader.encode(list(prompts), completions, contains_eos.tolist(), input_ids.device)
    last = torch.full((ids.size(0),), ids.size(1) - 1, dtype=torch.long, device=ids.device)
    return score_at(ctx.reward_model, ids, mask, last, padding_free), int(mask.sum())


__all__ = ["RewardTokenizer", "same_vocabulary", "load_reward_tokenizer", "reward_model_scores"]
