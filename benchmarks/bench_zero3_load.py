"""The load phase of a ZeRO-3 cell: models built under DeepSpeed's partitioned init vs loaded whole.

``python benchmarks/bench_zero3_load.py [--processes 2] [--hidden 512] [--layers 4] [--lora]`` saves a Llama
policy and a one-label classifier of that size (random weights, nothing downloaded), then for each mode starts
``torchrun`` with that many CPU processes, each building the cell's four models with the cell's own code
(``rlhfkit.cellspec.build.build_role`` under a stage-3 accelerate plugin: policy, reference,
reward model, critic; under ``--lora`` policy and critic get adapters and there is no separate reference), and
prints per rank the growth of resident memory (anonymous and all: peak sampled every millisecond, and after the build)
and the parameter bytes each process holds after the build.  ``whole`` is what the cell did before it built
ZeRO-3 models sharded (``build.PARTITIONED_INIT = False``).  On the CPU the device is host memory, so the
peak also holds rank 0's copy of the checkpoint being read (transformers reads the whole file on rank 0,
the other ranks only its shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

MiB = 1024 * 1024


def _resident() -> tuple[int, int]:
    """(anonymous, all) resident bytes: transformers maps a whole-loaded safetensors checkpoint into the
    parameters (file-backed pages), so anonymous memory alone misses a whole load."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "VmRSS:")):
            key, value = line.split()[:2]
            fields[key] = int(value) * 1024
    return fields.get("RssAnon:", 0), fields.get("VmRSS:", 0)


def _save_checkpoints(root: Path, hidden: int, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 32 * 32,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=256, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(root / "sft")
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(root / "reward")


def _worker(root: Path, mode: str, lora: bool) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # noqa: F401
    import peft  # noqa: F401
    import torch
    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    from rlhfkit.cellspec import build
    from rlhfkit.cellspec.modelset import LoraSettings, ModelRole, OptimizerChoice
    from rlhfkit.engine.memory_tracker import return_freed_memory_to_os

    return_freed_memory_to_os()  # as the cell does (cpu_memory = "live"): resident memory follows live memory
    torch.set_num_threads(1)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    plugin = DeepSpeedPlugin(hf_ds_config=config, zero3_init_flag=True)
    accelerator = Accelerator(deepspeed_plugin=plugin, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    build.PARTITIONED_INIT = mode == "partitioned"
    dirs = SimpleNamespace(policy_start=root / "sft", reward_model=root / "reward")
    adapter = SimpleNamespace(lora_target_modules=("q_proj", "v_proj"))
    trained = dict(trainable="lora" if lora else "full", lora=LoraSettings() if lora else None, zero_stage=3,
                   optimizer=OptimizerChoice())
    roles = [ModelRole("policy", "sft", "causal_lm", **trained),
             ModelRole("reward", "reward_model", "classifier", zero_stage=3),
             ModelRole("critic", "reward_model", "classifier", modules_to_save=("score",) if lora else (), **trained)]
    if not lora:
        roles.insert(1, ModelRole("reference", "sft", "causal_lm", zero_stage=3))
    torch.distributed.barrier()
    base, peak, stop = _resident(), [0, 0], threading.Event()

    def sample():
        while not stop.is_set():
            now = _resident()
            peak[:] = [max(peak[0], now[0]), max(peak[1], now[1])]
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    models = []
    for role in roles:
        models.append(build.build_role(role, dirs, adapter, accelerator.device))
    after = _resident()
    stop.set()
    sampler.join()
    held = sum((p.ds_tensor.numel() * p.ds_tensor.element_size() if hasattr(p, "ds_tensor") else p.numel() * p.element_size())
               for m in models for p in m.parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) * 4 for m in models for p in m.parameters())
    # one file per rank: two ranks printing to one stdout interleave their lines
    (root / f"{mode}-rank{accelerator.process_index}.json").write_text(json.dumps({"mode": mode, "lora": lora, "rank": accelerator.process_index, "peak_anon_mib": (peak[0] - base[0]) / MiB,
                      "peak_rss_mib": (peak[1] - base[1]) / MiB, "after_rss_mib": (after[1] - base[1]) / MiB, "held_parameter_mib": held / MiB, "whole_parameter_mib": full / MiB,
                      "partitioned": build.zero3_load_report(SimpleNamespace(zero_stage=3), _four(models, lora))}))


def _four(models, lora):
    return (models[0], None, models[1], models[2]) if lora else tuple(models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("ROOT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(Path(args.worker[0]), args.worker[1], args.lora)
        return
    with tempfile.TemporaryDirectory() as tmp:
        _save_checkpoints(Path(tmp), args.hidden, args.layers)
        for mode in ("whole", "partitioned"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}",
                   __file__, "--worker", tmp, mode] + (["--lora"] if args.lora else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            rows = [path.read_text() for path in sorted(Path(tmp).glob(f"{mode}-rank*.json"))]
            print("\n".join(rows) if rows else out.stdout[-2000:] + out.stderr[-4000:], flush=True)


if __name__ == "__main__":
    main()
