"""One Slurm job per cell (and per stage), submitted through submitit.

Each job runs the runner's command as a child process on its node (:func:`rlhfkit.executors.remote.run_process`),
so the cell process and its files are the same as with the local executor.  Same filesystem assumption as Ray:
the output directory is on storage the compute nodes mount at the same path; the driver (the login node, or a
small job of its own) follows progress from the files cells write there.  ``cluster = "local"`` runs the jobs
through submitit's local executor instead (processes on this machine), which is how the tests exercise it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from rlhfkit.executors import ExecutorError, SlurmSettings
from rlhfkit.executors.remote import env_overrides, record_lost, remote_command, run_process, started_elapsed

SLACK_MIN = 10  # the job outlives the runner's own timeout, so the runner (not Slurm) reports a timeout


def _run_in_job(command, env, cwd, log_path, attempt_dir):
    import submitit

    try:
        job_id = submitit.JobEnvironment().job_id
    except RuntimeError:  # not inside a submitit job (called directly)
        job_id = None
    return run_process(command, env, cwd, log_path, attempt_dir, {"executor": "slurm", "job_id": job_id})


class SlurmJob:
    def __init__(self, job, log_path: Path):
        self.job = job
        self.log_path = log_path
        self.returncode: int | None = None
        self._seen: dict = {}

    def poll(self) -> int | None:
        if self.returncode is None and self.job.done():
            self.returncode = self._outcome()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(min(1.0, timeout or 1.0))
        return self.returncode

    def _outcome(self) -> int:
        try:
            return int(self.job.result())
        except Exception as exc:  # submitit's UncompletedJobError/FailedJobError: the job ended without an answer
            first = (str(exc).strip().splitlines() or [""])[0]
            return record_lost(self.log_path, f"Slurm job {self.job.job_id} ended without finishing this process "
                                              f"(state {self.job.state}): {type(exc).__name__}: {first}")

    def elapsed(self) -> float:
        return started_elapsed(self.log_path, self._seen)

    def kill(self) -> None:
        self.job.cancel(check=False)
        self.returncode = -9 if self.returncode is None else self.returncode

    def close(self) -> None:
        """The log file is the node's: nothing held here."""


class SlurmExecutor:
    name = "slurm"

    def __init__(self, settings: SlurmSettings, per_cell_cpus: int, cell_timeout_s: float, stage_timeout_s: float):
        self.settings = settings
        self.cpus = settings.cpus_per_task or per_cell_cpus
        self.timeouts = {"cell": cell_timeout_s, "stage": stage_timeout_s}
        self.slots = settings.max_jobs or sys.maxsize
        self.executors: dict = {}

    def open(self, output_dir: Path) -> None:
        import submitit

        folder = Path(self.settings.folder or Path(output_dir) / "slurm").absolute() / "%j"
        cluster = "local" if self.settings.cluster == "local" else "slurm"
        for kind, timeout_s in self.timeouts.items():
            try:
                executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            except RuntimeError as exc:  # no sbatch on this machine
                raise ExecutorError(f"cannot submit Slurm jobs from this machine ({exc}); run rlhfkit on a login node") from None
            params = {"timeout_min": self.settings.time_min or math.ceil(timeout_s / 60) + SLACK_MIN,
                      "cpus_per_task": self.cpus, "gpus_per_node": self.settings.gpus_per_node,
                      "name": f"rlhfkit-{kind}", "nodes": 1, "tasks_per_node": 1}
            if self.settings.mem_gb:
                params["mem_gb"] = self.settings.mem_gb
            if self.settings.partition:
                params["slurm_partition"] = self.settings.partition
            if self.settings.slurm_additional_parameters:
                params["slurm_additional_parameters"] = dict(self.settings.slurm_additional_parameters)
            executor.update_parameters(**params)
            self.executors[kind] = executor

    def launch(self, command: list[str], env: dict, cwd: str, log_path: Path, attempt_dir: Path | None = None) -> SlurmJob:
        log_path = Path(log_path).absolute()
        kind = "cell" if attempt_dir else "stage"
        job = self.executors[kind].submit(
            _run_in_job, remote_command(command), env_overrides(env), cwd, str(log_path),
            str(Path(attempt_dir).absolute()) if attempt_dir else None,
        )
        return SlurmJob(job, log_path)

    def close(self) -> None:
        """Jobs of this run still queued or running were cancelled by the runner (kill)."""
