"""Per-step and per-evaluation series of a run, and the over-optimisation point.

Training curves come from each finished cell's ``metrics.jsonl`` (``episode``, ``objective/scores``,
``objective/gold``); evaluation points (``eval/step``, ``eval/kl``, ``eval/score``, ``eval/gold``) come from
``result.json``'s ``evaluations`` (step 0 is the SFT policy), else from the ``eval/*`` keys in
``metrics.jsonl``.

**Where gold stops improving.**  For one algorithm (and model, memory) take the evaluation steps every
finished seed has (step 0 = SFT policy), and average ``eval/gold`` and ``eval/kl`` over seeds at each step:
g_0 .. g_T and k_0 .. k_T.  Let the tolerance be ``PLATEAU_FRACTION`` (5%) of the best gain,
tol = 0.05 * (max g − g_0).  Gold *stops improving* at the earliest evaluation t after which it never gains
more than tol: max(g_t .. g_T) − g_t <= tol.  The KL at which gold stops improving is k_t.  If t is the last
evaluation (gold still gaining more than tol at the end), it is "not reached" and reported as > k_T.
The *gold peak* is the earliest step with the highest mean gold; ``gold drop`` is peak gold − final gold and
``proxy change`` what the proxy score did over the same stretch (over-optimisation: proxy up, gold down).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rlhfkit.results import read_result


def evaluations(context, cell) -> list[dict]:
    """Evaluation points of a cell, ordered by step (empty if it has none)."""
    result = read_result(context.output_dir, cell) or {}
    points = [
        {k: v for k, v in e.items() if k != "samples"} for e in (result.get("evaluations") or []) if "eval/step" in e
    ]
    if not points:
        for row in context.metrics(cell):
            if "eval/step" in row:
                points.append({k: v for k, v in row.items() if k.startswith("eval/")})
    points.sort(key=lambda e: e["eval/step"])
    return points


@dataclass
class Series:
    """Mean and band (min–max over seeds) of one metric against x, for one group of cells."""

    label: str
    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


def _settings(cell) -> str:
    return ",".join(f"{k}={v}" for k, v in getattr(cell, "settings", ()) or ())


def finished_groups(context) -> dict[tuple, list]:
    """(model, algorithm, memory, settings, phase) -> the ``ok`` cells of that group (its seeds), in grid order.
    ``settings``/``phase`` are the cell's swept settings and phase ("" and "grid" without a sweep)."""
    ok = set(context.results.loc[context.results["status"] == "ok", "cell"])
    groups: dict[tuple, list] = {}
    for cell in context.cells():
        if cell.id in ok:
            key = (cell.model, cell.algorithm, cell.memory, _settings(cell), getattr(cell, "phase", "grid"))
            groups.setdefault(key, []).append(cell)
    return groups


def group_label(context, key) -> str:
    """``ppo``, or ``model / ppo / memory`` when the grid has several models or memory strategies, with the
    swept settings and a non-grid phase appended: ``ppo (kl_coef=0.1, tuning)``."""
    cells = context.cells()
    model, algorithm, memory = key[:3]
    settings, phase = (key[3], key[4]) if len(key) > 3 else ("", "grid")
    parts = [algorithm]
    if len({c.model for c in cells}) > 1:
        parts.insert(0, model)
    if len({c.memory for c in cells}) > 1:
        parts.append(memory)
    extra = [x for x in (settings, "" if phase == "grid" else phase) if x]
    return " / ".join(parts) + (f" ({', '.join(extra)})" if extra else "")


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def training_series(context, metric: str, smooth: int = 1) -> list[Series]:
    """Per group: ``metric`` against episodes (mean over seeds at each step, band min–max)."""
    out = []
    for key, cells in finished_groups(context).items():
        per_cell = []
        for cell in cells:
            rows = [r for r in context.metrics(cell) if metric in r and "episode" in r]
            if rows:
                per_cell.append({int(r["step"]): (float(r["episode"]), float(r[metric])) for r in rows})
        if not per_cell:
            continue
        steps = sorted(set.intersection(*(set(d) for d in per_cell)))
        if not steps:
            continue
        x = np.array([np.mean([d[s][0] for d in per_cell]) for s in steps])
        values = np.array([[d[s][1] for s in steps] for d in per_cell])
        values = np.vstack([_smooth(v, smooth) for v in values])
        out.append(Series(group_label(context, key), x, values.mean(0), values.min(0), values.max(0), len(per_cell)))
    return out


@dataclass
class EvalCurve:
    """Evaluation points of one group: per step, the mean over seeds (and each seed's points)."""

    key: tuple
    label: str
    steps: list[int]
    kl: np.ndarray
    gold: np.ndarray | None
    score: np.ndarray
    n: int
    per_cell: list[list[dict]] = field(default_factory=list)


def eval_curves(context) -> list[EvalCurve]:
    out = []
    for key, cells in finished_groups(context).items():
        per_cell = [evaluations(context, c) for c in cells]
        per_cell = [p for p in per_cell if p]
        if not per_cell:
            continue
        common = sorted(set.intersection(*({int(e["eval/step"]) for e in p} for p in per_cell)))
        if not common:
            continue
        lookup = [{int(e["eval/step"]): e for e in p} for p in per_cell]

        def mean(name):
            return np.array([np.mean([d[s][name] for d in lookup]) for s in common])

        has_gold = all("eval/gold" in d[s] and d[s]["eval/gold"] is not None for d in lookup for s in common)
        out.append(
            EvalCurve(
                key=key,
                label=group_label(context, key),
                steps=common,
                kl=mean("eval/kl"),
                gold=mean("eval/gold") if has_gold else None,
                score=mean("eval/score"),
                n=len(per_cell),
                per_cell=per_cell,
            )
        )
    return out


PLATEAU_FRACTION = 0.05


@dataclass
class GoldPeak:
    """Where gold stops improving (``step``, ``kl``, ``gold``; ``reached``) and where it peaks (``peak_*``)."""

    label: str
    n: int
    reached: bool
    step: int
    kl: float
    gold: float
    peak_step: int
    peak_kl: float
    gold_peak: float
    gold_final: float
    gold_start: float
    score_change_after: float
    kl_final: float
    tolerance: float

    @property
    def gold_drop(self) -> float:
        return self.gold_peak - self.gold_final


def gold_peak(curve: EvalCurve, fraction: float = PLATEAU_FRACTION) -> GoldPeak | None:
    """Where gold stops improving along one group's mean evaluation curve (see the module docstring)."""
    if curve.gold is None or len(curve.steps) == 0:
        return None
    g = curve.gold
    last = len(curve.steps) - 1
    peak = int(np.argmax(g))  # earliest maximum
    tolerance = fraction * max(0.0, float(g[peak] - g[0]))
    stop = next(t for t in range(last + 1) if float(g[t:].max() - g[t]) <= tolerance)
    return GoldPeak(
        label=curve.label,
        n=curve.n,
        reached=stop < last,
        step=curve.steps[stop],
        kl=float(curve.kl[stop]),
        gold=float(g[stop]),
        peak_step=curve.steps[peak],
        peak_kl=float(curve.kl[peak]),
        gold_peak=float(g[peak]),
        gold_final=float(g[last]),
        gold_start=float(g[0]),
        score_change_after=float(curve.score[last] - curve.score[peak]),
        kl_final=float(curve.kl[last]),
        tolerance=tolerance,
    )
