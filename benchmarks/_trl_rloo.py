"""TRL 1.x RLOOTrainer on the benchmark's settings; prints one JSON line.  Run by bench_engine.py.

RLOOTrainer in TRL 1.x is GRPO-shaped: ``num_generations`` = k completions per prompt, ``beta`` = KL coefficient.
The reward is the same reward model our engine uses, read the same way (prompt + completion token ids, last real
token, missing-EOS penalty 1.0), passed to TRL as a python reward function.
"""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/trl-rloo-bench")
    p.add_argument("--reward-mode", default="ids", choices=["ids", "text"],
                   help="ids: score prompt+completion token ids as rlhfkit does (default); text: TRL's own "
                   "reward-model path (decode, concatenate, re-tokenise)")
    p.add_argument("--lora", action="store_true",
                   help="LoRA as rlhfkit's default lora part: r=16, alpha=32, no dropout, q/k/v/o/gate/up/down "
                   "(reference = the policy with its adapters disabled, on both sides)")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    tok = AutoTokenizer.from_pretrained(a.sft)
    tok.padding_side = "left"
    prompts = json.load(open(a.prompts))
    dataset = Dataset.from_dict({"prompt": prompts})
    policy = AutoModelForCausalLM.from_pretrained(a.sft, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(a.reward, dtype=torch.float32, num_labels=1)
    reward_tok = AutoTokenizer.from_pretrained(a.reward)

    stamps, lengths, cpu = [], [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    cfg = RLOOConfig(
        output_dir=a.out, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        num_generations=a.k, max_completion_length=a.length, temperature=a.temperature, top_p=1.0, top_k=0,
        learning_rate=a.lr, beta=a.beta, num_iterations=1, max_steps=a.steps, logging_steps=1,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False, seed=1,
        disable_tqdm=True, dataloader_num_workers=0, disable_dropout=True,
    )
    def reward_model_score(prompts, completions, completion_ids, **kw):
        """rlhfkit's reward exactly: the reward model read at the last real token of prompt ids + completion
        ids (no re-tokenisation of decoded text), minus missing_eos_penalty=1.0 for completions without EOS."""
        rows = [tok(p_, add_special_tokens=False).input_ids + list(c) for p_, c in zip(prompts, completion_ids)]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            hidden = reward.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
            scores = reward.score(hidden[:, -1]).squeeze(-1).float()
        has_eos = torch.tensor([tok.eos_token_id in list(c) for c in completion_ids])
        return (scores - 1.0 * (~has_eos).float()).tolist()

    reward.eval()
    reward_funcs = reward if a.reward_mode == "text" else reward_model_score
    peft_config = None
    if a.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = RLOOTrainer(
        model=policy, peft_config=peft_config, reward_funcs=reward_funcs, args=cfg, train_dataset=dataset, processing_class=tok,
        reward_processing_classes=reward_tok if a.reward_mode == "text" else None, callbacks=[Clock()],
    )
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    steady = stamps[-1] - stamps[0]
    n = len(stamps) - 1
    mean_len = sum(lengths[1:]) / max(len(lengths) - 1, 1) if len(lengths) > 1 else float("nan")
    print(json.dumps({
        "impl": f"trl {trl.__version__} RLOOTrainer", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "steps": len(stamps), "total_s": total, "steady_steps": n, "steady_s": steady,
        "cpu_step_s": (cpu[-1] - cpu[0]) / n,
        "episodes_per_s": a.batch * n / steady, "tokens_per_s": a.batch * n * mean_len / steady,
        "mean_length": mean_len,
    }))


if __name__ == "__main__":
    sys.exit(main())
