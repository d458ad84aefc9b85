"""A cell's ``result.json``, typed: the keys are the fields of :class:`CellResult` and :class:`CellSummary`.

``python -m rlhfkit.cell`` (``rlhfkit.cell.main``) writes ``{cell, python, hostname, status, error}`` plus,
for a cell that finished, :meth:`CellResult.as_dict`.  ``schema_version`` says which shape a file has:
1 = this one (the first versioned shape; files without the key are the same shape minus ``schema_version``
and ``model_set``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from rlhfkit.engine.steps import Phase

SCHEMA_VERSION = 1
STATUS_KEYS = ("cell", "python", "hostname", "status", "error")
"""Keys the cell process adds around a :class:`CellResult` (and the only ones a failed cell writes)."""


@dataclass
class CellSummary:
    """``result.json`` ``summary``: the numbers the results table and the report read."""

    gold_sft: float | None
    gold_final: float | None
    score_sft: float
    score_final: float
    kl_final: float
    length_final: float
    eos_rate_final: float
    peak_memory_bytes: int
    generation_peak_bytes: int
    scoring_peak_bytes: int
    training_peak_bytes: int
    episodes: int
    episodes_per_s: float
    tokens_per_s: float
    train_s: float
    trainable_parameters: int
    wall_s: float
    steps_run: int
    ledger: dict = field(default_factory=dict)
    """The compute ledger's metrics (``ledger/...`` keys), written flat into the summary."""
    run_conditions: str = ""
    """``device/threads=/parallel=/procs=``: the conditions speed numbers depend on."""
    planned_memory_bytes: int | None = None
    """The planner's worst case: every answer reaches ``response_length``."""
    planned_typical_memory_bytes: int | None = None
    """The planner's peak with answers of ``[run] plan_typical_length_fraction`` x ``response_length``."""
    planned_generation_bytes: int | None = None
    planned_scoring_bytes: int | None = None
    planned_training_bytes: int | None = None
    rank_peak_bytes: list[int] | None = None
    """Per-rank peaks, with several processes only."""

    @classmethod
    def of(cls, ctx, sft_eval: dict, final_eval: dict, train_seconds: float, trainable: int, wall_seconds: float,
           conditions: dict, planned: dict | None, rank_peaks: list | None) -> "CellSummary":
        memory = ctx.memory
        summary = cls(
            gold_sft=sft_eval.get("eval/gold"), gold_final=final_eval.get("eval/gold"),
            score_sft=sft_eval["eval/score"], score_final=final_eval["eval/score"], kl_final=final_eval["eval/kl"],
            length_final=final_eval["eval/length"], eos_rate_final=final_eval["eval/eos_rate"],
            peak_memory_bytes=memory.peak,
            generation_peak_bytes=memory.peaks.get(Phase.GENERATION.value, 0),
            scoring_peak_bytes=memory.peaks.get(Phase.SCORING.value, 0),
            training_peak_bytes=memory.peaks.get(Phase.TRAINING.value, 0),
            episodes=ctx.episodes, episodes_per_s=ctx.episodes / train_seconds,
            tokens_per_s=ctx.tokens / train_seconds, train_s=train_seconds, trainable_parameters=trainable,
            wall_s=wall_seconds, steps_run=ctx.last_step, ledger=ctx.ledger.as_metrics(),
            run_conditions="{device}/threads={threads}/parallel={parallel_cells}/procs={num_processes}".format(**conditions),
        )
        if planned and "error" not in planned:
            summary.planned_memory_bytes = planned["peak_bytes"]
            summary.planned_typical_memory_bytes = planned.get("typical_peak_bytes")
            for phase in Phase:
                setattr(summary, f"planned_{phase.value}_bytes", planned["phases"][phase.value])
        if rank_peaks is not None:
            summary.rank_peak_bytes = [r["peak"] for r in rank_peaks]
        return summary

    def as_dict(self) -> dict:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "ledger":
                out.update(value)
            elif value is not None or f.default is not None:  # optional keys only where they apply
                out[f.name] = value
        return out


@dataclass
class CellResult:
    """What a finished cell writes into ``result.json`` beside :data:`STATUS_KEYS`."""

    summary: CellSummary
    evaluations: list[dict]
    """One dict per evaluation (``eval/step``, ``eval/score``, ``eval/gold``, ``eval/kl``...)."""
    memory_plan: str
    """The memory strategy as the recipe names it."""
    device: str
    memory_measurement: str
    """``cuda-allocator``, ``cpu-resident`` or ``cpu-live`` (docs/memory.md)."""
    num_processes: int
    rank_memory: list[dict] | None
    planned_memory: dict | None
    """The planner's prediction for this cell on this machine (``rlhfkit.planner.CellPlan.as_dict``)."""
    threads: int
    artifacts: dict
    run_conditions: dict
    model_set: dict = field(default_factory=dict)
    """The cell's model set as built (``rlhfkit.cellspec.modelset.ModelSet.as_dict``)."""
    schema_version: int = SCHEMA_VERSION

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["summary"] = self.summary.as_dict()
        return out


def result_keys() -> list[str]:
    """Every top-level key of a finished cell's ``result.json``."""
    return list(STATUS_KEYS) + [f.name for f in fields(CellResult)]


__all__ = ["CellResult", "CellSummary", "SCHEMA_VERSION", "STATUS_KEYS", "result_keys"]
