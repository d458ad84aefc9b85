"""Preemption (issue 16 item 4): a cell stopped after its first checkpoint and resumed from it ends with the
numbers of an uninterrupted run, bit for bit (timings and memory aside), for PPO (critic, two optimizers) and
RLOO; the runner keeps a checkpoint (and the metric lines it continues) of an interrupted attempt."""

import pytest
import torch

from engine_harness import tiny_context
from rlhfkit.engine.checkpoint import Checkpointer
from rlhfkit.registry import resolve
from rlhfkit.runner import clear_attempt

SKIP = ("perf/", "memory/", "ledger/wall_s", "ledger/cpu_s")
SETTINGS = {"ppo": {"num_epochs": 2, "num_minibatches": 2},
            "rloo": {"num_epochs": 2, "num_minibatches": 2, "adaptive_kl_target": 6.0}}
STEPS = 4


class Preempted(Exception):
    pass


class PreemptedAfterFirstCheckpoint(Checkpointer):
    def save(self, ctx, steps_done, next_eval):
        super().save(ctx, steps_done, next_eval)
        raise Preempted(f"killed after the checkpoint of step {steps_done}")


def numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(SKIP) and k != "samples"}


def train(algorithm: str, checkpointer=None, resume: bool = False):
    torch.set_num_threads(1)
    ctx, spec = tiny_context(algorithm, steps=STEPS, eval_every=2, **SETTINGS[algorithm])
    ctx.checkpointer = checkpointer
    if resume:
        assert checkpointer.restore(ctx)
    try:
        resolve(spec.trainer)(ctx)
    finally:
        ctx.memory.close()
    return ctx


@pytest.mark.parametrize("algorithm", ["ppo", "rloo"])
def test_a_resumed_run_has_the_numbers_of_an_uninterrupted_one(algorithm, tmp_path):
    whole = train(algorithm)
    with pytest.raises(Preempted):
        train(algorithm, PreemptedAfterFirstCheckpoint(tmp_path / "checkpoint", 1, "spec"))
    assert (tmp_path / "checkpoint" / "LATEST").read_text() == "step-1"
    resumed = train(algorithm, Checkpointer(tmp_path / "checkpoint", 1, "spec"), resume=True)
    assert [line["step"] for line in resumed.logger.history] == list(range(STEPS))
    assert [numbers(r) for r in resumed.logger.history] == [numbers(r) for r in whole.logger.history]
    assert [numbers(e) for e in resumed.evaluations] == [numbers(e) for e in whole.evaluations]
    assert resumed.kl_controller.value == whole.kl_controller.value
    for a, b in zip(whole.policy.state_dict().values(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b)
    if algorithm == "ppo":
        for a, b in zip(whole.value_model.state_dict().values(), resumed.value_model.state_dict().values()):
            assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["LATEST", f"step-{STEPS - 1}"]


def test_a_checkpoint_of_another_spec_is_ignored_and_its_metric_lines_dropped(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0}\n')
    with pytest.raises(Preempted):
        train("rloo", PreemptedAfterFirstCheckpoint(tmp_path / "checkpoint", 1, "spec", metrics))
    ctx, _ = tiny_context("rloo", steps=STEPS, **SETTINGS["rloo"])
    other = Checkpointer(tmp_path / "checkpoint", 1, "another spec", metrics)
    assert not other.restore(ctx) and other.resume_point is None
    assert "ignored" in capsys.readouterr().err
    assert metrics.read_text() == "" and not (tmp_path / "checkpoint").exists()


def test_the_runner_keeps_a_checkpoint_and_its_metric_lines(tmp_path):
    cell = tmp_path / "cell"
    (cell / "checkpoint" / "step-1").mkdir(parents=True)
    for name in ("metrics.jsonl", "result.json", "error.txt", "spec.json"):
        (cell / name).write_text("x")
    clear_attempt(cell)
    assert sorted(p.name for p in cell.iterdir()) == ["checkpoint", "metrics.jsonl"]
    (cell / "checkpoint" / "step-1").rmdir()
    (cell / "checkpoint").rmdir()
    clear_attempt(cell)
    assert list(cell.iterdir()) == []


def _dead_cell(tmp_path, saved: int | None):
    cell = tmp_path / "cell"
    cell.mkdir(parents=True)
    if saved is not None:
        (cell / "checkpoint" / f"step-{saved}").mkdir(parents=True)
        (cell / "checkpoint" / "LATEST").write_text(f"step-{saved}")
    return cell


def test_a_dead_cell_resumes_on_a_plain_rerun_only_after_progress(tmp_path):
    """The rule of rlhfkit.runner.resumes: a death the runner recorded (killed, or failed by a signal or a lost
    worker) with a newer checkpoint than its attempt started from is unfinished; a cell's own verdict
    (diverged, an exception), timeout/oom, or a death before the next checkpoint is kept (no rerun loop)."""
    from rlhfkit.runner import resumes, saved_step

    cell = _dead_cell(tmp_path, saved=20)
    assert saved_step(cell) == 20 and saved_step(tmp_path / "none") == 0
    died = {"status": "killed", "checkpoint": {"resumed_from": 10, "saved": 20}}
    assert resumes(died, cell)
    assert resumes({**died, "status": "failed"}, cell)  # SIGSEGV, a preempted job, a dead Ray worker
    assert not resumes({**died, "checkpoint": {"resumed_from": 20, "saved": 20}}, cell)  # died again at step 20
    assert not resumes({**died, "checkpoint": {"resumed_from": 10, "saved": 30}}, cell)  # not the one on disk
    for status in ("diverged", "oom", "timeout", "ok"):
        assert not resumes({**died, "status": status}, cell)
    assert not resumes({"status": "failed", "error": "ValueError: bad"}, cell)  # written by the cell itself
    assert not resumes(died, _dead_cell(tmp_path / "other", saved=None))  # the checkpoint is gone


def test_a_cluster_attempt_keeps_the_checkpoint(tmp_path):
    """Ray and Slurm clean a cell's directory on the node before each attempt: the checkpoint (and the metric
    lines it continues) stay, or a preempted cell could never resume there."""
    from rlhfkit.executors.remote import clean_attempt

    cell = _dead_cell(tmp_path, saved=3)
    for name in ("metrics.jsonl", "result.json", "spec.json", "log.worker.json", "log.txt"):
        (cell / name).write_text("x")
    clean_attempt(str(cell))
    assert sorted(p.name for p in cell.iterdir()) == ["checkpoint", "log.worker.json", "metrics.jsonl", "spec.json"]
    (cell / "checkpoint" / "LATEST").unlink()
    (cell / "checkpoint" / "step-3").rmdir()
    (cell / "checkpoint").rmdir()
    clean_attempt(str(cell))
    assert sorted(p.name for p in cell.iterdir()) == ["log.worker.json", "spec.json"]
