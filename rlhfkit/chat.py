"""Chat templates: the prompts of a task formatted with the policy tokenizer's chat template.

``[data] chat_template = "auto"`` (the default) formats every prompt the stages and cells read (SFT
demonstrations, preference pairs, RL and evaluation prompts) with ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True)`` when the tokenizer has a template; ``"off"`` keeps the data's own text.  Tiny
presets train their tokenizer locally and have no template, so their tasks are never changed.

The data sets give plain text (a conversation is rendered by ``chat_format``, HH style by default).  The messages
of a prompt are read back from that text: an HH transcript (``"\\n\\nHuman: ...\\n\\nAssistant:"``, as hh-rlhf
files and conversational rows with ``chat_format = "hh"`` are) or a plain one (``"user: ...\\nassistant:"``, as
``chat_format = "plain"`` renders) is split into its turns; any other prompt is one user message.  The answers
(SFT completions, chosen, rejected) lose the one space that follows ``"Assistant:"`` in the data's text; they end
with the tokenizer's EOS as before (the rollout stops there).  The gold reward, where a task has one, still sees
the data's own prompt.  Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

CHAT_TEMPLATE_MODES = ("auto", "off")
_HH_TURN = re.compile(r"\n\n(Human|Assistant|System):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant", "System": "system"}
_PLAIN_TURN = re.compile(r"(?:^|\n)(system|user|assistant):")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _hh_messages(prompt: str) -> list[dict] | None:
    text = "\n\n" + prompt.lstrip("\n") if prompt.startswith(("Human:", "System:", "\n")) else prompt
    parts = _HH_TURN.split(text)
    # ['', 'Human', ' hi', 'Assistant', ' hello', ..., 'Assistant', ''] for a prompt ending with an open turn
    if len(parts) < 3 or parts[-2] != "Assistant" or parts[-1].strip():
        return None
    turns = zip(parts[1:-2:2], parts[2:-2:2])
    messages = [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in turns]
    if parts[0].strip():
        # a prompt cut to max_prompt_chars ("truncate") starts inside a turn: the other speaker's than the next
        messages.insert(0, {"role": "assistant" if parts[1] == "Human" else "user", "content": parts[0].strip()})
    return messages or None


def _plain_messages(prompt: str) -> list[dict] | None:
    parts = _PLAIN_TURN.split(prompt)
    if len(parts) < 5 or parts[0].strip() or parts[-2] != "assistant" or parts[-1].strip():
        return None
    return [{"role": role, "content": content.strip()} for role, content in zip(parts[1:-2:2], parts[2:-2:2])]


def prompt_messages(prompt: str) -> list[dict]:
    """The conversation a prompt's text stands for: HH or plain turns, else one user message."""
    return _hh_messages(prompt) or _plain_messages(prompt) or [{"role": "user", "content": prompt.strip()}]


def format_prompt(tokenizer, prompt: str) -> str:
    """``prompt`` through the tokenizer's chat template, ending with the generation prompt (an open assistant
    turn).  A template that refuses the conversation (e.g. one that needs a user turn first) is a one-line
    ``ValueError`` naming the setting that turns templates off."""
    messages = prompt_messages(prompt)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja's TemplateError and whatever a template raises
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"data.chat_template: the tokenizer's chat template refused the prompt {prompt[:60]!r} "
            f"({len(messages)} message(s)): {first}; set [data] chat_template = \"off\" to use the data's own text"
        ) from None


def _answer(text: str) -> str:
    """An answer as a chat turn's content: without the one space that followed ``"Assistant:"``."""
    return text[1:] if text.startswith(" ") else text


class OriginalPromptGold:
    """A task's gold reward called with the data's own prompts (picklable: cells pickle nothing, but tests
    and executors may)."""

    def __init__(self, gold, originals: dict[str, str]):
        self.gold, self.originals = gold, originals

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return self.gold([self.originals.get(p, p) for p in prompts], completions)


def chat_task(task, tokenizer, mode: str = "auto"):
    """``task`` with its prompts formatted by the tokenizer's chat template (a new task), or ``task`` itself when
    ``mode`` is ``"off"`` or the tokenizer has no template (the numbers of such runs do not change)."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"data.chat_template: {mode!r} is not allowed; allowed: {', '.join(CHAT_TEMPLATE_MODES)}")
    if mode == "off" or not has_chat_template(tokenizer):
        return task
    cache: dict[str, str] = {}

    def fmt(prompt: str) -> str:
        if prompt not in cache:
            cache[prompt] = format_prompt(tokenizer, prompt)
        return cache[prompt]

    sft = [{**r, "prompt": fmt(r["prompt"]), "completion": _answer(r["completion"])} for r in task.sft]

    def pairs(rows):
        return [{**p, "prompt": fmt(p["prompt"]), "chosen": _answer(p["chosen"]), "rejected": _answer(p["rejected"])}
                for p in rows]

    formatted = dataclasses.replace(
        task, sft=sft, pairs=pairs(task.pairs), eval_pairs=pairs(task.eval_pairs),
        rl_prompts=[fmt(p) for p in task.rl_prompts], eval_prompts=[fmt(p) for p in task.eval_prompts],
        stats={**task.stats, "chat_template": "applied"},
    )
    if task.gold_reward is not None:
        formatted.gold_reward = OriginalPromptGold(task.gold_reward, {v: k for k, v in cache.items()})
    return formatted
