"""Model specs (``family:preset``, ``family:known-checkpoint`` or a checkpoint) and building models from them.

The forms a recipe's ``policy``/``reward`` may take:

- ``"qwen2:tiny"``: a tiny preset of a family, random init (then SFT); trains on a CPU;
- ``"./ckpt"`` or ``"/abs/ckpt"``: a local checkpoint directory (relative paths resolve against the current
  directory); its family is detected from ``config.json`` by the ``detect_model_family`` hook;
- ``"deepseek:./ckpt"``: a checkpoint whose family is named explicitly (when detection would pick another
  family, e.g. a Llama-architecture Deepseek checkpoint without the usual hints);
- ``"org/name"``: a hub id, only when online (with ``HF_HUB_OFFLINE=1`` a one-line error);
- ``"deepseek:deepseek-coder-6.7b"``: an architecture-only reference to a well-known checkpoint, whose
  config numbers the family knows (``adapter.known_checkpoints``): ``rlhfkit plan`` sizes it offline, but it
  has no weights and cannot be trained offline (online, it loads from the known hub id).
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.modelspec import ModelSpec, hub_offline, looks_like_hub_id, read_checkpoint_config  # noqa: F401 (public here)
from rlhfkit.plugins import get_plugin_manager, get_registry


# Kept for callers of the old private name.
_read_checkpoint_config = read_checkpoint_config


def _families(registry) -> str:
    return ", ".join(registry.names("model_adapter"))


def parse_model_spec(text: str, trust_remote_code: bool = False) -> ModelSpec:
    """Parse a recipe's model reference (see the module docstring for the forms)."""
    registry = get_registry()
    family, sep, rest = text.partition(":")
    if sep and family in registry.entries["model_adapter"]:
        adapter = registry.get("model_adapter", family)
        if rest in adapter.presets:
            return ModelSpec(family=family, preset=rest)
        if rest in adapter.known_checkpoints:
            return ModelSpec(family=family, reference=rest, trust_remote_code=trust_remote_code)
        if rest and (Path(rest).expanduser().exists() or looks_like_hub_id(rest)):
            config = read_checkpoint_config(rest)
            adapter.check_loadable(config, trust_remote_code, text)
            return ModelSpec(family=family, checkpoint=rest, trust_remote_code=trust_remote_code)
        known = ", ".join(sorted(adapter.known_checkpoints)) or "(none)"
        raise ValueError(
            f"model {text!r}: family {family!r} has no preset {rest!r}; allowed presets: "
            f"{', '.join(sorted(adapter.presets))}; known checkpoints (architecture only): {known}; "
            f"or '{family}:PATH' to a checkpoint directory"
        )
    if sep and not Path(text).expanduser().exists() and "/" not in text:
        raise ValueError(f"model {text!r}: unknown model family {family!r}; allowed: {_families(registry)}")
    config = read_checkpoint_config(text)
    detected = detect_family(config, registry)
    if detected is None:
        raise ValueError(
            f"model {text!r}: model_type {config.get('model_type')!r} is not claimed by any model family; "
            f"known families: {_families(registry)}"
        )
    adapter = registry.get("model_adapter", detected)
    adapter.check_loadable(config, trust_remote_code, text)
    return ModelSpec(family=detected, checkpoint=text, trust_remote_code=trust_remote_code)


def detect_family(config: dict, registry) -> str | None:
    """The family that claims a checkpoint's ``config.json``: a plugin's ``detect_model_family`` hook first (for
    detection beyond ``model_type``), else the first registered adapter whose ``model_types`` (or an explicit
    ``rlhfkit_family`` key) claims it, so that declaring ``model_types`` is enough for a third-party family."""
    detected = get_plugin_manager().hook.detect_model_family(model_config=config)
    if detected is not None:
        return detected
    for name in registry.names("model_adapter"):
        if registry.get("model_adapter", name).claims(config):
            return name
    return None


def adapter_for(spec: ModelSpec):
    return get_registry().get("model_adapter", spec.family)


def model_architecture(text: str, trust_remote_code: bool = False) -> dict:
    """Architecture numbers (``adapter.architecture``) of any model reference a recipe may write."""
    spec = parse_model_spec(text, trust_remote_code)
    arch = adapter_for(spec).architecture(spec)
    arch["family"] = spec.family
    return arch


def _token_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _checkpoint_source(spec: ModelSpec, adapter) -> tuple[str, dict | None]:
    """Where the weights of a checkpoint or reference spec come from, and its config dict."""
    if spec.is_reference:
        hub_id = adapter.checkpoint_hub_ids.get(spec.reference)
        if hub_offline() or not hub_id:
            raise ValueError(
                f"model {spec.label()!r} is an architecture-only reference (for planning): it has no weights "
                f"offline; give a local checkpoint directory to train it"
                + (f" (online it loads {hub_id!r})" if hub_id else "")
            )
        config = adapter.reference_config(spec.reference)
        adapter.check_loadable(config, spec.trust_remote_code, spec.label())
        return hub_id, config
    return spec.checkpoint, read_checkpoint_config(spec.checkpoint)


def build_causal_lm(spec: ModelSpec, tokenizer, **load_kwargs):
    """A causal LM: a randomly initialised tiny preset, or a checkpoint."""
    adapter = adapter_for(spec)
    if spec.is_preset:
        return adapter.causal_lm_from_config(adapter.preset_config(spec.preset, **_token_ids(tokenizer)))
    source, config = _checkpoint_source(spec, adapter)
    model = adapter.load_causal_lm(source, config, trust_remote_code=spec.trust_remote_code, **load_kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build_sequence_classifier(spec: ModelSpec, tokenizer, **load_kwargs):
    """A one-output sequence classifier (reward or value model) for ``spec``."""
    adapter = adapter_for(spec)
    if spec.is_preset:
        config = adapter.preset_config(spec.preset, **_token_ids(tokenizer))
        return adapter.sequence_classifier_from_config(config)
    source, config = _checkpoint_source(spec, adapter)
    model = adapter.load_sequence_classifier(source, config, trust_remote_code=spec.trust_remote_code, **load_kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
