"""TRL 0.29 ``trl.experimental.ppo.PPOTrainer`` on the benchmark's settings; prints one JSON line.

Run by bench_engine.py with the separate virtualenv benchmarks/.venv-trl029 (trl 0.29, same torch and
transformers as the project).  The policy/reference are the SFT checkpoint, the reward model and the
critic's initialisation the reward checkpoint, exactly as rlhfkit's PPO cell builds them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sft", required=True)
    p.add_argument("--reward", required=True)
    p.add_argument("--prompts", required=True, help="JSON file: list of prompt strings")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/trl-ppo-bench")
    p.add_argument("--no-gc", action="store_true",
                   help="patch gc.collect to a no-op for this run (TRL's PPOTrainer calls it twice per step)")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(a.sft)
    tok.padding_side = "left"
    prompts = json.load(open(a.prompts))
    dataset = Dataset.from_dict({"input_ids": [tok(x, add_special_tokens=False).input_ids for x in prompts]})
    policy = AutoModelForCausalLM.from_pretrained(a.sft, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(a.sft, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(a.reward, dtype=torch.float32, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(a.reward, dtype=torch.float32, num_labels=1)

    stamps, lengths, cpu = [], [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())

    cfg = PPOConfig(
        output_dir=a.out, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        num_mini_batches=a.minibatches, num_ppo_epochs=a.epochs, total_episodes=a.batch * a.steps,
        response_length=a.length, stop_token="eos", temperature=a.temperature, missing_eos_penalty=1.0,
        learning_rate=a.lr, kl_coef=a.beta, kl_estimator="k1", vf_coef=0.1, cliprange=0.2, cliprange_value=0.2,
        gamma=1.0, lam=0.95, whiten_rewards=False, num_sample_generations=0, local_rollout_forward_batch_size=a.batch,
        lr_scheduler_type="linear", max_grad_norm=1.0, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, fp16=False, seed=1, logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = PPOTrainer(
        args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward, value_model=value,
        train_dataset=dataset, callbacks=[Clock()],
    )
    # Count generated tokens (up to and including the first EOS) by wrapping the trainer's generation call.
    import trl.experimental.ppo.ppo_trainer as ppo_module

    orig_generation = ppo_module.batch_generation

    def counting_generation(model, queries, *args, **kw):
        query_responses, logits = orig_generation(model, queries, *args, **kw)
        responses = query_responses[:, queries.shape[1]:]
        is_eos = responses == tok.eos_token_id
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, responses.shape[1])
        lengths.append(float(first.float().mean()))
        return query_responses, logits

    ppo_module.batch_generation = counting_generation
    gc_calls = [0]
    if a.no_gc:
        # TRL 0.29 PPOTrainer.train() calls gc.collect() (with torch.cuda.empty_cache()) twice per step: a full
        # collection of every Python object, ~0.5 s per step on the tiny model (issue 17).  As a second
        # reference, the same trainer with those calls made no-ops, counted to show they were hit.
        import gc

        def no_collect(*args, **kw):
            gc_calls[0] += 1
            return 0

        gc.collect = no_collect
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    steady = stamps[-1] - stamps[0]
    n = len(stamps) - 1
    print(json.dumps({
        "impl": f"trl {trl.__version__} experimental.ppo.PPOTrainer" + (" (gc.collect patched out)" if a.no_gc else ""),
        "gc_calls_skipped": gc_calls[0], "torch": torch.__version__,
        "threads": torch.get_num_threads(), "steps": len(stamps), "total_s": total, "steady_steps": n,
        "steady_s": steady, "cpu_step_s": (cpu[-1] - cpu[0]) / n, "episodes_per_s": a.batch * n / steady,
        "tokens_per_s": a.batch * n * (sum(lengths[1:]) / max(len(lengths) - 1, 1)) / steady,
        "mean_length": sum(lengths[1:]) / max(len(lengths) - 1, 1),
    }))


if __name__ == "__main__":
    sys.exit(main())
