"""Cells grouped for comparison, and the matched-KL analysis the report leads with.

* An **arena** is one (model, memory strategy, phase): the arms in it are compared with each other.  The phase
  is the cell's ``phase`` (results.csv column): ``final`` (each algorithm's tuned setting on fresh seeds),
  ``grid`` (the recipe's settings; several when a key is swept) or ``tuning`` (summarised apart, never compared).
* An **arm** is one algorithm in an arena, across its swept ``settings``: the settings are a within-algorithm
  axis, so a beta sweep gives one frontier per algorithm, not one pseudo-algorithm per beta.
* **Matched KL**: per arm and seed, the checkpoints of all its cells with that seed are pooled (SFT point
  included) and F(b) = max gold over those with KL <= b.  The common range is [0, b_max], b_max the smallest
  of the arms' reach (an arm's reach: the smallest over its seeds of the largest KL the seed reached).  Gold is
  compared at ``FRACTIONS`` of b_max and by the area under F on [0, b_max].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhfkit.report import stats as st
from rlhfkit.results import read_result

FRACTIONS = (0.25, 0.5, 0.75)
PHASE_TITLES = {"final": "tuned vs tuned", "grid": "as configured", "tuning": "tuning seeds"}


def settings_text(value) -> str:
    """``kl_coef=0.1,learning_rate=0.001`` from the results column (a string) or a Cell's tuple of pairs."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    return ",".join(f"{k}={v}" for k, v in value)


@dataclass
class CellRecord:
    """One ``ok`` cell: its results row and evaluation checkpoints (sorted by step, ``samples`` kept)."""

    id: str
    model: str
    algorithm: str
    memory: str
    seed: int
    settings: str
    phase: str
    row: dict
    evals: list[dict]
    cell: object = None
    data_seed: int | None = None
    """The stage stratum (results.csv ``data_seed``); RL seeds of different strata are different runs."""

    def points(self, key: str) -> list[tuple[float, float]]:
        return [(float(e["eval/kl"]), float(e[key])) for e in self.evals
                if e.get("eval/kl") is not None and e.get(key) is not None]


def _evaluations(context, cell) -> list[dict]:
    result = read_result(context.output_dir, cell) or {}
    evals = [e for e in (result.get("evaluations") or []) if "eval/step" in e]
    if not evals:  # older runs: only metrics.jsonl has the eval/* keys
        evals = [{k: v for k, v in r.items() if k.startswith("eval/")} for r in context.metrics(cell) if "eval/step" in r]
    return sorted(evals, key=lambda e: e["eval/step"])


def cell_records(context) -> list[CellRecord]:
    """Every ``ok`` cell in grid order (cached on the context)."""
    if "records" in context.cache:
        return context.cache["records"]
    results = context.results
    rows = {r["cell"]: r for r in results[results["status"] == "ok"].to_dict("records")}
    out = []
    for cell in context.cells():
        row = rows.get(cell.id)
        if row is None:
            continue
        settings = row.get("settings") if isinstance(row.get("settings"), str) else getattr(cell, "settings", ())
        phase = row.get("phase") if isinstance(row.get("phase"), str) and row.get("phase") else getattr(cell, "phase", "grid")
        data_seed = row.get("data_seed")
        data_seed = getattr(cell, "data_seed", None) if st._isnan(data_seed) else int(data_seed)
        out.append(CellRecord(cell.id, cell.model, cell.algorithm, cell.memory, int(cell.seed), settings_text(settings),
                              phase, row, _evaluations(context, cell), cell, data_seed))
    context.cache["records"] = out
    return out


@dataclass
class Arm:
    algorithm: str
    records: list[CellRecord] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.records})

    @property
    def settings(self) -> list[str]:
        return list(dict.fromkeys(r.settings for r in self.records))

    @property
    def units(self) -> list[tuple]:
        """(data seed, RL seed) of each run, strata in first-seen order: one frontier per unit."""
        strata = list(dict.fromkeys(r.data_seed for r in self.records))
        return [(d, s) for d in strata for s in sorted({r.seed for r in self.records if r.data_seed == d})]

    @property
    def strata(self) -> list:
        return list(dict.fromkeys(r.data_seed for r in self.records))

    @property
    def seeds_text(self) -> str:
        """``1, 2 (n=2)``; with several strata ``d0: 1, 2; d1: 1, 2 (n=4 in 2 strata)``."""
        if len(self.strata) < 2:
            return f"{', '.join(map(str, self.seeds))} (n={len(self.seeds)})"
        parts = "; ".join(f"d{d}: " + ", ".join(str(s) for e, s in self.units if e == d) for d in self.strata)
        return f"{parts} (n={len(self.units)} in {len(self.strata)} strata)"

    def points(self, seed, key: str) -> list[tuple[float, float]]:
        """Checkpoints of every cell of this arm with this seed (an RL seed, or a (data seed, RL seed) unit),
        pooled across settings."""
        if isinstance(seed, tuple):
            return [p for r in self.records if (r.data_seed, r.seed) == seed for p in r.points(key)]
        return [p for r in self.records if r.seed == seed for p in r.points(key)]

    def improving(self, key: str = "eval/gold") -> tuple[int, int]:
        """(cells still improving at the end, cells with enough checkpoints to tell)."""
        flags = [st.still_improving(r.evals, key) for r in self.records]
        return sum(1 for f in flags if f), sum(1 for f in flags if f is not None)


@dataclass
class Arena:
    model: str
    memory: str
    phase: str
    arms: list[Arm]
    several: bool = False
    """True when the grid has several models or memory strategies (titles then name them)."""

    @property
    def title(self) -> str:
        where = f"{self.model}, {self.memory}: " if self.several else ""
        if self.phase == "grid" and not any(s for arm in self.arms for s in arm.settings):
            return where + "default vs default"
        return where + PHASE_TITLES.get(self.phase, self.phase)

    def arm_label(self, arm: Arm) -> str:
        settings = [s for s in arm.settings if s]
        if not settings:
            return arm.algorithm
        if len(settings) == 1:
            return f"{arm.algorithm} ({settings[0]})"
        return f"{arm.algorithm} ({len(settings)} settings)"


def arenas(context, phases=("final", "grid")) -> list[Arena]:
    """Arenas of the given phases, in that order; arms in grid order of algorithms."""
    records = cell_records(context)
    order = list(dict.fromkeys(list(context.recipe.grid.algorithms) + [r.algorithm for r in records]))
    several = len({(r.model, r.memory) for r in records}) > 1
    out = []
    for phase in phases:
        keys = list(dict.fromkeys((r.model, r.memory) for r in records if r.phase == phase))
        for model, memory in keys:
            arms = []
            for algorithm in order:
                chosen = [r for r in records if (r.model, r.memory, r.phase, r.algorithm) == (model, memory, phase, algorithm)]
                if chosen:
                    arms.append(Arm(algorithm, chosen))
            out.append(Arena(model, memory, phase, arms, several))
    return out


@dataclass
class MatchedKL:
    arena: Arena
    keys: list[str]
    """``eval/gold`` (when every cell has it) then ``eval/score``; the first is the one tested."""
    b_max: float
    reach: dict[str, float]
    budgets: list[float]
    values: dict[str, dict[tuple, list[float]]]
    """algorithm -> (key, budget or "area") -> one value per unit (``Arm.units``: per seed in one stratum)."""
    comparisons: list = field(default_factory=list)

    @property
    def primary(self) -> str:
        return self.keys[0]


def metric_label(key: str, budget, b_max: float) -> str:
    what = "gold" if key == "eval/gold" else "proxy score"
    return f"{what} frontier area on [0, {b_max:.3g}]" if budget == "area" else f"{what} at KL ≤ {budget:.3g}"


def matched_kl(arena: Arena) -> MatchedKL | None:
    """Frontier values per arm and seed at the budgets, and the Holm-corrected pairwise comparisons."""
    records = [r for arm in arena.arms for r in arm.records]
    if not records or not all(r.points("eval/score") for r in records):
        return None
    has_gold = all(r.points("eval/gold") for r in records)
    keys = ["eval/gold", "eval/score"] if has_gold else ["eval/score"]
    reached = {arm.algorithm: [max(k for k, _ in arm.points(u, "eval/score")) for u in arm.units] for arm in arena.arms}
    b_max, reach = st.common_kl_range(reached)
    budgets = [f * b_max for f in FRACTIONS]
    values = {}
    for arm in arena.arms:
        per = {}
        for key in keys:
            for b in budgets:
                per[(key, b)] = [st.frontier(arm.points(u, key), b) for u in arm.units]
            per[(key, "area")] = [st.frontier_area(arm.points(u, key), b_max) for u in arm.units]
        values[arm.algorithm] = per
    result = MatchedKL(arena, keys, b_max, reach, budgets, values)
    if b_max <= st.KL_ZERO:
        return result  # no arm moved away from the SFT policy: nothing to compare at matched KL
    tested = [(keys[0], b) for b in budgets] + [(keys[0], "area")]
    strata = {arm.algorithm: [d for d, _ in arm.units] for arm in arena.arms}
    for a, b in st.algorithm_pairs([arm.algorithm for arm in arena.arms]):
        family = []
        for key, budget in tested:
            label = metric_label(key, budget, b_max)
            family.append(st.compare(values[a][(key, budget)], values[b][(key, budget)], "gold_at_kl", a, b, label,
                                     direction=True, strata_a=strata[a], strata_b=strata[b]))
        result.comparisons += st.decide(family)
    return result


def tuning_summary(context) -> list[dict]:
    """Per algorithm with tuning cells: the swept keys, settings tried, seeds per setting, mean final gold per
    setting, and the tuned setting (the settings of its ``final`` cells)."""
    records = cell_records(context)
    tuning = [r for r in records if r.phase == "tuning"]
    out = []
    for algorithm in dict.fromkeys(r.algorithm for r in tuning):
        mine = [r for r in tuning if r.algorithm == algorithm]
        settings = list(dict.fromkeys(r.settings for r in mine))
        keys = list(dict.fromkeys(part.split("=")[0] for s in settings for part in s.split(",") if part))
        final = list(dict.fromkeys(r.settings for r in records if r.phase == "final" and r.algorithm == algorithm))
        rows = []
        for s in settings:
            cells = [r for r in mine if r.settings == s]
            gold = st.t_interval([r.row.get("gold_final") for r in cells])
            kl = st.t_interval([r.row.get("kl_final") for r in cells])
            rows.append({"settings": s, "n": len(cells), "gold": gold, "kl": kl})
        out.append({"algorithm": algorithm, "keys": keys, "settings": rows, "tuned": final,
                    "seeds": sorted({r.seed for r in mine})})
    return out


def variance_rows(arena: Arena, m: MatchedKL | None) -> list[dict]:
    """Per arm with cells in ≥ 2 strata: the variance split (:func:`stats.variance_split`) of final gold and,
    when matched KL was computed, of gold at each budget.  Rows: ``{arm, metric, split}``."""
    rows = []
    for arm in arena.arms:
        if len(arm.strata) < 2:
            continue
        metrics = [("final gold", [r.row.get("gold_final") for r in arm.records], [r.data_seed for r in arm.records])]
        if m is not None and m.b_max > st.KL_ZERO:
            units = [d for d, _ in arm.units]
            metrics += [(metric_label(m.primary, b, m.b_max), m.values[arm.algorithm][(m.primary, b)], units)
                        for b in m.budgets]
        for label, values, strata in metrics:
            split = st.variance_split(values, strata)
            if split is not None:
                rows.append({"arm": arena.arm_label(arm), "metric": label, "split": split})
    return rows
