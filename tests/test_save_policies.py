"""Issue 15 item 6: trained policies kept (``[run] save_policies``, ``save_merged``).

A saved policy loads on its own (transformers, or peft for a LoRA adapter), generates, and the engine's
evaluation of it on the cell's eval prompts and seed gives the cell's final ``eval/gold``; ``best`` keeps one
policy per algorithm and never touches a result; the report links what was kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from rlhfkit.policies import MANIFEST, keep_best, select_best

GRID = """
name = "keep"
[data]
name = "synthetic"
num_sft = 300
num_pairs = 300
num_eval_pairs = 100
num_eval_prompts = 16
[[models]]
name = "llama-tiny"
policy = "llama:tiny"
[grid]
algorithms = ["rloo", "ppo"]
memory = ["full", "lora"]
seeds = [1]
[sft]
epochs = 1
[reward_model]
epochs = 1
[rl]
steps = 3
batch_size = 8
response_length = 8
eval_every = 2
eval_batch_size = 16
learning_rate = 1e-2
[algorithms.ppo]
num_epochs = 1
num_minibatches = 2
[algorithms.rloo]
k = 2
[run]
parallel_cells = 2
threads_per_cell = 1
"""


# -- fast: selection, pruning, validation -------------------------------------------------------------------------

def _fake_cell(out: Path, cell_id: str, algorithm: str, status: str = "ok", gold=None, score=0.0, policy=True):
    directory = out / "cells" / cell_id
    directory.mkdir(parents=True)
    summary = {"gold_final": gold, "score_final": score}
    (directory / "result.json").write_text(json.dumps({"status": status, "summary": summary}))
    if policy:
        (directory / "policy").mkdir()
        (directory / "policy" / "model.safetensors").write_text("weights")
        cell = {"model": "m", "algorithm": algorithm, "memory": "full", "seed": 1}
        (directory / "policy" / MANIFEST).write_text(json.dumps({"cell": cell, "kind": "full", "merged": None}))
    return directory


def test_best_keeps_one_policy_per_algorithm_and_never_a_result(tmp_path):
    out = tmp_path / "run"
    _fake_cell(out, "a1", "rloo", gold=0.2)
    _fake_cell(out, "a2", "rloo", gold=0.5)
    _fake_cell(out, "a3", "rloo", gold=0.9, status="diverged")  # not ok: never the best
    _fake_cell(out, "b1", "ppo", gold=None, score=1.0)  # no gold: score decides for ppo
    _fake_cell(out, "b2", "ppo", gold=None, score=3.0)
    _fake_cell(out, "b3", "ppo", gold=None, score=9.0, policy=False)  # its policy removed by an earlier run
    leftover = out / "cells" / "b1" / ".policy.pruned-999"  # an interrupted pruning
    leftover.mkdir()
    results = {p: p.read_bytes() for p in out.glob("cells/*/result.json")}
    summary = keep_best(out)
    assert {k: (v["cell"], v["metric"], v["candidates"]) for k, v in summary["kept"].items()} == {
        "rloo": ("a2", "gold_final", 2), "ppo": ("b2", "score_final", 2)}
    assert sorted(p.parent.parent.name for p in out.glob("cells/*/policy/" + MANIFEST)) == ["a2", "b2"]
    assert not leftover.exists() and not list(out.glob("cells/*/.policy.pruned-*"))
    assert {p: p.read_bytes() for p in out.glob("cells/*/result.json")} == results
    assert json.loads((out / "policies.json").read_text())["removed"] == ["a1", "a3", "b1"]
    again = keep_best(out)  # a rerun keeps what it kept
    assert {k: v["cell"] for k, v in again["kept"].items()} == {"rloo": "a2", "ppo": "b2"}
    assert again["removed"] == ["a1", "a3", "b1"]


def test_ties_and_missing_numbers():
    def policy(cell_id, gold, status="ok"):
        return {"id": cell_id, "path": f"cells/{cell_id}/policy", "status": status,
                "cell": {"algorithm": "rloo"}, "summary": {"gold_final": gold, "score_final": 0.0}}

    assert select_best([policy("b", 1.0), policy("a", 1.0)])["rloo"]["cell"] == "a"
    assert select_best([policy("a", None), policy("b", 2.0)])["rloo"]["metric"] == "score_final"
    assert select_best([policy("a", 1.0, status="failed")]) == {}


def test_a_bad_value_is_one_line(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(GRID + 'save_policies = "bst"\n')
    proc = run_cli("validate", recipe)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "save_policies" in proc.stderr and "'bst'" in proc.stderr and "best" in proc.stderr
    recipe.write_text(GRID + "checkpoint_every = -1\n")
    proc = run_cli("validate", recipe)
    assert proc.returncode == 2 and "checkpoint_every must be >= 0" in proc.stderr and proc.stderr.count("\n") == 1


def test_report_links_render_in_markdown_and_html():
    from rlhfkit.report.document import Table, TableCell, md_table
    from rlhfkit.report.html import table_html

    table = Table(["policy"], [[TableCell("cells/x/policy/", href="cells/x/policy/")]])
    assert "[cells/x/policy/](<cells/x/policy/>)" in md_table(table)
    assert '<a href="cells/x/policy/">cells/x/policy/</a>' in table_html(table)


# -- slow: a real grid ----------------------------------------------------------------------------------------------

def _evaluate_with(cell_dir: Path, policy, reference=None) -> dict:
    """The engine's evaluation (the cell's eval prompts, eval seed and threads) with ``policy`` in the cell's place."""
    from rlhfkit.cellspec.build import build_cell

    spec = json.loads((cell_dir / "spec.json").read_text())
    spec.pop("cell_dir")  # no metrics.jsonl, no checkpoint: nothing of the cell's files is touched
    built = build_cell(spec, broadcast=False)
    ctx = built.ctx
    ctx.policy = policy.eval()
    if reference is not None:
        ctx.reference = reference
    step = json.loads((cell_dir / "result.json").read_text())["evaluations"][-1]["eval/step"]
    try:
        return {**ctx.evaluate(step), "samples": ctx.evaluations[-1]["samples"]}
    finally:
        ctx.memory.close()


def _generates(model, tokenizer) -> None:
    import torch

    inputs = tokenizer(["the"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.slow
def test_saved_policies_load_generate_and_have_the_cells_gold(tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = tmp_path / "keep.toml"
    recipe.write_text(GRID + 'save_policies = "all"\nsave_merged = true\n')
    out = tmp_path / "run"
    proc = run_cli("run", recipe, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = sorted((out / "cells").iterdir())
    assert len(cells) == 4
    changed = []
    for cell_dir in cells:
        result = json.loads((cell_dir / "result.json").read_text())
        policy_dir = cell_dir / "policy"
        manifest = json.loads((policy_dir / MANIFEST).read_text())
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        if result["cell"]["memory"] == "lora":
            assert manifest["kind"] == "lora" and manifest["merged"] == "merged"
            assert Path(manifest["base"]).is_absolute() and not (policy_dir / "model.safetensors").exists()
            policy = AutoPeftModelForCausalLM.from_pretrained(policy_dir)
            by_hand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(manifest["base"]), policy_dir)
            merged = AutoModelForCausalLM.from_pretrained(policy_dir / "merged")
            ids = tokenizer(["the cat"], return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits = policy(ids).logits
                assert torch.equal(logits, by_hand(ids).logits)
                assert torch.allclose(logits, merged(ids).logits, atol=1e-5)
            _generates(merged, AutoTokenizer.from_pretrained(policy_dir / "merged"))
        else:
            assert manifest["kind"] == "full" and not (policy_dir / "merged").exists()
            policy = AutoModelForCausalLM.from_pretrained(policy_dir)
        _generates(policy, tokenizer)
        evaluated, final = _evaluate_with(cell_dir, policy), result["evaluations"][-1]
        assert evaluated["eval/gold"] == pytest.approx(final["eval/gold"], abs=1e-9), cell_dir.name
        assert evaluated["eval/score"] == pytest.approx(final["eval/score"], rel=1e-5)
        assert evaluated["samples"] == final["samples"]
        changed.append(final["samples"] != result["evaluations"][0]["samples"])  # the SFT policy's differ
        assert manifest["final_eval"]["eval/gold"] == result["evaluations"][-1]["eval/gold"]
    assert any(changed), "no cell moved away from the SFT policy: the comparison would not tell them apart"
    report = (out / "report.md").read_text()
    assert report.count("](<cells/") == 4 and "Saved policies" in report
    assert '<a href="cells/' in (out / "report.html").read_text()

    copy = tmp_path / "copy"  # "best" on these real files: one policy per algorithm, results untouched
    shutil.copytree(out, copy)
    summary = keep_best(copy)
    assert sorted(summary["kept"]) == ["ppo", "rloo"] and len(summary["removed"]) == 2
    assert len(list(copy.glob("cells/*/policy/" + MANIFEST))) == 2
    assert len(list(copy.glob("cells/*/result.json"))) == 4


@pytest.mark.slow
def test_a_zero3_policy_is_gathered_before_it_is_saved(tmp_path):
    """Two processes under ZeRO-3 each hold half of every parameter: the saved policy has every tensor whole (the
    SFT checkpoint's shapes), trained (not the SFT weights), loads with transformers alone and generates; with
    ``best`` through ``rlhfkit run``, policies.json names it and the report says so."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = tmp_path / "zero3.toml"
    text = GRID.replace('algorithms = ["rloo", "ppo"]', 'algorithms = ["rloo"]').replace('["full", "lora"]', '["zero3"]')
    recipe.write_text(text.replace("parallel_cells = 2", "parallel_cells = 1") + 'save_policies = "best"\n')
    out = tmp_path / "run"
    proc = run_cli("run", recipe, "--output", out, "--num-processes", "2", timeout=600)
    cell_dir = out / "cells" / "llama-tiny__rloo__zero3__s1"
    result = json.loads((cell_dir / "result.json").read_text())
    assert proc.returncode == 0 and result["status"] == "ok", (result.get("error"), proc.stderr[-2000:])
    assert result["num_processes"] == 2
    policy = AutoModelForCausalLM.from_pretrained(cell_dir / "policy")
    sft = AutoModelForCausalLM.from_pretrained(result["artifacts"]["sft"])
    saved, start = policy.state_dict(), sft.state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in start.items()}
    assert all(v.numel() > 0 for v in saved.values())
    assert any(not torch.equal(saved[k], start[k]) for k in start)
    _generates(policy, AutoTokenizer.from_pretrained(cell_dir / "policy"))
    kept = json.loads((out / "policies.json").read_text())["kept"]  # "best" through the runner: the only cell
    assert kept["rloo"]["cell"] == cell_dir.name and kept["rloo"]["value"] == result["summary"]["gold_final"]
    assert "best by gold_final" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_zero3_lora_adapter_and_its_merge_are_gathered(tmp_path):
    """ZeRO-3 + LoRA on two processes: the adapter is whole and trained (LoRA B starts at zero), loads with peft
    on its base, and the merged model gives the adapter's logits."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = tmp_path / "zero3lora.toml"
    text = GRID.replace('algorithms = ["rloo", "ppo"]', 'algorithms = ["rloo"]').replace('["full", "lora"]', '["zero3+lora"]')
    # The default zero3_gather_for_generation = true: a ZeRO-3 + LoRA cell failed at its first evaluation with it
    # ("Setting requires_grad=True on inference tensor", peft's set_adapter in the reference forward) before
    # generation ran under no_grad; this cell is that regression test too.
    recipe.write_text(text.replace("parallel_cells = 2", "parallel_cells = 1") + 'save_policies = "all"\nsave_merged = true\n')
    out = tmp_path / "run"
    proc = run_cli("run", recipe, "--output", out, "--num-processes", "2", timeout=600)
    cell_dir = out / "cells" / "llama-tiny__rloo__zero3-lora__s1"
    result = json.loads((cell_dir / "result.json").read_text())
    assert proc.returncode == 0 and result["status"] == "ok", (result.get("error"), proc.stderr[-2000:])
    assert len(result["evaluations"]) >= 2
    assert "ZeRO-3 load: policy partitioned init" in (cell_dir / "log.txt").read_text()  # built sharded
    policy_dir = cell_dir / "policy"
    adapter = load_file(policy_dir / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.numel() > 0 for v in adapter.values()) and any(v.abs().sum() > 0 for v in lora_b)
    policy = AutoPeftModelForCausalLM.from_pretrained(policy_dir)
    merged = AutoModelForCausalLM.from_pretrained(policy_dir / "merged")
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    ids = tokenizer(["the cat"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(policy(ids).logits, merged(ids).logits, atol=1e-5)
    _generates(merged, tokenizer)
