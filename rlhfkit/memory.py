"""Memory plans: what a composed memory strategy (``"zero3+lora(r=8,alpha=16)+gc"``) asks of the engine.

A strategy is parts joined by ``+``; a part may take settings in parentheses, ``name(key=value,...)``, declared
by the part's ``params_class`` dataclass and validated like every recipe table (unknown keys get a "did you
mean", values are type-checked).  Values are integers, floats, ``true``/``false`` or strings; a list (e.g.
LoRA's ``target_modules``) is written with ``|`` between its items: ``lora(target_modules=q_proj|v_proj)``.
The settings sit in the strategy string rather than in a ``[memory.lora]`` table so that one grid can hold the
same part with different settings (``memory = ["lora(r=4)", "lora(r=16)"]``) and every cell id names them.

The plan's types are plain data in :mod:`rlhfkit.cellspec.modelset` (re-exported here); the plan becomes a
cell's :class:`~rlhfkit.cellspec.modelset.ModelSet` in :func:`rlhfkit.cellspec.modelset.derive_model_set`.
"""

from __future__ import annotations

import copy
import hashlib
import re
import types
import typing

from rlhfkit.cellspec.modelset import LoraSettings, MemoryPlan  # noqa: F401  (public names of this module)

_PART = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)(?:\((.*)\))?$", re.DOTALL)
_SETTING = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
LIST_SEPARATOR = "|"


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` outside parentheses (a setting's value may not break a part apart)."""
    pieces, depth, current = [], 0, ""
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == sep and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    return pieces + [current]


def _literal(text: str):
    """A setting's value: true/false, an integer, a float, ``a|b`` a list of strings, else the string (quotes
    around it dropped)."""
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if LIST_SEPARATOR in text:
        return [item.strip() for item in text.split(LIST_SEPARATOR)]
    return text


def parse_part(text: str, strategy: str) -> tuple[str, dict]:
    """``"lora(r=8,alpha=16)"`` -> ``("lora", {"r": 8, "alpha": 16})``; one-line ``ValueError`` when malformed."""
    match = _PART.fullmatch(text.strip())
    if not match:
        raise ValueError(f"memory strategy {strategy!r}: part {text.strip()!r} is malformed; write name or "
                         f"name(key=value,...), e.g. 'lora(r=8,alpha=16)'")
    name, inner = match.group(1), match.group(2)
    settings: dict = {}
    for item in _split_top(inner, ",") if inner and inner.strip() else []:
        setting = _SETTING.fullmatch(item.strip())
        if not setting:
            raise ValueError(f"memory strategy {strategy!r}: setting {item.strip()!r} of {name!r} is malformed; "
                             f"write key=value")
        key = setting.group(1)
        if key in settings:
            raise ValueError(f"memory strategy {strategy!r}: {name}: {key!r} is set twice")
        settings[key] = _literal(setting.group(2))
    return name, settings


def parse_strategy(name: str) -> list[tuple[str, dict]]:
    """The parts of a composed strategy, in order, each ``(part name, settings as written)``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"memory strategy {name!r} is malformed; write parts joined by '+', e.g. 'zero3+lora'")
    pieces = _split_top(name, "+")
    if any(not p.strip() for p in pieces):
        raise ValueError(f"memory strategy {name!r} is malformed; write parts joined by '+', e.g. 'zero3+lora'")
    parts = [parse_part(p, name) for p in pieces]
    names = [part for part, _ in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"memory strategy {name!r} names a part twice")
    return parts


def split_strategy(name: str) -> list[str]:
    """The part names of a composed strategy (settings left out): ``"zero3+lora(r=4)"`` -> ``["zero3", "lora"]``."""
    return [part for part, _ in parse_strategy(name)]


def _id_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ".".join(str(v) for v in value)
    return str(value)


def strategy_id(name: str) -> str:
    """The strategy as it appears in cell ids and directory names: parts joined by ``-``, each part's settings
    sorted by key as ``_<key><value>`` (``"zero3+lora(r=4,alpha=8)"`` -> ``"zero3-lora_alpha8_r4"``), so the
    same settings written in another order or spacing give the same id, and a strategy without settings keeps
    the id it always had.  Characters a file name should not hold become ``-``, with a hash of the strategy
    appended so that two such strategies cannot share an id."""
    try:
        parts = parse_strategy(name)
    except ValueError:
        return name.replace("+", "-")  # never reached for a validated recipe; ids must not raise
    text = "-".join(part + "".join(f"_{k}{_id_value(v)}" for k, v in sorted(s.items())) for part, s in parts)
    safe = _ID_UNSAFE.sub("-", text)
    if safe != text:
        safe += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return safe


def _build_params(strategy, settings: dict, name: str):
    """The part's settings validated into its ``params_class`` (its defaults when none are written)."""
    from rlhfkit.recipe import RecipeError, build_dataclass  # the generic validator; recipe imports this module

    cls = getattr(strategy, "params_class", None)
    if cls is None:
        if settings:
            raise ValueError(f"memory strategy {name!r}: part {strategy.name!r} takes no settings")
        return None
    hints = typing.get_type_hints(cls)
    for key, value in list(settings.items()):
        # one item of a list-valued setting is written without '|': a list of one
        if isinstance(value, str) and typing.get_origin(_unwrap_optional(hints.get(key))) in (list, tuple):
            settings[key] = [value]
    try:
        return build_dataclass(cls, settings, strategy.name)
    except RecipeError as exc:
        raise ValueError(f"memory strategy {name!r}: {exc}") from None


def _unwrap_optional(tp):
    """``X | None`` -> ``X`` (other types as they are)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def strategy_parts(name: str) -> list:
    """The strategy objects of a composed name, in order, each a copy of the registered part carrying its
    validated settings as ``params`` (unknown parts and settings refused by name)."""
    from rlhfkit.plugins import get_registry  # at call time: plugins import this module's types

    registry = get_registry()
    strategies = []
    for part, settings in parse_strategy(name):
        if part not in registry.entries["memory_strategy"]:
            raise ValueError(
                f"memory strategy {name!r}: unknown part {part!r}; allowed: {', '.join(registry.names('memory_strategy'))}"
            )
        strategy = copy.copy(registry.get("memory_strategy", part))
        strategy.params = _build_params(strategy, dict(settings), name)
        strategies.append(strategy)
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
