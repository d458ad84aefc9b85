"""Training metrics pinned bit for bit before the algorithms moved onto the shared loop (issue 12).

PPO (4 epochs x 4 minibatches, critic) and RLOO (k=4; 1x1, and 2 epochs x 2 minibatches to exercise the
clipped ratio and the order of the minibatch permutation draws) run 2 steps in-process on tiny random Llama
models (``tests/engine_harness.py``), one thread.  Every training metric of both steps must equal the value
recorded from the code before the refactor, as ``float.hex`` (exact).  Timing (``perf/``), memory and
evaluation keys are left out: they are not training numbers.
"""

import pytest
import torch

from engine_harness import run

CASES = {"ppo": ("ppo", {}), "rloo": ("rloo", {}), "rloo_2x2": ("rloo", {"num_epochs": 2, "num_minibatches": 2})}
SKIP = ("perf/", "memory/", "eval/", "ledger/")
# Keys added after the pins were recorded (new metrics are allowed; changed old ones are not).
NEW_KEYS = ("objective/kl_penalty",)

PINNED = {
 "ppo": [
  {
   "step": "0x0.0p+0",
   "episode": "0x1.0000000000000p+3",
   "objective/scores": "-0x1.5d8f380000000p-1",
   "objective/raw_scores": "0x1.13864c0000000p-4",
   "objective/kl": "0x0.0p+0",
   "objective/non_score_reward": "0x0.0p+0",
   "objective/rlhf_reward": "-0x1.5d8f380000000p-1",
   "objective/entropy": "0x1.eddd0a0000000p+3",
   "objective/eos_rate": "0x1.0000000000000p-2",
   "objective/length": "0x1.4000000000000p+2",
   "objective/kl_coef": "0x1.999999999999ap-5",
   "lr": "0x1.0624dd2f1a9fcp-10",
   "objective/gold": "-0x1.0000000000000p-3",
   "loss/policy": "-0x1.48686c0a00000p-3",
   "loss/value": "0x1.b5a720f000000p-3",
   "policy/clipfrac": "0x1.320820f000000p-2",
   "val/clipfrac": "0x1.74d34d7800000p-1",
   "policy/approxkl": "0x1.2c98b9cd800dcp-6",
   "policy/entropy": "0x1.8a6d9f6000000p+1",
   "policy/ratio": "0x1.fd12f9e000000p-1",
   "policy/grad_norm": "0x1.ac8adf3e00000p+0",
   "val/mean": "-0x1.9031800000000p-10",
   "val/advantage_mean": "-0x1.6ccccc0000000p-24",
   "val/return_mean": "-0x1.7f8e400000000p-1",
  },
  {
   "step": "0x1.0000000000000p+0",
   "episode": "0x1.0000000000000p+4",
   "objective/scores": "-0x1.00476a0000000p-1",
   "objective/raw_scores": "0x1.fdc4aa0000000p-4",
   "objective/kl": "0x1.4f33180000000p-4",
   "objective/non_score_reward": "-0x1.0c28e20000000p-8",
   "objective/rlhf_reward": "-0x1.025fbc0000000p-1",
   "objective/entropy": "0x1.dca1ac0000000p+3",
   "objective/eos_rate": "0x1.8000000000000p-2",
   "objective/length": "0x1.3800000000000p+2",
   "objective/kl_coef": "0x1.999999999999ap-5",
   "lr": "0x1.0624dd2f1a9fcp-11",
   "objective/gold": "-0x1.0000000000000p-2",
   "loss/policy": "-0x1.02d76f9400000p-3",
   "loss/value": "0x1.a268325000000p-4",
   "policy/clipfrac": "0x1.9d75d7c000000p-4",
   "val/clipfrac": "0x1.d6ac258000000p-2",
   "policy/approxkl": "0x1.97ae2a8f202abp-8",
   "policy/entropy": "0x1.89f0838000000p+1",
   "policy/ratio": "0x1.f831cfe000000p-1",
   "policy/grad_norm": "0x1.4eac56a000000p+1",
   "val/mean": "-0x1.7e6f0c0000000p-3",
   "val/advantage_mean": "-0x1.20d20e0000000p-24",
   "val/return_mean": "-0x1.2d66940000000p-1",
  }
 ],
 "rloo": [
  {
   "step": "0x0.0p+0",
   "episode": "0x1.0000000000000p+3",
   "objective/scores": "-0x1.60fe660000000p-1",
   "objective/raw_scores": "0x1.f0199a0000000p-5",
   "objective/kl": "0x1.8000000000000p-23",
   "objective/non_score_reward": "-0x1.3333340000000p-27",
   "objective/rlhf_reward": "-0x1.60fe660000000p-1",
   "objective/entropy": "0x1.ee8ef00000000p+3",
   "objective/eos_rate": "0x1.0000000000000p-2",
   "objective/length": "0x1.4000000000000p+2",
   "objective/kl_coef": "0x1.999999999999ap-5",
   "lr": "0x1.0624dd2f1a9fcp-10",
   "objective/gold": "-0x1.0000000000000p-3",
   "loss/policy": "-0x1.a000000000000p-23",
   "policy/clipfrac": "0x0.0p+0",
   "policy/approxkl": "0x1.0000000000000p-41",
   "policy/entropy": "0x1.8ae83c0000000p+1",
   "policy/ratio": "0x1.fffff00000000p-1",
   "policy/grad_norm": "0x1.56fe0c0000000p+2",
   "val/advantage_std": "0x1.0000000000000p+0",
   "val/rlhf_reward_mean": "-0x1.60fe660000000p-1",
  },
  {
   "step": "0x1.0000000000000p+0",
   "episode": "0x1.0000000000000p+4",
   "objective/scores": "-0x1.7c53d80000000p-1",
   "objective/raw_scores": "0x1.d613c00000000p-8",
   "objective/kl": "-0x1.2ba1200000000p-5",
   "objective/non_score_reward": "0x1.df68340000000p-10",
   "objective/rlhf_reward": "-0x1.7b64240000000p-1",
   "objective/entropy": "0x1.19856e0000000p+4",
   "objective/eos_rate": "0x1.0000000000000p-2",
   "objective/length": "0x1.7000000000000p+2",
   "objective/kl_coef": "0x1.999999999999ap-5",
   "lr": "0x1.0624dd2f1a9fcp-11",
   "objective/gold": "-0x1.0000000000000p-3",
   "loss/policy": "0x0.0p+0",
   "policy/clipfrac": "0x0.0p+0",
   "policy/approxkl": "0x1.0000000000000p-42",
   "policy/entropy": "0x1.8ac68e0000000p+1",
   "policy/ratio": "0x1.fffff80000000p-1",
   "policy/grad_norm": "0x1.a0014c0000000p+2",
   "val/advantage_std": "0x1.0000000000000p+0",
   "val/rlhf_reward_mean": "-0x1.7b64240000000p-1",
  }
 ],
 "rloo_2x2": [
  {
   "step": "0x0.0p+0",
   "episode": "0x1.0000000000000p+3",
   "objective/scores": "-0x1.60fe660000000p-1",
   "objective/raw_scores": "0x1.f0199a0000000p-5",
   "objective/kl": "0x1.8000000000000p-23",
   "objective/non_score_reward": "-0x1.3333340000000p-27",
   "objective/rlhf_reward": "-0x1.60fe660000000p-1",
   "objective/entropy": "0x1.ee8ef00000000p+3",
   "objective/eos_rate": "0x1.0000000000000p-2",
   "objective/length": "0x1.4000000000000p+2",
   "objective/kl_coef": "0x1.999999999999ap-5",
   "lr": "0x1.0624dd2f1a9fcp-10",
   "objective/gold": "-0x1.0000000000000p-3",
   "loss/policy": "-0x1.8339de0000000p-4",
   "policy/clipfrac": "0x1.0000000000000p-1",
   "policy/approxkl": "0x1.575711a804000p-4",
   "policy/entropy": "0x1.8ab1be0000000p+1",
   "policy/ratio": "0x1.c349840000000p-1",
   "policy/grad_norm": "0x1.b9c3e30000000p+1",
   "val/advantage_std": "0x1.0000000000000p+0",
   "val/rlhf_reward_mean": "-0x1.60fe660000000p-1",
  },
  {
   "step": "0x1.0000000000000p+0",
   "episode": "0x1.0000000000000p+4",
   "objective/scores": "-0x1.1531040000000p-1",
   "objective/raw_scores": "0x1.5677d60000000p-4",
   "objective/kl": "-0x1.b51c000000000p-9",
   "objective/non_score_reward": "0x1.5db0160000000p-13",
   "objective/rlhf_reward": "-0x1.151b2a0000000p-1",
   "objective/entropy": "0x1.c736100000000p+3",
   "objective/eos_rate": "0x1.8000000000000p-2",
   "objective/length": "0x1.2800000000000p+2",
   "objective/kl_coef": "0x1.999999999999ap-5",
   "lr": "0x1.0624dd2f1a9fcp-11",
   "objective/gold": "0x0.0p+0",
   "loss/policy": "-0x1.e9b1160000000p-5",
   "policy/clipfrac": "0x1.8000000000000p-3",
   "policy/approxkl": "0x1.0353f9f015000p-7",
   "policy/entropy": "0x1.8a49ed8000000p+1",
   "policy/ratio": "0x1.f5fc7e8000000p-1",
   "policy/grad_norm": "0x1.afd6330000000p+2",
   "val/advantage_std": "0x1.0000000000000p+0",
   "val/rlhf_reward_mean": "-0x1.151b2a0000000p-1",
  }
 ],
}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_metrics_are_pinned(case, one_thread):
    algorithm, overrides = CASES[case]
    history, _ = run(algorithm, **overrides)
    got = [
        {k: float(v).hex() for k, v in line.items() if not k.startswith(SKIP) and k not in NEW_KEYS and not k.startswith(f"{algorithm}/")}
        for line in history
    ]
    assert len(got) == 2
    for step, (have, want) in enumerate(zip(got, PINNED[case])):
        assert have.keys() == want.keys(), f"step {step}: keys differ: {sorted(set(have) ^ set(want))}"
        diff = {k: (float.fromhex(have[k]), float.fromhex(want[k])) for k in want if have[k] != want[k]}
        assert not diff, f"{case} step {step}: {diff}"
