"""Statistics across seeds: bootstrap confidence intervals of means and of differences of means.

Definitions (also in docs/reports.md):

* **Mean and 95% CI.**  For a group of n per-seed values, the interval is the percentile bootstrap: draw
  ``RESAMPLES`` resamples of size n with replacement (numpy ``default_rng(SEED)``), take each resample's mean,
  and report the 2.5th and 97.5th percentiles (numpy's default linear interpolation) of those means.  With
  n = 1 there is no interval: the value is reported alone.
* **Difference A − B.**  Each group is resampled on its own (independent samples, unpaired), the difference
  of the two resample means is taken, ``RESAMPLES`` times; the interval is its 2.5th/97.5th percentiles.
  When either group has a single value there is no interval.  When the interval contains 0 the difference
  is "not significant" at the stated numbers of seeds.

Nothing here imports torch or matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95

# metric column -> (label, True when higher is better, unit/format)
METRICS = {
    "gold_final": ("final gold reward", True),
    "score_final": ("final proxy score", True),
    "kl_final": ("final KL to SFT", False),
    "peak_memory_bytes": ("peak memory", False),
    "episodes_per_s": ("throughput (episodes/s)", True),
}


@dataclass
class Estimate:
    """A mean over seeds with its bootstrap interval (``low``/``high`` are None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


@dataclass
class Difference:
    """``mean_a - mean_b`` with its bootstrap interval; ``n_a``/``n_b`` seeds behind each side."""

    diff: float
    low: float | None
    high: float | None
    n_a: int
    n_b: int

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0 (and exists)."""
        return self.has_interval and (self.low > 0 or self.high < 0)


def _clean(values) -> np.ndarray:
    array = np.asarray([float(v) for v in values if v is not None and not _isnan(v)], dtype=float)
    return array


def _isnan(value) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(samples, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_means(values, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``resamples`` bootstrap means of ``values`` (each resample: n draws with replacement)."""
    data = _clean(values)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(data), size=(resamples, len(data)))
    return data[index].mean(axis=1)


def mean_ci(values, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> Estimate | None:
    """Mean of the non-missing values and its percentile-bootstrap interval; None when there are none."""
    data = _clean(values)
    if len(data) == 0:
        return None
    mean = float(data.mean())
    if len(data) == 1:
        return Estimate(mean, None, None, 1)
    low, high = _percentiles(bootstrap_means(data, resamples, seed), level)
    return Estimate(mean, low, high, len(data))


def diff_ci(a, b, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> Difference | None:
    """``mean(a) - mean(b)``, each group resampled independently; no interval when either has n = 1."""
    xa, xb = _clean(a), _clean(b)
    if len(xa) == 0 or len(xb) == 0:
        return None
    diff = float(xa.mean() - xb.mean())
    if len(xa) < 2 or len(xb) < 2:
        return Difference(diff, None, None, len(xa), len(xb))
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(xa), size=(resamples, len(xa)))
    ib = rng.integers(0, len(xb), size=(resamples, len(xb)))
    samples = xa[ia].mean(axis=1) - xb[ib].mean(axis=1)
    low, high = _percentiles(samples, level)
    return Difference(diff, low, high, len(xa), len(xb))


def seeds_phrase(n_a: int, n_b: int) -> str:
    return f"n={n_a} seeds" if n_a == n_b else f"n={n_a} and {n_b} seeds"


def verdict(difference: Difference | None, name_a: str, name_b: str, higher_is_better: bool = True) -> str:
    """A plain sentence on a difference ``a - b``."""
    if difference is None:
        return "nothing to compare: no finished cells, or no values of this metric (e.g. no gold reward on real data)"
    seeds = seeds_phrase(difference.n_a, difference.n_b)
    if not difference.has_interval:
        return f"no interval with {seeds}: run at least 2 seeds per algorithm to test the difference"
    if not difference.significant:
        return f"no significant difference at {seeds}"
    better = name_a if (difference.diff > 0) == higher_is_better else name_b
    return f"{better} better: 95% CI excludes 0 at {seeds}"


def winner(difference: Difference | None, name_a: str, name_b: str, higher_is_better: bool = True) -> str | None:
    """The better algorithm by mean (None when no difference could be computed or it is exactly 0)."""
    if difference is None or difference.diff == 0:
        return None
    return name_a if (difference.diff > 0) == higher_is_better else name_b


GROUP_KEYS = ["model", "algorithm", "memory"]


def group_stats(frame, metrics=tuple(METRICS), **kwargs) -> list[dict]:
    """Per (model, algorithm, memory) group of ``ok`` cells: ``{model, algorithm, memory, n, metric: Estimate}``."""
    ok = frame[frame["status"] == "ok"]
    out = []
    for key, group in ok.groupby(GROUP_KEYS, sort=False):
        row = dict(zip(GROUP_KEYS, key))
        row["n"] = len(group)
        row["seeds"] = [int(s) for s in group["seed"]]
        for metric in metrics:
            row[metric] = mean_ci(group[metric].tolist(), **kwargs) if metric in group else None
        out.append(row)
    return out


def algorithm_pairs(algorithms: list[str]) -> list[tuple[str, str]]:
    """Pairs to compare, in grid order; ``ppo`` is put first against ``rloo`` (PPO − RLOO)."""
    pairs = []
    for i, a in enumerate(algorithms):
        for b in algorithms[i + 1:]:
            pairs.append((b, a) if (a, b) == ("rloo", "ppo") else (a, b))
    return pairs


def comparisons(frame, algorithms: list[str] | None = None, metrics=tuple(METRICS), **kwargs) -> list[dict]:
    """For each (model, memory) and pair of algorithms and metric: the difference A − B with its interval.

    Rows: ``{model, memory, a, b, metric, label, higher_is_better, difference, verdict, winner}``.
    """
    ok = frame[frame["status"] == "ok"]
    if algorithms is None:
        algorithms = list(dict.fromkeys(frame["algorithm"]))
    rows = []
    for (model, memory), group in ok.groupby(["model", "memory"], sort=False):
        for a, b in algorithm_pairs(algorithms):
            ga, gb = group[group["algorithm"] == a], group[group["algorithm"] == b]
            if ga.empty or gb.empty:
                continue
            for metric in metrics:
                label, higher = METRICS.get(metric, (metric, True))
                difference = diff_ci(ga[metric].tolist(), gb[metric].tolist(), **kwargs)
                rows.append(
                    {
                        "model": model,
                        "memory": memory,
                        "a": a,
                        "b": b,
                        "metric": metric,
                        "label": label,
                        "higher_is_better": higher,
                        "difference": difference,
                        "verdict": verdict(difference, a, b, higher),
                        "winner": winner(difference, a, b, higher),
                    }
                )
    return rows


def format_estimate(estimate: Estimate | None, digits: int = 3, scale: float = 1.0) -> str:
    """``1.234 [1.100, 1.400]`` or ``1.234`` (n = 1) or ``-``."""
    if estimate is None:
        return "-"
    fmt = f"{{:.{digits}f}}"
    text = fmt.format(estimate.mean / scale)
    if estimate.has_interval:
        text += f" [{fmt.format(estimate.low / scale)}, {fmt.format(estimate.high / scale)}]"
    return text


def format_difference(difference: Difference | None, digits: int = 3, scale: float = 1.0) -> str:
    if difference is None:
        return "-"
    fmt = f"{{:+.{digits}f}}"
    text = fmt.format(difference.diff / scale)
    if difference.has_interval:
        plain = f"{{:.{digits}f}}"
        text += f" [{plain.format(difference.low / scale)}, {plain.format(difference.high / scale)}]"
    return text
