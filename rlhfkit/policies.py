"""Trained policies kept (``[run] save_policies``, ``save_merged``; issue 15 item 6).

A cell of a run with ``save_policies = "best"`` or ``"all"`` saves its final policy, after its result is complete
(so nothing it measured changes), into ``cells/<cell>/policy/``:

* a full policy: ``save_pretrained`` of the trained model and its tokenizer; loads alone with
  ``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)``;
* a LoRA policy: the peft adapter (``adapter_config.json`` naming, as an absolute path, the checkpoint the
  adapter was put on: the row's SFT policy, or its DPO policy when the row has a DPO stage) and the tokenizer; loads with ``AutoPeftModelForCausalLM.from_pretrained(path)`` or
  ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path)``; with ``save_merged = true``
  also ``policy/merged/``: the adapter merged into the base (a full model, same loading as above), except over a
  4-bit base (QLoRA), which is not merged (a note in the manifest and log.txt);
* ``rlhfkit_policy.json`` (the manifest): cell, kind, base, step and final evaluation of what was saved.

Under ZeRO-3 every process holds a shard of the policy: all processes gather the full parameters (DeepSpeed's
``GatheredParameters``) and the main one saves.  The directory is written to ``policy.tmp-<pid>/`` and renamed
into place, so a ``policy/`` is always complete.

``"best"``: after the grid the runner keeps, per algorithm, the saved policy of the best ``ok`` cell (highest final
eval gold; the final proxy score when the task has no gold reward) and removes the other policies (renamed away,
then deleted; results are never touched); ``policies.json`` records what was kept and why.  Only cells with a
saved policy compete: a policy removed by an earlier, smaller grid into the same directory cannot come back.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

from rlhfkit.fileio import atomic_write_json

POLICY_DIR = "policy"
MANIFEST = "rlhfkit_policy.json"
SUMMARY = "policies.json"
PRUNED_PREFIX = ".policy.pruned-"


# -- saving (in the cell process) -------------------------------------------------------------------------------

def save_policy(built) -> Path | None:
    """Save the cell's final policy as ``[run] save_policies`` asks; every process calls it (ZeRO-3 gathers)."""
    run = built.recipe.run
    cell_dir = built.spec.get("cell_dir")
    if run.save_policies == "none" or not cell_dir:
        return None
    ctx, accelerator = built.ctx, built.accelerator
    final = Path(cell_dir) / POLICY_DIR
    staging = final.with_name(f"{POLICY_DIR}.tmp-{os.getpid()}")
    with _gathered(ctx.policy, built.model_set.zero_stage == 3):
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            manifest = _write(accelerator.unwrap_model(ctx.policy), ctx.tokenizer, staging, built)
            atomic_write_json(staging / MANIFEST, manifest)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            print(f"policy saved to {final} ({manifest['kind']}{', merged' if manifest['merged'] else ''})",
                  file=sys.stderr)
    accelerator.wait_for_everyone()
    return final


def _gathered(model, zero3: bool):
    """Full parameters on every process for the duration of the save (ZeRO-3), else nothing to do."""
    from contextlib import nullcontext

    if not zero3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def _write(model, tokenizer, staging: Path, built) -> dict:
    """The policy (full, or adapter [+ merged]) and its tokenizer into ``staging``; returns the manifest."""
    from peft import PeftModel

    lora = isinstance(model, PeftModel)
    base = _base_path(model) if lora else None
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    merged, note = None, None
    if lora:
        _absolute_base(staging, base)
        if not built.recipe.run.save_merged:
            pass
        elif built.model_set.quantization:
            note = f"save_merged skipped: the base is quantized ({built.model_set.quantization}); the adapter is saved"
            print(note, file=sys.stderr)
        else:
            # In place: the cell's result is complete and nothing uses the policy after this.
            full = model.merge_and_unload()
            full.save_pretrained(str(staging / "merged"))
            tokenizer.save_pretrained(str(staging / "merged"))
            merged = "merged"
    last = built.ctx.evaluations[-1]
    return {
        "cell": built.cell.as_dict(), "kind": "lora" if lora else "full", "base": base,
        "merged": merged, "note": note, "step": built.ctx.last_step,
        "final_eval": {k: v for k, v in last.items() if k in ("eval/step", "eval/gold", "eval/score", "eval/kl")},
        "load": ("peft.AutoPeftModelForCausalLM.from_pretrained(path)" if lora
                 else "transformers.AutoModelForCausalLM.from_pretrained(path)"),
    }


def _base_path(model) -> str:
    """The checkpoint the adapter was put on, as peft recorded it (the row's policy start: its SFT policy, its DPO
    policy, or a given checkpoint), absolute when it is a local directory."""
    base = model.peft_config[model.active_adapter].base_model_name_or_path
    return str(Path(base).resolve()) if base and Path(base).exists() else base


def _absolute_base(staging: Path, base: str) -> None:
    """The adapter names its base as the cell loaded it (relative when --output was): an absolute path instead,
    so the adapter loads from any working directory."""
    config_path = staging / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


# -- after the grid (runner) -------------------------------------------------------------------------------------

def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def saved_policies(output_dir: Path) -> list[dict]:
    """Every complete saved policy under ``cells/``: its manifest, with ``path`` (relative to the output directory)
    and the cell's ``status`` and ``summary`` from its result.json (``None`` when missing or unreadable)."""
    from rlhfkit.results import read_json

    found = []
    for manifest_path in sorted(Path(output_dir).glob(f"cells/*/{POLICY_DIR}/{MANIFEST}")):
        manifest = read_json(manifest_path)
        if manifest is None:
            continue
        cell_dir = manifest_path.parent.parent
        result = read_json(cell_dir / "result.json") or {}
        summary = result.get("summary") if isinstance(result.get("summary"), dict) else {}
        found.append({**manifest, "id": cell_dir.name, "path": f"cells/{cell_dir.name}/{POLICY_DIR}",
                      "status": result.get("status"), "summary": summary})
    return found


def select_best(policies: list[dict]) -> dict[str, dict]:
    """Per algorithm, the ``ok`` cell with the highest final eval gold (or final proxy score when one of the
    algorithm's cells has no gold); ties go to the first cell id in sorted order."""
    best = {}
    by_algorithm: dict[str, list[dict]] = {}
    for policy in policies:
        if policy["status"] == "ok":
            by_algorithm.setdefault(policy["cell"]["algorithm"], []).append(policy)
    for algorithm, group in sorted(by_algorithm.items()):
        metric = "gold_final" if all(_finite(p["summary"].get("gold_final")) for p in group) else "score_final"
        scored = [p for p in group if _finite(p["summary"].get(metric))]
        if scored:
            winner = max(sorted(scored, key=lambda p: p["id"]), key=lambda p: p["summary"][metric])
            best[algorithm] = {"cell": winner["id"], "path": winner["path"], "metric": metric,
                               "value": winner["summary"][metric], "candidates": len(group)}
    return best


def keep_best(output_dir: Path) -> dict:
    """``save_policies = "best"``: keep each algorithm's best saved policy, remove the others (and leftovers of an
    interrupted pruning); write ``policies.json``.  A policy directory is renamed away before it is deleted, so
    a ``policy/`` that exists is always whole; result files are never touched."""
    from rlhfkit.results import read_json

    output_dir = Path(output_dir)
    for leftover in output_dir.glob(f"cells/*/{PRUNED_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    policies = saved_policies(output_dir)
    best = select_best(policies)
    kept = {entry["cell"] for entry in best.values()}
    removed = []
    for policy in policies:
        if policy["id"] in kept:
            continue
        directory = output_dir / policy["path"]
        doomed = directory.with_name(f"{PRUNED_PREFIX}{os.getpid()}")
        os.replace(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(policy["id"])
    earlier = (read_json(output_dir / SUMMARY) or {}).get("removed") or []
    removed = sorted(set(removed) | {r for r in earlier if isinstance(r, str)})
    summary = {"save_policies": "best", "selection": "per algorithm, the ok cell with the highest final eval gold "
               "(final proxy score when the task has no gold reward), among cells with a saved policy",
               "kept": best, "removed": removed}
    atomic_write_json(output_dir / SUMMARY, summary)
    return summary


def report_rows(output_dir: Path) -> tuple[list[dict], dict]:
    """The saved policies to link from the report, and ``policies.json`` (empty when there is none)."""
    from rlhfkit.results import read_json

    return saved_policies(output_dir), read_json(Path(output_dir) / SUMMARY) or {}


__all__ = ["save_policy", "saved_policies", "select_best", "keep_best", "report_rows"]
