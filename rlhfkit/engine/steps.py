"""The trainer contract, enforced: ``for step in ctx.steps(): ...``.

Every algorithm, whatever its maths, runs its steps inside this loop.  The per-step scope does the
bookkeeping that a trainer used to have to remember (and that failed silently when forgotten):

- one metrics line per step (the scope logs it: a trainer cannot forget);
- every LR scheduler the context owns stepped exactly once per step (``ctx.optimizer_step`` takes none);
- the KL controller updated with the KL penalty where the algorithm placed it;
- evaluation when due (every ``eval_every`` steps, or at fixed fractions of the budget with ``num_evals``);
- the compute ledger (episodes, tokens, optimizer steps, FLOPs, wall/CPU time without evaluation);
- divergence: a non-finite loss, or an approximate KL or gradient norm beyond its threshold
  (``diverge_approxkl``, ``diverge_grad_norm``), ends the cell as ``diverged``;
- the budget (``budget``/``budget_amount``): the run ends when it is spent;
- a training checkpoint every ``[run] checkpoint_every`` steps (``ctx.checkpointer``), and a resumed cell's
  steps continue from the one after it (rlhfkit/engine/checkpoint.py).

A trainer records what only it knows: :meth:`StepScope.record_rollout` (the episodes and the KL penalty it
optimises), or :meth:`StepScope.record_preferences` for completions read from data (offline DPO), and
:meth:`StepScope.stat` (its statistics, named by itself).
"""

from __future__ import annotations

import math
import time
from enum import Enum


class Phase(str, Enum):
    """The measured phases of a step (memory peaks, docs/memory.md)."""

    GENERATION = "generation"
    SCORING = "scoring"
    TRAINING = "training"


def metric_name(algorithm: str, name: str) -> str:
    """A statistic's metric key: a namespaced name (``loss/policy``) as given, a bare one under the algorithm."""
    return name if "/" in name else f"{algorithm or 'algorithm'}/{name}"


# Metric name (after its namespace: ``policy/approxkl``, or ``<algorithm>/approxkl`` from a plugin) -> the
# config field bounding it (values and the healthy runs' figures behind them: RLConfig's docstrings).
DIVERGENCE_THRESHOLDS = {"approxkl": "diverge_approxkl", "grad_norm": "diverge_grad_norm"}


def check_thresholds(config, index: int, metrics: dict) -> None:
    """Raise ``DivergedError`` when a step's metric exceeds its divergence threshold (finite values only: a
    non-finite loss is the loss check's; a threshold of 0, or a config without the field, checks nothing)."""
    for key, value in metrics.items():
        field = DIVERGENCE_THRESHOLDS.get(key.rsplit("/", 1)[-1]) if "/" in key else None
        limit = getattr(config, field, 0) if field else 0
        if limit and isinstance(value, (int, float)) and math.isfinite(value) and value > limit:
            from rlhfkit.engine.context import DivergedError

            raise DivergedError(f"{key} is {value:.4g} at step {index}, above the threshold {field} = {limit:g} "
                                f"([rl] or [algorithms.<name>]); lower the learning rate or raise {field}")


class StepScope:
    """One step of training: what the trainer records, and the bookkeeping done when the step ends."""

    def __init__(self, ctx, index: int):
        self.ctx = ctx
        self.index = index
        self.started = time.perf_counter()
        self.metrics: dict = {}
        """Extra metric keys the trainer sets directly (``val/mean``...); logged as they are."""
        self._stats: dict[str, list[float]] = {}
        self._rollout = None
        self._kl_penalty: float | None = None
        self._processed = 0

    def stat(self, name: str, value) -> None:
        """Collect one value of a statistic (per minibatch); the step logs its mean.  ``name`` with a ``/`` is a
        metric key as is; a bare name is logged as ``<algorithm>/<name>``."""
        self._stats.setdefault(name, []).append(float(value))

    def record_rollout(self, rollout, kl_penalty=None) -> None:
        """The training rollout of this step (its episodes enter the shared ``objective/*`` metrics) and the
        per-sequence KL penalty ``(B,)`` the algorithm optimises against (``None``: no penalty)."""
        self._rollout = rollout
        self._kl_penalty = None if kl_penalty is None else float(kl_penalty.mean().item())

    def record_preferences(self, completions: int, prompts: int) -> None:
        """Completions this step trained on that were read from data, not generated (offline DPO: 2 per
        preference pair).  They are the step's episodes (what ``budget = "episodes"`` counts) and ``prompts``
        its distinct prompts in the ledger; ``ledger/generated_tokens`` stays as it is."""
        self.ctx.ledger.processed(completions, prompts)
        self.ctx.episodes += int(completions)
        self._processed += int(completions)

    def finish(self) -> dict:
        """The step's metrics, then the KL controller and every scheduler advanced (in the order the built-ins
        always used); :func:`run_steps` then evaluates if due, adds the ledger and logs the line."""
        ctx = self.ctx
        seconds = time.perf_counter() - self.started
        if self._rollout is not None:
            metrics = self._objective_metrics(seconds)
        elif self._processed:
            metrics = {"episode": ctx.episodes, "perf/step_seconds": seconds,
                       "perf/episodes_per_s": self._processed / seconds, "lr": ctx.current_lr()}
        else:
            metrics = {"perf/step_seconds": seconds}
        metrics.update({metric_name(ctx.algorithm, k): sum(v) / len(v) for k, v in self._stats.items() if v})
        metrics.update(self.metrics)
        metrics.update(ctx.memory.summary())
        for key, value in metrics.items():
            if key.startswith("loss/"):
                ctx.check_finite(self.index, **{key: value})
        check_thresholds(ctx.config, self.index, metrics)
        if self._kl_penalty is not None:
            ctx.kl_controller.update(self._kl_penalty, self._rollout.responses.size(0))
        for scheduler in ctx.schedulers():
            scheduler.step()
        return metrics

    def _objective_metrics(self, seconds: float) -> dict:
        """The keys every algorithm shares: ``objective/*`` (KL as k1 sequence KL), ``perf/*``, ``lr``."""
        from rlhfkit.engine.functional import kl_k1, sequence_sum

        ctx, rollout = self.ctx, self._rollout
        mask = rollout.mask
        seq_kl = sequence_sum(kl_k1(logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs, mask=mask), mask)
        n_tokens = int(mask.sum())
        ctx.episodes += rollout.responses.size(0)
        ctx.tokens += n_tokens
        beta = ctx.kl_controller.value
        penalty = self._kl_penalty
        metrics = {
            "episode": ctx.episodes,
            "objective/scores": rollout.scores.mean().item(),
            "objective/raw_scores": rollout.raw_scores.mean().item(),
            "objective/kl": seq_kl.mean().item(),
            "objective/kl_penalty": penalty if penalty is not None else 0.0,
            "objective/entropy": (-rollout.logprobs * mask).sum(1).mean().item(),
            "objective/eos_rate": rollout.contains_eos.float().mean().item(),
            "objective/length": mask.sum(1).mean().item(),
            "objective/kl_coef": beta,
            "perf/step_seconds": seconds,
            "perf/episodes_per_s": rollout.responses.size(0) / seconds,
            "perf/tokens_per_s": n_tokens / seconds,
            "lr": ctx.current_lr(),
        }
        for key, values in (rollout.reward_parts or {}).items():  # a mixed reward's components, unweighted
            metrics[f"objective/reward/{key}"] = values.mean().item()
        if penalty is not None and ctx.config.kl_placement in ("token_reward", "sequence_reward") \
                and ctx.config.kl_estimator == "k1":
            # The built-ins' original expressions (same floats): the k1 penalty is the monitored KL.
            metrics["objective/non_score_reward"] = (-beta * seq_kl).mean().item()
            metrics["objective/rlhf_reward"] = (rollout.scores - beta * seq_kl).mean().item()
        else:
            # The reward net of the KL term the algorithm actually optimises (none: the score itself).
            metrics["objective/non_score_reward"] = -beta * penalty if penalty is not None else 0.0
            metrics["objective/rlhf_reward"] = rollout.scores.mean().item() + metrics["objective/non_score_reward"]
        gold = ctx.gold(rollout.prompts, rollout.completions)
        if gold is not None:
            metrics["objective/gold"] = gold.mean().item()
        return metrics


class BudgetClock:
    """Where the run stands against its budget, and which evaluations are due."""

    def __init__(self, config):
        self.config = config
        self.total = config.budget_total()
        self.next_eval = 1

    def fraction(self, ledger) -> float:
        return ledger.spent(self.config.budget) / self.total

    def spent(self, ledger) -> bool:
        return ledger.spent(self.config.budget) >= self.total * (1 - 1e-12)

    def eval_due(self, index: int, ledger, done: bool) -> bool:
        cfg = self.config
        if not cfg.num_evals:
            return (index + 1) % cfg.eval_every == 0 or done
        due = False
        while self.next_eval <= cfg.num_evals and self.fraction(ledger) >= self.next_eval / cfg.num_evals - 1e-12:
            self.next_eval += 1
            due = True
        return due or done


def run_steps(ctx):
    """The generator behind ``ctx.steps()``: yields a :class:`StepScope` per step until the budget is spent."""
    clock = BudgetClock(ctx.config)
    ledger = ctx.ledger
    checkpointer = ctx.checkpointer
    index = 0
    if checkpointer is not None and checkpointer.resume_point is not None:  # a resumed cell: restored state
        index, clock.next_eval = checkpointer.resume_point
    ledger.start()
    try:
        while True:
            scope = StepScope(ctx, index)
            before = ledger.spent(ctx.config.budget)
            yield scope
            metrics = scope.finish()
            done = clock.spent(ledger)
            if not done and ledger.spent(ctx.config.budget) <= before and ctx.config.budget != "seconds":
                raise RuntimeError(f"step {index} spent none of the {ctx.config.budget} budget: the run would not end")
            if index == 0 and ctx.config.budget in ("flops", "seconds"):
                ctx.replan(max(1, math.ceil(clock.total / max(ledger.spent(ctx.config.budget), 1e-12))))
            if clock.eval_due(index, ledger, done):
                metrics.update(ctx.evaluate(index + 1))
            metrics.update(ledger.as_metrics())
            ctx.last_step = index + 1
            ctx.logger.log(index, metrics)
            index += 1
            if done:
                return
            if checkpointer is not None and checkpointer.due(index):
                with ledger.paused():  # saving is not training time
                    checkpointer.save(ctx, index, clock.next_eval)
    finally:
        ledger.stop()
