"""RL engine speed: rlhfkit's RLOO and PPO against TRL on identical work, and our sampling loop against the floor.

A benchmark, not a test.  Run from the repository root with the project's virtualenv:

    python benchmarks/bench_engine.py                 # ~5 min on 2 cores once artifacts and the TRL 0.29 venv exist
    python benchmarks/bench_engine.py --model h256l4 --length 64          # issue 17's compute-bound comparison
    python benchmarks/bench_engine.py --model h256l4 --length 64 --quick  # the same, one run per side, 6 steps

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
6. (issue 17) With ``--model h256l4`` / ``h512l8`` (benchmarks/_presets.py): the same RLOO and PPO comparisons on a
   compute-bound model, TRL PPO also with its ``gc.collect()`` calls patched out, our step time per phase against
   an honest FLOP floor (benchmarks/_floor.py), and the policy's forwards timed at two length mixes of one padded
   shape (time follows the real tokens).  Ratios are of the median of ``--repeats`` interleaved runs per side.
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


def model_recipe(model: str) -> Path:
    """The compute-bound recipe for ``model``: benchmarks/compute_bound.toml with its model swapped in."""
    base = BENCH / "compute_bound.toml"
    if model == "h256l4":
        return base
    path = BENCH / ".cache" / model / "recipe.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(base.read_text().replace("h256l4", model))
    return path


def ensure_artifacts(recipe: Path, artifacts: Path | None, threads: int) -> tuple[Path, Path, Path, Path]:
    """(artifacts_root, sft_dir, reward_dir, prompts_json), building the stages with the project's code if needed."""
    code = f"""
import json, sys, torch
torch.set_num_threads({threads})
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
import _presets; _presets.register()
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


def alternate(cmds, repeats, env, markers):
    """Run the commands in turn, ``repeats`` rounds (interleaved, so each sees the same spread of other load).
    Per command: the median run (the ratios use it), the best rate, and every run's rate."""
    import statistics

    runs = [[] for _ in cmds]
    for _ in range(repeats):
        for i, cmd in enumerate(cmds):
            runs[i].append(run_json(cmd, markers[i], env=env, timeout=1800))
    out = []
    for rs in runs:
        ordered = sorted(rs, key=lambda r: r["episodes_per_s"])
        median = ordered[(len(ordered) - 1) // 2]  # the lower median: a real run, not an average of two
        out.append({**median, "runs_episodes_per_s": [round(r["episodes_per_s"], 2) for r in rs],
                    "median_episodes_per_s": statistics.median(r["episodes_per_s"] for r in rs),
                    "best_episodes_per_s": ordered[-1]["episodes_per_s"],
                    "cpu_med": statistics.median(r.get("cpu_step_s", 0.0) for r in rs),
                    "runs_cpu_step_s": [round(r.get("cpu_step_s", 0.0), 4) for r in rs]})
    return out


def ratio_line(ours: dict, other: dict, target: float | None) -> str:
    med = ours["median_episodes_per_s"] / other["median_episodes_per_s"]
    best = ours["best_episodes_per_s"] / other["best_episodes_per_s"]
    tok = ours["tokens_per_s"] / other["tokens_per_s"]
    verdict = "" if target is None else f"   target >= {target}x: {'MET' if med >= target else 'MISSED'}"
    cpu = ""
    if ours.get("cpu_med") and other.get("cpu_med"):
        cpu = f"   CPU s/step {other['cpu_med'] / ours['cpu_med']:.2f}x"
    return f"episodes/s {med:.2f}x (median runs; best runs {best:.2f}x)   tokens/s {tok:.2f}x{cpu}{verdict}"


def floor_lines(name: str, r: dict) -> list[str]:
    """Per-phase step time against the FLOP floor (benchmarks/_floor.py) for one of our runs."""
    f = r["floor"]
    lines = [f"  {name}: mean prompt {r['mean_prompt']:.1f} + completion {r['mean_length']:.1f} real tokens; matmul "
             f"rates measured at the phase shapes (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in f["rates_gflops"].items())]
    lines.append(f"    {'phase':<11} {'GFLOP/step':>10} {'floor s':>9} {'ours s':>9} {'ours/floor':>10} {'CPU s':>9} "
                 f"{'CPU/floor':>9}")
    cpu = r.get("phase_cpu_s", {})
    for phase in ("generation", "scoring", "training"):
        c = cpu.get(phase, float("nan"))
        lines.append(f"    {phase:<11} {f['flops'][phase] / 1e9:10.2f} {f['floor_s'][phase]:9.4f} {r['phase_s'][phase]:9.4f}"
                     f" {r['phase_s'][phase] / f['floor_s'][phase]:10.1f}x {c:9.4f} {c / f['floor_s'][phase]:8.1f}x")
    total = sum(f["floor_s"].values())
    c = r.get("cpu_step_s", float("nan"))
    lines.append(f"    {'step':<11} {sum(f['flops'].values()) / 1e9:10.2f} {total:9.4f} {r['step_s']:9.4f} "
                 f"{r['step_s'] / total:10.1f}x {c:9.4f} {c / total:8.1f}x   (step = the phases + optimizer, logging, "
                 "the rest; CPU = this process's CPU seconds, what wall time would be on an idle core)")
    return lines


def fmt_rate(r: dict) -> str:
    return (f"{r['episodes_per_s']:8.1f} episodes/s  {r['tokens_per_s']:8.1f} tokens/s  "
            f"({r['steady_s'] / r['steady_steps']:.3f} s/step, {r.get('cpu_med', 0.0):.3f} CPU s/step, mean completion "
            f"{r['mean_length']:.1f} tokens; runs {r.get('runs_episodes_per_s', '')} ep/s"
            + (f"; AdamW {r['adamw']}" if r.get("adamw") else "") + ")")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", choices=["tiny", "h256l4", "h512l8"],
                   help="tiny: the default recipe's llama:tiny (hidden 64 x 2); h256l4 / h512l8: the compute-bound "
                   "models of issue 17 (benchmarks/_presets.py, recipe benchmarks/compute_bound.toml)")
    p.add_argument("--recipe", default=None, help="default: recipes/ppo_vs_rloo.toml (tiny) or the compute-bound recipe")
    p.add_argument("--artifacts", default=None,
                   help="artifacts root (an earlier `rlhfkit run --output X` leaves X/artifacts); default "
                   "benchmarks/.cache/artifacts (tiny) or benchmarks/.cache/<model>/artifacts")
    p.add_argument("--memory", default="full", choices=["full", "lora"],
                   help="lora: both sides train LoRA adapters (r=16, alpha=32, all linear layers); TRL PPO is then "
                   "not run (its 0.29 venv has no peft)")
    p.add_argument("--foreach-row", action="store_true",
                   help="also run our side with [rl] adamw_kernel = \"foreach\" (what cells ran before issue 17; "
                   "\"auto\" picks fused from 1M trainable parameters), as an extra labelled row")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="learning rate of both sides.  1e-3 (default) trains, and the two sides' policies drift to "
                   "different completion lengths; 1e-7 keeps both sampling from the SFT policy, so both do the same "
                   "work per episode (the matched-workload speed comparison)")
    p.add_argument("--quick", action="store_true",
                   help="6 steps, one run per side, no generation/scaling parts (a smoke run: noisy figures)")
    p.add_argument("--steps", type=int, default=10, help="RL steps per side (rates use steps 2..N)")
    p.add_argument("--batch", type=int, default=32, help="episodes (completions) per step")
    p.add_argument("--k", type=int, default=4, help="RLOO completions per prompt")
    p.add_argument("--length", type=int, default=32, help="max completion length in the TRL comparisons")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every side (cells use threads_per_cell=1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved runs per side in the TRL comparisons (ratios of the median runs)")
    p.add_argument("--scaling-steps", type=int, default=8, help="RLOO steps per point of the scaling sweep")
    p.add_argument("--skip", default=None, help="comma list of parts to skip: rloo,ppo,tokens,gen,scaling (default: "
                   "none for tiny; gen,scaling for the compute-bound models)")
    p.add_argument("--json", default=None, help="also write all figures to this file")
    a = p.parse_args(argv)
    if a.skip is None:
        a.skip = "" if a.model == "tiny" else "gen,scaling"
    if a.quick:
        a.steps, a.repeats = 6, 1
        a.skip = ",".join(sorted(set(filter(None, a.skip.split(","))) | {"gen", "scaling"}))
    if a.recipe is None:
        a.recipe = str(ROOT / "recipes" / "ppo_vs_rloo.toml") if a.model == "tiny" else str(model_recipe(a.model))
    if a.artifacts is None:
        a.artifacts = str(BENCH / ".cache" / "artifacts") if a.model == "tiny" else str(BENCH / ".cache" / a.model / "artifacts")
    skip = set(filter(None, a.skip.split(",")))
    started = time.perf_counter()
    py = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}

    recipe = Path(a.recipe)
    if Path(a.artifacts).is_dir() and (Path(a.artifacts).parent / "recipe.toml").is_file():
        recipe = Path(a.artifacts).parent / "recipe.toml"  # a run's output: use the recipe it was built from
    log(f"# bench_engine  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  model={a.model}  threads={a.threads}  "
        f"memory={a.memory} batch={a.batch} k={a.k} length={a.length} steps={a.steps} repeats={a.repeats} temperature=1.0 lr={a.lr:g} beta=0.05"
        f"  load average {os.getloadavg()[0]:.1f}")
    root, sft, reward, prompts = ensure_artifacts(recipe, Path(a.artifacts), max(a.threads, 1))
    log(f"artifacts: {sft.name}, {reward.name}  (recipe {recipe})")
    shared = ["--steps", str(a.steps), "--batch", str(a.batch), "--length", str(a.length), "--threads", str(a.threads),
              "--lr", str(a.lr), "--beta", "0.05", "--temperature", "1.0"]
    trl_args = ["--sft", str(sft), "--reward", str(reward), "--prompts", str(prompts)]
    ours_args = ["--recipe", str(recipe), "--artifacts", str(root), "--memory", a.memory]
    lora = ["--lora"] if a.memory == "lora" else []
    results: dict = {"settings": vars(a)}

    floors = {}
    if "rloo" not in skip:
        log("\n## RLOO: rlhfkit vs TRL RLOOTrainer (same models, prompts, batch, k, length, lr, beta, reward model)")
        ours_cmd = [py, str(BENCH / "_ours.py"), "train", "--floor", "--algorithm", "rloo", "--k", str(a.k), *ours_args, *shared]
        trl_cmd = [py, str(BENCH / "_trl_rloo.py"), "--k", str(a.k), *trl_args, *shared, *lora]
        cmds = [ours_cmd, trl_cmd] + ([ours_cmd + ["--adamw", "foreach"]] if a.foreach_row else [])
        ours, trl, *extra = alternate(cmds, a.repeats, env, ["BENCH_JSON ", None, "BENCH_JSON "])
        log(f"  rlhfkit RLOO            {fmt_rate(ours)}")
        log(f"  {trl['impl']:<23} {fmt_rate(trl)}")
        log(f"  ratio (ours / TRL): {ratio_line(ours, trl, 1.5)}")
        if extra:
            log(f"  {'rlhfkit, foreach AdamW':<23} {fmt_rate(extra[0])}")
            log(f"  ratio (ours with foreach AdamW / TRL): {ratio_line(extra[0], trl, 1.5)}")
            results["rloo_foreach"] = extra[0]
        results["rloo"] = {"ours": ours, "trl": trl, "episodes_ratio": ours["median_episodes_per_s"] / trl["median_episodes_per_s"]}
        floors["rlhfkit RLOO"] = (ours, [trl])

    if "ppo" not in skip:
        log("\n## PPO: rlhfkit vs TRL 0.29 experimental.ppo.PPOTrainer (4 epochs x 4 minibatches, critic from the RM), "
            "with and without its gc.collect() calls")
        ours_cmd = [py, str(BENCH / "_ours.py"), "train", "--floor", "--algorithm", "ppo", *ours_args, *shared]
        trl_python, note = ensure_trl029() if not lora else (None, "not run under LoRA (no peft in its venv)")
        if trl_python is None:
            ours = run_json(ours_cmd, "BENCH_JSON ", env=env)
            log(f"  rlhfkit PPO             {fmt_rate(ours)}")
            log(f"  TRL 0.29 PPOTrainer could not run: {note}")
            results["ppo"] = {"ours": ours, "trl_error": note}
        else:
            trl_cmd = [str(trl_python), str(BENCH / "_trl_ppo.py"), *trl_args, *shared]
            cmds = [ours_cmd, trl_cmd, trl_cmd + ["--no-gc"]] + ([ours_cmd + ["--adamw", "foreach"]] if a.foreach_row else [])
            ours, trl, trl_nogc, *extra = alternate(cmds, a.repeats, env, ["BENCH_JSON ", None, None, "BENCH_JSON "])
            log(f"  rlhfkit PPO             {fmt_rate(ours)}")
            version = note.split()[0]
            log(f"  {'trl ' + version + ' PPOTrainer':<23} {fmt_rate(trl)}")
            log(f"  {'  same, no gc.collect':<23} {fmt_rate(trl_nogc)}  [{trl_nogc.get('gc_calls_skipped', '?')} calls skipped]")
            log(f"  ratio (ours / TRL):            {ratio_line(ours, trl, 1.5)}")
            log(f"  ratio (ours / TRL without gc): {ratio_line(ours, trl_nogc, 1.3)}")
            if extra:
                log(f"  {'rlhfkit, foreach AdamW':<23} {fmt_rate(extra[0])}")
                log(f"  ratio (ours with foreach AdamW / TRL without gc): {ratio_line(extra[0], trl_nogc, 1.3)}")
                results["ppo_foreach"] = extra[0]
            results["ppo"] = {"ours": ours, "trl": trl, "trl_no_gc": trl_nogc,
                              "episodes_ratio": ours["median_episodes_per_s"] / trl["median_episodes_per_s"],
                              "episodes_ratio_no_gc": ours["median_episodes_per_s"] / trl_nogc["median_episodes_per_s"]}
            floors["rlhfkit PPO"] = (ours, [trl, trl_nogc])

    if floors:
        log("\n## Step time against the FLOP floor (FLOPs the step must do / measured matmul rate; benchmarks/_floor.py)")
        for name, (ours, others) in floors.items():
            for line in floor_lines(name, ours):
                log(line)
            total = sum(ours["floor"]["floor_s"].values())
            for other in others:
                step = other["steady_s"] / other["steady_steps"]
                cpu = other.get("cpu_med") or float("nan")
                log(f"    {other['impl']}: {step:.4f} s/step = {step / total:.1f}x the same floor, {cpu:.4f} CPU s/step = "
                    f"{cpu / total:.1f}x (its mean completion {other['mean_length']:.1f} tokens, ours {ours['mean_length']:.1f})")
        results["floors"] = {k: v[0]["floor"] for k, v in floors.items()}

    if "tokens" not in skip:
        log(f"\n## Time follows real tokens: policy forwards over {a.batch} rows padded to {a.length} completion tokens "
            "(median of 5)")
        t = run_json([py, str(BENCH / "_ours.py"), "tokens", *ours_args, "--batch", str(a.batch), "--length", str(a.length),
                      "--threads", str(a.threads)], "BENCH_JSON ", env=env)
        results["tokens"] = t
        full, half = t["full"], t["half"]
        log(f"  lengths spread over 1..{a.length}: {full['real_tokens']} real of {full['padded_tokens']} padded tokens;"
            f" halved: {half['real_tokens']} real (x{half['real_tokens'] / full['real_tokens']:.2f})")
        log(f"  {'forward':<22} {'padding_free':<12} {'spread s':>9} {'halved s':>9} {'time ratio':>10}")
        for part, label in (("scoring", "scoring (no grad)"), ("training", "training (fwd + bwd)")):
            for mode in ("auto", "off"):
                x, y = full[mode][part], half[mode][part]
                log(f"  {label:<22} {mode:<12} {x:9.4f} {y:9.4f} {y / x:10.2f}")

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

    log(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s  (load average at the end {os.getloadavg()[0]:.1f})")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
