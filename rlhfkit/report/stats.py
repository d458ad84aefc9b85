"""Statistics across seeds.

Two families live here (definitions also in docs/reports.md):

* **Bootstrap of a mean / of a difference** (``mean_ci``/``diff_ci``, the older percentile bootstrap): kept for
  callers that want it, but *not* used for verdicts: with 2 seeds it is exactly the range of the two values
  and a "95%" interval covers the truth about half the time.
* **Small-sample statistics on scipy** (what the report uses): a t interval of a mean, the Welch t interval and
  p-value of a difference of means, an exact permutation p-value, rliable's interquartile mean (IQM) with a
  stratified bootstrap interval and probability of improvement, Holm's correction across the metrics compared,
  and the smallest effect a two-sided Welch test can detect at the seeds available.  Verdicts ("X better") are
  only given with >= ``MIN_SEEDS`` seeds per arm and a Holm-adjusted Welch p < ``ALPHA``.
* **Matched KL**: the frontier F(b) = max gold over checkpoints with KL <= b and its area on [0, b_max].

scipy is imported inside the functions that use it (``rlhfkit --help`` does not load it).
"""

from __future__ import annotations

import functools
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


# -- metric directions ----------------------------------------------------------------------------------------

# Used only when the plugin registry has no MetricSpec for the metric (the "metric" kind comes from the engine
# branch); True = higher is better, False = lower is better, None = no direction (no verdict).
FALLBACK_DIRECTIONS = {
    "gold_final": True, "score_final": True, "kl_final": False, "gold_gain": True,
    "eval/gold": True, "eval/score": True, "eval/kl": False, "objective/gold": True, "objective/scores": True,
    "objective/kl": False, "peak_memory_bytes": False, "generation_peak_bytes": False, "scoring_peak_bytes": False,
    "training_peak_bytes": False, "planned_memory_bytes": False, "episodes_per_s": True, "tokens_per_s": True,
    "gold_at_kl": True, "score_at_kl": True, "gold_area": True, "score_area": True,
    "ledger/cpu_s": False, "ledger/wall_s": False, "length_final": None, "eos_rate_final": None,
}


def higher_is_better(metric: str) -> bool | None:
    """Direction of a metric: the registry's ``MetricSpec.higher_is_better`` when one is registered, else
    :data:`FALLBACK_DIRECTIONS` (None: no direction, so no verdict).  The one place that decides it."""
    try:
        from rlhfkit.plugins import get_registry

        spec = get_registry().get("metric", metric)
        return spec.higher_is_better
    except Exception:  # no "metric" kind on this version, or the metric is not registered
        return FALLBACK_DIRECTIONS.get(metric, True)


# -- small-sample statistics (scipy) --------------------------------------------------------------------------

MIN_SEEDS = 4
"""No "better"/"worse" verdict with fewer seeds than this per arm: below it a nominal-5% test over-fires (see
docs/reports.md) and an exact permutation test cannot even reach p < 0.05 at 2 vs 2 (its smallest p is 1/3)."""
ALPHA = 0.05
POWER = 0.8
PERMUTATIONS = 20_000
"""Exact permutation test when the number of distinct splits C(n_a + n_b, n_a) is at most this (5 vs 5: 252,
7 vs 7: 3,432); otherwise this many random permutations."""
IQM_RESAMPLES = 2_000
MEMORY_PRACTICAL = 0.05
"""A memory difference smaller than this share of the larger peak is never called better (practical significance)."""
LR_ZERO = 1e-3
"""The LR "has reached 0" at a checkpoint when it is at most this fraction of the cell's largest LR."""


def t_interval(values, level: float = LEVEL) -> Estimate | None:
    """Mean and Student t interval (mean ± t_{n-1} · s/√n); no interval at n = 1."""
    data = _clean(values)
    if len(data) == 0:
        return None
    mean = float(data.mean())
    if len(data) == 1:
        return Estimate(mean, None, None, 1)
    from scipy import stats

    sem = float(stats.sem(data))
    if sem == 0:
        return Estimate(mean, mean, mean, len(data))
    low, high = stats.t.interval(level, len(data) - 1, loc=mean, scale=sem)
    return Estimate(mean, float(low), float(high), len(data))


@dataclass
class Welch:
    """``mean_a - mean_b`` with Welch's t interval (``df`` by Welch–Satterthwaite) and two-sided p-value."""

    diff: float
    low: float | None
    high: float | None
    df: float | None
    p: float
    n_a: int
    n_b: int

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


def welch(a, b, level: float = LEVEL) -> Welch | None:
    """Welch's unequal-variance t test of mean(a) − mean(b) (``scipy.stats.ttest_ind(equal_var=False)``)."""
    xa, xb = _clean(a), _clean(b)
    if len(xa) == 0 or len(xb) == 0:
        return None
    diff = float(xa.mean() - xb.mean())
    if len(xa) < 2 or len(xb) < 2 or (np.ptp(xa) == 0 and np.ptp(xb) == 0):
        # one seed, or no spread on either side: no standard error, so neither interval nor p-value
        return Welch(diff, None, None, None, math.nan, len(xa), len(xb))
    import warnings

    from scipy import stats

    with warnings.catch_warnings():  # nearly identical seeds warn about precision; the result is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(xa, xb, equal_var=False)
    ci = result.confidence_interval(level)
    return Welch(diff, float(ci.low), float(ci.high), float(result.df), float(result.pvalue), len(xa), len(xb))


def permutation_p(a, b, resamples: int = PERMUTATIONS, seed: int = SEED) -> tuple[float, bool]:
    """Two-sided permutation p-value of mean(a) − mean(b) and whether it is exact (every split enumerated)."""
    xa, xb = _clean(a), _clean(b)
    if len(xa) == 0 or len(xb) == 0:
        return math.nan, False
    from scipy import stats

    def statistic(x, y, axis):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    exact = math.comb(len(xa) + len(xb), len(xa)) <= resamples
    result = stats.permutation_test((xa, xb), statistic, permutation_type="independent", vectorized=True,
                                    n_resamples=resamples, alternative="two-sided", rng=seed)
    return float(result.pvalue), exact


def probability_of_improvement(x, y) -> float | None:
    """P(X > Y) + ½·P(X = Y) for one run of each (rliable's probability of improvement on one task): the
    Mann–Whitney U statistic of ``x`` divided by n_x·n_y."""
    xs, ys = _clean(x), _clean(y)
    if len(xs) == 0 or len(ys) == 0:
        return None
    import warnings

    from scipy import stats

    with warnings.catch_warnings():  # all-tied samples warn about the p-value, which is not used
        warnings.simplefilter("ignore")
        u = stats.mannwhitneyu(xs, ys, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (len(xs) * len(ys))


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (nan stays nan and does not count in the family).

    Hand-written because scipy has no Holm (``false_discovery_control`` is Benjamini–Hochberg/Yekutieli) and
    statsmodels would be a dependency for six lines: sort the m p-values, multiply the i-th smallest by m − i,
    take the running maximum, cap at 1."""
    p = np.asarray([float(v) for v in pvalues], dtype=float)
    out = np.full(len(p), math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def _iqm_weights(n: int) -> np.ndarray:
    """Weight of each sorted value in the IQM: value i (1-based) covers [i−1, i) on a 0..n axis; its weight is
    the part of that interval inside [n/4, 3n/4], so the values straddling a cut count fractionally."""
    edges = np.arange(n + 1, dtype=float)
    return np.clip(np.minimum(edges[1:], 0.75 * n) - np.maximum(edges[:-1], 0.25 * n), 0.0, None)


def iqm(values) -> float | None:
    """Interquartile mean: the mean of the middle 50% of the sorted values, with fractional weights at the
    25%/75% cuts (equal to ``scipy.stats.trim_mean(x, 0.25)``, rliable's IQM, when n is a multiple of 4)."""
    data = np.sort(_clean(values))
    if len(data) == 0:
        return None
    weights = _iqm_weights(len(data))
    return float(weights @ data / weights.sum())


def iqm_ci(strata, level: float = LEVEL, resamples: int = IQM_RESAMPLES, seed: int = SEED) -> Estimate | None:
    """IQM of all runs pooled, with rliable's stratified percentile bootstrap: each stratum (task or setting)
    resampled with replacement on its own, the IQM of the pooled resample taken ``resamples`` times.  One
    stratum is the plain bootstrap over runs.  Strata with one run are kept fixed (they cannot be resampled)."""
    strata = [s for s in (_clean(x) for x in strata) if len(s)]
    if not strata:
        return None
    pooled = np.concatenate(strata)
    point = iqm(pooled)
    varied = [s for s in strata if len(s) > 1]
    if not varied:
        return Estimate(point, None, None, len(pooled))
    fixed = np.concatenate([s for s in strata if len(s) == 1] or [np.empty(0)])
    weights = _iqm_weights(len(pooled))
    import warnings

    from scipy import stats

    def statistic(*samples, axis=-1):
        batch = samples[0].shape[:-1]
        parts = [np.moveaxis(s, axis, -1) for s in samples] + [np.broadcast_to(fixed, batch + fixed.shape)]
        return np.sort(np.concatenate(parts, axis=-1), axis=-1) @ weights / weights.sum()

    with warnings.catch_warnings():  # identical values make a degenerate (but correct) distribution
        warnings.simplefilter("ignore")
        result = stats.bootstrap(tuple(varied), statistic, n_resamples=resamples, vectorized=True, axis=-1,
                                 confidence_level=level, method="percentile", rng=seed)
    return Estimate(point, float(result.confidence_interval.low), float(result.confidence_interval.high), len(pooled))


@functools.lru_cache(maxsize=256)
def detectable_effect(n_a: int, n_b: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Smallest true difference, in standard deviations, that a two-sided two-sample t test at ``alpha`` detects
    with probability ``power`` at these seed counts: solve power(d) = ``power`` with the noncentral t
    (df = n_a + n_b − 2, noncentrality d / √(1/n_a + 1/n_b)).  Welch's df is at most this, so the true figure
    for the Welch test is slightly larger; Holm's correction raises it further when several metrics are tested."""
    if n_a < 2 or n_b < 2:
        return None
    from scipy import optimize, stats

    df = n_a + n_b - 2
    critical = stats.t.ppf(1 - alpha / 2, df)
    scale = math.sqrt(1 / n_a + 1 / n_b)

    def shortfall(d):
        nc = d / scale
        return stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc) - power

    high = 1.0
    while shortfall(high) < 0:  # bracket the root (the noncentral t turns to nan for huge noncentrality)
        high *= 2
        if high > 64:
            return None
    return float(optimize.brentq(shortfall, 0.0, high))


def pooled_sd(a, b) -> float | None:
    xa, xb = _clean(a), _clean(b)
    if len(xa) < 2 or len(xb) < 2:
        return None
    ss = (len(xa) - 1) * xa.var(ddof=1) + (len(xb) - 1) * xb.var(ddof=1)
    return float(math.sqrt(ss / (len(xa) + len(xb) - 2)))

# -- comparisons and verdicts ---------------------------------------------------------------------------------

@dataclass
class Comparison:
    """Arm ``a`` against arm ``b`` on one metric: Welch, permutation, probability of improvement, detectable
    effect; ``p_holm``, ``verdict`` and ``winner`` are filled by :func:`decide` over a family of comparisons."""

    metric: str
    label: str
    a: str
    b: str
    higher_is_better: bool | None
    difference: Welch | None
    p_perm: float = math.nan
    perm_exact: bool = False
    poi: float | None = None
    """P(a's run better than b's run), ties ½ (for a lower-is-better metric: P(a < b))."""
    mde_sd: float | None = None
    mde: float | None = None
    blocked: str = ""
    """Why no verdict is allowed whatever the p-value (different run conditions...); "" when none."""
    practical: float = 0.0
    """A difference smaller than this (metric units) is never called better."""
    p_holm: float = math.nan
    verdict: str = ""
    winner: str | None = None
    strata: int = 0
    """Blocked by stage stratum (several data seeds): the number of strata ``difference`` rests on; 0 = cells
    compared as independent replicates (one stratum)."""
    conditional: Welch | None = None
    """Blocked comparisons only: the pooled-within-stratum Welch over all cells, conditional on these reward models."""

    @property
    def significant(self) -> bool:
        return self.winner is not None and self.verdict.startswith(f"{self.winner} better")


def compare(values_a, values_b, metric: str, a: str, b: str, label: str | None = None, blocked: str = "",
            practical: float = 0.0, direction: bool | None | str = "registry", strata_a=None,
            strata_b=None) -> Comparison:
    """Every statistic of one comparison (no verdict yet: that needs the whole family, see :func:`decide`).
    ``strata_a``/``strata_b``: each value's stage stratum (data seed); with several, see :func:`compare_blocked`."""
    higher = higher_is_better(metric) if direction == "registry" else direction
    if strata_a is not None and strata_b is not None and len(set(strata_a) | set(strata_b)) > 1:
        return compare_blocked(values_a, values_b, strata_a, strata_b, metric, a, b, label, blocked, practical, higher)
    difference = welch(values_a, values_b)
    c = Comparison(metric, label or metric, a, b, higher, difference, blocked=blocked, practical=practical)
    if difference is None:
        return c
    if difference.n_a >= 2 and difference.n_b >= 2:
        c.p_perm, c.perm_exact = permutation_p(values_a, values_b)
        c.mde_sd = detectable_effect(difference.n_a, difference.n_b)
        sd = pooled_sd(values_a, values_b)
        c.mde = c.mde_sd * sd if c.mde_sd is not None and sd is not None else None
    poi = probability_of_improvement(values_a, values_b)
    c.poi = (1.0 - poi if higher is False else poi) if poi is not None else None
    return c


def decide(family: list[Comparison]) -> list[Comparison]:
    """Holm-adjust the Welch p-values of ``family`` (the metrics compared for one pair of arms) and write each
    verdict: "X better" only with >= MIN_SEEDS seeds per arm, Holm-adjusted p < ALPHA, a direction, no blocker
    and a difference at least ``practical``."""
    tested = [c for c in family if c.difference is not None and not c.blocked]
    for c, p in zip(tested, holm([c.difference.p for c in tested])):
        c.p_holm = p
    for c in family:
        c.verdict, c.winner = _verdict(c)
    return family


def _p_text(c: Comparison) -> str:
    perm = f"{c.p_perm:.3g}" + (" exact" if c.perm_exact else "") if not math.isnan(c.p_perm) else "-"
    return f"Holm-adjusted Welch p = {c.p_holm:.3g}, permutation p = {perm}"


def _verdict(c: Comparison) -> tuple[str, str | None]:
    d = c.difference
    if d is None:
        return "nothing to compare: no finished cells, or no values of this metric (e.g. no gold reward)", None
    if c.strata and c.strata < MIN_SEEDS:  # RL seeds are nested in reward models: the strata are the replicates
        return f"too few data seeds to compare: {c.strata} reward-model strata, {MIN_SEEDS} needed", None
    if min(d.n_a, d.n_b) < MIN_SEEDS:
        per_arm = str(d.n_a) if d.n_a == d.n_b else f"{d.n_a} and {d.n_b}"
        return f"too few seeds to compare: {per_arm} per arm, {MIN_SEEDS} needed", None
    if c.blocked:
        return c.blocked, None
    seeds = f"n={c.strata} reward-model strata" if c.strata else seeds_phrase(d.n_a, d.n_b)
    if math.isnan(c.p_holm):
        return f"no verdict: no spread over seeds at {seeds}, the Welch test is undefined", None
    if c.p_holm >= ALPHA:
        mde = f"; smallest effect detectable at this n: {c.mde:.3g} ({c.mde_sd:.2f} SD)" if c.mde is not None else ""
        return f"no difference detected at {seeds} ({_p_text(c)}){mde}", None
    if c.higher_is_better is None:
        return f"the arms differ ({_p_text(c)}); this metric has no better direction", None
    if abs(d.diff) < c.practical:
        return f"no verdict: |difference| below the practical threshold {c.practical:.3g} ({_p_text(c)})", None
    winner = c.a if (d.diff > 0) == c.higher_is_better else c.b
    return f"{winner} better ({_p_text(c)}, {seeds})", winner


# -- stage strata (several data seeds: reward models as an outer stratum) --------------------------------------

def by_stratum(values, strata) -> dict:
    """``{stratum: clean values}`` in first-seen order (strata without a finite value left out)."""
    out: dict = {}
    for value, stratum in zip(values, strata):
        out.setdefault(stratum, []).append(value)
    return {k: v for k, v in ((k, _clean(v)) for k, v in out.items()) if len(v)}


def blocked_welch(a, b, strata_a, strata_b, level: float = LEVEL) -> Welch | None:
    """A − B blocked by stratum: per stratum shared by both arms the difference of the arms' means over RL seeds;
    their mean with a one-sample t interval and p-value over strata (df = S − 1, ``n_a = n_b = S``).  Every
    algorithm of a stratum is scored by the same reward model, so the stratum is the replicate, not the cell."""
    ma, mb = by_stratum(a, strata_a), by_stratum(b, strata_b)
    shared = [k for k in ma if k in mb]
    if not shared:
        return None
    d = np.array([ma[k].mean() - mb[k].mean() for k in shared])
    n = len(d)
    if n < 2 or np.ptp(d) == 0:
        return Welch(float(d.mean()), None, None, None, math.nan, n, n)
    import warnings

    from scipy import stats

    with warnings.catch_warnings():  # nearly identical differences warn about precision; the result is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(d, 0.0)
    ci = result.confidence_interval(level)
    return Welch(float(d.mean()), float(ci.low), float(ci.high), float(n - 1), float(result.pvalue), n, n)


def conditional_welch(a, b, strata_a, strata_b, level: float = LEVEL) -> Welch | None:
    """The same mean of per-stratum differences, with the strata held fixed (conditional on these reward
    models): variance Σ_s (s²_A,s/n_A,s + s²_B,s/n_B,s) / S² from the RL seeds within strata, df by
    Welch–Satterthwaite over the 2S groups; ``n_a``/``n_b`` count cells.  None unless every shared stratum
    has ≥ 2 cells per arm."""
    ma, mb = by_stratum(a, strata_a), by_stratum(b, strata_b)
    shared = [k for k in ma if k in mb]
    groups = [g for k in shared for g in (ma[k], mb[k])]
    if not shared or any(len(g) < 2 for g in groups):
        return None
    diff = float(np.mean([ma[k].mean() - mb[k].mean() for k in shared]))
    parts = np.array([g.var(ddof=1) / len(g) for g in groups]) / len(shared) ** 2
    n_a, n_b = sum(len(ma[k]) for k in shared), sum(len(mb[k]) for k in shared)
    if parts.sum() == 0:
        return Welch(diff, None, None, None, math.nan, n_a, n_b)
    from scipy import stats

    df = float(parts.sum() ** 2 / sum(p * p / (len(g) - 1) for p, g in zip(parts, groups)))
    se = math.sqrt(parts.sum())
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Welch(diff, diff - half, diff + half, df, p, n_a, n_b)


def compare_blocked(values_a, values_b, strata_a, strata_b, metric, a, b, label, blocked, practical,
                    higher) -> Comparison:
    """:func:`compare` with several strata: the difference, verdict and permutation p (sign flips of the
    per-stratum differences, exact up to ``PERMUTATIONS``) over strata; P(A better) is the mean over strata of
    the within-stratum probability (rliable's average over tasks); ``conditional`` as stated alongside."""
    difference = blocked_welch(values_a, values_b, strata_a, strata_b)
    c = Comparison(metric, label or metric, a, b, higher, difference, blocked=blocked, practical=practical,
                   strata=difference.n_a if difference else 0,
                   conditional=conditional_welch(values_a, values_b, strata_a, strata_b))
    ma, mb = by_stratum(values_a, strata_a), by_stratum(values_b, strata_b)
    shared = [k for k in ma if k in mb]
    if len(shared) >= 2:
        from scipy import stats

        x, y = np.array([ma[k].mean() for k in shared]), np.array([mb[k].mean() for k in shared])
        result = stats.permutation_test((x, y), lambda u, v, axis: np.mean(u - v, axis=axis), vectorized=True,
                                        permutation_type="samples", n_resamples=PERMUTATIONS, rng=SEED)
        c.p_perm, c.perm_exact = float(result.pvalue), 2 ** len(shared) <= PERMUTATIONS
    pois = [probability_of_improvement(ma[k], mb[k]) for k in shared]
    if pois:
        poi = float(np.mean(pois))
        c.poi = 1.0 - poi if higher is False else poi
    return c


def stratified_interval(values, strata=None, level: float = LEVEL) -> Estimate | None:
    """:func:`t_interval` of the values, or with several strata of the strata's means (n = strata: the cells of
    one reward model are not independent replicates)."""
    if strata is None or len(set(strata)) < 2:
        return t_interval(values, level)
    return t_interval([g.mean() for g in by_stratum(values, strata).values()], level)


def stratified_iqm(values, strata=None, **kwargs) -> Estimate | None:
    """:func:`iqm_ci` with each stratum resampled on its own (rliable's stratified bootstrap), one stratum
    when there are no several."""
    if strata is None or len(set(strata)) < 2:
        return iqm_ci([values], **kwargs)
    return iqm_ci(list(by_stratum(values, strata).values()), **kwargs)


@dataclass
class VarianceSplit:
    """One-way random-effects ANOVA of cells grouped by stratum (method of moments)."""

    strata: int
    cells: int
    n0: float
    """Effective cells per stratum: (N − Σ n_i² / N) / (k − 1) (= n when every stratum has n cells)."""
    ms_between: float
    ms_within: float
    between: float
    """σ²_between = max(0, (MS_between − MS_within) / n0): the reward-model/SFT stratum's variance."""
    within: float
    """σ²_within = MS_within: the RL seeds' variance inside a stratum."""

    @property
    def share(self) -> float | None:
        """σ²_between / (σ²_between + σ²_within), the share of variance from the stratum."""
        total = self.between + self.within
        return self.between / total if total > 0 else None


def variance_split(values, strata) -> VarianceSplit | None:
    """Split the variance of one metric over an arm's cells into stratum and RL-seed parts; None with fewer
    than 2 strata or no stratum holding 2 cells (then nothing estimates the within part)."""
    groups = list(by_stratum(values, strata).values())
    k, sizes = len(groups), np.array([len(g) for g in groups], dtype=float)
    total = sizes.sum()
    if k < 2 or total - k < 1:
        return None
    grand = float(np.concatenate(groups).mean())
    ss_between = float(sum(len(g) * (g.mean() - grand) ** 2 for g in groups))
    ss_within = float(sum(((g - g.mean()) ** 2).sum() for g in groups))
    ms_between, ms_within = ss_between / (k - 1), ss_within / (total - k)
    n0 = float((total - (sizes ** 2).sum() / total) / (k - 1))
    between = max(0.0, (ms_between - ms_within) / n0)
    return VarianceSplit(k, int(total), n0, ms_between, ms_within, between, ms_within)


GROUP_KEYS = ["model", "algorithm", "memory"]
CONDITION_BOUND = ("peak_memory_bytes", "generation_peak_bytes", "scoring_peak_bytes", "training_peak_bytes",
                   "episodes_per_s", "tokens_per_s", "wall_s", "train_s", "ledger/wall_s")
"""Measured speed and memory: only compared between cells run under the same ``run_conditions``."""
MEMORY_METRICS = ("peak_memory_bytes", "generation_peak_bytes", "scoring_peak_bytes", "training_peak_bytes")


SETTING_KEYS = ["settings", "phase"]
"""A swept setting (and the phase that ran it) is part of what a group is: cells of one algorithm at different
settings are not seeds of one arm, so their values are never pooled into one interval or one "n"."""


def setting_keys(frame) -> list[str]:
    return [k for k in SETTING_KEYS if k in frame.columns and frame[k].notna().any()]


def _setting_frame(frame):
    """``frame`` with empty settings/phase filled (results of older runs have neither column)."""
    frame = frame.copy()
    if "settings" in frame.columns:
        frame["settings"] = frame["settings"].fillna("").astype(str)
    if "phase" in frame.columns:
        frame["phase"] = frame["phase"].fillna("grid").astype(str)
    return frame


def group_stats(frame, metrics=tuple(METRICS), **kwargs) -> list[dict]:
    """Per (model, algorithm, memory, settings, phase) group of ``ok`` cells: ``{model, algorithm, memory,
    settings, phase, n, seeds, metric: Estimate}`` (mean with its t interval); with several data seeds also
    ``strata``, and the t interval is over the strata's means (n = strata)."""
    ok = _setting_frame(frame[frame["status"] == "ok"])
    keys = GROUP_KEYS + setting_keys(ok)
    out = []
    for key, group in ok.groupby(keys, sort=False):
        row = {"settings": "", "phase": "grid", **dict(zip(keys, key))}
        row["n"] = len(group)
        row["seeds"] = [int(s) for s in group["seed"]]
        strata = _strata(group)
        several = strata is not None and len(set(strata)) > 1
        if several:  # cells of one reward model are not independent: the interval is over stratum means
            row["strata"] = len(set(strata))
        for metric in metrics:
            if metric not in group:
                row[metric] = None
                continue
            row[metric] = stratified_interval(group[metric].tolist(), strata if several else None, **kwargs)
        out.append(row)
    return out


def _strata(group) -> list | None:
    """Each row's data seed (``data_seed`` column); None when the column is absent (results of older runs)."""
    if "data_seed" not in group:
        return None
    return [None if _isnan(v) else int(v) for v in group["data_seed"]]


def algorithm_pairs(algorithms: list[str]) -> list[tuple[str, str]]:
    """Pairs to compare, in grid order (A − B with A listed first in the grid)."""
    return [(a, b) for i, a in enumerate(algorithms) for b in algorithms[i + 1:]]


def condition_blocker(group_a, group_b) -> str:
    """Why speed/memory of these cells may not be compared ("" when they ran under one ``run_conditions``)."""
    if "run_conditions" not in group_a or "run_conditions" not in group_b:
        return "no verdict: run conditions not recorded (compare CPU seconds in the budget table instead)"
    values = list(group_a["run_conditions"]) + list(group_b["run_conditions"])
    if any(not isinstance(v, str) or not v for v in values):
        return "no verdict: run conditions not recorded (compare CPU seconds in the budget table instead)"
    if len(set(values)) > 1:
        return ("no verdict: different run conditions (" + " vs ".join(sorted(set(values)))
                + "); compare CPU seconds in the budget table instead")
    return ""


def comparisons(frame, algorithms: list[str] | None = None, metrics=tuple(METRICS)) -> list[dict]:
    """For each (model, memory, settings, phase) and pair of algorithms and metric: A − B (Welch), verdicts
    Holm-corrected across the metrics of that pair.  Only cells at the same settings are compared (at different
    settings a difference is not the algorithm's).  Rows: ``{model, memory, settings, phase, a, b, metric, label,
    higher_is_better, difference, comparison, verdict, winner}``."""
    ok = _setting_frame(frame[frame["status"] == "ok"])
    if algorithms is None:
        algorithms = list(dict.fromkeys(frame["algorithm"]))
    rows = []
    keys = ["model", "memory"] + setting_keys(ok)
    if "settings" in keys and "phase" in keys:
        # Tuned against tuned: each algorithm at its own best setting is the comparison that phase exists for.
        ok.loc[ok["phase"] == "final", "settings"] = "(tuned)"
    for key, group in ok.groupby(keys, sort=False):
        where = {"settings": "", "phase": "grid", **dict(zip(keys, key))}
        model, memory = where["model"], where["memory"]
        for a, b in algorithm_pairs(algorithms):
            ga, gb = group[group["algorithm"] == a], group[group["algorithm"] == b]
            if ga.empty or gb.empty:
                continue
            family = []
            for metric in metrics:
                if metric not in group:
                    continue
                blocked = condition_blocker(ga, gb) if metric in CONDITION_BOUND else ""
                practical = 0.0
                if metric in MEMORY_METRICS:
                    means = [_clean(g[metric]) for g in (ga, gb)]
                    practical = MEMORY_PRACTICAL * max((float(m.mean()) for m in means if len(m)), default=0.0)
                label = METRICS.get(metric, (metric,))[0]
                family.append(compare(ga[metric].tolist(), gb[metric].tolist(), metric, a, b, label, blocked, practical,
                                      strata_a=_strata(ga), strata_b=_strata(gb)))
            for c in decide(family):
                rows.append({**where, "a": a, "b": b, "metric": c.metric, "label": c.label,
                             "higher_is_better": c.higher_is_better, "difference": c.difference, "comparison": c,
                             "verdict": c.verdict, "winner": c.winner, "conditional": c.conditional})
    return rows


# -- matched KL -----------------------------------------------------------------------------------------------

KL_ZERO = 1e-6
"""A checkpoint at KL <= this counts as KL 0 (the SFT policy against itself, up to rounding)."""


def frontier(points, budget: float) -> float | None:
    """F(b) = max gold over the (kl, gold) checkpoints with KL <= b (SFT point included); None if none qualifies."""
    values = [float(g) for k, g in points if _finite_pair(k, g) and float(k) <= budget]
    return max(values) if values else None


def _finite_pair(k, g) -> bool:
    return not _isnan(k) and not _isnan(g)


def frontier_steps(points) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints of F: the checkpoints' KLs sorted (negative estimates clamped to 0, KL >= 0) and the
    running maximum of gold there; F(b) is the value at the last breakpoint <= b."""
    clean = sorted((max(0.0, float(k)), float(g)) for k, g in points if _finite_pair(k, g))
    if not clean:
        return np.empty(0), np.empty(0)
    kls = np.array([k for k, _ in clean])
    return kls, np.maximum.accumulate(np.array([g for _, g in clean]))


def frontier_area(points, b_max: float) -> float | None:
    """∫₀^b_max F(b) db on the step function F; None when F is undefined somewhere in [0, b_max] (no
    checkpoint at KL 0, e.g. the SFT evaluation missing)."""
    kls, values = frontier_steps(points)
    if len(kls) == 0 or kls[0] > KL_ZERO:
        return None
    kls[0] = 0.0  # the SFT point: its estimated KL is 0 up to rounding
    ends = np.minimum(np.append(kls[1:], b_max), b_max)
    widths = np.clip(ends - kls, 0.0, None)
    return float(widths @ values)


def common_kl_range(reached: dict[str, list[float]]) -> tuple[float, dict[str, float]]:
    """``reached``: arm -> each seed's largest checkpoint KL.  An arm's reach is the smallest of its seeds' (every
    seed got there); b_max is the smallest reach over arms, so F of every seed of every arm is observed on
    [0, b_max]."""
    reach = {arm: float(min(values)) for arm, values in reached.items() if values}
    return (min(reach.values()) if reach else 0.0), reach


def still_improving(evals, key: str = "eval/gold") -> bool | None:
    """True when a cell's ``key`` was still rising at the end: over its last k = max(3, ⌈T/4⌉) of T checkpoints
    the least-squares slope against step exceeds its own standard error (scipy ``linregress``), or the last
    checkpoint is strictly the cell's best.  None with fewer than 3 checkpoints."""
    points = sorted((float(e["eval/step"]), float(e[key])) for e in evals
                    if e.get(key) is not None and not _isnan(e.get(key)) and "eval/step" in e)
    if len(points) < 3:
        return None
    values = [v for _, v in points]
    if values[-1] > max(values[:-1]):
        return True
    tail = points[-max(3, math.ceil(len(points) / 4)):]
    from scipy import stats

    fit = stats.linregress([s for s, _ in tail], [v for _, v in tail])
    return bool(fit.slope - fit.stderr > 0)


def lr_exhausted(evals, step) -> bool:
    """True when the cell's policy LR (``eval/lr``) at checkpoint ``step`` was at most ``LR_ZERO`` of its largest:
    a plateau there is the schedule's end, not a limit of the algorithm."""
    lrs = {int(e["eval/step"]): float(e["eval/lr"]) for e in evals if e.get("eval/lr") is not None and "eval/step" in e}
    if int(step) not in lrs:
        return False
    top = max(lrs.values())
    return lrs[int(step)] <= LR_ZERO * top if top > 0 else True


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
