"""Issue 14: statuses that say what happened: divergence by thresholds (not only NaN), ``killed`` for a cell
stopped by a signal unless the kernel log or the cell's memory figures say OOM."""

from __future__ import annotations

import pytest

from rlhfkit.engine.config import RLConfig
from rlhfkit.engine.context import DivergedError
from rlhfkit.engine.steps import check_thresholds
from rlhfkit.testing import run

# --- divergence by thresholds --------------------------------------------------------------------------------


def test_learning_rate_1e3_diverges_in_process_by_approxkl():
    """PPO's first step at learning rate 1e3 moves the policy to approxkl 8.7e13 (finite: the NaN check alone
    called the cell ``ok``)."""
    with pytest.raises(DivergedError) as raised:
        run("ppo", learning_rate=1e3, num_epochs=2)
    message = str(raised.value)
    assert "policy/approxkl is " in message and "at step 0" in message and "diverge_approxkl = 10" in message
    assert "\n" not in message


def test_learning_rate_1e3_diverges_by_gradient_norm_where_approxkl_stays_zero():
    """DPO logs no approxkl; at learning rate 1e3 its pre-clipping gradient norm reaches about 1e11."""
    with pytest.raises(DivergedError, match=r"policy/grad_norm is .* above the threshold diverge_grad_norm = 10000"):
        run("dpo", learning_rate=1e3, steps=4)


def test_healthy_runs_do_not_trip_the_thresholds():
    for algorithm in ("ppo", "rloo", "dpo"):
        history, _ = run(algorithm, steps=3)
        assert len(history) == 3


def test_thresholds_on_hand_injected_metrics():
    config = RLConfig()
    check_thresholds(config, 0, {"policy/approxkl": 9.9, "policy/grad_norm": 9_999.0, "loss/policy": 1e30})
    check_thresholds(config, 0, {"policy/grad_norm": float("inf")})  # non-finite: the loss check's job
    with pytest.raises(DivergedError, match=r"^myalgo/approxkl is 2.8e\+14 at step 7, above"):
        check_thresholds(config, 7, {"myalgo/approxkl": 2.8e14})
    check_thresholds(RLConfig(diverge_approxkl=0), 7, {"policy/approxkl": 2.8e14})  # 0 = off
    with pytest.raises(ValueError, match="diverge_grad_norm must be >= 0"):
        RLConfig(diverge_grad_norm=-1)
