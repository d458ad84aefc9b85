"""The built-in reward functions' scorers: ``fn(prompts, completions, metadata, task) -> list[float]``."""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
"""A number as the exact-match parser reads it: an optional minus sign, digits, optionally a decimal part."""


def first_number(text: str) -> float | None:
    """The first number in ``text`` (see :data:`NUMBER`), or None when there is none.

    Parsing: the first match of ``-?\\d+(?:\\.\\d+)?`` anywhere in the text, as a float; whatever precedes or
    follows it is ignored ("= 12 apples" -> 12, "12.0" -> 12, "12.5" -> 12.5, "1 2" -> 1, "-3" -> -3,
    "twelve" -> None).  Words between tokens do not join numbers ("1 2" is 1, not 12)."""
    match = NUMBER.search(text)
    return float(match.group()) if match else None


def exact_match(completion: str, answer) -> float:
    """1.0 if the first number of ``completion`` equals ``answer`` (as numbers), else 0.0."""
    value = first_number(completion)
    return 1.0 if value is not None and value == float(answer) else 0.0


def arith_exact(prompts, completions, metadata, task) -> list[float]:
    """Exact match of the first number in each completion against its prompt's ``metadata["answer"]``."""
    return [exact_match(c, m["answer"]) for c, m in zip(completions, metadata)]


def gold(prompts, completions, metadata, task) -> list[float]:
    """The task's gold reward (``task.gold_reward``), as its evaluation reports it (``eval/gold``)."""
    return [float(v) for v in task.gold_reward(list(prompts), list(completions))]
