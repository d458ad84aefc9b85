"""Issue 14 hardening: honest cell statuses, verified stage artifacts, bounded reward-stage memory, QLoRA on
AVX512-BF16 CPUs refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhfkit import artifacts
from rlhfkit.cell import classify_exception

REPO = Path(__file__).resolve().parents[1]


# --- statuses ---------------------------------------------------------------------------------------------


def _raised(make):
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the exception object is what is classified
        return exc
    raise AssertionError("nothing raised")


def test_cpu_allocation_failures_are_oom():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    cpu = _raised(lambda: torch.empty(1 << 60, dtype=torch.uint8))  # torch's DefaultCPUAllocator
    assert isinstance(cpu, RuntimeError) and "DefaultCPUAllocator" in str(cpu)
    assert classify_exception(cpu) == "oom"
    assert classify_exception(_raised(lambda: np.empty(10**14))) == "oom"  # numpy's _ArrayMemoryError
    assert classify_exception(RuntimeError("std::bad_alloc")) == "oom"
    assert classify_exception(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == "oom"
    assert classify_exception(MemoryError()) == "oom"


def test_a_wrapped_allocation_failure_is_oom_and_other_errors_are_failed():
    from rlhfkit.engine.context import DivergedError

    def wrapped():
        try:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 59 GB")
        except RuntimeError as exc:
            raise ValueError("while scoring the batch") from exc

    assert classify_exception(_raised(wrapped)) == "oom"
    assert classify_exception(RuntimeError("shape mismatch")) == "failed"
    assert classify_exception(KeyError("policy")) == "failed"
    assert classify_exception(DivergedError("policy/approxkl is nan at step 3")) == "diverged"


# --- artifacts --------------------------------------------------------------------------------------------


def _published(tmp_path: Path, name="sft-abc") -> Path:
    final = tmp_path / name
    tmp = artifacts.staging_dir(final)
    (tmp / "model.safetensors").write_bytes(os.urandom(4096))
    (tmp / "sub").mkdir()
    (tmp / "sub" / "config.json").write_text("{}")
    artifacts.publish(tmp, final, {"kind": "sft", "metrics": {"sft/train_loss": 1.0}})
    return final


def test_publish_records_sizes_and_hashes_and_reuse_checks_them(tmp_path, capsys):
    final = _published(tmp_path)
    marker = artifacts.read_marker(final)
    assert marker["kind"] == "sft" and set(marker["files"]) == {"model.safetensors", "sub/config.json"}
    assert marker["files"]["model.safetensors"]["size"] == 4096
    assert artifacts.is_complete(final) and artifacts.reusable(final)
    # same size, one byte flipped: caught by the hash (the file is below HASH_LIMIT_BYTES)
    data = bytearray((final / "model.safetensors").read_bytes())
    data[100] ^= 0xFF
    (final / "model.safetensors").write_bytes(bytes(data))
    assert artifacts.damage(final) == "model.safetensors does not match its recorded sha256"
    assert artifacts.damage(final, hashes=False) is None
    assert not artifacts.is_complete(final)
    notes: list = []
    assert not artifacts.reusable(final, notes)
    assert not final.exists() and not list(tmp_path.glob("*.damaged-*"))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"artifact sft-abc is damaged (model.safetensors does not match its recorded sha256); rebuilding it"]
    assert notes == err


def test_a_missing_file_or_a_marker_without_files(tmp_path):
    final = _published(tmp_path)
    (final / "sub" / "config.json").unlink()
    assert artifacts.damage(final) == "sub/config.json is missing"
    old = tmp_path / "old"
    old.mkdir()
    (old / artifacts.DONE_MARKER).write_text(json.dumps({"kind": "sft", "metrics": {}}))
    assert artifacts.is_complete(old)  # markers written before files were recorded are trusted as before
    (old / artifacts.DONE_MARKER).write_text("{trunc")
    assert artifacts.damage(old) == "no readable done marker" and not artifacts.is_complete(old)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_scratch_of_dead_processes_is_removed(tmp_path):
    dead = tmp_path / f"sft-abc.tmp-{_dead_pid()}"
    aside = tmp_path / f"reward-abc.damaged-{_dead_pid()}"
    live = tmp_path / f"sft-abc.tmp-{os.getppid()}"  # the parent of this test process is alive
    for d in (dead, aside, live):
        (d / "x").mkdir(parents=True)
    keep = tmp_path / "stages-m.spec.json.tmp-1"
    keep.write_text("{}")  # a file, not a staging directory
    assert sorted(artifacts.remove_stale_scratch(tmp_path)) == sorted([dead, aside])
    assert live.is_dir() and keep.is_file() and not dead.exists() and not aside.exists()


TINY_RECIPE = """
name = "tiny"
[data]
name = "synthetic"
num_sft = 48
num_pairs = 48
num_eval_pairs = 16
num_eval_prompts = 8
[[models]]
name = "llama-tiny"
policy = "llama:tiny"
[grid]
algorithms = ["ppo"]
memory = ["full"]
seeds = [1]
[sft]
epochs = 1
batch_size = 16
[reward_model]
epochs = 1
batch_size = 16
[rl]
steps = 1
batch_size = 8
response_length = 8
[run]
threads_per_cell = 1
"""


def test_a_truncated_sft_model_is_rebuilt_on_rerun(tmp_path, capfd):
    pytest.importorskip("torch")
    from rlhfkit.recipe import load_recipe
    from rlhfkit.stages.pipeline import run_stages

    recipe_path = tmp_path / "tiny.toml"
    recipe_path.write_text(TINY_RECIPE)
    root = tmp_path / "artifacts"
    spec = {"recipe": str(recipe_path), "model": "llama-tiny", "artifacts_root": str(root), "threads": 1}
    first = run_stages(spec)
    recipe = load_recipe(recipe_path)
    dirs = artifacts.artifact_dirs(recipe, recipe.models["llama-tiny"], root)
    weights = dirs.sft / "model.safetensors"
    size = weights.stat().st_size
    stale = root / f"{dirs.sft.name}.tmp-{_dead_pid()}"  # a stage killed while writing
    stale.mkdir()
    with open(weights, "r+b") as handle:
        handle.truncate(size // 2)
    assert not artifacts.is_complete(dirs.sft)  # the runner's check launches the stage process again
    capfd.readouterr()
    second = run_stages(spec)
    err = capfd.readouterr().err
    note = f"artifact {dirs.sft.name} is damaged (model.safetensors has {size // 2} bytes, {size} recorded); rebuilding it"
    assert note in err.splitlines()
    assert second["stages/rebuilt"] == [note] and first["stages/rebuilt"] == []
    assert weights.stat().st_size == size and artifacts.is_complete(dirs.sft)
    assert second["sft/train_loss"] == first["sft/train_loss"]  # same seed, same model
    assert not stale.exists()
