"""Memory plans: what a composed memory strategy (``"zero3+lora+gc"``) asks of the engine.

The plan's types are plain data in :mod:`rlhfkit.cellspec.modelset` (re-exported here); the plan becomes a
cell's :class:`~rlhfkit.cellspec.modelset.ModelSet` in :func:`rlhfkit.cellspec.modelset.derive_model_set`.
"""

from __future__ import annotations

from rlhfkit.cellspec.modelset import LoraSettings, MemoryPlan  # noqa: F401  (public names of this module)


def split_strategy(name: str) -> list[str]:
    parts = [p.strip() for p in name.split("+")]
    if not name or any(not p for p in parts):
        raise ValueError(f"memory strategy {name!r} is malformed; write parts joined by '+', e.g. 'zero3+lora'")
    if len(set(parts)) != len(parts):
        raise ValueError(f"memory strategy {name!r} names a part twice")
    return parts


def strategy_parts(name: str) -> list:
    """The registered strategy objects of a composed name, in order (unknown parts refused by name)."""
    from rlhfkit.plugins import get_registry  # at call time: plugins import this module's types

    registry = get_registry()
    strategies = []
    for part in split_strategy(name):
        if part not in registry.entries["memory_strategy"]:
            raise ValueError(
                f"memory strategy {name!r}: unknown part {part!r}; allowed: {', '.join(registry.names('memory_strategy'))}"
            )
        strategies.append(registry.get("memory_strategy", part))
    return strategies


def build_memory_plan(name: str) -> MemoryPlan:
    """Compose a strategy name into a plan; raise ``ValueError`` naming the part that is unknown or refuses."""
    plan = MemoryPlan(strategy=name)
    strategies = strategy_parts(name)
    for strategy in strategies:
        strategy.apply(plan)
        plan.parts.append(strategy.name)
    for strategy in strategies:
        try:
            strategy.check(plan)
        except ValueError as exc:
            raise ValueError(f"memory strategy {name!r}: {exc}") from None
    return plan
