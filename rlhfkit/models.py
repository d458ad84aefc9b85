"""Model specs (``family:preset`` or a checkpoint) and building models from them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.plugins import get_plugin_manager, get_registry


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: a tiny preset of a family, or a checkpoint (local path or hub id)."""

    family: str
    preset: str | None = None
    checkpoint: str | None = None
    trust_remote_code: bool = False

    @property
    def is_preset(self) -> bool:
        return self.preset is not None

    def label(self) -> str:
        return f"{self.family}:{self.preset}" if self.preset else str(self.checkpoint)


def _read_checkpoint_config(checkpoint: str) -> dict:
    path = Path(checkpoint).expanduser()
    config_file = path / "config.json"
    if path.is_dir():
        if not config_file.is_file():
            raise ValueError(f"checkpoint directory {checkpoint!r} has no config.json")
        return json.loads(config_file.read_text())
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not looks_like_hub_id(checkpoint):
        raise ValueError(
            f"model {checkpoint!r} is neither 'family:preset' nor an existing checkpoint directory"
        )
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(checkpoint).to_dict()


def looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def parse_model_spec(text: str, trust_remote_code: bool = False) -> ModelSpec:
    """``"llama:tiny"`` -> preset; anything else is a checkpoint whose family is detected by plugins."""
    registry = get_registry()
    family, sep, preset = text.partition(":")
    if sep and family in registry.entries["model_adapter"]:
        adapter = registry.get("model_adapter", family)
        if preset not in adapter.presets:
            raise ValueError(
                f"model {text!r}: family {family!r} has no preset {preset!r}; "
                f"allowed: {', '.join(sorted(adapter.presets))}"
            )
        return ModelSpec(family=family, preset=preset)
    if sep and not Path(text).exists() and "/" not in text:
        raise ValueError(
            f"model {text!r}: unknown model family {family!r}; allowed: {', '.join(registry.names('model_adapter'))}"
        )
    config = _read_checkpoint_config(text)
    detected = get_plugin_manager().hook.detect_model_family(model_config=config)
    if detected is None:
        raise ValueError(
            f"model {text!r}: model_type {config.get('model_type')!r} is not claimed by any model family; "
            f"known families: {', '.join(registry.names('model_adapter'))}"
        )
    return ModelSpec(family=detected, checkpoint=text, trust_remote_code=trust_remote_code)


def adapter_for(spec: ModelSpec):
    return get_registry().get("model_adapter", spec.family)


def _token_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_causal_lm(spec: ModelSpec, tokenizer, **load_kwargs):
    """A causal LM: a randomly initialised tiny preset, or a checkpoint."""
    adapter = adapter_for(spec)
    if spec.is_preset:
        return adapter.causal_lm_from_config(adapter.preset_config(spec.preset, **_token_ids(tokenizer)))
    from rlhfkit.registry import resolve

    model = resolve(adapter.causal_lm_class).from_pretrained(
        spec.checkpoint, trust_remote_code=spec.trust_remote_code, **load_kwargs
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build_sequence_classifier(spec: ModelSpec, tokenizer, **load_kwargs):
    """A one-output sequence classifier (reward or value model) for ``spec``."""
    adapter = adapter_for(spec)
    if spec.is_preset:
        config = adapter.preset_config(spec.preset, **_token_ids(tokenizer))
        return adapter.sequence_classifier_from_config(config)
    from rlhfkit.registry import resolve

    model = resolve(adapter.sequence_classification_class).from_pretrained(
        spec.checkpoint, num_labels=1, trust_remote_code=spec.trust_remote_code, **load_kwargs
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
