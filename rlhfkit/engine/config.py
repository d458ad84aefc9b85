"""Settings shared by every RL algorithm (the recipe's ``[rl]`` table).

Algorithm configs subclass :class:`RLConfig`, so a recipe sets the shared budget once in ``[rl]`` and the
algorithm-specific knobs in ``[algorithms.<name>]``.  Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    lr_schedule: str = "linear"
    """``"linear"`` decay to zero over the run, or ``"constant"``."""
    response_length: int = 16
    """Maximum generated tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are computed from logits divided by it too."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0 = no truncation)."""
    kl_coef: float = 0.05
    """beta: weight of the KL penalty to the reference (SFT) policy."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: ``"k1"`` (log-ratio) or ``"k3"`` (Schulman's unbiased, >= 0)."""
    adaptive_kl_target: float | None = None
    """If set, beta is adapted (Ziegler et al.) to keep the sequence KL near this value."""
    adaptive_kl_horizon: int = 10000
    """Episodes over which the adaptive controller reacts."""
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

    def __post_init__(self):
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
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be one of: k1, k3")
        if self.lr_schedule not in ("linear", "constant"):
            raise ValueError("lr_schedule must be one of: linear, constant")
        if self.cliprange <= 0:
            raise ValueError("cliprange must be > 0")
        if self.adaptive_kl_target is not None and self.adaptive_kl_target <= 0:
            raise ValueError("adaptive_kl_target must be > 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
