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


# --- reward stage memory ----------------------------------------------------------------------------------

# Runs in its own process so the peak resident set (ru_maxrss) is this stage's alone: data set read, tokenizer
# trained on it, reward model trained 1 epoch and scored, as the stage pipeline does.
_REWARD_STAGE = """
import json, resource, sys, torch
torch.set_num_threads(1)
from rlhfkit_plugins.datasets.preference_jsonl import PreferenceFileOptions, build
from rlhfkit.models import build_sequence_classifier, parse_model_spec
from rlhfkit.stages.reward import RewardStageConfig, train_reward_model
from rlhfkit.tokenizer import train_tokenizer
task = build(PreferenceFileOptions(path=sys.argv[1], eval_fraction=0.2, tokenizer_vocab_size=512), int(sys.argv[3]))
tokenizer = train_tokenizer(task.tokenizer_corpus(), task.tokenizer_kind, task.tokenizer_vocab_size)
torch.manual_seed(0)
model = build_sequence_classifier(parse_model_spec("llama:tiny"), tokenizer)
config = RewardStageConfig(epochs=1, batch_size=8, max_length=64, score_batch_size=64)
metrics = train_reward_model(model, tokenizer, task, config, sys.argv[2])
metrics["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
metrics["capped_texts"] = task.stats["capped_texts"]
metrics["long_row_trains"] = any(len(p["chosen"]) > 100_000 for p in task.pairs)
print(json.dumps(metrics))
"""


def _reward_stage(path: Path, out: Path, seed: int = 0) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", _REWARD_STAGE, str(path), str(out), str(seed)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_10mb_row_keeps_reward_stage_memory_within_1_5x(tmp_path):
    pytest.importorskip("torch")
    words = ["apple", "river", "stone", "cloud", "green", "quiet", "table", "music"]
    rows = [{"prompt": f"Question {i}: name a thing?", "chosen": f" A {words[i % 8]} {i}.", "rejected": " No."}
            for i in range(40)]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    huge_row = {"prompt": "Question: write a lot?", "chosen": " " + " ".join(words * 130_000)[:5_000_000],
                "rejected": " " + " ".join(reversed(words * 130_000))[:5_000_000]}
    huge = tmp_path / "huge.jsonl"
    huge.write_text("".join(json.dumps(r) + "\n" for r in rows[:20] + [huge_row] + rows[20:]))
    assert huge.stat().st_size > 10_000_000

    base = _reward_stage(plain, tmp_path / "rm-plain")
    # Data seed 0 holds the long row out (scored for accuracy only), seed 1 trains on it.  Measured: ~545 MiB
    # peak with or without it; 1.8 GB with the caps switched off and the row held out (scoring alone).
    for seed, trains in ((0, False), (1, True)):
        with_huge = _reward_stage(huge, tmp_path / f"rm-huge-{seed}", seed)
        assert with_huge["capped_texts"] == 2  # when read: both answers cut at MAX_TEXT_CHARS
        assert with_huge["long_row_trains"] == trains
        # in training, the pair is cut at 64 x max_length characters and then dropped by TRL as too long
        assert with_huge["reward/capped_pairs"] == int(trains) and with_huge["reward/dropped_pairs"] == int(trains)
        ratio = with_huge["peak_rss_bytes"] / base["peak_rss_bytes"]
        assert ratio < 1.5, (seed, with_huge["peak_rss_bytes"], base["peak_rss_bytes"])


# --- QLoRA on an AVX512-BF16 CPU --------------------------------------------------------------------------


def test_qlora_problem_is_decided_from_the_layer_sizes():
    from rlhfkit_plugins.memory import qlora_cpu_problem

    small = {"linear_layers": [["gate_proj", 128, 352, 4], ["down_proj", 352, 128, 4]]}
    problem = qlora_cpu_problem("llama:small", small, avx512_bf16=True)
    assert "\n" not in problem and "'llama:small'" in problem and "down_proj is 352 -> 128" in problem
    assert "multiple of 64" in problem and "AVX512-BF16" in problem
    assert qlora_cpu_problem("llama:small", small, avx512_bf16=False) is None  # no repack without the flag
    assert "multiple of 32" in qlora_cpu_problem("m", {"linear_layers": [["k_proj", 128, 80, 2]]}, avx512_bf16=True)
    tiny = {"linear_layers": [["q_proj", 64, 64, 2], ["k_proj", 64, 32, 2], ["down_proj", 128, 64, 2]]}
    assert qlora_cpu_problem("llama:tiny", tiny, avx512_bf16=True) is None


def _recipe(policy: str, memory: str, device: str = "cpu", algorithm: str = "ppo"):
    from rlhfkit.recipe import parse_recipe

    return parse_recipe({
        "data": {"name": "synthetic"},
        "models": [{"name": "m", "policy": policy}],
        "grid": {"algorithms": [algorithm], "memory": ["full", memory], "seeds": [1]},
        "run": {"device": device},
    })


def test_check_qlora_on_cpu_refuses_the_small_preset_in_one_line():
    from rlhfkit_plugins.memory import check_qlora_on_cpu

    with pytest.raises(ValueError) as info:
        check_qlora_on_cpu(_recipe("llama:small", "qlora+gc"), avx512_bf16=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith("grid.memory 'qlora+gc': model 'llama:small'")
    assert "down_proj is 352 -> 128" in message
    check_qlora_on_cpu(_recipe("llama:small", "qlora"), avx512_bf16=False)  # this CPU would not repack
    check_qlora_on_cpu(_recipe("llama:small", "qlora", device="cuda"), avx512_bf16=True)  # not on the CPU
    check_qlora_on_cpu(_recipe("llama:small", "lora"), avx512_bf16=True)  # nothing quantized
    check_qlora_on_cpu(_recipe("llama:tiny", "qlora"), avx512_bf16=True)  # sizes fit
