"""Executors: the same grid through local processes, a real 2-node Ray cluster and submitit's local executor.

The Ray cluster is two ``ray start --block`` processes on 127.0.0.1 (a head and a worker node, one CPU and a
custom resource each), started in their own sessions and stopped at teardown by process id: every process of
those sessions, and every process whose command line names this cluster's temporary directory.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, SMALL_RECIPE, run_cli

NUMBERS = ["cell", "status", "gold_sft", "gold_final", "score_final", "kl_final"]
BLOCKER = '''
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, _Missing())
'''


def small(tmp_path: Path, name: str, algorithms=("ppo", "rloo"), seeds=(1, 2), steps=2, extra="") -> Path:
    text = SMALL_RECIPE.format(algorithms=list(algorithms), seeds=list(seeds), steps=steps, parallel=2).replace("'", '"')
    path = tmp_path / f"{name}.toml"
    path.write_text(text + extra)
    return path


def numbers(out_dir: Path) -> pd.DataFrame:
    table = pd.read_csv(out_dir / "results.csv")
    return table[NUMBERS].sort_values("cell").reset_index(drop=True)


def reuse_stages(source: Path, out_dir: Path) -> None:
    """The stages' artifacts of an earlier run of the same data: the cells under test need not retrain them."""
    out_dir.mkdir(parents=True)
    shutil.copytree(source / "artifacts", out_dir / "artifacts")
    shutil.copy(source / "stages.json", out_dir / "stages.json")


def processes_naming(text: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if text in line and str(os.getpid()) != line.split(None, 1)[0]]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g} s")


# -- missing extras: one line, exit 2 ---------------------------------------------------------------------------

@pytest.mark.parametrize("executor, module, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_missing_extra_is_one_line_exit_2(tmp_path, executor, module, extra):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked={module}))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    recipe = small(tmp_path, "x", extra=f'executor = "{executor}"\n')
    out_dir = tmp_path / "out"
    for command in (["validate", recipe], ["run", recipe, "--output", out_dir],
                    ["run", small(tmp_path, "y"), "--output", out_dir, "--executor", executor]):
        out = run_cli(*command, env=env)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f'pip install -e ".[{extra}]"' in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not out_dir.exists()


def test_unknown_executor_is_refused(tmp_path):
    out = run_cli("validate", small(tmp_path, "x", extra='executor = "k8s"\n'))
    assert out.returncode == 2 and "run: executor must be one of: local, ray, slurm" in out.stderr


# -- a real 2-node Ray cluster ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], temp: str) -> subprocess.Popen:
    """``ray start --block`` in a session of its own (its processes are found by that session at teardown)."""
    return subprocess.Popen(
        [shutil.which("ray") or "ray", "start", "--block", "--disable-usage-stats", "--num-cpus", "1", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=temp,
        env={**os.environ, "RAY_TMPDIR": temp},
    )


def _stop_cluster(nodes: list[subprocess.Popen], temp: str) -> None:
    """Stop exactly this cluster's processes, by id: its sessions' processes and those naming its temp dir."""
    import psutil

    def ours() -> list[psutil.Process]:
        sessions = {n.pid for n in nodes}
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getsid(proc.pid) in sessions or temp in " ".join(proc.info["cmdline"] or []):
                    found.append(proc)
            except (ProcessLookupError, psutil.Error, OSError):
                continue
        return [p for p in found if p.pid != os.getpid()]

    # The teardown took 12 s with a 10 s wait after SIGTERM (a Ray process outlived it); 3 s, then SIGKILL.
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        for proc in ours():
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(ours(), timeout=wait)
    for node in nodes:
        node.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
    temp = tempfile.mkdtemp(prefix="rlray-", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    nodes = []
    patch = pytest.MonkeyPatch()
    # Ray 2.5x+ heads require a token unless told otherwise; a loopback test cluster does without (nodes and
    # drivers started from here inherit this).
    patch.setenv("RAY_AUTH_MODE", "disabled")
    try:
        nodes.append(_start_node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--resources",
                                  '{"node_a": 1}', "--include-dashboard=false", "--temp-dir", temp], temp))
        nodes.append(_start_node(["--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                                  "--resources", '{"node_b": 1}'], temp))
        count = ("import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR');"
                 "print(sum(n['Alive'] for n in ray.nodes()))" % port)
        wait_for(lambda: subprocess.run([sys.executable, "-c", count], capture_output=True, text=True).stdout.strip() == "2",
                 90, "two Ray nodes alive")
        yield f"127.0.0.1:{port}"
    finally:
        patch.undo()
        _stop_cluster(nodes, temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert not processes_naming(temp), "Ray processes of the test cluster are still running"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The 4-cell grid through the local executor: the numbers every other executor must reproduce."""
    tmp = tmp_path_factory.mktemp("local")
    out_dir = tmp / "run"
    out = run_cli("run", small(tmp, "grid"), "--output", out_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    return out_dir


def _ray_recipe(tmp_path, address, name="grid", extra_ray="", **kw) -> Path:
    return small(tmp_path, name, extra=f'executor = "ray"\n[run.ray]\naddress = "{address}"\n{extra_ray}', **kw)


@pytest.mark.slow
def test_ray_grid_matches_local_and_resumes_after_the_driver_is_killed(ray_cluster, local_run, tmp_path):
    recipe = _ray_recipe(tmp_path, ray_cluster)
    out_dir = tmp_path / "run"
    driver = subprocess.Popen([sys.executable, "-m", "rlhfkit", "run", str(recipe), "--output", str(out_dir)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = wait_for(lambda: next(iter((out_dir / "cells").glob("*/result.json")), None) if (out_dir / "cells").is_dir() else None,
                         240, "a first cell finished through Ray")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out_dir / "cells").glob("*/result.json")}
    assert first in kept and len(kept) < 4, "the driver was killed too late to test resuming"
    # Ray ends a dead driver's tasks; their cell processes die with their workers.
    wait_for(lambda: not processes_naming(str(out_dir / "cells")), 30, "cell processes of the killed driver gone")

    out = run_cli("run", recipe, "--output", out_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(kept)} kept" in out.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept  # none redone
    pd.testing.assert_frame_equal(numbers(out_dir), numbers(local_run))
    assert (pd.read_csv(out_dir / "results.csv")["status"] == "ok").all()
    nodes = {json.loads(p.read_text())["node_id"] for p in (out_dir / "cells").glob("*/log.worker.json")}
    assert len(nodes) == 2, "cells did not run on both Ray nodes"
    assert json.loads((out_dir / "artifacts" / "stages-llama-tiny.worker.json").read_text())["executor"] == "ray"


def _kill_worker_of_one_cell(out_dir: Path, cell: str) -> int:
    info = out_dir / "cells" / cell / "log.worker.json"
    wait_for(lambda: (out_dir / "cells" / cell / "metrics.jsonl").exists(), 180, f"{cell} training")
    pid = json.loads(info.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow
def test_a_killed_ray_worker_fails_its_cell_with_the_reason_and_the_grid_goes_on(ray_cluster, local_run, tmp_path):
    recipe = _ray_recipe(tmp_path, ray_cluster, algorithms=("rloo",), steps=6)
    out_dir = tmp_path / "run"
    reuse_stages(local_run, out_dir)
    driver = subprocess.Popen([sys.executable, "-m", "rlhfkit", "run", str(recipe), "--output", str(out_dir)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid = _kill_worker_of_one_cell(out_dir, "llama-tiny__rloo__full__s1")
    output, _ = driver.communicate(timeout=240)
    assert driver.returncode == 1, output
    killed = json.loads((out_dir / "cells" / "llama-tiny__rloo__full__s1" / "result.json").read_text())
    assert killed["status"] == "failed"
    assert "the Ray worker running the process died" in killed["error"] and f"worker pid {pid}" in killed["error"]
    other = json.loads((out_dir / "cells" / "llama-tiny__rloo__full__s2" / "result.json").read_text())
    assert other["status"] == "ok"
    assert not processes_naming(str(out_dir / "cells"))


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_when_the_recipe_says_so(ray_cluster, local_run, tmp_path):
    recipe = _ray_recipe(tmp_path, ray_cluster, extra_ray="max_retries = 1\n", algorithms=("rloo",), seeds=(1,))
    out_dir = tmp_path / "run"
    reuse_stages(local_run, out_dir)
    driver = subprocess.Popen([sys.executable, "-m", "rlhfkit", "run", str(recipe), "--output", str(out_dir)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _kill_worker_of_one_cell(out_dir, "llama-tiny__rloo__full__s1")
    output, _ = driver.communicate(timeout=240)
    assert driver.returncode == 0, output
    cell = out_dir / "cells" / "llama-tiny__rloo__full__s1"
    assert json.loads((cell / "log.worker.json").read_text())["attempt"] == 2
    assert len((cell / "metrics.jsonl").read_text().splitlines()) == 2  # the retry started afresh
    expected = numbers(local_run).set_index("cell").loc["llama-tiny__rloo__full__s1"]
    pd.testing.assert_series_equal(numbers(out_dir).set_index("cell").iloc[0], expected, check_names=False)


# -- Slurm through submitit's local executor --------------------------------------------------------------------

@pytest.mark.slow
def test_slurm_executor_through_submitit_local_gives_the_same_numbers(local_run, tmp_path):
    pytest.importorskip("submitit", reason='submitit is not installed (pip install -e ".[slurm]")')
    recipe = small(tmp_path, "grid", algorithms=("ppo",), extra='executor = "slurm"\n[run.slurm]\ncluster = "local"\n')
    out_dir = tmp_path / "run"
    reuse_stages(local_run, out_dir)
    out = run_cli("run", recipe, "--output", out_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    expected = numbers(local_run)
    pd.testing.assert_frame_equal(numbers(out_dir), expected[expected["cell"].str.contains("__ppo__")].reset_index(drop=True))
    info = json.loads((out_dir / "cells" / "llama-tiny__ppo__full__s1" / "log.worker.json").read_text())
    assert info["executor"] == "slurm" and info["job_id"]
