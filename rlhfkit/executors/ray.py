"""Cells (and stages) as Ray tasks: each task runs the runner's command as a child process on its node.

Why a task that starts a process, not the cell's code inside the Ray worker: the cell process is then the same
as with the local executor (isolation, torchrun, signals, statuses, timeouts), so are its numbers; a crash or
an OOM kills that process, not a Ray worker shared with later tasks.

Filesystem assumption: the output directory is on storage that every node sees at the same path (NFS, Lustre,
a shared volume; on one machine, any directory).  Cells read the recipe copy, the spec and the stages'
artifacts from it and write metrics.jsonl and result.json into it; the driver follows progress by polling
those files, as it does locally.  ``open`` checks it before anything runs: a task pinned to each node reads a
file the driver wrote and writes one back; a node that cannot is a one-line error naming it.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path

from rlhfkit.executors import ExecutorError, RaySettings
from rlhfkit.executors.remote import env_overrides, info_path, record_lost, remote_command, run_process, started_elapsed

PROBE_TIMEOUT_S = 60
CANCEL_WAIT_S = 10
_REMOTE = {}


def _run_on_node(command, env, cwd, log_path, attempt_dir):
    import ray

    context = ray.get_runtime_context()
    where = {"executor": "ray", "node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    return run_process(command, env, cwd, log_path, attempt_dir, where)


def _probe(probe: str, token: str, node_id: str) -> str:
    """On one node: read the driver's probe file, write this node's answer next to it; '' or what went wrong."""
    try:
        if Path(probe).read_text() != token:
            return f"{probe} holds other content"
        Path(f"{probe}.{node_id}").write_text(token)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return ""


def _remote(name: str):
    """The Ray remote function (made once per process, so ``import ray`` stays out of module import)."""
    if name not in _REMOTE:
        import ray

        _REMOTE.update(run=ray.remote(_run_on_node), probe=ray.remote(_probe))
    return _REMOTE[name]


class RayCell:
    """A cell's Ray task; ``poll`` never blocks."""

    def __init__(self, ref, log_path: Path, retries: int):
        self.ref = ref
        self.log_path = log_path
        self.retries = retries
        self.returncode: int | None = None
        self._seen: dict = {}

    def poll(self) -> int | None:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> int | None:
        import ray

        if self.returncode is None and ray.wait([self.ref], timeout=timeout)[0]:
            self.returncode = self._outcome()
        return self.returncode

    def _outcome(self) -> int:
        import ray

        try:
            return int(ray.get(self.ref))
        except ray.exceptions.TaskCancelledError:
            return -9
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            what = "died"
            detail = exc
        except ray.exceptions.RayError as exc:
            what = "failed"
            detail = exc
        where = _where(self.log_path)
        tries = f" after {self.retries + 1} attempts" if self.retries else " ([run.ray] max_retries = 0)"
        first = (str(detail).strip().splitlines() or [""])[0]
        return record_lost(self.log_path, f"the Ray worker running the process {what}{where}{tries}: {type(detail).__name__}: {first}")

    def elapsed(self) -> float:
        return started_elapsed(self.log_path, self._seen)

    def kill(self) -> None:
        """Cancel the task by force: Ray kills its worker and the cell process dies with it (PR_SET_PDEATHSIG),
        as a local cell dies with a killed runner.  (An interrupt-style cancel waits for the task to notice.)"""
        import ray

        if self.poll() is None:  # a finished task is not cancelled: that trips a check in Ray 2.60's core worker
            ray.cancel(self.ref, force=True)
            ray.wait([self.ref], timeout=CANCEL_WAIT_S)
        self.returncode = -9 if self.returncode is None else self.returncode

    def close(self) -> None:
        """The log file is the node's: nothing held here."""


def _where(log_path: Path) -> str:
    import json

    try:
        info = json.loads(info_path(log_path).read_text())
        return f" (node {info.get('node_ip')}, worker pid {info.get('pid')})"
    except (OSError, ValueError):
        return " (before it started the process)"


class RayExecutor:
    name = "ray"

    def __init__(self, settings: RaySettings, per_cell_cpus: int):
        self.settings = settings
        self.options = {"num_cpus": settings.num_cpus or per_cell_cpus, "num_gpus": settings.num_gpus,
                        "resources": dict(settings.resources), "max_retries": settings.max_retries}
        self.slots = 1
        self.connected = False

    def open(self, output_dir: Path) -> None:
        import ray

        address = self.settings.address or "local"  # "local": a new instance, never an existing cluster
        # A run's own instance listens on loopback only: nothing outside this machine needs to reach it.
        kwargs = {"num_cpus": os.cpu_count(), "_node_ip_address": "127.0.0.1"} if address == "local" else {}
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=True, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ExecutorError(f"cannot connect to the Ray cluster at {self.settings.address or 'a new local instance'}: {first}") from None
        self.connected = True
        self.slots = self.settings.max_in_flight or self._capacity()
        check_shared_dir(Path(output_dir).absolute())

    def _capacity(self) -> int:
        """Cells the alive nodes fit at once (so a launched cell starts now); a cell no node fits is an error."""
        import ray

        need = {"CPU": self.options["num_cpus"], "GPU": self.options["num_gpus"], **self.options["resources"]}
        need = {k: v for k, v in need.items() if v}
        total = 0
        for node in (n for n in ray.nodes() if n.get("Alive")):
            have = node.get("Resources", {})
            total += min((math.floor(have.get(k, 0) / v) for k, v in need.items()), default=1)
        if total < 1:
            wanted = ", ".join(f"{v:g} {k}" for k, v in need.items())
            raise ExecutorError(f"no Ray node has the resources of one cell ({wanted}); lower [run.ray] num_cpus/num_gpus/resources or add nodes")
        return total

    def launch(self, command: list[str], env: dict, cwd: str, log_path: Path, attempt_dir: Path | None = None) -> RayCell:
        log_path = Path(log_path).absolute()
        # Ray reruns a task whose worker or node died (max_retries), never one whose process failed: that is
        # the cell's status.  A retried cell's directory is cleaned first; a stage (attempt_dir None) reruns as is.
        ref = _remote("run").options(**self.options, retry_exceptions=False).remote(
            remote_command(command), env_overrides(env), cwd, str(log_path), str(Path(attempt_dir).absolute()) if attempt_dir else None,
        )
        return RayCell(ref, log_path, self.options["max_retries"])

    def close(self) -> None:
        import ray

        if self.connected:
            ray.shutdown()  # an instance this run started stops with it; a cluster's stays up
            self.connected = False


def check_shared_dir(output_dir: Path) -> None:
    """Every alive node reads a file the driver wrote into the output dir and writes one back, or one line
    names the node that cannot (instead of its cells hanging or failing one by one)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = output_dir / f".rlhfkit-probe-{token[:12]}"
    probe.write_text(token)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs, ready = {}, []
    try:
        for node in nodes:
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            refs[node["NodeID"]] = _remote("probe").options(num_cpus=0, scheduling_strategy=strategy, max_retries=0).remote(
                str(probe), token, node["NodeID"])
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        for node in nodes:
            name = f"Ray node {node.get('NodeManagerAddress')} ({node['NodeID'][:8]})"
            ref = refs[node["NodeID"]]
            if ref not in ready:
                raise ExecutorError(f"{name} did not answer the output-directory check within {PROBE_TIMEOUT_S} s; is it busy or unreachable?")
            problem = ray.get(ref)
            back = Path(f"{probe}.{node['NodeID']}")
            if not problem and (not back.exists() or back.read_text() != token):
                problem = "the driver cannot read what it wrote"
            if problem:
                raise ExecutorError(f"{name} cannot share the output directory {output_dir} with the driver ({problem}); "
                                    "put it on storage every node mounts at the same path")
    finally:
        for ref in refs.values():
            if ref not in ready:  # cancelling a finished task trips a check in Ray's core worker (2.60)
                ray.cancel(ref, force=True)
        for path in [probe, *(Path(f"{probe}.{node}") for node in refs)]:
            path.unlink(missing_ok=True)
