"""Drive rlhfkit's engine exactly as a cell does, minus evaluations and files.

``build_context`` calls the cell's own ``build_cell`` (rlhfkit/cellspec/build.py: recipe, model set, models,
optimizers, accelerate preparation, seeding, TrainContext); the algorithm's registered trainer then runs
unchanged.
"""

from __future__ import annotations

import time

MEMORY = "full"
"""The cell's memory strategy (``--memory``: full, lora)."""


class _NoEOSTokenizer:
    """The cell's tokenizer with an EOS id that never occurs: completions run to full length (scaling sweeps)."""

    eos_token_id = -1

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *a, **kw):
        return self._tok(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def build_context(recipe_path: str, artifacts_root: str, algorithm: str, seed: int = 1, no_eos: bool = False,
                  **overrides):
    """The cell's own build (``rlhfkit.cellspec.build.build_cell``) of the recipe's first model row under
    ``full`` memory, with algorithm config ``overrides``; evaluation is switched off and no plugin hook hears
    the metric lines."""
    from rlhfkit.cellspec.build import build_cell
    from rlhfkit.recipe import Cell, load_recipe

    recipe = load_recipe(recipe_path)
    cell = Cell(model=next(iter(recipe.models)), algorithm=algorithm, memory=MEMORY, seed=seed)
    spec = {"recipe": str(recipe_path), "cell": cell.as_dict(), "artifacts_root": str(artifacts_root)}
    built = build_cell(spec, config_overrides=overrides, broadcast=False)
    ctx = built.ctx
    if no_eos:
        ctx.tokenizer = _NoEOSTokenizer(ctx.tokenizer)
    ctx.evaluate = lambda step: {}  # benchmarks time training only (TRL's side does not evaluate either)
    return ctx, built.algorithm


def run_training(ctx, algo) -> dict:
    """Run the algorithm's trainer on ``ctx``; returns timings and the per-step metrics it logged."""
    from rlhfkit.registry import resolve

    start = time.perf_counter()
    resolve(algo.trainer)(ctx)
    seconds = time.perf_counter() - start
    history = ctx.logger.history
    return {
        "seconds": seconds,
        "episodes": ctx.episodes,
        "tokens": ctx.tokens,
        "episodes_per_s": ctx.episodes / seconds,
        "tokens_per_s": ctx.tokens / seconds,
        "step_seconds": [h["perf/step_seconds"] for h in history],
        "mean_length": sum(h["objective/length"] for h in history) / max(len(history), 1),
    }


def _adamw_kind(ctx) -> str:
    """The policy optimizer's kernel as built (``[rl] adamw_kernel``): fused, foreach or another optimizer."""
    opt = getattr(ctx, "policy_optimizer", None)
    defaults = getattr(getattr(opt, "optimizer", opt), "defaults", {})
    return "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else type(opt).__name__


def _instrument(ctx):
    """Per-step phase seconds (wrapping the memory tracker's phase scopes: generation, scoring, training) and
    each rollout's real (prompt, response) token counts; returns the two lists the wrappers fill."""
    from contextlib import contextmanager

    phase_s, rows = [{}], []
    phase = ctx.memory.phase

    @contextmanager
    def timed(name):
        start, cpu = time.perf_counter(), time.process_time()
        with phase(name):
            yield
        phase_s[-1][name] = phase_s[-1].get(name, 0.0) + time.perf_counter() - start
        # CPU seconds of this process too: on a shared machine, wall time includes waiting for a core
        phase_s[-1]["cpu_" + name] = phase_s[-1].get("cpu_" + name, 0.0) + time.process_time() - cpu

    rollout = ctx.rollout

    def counted(prompts, greedy=False):
        r = rollout(prompts, greedy=greedy)
        q = r.attention_mask[:, : r.query_ids.size(1)].sum(1).tolist()
        rows.append(list(zip(q, r.mask.sum(1).long().tolist())))
        return r

    ctx.memory.phase = timed
    ctx.rollout = counted
    return phase_s, rows


def timed_training(recipe, artifacts, algorithm, steps, no_eos=False, floor=False, **overrides) -> dict:
    """Steady-state rate as the TRL side measures it: from the end of step 1 to the end of the last step;
    with ``floor``, also per-phase seconds and the FLOP floor of the same steps (benchmarks/_floor.py)."""
    import statistics
    import time as _time

    ctx, algo = build_context(recipe, artifacts, algorithm, no_eos=no_eos, steps=steps, eval_every=10**9, **overrides)
    stamps = []
    log = ctx.logger.log
    phase_s, rows = _instrument(ctx)

    cpu = []

    def stamped(step, metrics):
        log(step, metrics)
        stamps.append(_time.perf_counter())
        cpu.append(_time.process_time())
        phase_s.append({})

    ctx.logger.log = stamped
    result = run_training(ctx, algo)
    n = len(stamps) - 1
    steady = stamps[-1] - stamps[0]
    lengths = [h["objective/length"] for h in ctx.logger.history[1:]]
    batch = ctx.config.batch_size
    mean_len = sum(lengths) / len(lengths)
    out = {
        "impl": f"rlhfkit {algorithm}", "adamw": _adamw_kind(ctx), "steps": steps, "total_s": result["seconds"], "steady_steps": n,
        "steady_s": steady, "step_s": steady / n, "cpu_step_s": (cpu[-1] - cpu[0]) / n, "episodes_per_s": batch * n / steady,
        "min_step_s": min(b - a for a, b in zip(stamps, stamps[1:])),
        "tokens_per_s": batch * n * mean_len / steady, "mean_length": mean_len,
    }
    if floor:
        import _floor

        steady_phases = phase_s[1:n + 1]
        out["phase_s"] = {k: statistics.mean(p.get(k, 0.0) for p in steady_phases)
                          for k in ("generation", "scoring", "training")}
        out["phase_cpu_s"] = {k: statistics.mean(p.get("cpu_" + k, 0.0) for p in steady_phases)
                              for k in ("generation", "scoring", "training")}
        lora = MEMORY != "full"
        out["floor"] = _floor.floor_seconds(_floor.arch_of(ctx.policy), rows[1:], algorithm, ctx.config.num_epochs,
                                            ctx.config.num_minibatches, lora)
        out["mean_prompt"] = statistics.mean(q for r in rows for q, _ in r)
    return out


def tokens_follow_time(recipe, artifacts, batch: int, width: int, repeats: int = 5) -> dict:
    """Scoring forward (reference log-probs) and training pass (policy forward + backward) over a batch of
    ``batch`` rows padded to ``width`` response columns, at two length mixes of the same padded shape: lengths
    spread over 1..width (one row full), and the same lengths halved.  Median seconds per mode
    (padding_free auto / off)."""
    import statistics

    import torch

    from rlhfkit.engine.rollout import response_logprobs

    ctx, _ = build_context(recipe, artifacts, "rloo")
    prompts = ctx.prompt_sampler.next(batch)
    query = ctx.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    spread = [max(1, round(width * (i + 1) / batch)) for i in range(batch)]
    mixes = {"full": spread, "half": [width] + [max(1, n // 2) for n in spread[1:]]}
    policy = ctx.policy
    gen = torch.Generator().manual_seed(0)
    out = {"batch": batch, "width": width, "query_len": int(query.input_ids.size(1))}
    for name, lengths in mixes.items():
        lengths_t = torch.tensor(lengths)
        mask = torch.arange(width)[None] < lengths_t[:, None]
        responses = torch.randint(3, len(ctx.tokenizer), (batch, width), generator=gen).masked_fill(~mask, 0)
        ids = torch.cat([query.input_ids, responses], 1)
        am = torch.cat([query.attention_mask, mask.long()], 1)
        out[name] = {"real_tokens": int(am.sum()), "padded_tokens": int(am.numel())}
        for mode in ("auto", "off"):
            times = {"scoring": [], "training": []}
            for _ in range(repeats + 1):
                start = time.perf_counter()
                with torch.inference_mode():
                    response_logprobs(policy, ids, am, responses, 1.0, padding_free=mode)
                mid = time.perf_counter()
                lp = response_logprobs(policy, ids, am, responses, 1.0, padding_free=mode)
                torch.where(mask, lp, 0.0).sum().backward()
                policy.zero_grad(set_to_none=True)
                end = time.perf_counter()
                times["scoring"].append(mid - start)
                times["training"].append(end - mid)
            out[name][mode] = {k: statistics.median(v[1:]) for k, v in times.items()}
    return out


def generation_vs_floor(recipe, artifacts, batch, length, repeats=5) -> dict:
    """Our sampling loop against the bare forward cost of the same shapes.

    floor: prefill + (length - 1) one-token forwards of the policy with a KV cache (HF ``model(...)``,
    fixed input tokens, the attention mask grown by one column per step, no sampling logic at all).
    ours: ``sample()`` as make_rollout calls it, EOS disabled so every row runs ``length`` tokens.
    ours_hf_decode: ``sample(fast=False)``, the same loop decoding through ``model(...)`` each step.
    lean_floor: prefill + (length - 1) steps of the lean decoder ``sample()`` uses, no sampling logic: what our
    sampling logic itself costs on top of the forwards.
    """
    import statistics
    import time as _time

    import torch
    from transformers import DynamicCache

    from rlhfkit.engine.rollout import position_ids_from_mask, sample

    ctx, _ = build_context(recipe, artifacts, "rloo", batch_size=batch, k=2 if batch % 2 == 0 else batch)
    tok = ctx.tokenizer
    prompts = ctx.prompt_sampler.next(batch)
    query = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    model = ctx.generation_model()
    model.eval()

    def prefill():
        """The prompt forward with a fresh KV cache (part of every timed variant, as in sample())."""
        mask = query.attention_mask.long()
        positions = position_ids_from_mask(mask)
        cache = DynamicCache()
        out = model(input_ids=query.input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        return out, cache, mask, positions

    @torch.no_grad()
    def floor():
        out, cache, mask, positions = prefill()
        token = torch.full((batch, 1), 5, dtype=torch.long)
        ones = torch.ones(batch, 1, dtype=torch.long)
        nxt = positions[:, -1:] + 1
        for _ in range(length - 1):
            mask = torch.cat([mask, ones], dim=1)
            out = model(input_ids=token, attention_mask=mask, position_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = nxt + 1
        return out.logits

    @torch.no_grad()
    def lean_floor():
        from rlhfkit.engine.rollout import fast_decoder

        _, cache, mask, positions = prefill()
        decoder = fast_decoder(model, cache, mask, positions, length)
        token = torch.full((batch,), 5, dtype=torch.long)
        real = torch.ones(batch, dtype=torch.bool)
        for _ in range(length - 1):
            logits = decoder(token, real)
        return logits

    def ours(fast=True):
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            tokens, _ = sample(model, query.input_ids, query.attention_mask, length, 1.0, -1, tok.pad_token_id, gen,
                               fast=fast)
        assert tokens.size(1) == length
        return tokens

    runs = {"floor": [], "lean_floor": [], "ours": [], "ours_hf_decode": []}
    fns = {"floor": floor, "lean_floor": lean_floor, "ours": ours, "ours_hf_decode": lambda: ours(False)}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = _time.perf_counter()
            fn()
            runs[name].append(_time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "batch": batch, "length": length, "query_len": int(query.input_ids.size(1)),
        "floor_ms_per_token": 1000 * med["floor"] / length, "ours_ms_per_token": 1000 * med["ours"] / length,
        "ours_hf_decode_ms_per_token": 1000 * med["ours_hf_decode"] / length,
        "lean_floor_ms_per_token": 1000 * med["lean_floor"] / length, "ours_over_lean_floor": med["ours"] / med["lean_floor"],
        "ours_over_floor": med["ours"] / med["floor"], "ours_hf_decode_over_floor": med["ours_hf_decode"] / med["floor"],
    }


def model_cost(recipe, artifacts, batch, length, repeats=3) -> float:
    """The model's own cost for one training pass at these shapes: policy forward + backward on
    (batch, query + length) left-padded tokens, plain HF ``model(...)`` (fastest of ``repeats``).  Attention makes
    it grow faster than linearly in length; the step cannot grow slower than this does."""
    import time as _time

    import torch

    ctx, _ = build_context(recipe, artifacts, "rloo")
    prompts = ctx.prompt_sampler.next(batch)
    query = ctx.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids = torch.cat([query.input_ids, torch.full((batch, length), 5, dtype=torch.long)], 1)
    mask = torch.cat([query.attention_mask, torch.ones(batch, length, dtype=torch.long)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model = ctx.policy
    model.train()
    best = float("inf")
    for _ in range(repeats + 1):
        start = _time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=length + 1, use_cache=False)
        out.logits.float().logsumexp(-1).sum().backward()
        model.zero_grad(set_to_none=True)
        best = min(best, _time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    import argparse
    import json

    import torch

    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "gen", "scaling", "tokens"])
    p.add_argument("--floor", action="store_true", help="train: also per-phase seconds and the FLOP floor")
    p.add_argument("--recipe", required=True)
    p.add_argument("--artifacts", required=True)
    p.add_argument("--algorithm", default="rloo")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lengths", default="32,64,128,256")
    p.add_argument("--batches", default="8,16,32,64")
    p.add_argument("--padding-free", default=None, help="[rl] padding_free for our side (default: the config's)")
    p.add_argument("--memory", default="full", help="the cell's memory strategy (full, lora)")
    p.add_argument("--adamw", default="cell", choices=["cell", "foreach", "fused"],
                   help="[rl] adamw_kernel of our side: cell = the recipe's (auto: fused from 1M trainable parameters, "
                   "foreach below); foreach = what cells ran before issue 17 (a labelled extra row)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _presets

    _presets.register()
    global MEMORY
    MEMORY = a.memory
    common = dict(learning_rate=a.lr, kl_coef=a.beta, temperature=a.temperature, lr_schedule="linear")
    if a.padding_free:
        common["padding_free"] = a.padding_free
    if a.adamw != "cell":
        common["adamw_kernel"] = a.adamw
    # The TRL sides' update counts, pinned here rather than taken from the recipe (whose defaults are a fair
    # protocol of their own): TRL's RLOOTrainer updates once per batch, its PPOTrainer 4 epochs x 4 minibatches.
    updates = {"rloo": dict(k=a.k, num_epochs=1, num_minibatches=1), "ppo": dict(num_epochs=4, num_minibatches=4)}
    if a.mode == "train":
        extra = updates[a.algorithm]
        out = timed_training(a.recipe, a.artifacts, a.algorithm, a.steps, batch_size=a.batch, response_length=a.length,
                             floor=a.floor, **extra, **common)
    elif a.mode == "tokens":
        out = tokens_follow_time(a.recipe, a.artifacts, a.batch, a.length)
    elif a.mode == "gen":
        out = generation_vs_floor(a.recipe, a.artifacts, a.batch, a.length)
    else:
        out = {"length": [], "batch": []}
        extra = updates[a.algorithm]
        for length in map(int, a.lengths.split(",")):
            r = timed_training(a.recipe, a.artifacts, a.algorithm, a.steps, no_eos=True, batch_size=a.batch,
                               response_length=length, **extra, **common)
            out["length"].append({"length": length, "batch": a.batch, "step_s": r["min_step_s"], "mean_step_s": r["step_s"],
                                  "model_fwd_bwd_s": model_cost(a.recipe, a.artifacts, a.batch, length)})
        for batch in map(int, a.batches.split(",")):
            r = timed_training(a.recipe, a.artifacts, a.algorithm, a.steps, no_eos=True, batch_size=batch,
                               response_length=a.length, **extra, **common)
            out["batch"].append({"length": a.length, "batch": batch, "step_s": r["min_step_s"], "mean_step_s": r["step_s"]})
    out["threads"] = torch.get_num_threads()
    print("BENCH_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
