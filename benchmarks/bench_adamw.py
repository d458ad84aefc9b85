"""torch AdamW's foreach and fused kernels side by side, on the parameter lists of Llama models of growing size
(the figures behind ``[rl] adamw_kernel = "auto"``, rlhfkit/cellspec/modelset.py ``FUSED_ADAMW_MIN_TRAINABLE``).

    python benchmarks/bench_adamw.py            # ~1 minute on one core

CPU milliseconds per ``optimizer.step()`` (process time, one torch thread, best of 3 rounds of 30 steps after 3
warm-up steps), the two kernels alternating per round so machine load hits both alike.
"""

from __future__ import annotations

import argparse
import time

SHAPES = [(64, 2, 176), (128, 2, 352), (192, 3, 512), (256, 4, 704), (512, 8, 1408)]
"""(hidden, layers, MLP) of Llama models: the tiny preset's shape up to the compute-bound h512l8."""


def step_ms(params, kernel: str, steps: int) -> float:
    import torch

    opt = torch.optim.AdamW(params, lr=1e-3, eps=1e-5, **{kernel: True})
    for _ in range(3):
        opt.step()
    start = time.process_time()
    for _ in range(steps):
        opt.step()
    return (time.process_time() - start) / steps * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"# bench_adamw  torch {torch.__version__}  1 thread  ms per optimizer step (best of {a.rounds} rounds)")
    print(f"{'model':<10} {'params':>8} {'tensors':>8} {'foreach':>9} {'fused':>9} {'ratio':>7}")
    for hidden, layers, mlp in SHAPES:
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=hidden, num_hidden_layers=layers, intermediate_size=mlp, vocab_size=85,
            num_attention_heads=max(2, hidden // 32), num_key_value_heads=max(1, hidden // 64)))
        params = list(model.parameters())
        for param in params:
            param.grad = torch.randn_like(param) * 1e-3
        best = {"foreach": float("inf"), "fused": float("inf")}
        for _ in range(a.rounds):
            for kernel in best:
                best[kernel] = min(best[kernel], step_ms(params, kernel, a.steps))
        n = sum(param.numel() for param in params)
        print(f"h{hidden}l{layers:<5} {n / 1e6:>7.2f}M {len(params):>8} {best['foreach']:>8.2f} {best['fused']:>9.2f} "
              f"{best['foreach'] / best['fused']:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
