"""Stage artifacts (tokenizer, SFT policy, reward model), cached by a hash of what each depends on.

Keys are computed in the runner without torch; the stage process builds whatever is missing.  Each artifact
is written into a temporary sibling directory and renamed into place, so a half-written artifact never
looks finished.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.recipe import ModelEntry, Recipe, fingerprint

DONE_MARKER = "rlhfkit_artifact.json"


@dataclass(frozen=True)
class StageArtifacts:
    """Where the stages of one ``[[models]]`` row live."""

    tokenizer: Path
    sft: Path
    reward_model: Path

    def as_dict(self) -> dict:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}


def artifact_dirs(recipe: Recipe, entry: ModelEntry, root: Path) -> StageArtifacts:
    data = {
        "data": recipe.stage_fingerprint()["data"],
        "data_seed": recipe.run.data_seed,
    }
    # A preset policy gets a tokenizer trained on the data; a checkpoint brings its own.
    tokenizer_key = fingerprint({**data, "tokenizer_from": entry.policy})
    sft_key = fingerprint({**data, "tokenizer": tokenizer_key, "policy": entry.policy, "sft": dataclasses.asdict(recipe.sft)})
    rm_key = fingerprint(
        {**data, "tokenizer": tokenizer_key, "reward": entry.reward, "reward_model": dataclasses.asdict(recipe.reward_model)}
    )
    return StageArtifacts(
        tokenizer=root / f"tokenizer-{tokenizer_key}",
        sft=root / f"sft-{sft_key}",
        reward_model=root / f"reward-{rm_key}",
    )


def is_complete(path: Path) -> bool:
    return (path / DONE_MARKER).is_file()


def staging_dir(final: Path) -> Path:
    """A fresh temporary directory beside ``final`` (removed first if a crashed run left it)."""
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished artifact into place."""
    if final.exists():  # another process finished it first; keep theirs
        shutil.rmtree(tmp)
        return
    os.replace(tmp, final)
