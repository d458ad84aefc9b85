"""Statistics across seeds, checked against values worked out by hand.

With n = 2 values {a, b} the bootstrap distribution of the mean has three values: a (1/4), (a+b)/2 (1/2), b (1/4),
so the 2.5th/97.5th percentiles are exactly a and b.  With n = 3 the smallest mean (all draws = min) has
probability 1/27 = 3.7% > 2.5%, so the interval is again exactly [min, max].  For a difference of two n = 2
groups, min(A) − max(B) has probability 1/16 = 6.25%: the interval is [min A − max B, max A − min B].
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from rlhfkit.report import stats as st


def test_n1_has_no_interval():
    e = st.mean_ci([0.7])
    assert e.mean == pytest.approx(0.7) and e.n == 1 and not e.has_interval
    assert st.format_estimate(e) == "0.700"


def test_n2_interval_is_the_two_values():
    e = st.mean_ci([0.30, 0.50])
    assert e.mean == pytest.approx(0.40)
    assert (e.low, e.high) == (pytest.approx(0.30), pytest.approx(0.50))
    assert e.n == 2
    # the bootstrap distribution really has only three distinct values, in proportions ~1/4, 1/2, 1/4
    means = st.bootstrap_means([0.30, 0.50])
    values, counts = np.unique(np.round(means, 12), return_counts=True)
    assert list(values) == pytest.approx([0.30, 0.40, 0.50])
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    assert st.format_estimate(e) == "0.400 [0.300, 0.500]"


def test_n3_interval_is_min_max():
    e = st.mean_ci([1.0, 4.0, 2.5])
    assert e.mean == pytest.approx(2.5)
    assert (e.low, e.high) == (pytest.approx(1.0), pytest.approx(4.0))


def test_n4_matches_the_exact_bootstrap_distribution():
    values = [1.0, 2.0, 4.0, 8.0]
    exact = np.array([np.mean(c) for c in itertools.product(values, repeat=4)])  # all 256 equally likely resamples
    lo, hi = np.percentile(exact, [2.5, 97.5])
    e = st.mean_ci(values)
    assert e.low == pytest.approx(lo, abs=0.3) and e.high == pytest.approx(hi, abs=0.3)
    assert e.low > min(values) and e.high < max(values)


def test_fixed_seed_is_reproducible():
    assert st.mean_ci([1, 2, 3, 4, 5, 9]) == st.mean_ci([1, 2, 3, 4, 5, 9])


def test_missing_values_are_ignored():
    e = st.mean_ci([0.3, None, float("nan"), 0.5])
    assert e.n == 2 and e.mean == pytest.approx(0.4)
    assert st.mean_ci([None]) is None


def test_difference_n2_exact_bootstrap_but_no_verdict():
    d = st.diff_ci([0.30, 0.50], [0.10, 0.20])
    assert d.diff == pytest.approx(0.25)
    assert (d.low, d.high) == (pytest.approx(0.30 - 0.20), pytest.approx(0.50 - 0.10))
    assert d.significant  # the bootstrap "excludes 0" at n=2: exactly why it no longer gives verdicts
    c = st.decide([st.compare([0.30, 0.50], [0.10, 0.20], "gold_final", "ppo", "rloo")])[0]
    assert c.verdict == "too few seeds to compare: 2 per arm, 4 needed" and c.winner is None


def test_difference_crossing_zero_is_not_significant():
    d = st.diff_ci([1.0, 3.0], [2.0, 2.5])
    assert d.diff == pytest.approx(-0.25)
    assert (d.low, d.high) == (pytest.approx(1.0 - 2.5), pytest.approx(3.0 - 2.0))
    assert not d.significant


def test_difference_with_one_seed_has_no_interval():
    d = st.diff_ci([0.5], [0.1, 0.2])
    assert d.diff == pytest.approx(0.35) and not d.has_interval and not d.significant
    w = st.welch([0.5], [0.1, 0.2])
    assert w.diff == pytest.approx(0.35) and not w.has_interval
    c = st.decide([st.compare([0.5], [0.1, 0.2], "gold_final", "ppo", "rloo")])[0]
    assert c.verdict == "too few seeds to compare: 1 and 2 per arm, 4 needed"


def test_lower_is_better_names_the_winner():
    # memory at n=4: a ~100 MiB, b ~200 MiB, tiny spread: p is tiny, a wins because lower is better
    a, b = [100.0, 101.0, 102.0, 103.0], [200.0, 201.0, 202.0, 203.0]
    c = st.decide([st.compare(a, b, "peak_memory_bytes", "ppo", "rloo")])[0]
    assert c.higher_is_better is False and c.winner == "ppo" and c.verdict.startswith("ppo better (Holm-adjusted Welch p = ")
    assert c.poi == 1.0  # every ppo run uses less memory than every rloo run


def _table():
    rows = []
    gold = {"ppo": [0.30, 0.50], "rloo": [0.10, 0.20]}
    kl = {"ppo": [1.0, 3.0], "rloo": [2.0, 2.5]}
    for algorithm in ("rloo", "ppo"):  # grid order rloo first: the comparison is RLOO − PPO (no special order)
        for i, seed in enumerate((1, 2)):
            rows.append(
                {"cell": f"m__{algorithm}__full__s{seed}", "model": "m", "algorithm": algorithm, "memory": "full",
                 "seed": seed, "status": "ok", "gold_final": gold[algorithm][i], "score_final": 1.0 + i,
                 "kl_final": kl[algorithm][i], "peak_memory_bytes": 2**20 * (100 + i), "episodes_per_s": 5.0 + i}
            )
    rows.append({"cell": "m__ppo__full__s3", "model": "m", "algorithm": "ppo", "memory": "full", "seed": 3,
                 "status": "pending", "gold_final": None, "score_final": None, "kl_final": None,
                 "peak_memory_bytes": None, "episodes_per_s": None})
    return pd.DataFrame(rows)


def test_group_stats_and_comparisons_on_a_table():
    frame = _table()
    groups = {g["algorithm"]: g for g in st.group_stats(frame)}
    assert groups["ppo"]["n"] == 2 and groups["ppo"]["seeds"] == [1, 2]  # the pending cell is not counted
    assert groups["ppo"]["gold_final"].mean == pytest.approx(0.40)
    # RLOO: mean 0.15, s = 0.0707, s/sqrt(2) = 0.05, t_{0.975, 1} = 12.706: 0.15 -+ 0.635
    rloo = groups["rloo"]["gold_final"]
    assert (rloo.low, rloo.high) == (pytest.approx(0.15 - 12.7062047 * 0.05), pytest.approx(0.15 + 12.7062047 * 0.05))
    rows = {r["metric"]: r for r in st.comparisons(frame, ["rloo", "ppo"])}
    gold = rows["gold_final"]
    assert (gold["a"], gold["b"]) == ("rloo", "ppo")  # grid order, whatever the names
    assert gold["difference"].diff == pytest.approx(-0.25)
    # Welch: var 0.005 (rloo) and 0.02 (ppo), se^2 = 0.005/2 + 0.02/2 = 0.0125, se = 0.1118;
    # df = 0.0125^2 / (0.0025^2/1 + 0.01^2/1) = 1.4706; t_{0.975, 1.4706} = 6.1881 -> -0.25 -+ 0.6918
    assert gold["difference"].df == pytest.approx(1.4705882)
    assert (gold["difference"].low, gold["difference"].high) == (pytest.approx(-0.94185, abs=1e-4), pytest.approx(0.44185, abs=1e-4))
    assert gold["winner"] is None
    assert gold["verdict"] == "too few seeds to compare: 2 per arm, 4 needed"
    # KL is a budget, not a score: the registered spec gives it no direction, so no verdict on KL alone.
    assert rows["kl_final"]["higher_is_better"] is None and rows["kl_final"]["winner"] is None
    assert rows["peak_memory_bytes"]["higher_is_better"] is False
    assert rows["peak_memory_bytes"]["verdict"] == "too few seeds to compare: 2 per arm, 4 needed"


# -- the small-sample statistics, against hand-computed values ---------------------------------------------------

def test_t_interval_of_a_mean():
    # [1, 2, 3, 4, 5]: mean 3, s = sqrt(2.5) = 1.5811, s/sqrt(5) = 0.7071, t_{0.975, 4} = 2.7764 -> 3 -+ 1.9632
    e = st.t_interval([1, 2, 3, 4, 5])
    assert e.mean == 3 and e.low == pytest.approx(3 - 1.96324, abs=1e-4) and e.high == pytest.approx(3 + 1.96324, abs=1e-4)
    assert not st.t_interval([7.0]).has_interval


def test_welch_interval_matches_the_textbook_formula():
    a, b = [1.0, 2.0, 3.5], [0.0, 0.5, 1.0, 2.0]
    # by hand: mean a = 6.5/3 = 2.16667, s_a^2 = ((−1.16667)^2 + (−0.16667)^2 + 1.33333^2)/2 = 3.16667/2 = 1.58333
    #          mean b = 3.5/4 = 0.875,   s_b^2 = (0.765625 + 0.140625 + 0.015625 + 1.265625)/3 = 2.1875/3 = 0.729167
    # v_a = s_a^2/3 = 0.527778, v_b = s_b^2/4 = 0.182292, se = sqrt(0.710069) = 0.842656
    # Welch–Satterthwaite df = (v_a + v_b)^2 / (v_a^2/2 + v_b^2/3) = 0.504199 / (0.139275 + 0.011077) = 3.35347
    # t_{0.975, 3.35347} = 3.00085 -> diff 1.291667 -+ 3.00085 * 0.842656 = 2.52868
    from scipy import stats

    df = (0.527778 + 0.182292) ** 2 / (0.527778**2 / 2 + 0.182292**2 / 3)
    assert df == pytest.approx(3.35347, abs=1e-4)
    half = stats.t.ppf(0.975, df) * math.sqrt(0.527778 + 0.182292)
    w = st.welch(a, b)
    assert w.diff == pytest.approx(1.291667, abs=1e-6) and w.df == pytest.approx(df, abs=1e-4)
    assert (w.low, w.high) == (pytest.approx(1.291667 - half, abs=1e-4), pytest.approx(1.291667 + half, abs=1e-4))
    assert half == pytest.approx(2.52868, abs=1e-3)


def test_exact_permutation_p_values():
    # 2 vs 2: 6 splits, the observed (most extreme) one and its mirror: p = 2/6 = 1/3, never below
    assert st.permutation_p([1, 2], [3, 4]) == (pytest.approx(1 / 3), True)
    # 5 vs 5 all below: 2 of 252 splits are as extreme -> 2/252
    p, exact = st.permutation_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert exact and p == pytest.approx(2 / 252)


def test_iqm_with_fractional_weights():
    # n = 5: the cuts are at 5/4 = 1.25 and 15/4 = 3.75 on a 0..5 axis where the i-th sorted value covers [i−1, i).
    # weights: x1 0, x2 0.75 (covers [1.25, 2)), x3 1, x4 0.75 ([3, 3.75)), x5 0; sum 2.5 = n/2.
    # [1, 2, 4, 8, 100] -> (0.75*2 + 4 + 0.75*8) / 2.5 = 11.5 / 2.5 = 4.6
    # (scipy.stats.trim_mean(x, 0.25), rliable's code, drops int(1.25) = 1 value per side: (2+4+8)/3 = 4.667)
    assert list(st._iqm_weights(5)) == [0, 0.75, 1, 0.75, 0]
    assert st.iqm([8, 1, 100, 4, 2]) == pytest.approx(4.6)
    # n a multiple of 4: the plain 25% trimmed mean, equal to scipy's / rliable's
    from scipy import stats

    assert st.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(stats.trim_mean([1, 2, 3, 4, 5, 6, 7, 100], 0.25)) == 4.5
    assert st.iqm([3.0]) == 3.0 and st.iqm([]) is None


def test_iqm_stratified_bootstrap():
    e = st.iqm_ci([[1, 2, 3, 4, 5, 6]])
    assert e.mean == pytest.approx(3.5) and e.low < 3.5 < e.high and e.n == 6
    # two strata far apart: every resample keeps 3 runs of each, so the pooled IQM stays near the middle
    # (the unstratified bootstrap could draw all 6 from one stratum and reach 2 or 11)
    s = st.iqm_ci([[1, 2, 3], [10, 11, 12]])
    assert s.mean == pytest.approx(6.5) and 4.0 < s.low <= s.high < 9.0
    assert not st.iqm_ci([[1.0], [2.0]]).has_interval  # one run per stratum: nothing to resample
    assert st.iqm_ci([[1, 2, 3], [10, 11, 12]]) == s  # seeded


def test_probability_of_improvement_counts_ties_as_half():
    # x = [1, 2, 2], y = [2, 0]: pairs with x > y: (1,0), (2,0), (2,0) = 3; ties (2,2) twice = 2 * 1/2 = 1 -> 4/6
    assert st.probability_of_improvement([1, 2, 2], [2, 0]) == pytest.approx(4 / 6)
    assert st.probability_of_improvement([1, 1], [1, 1]) == pytest.approx(0.5)
    # lower is better: P(a < b) + ties/2 = 1 − 4/6 for the comparison object
    c = st.compare([1, 2, 2], [2, 0], "peak_memory_bytes", "a", "b")
    assert c.poi == pytest.approx(2 / 6)


def test_holm_on_three_p_values():
    # sorted 0.01, 0.03, 0.04: 3*0.01 = 0.03; 2*0.03 = 0.06; 1*0.04 = 0.04 -> running max 0.06; back in order
    assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert st.holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)


def test_detectable_effect():
    from scipy import stats

    d = st.detectable_effect(5, 5)
    # at that effect the power of the two-sided t test (df 8, noncentrality d / sqrt(2/5)) is 0.8
    crit = stats.t.ppf(0.975, 8)
    nc = d / math.sqrt(2 / 5)
    assert stats.nct.sf(crit, 8, nc) + stats.nct.cdf(-crit, 8, nc) == pytest.approx(0.8, abs=1e-6)
    assert 1.9 < d < 2.1  # ~2 SD with 5 seeds per arm
    assert st.detectable_effect(2, 2) > st.detectable_effect(4, 4) > d > st.detectable_effect(20, 20)
    assert st.detectable_effect(1, 5) is None


def _verdict_fires(rng, n) -> bool:
    a, b = rng.normal(size=n), rng.normal(size=n)
    return st.decide([st.compare(a, b, "gold_final", "x", "y", direction=True)])[0].winner is not None


def test_no_true_difference_false_positive_rate():
    """Seeds drawn from one distribution: the verdict fires at most 7% of the time at n=5, never at n=2 or 3."""
    rng = np.random.default_rng(20260101)
    rates = {n: np.mean([_verdict_fires(rng, n) for _ in range(2000 if n == 5 else 300)]) for n in (2, 3, 5)}
    assert rates[2] == 0.0 and rates[3] == 0.0
    assert rates[5] <= 0.07, rates


def test_a_big_true_difference_is_found_at_n6():
    rng = np.random.default_rng(1)
    c = st.decide([st.compare(rng.normal(3, 1, 6), rng.normal(0, 1, 6), "gold_final", "x", "y")])[0]
    assert c.winner == "x" and c.verdict.startswith("x better (Holm-adjusted Welch p = ")
    assert "permutation p = " in c.verdict and "exact" in c.verdict  # C(12, 6) = 924 splits, enumerated


def test_run_conditions_and_practical_threshold_block_verdicts():
    frame = pd.DataFrame([
        {"cell": f"{a}{s}", "model": "m", "algorithm": a, "memory": "full", "seed": s, "status": "ok",
         "episodes_per_s": (10.0 if a == "x" else 5.0) + 0.01 * s, "tokens_per_s": 1.0 + s,
         "peak_memory_bytes": (100.0 if a == "x" else 103.0) + 0.01 * s,
         "run_conditions": "cpu/threads=2/parallel=" + ("2" if a == "x" else "1") + "/procs=1"}
        for a in ("x", "y") for s in range(5)])
    rows = {r["metric"]: r for r in st.comparisons(frame, metrics=("episodes_per_s", "peak_memory_bytes"))}
    assert rows["episodes_per_s"]["verdict"].startswith("no verdict: different run conditions")
    assert rows["episodes_per_s"]["winner"] is None
    frame["run_conditions"] = "cpu/threads=2/parallel=1/procs=1"
    rows = {r["metric"]: r for r in st.comparisons(frame, metrics=("episodes_per_s", "peak_memory_bytes"))}
    assert rows["episodes_per_s"]["winner"] == "x"
    # 3 bytes on a 103-byte peak is 2.9% < 5%: p is tiny but the difference is not called better
    assert rows["peak_memory_bytes"]["verdict"].startswith("no verdict: |difference| below the practical threshold 5.15")


# -- matched KL ---------------------------------------------------------------------------------------------------

POINTS = [(0.0, 1.0), (0.5, 2.0), (1.0, 1.5), (1.5, 3.0), (2.5, 2.0)]  # (kl, gold), SFT first


def test_frontier_is_the_best_gold_within_the_kl_budget():
    assert st.frontier(POINTS, 0.0) == 1.0
    assert st.frontier(POINTS, 0.49) == 1.0
    assert st.frontier(POINTS, 0.5) == 2.0
    assert st.frontier(POINTS, 1.2) == 2.0  # the 1.5 at KL 1 does not lower it: F is an upper envelope
    assert st.frontier(POINTS, 1.5) == 3.0 and st.frontier(POINTS, 9.0) == 3.0
    assert st.frontier(POINTS[1:], 0.2) is None  # no checkpoint within KL 0.2


def test_frontier_area_on_a_hand_drawn_step_function():
    # F = 1 on [0, 0.5), 2 on [0.5, 1.5), 3 from 1.5: area on [0, 2] = 0.5*1 + 1.0*2 + 0.5*3 = 4.0
    assert st.frontier_area(POINTS, 2.0) == pytest.approx(4.0)
    # on [0, 1]: 0.5*1 + 0.5*2 = 1.5
    assert st.frontier_area(POINTS, 1.0) == pytest.approx(1.5)
    assert st.frontier_area(POINTS[1:], 1.0) is None  # no SFT point: F undefined below KL 0.5


def test_common_kl_range_is_the_smallest_reach():
    b_max, reach = st.common_kl_range({"ppo": [3.7, 3.2], "rloo": [0.9, 1.1]})
    assert reach == {"ppo": 3.2, "rloo": 0.9} and b_max == 0.9


def _evals(golds, lrs=None):
    lrs = lrs or [1e-3] * len(golds)
    return [{"eval/step": 10 * i, "eval/gold": g, "eval/lr": lr} for i, (g, lr) in enumerate(zip(golds, lrs))]


def test_still_improving_rule():
    assert st.still_improving(_evals([0.0, 1.0, 2.0, 3.0])) is True  # last is the max
    assert st.still_improving(_evals([0.0, 1.0, 2.0, 2.9, 3.0, 2.95, 3.0])) is False  # flat tail, last ties the max
    # last 3 of 8: 2.0, 2.6, 2.5: slope 0.025/step, stderr 0.0202 -> rising by more than its SE
    assert st.still_improving(_evals([0, 1, 1.5, 1.8, 1.9, 2.0, 2.6, 2.5])) is True
    assert st.still_improving(_evals([0.0, 1.0, 0.5, 0.2])) is False
    assert st.still_improving(_evals([0.0, 1.0])) is None


def test_lr_exhausted():
    evals = _evals([0.0, 1.0, 2.0, 2.0], lrs=[1e-3, 5e-4, 1e-7, 0.0])
    assert not st.lr_exhausted(evals, 10) and st.lr_exhausted(evals, 20) and st.lr_exhausted(evals, 30)
    assert not st.lr_exhausted([{"eval/step": 0, "eval/gold": 1.0}], 0)  # no eval/lr recorded: unknown


def test_settings_are_never_pooled_as_seeds_and_tuned_arms_compare_across_settings():
    import pandas as pd

    rows = []
    for algorithm, offset in (("ppo", 0.0), ("rloo", 0.5)):
        for beta, level in ((0.02, 3.0), (0.5, 1.0)):
            for seed in range(1, 5):
                rows.append({"model": "m", "algorithm": algorithm, "memory": "full", "seed": seed, "status": "ok",
                             "settings": f"kl_coef={beta}", "phase": "grid", "gold_final": level + offset + 0.01 * seed})
        for seed in range(11, 15):  # tuned: ppo picked 0.02, rloo 0.5 -> different settings, still compared
            rows.append({"model": "m", "algorithm": algorithm, "memory": "full", "seed": seed, "status": "ok",
                         "settings": "kl_coef=0.02" if algorithm == "ppo" else "kl_coef=0.5", "phase": "final",
                         "gold_final": 2.0 + offset + 0.01 * seed})
    frame = pd.DataFrame(rows)
    groups = st.group_stats(frame, metrics=("gold_final",))
    assert [(g["algorithm"], g["settings"], g["phase"], g["n"]) for g in groups] == [
        ("ppo", "kl_coef=0.02", "grid", 4), ("ppo", "kl_coef=0.5", "grid", 4), ("ppo", "kl_coef=0.02", "final", 4),
        ("rloo", "kl_coef=0.02", "grid", 4), ("rloo", "kl_coef=0.5", "grid", 4), ("rloo", "kl_coef=0.5", "final", 4)]
    # beta=0.02: mean of 3.01..3.04 = 3.025; beta=0.5: 1.025 (never one "n=8" group with both)
    assert groups[0]["gold_final"].mean == pytest.approx(3.025) and groups[1]["gold_final"].mean == pytest.approx(1.025)
    rows = st.comparisons(frame, ["ppo", "rloo"], metrics=("gold_final",))
    assert [(r["settings"], r["phase"]) for r in rows] == [("kl_coef=0.02", "grid"), ("kl_coef=0.5", "grid"), ("(tuned)", "final")]
    assert all(r["difference"].diff == pytest.approx(-0.5) for r in rows)  # ppo − rloo at equal settings, and tuned
