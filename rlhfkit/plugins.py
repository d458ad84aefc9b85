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
        pm.register(importlib.import_module(module_name), name=module_name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin implements an unknown hook: {exc}") from None
    return pm


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
    plugin_name = pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(f"plugin implements an unknown hook: {exc}") from None
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
