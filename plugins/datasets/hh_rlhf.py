"""Anthropic HH-RLHF (``helpful-base``, ``harmless-base``... ``train.jsonl.gz``/``test.jsonl.gz``).

Each line is ``{"chosen": transcript, "rejected": transcript}``; the transcripts share the conversation up to
the last ``"\\n\\nAssistant:"``, which becomes the prompt; what follows is the chosen/rejected answer.  The SFT
stage trains on the chosen answers.  No gold reward.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rlhfkit.data import PreferenceTask
from rlhfkit_plugins.datasets.preference import (
    MIN_PAIRS,
    Malformed,
    PreferenceOptions,
    build_preference_task,
    collect_pairs,
    read_json_lines,
    refuse_too_few,
    resolve_data_path,
    split_hh,
)


@dataclass
class HHRLHFOptions(PreferenceOptions):
    """Options of the ``hh_rlhf`` data set (the recipe's ``[data]`` table)."""

    path: str = ""
    """An HH-RLHF ``.jsonl`` or ``.jsonl.gz`` file; relative paths resolve against the current directory
    (e.g. ``"../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"`` from the repository root)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.path:
            raise ValueError("path is required (an HH-RLHF .jsonl or .jsonl.gz file)")
        resolve_data_path(self.path, "path")


def hh_row(row) -> tuple[str, str, str]:
    if not isinstance(row, dict):
        raise Malformed("not_json" if row is None else "not_object")
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if chosen is None or rejected is None:
        raise Malformed("missing_keys")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise Malformed("wrong_type")
    return split_hh(chosen, rejected)


def load_pairs(options: HHRLHFOptions, limit: int = 0) -> tuple[list[dict], dict]:
    path = resolve_data_path(options.path, "data.path")
    not_json: Counter = Counter()
    return collect_pairs(read_json_lines(path, not_json), options, hh_row, source=str(options.path), limit=limit)


def check(options: HHRLHFOptions) -> dict:
    """Open the file and read until ``MIN_PAIRS`` usable pairs are found (a few rows of a good file); a
    one-line ``ValueError`` naming the file and the reasons counted when it has fewer."""
    pairs, stats = load_pairs(options, limit=MIN_PAIRS)
    refuse_too_few("hh_rlhf", pairs, stats)
    return stats


def build(options: HHRLHFOptions, seed: int) -> PreferenceTask:
    pairs, stats = load_pairs(options)
    return build_preference_task("hh_rlhf", pairs, stats, options, seed)
