"""A preference data set from the Hugging Face hub, through ``datasets`` (only when online).

With ``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1`` the recipe is refused at validation, in one line: no
download is attempted.  Rows are read like ``preference_jsonl`` rows (standard or conversational, explicit
or implicit prompt; HH-RLHF transcripts are split at the last assistant turn).  No gold reward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rlhfkit.data import PreferenceTask
from rlhfkit_plugins.datasets.preference import (
    ColumnOptions,
    build_preference_task,
    collect_pairs,
)


def hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


@dataclass
class HubOptions(ColumnOptions):
    """Options of the ``hub`` data set (the recipe's ``[data]`` table)."""

    dataset: str = ""
    """Hub data set id, e.g. ``"Anthropic/hh-rlhf"`` or ``"trl-lib/ultrafeedback_binarized"``."""
    config: str = ""
    """Data set configuration (subset) name; empty for the default."""
    data_dir: str = ""
    """Sub-directory of the data set repository (``"harmless-base"`` for Anthropic/hh-rlhf); empty for all."""
    split: str = "train"
    """Split to read; held-out pairs are carved from it with ``eval_fraction``."""
    revision: str = ""
    """Git revision of the data set repository; empty for the default branch."""

    def __post_init__(self):
        super().__post_init__()
        if not self.dataset:
            raise ValueError("dataset is required (a hub data set id such as 'Anthropic/hh-rlhf')")
        if hub_offline():
            raise ValueError(
                f"dataset {self.dataset!r} is a hub data set but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set: hub "
                f"data sets load only when online; use preference_jsonl or hh_rlhf with a local file"
            )


def build(options: HubOptions, seed: int) -> PreferenceTask:
    if hub_offline():
        raise ValueError(f"dataset {options.dataset!r}: hub data sets load only when online (HF_HUB_OFFLINE is set)")
    import datasets

    kwargs = {"split": options.split}
    if options.config:
        kwargs["name"] = options.config
    if options.data_dir:
        kwargs["data_dir"] = options.data_dir
    if options.revision:
        kwargs["revision"] = options.revision
    try:
        data = datasets.load_dataset(options.dataset, **kwargs)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"dataset {options.dataset!r}: could not load from the hub: {first}") from None
    if options.max_pairs:
        # read a margin beyond max_pairs so dropped rows do not starve the task
        data = data.shuffle(seed=seed).select(range(min(len(data), options.max_pairs * 2)))
    to_triple = options.row_normaliser()
    pairs, stats = collect_pairs(iter(data), options, to_triple, source=f"hub:{options.dataset}")
    return build_preference_task("hub", pairs, stats, options, seed)
