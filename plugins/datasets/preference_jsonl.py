"""Generic preference files: JSONL (optionally gzipped), JSON or Parquet with prompt/chosen/rejected.

Accepted row formats (TRL's names):

- standard, explicit prompt: ``{"prompt": str, "chosen": str, "rejected": str}``;
- standard, implicit prompt: ``{"chosen": str, "rejected": str}`` (HH-style transcripts are split at the last
  assistant turn, other texts at their common prefix);
- conversational, explicit prompt: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``;
- conversational, implicit prompt: ``{"chosen": [messages], "rejected": [messages]}``.

Conversations are rendered as text (``chat_format``) so tiny models with a locally trained tokenizer can use
them; a policy whose tokenizer has a chat template gets them through the template (``[data] chat_template``,
rlhfkit/chat.py).  No gold reward.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rlhfkit.data import PreferenceTask
from rlhfkit_plugins.datasets.preference import (
    MIN_PAIRS,
    ColumnOptions,
    build_preference_task,
    collect_pairs,
    read_records,
    refuse_too_few,
    resolve_data_path,
)


@dataclass
class PreferenceFileOptions(ColumnOptions):
    """Options of the ``preference_jsonl`` data set (the recipe's ``[data]`` table)."""

    path: str = ""
    """A ``.jsonl``, ``.jsonl.gz``, ``.json`` or ``.parquet`` file; relative paths resolve against the
    current directory."""

    def __post_init__(self):
        super().__post_init__()
        if not self.path:
            raise ValueError("path is required (a .jsonl, .jsonl.gz, .json or .parquet file)")
        resolve_data_path(self.path, "path")


def load_pairs(options: PreferenceFileOptions, limit: int = 0) -> tuple[list[dict], dict]:
    path = resolve_data_path(options.path, "data.path")
    to_triple = options.row_normaliser()
    return collect_pairs(read_records(path, Counter()), options, to_triple, source=str(options.path), limit=limit)


def check(options: PreferenceFileOptions) -> dict:
    """Open the file and read until ``MIN_PAIRS`` usable pairs are found (a few rows of a good file); a
    one-line ``ValueError`` naming the file and the reasons counted when it has fewer."""
    pairs, stats = load_pairs(options, limit=MIN_PAIRS)
    refuse_too_few("preference_jsonl", pairs, stats)
    return stats


def build(options: PreferenceFileOptions, seed: int) -> PreferenceTask:
    pairs, stats = load_pairs(options)
    return build_preference_task("preference_jsonl", pairs, stats, options, seed)
