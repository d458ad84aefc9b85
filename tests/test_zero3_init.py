"""ZeRO-3 models are built under DeepSpeed's partitioned init (issue 13): no model sits whole on a process.

Runs benchmarks/bench_zero3_load.py on a small Llama with two CPU processes: the cell's own builders, with
partitioned init (the cell) and without it (``build.PARTITIONED_INIT = False``, the whole load).
"""

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
# LoRA: the ZeRO-3 + LoRA cell of tests/test_save_policies.py checks the same log line (one 2-process cell less).
@pytest.mark.parametrize("lora", [False], ids=["full"])
def test_zero3_models_are_built_sharded(lora):
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_zero3_load.py"), "--processes", "2", "--hidden", "64",
           "--layers", "1"] + (["--lora"] if lora else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4, out.stdout[-3000:] + out.stderr[-3000:]
    for row in rows:
        if row["mode"] == "partitioned":
            # each process holds about half of every model (LoRA adapters whole until their engine)
            assert row["held_parameter_mib"] < 0.6 * row["whole_parameter_mib"], row
            assert "loaded whole" not in row["partitioned"] and "policy partitioned init" in row["partitioned"]
        else:
            assert row["held_parameter_mib"] == row["whole_parameter_mib"]
            assert "partitioned init" not in row["partitioned"]
