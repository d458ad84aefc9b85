"""The hooks a rlhfkit plugin can implement.

Registration hooks receive a ``register`` callback (the style of simonw/llm), so one plugin module can
register several things.  They are called once per process, the first time the registry is needed, in
plugin registration order: built-ins first, then third-party entry points (group ``rlhfkit``).

Lifecycle hooks are broadcasts: every implementation is called and return values are ignored.  They run in
the process that does the work (``cell_started``/``cell_finished`` in the runner, ``log_metrics`` inside
the cell's training process), so a tracker such as TensorBoard hangs on ``log_metrics``.

Nothing here imports torch: loading plugins must stay cheap (``rlhfkit --help`` is fast).
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "rlhfkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_model_adapters(register):
    """Register model families.

    Called once when the registry is first built.  ``register(adapter)`` takes a
    :class:`rlhfkit.registry.ModelAdapter`; its ``name`` (e.g. ``"llama"``) is what recipes write before
    the colon in ``"llama:tiny"``.
    """


@hookspec
def register_algorithms(register):
    """Register RL algorithms.

    Called once when the registry is first built.  ``register(spec)`` takes a
    :class:`rlhfkit.registry.AlgorithmSpec`: a name, a config dataclass (validated from the recipe's
    ``[algorithms.<name>]`` table) and the trainer, given as an object or a lazy ``"module:attr"`` string
    so that torch is imported only when a cell trains.
    """


@hookspec
def register_memory_strategies(register):
    """Register memory strategies.

    Called once when the registry is first built.  ``register(strategy)`` takes a
    :class:`rlhfkit.registry.MemoryStrategy`.  Recipes compose strategies with ``+`` (``"zero3+lora"``):
    each part edits a shared :class:`rlhfkit.memory.MemoryPlan` in turn, then every part checks the
    finished plan, so an impossible combination is refused at validation.
    """


@hookspec
def register_datasets(register):
    """Register preference/prompt sources.

    Called once when the registry is first built.  ``register(spec)`` takes a
    :class:`rlhfkit.registry.DatasetSpec`: a name, an options dataclass (validated from ``[data]``) and a
    ``build`` callable (object or ``"module:attr"``) that returns a :class:`rlhfkit.data.PreferenceTask`.
    """


@hookspec
def register_reporters(register):
    """Register report writers.

    Called once when the registry is first built.  ``register(reporter)`` takes a
    :class:`rlhfkit.registry.Reporter`: a name and ``write(context)``, called after a run (and by
    ``rlhfkit report``) with a :class:`rlhfkit.report.ReportContext`.
    """


@hookspec
def register_advantage_estimators(register):
    """Register advantage estimators (the parts of a policy-gradient composition, as in verl).

    Called once when the registry is first built.  ``register(spec)`` takes a
    :class:`rlhfkit.registry.AdvantageEstimatorSpec`; its ``fn`` is best a lazy ``"module:attr"`` string so
    loading plugins never imports torch.  Algorithms name estimators in ``PolicyGradient(advantage=...)``.
    """


@hookspec
def register_policy_losses(register):
    """Register policy losses and loss aggregations.

    Called once when the registry is first built.  ``register(spec)`` takes a
    :class:`rlhfkit.registry.PolicyLossSpec` (``token_clip``, ``sequence_clip``...) or a
    :class:`rlhfkit.registry.LossAggregationSpec` (``token_mean``...); both kinds go through this one hook.
    """


@hookspec
def register_kl_estimators(register):
    """Register per-token KL estimators (``k1``, ``k2``, ``k3``).

    Called once when the registry is first built.  ``register(spec)`` takes a
    :class:`rlhfkit.registry.KLEstimatorSpec`, which says in which KL placements its gradient is a KL to the
    reference; recipe validation refuses the other pairs (unless ``kl_monitor_only``).
    """


@hookspec
def register_metrics(register):
    """Describe metric keys (label, unit, higher-is-better) for reports.

    Called once when the registry is first built.  ``register(spec)`` takes a
    :class:`rlhfkit.registry.MetricSpec`; a report's verdict direction comes from ``higher_is_better``
    (``None``: no verdict).  Algorithms register the statistics they log under their own names here.
    """


@hookspec
def register_trackers(register):
    """Register experiment trackers (TensorBoard, Weights & Biases...).

    Called once when the registry is first built.  ``register(spec)`` takes a
    :class:`rlhfkit.registry.TrackerSpec`: a name (what ``[report] trackers`` lists), the modules it needs and a
    lazy factory; the built-in trackers plugin opens the ones a run asks for on ``log_metrics``.
    """


@hookspec
def register_reward_functions(register):
    """Register reward functions: programmatic rewards a ``[[models]]`` row optimises with ``reward = "fn:NAME"``
    (alone, or weighted with its reward model through ``reward_weights``).

    Called once when the registry is first built.  ``register(spec)`` takes a
    :class:`rlhfkit.registry.RewardFunctionSpec`: a name, the scorer as a lazy ``"module:attr"`` string (imported
    only inside a cell, so loading plugins never imports torch) and whether it needs the task's per-prompt
    metadata or gold reward.  The scorer is called in the cell's process once per rollout batch as
    ``fn(prompts, completions, metadata, task)`` with decoded texts and returns one float per completion.
    """


@hookspec(firstresult=True)
def detect_model_family(model_config):
    """Claim a checkpoint for a model family.

    Called when a recipe names a checkpoint directory (or hub id) instead of ``family:preset``, with the
    checkpoint's ``config.json`` as a dict.  Return a registered family name to claim it, or ``None``.
    The first non-``None`` answer wins; third-party plugins are asked before the built-ins.
    """


@hookspec
def cell_started(cell, cell_dir, run):
    """A grid cell is about to run.

    Called in the runner process with the :class:`rlhfkit.recipe.Cell`, the directory its files go to and the
    :class:`rlhfkit.registry.RunContext`.
    """


@hookspec
def log_metrics(cell, step, metrics, run, cell_dir):
    """One training step of a cell finished.

    Called in the cell's (main) training process with the cell, the step number (0-based), a flat dict of
    namespaced metrics (``objective/kl``, ``loss/policy``...), the :class:`rlhfkit.registry.RunContext` and the
    cell's directory (``None`` for in-process cells without one).  An implementation may take any subset of
    these arguments.
    """


@hookspec
def cell_finished(cell, cell_dir, result, run):
    """A grid cell ended (``ok`` or not).

    Called in the runner process with the cell, its directory, the ``result.json`` contents as a dict and the
    :class:`rlhfkit.registry.RunContext`.
    """
