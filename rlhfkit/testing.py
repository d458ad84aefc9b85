"""Testing tools for algorithm authors: a tiny in-process cell, and the trainer-contract conformance check.

``check_algorithm("my_algo")`` trains a registered algorithm for 2 steps in this process, on a tiny random Llama
(policy seed 0, reward model seed 1) and a tiny task with a gold reward and preference pairs, through the same
``rlhfkit.cell.build_context`` a grid cell uses, then checks that the trainer kept the contract of
docs/writing-algorithms.md.  It raises ``AssertionError`` with one line per failed check, or returns a
:class:`ConformanceReport`.  The engine's own tests use the same harness (tests/engine_harness.py).

No SFT or reward-model training happens here: the numbers mean nothing about the algorithm's quality, only
that it runs by the contract.  Nothing is imported from torch until a function runs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

from rlhfkit.data import PreferenceTask

WORDS = "good great fine bad awful okay the a cat dog sun rain happy sad".split()
PROMPTS = [f"say {w} {v} :" for w in ("cat", "dog", "sun", "rain") for v in ("now", "please")]


def _gold(prompts, completions):
    return [sum(w in ("good", "great") for w in c.split()) - sum(w in ("bad", "awful") for w in c.split())
            for c in completions]


def tiny_task() -> PreferenceTask:
    """8 prompts over a 14-word vocabulary; gold = #good/great - #bad/awful; one preference pair per prompt
    (its words all in the tokenizer: the SFT rows glue "good" to the prompt, so alone it is unknown)."""
    pairs = [{"prompt": p, "chosen": " great happy the cat", "rejected": " bad awful the dog"} for p in PROMPTS]
    return PreferenceTask(
        name="tiny", sft=[{"prompt": p, "completion": " ".join(WORDS)} for p in PROMPTS], pairs=pairs,
        eval_pairs=[], rl_prompts=PROMPTS, eval_prompts=PROMPTS[:4], gold_reward=_gold, tokenizer_kind="word",
        tokenizer_vocab_size=64,
    )


def tiny_tokenizer(task):
    """A word-level tokenizer of the task's texts.  The pairs are left out of its corpus: they only reuse words
    already there, and leaving them out keeps the token ids (so tests/test_engine_pins.py) of the harness
    from before the task had pairs."""
    from rlhfkit.tokenizer import train_tokenizer

    return train_tokenizer(dataclasses.replace(task, pairs=[]).tokenizer_corpus(), "word", 64)


def tiny_llama_config(tokenizer, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **kw,
    )


def tiny_models(tokenizer, needs_value_model: bool):
    """(policy, reference, reward model, critic): random init with fixed seeds, dropout off, frozen where frozen."""
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    policy = LlamaForCausalLM(tiny_llama_config(tokenizer))
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    torch.manual_seed(1)
    reward = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1)).eval().requires_grad_(False)
    value = copy.deepcopy(reward).requires_grad_(True) if needs_value_model else None
    return policy, reference, reward, value


def tiny_context(algorithm: str, seed: int = 1000, **overrides):
    """The TrainContext of one in-process cell of ``algorithm`` with config ``overrides``; returns (ctx, spec)."""
    import torch
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
    """Train ``algorithm`` in-process; returns (the logged metric lines, the context)."""
    from rlhfkit.registry import resolve

    ctx, spec = tiny_context(algorithm, **overrides)
    try:
        resolve(spec.trainer)(ctx)
    finally:
        ctx.memory.close()
    return ctx.logger.history, ctx


@dataclass
class ConformanceReport:
    """What :func:`check_algorithm` saw when every check passed."""

    algorithm: str
    steps: int
    metrics: list = field(default_factory=list)
    """The metrics lines, one per step."""
    evaluations: list = field(default_factory=list)
    ledger: dict = field(default_factory=dict)
    """The final ``ledger/*`` values."""
    phases: tuple = ()
    """Memory phases the run entered."""
    checks: tuple = ()
    """The names of the checks that passed (all of them)."""


def check_algorithm(name: str, steps: int = 2, **overrides) -> ConformanceReport:
    """Run the registered algorithm ``name`` for ``steps`` steps in-process and check the trainer contract:

    one metrics line per step; every LR scheduler stepped once per step; episodes > 0 in the ledger, growing
    every step; the training memory phase entered; at least one ``loss/*`` metric per step, all finite; policy
    parameters finite; an evaluation at the last step.  ``overrides`` go to the algorithm's config.  Raises
    ``AssertionError`` naming every failed check, one line each.
    """
    from rlhfkit.engine.context import DivergedError

    try:
        history, ctx = run(name, steps=steps, **overrides)
    except DivergedError as exc:
        raise AssertionError(f"{name}: non-finite loss: {exc}") from exc
    except Exception as exc:  # e.g. "step 0 spent none of the episodes budget": one line, the cause chained
        raise AssertionError(f"{name}: the trainer raised {type(exc).__name__}: {exc}") from exc
    failures, passed = [], []
    for check, reason in _checks(ctx, history, steps):
        (passed if reason is None else failures).append(check if reason is None else f"{name}: {reason}")
    if failures:
        raise AssertionError("\n".join(failures))
    return ConformanceReport(name, steps, history, ctx.evaluations, ctx.ledger.as_metrics(),
                             tuple(sorted(ctx.memory.entered)), tuple(passed))


def _checks(ctx, history, steps):
    """(check name, failure reason or None) for each contract check."""
    import torch

    lines = [line.get("step") for line in history]
    yield "metrics_lines", None if lines == list(range(steps)) else (
        f"expected one metrics line per step (steps {list(range(steps))}), got lines for steps {lines}")
    stepped = {type(s).__name__: s.last_epoch for s in ctx.schedulers()}
    yield "schedulers", None if all(n == steps for n in stepped.values()) else (
        f"every LR scheduler must step once per step ({steps}), stepped {stepped}: do not pass or step a "
        "scheduler yourself, the step scope does")
    episodes = [int(line.get("ledger/episodes", 0)) for line in history]
    grows = all(b > a for a, b in zip([0] + episodes, episodes))
    yield "episodes", None if ctx.ledger.episodes > 0 and grows else (
        f"ledger episodes must grow every step, got {episodes}: record them (ctx.rollout + step.record_rollout, "
        "or step.record_preferences)")
    yield "memory_phases", None if "training" in ctx.memory.entered else (
        f"the training memory phase was never entered (entered: {sorted(ctx.memory.entered)}): wrap the update "
        "in `with ctx.phase(Phase.TRAINING):`")
    losses = [{k: v for k, v in line.items() if k.startswith("loss/")} for line in history]
    yield "losses_logged", None if history and all(losses) else (
        "every step must log at least one loss/* statistic (step.stat(\"loss/policy\", value))")
    bad = [f"step {i} {k}={v}" for i, line in enumerate(losses) for k, v in line.items() if not math.isfinite(v)]
    yield "losses_finite", None if not bad else f"non-finite losses: {', '.join(bad)}"
    finite = all(bool(torch.isfinite(p).all()) for p in ctx.policy.parameters())
    yield "parameters_finite", None if finite else "the policy's parameters are not finite after training"
    last = ctx.evaluations[-1]["eval/step"] if ctx.evaluations else None
    yield "final_evaluation", None if last == steps else (
        f"expected an evaluation at the last step ({steps}), got {last}: run the steps inside ctx.steps()")


__all__ = ["check_algorithm", "ConformanceReport", "tiny_context", "tiny_task", "tiny_models", "tiny_tokenizer", "run"]
