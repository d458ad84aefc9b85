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

from rlhfkit import architecture
from rlhfkit.modelspec import read_checkpoint_config

KINDS = (
    "model_adapter",
    "algorithm",
    "memory_strategy",
    "dataset",
    "reporter",
    "advantage_estimator",
    "policy_loss",
    "loss_aggregation",
    "kl_estimator",
    "metric",
    "tracker",
    "reward_function",
)


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
    """True when the algorithm trains a critic (PPO); the cell then builds one (see ``critic_from``)."""
    samples_per_prompt_field: str | None = None
    """Name of the config field holding k (completions per prompt), if the algorithm samples several."""
    critic_from: str = "reward_model"
    """Where the critic starts, when ``needs_value_model``: ``reward_model`` (the trained reward model, its
    score head included) or ``policy`` (the SFT policy's backbone with a new one-output head).  A row without a
    reward model reading the policy's tokens (``reward = "fn:..."``) always gets the latter
    (:func:`rlhfkit.cellspec.modelset.critic_start`)."""
    default_in_grid: bool = False
    """In the grid of a recipe that does not list ``[grid] algorithms`` (core names no algorithm itself)."""


@dataclass
class AdvantageEstimatorSpec:
    """How advantages are computed from rewards (``gae``, ``rloo``, ``grpo``...), as in verl's registry.

    ``fn(**inputs) -> (advantages, returns | None)`` (object or lazy ``"module:attr"``): the loop passes
    ``token_rewards`` (B, T) or ``seq_rewards`` (B,) (per ``reward_level``), ``values``, ``mask``,
    ``baseline_rewards``, ``k``, ``gamma``, ``lam``; the function takes what it needs and ignores the rest.
    """

    name: str
    fn: Any
    reward_level: str = "sequence"
    """``"token"``: needs per-token rewards (B, T); ``"sequence"``: one reward per completion (B,)."""
    needs_critic: bool = False
    """Reads ``values`` from a critic (GAE)."""
    needs_groups: bool = False
    """Needs k > 1 samples per prompt, consecutive (RLOO, GRPO)."""
    needs_greedy_baseline: bool = False
    """Needs the reward of a greedy completion of each prompt as ``baseline_rewards`` (ReMax)."""
    description: str = ""


@dataclass
class PolicyLossSpec:
    """A policy loss: ``fn(logprobs, old_logprobs, advantages, mask, cliprange) -> (losses, stats)``.

    ``losses`` is (B, T) for ``level == "token"`` (aggregated by the loss aggregation) or (B,) for
    ``"sequence"`` (averaged over completions); ``stats`` maps statistic names to scalar tensors.
    """

    name: str
    fn: Any
    level: str = "token"
    description: str = ""


@dataclass
class LossAggregationSpec:
    """How (B, T) per-token loss terms become one scalar: ``fn(losses, mask) -> scalar``."""

    name: str
    fn: Any
    description: str = ""


@dataclass
class KLEstimatorSpec:
    """A per-token estimator of KL(policy || reference): ``fn(logprobs, ref_logprobs, mask) -> (B, T)``."""

    name: str
    fn: Any
    placements: tuple[str, ...] = ()
    """KL placements where this estimator's gradient is that of a KL to the reference (others are refused
    unless ``kl_monitor_only``)."""
    gradient_label: str = ""
    """What the penalty's gradient is, for reports (``"KL(pi||ref)"``, ``"reverse-KL gradient (GRPO)"``)."""
    auto_for: tuple[str, ...] = ()
    """KL placements where ``kl_estimator = "auto"`` picks this estimator (at most one per placement)."""
    description: str = ""


@dataclass
class MetricSpec:
    """What a metric key means, for reports: label, unit and which direction is better."""

    name: str
    """The key as written in metrics.jsonl / result.json summary (``objective/gold``, ``gold_final``)."""
    label: str
    unit: str = ""
    higher_is_better: bool | None = None
    """True/False: the report may say which arm is better; None: no verdict (e.g. KL, which is a budget)."""
    description: str = ""


@dataclass
class DatasetSpec:
    """A preference/prompt source."""

    name: str
    options_class: type
    """Dataclass built from the recipe's ``[data]`` table (minus ``name``)."""
    build: Any
    """Callable ``build(options, seed) -> PreferenceTask`` (or a lazy ``"module:attr"`` string)."""
    description: str = ""
    default: bool = False
    """The data set of a recipe without ``[data] name`` (exactly one registered data set should say so)."""


@dataclass
class Reporter:
    """Writes one view of a run's results."""

    name: str
    write: Callable[[Any], Any]
    """``write(context)`` with a :class:`rlhfkit.report.ReportContext`; returns the written paths."""
    description: str = ""
    default: bool = True
    """Run by default after every run (recipes may restrict the list with ``[report] reporters``)."""


@dataclass
class RewardFunctionSpec:
    """A programmatic reward (``reward = "fn:<name>"`` in a ``[[models]]`` row): e.g. a verifiable reward.

    ``fn(prompts, completions, metadata, task)`` (object or lazy ``"module:attr"``, imported only inside a cell)
    scores one batch of decoded completions: ``prompts`` and ``completions`` are lists of texts (the completion
    without its prompt, special tokens removed), ``metadata`` a list of dicts, one per row (the task's
    ``prompt_metadata`` of that row's prompt, e.g. ``{"answer": 12}``; ``{}`` where the task has none), and
    ``task`` the :class:`rlhfkit.data.PreferenceTask`.  It returns one finite float per completion (a list, a
    tuple or a 1-D tensor).  The plugin that registered it is recorded by the registry, like every kind.
    """

    name: str
    """What recipes write after ``fn:`` (``reward = "fn:arith_exact"``)."""
    fn: Any
    """The scorer, or a lazy ``"module:attr"`` reference to it (so loading plugins never imports torch)."""
    description: str = ""
    needs_metadata: bool = False
    """Reads ``metadata`` (the task's per-prompt answers): a data set without metadata for its prompts is
    refused before any stage runs."""
    needs_gold: bool = False
    """Calls the task's own gold reward (``task.gold_reward``): a data set without one is refused before any
    stage runs."""


@dataclass
class RunContext:
    """What lifecycle hooks are told about the run (no plugin needs to read ``sys.argv`` or files for it)."""

    recipe_name: str
    recipe_path: str
    """The recipe copy inside the run directory."""
    output_dir: str
    trackers: tuple[str, ...] = ()
    """``[report] trackers``: the tracker names the recipe asks for."""


@dataclass
class TrackerSpec:
    """An experiment tracker fed from every training step (``[report] trackers = ["tensorboard"]``).

    ``factory(run, cell, cell_dir)`` (object or lazy ``"module:attr"``, imported only when a cell opens it)
    returns an object with ``log(step, metrics)`` and ``close()``; ``run`` is a :class:`RunContext`.
    """

    name: str
    factory: Any
    description: str = ""
    requires: tuple[str, ...] = ()
    """Modules that must be importable (``rlhfkit validate`` refuses the recipe otherwise, naming them)."""

    def available(self) -> bool:
        """Whether every module of :attr:`requires` can be imported (nothing is imported to find out)."""
        import importlib.util

        return all(importlib.util.find_spec(module) is not None for module in self.requires)


class MemoryStrategy(abc.ABC):
    """One composable part of a memory strategy (``zero3``, ``lora``, ``gc``...).

    Subclasses set ``name`` and ``description`` and override :meth:`apply` (edit the plan) and, where some
    combination cannot work, :meth:`check` (raise ``ValueError`` with the reason).  A part whose effect the
    plan's fields cannot say (an optimizer, where a model lives) overrides :meth:`shape`, which edits the
    cell's model set: the cell builds it and the planner sizes it, so both see the part.
    """

    name: str = ""
    description: str = ""
    params_class: type | None = None
    """Dataclass of the settings the part takes in the recipe (``lora(r=8,alpha=16)``), its fields documented
    by the string literal after each (``rlhfkit config memory.<name>`` shows them); ``None``: no settings."""
    params: Any = None
    """The validated settings of this use of the part (an instance of :attr:`params_class`), set on the copy
    :func:`rlhfkit.memory.strategy_parts` makes for one strategy string; read it in :meth:`apply`."""

    @abc.abstractmethod
    def apply(self, plan) -> None:
        """Edit the :class:`rlhfkit.cellspec.modelset.MemoryPlan` in place."""

    def check(self, plan) -> None:
        """Raise ``ValueError`` if the finished plan cannot work with this part in it."""

    def shape(self, model_set) -> None:
        """Edit the cell's :class:`rlhfkit.cellspec.modelset.ModelSet` in place (after the core rules)."""


class ModelAdapter:
    """A model family: how to build, load and describe its models.

    Subclasses are declared with class attributes; the methods import transformers only when called (a plugin
    module is imported on every ``rlhfkit`` start).  A family may span several architectures (Deepseek: the
    Llama-architecture deepseek-llm/coder and the MoE DeepseekV2/V3): ``model_classes`` maps a ``model_type``
    to its classes, and a preset picks one with a ``model_type`` key.

    Three kinds of model reference reach an adapter (see :class:`rlhfkit.models.ModelSpec`):

    - a tiny *preset* (``"qwen2:tiny"``): random init from ``config_class``, trains on a CPU in seconds;
    - a *checkpoint* (a local directory, or a hub id when online): loaded with ``from_pretrained``;
    - an architecture-only *reference* to a well-known real checkpoint (``"deepseek:deepseek-coder-6.7b"``):
      its config numbers come from :attr:`known_checkpoints`, so ``rlhfkit plan`` can size it offline; it
      cannot be trained offline.
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
    model_classes: dict[str, tuple[str, str, str]] = {}
    """``model_type`` -> (config, causal-LM, sequence-classification) lazy references, for the architectures
    of the family other than the default one above."""
    presets: dict[str, dict] = {}
    """Tiny architectures built from ``config_class`` (random init), by name.  A ``model_type`` key picks an
    architecture from :attr:`model_classes`."""
    lora_target_modules: tuple[str, ...] = ()
    """Linear layers LoRA adapts by default (the union over the family's architectures: peft needs at least
    one of them to exist, not all)."""
    trust_remote_code_types: tuple[str, ...] = ()
    """Model types whose checkpoints need ``trust_remote_code`` (loaded through the Auto classes)."""
    qkv_bias: bool = False
    """The q/k/v projections carry a bias whatever ``attention_bias`` says (Qwen2)."""
    known_checkpoints: dict[str, dict] = {}
    """Well-known real checkpoints of the family: name -> config kwargs (with ``model_type``), copied from
    their published ``config.json`` so the memory planner knows them without downloading."""
    checkpoint_hub_ids: dict[str, str] = {}
    """Known checkpoint name -> its hub id (used only when online)."""
    fast_decoder: str = ""
    """Lazy ``"module:Class"`` reference to a lean one-token decode step for the family's causal LMs (see
    :meth:`decoder`); empty: the rollout decodes with the model's own forward."""

    # --- claiming checkpoints ------------------------------------------------------------------------------

    def claims(self, model_config: dict) -> bool:
        """Whether a checkpoint's ``config.json`` (as a dict) belongs to this family.

        An explicit ``"rlhfkit_family"`` key in the config decides; otherwise the ``model_type``.
        """
        explicit = model_config.get("rlhfkit_family")
        if explicit:
            return explicit == self.name
        model_type = model_config.get("model_type")
        return model_type in self.model_types or model_type in self.trust_remote_code_types

    def detect(self, model_config: dict) -> str | None:
        """The ``detect_model_family`` answer of this family's plugin: its name when it claims the config."""
        return self.name if self.claims(model_config) else None

    def check_loadable(self, model_config: dict, trust_remote_code: bool, label: str) -> None:
        """Raise a one-line ``ValueError`` when the checkpoint needs remote code that was not allowed."""
        model_type = model_config.get("model_type")
        if model_type in self.trust_remote_code_types and not trust_remote_code:
            raise ValueError(
                f"model {label!r}: model_type {model_type!r} ({self.name}) ships its own modelling code; set "
                f"trust_remote_code = true in its [[models]] row to allow running it"
            )
        loadable = self.model_types + self.trust_remote_code_types + tuple(self.model_classes)
        if model_type not in loadable:
            raise ValueError(
                f"model {label!r}: model_type {model_type!r} cannot be loaded by family {self.name!r} "
                f"(it loads model types: {', '.join(dict.fromkeys(loadable))})"
            )

    # --- classes -------------------------------------------------------------------------------------------

    def classes(self, model_type: str | None = None) -> tuple[str, str, str]:
        """(config, causal-LM, sequence-classification) lazy references for ``model_type``."""
        if model_type and model_type in self.model_classes:
            return self.model_classes[model_type]
        return (self.config_class, self.causal_lm_class, self.sequence_classification_class)

    @staticmethod
    def _native_config_class(model_type: str | None):
        """transformers' own config class for ``model_type``, or ``None`` (remote-code or unknown types)."""
        if not model_type:
            return None
        from transformers import CONFIG_MAPPING

        try:
            return CONFIG_MAPPING[model_type]
        except KeyError:
            return None

    # --- configs -------------------------------------------------------------------------------------------

    def preset_config(self, preset: str, **overrides):
        """The transformers config of a tiny preset, with token ids/vocab overridden."""
        if preset not in self.presets:
            raise ValueError(
                f"model family {self.name!r} has no preset {preset!r}; allowed: {', '.join(sorted(self.presets))}"
            )
        kwargs = dict(self.presets[preset])
        model_type = kwargs.pop("model_type", None)
        config_cls = resolve(self.classes(model_type)[0])
        kwargs.update(overrides)
        return config_cls(**kwargs)

    def reference_config(self, name: str) -> dict:
        """Config of a well-known checkpoint as a full dict (defaults of the config class filled in)."""
        if name not in self.known_checkpoints:
            raise ValueError(
                f"model family {self.name!r} knows no checkpoint {name!r}; known: "
                f"{', '.join(sorted(self.known_checkpoints)) or '(none)'}"
            )
        return self.normalise_config(dict(self.known_checkpoints[name]))

    def normalise_config(self, config: dict) -> dict:
        """A ``config.json``-like dict with the defaults of its (native) config class filled in."""
        config = dict(config)
        config_cls = self._native_config_class(config.get("model_type"))
        if config_cls is None:
            return config
        known = {k: v for k, v in config.items() if k not in ("transformers_version", "auto_map")}
        try:
            return config_cls(**known).to_dict()
        except Exception:  # an odd config still has the numbers we need
            return config

    def config_dict(self, spec_or_config) -> dict:
        """A config dict from a :class:`ModelSpec`, a transformers config, a dict, a preset or known name."""
        if isinstance(spec_or_config, dict):
            return self.normalise_config(spec_or_config)
        if hasattr(spec_or_config, "to_dict") and hasattr(spec_or_config, "model_type"):
            return spec_or_config.to_dict()
        if isinstance(spec_or_config, str):
            if spec_or_config in self.presets:
                return self.preset_config(spec_or_config).to_dict()
            if spec_or_config in self.known_checkpoints:
                return self.reference_config(spec_or_config)
            return self.normalise_config(read_checkpoint_config(spec_or_config))
        # a ModelSpec (duck-typed, so that any object with these fields works)
        if getattr(spec_or_config, "preset", None):
            return self.preset_config(spec_or_config.preset).to_dict()
        if getattr(spec_or_config, "reference", None):
            return self.reference_config(spec_or_config.reference)
        if getattr(spec_or_config, "checkpoint", None):
            return self.normalise_config(read_checkpoint_config(spec_or_config.checkpoint))
        raise TypeError(f"cannot read a model config from {spec_or_config!r}")

    # --- building and loading ------------------------------------------------------------------------------

    def causal_lm_from_config(self, config):
        return resolve(self.classes(getattr(config, "model_type", None))[1])(config)

    def sequence_classifier_from_config(self, config):
        config.num_labels = 1
        return resolve(self.classes(getattr(config, "model_type", None))[2])(config)

    def _load(self, which: int, checkpoint: str, model_config: dict | None, trust_remote_code: bool, **kwargs):
        model_type = (model_config or {}).get("model_type")
        if model_type in self.trust_remote_code_types or model_type not in (self.model_types + tuple(self.model_classes)):
            from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

            cls = AutoModelForCausalLM if which == 1 else AutoModelForSequenceClassification
        else:
            cls = resolve(self.classes(model_type)[which])
        return cls.from_pretrained(checkpoint, trust_remote_code=trust_remote_code, **kwargs)

    def load_causal_lm(self, checkpoint: str, model_config: dict | None = None, trust_remote_code: bool = False, **kwargs):
        """A causal LM from a local checkpoint directory (or a hub id when online)."""
        return self._load(1, checkpoint, model_config, trust_remote_code, **kwargs)

    def load_sequence_classifier(
        self, checkpoint: str, model_config: dict | None = None, trust_remote_code: bool = False, **kwargs
    ):
        """A one-output sequence classifier (reward model / critic) from a checkpoint; a new score head."""
        kwargs.setdefault("num_labels", 1)
        return self._load(2, checkpoint, model_config, trust_remote_code, **kwargs)

    # --- architecture numbers (memory planner) -------------------------------------------------------------

    def architecture(self, spec_or_config) -> dict:
        """The numbers a memory planner needs, computed from the config (nothing is instantiated).

        Keys: ``model_type``, ``hidden_size``, ``num_layers``, ``num_heads``, ``num_kv_heads``, ``head_dim``
        (query/key head size), ``v_head_dim``, ``intermediate_size``, ``vocab_size``, ``tied_embeddings``,
        ``num_experts`` (routed experts per MoE layer, 0 when dense), ``experts_per_token``,
        ``num_shared_experts``, ``moe_intermediate_size``, ``num_moe_layers``, ``mla`` (multi-head latent
        attention), ``kv_cache_elements_per_token`` (K and V elements cached per token over all layers, as
        transformers caches them), ``num_parameters`` (the causal LM's), ``num_active_parameters`` (per token,
        MoE routing counted), ``num_embedding_parameters``, ``max_position_embeddings``, ``linear_layers``
        (``[module name, in features, out features, how many]`` of every ``nn.Linear`` in the decoder
        layers: what LoRA can target; see :meth:`lora_parameters`).
        """
        return self.architecture_numbers(self.config_dict(spec_or_config))

    def architecture_numbers(self, config: dict) -> dict:
        """:meth:`architecture` of a config dict as written (no defaults filled in, no transformers import).

        Families whose layers differ from the generic decoder (fused projections, MoE layers) override this and
        pass their differences to :func:`rlhfkit.architecture.architecture_numbers`.
        """
        return architecture.architecture_numbers(config, qkv_bias=self.qkv_bias)

    def lora_parameters(self, spec_or_config, r: int, target_modules=None) -> int:
        """Parameters LoRA of rank ``r`` adds on ``target_modules`` (default: the family's), counted from the
        ``linear_layers`` of :meth:`architecture` (exact for every built-in family, fused Phi3 projections and
        MLA included).  Routed MoE experts are fused 3-D parameters in transformers 5, not linear layers: they
        get none here, while peft 0.18+ may map MLP target names onto them its own way (DeepseekV2/V3)."""
        arch = spec_or_config if isinstance(spec_or_config, dict) and "linear_layers" in spec_or_config else self.architecture(spec_or_config)
        return architecture.lora_parameters(arch, r, target_modules or self.lora_target_modules)

    # --- decoding ------------------------------------------------------------------------------------------

    def decoder(self, model, cache, query_mask, positions, max_new_tokens: int):
        """A fast one-token decode step for ``model`` after its prefill filled ``cache``, or ``None`` when the
        family has none or this model/cache cannot use it (the rollout then decodes with the model's forward).

        The decoder (:attr:`fast_decoder`) is called as ``decoder(tokens, is_real) -> logits`` and must give
        the numbers of ``model(...)``: the rollout's log-probs are the training forward's.
        """
        if not self.fast_decoder:
            return None
        decoder_class = resolve(self.fast_decoder)
        if not decoder_class.supports(model, cache):
            return None
        return decoder_class(model, cache, query_mask, positions, max_new_tokens)


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
