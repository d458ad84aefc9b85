"""The configuration reference, generated from the config dataclasses (``python -m rlhfkit.configdoc`` prints
docs/config.md; ``rlhfkit config rl.kl_coef`` prints one key's help).

A field's help is the string literal written right after it in the class body (the convention of TRL-style
dataclasses); it is read with :mod:`ast` from the source, so the documentation is the code's own and cannot
drift.  Sections are the recipe's tables: ``[rl]``, each built-in algorithm's ``[algorithms.<name>]`` (only the
keys it adds or whose default it changes), ``[sft]``, ``[reward_model]``, ``[dpo]``, ``[run]``, ``[report]``, ``[grid]``,
``[tuning]``, ``[[models]]``, ``[data]`` (common keys, then per built-in data set) and the settings of each
memory-strategy part.
Nothing here imports torch.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import sys
import textwrap
import typing
from dataclasses import dataclass

from rlhfkit.validation import literal_choices

BUILTIN = "rlhfkit"


@dataclass
class Section:
    """One recipe table and the dataclass its keys build."""

    key: str
    """How ``rlhfkit config`` names it (``rl``, ``algorithms.ppo``, ``data.synthetic``, ``memory.lora``)."""
    title: str
    """How a recipe writes it (``[rl]``, ``memory = ["lora(...)"]``)."""
    cls: type
    only: tuple | None = None
    """The fields the reference lists (``None``: all); runtime help always knows every field."""
    note: str = ""


@functools.lru_cache(maxsize=None)
def _class_docs(cls: type) -> dict[str, str]:
    """Field -> the string literal after it, in this class's own body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = next((node.body for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == cls.__name__), [])
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Every field's help, a subclass's own text over its base's."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_docs(klass))
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def toml_value(value) -> str:
    """A default as a recipe would write it."""
    if value is dataclasses.MISSING:
        return "(required)"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return repr(value)


def type_text(tp) -> str:
    choices = literal_choices(tp)
    if choices is not None:
        text = " | ".join(json.dumps(c) for c in choices)
        return text + (" | None" if type(None) in typing.get_args(tp) else "")
    text = str(tp).replace("typing.", "")
    return getattr(tp, "__name__", text) if not typing.get_args(tp) else text


@dataclass
class KeyHelp:
    name: str
    type: str
    default: str
    doc: str


def section_keys(section: Section, every: bool = False) -> list[KeyHelp]:
    hints = typing.get_type_hints(section.cls)
    docs = field_docs(section.cls)
    return [KeyHelp(f.name, type_text(hints.get(f.name, f.type)), toml_value(_default(f)), docs.get(f.name, ""))
            for f in dataclasses.fields(section.cls)
            if f.init and (every or section.only is None or f.name in section.only)]


def _changed_fields(cls: type, base: type) -> tuple:
    """Fields of ``cls`` that ``base`` lacks or whose default ``cls`` changes."""
    base_fields = {f.name: f for f in dataclasses.fields(base)}
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.name not in base_fields or _default(f) != _default(base_fields[f.name]))


def sections(builtin_only: bool = True) -> list[Section]:
    """Every table of a recipe, in the order docs/config.md lists them."""
    from rlhfkit.engine.config import RLConfig
    from rlhfkit.plugins import get_registry
    from rlhfkit.recipe import DataSettings, GridSettings, ModelEntry, ReportSettings, RunSettings, TuningSettings
    from rlhfkit.stages.dpo import DPOStageConfig
    from rlhfkit.stages.reward import RewardStageConfig
    from rlhfkit.stages.sft import SFTStageConfig

    registry = get_registry()

    def entries(kind):
        return [e for e in registry.entries[kind].values() if not builtin_only or e.distribution == BUILTIN]

    out = [Section("rl", "[rl]", RLConfig, note="Shared by every algorithm; `[algorithms.<name>]` overrides it.")]
    for e in entries("algorithm"):
        cls = e.obj.config_class
        only = _changed_fields(cls, RLConfig) if issubclass(cls, RLConfig) else None
        out.append(Section(f"algorithms.{e.name}", f"[algorithms.{e.name}]", cls, only,
                           "Keys it adds or whose default differs from `[rl]`; every `[rl]` key applies too."))
    out += [Section("sft", "[sft]", SFTStageConfig), Section("reward_model", "[reward_model]", RewardStageConfig),
            Section("dpo", "[dpo]", DPOStageConfig, note="Used by the `[[models]]` rows with `dpo = true` (a DPO stage "
                    "after SFT; its policy is the RL start and reference)."),
            Section("run", "[run]", RunSettings), Section("report", "[report]", ReportSettings),
            Section("grid", "[grid]", GridSettings, note="`[grid.sweep]` (every algorithm) and `[grid.sweep.<algorithm>]` "
                    "take lists of values of any `[rl]`/`[algorithms.<name>]` key; each value is a setting of its own."),
            Section("tuning", "[tuning]", TuningSettings),
            Section("models", "[[models]]", ModelEntry),
            Section("data", "[data]", DataSettings,
                    note="Keys every data set takes; its own keys follow, per data set.")]
    for e in entries("dataset"):
        out.append(Section(f"data.{e.name}", f'[data] name = "{e.name}"', e.obj.options_class))
    for e in entries("memory_strategy"):
        if getattr(e.obj, "params_class", None) is not None:
            out.append(Section(f"memory.{e.name}", f'memory = ["{e.name}(key=value,...)"]', e.obj.params_class,
                               note="Settings of the part, in parentheses after its name; lists joined by `|`."))
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(builtin_only: bool = True) -> str:
    """The reference as Markdown: one table per section (docs/config.md is this, checked by a test)."""
    lines = []
    for section in sections(builtin_only):
        lines += [f"## `{section.title}`", ""]
        if section.note:
            lines += [section.note, ""]
        keys = section_keys(section)
        if not keys:
            lines += ["(no keys of its own)", ""]
            continue
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        lines += [f"| `{k.name}` | `{_cell(k.type)}` | `{_cell(k.default)}` | {_cell(k.doc)} |" for k in keys]
        lines.append("")
    return "\n".join(lines)


def describe(path: str) -> str:
    """Help for ``rl.kl_coef`` (one key), ``rl`` (a section's keys) or ``""`` (the sections); one-line
    ``ValueError`` with a "did you mean" for an unknown name."""
    from rlhfkit.validation import hint

    known = {s.key: s for s in sections(builtin_only=False)}
    if not path:
        return "\n".join(f"{s.key:24} {s.title}" for s in known.values())
    name, sep, key = path.rpartition(".") if path not in known else (path, "", "")
    if name not in known:
        raise ValueError(f"unknown config section {name or path!r}; known: {', '.join(known)}{hint(name or path, known)}")
    keys = {k.name: k for k in section_keys(known[name], every=True)}
    if not sep:
        return "\n".join(_key_text(name, k) for k in keys.values())
    if key not in keys:
        raise ValueError(f"{name}: unknown key {key!r}; allowed: {', '.join(keys)}{hint(key, keys)}")
    return _key_text(name, keys[key])


def _key_text(section: str, k: KeyHelp) -> str:
    doc = textwrap.indent(k.doc, "    ") if k.doc else "    (undocumented)"
    return f"{section}.{k.name}: {k.type} = {k.default}\n{doc}"


HEADER = """# Configuration reference

Every key a recipe may set, with its type, default and help, generated from the config dataclasses (the
string after each field is its help). This page is the output of `python -m rlhfkit.configdoc` (a test fails
when it drifts: regenerate it with `python -m rlhfkit.configdoc > docs/config.md`); `rlhfkit config KEY`
(e.g. `rlhfkit config rl.kl_coef`) prints one key's help, also for installed third-party plugins.

"""


def main() -> int:
    sys.stdout.write(HEADER + markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
