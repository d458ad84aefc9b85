"""Run a recipe's grid: stages once per model row, then every cell in its own process.

A crash, OOM, NaN or timeout in one cell becomes that cell's status and the grid goes on.  Rerunning the
same recipe into the same output directory resumes: finished cells are kept, unfinished ones rerun.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from rlhfkit.artifacts import artifact_dirs, is_complete, stage_threads
from rlhfkit.exits import MemoryWatch, classify_exit
from rlhfkit.fileio import atomic_write_json as write_json_atomic
from rlhfkit.fileio import atomic_write_text
from rlhfkit.recipe import TUNING_FILE, Cell, Recipe, fingerprint
from rlhfkit.results import TERMINAL_STATUSES, cell_dir, read_json, read_result

RECIPE_COPY = "recipe.toml"
RUN_INFO = "run.json"
STAGES_FILE = "stages.json"
LOCK_FILE = ".rlhfkit.lock"
# [run] keys that change how fast a grid runs, not what it computes.
NON_RESULT_RUN_KEYS = ("output", "parallel_cells", "cell_timeout_s", "stage_timeout_s", "gpu", "num_gpus", "gpu_memory_gib",
                       "executor", "ray", "slurm")
TRACKED_PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft", "deepspeed", "bitsandbytes", "pandas", "rlhfkit")


class RunError(Exception):
    """The run cannot start (bad output directory, another run holds it): one line, exit 2."""


def cell_threads(run: dict) -> int:
    """torch threads of each cell process: ``threads_per_cell``, else CPU cores / ``parallel_cells``."""
    return run.get("threads_per_cell") or max(1, (os.cpu_count() or 1) // run.get("parallel_cells", 1))


def results_settings(raw: dict) -> dict:
    """Everything a cell's numbers depend on; the grid lists may grow without changing it.

    Grid lists, sweep values and ``[tuning]`` are left out: a cell's swept settings and phase are in its id
    and its result.json (checked on resume), so adding a sweep value or a seed reuses the finished cells.
    The thread count is in (it changes the numbers): with ``threads_per_cell = 0`` it is CPU cores /
    ``parallel_cells``, so both ``parallel_cells`` and the thread count it gives on this machine are.
    """
    relevant = {k: v for k, v in raw.items() if k not in ("name", "description", "grid", "tuning", "report")}
    run = raw.get("run") or {}
    relevant["run"] = {k: v for k, v in run.items() if k not in NON_RESULT_RUN_KEYS}
    if not run.get("threads_per_cell"):
        relevant["run"]["parallel_cells"] = run.get("parallel_cells", 1)
        relevant["run"]["threads"] = cell_threads(run)
    return relevant


def results_fingerprint(raw: dict) -> str:
    """Hash of :func:`results_settings`."""
    return fingerprint(results_settings(raw))


def first_difference(old, new, path: str = "") -> tuple[str, object, object] | None:
    """The first key path where two settings trees differ, with both values (None when equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            missing = "(not set)"
            found = first_difference(old.get(key, missing), new.get(key, missing), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if old == new else (path or "(recipe)", old, new)


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict:
    import psutil

    info = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0:
            info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pass
    return info


@dataclass
class Running:
    cell: Cell
    proc: object
    """The executor's handle of the cell process (rlhfkit.executors): poll, wait, elapsed, kill, close."""
    started: float
    steps_done: int = 0
    metrics_offset: int = 0
    watch: MemoryWatch | None = None
    """Samples of the cell's memory: evidence for ``oom`` if a signal ends it (rlhfkit/exits.py)."""
    checkpoint_from: int = 0
    """The step of the checkpoint this attempt started from (0: none); see :func:`resumes`."""


@dataclass
class RunOutcome:
    output_dir: Path
    ran: list[Cell] = field(default_factory=list)
    kept: list[Cell] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)


class OutputLock:
    """An exclusive lock on the output directory; released by the kernel even on SIGKILL."""

    def __init__(self, output_dir: Path, command: str = "rlhfkit run"):
        self.path = output_dir / LOCK_FILE
        self.command = command
        self.handle = None

    def __enter__(self):
        try:
            self.handle = open(self.path, "a")
        except OSError as exc:
            raise RunError(f"{self.path.parent} cannot be locked ({exc.strerror or exc}); check its permissions") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            advice = "wait for it or choose another --output" if self.command == "rlhfkit run" else (
                f"wait for it to finish, then run {self.command} again")
            raise RunError(f"another rlhfkit run or report is using {self.path.parent}; {advice}") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def check_output_dir(output_dir: Path, must_exist: bool = False) -> None:
    """Refuse, before anything is written, an output path that cannot be a writable directory: a part of it is
    a file, or the directory (or, when it does not exist yet, its nearest existing parent, where it will be
    created with any missing parents) is not writable."""
    label = "--output" if not must_exist else "run directory"
    for part in [output_dir, *output_dir.parents]:
        if part.exists() and not part.is_dir():
            where = "" if part == output_dir else f" ({part} is a file)"
            raise RunError(f"{label} {output_dir} is not a directory{where}; choose another path")
        if part.is_dir():
            if not os.access(part, os.W_OK | os.X_OK):
                what = "is" if part == output_dir else f"cannot be created: {part} is"
                raise RunError(f"{label} {output_dir} {what} not writable; choose another path or fix its permissions")
            return
        if must_exist:
            raise RunError(f"{label} {output_dir} does not exist")


def given_checkpoints(recipe: Recipe) -> dict[str, str]:
    """``{"<row>.policy" | "<row>.reward": hash}`` of every checkpoint a row brings ready (``train_sft`` /
    ``train_reward = false``): its resolved path and every file's size and modification time
    (:func:`rlhfkit.given.content_fingerprint`).  The recipe text does not change when such a checkpoint is
    rewritten in place, so this, not the recipe fingerprint, tells that finished cells were trained on another."""
    from rlhfkit.given import checkpoint_dir, content_fingerprint

    found = {}
    for entry in recipe.models.values():
        for role, ref, given in (("policy", entry.policy, not entry.train_sft), ("reward", entry.reward, not entry.train_reward)):
            path = checkpoint_dir(ref, entry.trust_remote_code) if given else None
            if path is not None:
                found[f"{entry.name}.{role}"] = fingerprint(content_fingerprint(path))
    return found


def prepare_output(recipe: Recipe, output_dir: Path) -> None:
    """Refuse an output directory that holds another recipe's results (naming the first setting that
    differs) or results of given checkpoints that changed since; create it (and missing parents)."""
    check_output_dir(output_dir)
    previous = read_json(output_dir / RUN_INFO)
    if previous is not None and previous.get("results_fingerprint") != results_fingerprint(recipe.raw):
        old = previous.get("results_settings")
        diff = first_difference(old, results_settings(recipe.raw)) if isinstance(old, dict) else None
        which = f"{diff[0]} is {diff[2]!r} here, {diff[1]!r} there" if diff else "settings that change results differ"
        raise RunError(
            f"{output_dir} holds results of a different recipe ({which}); choose another --output or remove that directory"
        )
    old_given = (previous or {}).get("given_checkpoints") or {}
    changed = sorted(k for k, v in given_checkpoints(recipe).items() if k in old_given and old_given[k] != v)
    if changed:
        raise RunError(
            f"{output_dir} holds results of the checkpoint {changed[0]!r} as it was before it changed (another path or "
            "rewritten files); choose another --output or remove that directory"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"--output {output_dir} cannot be created: {exc.strerror or exc}") from None


def _record_run(recipe: Recipe, output_dir: Path) -> None:
    info_path = output_dir / RUN_INFO
    previous = read_json(info_path) or {}
    recipe_copy = output_dir / RECIPE_COPY
    atomic_write_text(recipe_copy, recipe.path.read_text())
    write_json_atomic(
        info_path,
        {
            "recipe": recipe.name,
            "recipe_source": str(recipe.path),
            "recipe_dir": str(Path(recipe.path).resolve().parent),
            "results_fingerprint": results_fingerprint(recipe.raw),
            "results_settings": results_settings(recipe.raw),
            "given_checkpoints": {**(previous.get("given_checkpoints") or {}), **given_checkpoints(recipe)},
            "first_started": previous.get("first_started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "last_started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": package_versions(),
            "hardware": hardware(),
            "command": sys.argv,
        },
    )


class Runner:
    def __init__(self, recipe: Recipe, output_dir: Path, progress=None, retry_failed: bool = False, executor=None):
        from rlhfkit.executors.local import LocalExecutor
        from rlhfkit.plugins import get_plugin_manager

        self.recipe = recipe
        self.output_dir = output_dir
        self.progress = progress
        self.retry_failed = retry_failed
        self.hook = get_plugin_manager().hook
        self.artifacts_root = output_dir / "artifacts"
        self.threads = cell_threads(dataclasses.asdict(recipe.run))
        self.executor = executor or LocalExecutor(recipe.run.parallel_cells)

    # -- stages ---------------------------------------------------------------------------------------
    def run_stages(self) -> dict[str, dict]:
        """Build tokenizer, SFT policy and reward model for every (model row, data seed) the grid uses;
        ``stages.json`` is keyed by :attr:`Cell.stage` (``<model>``, ``<model>@d<seed>`` for another data seed)."""
        stages = read_json(self.output_dir / STAGES_FILE) or {}
        strata = sorted({(c.model, c.data_seed) for c in self.recipe.cells()}, key=lambda k: (k[0], k[1] is not None, k[1] or 0))
        self.artifacts_root.mkdir(parents=True, exist_ok=True)
        for model, data_seed in strata:
            name = Cell(model, "", "", 0, data_seed=data_seed).stage
            dirs = artifact_dirs(self.recipe, self.recipe.models[model], self.artifacts_root, data_seed)
            if all(is_complete(p) for p in dirs.stage_paths()) and name in stages:
                continue
            if self.progress:
                self.progress.stage_started(name)
            spec_path = self.artifacts_root / f"stages-{name}.spec.json"
            result_path = self.artifacts_root / f"stages-{name}.result.json"
            log_path = self.artifacts_root / f"stages-{name}.log"
            spec = {"recipe": str(self.output_dir / RECIPE_COPY), "model": model, "artifacts_root": str(self.artifacts_root),
                    "threads": stage_threads(self.recipe),  # part of the SFT/RM keys (artifacts.py)
                    "result": str(result_path)}
            if data_seed is not None:
                spec["data_seed"] = data_seed
            write_json_atomic(spec_path, spec)
            started = time.perf_counter()
            rc = self._run_stage_process(spec_path, log_path)
            if rc == 0 and (metrics := read_json(result_path)) is not None:
                stages[name] = {"status": "ok", **metrics}
            elif rc is None:
                timeout = self.recipe.run.stage_timeout_s
                stages[name] = {"status": "failed", "error": f"stages timed out: still running after {timeout:g} s ([run] stage_timeout_s)"}
            else:
                tail = log_path.read_bytes()[-2000:].decode(errors="replace").strip().splitlines()
                stages[name] = {"status": "failed", "error": tail[-1] if tail else f"exit code {rc}"}
            stages[name]["wall_s"] = time.perf_counter() - started
            if data_seed is not None:  # entries of the [run] data_seed stratum stay as in a plain grid
                stages[name]["data_seed"] = data_seed
            write_json_atomic(self.output_dir / STAGES_FILE, stages)
            if self.progress:
                self.progress.stage_finished(name, stages[name])
        return stages

    def _run_stage_process(self, spec_path: Path, log_path: Path) -> int | None:
        """The stages of one model row in their own process, through the executor (on a cluster the stages
        train where cells do, with a cell's resources); None when stopped by ``stage_timeout_s``."""
        command = [sys.executable, "-m", "rlhfkit.stages.pipeline", str(spec_path)]
        handle = self.executor.launch(command, self._env(), os.getcwd(), log_path)
        try:
            while (rc := handle.wait(timeout=1.0)) is None:
                if handle.elapsed() > self.recipe.run.stage_timeout_s:  # counted from the start, not the queue
                    handle.kill()
                    return None
            return rc
        except BaseException:
            handle.kill()
            raise
        finally:
            handle.close()

    # -- cells ----------------------------------------------------------------------------------------
    def _env(self) -> dict:
        env = dict(os.environ)
        if not self._online_models():
            env.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of hanging on a network call
        env["TOKENIZERS_PARALLELISM"] = "false"
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _online_models(self) -> bool:
        from rlhfkit.models import looks_like_hub_id

        refs = [m.policy for m in self.recipe.models.values()] + [m.reward for m in self.recipe.models.values()]
        return any(looks_like_hub_id(r) and not Path(r).exists() for r in refs)

    def cell_command(self, spec_path: Path) -> list[str]:
        n = self.recipe.run.num_processes
        if n == 1:
            return [sys.executable, "-m", "rlhfkit.cell", str(spec_path)]
        return [
            sys.executable, "-m", "torch.distributed.run",
            "--nproc_per_node", str(n), "--standalone",
            "-m", "rlhfkit.cell", str(spec_path),
        ]

    def _launch(self, cell: Cell) -> Running:
        directory = cell_dir(self.output_dir, cell)
        clear_attempt(directory)
        spec_path = directory / "spec.json"
        write_json_atomic(
            spec_path,
            {
                "recipe": str(self.output_dir / RECIPE_COPY),
                "cell": cell.as_dict(),
                "cell_dir": str(directory),
                "artifacts_root": str(self.artifacts_root),
                "threads": self.threads,
                "parallel_cells": self.recipe.run.parallel_cells,
            },
        )
        self.hook.cell_started(cell=cell, cell_dir=directory, run=self.recipe.run_context(self.output_dir / RECIPE_COPY))
        handle = self.executor.launch(self.cell_command(spec_path), self._env(), os.getcwd(), directory / "log.txt",
                                      attempt_dir=directory)
        # Memory samples (evidence for oom when a signal ends the cell) need the process on this machine.
        pid = getattr(handle, "pid", None)
        return Running(cell=cell, proc=handle, started=time.monotonic(), watch=MemoryWatch(pid) if pid else None,
                       checkpoint_from=saved_step(directory))

    def _finish(self, run: Running, timed_out: bool = False) -> dict:
        run.proc.close()
        directory = cell_dir(self.output_dir, run.cell)
        result = read_result(self.output_dir, run.cell)
        if timed_out:
            result = {"cell": run.cell.as_dict(), "status": "timeout",
                      "error": f"still running after {self.recipe.run.cell_timeout_s:g} s"}
            write_json_atomic(directory / "result.json", result)
        elif result is None:
            rc = run.proc.returncode
            if rc is not None and rc < 0:
                status, error = classify_exit(-rc, run.watch)
            else:
                lines = (directory / "log.txt").read_bytes()[-2000:].decode(errors="replace").strip().splitlines()
                status, error = "failed", (lines[-1] if lines else f"exit code {rc}")
            result = {"cell": run.cell.as_dict(), "status": status, "error": error}
            if (directory / "checkpoint").is_dir():  # what a rerun needs to tell progress from a loop (resumes())
                result["checkpoint"] = {"resumed_from": run.checkpoint_from, "saved": saved_step(directory)}
            write_json_atomic(directory / "result.json", result)
        self.hook.cell_finished(cell=run.cell, cell_dir=directory, result=result,
                                run=self.recipe.run_context(self.output_dir / RECIPE_COPY))
        return result

    def _poll_progress(self, run: Running) -> None:
        path = cell_dir(self.output_dir, run.cell) / "metrics.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(run.metrics_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        if len(chunk) == 0 and path.stat().st_size < run.metrics_offset:  # a retried attempt started afresh
            run.metrics_offset = run.steps_done = 0
        complete = chunk[: chunk.rfind(b"\n") + 1]
        run.metrics_offset += len(complete)
        lines = complete.count(b"\n")
        if lines:
            run.steps_done += lines
            try:
                last = json.loads(complete.strip().splitlines()[-1])
            except ValueError:  # not JSON or not UTF-8: the cell's own problem, shown when it ends
                last = None
            if self.progress and isinstance(last, dict):
                self.progress.cell_step(run.cell, run.steps_done, last)

    def run_cells(self, stages: dict[str, dict]) -> RunOutcome:
        """Tuning and default cells first; then, with ``[tuning]``, each arm's tuned setting on the grid seeds."""
        outcome = RunOutcome(self.output_dir)
        self._run_batch([c for c in self.recipe.cells() if c.phase != "final"], stages, outcome)
        if self.recipe.tuning is not None:
            from rlhfkit.tuning import TuningError, select_tuning, write_resolved

            try:
                select_tuning(self.recipe, self.output_dir)
            except TuningError as exc:
                raise RunError(str(exc)) from None
            write_resolved(self.recipe, self.output_dir)
            self._run_batch(self.recipe.final_cells(), stages, outcome)
        return outcome

    def _pending(self, cells: list[Cell], stages: dict[str, dict], outcome: RunOutcome) -> deque[Cell]:
        """Cells to run; finished ones are kept (same settings and phase in their result), and cells whose
        stages failed are marked failed without running."""
        todo: deque[Cell] = deque()
        for cell in cells:
            result = read_result(self.output_dir, cell)
            if result is not None and not _same_cell(result, cell):
                result = None  # a result left by other settings under this id: rerun
            if result is not None and resumes(result, cell_dir(self.output_dir, cell)):
                result = None  # died mid-run after saving progress: continue from its checkpoint
            keep = result is not None and (result["status"] == "ok" or not self.retry_failed)
            if keep:
                outcome.kept.append(cell)
                outcome.statuses[cell.id] = result["status"]
            elif (stages.get(cell.stage) or {}).get("status") != "ok":
                directory = cell_dir(self.output_dir, cell)
                directory.mkdir(parents=True, exist_ok=True)
                error = (stages.get(cell.stage) or {}).get("error", "stages did not run")
                result = {"cell": cell.as_dict(), "status": "failed", "error": f"SFT/reward-model stage failed: {error}"}
                write_json_atomic(directory / "result.json", result)
                outcome.statuses[cell.id] = "failed"
                outcome.ran.append(cell)
            else:
                todo.append(cell)
        return todo

    def _run_batch(self, cells: list[Cell], stages: dict[str, dict], outcome: RunOutcome) -> None:
        kept_before = len(outcome.kept)
        todo = self._pending(cells, stages, outcome)
        if not cells:
            return
        if self.progress:
            self.progress.cells_planned(cells, outcome.kept[kept_before:], self.recipe)
        running: dict[str, Running] = {}
        try:
            while todo or running:
                while todo and len(running) < self.executor.slots:
                    cell = todo.popleft()
                    running[cell.id] = self._launch(cell)
                    if self.progress:
                        self.progress.cell_started(cell)
                time.sleep(0.2)
                for cell_id, run in list(running.items()):
                    self._poll_progress(run)
                    if run.watch is not None:
                        run.watch.sample()
                    # Counted from the cell's start (on a cluster a queued cell has not started yet).
                    timed_out = run.proc.poll() is None and run.proc.elapsed() > self.recipe.run.cell_timeout_s
                    if timed_out:
                        run.proc.kill()
                    if run.proc.poll() is None:
                        continue
                    del running[cell_id]
                    result = self._finish(run, timed_out=timed_out)
                    outcome.ran.append(run.cell)
                    outcome.statuses[cell_id] = result["status"]
                    if self.progress:
                        self.progress.cell_finished(run.cell, result, time.monotonic() - run.started)
        finally:
            for run in running.values():  # interrupted: stop children (cancel their tasks), leave cells unfinished
                run.proc.kill()
                run.proc.close()


# What a cell's checkpoint needs of its interrupted attempt (rlhfkit/engine/checkpoint.py): the cell truncates
# metrics.jsonl to the checkpoint's length, or to nothing when it ignores the checkpoint.
RESUMABLE = ("checkpoint", "metrics.jsonl")


def clear_attempt(directory: Path) -> None:
    """Remove the leftovers of an interrupted attempt: everything, or, where a checkpoint is left
    (``[run] checkpoint_every``), everything but the checkpoint and the metric lines it continues."""
    if (directory / "checkpoint").is_dir():
        for entry in directory.iterdir():
            if entry.name not in RESUMABLE:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    elif directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)


def saved_step(directory: Path) -> int:
    """The step of a cell's latest checkpoint (``checkpoint/LATEST`` -> ``step-<n>``), 0 when it has none."""
    try:
        name = (directory / "checkpoint" / "LATEST").read_text().strip()
        return int(name.removeprefix("step-"))
    except (OSError, ValueError):
        return 0


def resumes(result: dict, directory: Path) -> bool:
    """Whether a plain rerun continues a dead cell from its checkpoint instead of keeping its status.

    Only a death the cell did not report itself: the runner wrote the result (status ``killed``, or ``failed``
    for a signal such as SIGSEGV or a process the executor lost: a preempted job, a dead Ray worker) and recorded
    the checkpoint then.  A status the cell wrote (``diverged``, ``oom``, an exception as ``failed``) and
    ``timeout``/``oom`` from the runner stay terminal (``--retry-failed`` reruns them, from the checkpoint).
    The last attempt must have saved a newer checkpoint than the one it started from: a cell that dies again
    before its next checkpoint (a deterministic crash at one step) is kept as it is, so reruns cannot loop;
    each resumed attempt advances at least ``checkpoint_every`` steps.
    """
    saved = result.get("checkpoint")
    if result.get("status") not in ("killed", "failed") or not isinstance(saved, dict):
        return False
    try:
        return saved_step(directory) == int(saved["saved"]) > int(saved["resumed_from"])
    except (KeyError, TypeError, ValueError):
        return False


def _same_cell(result: dict, cell: Cell) -> bool:
    try:
        return Cell(**result["cell"]) == cell
    except (KeyError, TypeError, ValueError):
        return False


def run_recipe(recipe: Recipe, output_dir: Path, progress=None, retry_failed: bool = False) -> RunOutcome:
    from rlhfkit.executors import ExecutorError, make_executor
    from rlhfkit.tuning import write_resolved

    prepare_output(recipe, output_dir)
    with OutputLock(output_dir):
        _record_run(recipe, output_dir)
        # A tuning.json of an earlier run may not match this recipe's sweep: tuning picks again below.
        (output_dir / TUNING_FILE).unlink(missing_ok=True)
        recipe.tuned = {}
        write_resolved(recipe, output_dir)
        try:
            executor = make_executor(recipe.run, cell_threads(dataclasses.asdict(recipe.run)))
        except ExecutorError as exc:
            raise RunError(str(exc)) from None
        try:
            executor.open(output_dir)  # before the stages: a cluster that cannot run the grid says so first
            runner = Runner(recipe, output_dir, progress=progress, retry_failed=retry_failed, executor=executor)
            stages = runner.run_stages()
            outcome = runner.run_cells(stages)
            if recipe.run.save_policies == "best":  # every cell saved its policy; keep each algorithm's best
                from rlhfkit.policies import keep_best

                keep_best(output_dir)
            return outcome
        except ExecutorError as exc:
            raise RunError(str(exc)) from None
        finally:
            executor.close()


__all__ = ["run_recipe", "RunError", "TERMINAL_STATUSES", "results_fingerprint"]
