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
    Malformed,
    PreferenceOptions,
    build_preference_task,
    collect_pairs,
    read_json_lines,
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
        raise Malformed("not_json" if row is None else "missing_keys")
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise Malformed("missing_keys")
    return split_hh(chosen, rejected)


def load_pairs(options: HHRLHFOptions) -> tuple[list[dict], dict]:
    path = resolve_data_path(options.path, "data.path")
    not_json: Counter = Counter()
    pairs, stats = collect_pairs(read_json_lines(path, not_json), options, hh_row)
    stats["source"] = str(options.path)
    return pairs, stats


def build(options: HHRLHFOptions, seed: int) -> PreferenceTask:
    pairs, stats = load_pairs(options)
    return build_preference_task("hh_rlhf", pairs, stats, options, seed)
