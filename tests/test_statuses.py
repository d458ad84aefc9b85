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


# --- killed or oom ------------------------------------------------------------------------------------------

GIB = 1024**3


def _watch(rss_gib=1.0, available_gib=20.0, total_gib=32.0):
    from rlhfkit.exits import MemoryWatch

    return MemoryWatch(pid=4242, pids={4242, 4243}, last_rss=int(rss_gib * GIB), peak_rss=int(rss_gib * GIB),
                       last_available=int(available_gib * GIB), total=int(total_gib * GIB))


def test_a_signal_without_memory_evidence_is_killed():
    from rlhfkit.exits import classify_signal

    status, error = classify_signal(9, _watch(), [])
    assert status == "killed" and error.startswith("killed by SIGKILL")
    assert classify_signal(15, _watch(), [])[0] == "killed"
    assert classify_signal(11, _watch(), []) == ("failed", "crashed with SIGSEGV")


def test_memory_or_kernel_evidence_makes_it_oom():
    from rlhfkit.exits import classify_signal

    line = "[ 812.3] Out of memory: Killed process 4243 (python) total-vm:40000000kB, anon-rss:30000000kB"
    status, error = classify_signal(9, _watch(), [line])
    assert status == "oom" and "Killed process 4243" in error
    status, error = classify_signal(9, _watch(rss_gib=27.0), [])
    assert status == "oom" and "27.0 of the machine's 32.0 GiB resident" in error
    status, error = classify_signal(9, _watch(available_gib=0.5), [])
    assert status == "oom" and "0.50 of 32.0 GiB" in error


def test_kernel_log_lines_are_matched_by_pid(tmp_path, monkeypatch):
    from rlhfkit import exits

    log = tmp_path / "kern.log"
    log.write_text(
        "Dec  1 kernel: oom-kill:constraint=CONSTRAINT_NONE,task=python,pid=4243,uid=0\n"
        "Dec  1 kernel: Out of memory: Killed process 14243 (python)\n"  # another pid
        "Dec  1 kernel: __vm_enough_memory: pid: 4242, comm: python, not enough memory\n"  # not a kill
    )

    def no_dmesg(*args, **kwargs):
        raise PermissionError("dmesg: read kernel buffer failed: Operation not permitted")

    monkeypatch.setattr(exits, "KERNEL_LOGS", (tmp_path / "missing.log", log))
    monkeypatch.setattr(exits.subprocess, "run", no_dmesg)
    assert exits.kernel_oom_lines({4242, 4243}, since=0) == [
        "Dec  1 kernel: oom-kill:constraint=CONSTRAINT_NONE,task=python,pid=4243,uid=0"]
    assert exits.classify_exit(9, _watch())[0] == "oom"
    monkeypatch.setattr(exits, "KERNEL_LOGS", ())
    assert exits.classify_exit(9, _watch())[0] == "killed"  # no readable log: no evidence


def test_memory_watch_samples_a_live_process_tree():
    import os

    from rlhfkit.exits import MemoryWatch

    watch = MemoryWatch(os.getpid())
    watch.sample()
    assert os.getpid() in watch.pids and watch.last_rss > 0 and watch.total > watch.last_rss


@pytest.mark.slow
def _child_running(parent: int, needle: str):
    """The parent's child process whose command line holds ``needle``; a child that has just exited (a finished
    stage process, a zombie until reaped) has no command line to read and is skipped."""
    import psutil

    for child in psutil.Process(parent).children():
        try:
            if needle in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def test_a_cell_killed_by_the_user_is_killed_and_kept_on_resume(small_recipe, tmp_path):
    """A user's ``kill -9`` of a running cell: status ``killed`` (not "likely the OOM killer"); a rerun without
    --retry-failed keeps it (a terminal status), like failed cells."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from conftest import REPO, run_cli
    from test_cell_failures import install_fake_distribution

    plugin_root = tmp_path / "site"
    plugin_root.mkdir()
    env = {**os.environ, **install_fake_distribution(plugin_root)}
    recipe = small_recipe(algorithms=("sleep-algo",))
    out_dir = tmp_path / "run"
    runner = subprocess.Popen([sys.executable, "-m", "rlhfkit", "run", str(recipe), "--output", str(out_dir)],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spec = out_dir / "cells" / "llama-tiny__sleep-algo__full__s1" / "spec.json"
    deadline = time.monotonic() + 400
    cell = None
    while cell is None and time.monotonic() < deadline and runner.poll() is None:
        time.sleep(0.5)
        cell = _child_running(runner.pid, str(spec))
    assert cell is not None, "the cell process never started"
    time.sleep(2)  # a few memory samples
    os.kill(cell.pid, signal.SIGKILL)
    assert runner.wait(timeout=120) == 1
    result_path = spec.parent / "result.json"
    result = json.loads(result_path.read_text())
    assert result["status"] == "killed" and result["error"].startswith("killed by SIGKILL"), result
    stamp = result_path.stat().st_mtime_ns
    assert run_cli("run", recipe, "--output", out_dir, env=env).returncode == 1
    assert result_path.stat().st_mtime_ns == stamp
    assert "killed" in (out_dir / "results.csv").read_text()
