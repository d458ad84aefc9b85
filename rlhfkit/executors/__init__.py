"""Where cell and stage processes run: local processes (default), a Ray cluster, or Slurm through submitit.

Every executor runs the SAME command (``python -m rlhfkit.cell SPEC.json``, or torchrun for multi-process
cells) with the same environment overrides, and the process writes the same files (metrics.jsonl,
result.json) into the output directory; so results do not depend on the executor.  The runner drives an
executor through a small interface:

* ``open(output_dir)``: connect/start, check what the executor needs (Ray: every node sees the output dir);
* ``slots``: how many cells the runner keeps in flight;
* ``launch(command, env, cwd, log_path, attempt_dir)`` -> a handle with ``poll()``, ``wait(timeout)``,
  ``returncode``, ``elapsed()`` (seconds since the process started, 0 while queued), ``kill()``, ``close()``;
* ``close()``: stop what is left of this run and disconnect.

This module holds only the settings and the factory: Ray and submitit are imported by the executor that
uses them, so the default local executor needs nothing beyond rlhfkit's own requirements.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

EXECUTORS = ("local", "ray", "slurm")
# Module each executor needs, and the extra that installs it (one line when it is missing).
REQUIRES = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}


class ExecutorError(Exception):
    """The executor cannot run this grid (not installed, cannot connect, a node cannot see the output dir)."""


@dataclass
class RaySettings:
    """``[run.ray]``: how cells run on a Ray cluster (``executor = "ray"``)."""

    address: str = ""
    """``"auto"`` (the cluster this machine belongs to), ``"host:port"`` (its GCS), ``"ray://host:10001"`` (Ray
    Client), or ``""``: start a local Ray instance for this run and stop it afterwards."""
    num_cpus: float = 0.0
    """CPUs reserved per cell (the whole cell, all its processes); 0 = threads per cell x ``num_processes``."""
    num_gpus: float = 0.0
    """GPUs reserved per cell (the whole cell); a Ray task takes its resources from one node, so a multi-process
    cell's GPUs are always on one node."""
    resources: dict = field(default_factory=dict)
    """Custom Ray resources reserved per cell, e.g. ``{ a100 = 1 }``."""
    max_retries: int = 0
    """Times a cell whose Ray worker or node died is run again (from step 0) before it is recorded failed."""
    max_in_flight: int = 0
    """Cells submitted at a time; 0 = as many as the cluster's resources fit when the run starts."""

    def __post_init__(self):
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        if self.max_retries < 0 or self.max_in_flight < 0:
            raise ValueError("max_retries and max_in_flight must be >= 0")
        for key, value in self.resources.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"resources.{key}: expected a positive number, got {value!r}")


@dataclass
class SlurmSettings:
    """``[run.slurm]``: one Slurm job per cell (and per stage), submitted through submitit."""

    partition: str = ""
    """Slurm partition; empty = the cluster's default."""
    time_min: int = 0
    """Job time limit in minutes; 0 = the cell (or stage) timeout plus 10 minutes."""
    gpus_per_node: int = 0
    """GPUs per job (a cell's processes all run in its one job, on one node)."""
    cpus_per_task: int = 0
    """CPUs per job; 0 = threads per cell x ``num_processes``."""
    mem_gb: float = 0.0
    """Memory per job in GB; 0 = the partition's default."""
    slurm_additional_parameters: dict = field(default_factory=dict)
    """Further sbatch options, e.g. ``{ account = "rl", qos = "high" }``."""
    max_jobs: int = 0
    """Jobs submitted at a time; 0 = every pending cell (Slurm queues them)."""
    cluster: str = "slurm"
    """``"slurm"``, or ``"local"``: submitit's local executor (jobs as local processes, to try the path)."""
    folder: str = ""
    """Where submitit keeps job files; empty = ``<output>/slurm``."""

    def __post_init__(self):
        if min(self.time_min, self.gpus_per_node, self.cpus_per_task, self.max_jobs) < 0 or self.mem_gb < 0:
            raise ValueError("time_min, gpus_per_node, cpus_per_task, mem_gb and max_jobs must be >= 0")
        if self.cluster not in ("slurm", "local"):
            raise ValueError("cluster must be one of: slurm, local")


def check_installed(executor: str) -> None:
    """One line naming the extra to install when the chosen executor's package is missing."""
    if executor not in REQUIRES:
        return
    module, extra = REQUIRES[executor]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ExecutorError(
            f'run.executor = "{executor}" needs {module}, which is not installed: pip install -e ".[{extra}]" '
            f'(or pip install "rlhfkit[{extra}]")'
        )


def make_executor(run, threads: int):
    """The executor ``run.executor`` names (``run``: the recipe's RunSettings); imports only that one."""
    check_installed(run.executor)
    per_cell_cpus = threads * run.num_processes
    if run.executor == "ray":
        from rlhfkit.executors.ray import RayExecutor

        return RayExecutor(run.ray, per_cell_cpus)
    if run.executor == "slurm":
        from rlhfkit.executors.slurm import SlurmExecutor

        return SlurmExecutor(run.slurm, per_cell_cpus, run.cell_timeout_s, run.stage_timeout_s)
    from rlhfkit.executors.local import LocalExecutor

    return LocalExecutor(run.parallel_cells)


__all__ = ["EXECUTORS", "ExecutorError", "RaySettings", "SlurmSettings", "check_installed", "make_executor"]
