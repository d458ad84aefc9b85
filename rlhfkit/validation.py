"""Generic checks every recipe value goes through, whatever dataclass it lands in.

- numbers: finite only (TOML's ``nan`` and ``inf`` are refused for every float field);
- ranges by field name (:data:`FIELD_RANGES`): seeds, sizes with sane upper bounds, rates, norms, timeouts;
  a config dataclass's own ``__post_init__`` checks still run after these (cross-field rules);
- strings: no control characters (a name ending in a newline would make a second line in every log);
- "did you mean" suggestions for misspelt names (:func:`did_you_mean`).

A cell seeds numpy with ``seed * 1000 + rank`` (rank < ``num_processes`` <= :data:`MAX_PROCESSES`), and numpy
takes seeds below 2**32, so every seed must be at most :data:`MAX_SEED`.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Iterable

MAX_PROCESSES = 1000
"""Processes per cell (ranks 0..999): the seed bound below leaves room for them."""
MAX_SEED = (2**32 - MAX_PROCESSES) // 1000
"""4,294,966: the largest seed with ``seed * 1000 + rank < 2**32`` for every rank < MAX_PROCESSES."""
MAX_SECONDS = 30 * 24 * 3600
"""Timeouts: at most 30 days."""
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``ge``/``gt`` below, ``le`` above (None = unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    why: str = ""
    """Why the bound is there (appended to the error)."""

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
        )

    def text(self, key: str) -> str:
        parts = []
        if self.ge is not None:
            parts.append(f">= {self.ge:,g}" if isinstance(self.ge, float) else f">= {self.ge:,}")
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.le is not None:
            parts.append(f"<= {self.le:,g}" if isinstance(self.le, float) else f"<= {self.le:,}")
        return f"{key} " + " and ".join(parts) + (f" ({self.why})" if self.why else "")


SEED = Range(ge=0, le=MAX_SEED, why="numpy is seeded with seed * 1000 + rank, which must stay below 2**32")
# Field name -> allowed range, for every config dataclass that has a field of that name (ints and floats).
FIELD_RANGES: dict[str, Range] = {
    "seed": SEED,
    "seeds": SEED,
    "data_seed": SEED,
    "response_length": Range(le=32768),
    "max_length": Range(le=131072),
    "batch_size": Range(le=65536),
    "eval_batch_size": Range(le=65536),
    "score_batch_size": Range(le=65536),
    "eval_samples_per_prompt": Range(le=1024),
    "k": Range(le=1024),
    "steps": Range(le=10_000_000),
    "epochs": Range(le=10_000),
    "num_epochs": Range(le=10_000),
    "num_minibatches": Range(le=65536),
    "eval_every": Range(le=10_000_000),
    "num_evals": Range(le=10_000),
    "top_k": Range(le=10_000_000),
    "adaptive_kl_horizon": Range(le=10**12),
    "max_grad_norm": Range(gt=0),
    "weight_decay": Range(ge=0),
    "learning_rate": Range(gt=0),
    "value_learning_rate": Range(gt=0),
    "temperature": Range(gt=0),
    "warmup_ratio": Range(ge=0, le=1),
    "eval_fraction": Range(ge=0, le=1),
    "positive_rate": Range(ge=0, le=1),
    "negative_rate": Range(ge=0, le=1),
    "label_noise": Range(ge=0, le=1),
    "gamma": Range(ge=0, le=1),
    "lam": Range(ge=0, le=1),
    "num_sft": Range(le=10_000_000),
    "num_pairs": Range(le=10_000_000),
    "num_eval_pairs": Range(le=10_000_000),
    "num_eval_prompts": Range(le=1_000_000),
    "max_pairs": Range(le=10**9),
    "max_rl_prompts": Range(le=10**9),
    "max_prompt_chars": Range(le=10**8),
    "max_completion_chars": Range(le=10**8),
    "min_words": Range(le=10_000),
    "max_words": Range(le=10_000),
    "tokenizer_vocab_size": Range(le=1_000_000),
    "parallel_cells": Range(ge=1, le=1024),
    "threads_per_cell": Range(ge=0, le=4096),
    "num_processes": Range(ge=1, le=MAX_PROCESSES),
    "num_gpus": Range(ge=0, le=MAX_PROCESSES),
    "gpu_memory_gib": Range(ge=0, le=1_000_000),
    "cell_timeout_s": Range(gt=0, le=MAX_SECONDS),
    "stage_timeout_s": Range(gt=0, le=MAX_SECONDS),
    "kl_budget": Range(gt=0),
    "diverge_approxkl": Range(ge=0, why="0 = no check"),
    "diverge_grad_norm": Range(ge=0, why="0 = no check"),
}


def closest(name: Any, known: Iterable[str]) -> str | None:
    """The known name closest to a misspelt one (difflib), or None."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: Any, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``."""
    close = closest(name, known)
    return f" (did you mean {close!r}?)" if close else ""


def hint(name: Any, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` to end a one-line error that lists the allowed names, or ``""``.  Names that
    start with what was written come first (``V100`` -> ``V100-16GB``, ``V100-32GB``)."""
    known = [str(k) for k in known]
    longer = [k for k in known if str(name) and k.startswith(str(name))]
    if len(longer) > 1:
        return f"; did you mean one of: {', '.join(repr(k) for k in longer)}?"
    close = longer[0] if longer else closest(name, known)
    if close is None:
        # a short name spelt out (``rank`` for LoRA's ``r``): difflib scores it too low, the prefix finds it
        shorter = [k for k in known if k and str(name).startswith(k)]
        close = max(shorter, key=len) if shorter else None
    return f"; did you mean {close!r}?" if close else ""


def check_number(value: float, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(f"{where}: expected a finite number, got {value!r}")


def check_string(value: str, where: str) -> None:
    if CONTROL.search(value):
        raise _error(f"{where}: {value!r} contains a control character (newline, tab, ...); not allowed")


def check_range(key: str, value: Any, where: str) -> None:
    """``value`` (a number or a list of numbers) against :data:`FIELD_RANGES` under the field's name."""
    allowed = FIELD_RANGES.get(key)
    if allowed is None:
        return
    items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
    for i, item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if not allowed.holds(item):
            at = where if i is None else f"{where}[{i}]"
            raise _error(f"{at}: {item!r} is out of range; allowed: {allowed.text(key)}")


def literal_choices(tp) -> tuple | None:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``X | None``), or None."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp) if typing.get_origin(tp) is not None else ():
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return None


def choice_error(key: str, value: Any, choices: tuple) -> str:
    """``key must be one of: a, b (got 'x'); did you mean 'a'?`` (one line)."""
    listed = ", ".join(str(c) for c in choices)
    return f"{key} must be one of: {listed} (got {value!r}){hint(value, [str(c) for c in choices])}"


@functools.lru_cache(maxsize=None)
def _literal_fields(cls: type) -> tuple:
    hints = typing.get_type_hints(cls)
    return tuple((name, choices) for name, tp in hints.items() if (choices := literal_choices(tp)) is not None)


def check_choices(obj) -> None:
    """Every ``Literal[...]`` field of a dataclass instance holds one of its choices; ``ValueError`` (one line)
    otherwise.  Config ``__post_init__``s call it, so a config built in code is checked like one from a recipe
    (where :func:`rlhfkit.recipe.build_dataclass` checks the choices before the instance exists)."""
    for name, choices in _literal_fields(type(obj)):
        value = getattr(obj, name)
        if value not in choices and not (value is None and None in choices):
            raise ValueError(choice_error(name, value, choices))


def _error(message: str) -> Exception:
    from rlhfkit.recipe import RecipeError

    return RecipeError(message)
