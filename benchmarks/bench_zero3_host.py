"""DeepSpeed ZeRO-3's host bookkeeping per module and per parameter tensor (what rlhfkit/planner.py's
ZERO3_HOST_BYTES_* constants are).

Initialises ZeRO-3 engines over three models and trains each for ``--steps`` steps, measuring the anonymous
resident memory the engine adds (RssAnon: library code pages are file-backed and not counted):

  base      100 linear layers (16 x 16), one module and one tensor each
  modules   the same 100 layers, each wrapped in 3 parameter-free containers (+300 modules, same tensors)
  tensors   400 linear layers (+300 modules and +300 tensors)

per module = (modules - base) / 300; per tensor = (tensors - modules) / 300.  The same with two processes
(torchrun, gloo) gives the extra state of each engine when it has peers (base with 2 processes - base with 1).

    python benchmarks/bench_zero3_host.py            # one and two processes, ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

MODELS = {"base": (0, 100), "modules": (3, 100), "tensors": (0, 400)}


def _anon_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024


def measure(wrap: int, layers: int, steps: int) -> float:
    """Anonymous memory (MiB) a ZeRO-3 engine adds over its model: initialisation plus ``steps`` steps."""
    import ctypes
    import gc

    import deepspeed
    import torch

    # As the cell's "live" CPU measurement: freed blocks go back to the OS, so RSS follows live memory.
    ctypes.CDLL("libc.so.6").mallopt(-3, 0)  # M_MMAP_THRESHOLD = 0
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")

    def layer():
        module = torch.nn.Linear(16, 16, bias=False)
        for _ in range(wrap):
            module = torch.nn.Sequential(module)
        return module

    def engine_over(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return deepspeed.initialize(model=model, optimizer=optimizer, config=config)[0]

    config = {"train_micro_batch_size_per_gpu": 1,
              "zero_optimization": {"stage": 3, "reduce_bucket_size": 4096, "stage3_prefetch_bucket_size": 0,
                                    "stage3_param_persistence_threshold": 0}}
    x = torch.randn(1, 4, 16)

    def train(engine):
        for _ in range(steps):
            engine.backward(engine(x).sum())
            engine.step()

    # A first engine imports what DeepSpeed imports lazily (~100 MiB of library state) and warms the allocator,
    # so the measured engine is the second one, as a cell's critic or reward engine is.
    train(engine_over(torch.nn.Sequential(layer(), layer())))
    model = torch.nn.Sequential(*[layer() for _ in range(layers)])
    gc.collect()
    before = _anon_mib()
    train(engine_over(model))
    gc.collect()
    return _anon_mib() - before


def _run(name: str, procs: int, steps: int) -> float:
    wrap, layers = MODELS[name]
    child = [sys.executable, __file__, "--child", str(wrap), str(layers), "--steps", str(steps)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    if procs == 1:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29613")
        command = child
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--standalone",
                   *child[1:]]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    values = [float(line.split()[1]) for line in out.splitlines() if line.startswith("RESULT")]
    return sum(values) / len(values)  # mean over ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.child:
        print(f"RESULT {measure(*args.child, args.steps):.3f}", flush=True)
        return
    rows = {}
    for procs in (1, 2):
        mib = {name: _run(name, procs, args.steps) for name in MODELS}
        rows[procs] = mib
        per_module = (mib["modules"] - mib["base"]) / 300 * 1024
        per_tensor = (mib["tensors"] - mib["modules"]) / 300 * 1024
        print(f"{procs} process(es): base {mib['base']:.2f} MiB, +300 modules {mib['modules']:.2f}, "
              f"+300 tensors {mib['tensors']:.2f}  ->  {per_module:.1f} KiB per module, {per_tensor:.1f} KiB per tensor")
    print(f"with a peer: +{rows[2]['base'] - rows[1]['base']:.2f} MiB per engine")


if __name__ == "__main__":
    main()
