"""Plain data of model references: :class:`ModelSpec` and reading a checkpoint's ``config.json``.

Nothing here needs the plugin registry (and nothing from rlhfkit is imported), so the registry's model adapters
and the memory planner can use it without the import cycle models -> plugins -> registry -> models; parsing a
recipe's model reference into a spec needs the registry and stays in :mod:`rlhfkit.models`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: a tiny preset of a family, a checkpoint, or a known-checkpoint reference."""

    family: str
    preset: str | None = None
    checkpoint: str | None = None
    trust_remote_code: bool = False
    reference: str | None = None
    """Name of a well-known checkpoint of the family (``adapter.known_checkpoints``): architecture only."""

    @property
    def is_preset(self) -> bool:
        return self.preset is not None

    @property
    def is_reference(self) -> bool:
        return self.reference is not None

    def label(self) -> str:
        if self.preset:
            return f"{self.family}:{self.preset}"
        if self.reference:
            return f"{self.family}:{self.reference}"
        return str(self.checkpoint)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def read_checkpoint_config(checkpoint: str) -> dict:
    """The ``config.json`` of a local checkpoint directory (or of a hub id, when online) as a dict."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"checkpoint directory {checkpoint!r} has no config.json")
        try:
            return json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"checkpoint {checkpoint!r}: config.json is not valid JSON ({exc})") from None
    if path.exists():
        raise ValueError(f"model {checkpoint!r} is a file, not a checkpoint directory")
    if not looks_like_hub_id(checkpoint):
        raise ValueError(
            f"model {checkpoint!r} is neither 'family:preset' nor an existing checkpoint directory "
            f"(relative paths resolve against {os.getcwd()})"
        )
    if hub_offline():
        raise ValueError(
            f"model {checkpoint!r} is not a local directory and looks like a hub id, but HF_HUB_OFFLINE=1: "
            f"hub ids load only when online; give a local checkpoint directory"
        )
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(checkpoint)
    except Exception as exc:  # network errors, missing repos, gated repos: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model {checkpoint!r}: could not read its config from the hub: {first}") from None
    return config
