"""Issue 14: ZeRO-3 + LoRA with ``zero3_gather_for_generation = false`` on two processes.

It failed at the first training forward with "Inference tensors cannot be saved for backward" (deepspeed
zero/linear.py): the rollout's reference forward (the policy itself with its adapters disabled) ran under
``torch.inference_mode`` with ZeRO-3's fetch hooks on, so parameters it gathered were inference tensors.
"""

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_zero3_lora_without_gathering_for_generation_trains_with_two_processes(small_recipe, tmp_path):
    recipe = small_recipe(algorithms=("ppo",), parallel=1)
    text = recipe.read_text().replace('memory = ["full"]', 'memory = ["zero3+lora"]')
    recipe.write_text(text.replace("[rl]\n", "[rl]\nzero3_gather_for_generation = false\n"))
    out_dir = tmp_path / "run"
    out = run_cli("run", recipe, "--output", out_dir, "--num-processes", "2", timeout=420)
    cell = out_dir / "cells" / "llama-tiny__ppo__zero3-lora__s1"
    result = json.loads((cell / "result.json").read_text())
    assert result["status"] == "ok", result.get("error")
    assert out.returncode == 0, out.stdout + out.stderr
    assert result["num_processes"] == 2
    assert len((cell / "metrics.jsonl").read_text().splitlines()) == 2
    assert "Traceback" not in (cell / "log.txt").read_text()

