"""The compute ledger (CONTRACT §2): what each algorithm was given, counted by the engine, not the algorithm.

Tokens are real (unpadded) tokens.  FLOPs follow Kaplan et al. (2020): 2N per token through a forward pass
and 4N per token through a backward pass, N = the model's parameters outside embedding lookups (a lookup is
no matmul; an untied output head is, so it counts).  Generation counts as forward: the prompt once (prefill)
and every generated token once.  The backward estimate assumes every weight gets a gradient; with LoRA or
frozen layers the true cost is lower (the input gradients are still computed, the weight gradients not).

Evaluation is excluded: :meth:`Ledger.paused` stops the counters and the clocks while it runs.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

MODELS = ("policy", "reference", "reward", "critic")


def non_embedding_parameters(model) -> int:
    """Parameters outside ``nn.Embedding`` modules (ZeRO-3 partitioned ones counted whole by ``ds_numel``)."""
    import torch

    if model is None:
        return 0
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in embedding:
            continue
        seen.add(id(p))
        total += int(getattr(p, "ds_numel", p.numel()))
    return total


class Ledger:
    """Cumulative counts of one cell's training; :meth:`as_metrics` gives the ``ledger/*`` keys."""

    def __init__(self, parameters: dict[str, int]):
        self.parameters = {name: n for name, n in parameters.items() if n}
        """Non-embedding parameters per model that exists (policy, reference, reward, critic)."""
        self.episodes = 0
        self.prompts = 0
        self.generated_tokens = 0
        self.forward_tokens = {name: 0 for name in self.parameters}
        self.backward_tokens = {name: 0 for name in self.parameters}
        self.optimizer_steps = {name: 0 for name in self.parameters}
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._paused = 0
        self._clock: tuple[float, float] | None = None

    # -- counting -------------------------------------------------------------------------------------------
    def forward(self, model: str, tokens: int) -> None:
        if not self._paused and model in self.forward_tokens:
            self.forward_tokens[model] += int(tokens)

    def backward(self, model: str, tokens: int) -> None:
        if not self._paused and model in self.backward_tokens:
            self.backward_tokens[model] += int(tokens)

    def optimizer_step(self, model: str) -> None:
        if not self._paused and model in self.optimizer_steps:
            self.optimizer_steps[model] += 1

    def generated(self, completions: int, prompts: int, tokens: int, prompt_tokens: int, training: bool) -> None:
        """A rollout: ``training`` completions count as episodes (a ReMax greedy baseline does not)."""
        if self._paused:
            return
        self.generated_tokens += int(tokens)
        self.forward("policy", int(tokens) + int(prompt_tokens))
        if training:
            self.episodes += int(completions)
            self.prompts += int(prompts)

    def processed(self, completions: int, prompts: int) -> None:
        """Training completions read from data rather than generated (offline DPO's preference completions):
        episodes and prompts, no generated tokens (their forwards are counted where they run)."""
        if self._paused:
            return
        self.episodes += int(completions)
        self.prompts += int(prompts)

    # -- clocks ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._clock is None:
            self._clock = (time.perf_counter(), time.process_time())

    def _stop(self) -> None:
        if self._clock is not None:
            wall, cpu = self._clock
            self.wall_s += time.perf_counter() - wall
            self.cpu_s += time.process_time() - cpu
            self._clock = None

    def stop(self) -> None:
        self._stop()

    @contextmanager
    def paused(self):
        """Evaluation: nothing counted, clocks stopped (and restarted after, when they were running)."""
        running = self._clock is not None
        self._stop()
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            if running:
                self.start()

    def elapsed(self) -> tuple[float, float]:
        """(wall, cpu) seconds so far, the running interval included."""
        wall, cpu = self.wall_s, self.cpu_s
        if self._clock is not None:
            wall += time.perf_counter() - self._clock[0]
            cpu += time.process_time() - self._clock[1]
        return wall, cpu

    # -- totals ---------------------------------------------------------------------------------------------
    @property
    def flops(self) -> float:
        return float(sum(2 * n * self.forward_tokens[m] + 4 * n * self.backward_tokens[m] for m, n in self.parameters.items()))

    @property
    def updates(self) -> int:
        return self.optimizer_steps.get("policy", 0)

    def spent(self, budget: str) -> float:
        """How much of ``budget`` (episodes | updates | flops | seconds) has been used."""
        if budget == "episodes":
            return float(self.episodes)
        if budget == "updates":
            return float(self.updates)
        if budget == "flops":
            return self.flops
        return self.elapsed()[0]

    def as_metrics(self) -> dict[str, float]:
        wall, cpu = self.elapsed()
        out = {"ledger/episodes": self.episodes, "ledger/prompts": self.prompts,
               "ledger/generated_tokens": self.generated_tokens}
        for model in self.parameters:
            out[f"ledger/{model}/forward_tokens"] = self.forward_tokens[model]
            out[f"ledger/{model}/backward_tokens"] = self.backward_tokens[model]
            out[f"ledger/{model}/optimizer_steps"] = self.optimizer_steps[model]
        out.update({"ledger/flops": self.flops, "ledger/wall_s": wall, "ledger/cpu_s": cpu, "ledger/updates": self.updates})
        return out
