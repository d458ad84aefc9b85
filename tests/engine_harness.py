"""A TrainContext built in-process the way ``rlhfkit.cell.run_cell`` builds one, on tiny random models.

No SFT or reward-model training: a random-init Llama policy (seed 0) and reward model (seed 1), a word-level
tokenizer trained on a fixed corpus, a task with a gold reward.  Used by the pins and the engine tests.
"""

from __future__ import annotations

import copy

import torch

from rlhfkit.data import PreferenceTask

WORDS = "good great fine bad awful okay the a cat dog sun rain happy sad".split()
PROMPTS = [f"say {w} {v} :" for w in ("cat", "dog", "sun", "rain") for v in ("now", "please")]


def tiny_task() -> PreferenceTask:
    def gold(prompts, completions):
        return [sum(w in ("good", "great") for w in c.split()) - sum(w in ("bad", "awful") for w in c.split())
                for c in completions]

    return PreferenceTask(
        name="tiny", sft=[{"prompt": p, "completion": " ".join(WORDS)} for p in PROMPTS], pairs=[], eval_pairs=[],
        rl_prompts=PROMPTS, eval_prompts=PROMPTS[:4], gold_reward=gold, tokenizer_kind="word",
        tokenizer_vocab_size=64,
    )


def tiny_tokenizer(task):
    from rlhfkit.tokenizer import train_tokenizer

    return train_tokenizer(task.tokenizer_corpus(), "word", 64)


def _llama_config(tokenizer, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **kw,
    )


def tiny_models(tokenizer, needs_value_model: bool):
    """(policy, reference, reward model, critic): random init with fixed seeds, dropout off, frozen where frozen."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    policy = LlamaForCausalLM(_llama_config(tokenizer))
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    torch.manual_seed(1)
    reward = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1)).eval().requires_grad_(False)
    value = copy.deepcopy(reward).requires_grad_(True) if needs_value_model else None
    return policy, reference, reward, value


def tiny_context(algorithm: str, seed: int = 1000, **overrides):
    """The TrainContext of one in-process cell of ``algorithm`` with config ``overrides``."""
    from accelerate import Accelerator

    from rlhfkit.cell import build_context
    from rlhfkit.engine.context import MetricsLogger
    from rlhfkit.engine.memory_tracker import PhaseMemory
    from rlhfkit.memory import build_memory_plan
    from rlhfkit.plugins import get_registry

    spec = get_registry().get("algorithm", algorithm)
    settings = dict(steps=2, batch_size=8, response_length=6, eval_every=100, eval_batch_size=4)
    settings.update(overrides)
    config = spec.config_class(**settings)
    task = tiny_task()
    tokenizer = tiny_tokenizer(task)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    models = tiny_models(tokenizer, spec.needs_value_model)
    torch.manual_seed(seed)
    logger = MetricsLogger(None, None, None)
    memory = PhaseMemory(accelerator.device)
    ctx = build_context(config, accelerator, build_memory_plan("full"), models, tokenizer, task, memory, logger, seed,
                        algorithm=algorithm)
    return ctx, spec


def run(algorithm: str, **overrides):
    """Train ``algorithm`` in-process; returns the logged metric lines."""
    from rlhfkit.registry import resolve

    ctx, spec = tiny_context(algorithm, **overrides)
    resolve(spec.trainer)(ctx)
    ctx.memory.close()
    return ctx.logger.history, ctx
