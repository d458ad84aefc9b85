"""RL engine speed: rlhfkit's RLOO and PPO against TRL on identical work, and our sampling loop against the floor.

A benchmark, not a test.  Run from the repository root with the project's virtualenv:

    python benchmarks/bench_engine.py                 # ~5 min on 2 cores once artifacts and the TRL 0.29 venv exist

What it does, each part in its own fresh process (same thread count for every side):
1. Artifacts: the SFT policy, reward model and tokenizer of recipes/ppo_vs_rloo.toml, built by the project's own
   stage code into benchmarks/.cache/artifacts (or ``--artifacts DIR`` from an earlier ``rlhfkit run``).
2. RLOO: ours (TrainContext built as rlhfkit/cell.py run_cell does, the registered trainer run unchanged) against
   TRL 1.x ``RLOOTrainer`` (GRPO-shaped: num_generations=k, beta=kl coef) in the project's venv.
3. PPO: ours against TRL 0.29 ``trl.experimental.ppo.PPOTrainer``, in a separate venv benchmarks/.venv-trl029
   that this script creates (``pip install torch==2.13.0 'trl==0.29.*'``) when it is missing.
   Same SFT/reward checkpoints, prompts, batch size, k, completion length, temperature, lr, beta, steps; the
   reward is the same reward model read the same way everywhere (TRL RLOO gets it as a python reward function
   over prompt + completion token ids; TRL PPO reads it itself at the last real token, as we do).  Rates are
   steady-state: from the end of step 1 to the end of the last step (TRL: ``on_step_end`` callbacks; ours: the
   per-step metrics log).  Each side runs ``--repeats`` times, alternating with the other; the best run counts.
4. Generation: ``sample()`` time per token against the bare forward cost of the same shapes (prefill + one
   KV-cached forward per token, no sampling logic), completion length 64.
5. Scaling: RLOO step time (EOS disabled, so every completion has the full length) over completion lengths
   32..256 and batch sizes 8..64.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
TRL029_VENV = BENCH / ".venv-trl029"


def log(msg: str) -> None:
    print(msg, flush=True)


def run_json(cmd: list[str], marker: str | None = None, timeout: int = 600, env=None) -> dict:
    """Run ``cmd``; return the JSON object on its last line (or on the line starting with ``marker``)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    lines = proc.stdout.strip().splitlines()
    for line in reversed(lines):
        if marker is not None and line.startswith(marker):
            return json.loads(line[len(marker):])
        if marker is None and line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout)[-3000:]
    raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (rc={proc.returncode}):\n{tail}")


def ensure_artifacts(recipe: Path, artifacts: Path | None, threads: int) -> tuple[Path, Path, Path, Path]:
    """(artifacts_root, sft_dir, reward_dir, prompts_json), building the stages with the project's code if needed."""
    code = f"""
import json, sys, torch
torch.set_num_threads({threads})
from pathlib import Path
from rlhfkit.artifacts import artifact_dirs
from rlhfkit.recipe import load_recipe
from rlhfkit.stages.pipeline import build_task, run_stages
recipe = load_recipe({str(recipe)!r})
name = next(iter(recipe.models))
root = Path({str(artifacts)!r})
dirs = artifact_dirs(recipe, recipe.models[name], root)
if not (dirs.sft.is_dir() and dirs.reward_model.is_dir()):
    run_stages({{"recipe": {str(recipe)!r}, "model": name, "artifacts_root": str(root), "threads": {threads}}})
prompts = root / "rl_prompts.json"
prompts.write_text(json.dumps(build_task(recipe).rl_prompts))
print(json.dumps({{"sft": str(dirs.sft), "reward": str(dirs.reward_model), "prompts": str(prompts)}}))
"""
    info = run_json([sys.executable, "-c", code], timeout=1800)
    return artifacts, Path(info["sft"]), Path(info["reward"]), Path(info["prompts"])


def ensure_trl029() -> tuple[Path | None, str]:
    """The TRL 0.29 venv's python, installing it when missing; (None, reason) when that is impossible."""
    python = TRL029_VENV / "bin" / "python"
    probe = "import trl, torch; from trl.experimental.ppo import PPOTrainer; print(trl.__version__, torch.__version__)"
    if python.exists():
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.startswith("0.29"):
            return python, done.stdout.strip()
    log(f"installing trl 0.29 into {TRL029_VENV} (CPU torch 2.13.0 from the local wheel) ...")
    shutil.rmtree(TRL029_VENV, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(TRL029_VENV)],
        [str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "trl==0.29.*"],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return None, f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout)[-800:]}"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if done.returncode or not done.stdout.startswith("0.29"):
        return None, f"trl 0.29 installed but not importable: {(done.stderr or done.stdout)[-800:]}"
    return python, done.stdout.strip()


def alternate(ours_cmd, trl_cmd, repeats, env):
    """Run ours and TRL alternately ``repeats`` times each; keep each side's best run (least disturbed by other
    load on the machine).  Every run's rate is kept in ``runs``."""
    ours_runs, trl_runs = [], []
    for _ in range(repeats):
        ours_runs.append(run_json(ours_cmd, "BENCH_JSON ", env=env))
        trl_runs.append(run_json(trl_cmd, env=env))
    best = lambda runs: {**max(runs, key=lambda r: r["episodes_per_s"]),  # noqa: E731
                         "runs_episodes_per_s": [round(r["episodes_per_s"], 1) for r in runs]}
    return best(ours_runs), best(trl_runs)


def fmt_rate(r: dict) -> str:
    return (f"{r['episodes_per_s']:8.1f} episodes/s  {r['tokens_per_s']:8.1f} tokens/s  "
            f"({r['steady_s'] / r['steady_steps']:.3f} s/step, mean completion {r['mean_length']:.1f} tokens; "
            f"runs {r.get('runs_episodes_per_s', '')} ep/s)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "ppo_vs_rloo.toml"))
    p.add_argument("--artifacts", default=str(BENCH / ".cache" / "artifacts"),
                   help="artifacts root (an earlier `rlhfkit run --output X` leaves X/artifacts)")
    p.add_argument("--steps", type=int, default=10, help="RL steps per side (rates use steps 2..N)")
    p.add_argument("--batch", type=int, default=32, help="episodes (completions) per step")
    p.add_argument("--k", type=int, default=4, help="RLOO completions per prompt")
    p.add_argument("--length", type=int, default=32, help="max completion length in the TRL comparisons")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every side (cells use threads_per_cell=1)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per side in the TRL comparisons (best kept)")
    p.add_argument("--scaling-steps", type=int, default=8, help="RLOO steps per point of the scaling sweep")
    p.add_argument("--skip", default="", help="comma list of parts to skip: rloo,ppo,gen,scaling")
    p.add_argument("--json", default=None, help="also write all figures to this file")
    a = p.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    started = time.perf_counter()
    py = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}

    recipe = Path(a.recipe)
    if Path(a.artifacts).is_dir() and (Path(a.artifacts).parent / "recipe.toml").is_file():
        recipe = Path(a.artifacts).parent / "recipe.toml"  # a run's output: use the recipe it was built from
    log(f"# bench_engine  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  threads={a.threads}  "
        f"batch={a.batch} k={a.k} length={a.length} steps={a.steps} temperature=1.0 lr=1e-3 beta=0.05")
    root, sft, reward, prompts = ensure_artifacts(recipe, Path(a.artifacts), max(a.threads, 1))
    log(f"artifacts: {sft.name}, {reward.name}  (recipe {recipe})")
    shared = ["--steps", str(a.steps), "--batch", str(a.batch), "--length", str(a.length), "--threads", str(a.threads),
              "--lr", "1e-3", "--beta", "0.05", "--temperature", "1.0"]
    trl_args = ["--sft", str(sft), "--reward", str(reward), "--prompts", str(prompts)]
    ours_args = ["--recipe", str(recipe), "--artifacts", str(root)]
    results: dict = {"settings": vars(a)}

    if "rloo" not in skip:
        log("\n## RLOO: rlhfkit vs TRL RLOOTrainer (same models, prompts, batch, k, length, lr, beta, reward model)")
        ours_cmd = [py, str(BENCH / "_ours.py"), "train", "--algorithm", "rloo", "--k", str(a.k), *ours_args, *shared]
        trl_cmd = [py, str(BENCH / "_trl_rloo.py"), "--k", str(a.k), *trl_args, *shared]
        ours, trl = alternate(ours_cmd, trl_cmd, a.repeats, env)
        log(f"  rlhfkit RLOO            {fmt_rate(ours)}")
        log(f"  {trl['impl']:<23} {fmt_rate(trl)}")
        ratio = ours["episodes_per_s"] / trl["episodes_per_s"]
        log(f"  ratio (ours / TRL): episodes/s {ratio:.2f}x   tokens/s {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x"
            f"   target >= 1.5x: {'MET' if ratio >= 1.5 else 'MISSED'}")
        results["rloo"] = {"ours": ours, "trl": trl, "episodes_ratio": ratio}

    if "ppo" not in skip:
        log("\n## PPO: rlhfkit vs TRL 0.29 experimental.ppo.PPOTrainer (4 epochs x 4 minibatches, critic from the RM)")
        ours_cmd = [py, str(BENCH / "_ours.py"), "train", "--algorithm", "ppo", *ours_args, *shared]
        trl_python, note = ensure_trl029()
        if trl_python is None:
            ours = run_json(ours_cmd, "BENCH_JSON ", env=env)
            log(f"  rlhfkit PPO             {fmt_rate(ours)}")
            log(f"  TRL 0.29 PPOTrainer could not run: {note}")
            results["ppo"] = {"ours": ours, "trl_error": note}
        else:
            trl_cmd = [str(trl_python), str(BENCH / "_trl_ppo.py"), *trl_args, *shared]
            ours, trl = alternate(ours_cmd, trl_cmd, a.repeats, env)
            log(f"  rlhfkit PPO             {fmt_rate(ours)}")
            results["ppo"] = {"ours": ours}
            ratio = ours["episodes_per_s"] / trl["episodes_per_s"]
            log(f"  {'trl ' + note.split()[0] + ' PPOTrainer':<23} {fmt_rate(trl)}")
            log(f"  ratio (ours / TRL): episodes/s {ratio:.2f}x   tokens/s "
                f"{ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x   target >= 1.5x: {'MET' if ratio >= 1.5 else 'MISSED'}")
            results["ppo"].update({"trl": trl, "episodes_ratio": ratio})

    if "gen" not in skip:
        log("\n## Generation loop vs bare forward cost (batch 32, EOS disabled, median of 5)")
        log("  length  floor ms/tok  ours ms/tok  ours/floor  lean-floor ms/tok  ours/lean  HF-decode ms/tok  HF-decode/floor")
        results["gen"] = []
        for length in (32, 64, 128):
            g = run_json([py, str(BENCH / "_ours.py"), "gen", *ours_args, "--batch", str(a.batch), "--length", str(length),
                          "--threads", str(a.threads)], "BENCH_JSON ", env=env)
            results["gen"].append(g)
            log(f"  {length:6d}  {g['floor_ms_per_token']:12.3f}  {g['ours_ms_per_token']:11.3f}  {g['ours_over_floor']:10.2f}"
                f"  {g['lean_floor_ms_per_token']:17.3f}  {g['ours_over_lean_floor']:9.2f}  {g['ours_hf_decode_ms_per_token']:16.3f}"
                f"  {g['ours_hf_decode_over_floor']:15.2f}")
        g64 = next(g for g in results["gen"] if g["length"] == 64)
        log(f"  at length 64: ours / floor = {g64['ours_over_floor']:.2f}  target <= 1.3: "
            f"{'MET' if g64['ours_over_floor'] <= 1.3 else 'MISSED'}")

    if "scaling" not in skip:
        log(f"\n## Scaling: rlhfkit RLOO step time (EOS disabled: every completion is full length; fastest of steps "
            f"2..{a.scaling_steps}, the one least disturbed by other load)")
        s = run_json([py, str(BENCH / "_ours.py"), "scaling", *ours_args, "--algorithm", "rloo", "--k", str(a.k),
                      "--steps", str(a.scaling_steps), "--batch", str(a.batch), "--length", "64", "--threads", str(a.threads)],
                     "BENCH_JSON ", env=env, timeout=900)
        results["scaling"] = s
        for key, unit in (("length", "completion length"), ("batch", "batch size")):
            rows = s[key]
            base = rows[0]
            with_model = key == "length"
            log(f"  {unit:<18} step s   growth vs {base[key]:<4} linear would be"
                + ("   model fwd+bwd s  its growth" if with_model else ""))
            worst = 0.0
            for r in rows:
                growth, linear = r["step_s"] / base["step_s"], r[key] / base[key]
                worst = max(worst, growth / linear)
                extra = ""
                if with_model:
                    extra = f"   {r['model_fwd_bwd_s']:15.3f}  {r['model_fwd_bwd_s'] / base['model_fwd_bwd_s']:9.2f}x"
                log(f"  {r[key]:<18} {r['step_s']:6.3f}   {growth:6.2f}x        {linear:6.2f}x{extra}")
            log(f"  worst growth / linear = {worst:.2f}  (<= 1.0: no worse than linear): "
                f"{'MET' if worst <= 1.0 else 'MISSED'}")
            if with_model:
                last = rows[-1]
                model_growth = last["model_fwd_bwd_s"] / base["model_fwd_bwd_s"]
                log(f"  at {last[key]}: step grew {last['step_s'] / base['step_s']:.2f}x, the model's own training pass "
                    f"{model_growth:.2f}x (attention is quadratic in length)")

    log(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
