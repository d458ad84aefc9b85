"""Stage artifacts (tokenizer, SFT policy, reward model), cached by a hash of what each depends on.

Keys are computed in the runner without torch; the stage process builds whatever is missing.  Each artifact
is written into a temporary sibling directory (``<name>.tmp-<pid>``) and renamed into place, so a half-written
artifact never looks finished.  The done marker records every file's size and sha256 when the artifact is
published; a reused artifact is checked against it (sizes always, hashes of files up to ``HASH_LIMIT_BYTES``),
and a damaged one (a truncated ``model.safetensors``, a deleted file) is moved aside, removed and rebuilt with
a one-line note.  A temporary or moved-aside directory whose process is dead is removed on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.recipe import ModelEntry, Recipe, fingerprint

DONE_MARKER = "rlhfkit_artifact.json"
# Files up to this size are hashed when an artifact is reused (sha256 runs at ~500 MB/s here: <0.15 s per
# file); larger ones (checkpoint shards of GBs) are checked by size only, which catches truncation.
HASH_LIMIT_BYTES = 64 << 20
_SCRATCH = re.compile(r"^(?P<name>.+)\.(?:tmp|damaged)-(?P<pid>\d+)$")


@dataclass(frozen=True)
class StageArtifacts:
    """Where the stages of one ``[[models]]`` row (and data seed) live."""

    tokenizer: Path
    sft: Path
    reward_model: Path
    reward_tokenizer: Path | None = None
    """Where the reward model's own tokenizer is (its artifact directory), or None when it reads the policy's
    tokenizer (``rlhfkit.given.reward_has_own_tokenizer``)."""
    dpo: Path | None = None
    """The DPO stage's policy (rows with ``dpo = true``), else None."""

    @property
    def policy_start(self) -> Path:
        """Where the RL policy (and its reference) start: the DPO policy when the row has one, else the SFT one."""
        return self.dpo or self.sft

    def stage_paths(self) -> list[Path]:
        """Every artifact the row's stages build (a reward tokenizer of its own lives in the reward model's)."""
        return [p for p in (self.tokenizer, self.sft, self.reward_model, self.dpo) if p is not None]

    def as_dict(self) -> dict:
        """Paths as strings; a field that is None (no reward tokenizer of its own, no DPO stage) is left out."""
        return {k: str(v) for k, v in dataclasses.asdict(self).items() if v is not None}


ArtifactDirs = StageArtifacts
"""The name the parallel branches of issue 15 agreed on."""


def stage_threads(recipe: Recipe) -> int:
    """torch threads of the stage process: ``[run] threads_per_cell``, else every CPU core."""
    return recipe.run.threads_per_cell or (os.cpu_count() or 1)


def _threads_key(recipe: Recipe) -> dict:
    """The stages' thread count, for the SFT and reward-model keys: their numbers depend on it (torch splits
    reductions by thread).  Left out at the default (every core of this machine), so keys of existing run
    directories stay valid; setting ``threads_per_cell`` to another count retrains those stages once.  (The
    key cannot see a directory moved to a machine with another core count under the default.)"""
    threads = stage_threads(recipe)
    return {} if threads == (os.cpu_count() or 1) else {"threads": threads}


def _chat_key(recipe: Recipe, entry: ModelEntry) -> dict:
    """``[data] chat_template`` for the stage keys of a checkpoint policy (its tokenizer may have a template, so
    the mode can change the prompts); left out for presets, whose locally trained tokenizers have none, so their
    keys and numbers are those of a recipe without the setting."""
    from rlhfkit.models import parse_model_spec

    if parse_model_spec(entry.policy, entry.trust_remote_code).is_preset:
        return {}
    return {"chat_template": recipe.chat_template}


def artifact_dirs(recipe: Recipe, entry: ModelEntry, root: Path, data_seed: int | None = None) -> StageArtifacts:
    """``data_seed``: the stratum's (a cell's ``data_seed``); None = ``[run] data_seed``, the key of a plain grid."""
    data = {
        "data": recipe.stage_fingerprint()["data"],
        "data_seed": recipe.run.data_seed if data_seed is None else data_seed,
    }
    from rlhfkit.given import checkpoint_dir, content_fingerprint, reward_has_own_tokenizer

    # A preset policy gets a tokenizer trained on the data (no torch arithmetic: no thread count); a
    # checkpoint brings its own.
    given_policy = None
    if not entry.train_sft and (path := checkpoint_dir(entry.policy, entry.trust_remote_code)) is not None:
        given_policy = content_fingerprint(path)  # a changed checkpoint is another artifact
    tokenizer_key = fingerprint({**data, "tokenizer_from": entry.policy,
                                 **({"given": given_policy} if given_policy else {})})
    threads = {**_threads_key(recipe), **_chat_key(recipe, entry)}  # both change what the stages train
    if entry.train_sft:
        sft_key = fingerprint({**data, "tokenizer": tokenizer_key, "policy": entry.policy,
                               "sft": dataclasses.asdict(recipe.sft), **threads})
    else:  # used as is: only the checkpoint and the tokenizer (a pad token may add an embedding row) count
        sft_key = fingerprint({"given_sft": entry.policy, "content": given_policy, "tokenizer": tokenizer_key})
    own_tokenizer = reward_has_own_tokenizer(entry)
    if not entry.train_reward:
        path = checkpoint_dir(entry.reward, entry.trust_remote_code)
        rm_key = fingerprint({"given_reward": entry.reward, "content": content_fingerprint(path) if path else None})
    else:
        # Trained on its own tokenizer (a checkpoint of another family): not the policy's tokenizer's key.
        tokenizer_part = {"reward_tokenizer": "own"} if own_tokenizer else {"tokenizer": tokenizer_key}
        rm_key = fingerprint({**data, **tokenizer_part, "reward": entry.reward,
                              "reward_model": dataclasses.asdict(recipe.reward_model), **threads})
    dpo_key = None
    if entry.dpo:  # after SFT: the SFT key covers the tokenizer, the policy, [sft] and the data
        dpo_key = fingerprint({**data, "sft": sft_key, "dpo": dataclasses.asdict(recipe.dpo), **threads})
    reward_model = root / f"reward-{rm_key}"
    return StageArtifacts(
        tokenizer=root / f"tokenizer-{tokenizer_key}",
        sft=root / f"sft-{sft_key}",
        reward_model=reward_model,
        reward_tokenizer=reward_model if own_tokenizer else None,
        dpo=root / f"dpo-{dpo_key}" if dpo_key else None,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(directory: Path) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``directory`` (the marker excluded)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != DONE_MARKER:
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return files


def read_marker(path: Path) -> dict | None:
    """The done marker of an artifact, or None when there is none (or it is unreadable)."""
    try:
        marker = json.loads((path / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def damage(path: Path, hashes: bool = True) -> str | None:
    """Why the artifact at ``path`` cannot be reused (one phrase), or None when it matches its marker.

    Markers written before files were recorded (no ``"files"`` key) are trusted as before.
    """
    marker = read_marker(path)
    if marker is None:
        return "no readable done marker"
    files = marker.get("files")
    if not isinstance(files, dict):
        return None
    for rel, recorded in files.items():
        file = path / rel
        try:
            size = file.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != recorded.get("size"):
            return f"{rel} has {size} bytes, {recorded.get('size')} recorded"
        if hashes and size <= HASH_LIMIT_BYTES and _sha256(file) != recorded.get("sha256"):
            return f"{rel} does not match its recorded sha256"
    return None


def is_complete(path: Path) -> bool:
    """Published and undamaged (sizes checked, and hashes of files up to ``HASH_LIMIT_BYTES``)."""
    return (path / DONE_MARKER).is_file() and damage(path) is None


def reusable(path: Path, notes: list | None = None) -> bool:
    """Whether the stage can reuse ``path``; a damaged artifact is moved aside and removed, with a one-line
    note on stderr (also appended to ``notes``), so that the caller rebuilds it."""
    if not (path / DONE_MARKER).is_file():
        return False
    reason = damage(path)
    if reason is None:
        return True
    note = f"artifact {path.name} is damaged ({reason}); rebuilding it"
    print(note, file=sys.stderr)
    if notes is not None:
        notes.append(note)
    aside = path.with_name(f"{path.name}.damaged-{os.getpid()}")
    try:
        os.replace(path, aside)  # a reader never sees a half-removed directory under the real name
    except FileNotFoundError:  # another stage process moved it first
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_scratch(root: Path) -> list[Path]:
    """Remove ``*.tmp-PID`` / ``*.damaged-PID`` directories under ``root`` whose process is dead (a killed
    stage leaves its staging directory behind); directories of live processes are left alone."""
    removed = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        match = _SCRATCH.match(entry.name)
        if match and entry.is_dir() and not _pid_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def staging_dir(final: Path) -> Path:
    """A fresh temporary directory beside ``final`` (removed first if a crashed run left it)."""
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, final: Path, info: dict | None = None) -> None:
    """Write the done marker (``info`` plus every file's size and sha256) and move the artifact into place."""
    if info is not None:
        marker = {**info, "files": file_manifest(tmp)}
        (tmp / DONE_MARKER).write_text(json.dumps(marker, indent=1))
    if final.exists():  # another process finished it first; keep theirs
        shutil.rmtree(tmp)
        return
    os.replace(tmp, final)
