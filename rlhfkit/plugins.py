"""The plugin manager: built-ins first, then third-party entry points, one registry per process."""

from __future__ import annotations

import importlib
import os
import threading

import pluggy

from rlhfkit import hookspecs
from rlhfkit.registry import PluginError, Registry

ENTRY_POINT_GROUP = "rlhfkit"
DISABLE_ENV = "RLHFKIT_DISABLE_PLUGINS"
"""Comma-separated plugin names (built-in module names or entry-point names) that are not loaded."""

BUILTIN_PLUGINS = (
    "rlhfkit_plugins.models.llama",
    "rlhfkit_plugins.models.qwen2",
    "rlhfkit_plugins.models.phi3",
    "rlhfkit_plugins.models.minicpm",
    "rlhfkit_plugins.models.deepseek",
    "rlhfkit_plugins.algorithms",
    "rlhfkit_plugins.memory",
    "rlhfkit_plugins.datasets",
    "rlhfkit_plugins.rewards",
    "rlhfkit_plugins.reporters",
    "rlhfkit_plugins.reporters.trackers",
)

# hook name -> (registry kind, attribute that names the registered object)
REGISTRATION_HOOKS = {
    "register_model_adapters": "model_adapter",
    "register_algorithms": "algorithm",
    "register_memory_strategies": "memory_strategy",
    "register_datasets": "dataset",
    "register_reporters": "reporter",
    "register_advantage_estimators": "advantage_estimator",
    "register_policy_losses": "policy_loss",
    "register_kl_estimators": "kl_estimator",
    "register_metrics": "metric",
    "register_trackers": "tracker",
    "register_reward_functions": "reward_function",
}

_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None


def disabled_plugins() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def builtin_plugin_names() -> tuple[str, ...]:
    return BUILTIN_PLUGINS


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in disabled_plugins():
        pm.set_blocked(name)
    for module_name in BUILTIN_PLUGINS:
        if pm.is_blocked(module_name):
            continue
        _register_checked(pm, importlib.import_module(module_name), module_name, f"built-in plugin {module_name!r}")
    _import_entry_points(pm)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)  # modules already imported: records distributions
    except pluggy.PluginValidationError as exc:
        raise PluginError(_validation_message(exc, f"plugin {exc.plugin!r}")) from None
    _check_pending(pm)
    return pm


def _import_entry_points(pm: pluggy.PluginManager) -> None:
    """Import every entry point of the group first, so that one that raises is named in a one-line error.

    pluggy's own loader lets the exception out with a traceback that names neither the entry point nor its
    distribution; after this, its ``load_setuptools_entrypoints`` finds the modules already imported.
    """
    from importlib import metadata

    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.is_blocked(ep.name):
                continue
            try:
                ep.load()
            except Exception as exc:  # any failure of third-party code at import is that plugin's error
                dist_name = dist.metadata["name"]
                raise PluginError(
                    f"plugin entry point {ep.name!r} ({ep.value}) of distribution {dist_name!r} failed to load: "
                    f"{type(exc).__name__}: {exc} (disable it with {DISABLE_ENV}={ep.name})"
                ) from None


def _hook_suggestion(name: str) -> str:
    import difflib

    known = [n for n in dir(hookspecs) if not n.startswith("_") and hasattr(getattr(hookspecs, n), "rlhfkit_spec")]
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known hooks: {', '.join(sorted(known))}"


def _validation_message(exc: pluggy.PluginValidationError, who: str) -> str:
    """One line for pluggy's PluginValidationError (a hookimpl whose arguments the hookspec does not have)."""
    text = " ".join(str(exc).split())
    return f"{who} does not fit rlhfkit's hooks: {text}"


def _register_checked(pm: pluggy.PluginManager, plugin, name: str | None, who: str) -> str:
    try:
        return pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(_validation_message(exc, who)) from None
    except ValueError as exc:  # pluggy: the same plugin or name registered twice
        raise PluginError(f"{who}: {exc}") from None


def _check_pending(pm: pluggy.PluginManager) -> None:
    """Every hookimpl must name a known hook: a misspelt ``register_reporter`` would otherwise do nothing."""
    for name in pm.hook.__dict__:
        if name.startswith("_"):
            continue
        caller = getattr(pm.hook, name)
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            raise PluginError(
                f"plugin {impl.plugin_name!r} ({distribution_name(pm, impl.plugin)}) implements an unknown hook "
                f"{name!r}{_hook_suggestion(name)}"
            )


def distribution_name(pm: pluggy.PluginManager, plugin) -> str:
    for dist_plugin, dist in pm.list_plugin_distinfo():
        if dist_plugin is plugin:
            return f"distribution {dist.project_name!r}"
    return "registered at runtime" if not getattr(plugin, "__name__", "").startswith("rlhfkit") else "built-in"


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    with _lock:
        if _pm is None:
            _pm = _new_manager()
        return _pm


def distribution_of(plugin) -> str:
    """The distribution (``name version``) a plugin came from; ``rlhfkit`` for the built-ins."""
    pm = get_plugin_manager()
    for dist_plugin, dist in pm.list_plugin_distinfo():
        if dist_plugin is plugin:
            return dist.project_name
    name = getattr(plugin, "__name__", "")
    if name.startswith(("rlhfkit.", "rlhfkit_plugins.")):
        return "rlhfkit"
    return "(registered at runtime)"


def kind_of(obj, hook_kind: str) -> str:
    """The registry kind of ``obj``: the hook's, except that ``register_policy_losses`` also takes loss
    aggregations (one hook for the two halves of a loss)."""
    from rlhfkit.registry import LossAggregationSpec

    return "loss_aggregation" if isinstance(obj, LossAggregationSpec) else hook_kind


def _build_registry(pm: pluggy.PluginManager) -> Registry:
    registry = Registry()
    for hook_name, kind in REGISTRATION_HOOKS.items():
        hook = getattr(pm.hook, hook_name)
        # Call each implementation on its own so the registry knows which plugin registered what, and a
        # duplicate name can name both plugins.  get_hookimpls() lists them in load order (pluggy's own
        # calls go LIFO, from the end of this list), so built-ins register first, then third parties.
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            distribution = distribution_of(impl.plugin)

            def register(obj, _plugin=plugin_name, _dist=distribution, _kind=kind):
                registry.add(kind_of(obj, _kind), getattr(obj, "name", None), obj, _plugin, _dist)

            impl.function(register=register)
    return registry


def get_registry() -> Registry:
    """The registry of this process, built on first use."""
    global _registry
    pm = get_plugin_manager()
    with _lock:
        if _registry is None:
            _registry = _build_registry(pm)
        return _registry


def register_plugin(plugin, name: str | None = None) -> str:
    """Register a plugin object at runtime (tests, notebooks); the registry is rebuilt on next use."""
    global _registry
    pm = get_plugin_manager()
    plugin_name = _register_checked(pm, plugin, name, f"plugin {name or getattr(plugin, '__name__', plugin)!r}")
    try:
        _check_pending(pm)
    except PluginError:
        pm.unregister(plugin)
        raise
    _registry = None
    return plugin_name


def unregister_plugin(plugin=None, name: str | None = None) -> None:
    global _registry
    get_plugin_manager().unregister(plugin=plugin, name=name)
    _registry = None


def reset() -> None:
    """Forget the manager and registry (tests that change the environment)."""
    global _pm, _registry
    with _lock:
        _pm = None
        _registry = None
