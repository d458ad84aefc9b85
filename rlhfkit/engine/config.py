"""Settings shared by every RL algorithm (the recipe's ``[rl]`` table).

Algorithm configs subclass :class:`RLConfig`, so a recipe sets the shared budget once in ``[rl]`` and the
algorithm-specific knobs in ``[algorithms.<name>]``.  Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rlhfkit.validation import check_choices

KL_PLACEMENTS = ("token_reward", "sequence_reward", "loss", "none")
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")
BUDGETS = ("episodes", "updates", "flops", "seconds")
ADAPTIVE_KL_HORIZON_FRACTION = 4
"""Default adaptive-KL horizon = planned episodes / this: the controller can act within the run."""


KLPlacement = Literal["token_reward", "sequence_reward", "loss", "none"]
"""Where the KL penalty goes; subclasses that change the default annotate with this alias so the choices stay checked."""
LossAggregation = Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"]

@dataclass
class RLConfig:
    steps: int = 60
    """Optimisation steps (rollout + update) per cell."""
    batch_size: int = 32
    """Completions (episodes) generated per step.  Equal across algorithms, so budgets match."""
    num_minibatches: int = 1
    """Minibatches each rollout batch is split into per epoch."""
    num_epochs: int = 1
    """Passes over each rollout batch."""
    learning_rate: float = 1e-3
    """AdamW learning rate of the policy (and critic)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    lr_schedule: Literal["linear", "constant"] = "linear"
    """``"linear"`` decay to zero over the run, or ``"constant"``."""
    response_length: int = 16
    """Maximum generated tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are computed from logits divided by it too."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0 = no truncation)."""
    padding_free: Literal["auto", "on", "off"] = "auto"
    """Scoring and training forwards over rows grouped by completion length, each group trimmed to its
    longest row, so their cost follows the real tokens rather than the padded batch: ``"auto"`` when the
    estimated saving (padded tokens against the cost of more forward calls) is at least 20%, which never
    happens on the tiny presets; ``"on"`` always; ``"off"`` never.  Trimmed forwards equal the padded ones to
    float rounding (~5e-7 on a log-prob), not bit for bit.  Off under ZeRO-3 and with several processes."""
    drop_finished_rows: bool = False
    """Generation with the family's lean decode step (Llama, Qwen2): rows that have emitted EOS leave the decode
    batch (once at least 4 rows and a quarter of the batch have), so sampling cost follows the unfinished rows.
    The kept rows' tokens and random draws are unchanged, but their log-probs are computed in a smaller batch,
    and CPU matrix kernels may round differently by row count: on the default recipe every sampled token and
    gold value stayed the same while ``kl_final`` moved by up to 1.8e-6.  Off by default so that results at a
    fixed seed stay those of earlier versions."""
    share_prompt_prefill: Literal["auto", "on", "off"] = "auto"
    """Rows sampled from the same prompt (RLOO/GRPO's k samples) share one prompt forward at generation: 1/k of
    the prefill's work (hidden 256 x 4 layers, 8 prompts x k=4: 79 -> 66 ms CPU a rollout), and the ledger
    counts the prompt tokens forwarded.  Their numbers then come from a smaller batch, which CPU matrix kernels
    may round differently: ``"auto"`` shares for models of 2N >= 4 MFLOP a token (2M non-embedding
    parameters), which no shipped recipe's model reaches (their numbers stay those of earlier versions);
    ``"on"`` always; ``"off"`` never."""
    adamw_kernel: Literal["auto", "foreach", "fused"] = "auto"
    """torch AdamW's kernel (the default optimizer; a memory strategy's own optimizer is not affected): the
    same update, rounded differently.  ``"foreach"``: multi-tensor ops, ~10 passes over the parameters per
    step.  ``"fused"``: one pass, 2.5x faster on 0.1M parameters and 5.9x on 3M (CPU, one thread;
    benchmarks/bench_adamw.py), TRL's default through transformers' ``adamw_torch_fused``.  ``"auto"``: fused
    on CUDA (so GPU results round differently from versions before it) and on the CPU from 2M trainable
    parameters, where foreach is 5 % (RLOO) to 20 % (PPO: 32 optimizer steps a step) of a step; foreach below,
    which keeps every shipped recipe's CPU numbers.  Under ZeRO the engine's optimizer wraps it and ``"auto"``
    keeps foreach."""
    kl_coef: float = 0.05
    """beta: weight of the KL penalty to the reference (SFT) policy."""
    kl_estimator: str = "k1"
    """Per-token KL estimator of the penalty: ``"k1"`` (log-ratio), ``"k2"`` (0.5 log-ratio^2) or ``"k3"``
    ((r-1) - log r, clamped as verl).  Allowed with ``kl_placement``: k1 in a reward placement, k2 or k3 in
    the loss (k3 in the loss is the reverse-KL gradient of GRPO); other pairs only with ``kl_monitor_only``.
    ``"auto"``: k1 in a reward placement (or none), k2 in the loss (resolved when the config is built)."""
    kl_placement: KLPlacement = "token_reward"
    """Where the KL penalty goes: ``"token_reward"`` (-beta KL_t at every token), ``"sequence_reward"``
    (-beta sum_t KL_t on the completion's reward), ``"loss"`` (+beta KL term in the policy loss, aggregated
    like it) or ``"none"`` (no penalty; the KL is still measured as ``objective/kl``)."""
    kl_monitor_only: bool = False
    """Allow an estimator/placement pair whose gradient is not that of a KL to the reference (e.g. k3 in the
    reward, whose detached value gives about zero gradient).  The run is labelled: it only monitors KL."""
    adaptive_kl_target: float | None = None
    """If set, beta is adapted (Ziegler et al.) to keep the KL penalty's sequence value near this value."""
    adaptive_kl_horizon: int = 0
    """Episodes over which the adaptive controller reacts; 0 = the run's planned episodes / 4
    (ADAPTIVE_KL_HORIZON_FRACTION), so a run can move beta by up to about e^(0.2*4) = 2.2x either way.  The
    old fixed 10,000 episodes could move beta by at most 3% in a 1,280-episode run."""
    loss_agg: LossAggregation = "token_mean"
    """How per-token loss terms become one number: ``"token_mean"``, ``"seq_mean_token_sum"`` or
    ``"seq_mean_token_mean"`` (a sequence-level policy loss is always averaged over completions)."""
    budget: str = "episodes"
    """What is matched across arms: ``"episodes"``, ``"updates"`` (policy optimizer steps), ``"flops"`` or
    ``"seconds"`` (training wall time, evaluation excluded).  The run ends when it is spent."""
    budget_amount: float = 0
    """Total of ``budget`` per cell; 0 = derived from ``steps``: ``steps * batch_size`` episodes or
    ``steps * num_epochs * num_minibatches`` updates (refused for flops and seconds)."""
    num_evals: int = 0
    """Evaluations at budget fractions 1/num_evals, 2/num_evals, ..., 1; 0 = every ``eval_every`` steps."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of completions that never emit EOS (the 'EOS trick')."""
    whiten_rewards: bool = False
    """Normalise per-step rewards to zero mean, unit variance before advantages."""
    whiten_advantages: bool = True
    """Normalise advantages within each rollout batch."""
    cliprange: float = 0.2
    """Clip range of the policy ratio."""
    eval_every: int = 10
    """Evaluate on held-out prompts every this many steps (and at the end)."""
    eval_batch_size: int = 64
    """Completions sampled per evaluation (held-out prompts x ``eval_samples_per_prompt``)."""
    eval_samples_per_prompt: int = 4
    """Completions per held-out prompt at each evaluation: standard errors are taken over prompts, so
    several samples per prompt shrink the within-prompt noise of each prompt's mean."""
    zero3_gather_for_generation: bool = True
    """Only matters under ZeRO-3 (TRL's ``ds3_gather_for_generation``).  True: gather the whole policy once per
    rollout and generate with DeepSpeed's hooks off: fast, but needs memory for a full copy of the model
    beside the own shard.  False: generate with ZeRO-3's per-module gather/release hooks on, every forward
    fetching layer by layer: slow, but the peak holds only one module's full parameters at a time."""
    diverge_approxkl: float = 10.0
    """End the cell as ``diverged`` when a step's mean approximate KL between the updated and the rollout
    policy (``policy/approxkl``, 0.5 E[log-ratio^2] over each minibatch) exceeds this; 0 = no check.  The
    largest value of 2,156 healthy step lines on the development machine (default recipe, fairness and
    algorithm grids, sweeps) was 0.79, of the default recipe's 400 lines 0.199; learning rate 1e3 gives
    8.7e13 in PPO's first step (2.8e14 in the issue's grid).  Algorithms that take one on-policy update
    per rollout log about 0 here, so they rely on ``diverge_grad_norm``."""
    diverge_grad_norm: float = 10_000.0
    """End the cell as ``diverged`` when a step's mean policy gradient norm before clipping
    (``policy/grad_norm``) exceeds this; 0 = no check.  The largest of 2,260 healthy step lines was 30.1
    (DPO and ReMax on the tiny model; the default recipe's largest 7.37); learning rate 1e3 gives 1.1e11
    by DPO's third step.  A non-finite mean (a skipped fp16 overflow step) is left to the loss check."""

    def __post_init__(self):
        check_choices(self)  # lr_schedule, kl_placement, loss_agg (and subclasses' Literal fields)
        positive_ints = ("steps", "batch_size", "num_minibatches", "num_epochs", "response_length", "eval_every", "eval_batch_size", "eval_samples_per_prompt")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.batch_size % self.num_minibatches:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by num_minibatches ({self.num_minibatches})")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.kl_coef < 0:
            raise ValueError("kl_coef must be >= 0")
        self._check_kl()
        self._check_budget()
        if self.cliprange <= 0:
            raise ValueError("cliprange must be > 0")
        if self.adaptive_kl_target is not None and self.adaptive_kl_target <= 0:
            raise ValueError("adaptive_kl_target must be > 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        for name in ("diverge_approxkl", "diverge_grad_norm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (0 = no check)")

    def _check_kl(self) -> None:
        """KL estimators are registered parts (``KLEstimatorSpec``): their names, the placements where each
        penalises KL to the reference (issue 11 §7) and the ``"auto"`` choice per placement come from the
        registry, so a plugin's estimator is accepted like a built-in one."""
        from rlhfkit.plugins import get_registry  # loaded by whoever reads a recipe; no torch

        estimators = {name: entry.obj for name, entry in get_registry().entries["kl_estimator"].items()}
        if self.kl_estimator == "auto":
            # the estimator whose gradient is that of KL(pi||ref) where the penalty is placed, so a grid can
            # sweep kl_placement alone ([grid.sweep.<algorithm>] kl_placement = ["sequence_reward", "loss"])
            picks = [name for name, spec in estimators.items() if self.kl_placement in spec.auto_for]
            if len(picks) != 1:
                raise ValueError(f'kl_estimator = "auto" needs exactly one registered KL estimator for kl_placement '
                                 f'{self.kl_placement!r} (found: {", ".join(picks) or "none"}); name one')
            self.kl_estimator = picks[0]
        if self.kl_estimator not in estimators:
            raise ValueError(f"kl_estimator must be one of: {', '.join(estimators)}, auto (got {self.kl_estimator!r})")
        if self.adaptive_kl_horizon < 0:
            raise ValueError("adaptive_kl_horizon must be >= 0 (0 = planned episodes / 4)")
        if self.kl_placement == "none" or self.kl_monitor_only:
            return
        if self.kl_placement not in estimators[self.kl_estimator].placements:
            pairs = ", ".join(f"{name} in {p}" for name, spec in estimators.items() for p in spec.placements)
            raise ValueError(
                f"kl_estimator {self.kl_estimator!r} with kl_placement {self.kl_placement!r} does not penalise "
                f"KL to the reference; allowed: {pairs} (kl_estimator = \"auto\" picks by placement; or set "
                "kl_monitor_only = true)"
            )

    def _check_budget(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of: {', '.join(BUDGETS)} (got {self.budget!r})")
        if self.budget_amount < 0:
            raise ValueError("budget_amount must be >= 0")
        if self.budget in ("flops", "seconds") and self.budget_amount == 0:
            raise ValueError(f"budget {self.budget!r} needs budget_amount > 0 (it cannot be derived from steps)")
        if self.num_evals < 0:
            raise ValueError("num_evals must be >= 0")

    @property
    def updates_per_step(self) -> int:
        """Policy optimizer steps per training step (epochs x minibatches)."""
        return self.num_epochs * self.num_minibatches

    def budget_total(self) -> float:
        """The budget in its own unit (``budget_amount``, or derived from ``steps``)."""
        if self.budget_amount:
            return float(self.budget_amount)
        if self.budget == "updates":
            return float(self.steps * self.updates_per_step)
        return float(self.steps * self.batch_size)

    def planned_steps(self) -> int:
        """Steps this arm plans to run: the LR schedule's horizon.  For flops/seconds budgets, ``steps`` until
        the first step's cost is known (the engine then re-plans)."""
        if self.budget == "episodes":
            return max(1, math.ceil(self.budget_total() / self.batch_size))
        if self.budget == "updates":
            return max(1, math.ceil(self.budget_total() / self.updates_per_step))
        return self.steps

    def kl_horizon(self) -> int:
        """Episodes over which the adaptive KL controller reacts (``adaptive_kl_horizon`` or its default)."""
        if self.adaptive_kl_horizon:
            return self.adaptive_kl_horizon
        return max(1, self.planned_steps() * self.batch_size // ADAPTIVE_KL_HORIZON_FRACTION)

    def check_groups(self, k: int) -> None:
        """Cross-field checks of an algorithm that samples k completions per prompt."""
        if k < 2:
            raise ValueError("k must be >= 2 (a group baseline needs another sample of the same prompt)")
        if self.batch_size % k:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by k ({k})")
        if (self.batch_size // self.num_minibatches) % k:
            raise ValueError(f"each minibatch (batch_size / num_minibatches = {self.batch_size // self.num_minibatches}) "
                             f"must hold whole groups of k = {k} completions")
