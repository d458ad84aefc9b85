"""Training checkpoints of one cell (``[run] checkpoint_every``): a preempted cell resumes mid-run on rerun.

Every ``every`` steps the step scope saves, into ``<cell_dir>/checkpoint/``, everything the next steps depend
on: the policy and critic weights, optimizer and LR-scheduler states, the KL controller, the step index and the
budget clock, the ledger counters, the evaluations and metric lines so far, the prompt sampler, the sampling
generator, the global torch/numpy/python RNG states and the byte length of metrics.jsonl.  A resumed cell loads
it, truncates metrics.jsonl to that length and continues with the next step: its numbers are those of an
uninterrupted run, bit for bit (timings and memory aside).

Saving is atomic: a step's state goes to ``step-<n>.tmp-<pid>/``, is renamed to ``step-<n>/``, and only then does
``LATEST`` (written atomically) point at it; older step directories are removed after.  A checkpoint carries a
fingerprint of the cell's spec and config; one that does not match is ignored (a note on stderr, the cell's
log.txt) and the cell starts from step 0.  Single-process cells without ZeRO only (see :func:`supported`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from rlhfkit.fileio import atomic_write_text

LEDGER_FIELDS = ("episodes", "prompts", "generated_tokens", "forward_tokens", "backward_tokens", "optimizer_steps",
                 "wall_s", "cpu_s")


def fingerprint(*parts) -> str:
    """A short hash of JSON-able parts (the cell, its config, its model set)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def supported(plan, num_processes: int) -> str | None:
    """Why this cell cannot checkpoint (None when it can)."""
    if getattr(plan, "zero_stage", 0) in (2, 3):
        return f"ZeRO-{plan.zero_stage} shards the optimizer across processes; checkpoints are single-process only"
    if num_processes > 1:
        return f"{num_processes} processes hold one RNG state each; checkpoints are single-process only"
    return None


def _rng_states(ctx) -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
              "generator": ctx.generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(ctx, states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    ctx.generator.set_state(states["generator"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def _trained(ctx) -> dict:
    """(model, optimizer, scheduler) per trained role."""
    roles = {"policy": (ctx.policy, ctx.policy_optimizer, ctx.policy_scheduler)}
    if ctx.value_model is not None:
        roles["critic"] = (ctx.value_model, ctx.value_optimizer, ctx.value_scheduler)
    return roles


class Checkpointer:
    """Saves and restores one cell's training state under ``directory`` (``<cell_dir>/checkpoint``)."""

    def __init__(self, directory: Path, every: int, spec_fingerprint: str, metrics_path: Path | None = None):
        self.directory = Path(directory)
        self.every = int(every)
        self.fingerprint = spec_fingerprint
        self.metrics_path = metrics_path
        self.resume_point: tuple[int, int] | None = None
        """(next step index, the budget clock's next evaluation) once :meth:`restore` loaded a checkpoint."""

    def due(self, steps_done: int) -> bool:
        return self.every > 0 and steps_done % self.every == 0

    def state(self, ctx, steps_done: int, next_eval: int) -> dict:
        """Everything a resumed run needs, as one ``torch.save``-able dict."""
        roles = {}
        for name, (model, optimizer, scheduler) in _trained(ctx).items():
            roles[name] = {"model": ctx.accelerator.unwrap_model(model).state_dict(),
                           "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict() if scheduler is not None else None}
        ledger = {k: getattr(ctx.ledger, k) for k in LEDGER_FIELDS}
        metrics_bytes = self.metrics_path.stat().st_size if self.metrics_path and self.metrics_path.exists() else 0
        return {
            "fingerprint": self.fingerprint, "steps_done": steps_done, "next_eval": next_eval, "roles": roles,
            "kl_controller": dict(vars(ctx.kl_controller)), "ledger": ledger,
            "counters": {"episodes": ctx.episodes, "tokens": ctx.tokens, "last_step": ctx.last_step},
            "evaluations": ctx.evaluations, "history": ctx.logger.history,
            "sampler": {"rng": ctx.prompt_sampler.rng.getstate(), "order": list(ctx.prompt_sampler.order)},
            "rng": _rng_states(ctx), "metrics_bytes": metrics_bytes,
        }

    def save(self, ctx, steps_done: int, next_eval: int) -> Path:
        """Write the state after ``steps_done`` steps atomically; returns its directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step-{steps_done}"
        tmp = self.directory / f"step-{steps_done}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(self.state(ctx, steps_done, next_eval), tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(self.directory / "LATEST", final.name)
        for old in self.directory.iterdir():
            if old.is_dir() and old.name != final.name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _load(self) -> dict | None:
        latest = self.directory / "LATEST"
        if not latest.exists():
            return None
        state = torch.load(self.directory / latest.read_text().strip() / "state.pt", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            print(f"checkpoint {self.directory} ignored: it was saved for another spec or config "
                  f"({state.get('fingerprint')} != {self.fingerprint}); starting from step 0", file=sys.stderr)
            return None
        return state

    def restore(self, ctx) -> bool:
        """Load the latest matching checkpoint into ``ctx`` (True), or start afresh: no checkpoint, or one of
        another spec, which is removed along with the metric lines it had kept (False)."""
        state = self._load() if self.directory.exists() else None
        if state is None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self._truncate_metrics(0)
            return False
        for name, (model, optimizer, scheduler) in _trained(ctx).items():
            saved = state["roles"][name]
            ctx.accelerator.unwrap_model(model).load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(saved["scheduler"])
        vars(ctx.kl_controller).update(state["kl_controller"])
        for key, value in state["ledger"].items():
            setattr(ctx.ledger, key, value)
        for key, value in state["counters"].items():
            setattr(ctx, key, value)
        ctx.evaluations[:] = state["evaluations"]
        ctx.logger.history[:] = state["history"]
        ctx.prompt_sampler.rng.setstate(state["sampler"]["rng"])
        ctx.prompt_sampler.order = list(state["sampler"]["order"])
        _set_rng_states(ctx, state["rng"])
        self._truncate_metrics(state["metrics_bytes"])
        self.resume_point = (state["steps_done"], state["next_eval"])
        # The cell's log.txt says so: a rerun that resumed is told from one that started afresh.
        print(f"resumed from checkpoint step-{state['steps_done']} ({self.directory}): continuing at step "
              f"{state['steps_done']}", file=sys.stderr)
        return True

    def _truncate_metrics(self, length: int) -> None:
        if self.metrics_path is not None and self.metrics_path.exists():
            os.truncate(self.metrics_path, length)

    def remove(self) -> None:
        """The cell finished: its checkpoint is of no further use."""
        shutil.rmtree(self.directory, ignore_errors=True)


__all__ = ["Checkpointer", "fingerprint", "supported"]
