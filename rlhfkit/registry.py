"""What plugins register, and the registry that collects it.

The classes here are deliberately light (no torch, no transformers at import time): a plugin module is
imported every time ``rlhfkit`` starts, and heavy work happens only in the methods that build models or
train, which run inside a cell's own process.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

KINDS = ("model_adapter", "algorithm", "memory_strategy", "dataset", "reporter")


class PluginError(Exception):
    """A plugin could not be loaded or registered something inconsistent."""


def resolve(target: Any) -> Any:
    """Return ``target`` itself, or the object a ``"package.module:attr"`` string points at."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    if not attr:
        raise PluginError(f"lazy reference {target!r} must look like 'package.module:attribute'")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class AlgorithmSpec:
    """An RL algorithm: a config dataclass and a trainer."""

    name: str
    """What recipes write in ``algorithms = [...]``."""
    config_class: type
    """Dataclass built from the recipe's ``[algorithms.<name>]`` table; it must import no torch."""
    trainer: Any
    """Callable ``trainer(context) -> None`` (or a lazy ``"module:attr"`` string) run inside the cell."""
    description: str = ""
    needs_value_model: bool = False
    """True when the algorithm trains a critic (PPO); the runner then builds one from the reward model."""
    samples_per_prompt_field: str | None = None
    """Name of the config field holding k (completions per prompt), if the algorithm samples several."""


@dataclass
class DatasetSpec:
    """A preference/prompt source."""

    name: str
    options_class: type
    """Dataclass built from the recipe's ``[data]`` table (minus ``name``)."""
    build: Any
    """Callable ``build(options, seed) -> PreferenceTask`` (or a lazy ``"module:attr"`` string)."""
    description: str = ""


@dataclass
class Reporter:
    """Writes one view of a run's results."""

    name: str
    write: Callable[[Any], Any]
    """``write(context)`` with a :class:`rlhfkit.report.ReportContext`; returns the written paths."""
    description: str = ""
    default: bool = True
    """Run by default after every run (recipes may restrict the list with ``[report] reporters``)."""


class MemoryStrategy(abc.ABC):
    """One composable part of a memory strategy (``zero3``, ``lora``, ``gc``...).

    Subclasses set ``name`` and ``description`` and override :meth:`apply` (edit the plan) and, where some
    combination cannot work, :meth:`check` (raise ``ValueError`` with the reason).
    """

    name: str = ""
    description: str = ""

    @abc.abstractmethod
    def apply(self, plan) -> None:
        """Edit the :class:`rlhfkit.memory.MemoryPlan` in place."""

    def check(self, plan) -> None:
        """Raise ``ValueError`` if the finished plan cannot work with this part in it."""


class ModelAdapter:
    """A model family: how to build, load and describe its models.

    Subclasses are declared with class attributes; the methods import transformers when called.
    """

    name: str = ""
    """Family name used in recipes (``"llama"``)."""
    description: str = ""
    model_types: tuple[str, ...] = ()
    """``config.json`` ``model_type`` values this family claims when a checkpoint path is given."""
    config_class: str = ""
    """Lazy reference to the transformers config class, e.g. ``"transformers:LlamaConfig"``."""
    causal_lm_class: str = ""
    sequence_classification_class: str = ""
    presets: dict[str, dict] = {}
    """Tiny architectures built from ``config_class`` (random init), by name."""
    lora_target_modules: tuple[str, ...] = ()
    trust_remote_code_types: tuple[str, ...] = ()
    """Model types whose checkpoints need ``trust_remote_code``."""

    def preset_config(self, preset: str, **overrides):
        """The transformers config of a tiny preset, with token ids/vocab overridden."""
        if preset not in self.presets:
            raise ValueError(
                f"model family {self.name!r} has no preset {preset!r}; allowed: {', '.join(sorted(self.presets))}"
            )
        config_cls = resolve(self.config_class)
        kwargs = dict(self.presets[preset])
        kwargs.update(overrides)
        return config_cls(**kwargs)

    def causal_lm_from_config(self, config):
        return resolve(self.causal_lm_class)(config)

    def sequence_classifier_from_config(self, config):
        config.num_labels = 1
        return resolve(self.sequence_classification_class)(config)


@dataclass
class Entry:
    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str


@dataclass
class Registry:
    """Everything registered, by kind and name, with the plugin that registered it."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, kind: str, name: str, obj: Any, plugin: str, distribution: str) -> None:
        if not name or not isinstance(name, str):
            raise PluginError(f"plugin {plugin!r} registered a {kind} without a name")
        existing = self.entries[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                f"({existing.distribution}) and by plugin {plugin!r} ({distribution})"
            )
        self.entries[kind][name] = Entry(kind, name, obj, plugin, distribution)

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.entries[kind][name].obj
        except KeyError:
            raise KeyError(
                f"unknown {kind.replace('_', ' ')} {name!r}; allowed: {', '.join(self.names(kind)) or '(none)'}"
            ) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all(self) -> list[Entry]:
        return [e for kind in KINDS for e in self.entries[kind].values()]


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]
