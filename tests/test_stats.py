"""Statistics across seeds, checked against values worked out by hand.

With n = 2 values {a, b} the bootstrap distribution of the mean has three values: a (1/4), (a+b)/2 (1/2), b (1/4),
so the 2.5th/97.5th percentiles are exactly a and b.  With n = 3 the smallest mean (all draws = min) has
probability 1/27 = 3.7% > 2.5%, so the interval is again exactly [min, max].  For a difference of two n = 2
groups, min(A) − max(B) has probability 1/16 = 6.25%: the interval is [min A − max B, max A − min B].
"""

from __future__ import annotations

import itertools

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


def test_difference_n2_exact_and_significant():
    d = st.diff_ci([0.30, 0.50], [0.10, 0.20])
    assert d.diff == pytest.approx(0.25)
    assert (d.low, d.high) == (pytest.approx(0.30 - 0.20), pytest.approx(0.50 - 0.10))
    assert d.significant
    assert st.verdict(d, "ppo", "rloo", True) == "ppo better: 95% CI excludes 0 at n=2 seeds"
    assert st.winner(d, "ppo", "rloo", True) == "ppo"


def test_difference_crossing_zero_is_not_significant():
    d = st.diff_ci([1.0, 3.0], [2.0, 2.5])
    assert d.diff == pytest.approx(-0.25)
    assert (d.low, d.high) == (pytest.approx(1.0 - 2.5), pytest.approx(3.0 - 2.0))
    assert not d.significant
    assert st.verdict(d, "ppo", "rloo", False) == "no significant difference at n=2 seeds"


def test_difference_with_one_seed_has_no_interval():
    d = st.diff_ci([0.5], [0.1, 0.2])
    assert d.diff == pytest.approx(0.35) and not d.has_interval and not d.significant
    assert "n=1 and 2 seeds" in st.verdict(d, "ppo", "rloo")


def test_lower_is_better_names_the_winner():
    d = st.diff_ci([100.0, 110.0], [200.0, 210.0])  # memory: ppo lower
    assert st.winner(d, "ppo", "rloo", higher_is_better=False) == "ppo"
    assert st.verdict(d, "ppo", "rloo", False) == "ppo better: 95% CI excludes 0 at n=2 seeds"


def _table():
    rows = []
    gold = {"ppo": [0.30, 0.50], "rloo": [0.10, 0.20]}
    kl = {"ppo": [1.0, 3.0], "rloo": [2.0, 2.5]}
    for algorithm in ("rloo", "ppo"):  # grid order rloo first: the comparison is still PPO − RLOO
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
    assert (groups["rloo"]["gold_final"].low, groups["rloo"]["gold_final"].high) == (pytest.approx(0.10), pytest.approx(0.20))
    rows = {r["metric"]: r for r in st.comparisons(frame, ["rloo", "ppo"])}
    gold = rows["gold_final"]
    assert (gold["a"], gold["b"]) == ("ppo", "rloo")
    assert gold["difference"].diff == pytest.approx(0.25)
    assert (gold["difference"].low, gold["difference"].high) == (pytest.approx(0.10), pytest.approx(0.40))
    assert gold["winner"] == "ppo"
    assert rows["kl_final"]["verdict"] == "no significant difference at n=2 seeds"
    assert rows["peak_memory_bytes"]["verdict"] == "no significant difference at n=2 seeds"
