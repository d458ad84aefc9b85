"""Shared rollout: batched sampling with a KV cache, scoring, reference log-probs, critic values.

Every algorithm goes through the same functions here, so a comparison of algorithms differs only in what each
algorithm does with the rollout.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields

import torch

from rlhfkit.engine.core import INVALID_LOGPROB, entropy_from_logits, selective_log_softmax, truncate_after_eos
from rlhfkit.engine.steps import Phase


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: the first real token is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def unwrap(model):
    """The transformers model under DDP/DeepSpeed/peft wrappers (peft layers stay injected)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


DROPOUT_CONFIG_KEYS = ("attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "dropout")
"""Config fields that HF models read as functional dropout probabilities (not ``nn.Dropout`` modules)."""


def disable_dropout(model) -> None:
    """Dropout off everywhere: rollout log-probs must equal the training forward's log-probs.

    Call it after peft has added its layers (LoRA dropout is an ``nn.Dropout`` inside each adapter).
    Attention dropout is no module: HF attention layers pass ``self.attention_dropout`` (copied from the
    config at construction) to the attention function when training, so both the config and every module's
    copy are zeroed.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
        config = getattr(module, "config", None)
        for key in DROPOUT_CONFIG_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)


_FAMILIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""Model -> its family's adapter (or ``None``), detected once per model object."""


def model_family(model):
    """The registered model family (its ``ModelAdapter``) of a transformers model, or ``None``.

    Detected from the model's config as a checkpoint's ``config.json`` is (the ``detect_model_family`` hook,
    then the adapters' ``model_types``), so the rollout needs nothing from the cell; cached per model object.
    Plugins are imported here, inside the function: engine modules never import them at module level.
    """
    base = unwrap(model)
    try:
        return _FAMILIES[base]
    except (KeyError, TypeError):
        pass
    from rlhfkit.models import detect_family
    from rlhfkit.plugins import get_registry

    config = getattr(base, "config", None)
    registry = get_registry()
    name = detect_family(config.to_dict(), registry) if hasattr(config, "to_dict") else None
    adapter = registry.get("model_adapter", name) if name in registry.entries["model_adapter"] else None
    try:
        _FAMILIES[base] = adapter
    except TypeError:  # not weak-referenceable: detect again next time
        pass
    return adapter


def fast_decoder(model, cache, query_mask, positions, max_new_tokens: int):
    """The policy family's lean decode step after a prefill (``ModelAdapter.decoder``), or ``None``."""
    family = model_family(model)
    return family.decoder(model, cache, query_mask, positions, max_new_tokens) if family is not None else None


MIN_ROWS_DROPPED = 4
"""Finished rows leave the lean decoder's batch once at least this many (and a quarter of it) have finished."""


@torch.no_grad()
def _draw(logits, temperature: float, top_k: int, generator, batch: int, rows):
    """One sampling step: ``(next_token, its log-prob)`` for the rows the decoder still runs (``rows``; None =
    every row).  Log-probs are over the full vocabulary at ``temperature``, also under top-k."""
    logits = logits.float()
    if temperature != 1.0:  # x / 1.0 is x: skip the op
        logits = logits / temperature
    sampling_logits = logits
    if top_k:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        sampling_logits = logits.masked_fill(logits < kth, float("-inf"))
    # Gumbel-max: one uniform draw per vocabulary entry of every batch row (dropped rows too, so the
    # generator's stream does not depend on when rows finish), from our own generator.
    uniform = torch.rand((batch, logits.size(-1)), generator=generator, device=logits.device)
    if rows is not None:
        uniform = uniform[rows]
    gumbel = uniform.clamp_(1e-20, 1.0).log_().neg_().log_().neg_()
    next_token = torch.argmax(sampling_logits + gumbel, dim=-1)
    # log_softmax + gather (one (batch, vocab) row block per step; on CPU this is ~3x cheaper than
    # logit - logsumexp, whose kernel runs max/sub/exp/sum/log as separate passes).
    token_logprob = torch.log_softmax(logits, dim=-1).gather(-1, next_token.unsqueeze(-1)).squeeze(-1)
    return next_token, token_logprob


def _drop_finished_rows(decoder, done, rows, next_token, is_real):
    """Finished rows leave the decode batch once they are at least a quarter of it (and 4 rows): with EOS-varying
    lengths most late steps would otherwise compute padding.  Dropping copies the KV buffers of the kept rows, so
    it is done in few large steps, not row by row.  Returns the new ``(rows, next_token, is_real)``."""
    if int(done.sum()) < max(MIN_ROWS_DROPPED, done.numel() // 4):
        return rows, next_token, is_real
    keep = (~done).nonzero().squeeze(1)
    decoder.select_rows(keep)
    return (keep if rows is None else rows[keep]), next_token[keep], is_real[keep]


def sample(
    model,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator,
    top_k: int = 0,
    fast: bool = True,
    drop_finished: bool = False,
    share_prefill: str = "off",
):
    """Sample completions with a KV cache; returns ``(responses, logprobs)``.

    ``logprobs`` are log softmax(logits / temperature) of the sampled tokens over the full vocabulary (as
    the training forward computes them, even with top-k sampling), so they serve as the rollout's
    "old" log-probs without a second forward pass.  Finished rows are fed pad and stop attending.
    ``fast=False`` decodes with the model's own forward every step (the reference the fast path is tested
    against); by default a family with a lean decode step (:func:`fast_decoder`: Llama, Qwen2) uses it, same
    numbers, less overhead.  ``drop_finished`` (``[rl] drop_finished_rows``): with the lean step, rows that have
    finished leave the decode batch (:data:`MIN_ROWS_DROPPED`); the others' tokens are unchanged, their log-probs
    equal to rounding (the CPU kernels may round differently by row count); a dropped row's log-probs after its
    EOS are 0.0 (padding: masked by every consumer).  ``share_prefill`` (``[rl] share_prompt_prefill``): rows
    with the same prompt (RLOO/GRPO's k samples) share one prefill (:func:`_prefill`).
    """
    from transformers import DynamicCache

    batch = query_ids.size(0)
    device = query_ids.device
    attention_mask = query_mask.long()
    positions = position_ids_from_mask(attention_mask)
    cache = DynamicCache()
    logits = _prefill(model, query_ids, attention_mask, positions, cache, share_prefill)
    decoder = fast_decoder(model, cache, attention_mask, positions, max_new_tokens) if fast and max_new_tokens > 1 else None
    if decoder is not None:
        cache = None  # the decoder holds its own copy of the prefill KV: free HF's
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=device)
    rows = None  # the batch row of each row the decoder still runs (None: every row, in order)
    drop = drop_finished and decoder is not None and hasattr(decoder, "select_rows")
    steps = 0
    for step in range(max_new_tokens):
        next_token, token_logprob = _draw(logits, temperature, top_k, generator, batch, rows)
        done = finished if rows is None else finished[rows]
        is_real = ~done
        next_token = next_token.masked_fill_(done, pad_token_id)
        done = done | (next_token == eos_token_id)
        where = slice(None) if rows is None else rows  # every row, in order, or the rows still decoded
        tokens[where, step] = next_token
        logprobs[where, step] = token_logprob
        finished[where] = done
        steps = step + 1
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        if decoder is not None:
            if drop:
                rows, next_token, is_real = _drop_finished_rows(decoder, done, rows, next_token, is_real)
            logits = decoder(next_token, is_real)
            continue
        attention_mask = torch.cat([attention_mask, is_real.long().unsqueeze(1)], dim=1)
        out = model(
            input_ids=next_token.unsqueeze(1),
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]
        next_position = next_position + 1
    return tokens[:, :steps], logprobs[:, :steps]


COMPUTE_BOUND_FLOPS_PER_TOKEN = 4e6
"""``share_prompt_prefill = "auto"`` shares from 2N = 4 MFLOP a token (N >= 2M non-embedding parameters):
hidden 256 x 4 layers is 6 MFLOP; the shipped presets are below it (tiny 0.15, small 1.5), where per-call
overhead dominates a prefill and sharing would only change their rounding."""


def shared_prompts(model, query_ids, attention_mask, mode: str = "off"):
    """``(distinct ids, distinct mask, inverse)`` when the rows' prompt forward is shared (``mode`` ``"on"``, or
    ``"auto"`` for models of :data:`COMPUTE_BOUND_FLOPS_PER_TOKEN` and more) and some rows repeat a prompt;
    else ``None``.  ``inverse`` maps each row to its distinct prompt."""
    if mode == "off" or (mode == "auto" and _flops_per_token(model) < COMPUTE_BOUND_FLOPS_PER_TOKEN):
        return None
    distinct, inverse = torch.unique(torch.cat([query_ids, attention_mask], dim=1), dim=0, return_inverse=True)
    if distinct.size(0) == query_ids.size(0):
        return None  # every prompt distinct: nothing to share
    width = query_ids.size(1)
    return distinct[:, :width], distinct[:, width:], inverse


def _prefill(model, query_ids, attention_mask, positions, cache, share: str = "off") -> torch.Tensor:
    """The prompt forward that fills ``cache``; returns the last position's logits ``(batch, vocab)``.

    Rows that repeat a prompt (k samples per prompt) share one forward when :func:`shared_prompts` says so; the
    cache and logits are then copied to every row: 1/k of the prefill FLOPs.  Measured on hidden 256 x 4
    layers, 8 prompts x k=4 of 8 tokens: a whole rollout 79 -> 66 ms CPU.  A row's numbers then come from a
    smaller batch, which CPU matrix kernels may round differently (why ``auto`` leaves small models alone)."""
    shared = shared_prompts(model, query_ids, attention_mask, share)
    if shared is not None:
        query_ids, attention_mask, inverse = shared
        positions = position_ids_from_mask(attention_mask)
    out = model(input_ids=query_ids, attention_mask=attention_mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]
    if shared is not None:
        cache.batch_select_indices(inverse)
        logits = logits[inverse]
    return logits


PADDING_FREE_MODES = ("auto", "on", "off")
CALL_OVERHEAD_FLOPS = 1e8
"""What one more forward call costs, in FLOPs of model work: about 1-2 ms of HF glue per call against the
50-100 GFLOP/s one CPU thread reaches on these matrix shapes.  ``auto`` splits a batch only when the padded
tokens it saves are worth more than the extra calls: never for the tiny presets (2N = 0.2 MFLOP per token, so
one call is worth ~500 tokens), usually for hidden 256 x 4 layers (2N = 6 MFLOP, ~17 tokens).  A constant,
not a timing: the split (and so the numbers) depends only on the lengths and the model's size."""
MAX_LENGTH_GROUPS = 4
"""At most this many forward calls per batch (small matrices run at lower throughput)."""
MIN_SAVING = 0.2
"""``auto`` splits only when the estimated cost (tokens + call overhead) drops by at least this fraction."""
MIN_GROUP_ROWS = 8
"""``auto`` makes no group of fewer rows: small groups multiply at lower throughput, forward and backward.
Without it PPO's 8-row minibatches on hidden 256 x 4 layers were split and the step cost 8 % more CPU
(3.18 vs 2.93 s), while RLOO's 32-row batch gained 3 %."""

_FLOPS_PER_TOKEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _flops_per_token(model) -> float:
    """2N, N = the model's non-embedding parameters (the ledger's count), cached per model object."""
    try:
        return _FLOPS_PER_TOKEN[model]
    except (KeyError, TypeError):
        pass
    from rlhfkit.engine.ledger import non_embedding_parameters

    flops = 2.0 * non_embedding_parameters(model)
    try:
        _FLOPS_PER_TOKEN[model] = flops
    except TypeError:
        pass
    return flops


def row_ends(attention_mask: torch.Tensor) -> torch.Tensor:
    """One past the last real column of each row (left-padded query + right-padded response)."""
    positions = torch.arange(1, attention_mask.size(1) + 1, device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, 0).max(dim=-1).values


def length_groups(attention_mask: torch.Tensor, model, mode: str = "auto"):
    """Rows grouped by real length for padding-free forwards: a list of ``(rows, width)`` (``rows`` a
    LongTensor, ``width`` the group's last real column + 1), or ``None``: one forward over the whole padded batch.

    The trailing right padding after each row's EOS is work on tokens that are masked anyway: with mean
    completion length 32 of 128 most columns are padding.  Rows are sorted by length and cut into at most
    :data:`MAX_LENGTH_GROUPS` contiguous groups, each trimmed to its longest row, minimising
    sum(rows x width) + calls x :data:`CALL_OVERHEAD_FLOPS` / 2N.  ``mode``: ``"off"`` never splits (the numbers
    of the padded forward, bit for bit), ``"on"`` always trims (no call overhead counted), ``"auto"`` splits
    when that saves at least :data:`MIN_SAVING` of the estimated cost.  Trimmed forwards give the same values
    to float rounding (attention reduces over fewer masked columns: ~5e-7 on a log-prob, tests/test_packing.py).
    """
    if mode == "off" or attention_mask.size(0) == 0:
        return None
    batch, width = attention_mask.shape
    ends = row_ends(attention_mask).tolist()
    order = sorted(range(batch), key=ends.__getitem__)
    lengths = [ends[i] for i in order]
    overhead = 0.0 if mode == "on" else CALL_OVERHEAD_FLOPS / max(_flops_per_token(model), 1.0)
    # Cut points: where the sorted length changes (a cut between equal lengths only adds a call), at most ~32
    # of them, so the search stays small (~1 ms) for big batches.
    cuts = [i for i in range(1, batch) if lengths[i] != lengths[i - 1]]
    cuts = sorted(set(cuts[:: max(1, len(cuts) // 32)]) | {batch})
    min_rows = 1 if mode == "on" else MIN_GROUP_ROWS
    best = {0: (0.0, [])}  # rows covered -> (cost, group ends), for the current number of groups
    found = []
    for _ in range(MAX_LENGTH_GROUPS):
        nxt = {}
        for start, (cost, ends_so_far) in best.items():
            for stop in cuts:
                if stop - start < min_rows and not (stop == batch and start == 0):
                    continue
                c = cost + (stop - start) * lengths[stop - 1] + overhead
                if stop not in nxt or c < nxt[stop][0]:
                    nxt[stop] = (c, ends_so_far + [stop])
        best = nxt
        if batch in best:
            found.append(best[batch])
    cost, stops = min(found, key=lambda x: x[0])
    plain = batch * width + overhead
    if len(stops) == 1 and lengths[-1] == width:
        return None  # nothing to trim
    if mode == "auto" and cost > (1.0 - MIN_SAVING) * plain:
        return None
    groups, start = [], 0
    for stop in stops:
        rows = torch.tensor(order[start:stop], dtype=torch.long, device=attention_mask.device)
        groups.append((rows, lengths[stop - 1]))
        start = stop
    return groups


def _regroup(pieces, groups, width: int, fill: float):
    """Per-group ``(rows_g, width_g, ...)`` outputs -> one ``(batch, width, ...)`` tensor in the original row
    order, ``fill`` in the trimmed columns (no in-place writes: gradients flow to every piece)."""
    padded = []
    for piece in pieces:
        missing = width - piece.size(1)
        if missing:
            pad_shape = (piece.size(0), missing) + tuple(piece.shape[2:])
            piece = torch.cat([piece, piece.new_full(pad_shape, fill)], dim=1)
        padded.append(piece)
    rows = torch.cat([g[0] for g in groups])
    inverse = torch.empty_like(rows)
    inverse[rows] = torch.arange(rows.numel(), device=rows.device)
    return torch.cat(padded)[inverse]


def forward_response_logits(model, input_ids, attention_mask, response_len: int, temperature: float):
    """Logits (divided by temperature) that predict each response token: shape (batch, response_len, vocab)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=response_len + 1,
        use_cache=False,
    )
    return out.logits[:, :-1] / temperature


def _response_logprobs(model, input_ids, attention_mask, responses, temperature, with_entropy):
    logits = forward_response_logits(model, input_ids, attention_mask, responses.size(1), temperature)
    logprobs = selective_log_softmax(logits, responses)
    if with_entropy:
        # The entropy is a statistic (policy/entropy), in no loss: computed without autograd, so its fp32
        # softmax is not kept for backward.  Peak of a PPO update 19.7 -> 15.75 B per logit
        # (benchmarks/bench_logit_bytes.py); the values are the same to the bit.
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())
        return logprobs, entropy
    return logprobs


def response_logprobs(model, input_ids, attention_mask, responses, temperature, with_entropy=False,
                      padding_free: str = "off"):
    """Log-probs of ``responses`` (the last columns of ``input_ids``) under ``model``; with ``with_entropy``
    also the entropy of each position's distribution.  ``padding_free`` (:func:`length_groups`): forwards over
    rows grouped by length, each group trimmed to its longest row; trimmed positions hold 0.0 (they are padding,
    masked by every consumer)."""
    groups = length_groups(attention_mask, model, padding_free)
    if groups is None:
        return _response_logprobs(model, input_ids, attention_mask, responses, temperature, with_entropy)
    response_len = responses.size(1)
    query_len = input_ids.size(1) - response_len
    outs = []
    for rows, end in groups:
        end = max(end, query_len + 1)  # at least one response column (a row is never all padding in a rollout)
        outs.append(_response_logprobs(model, input_ids[rows, :end], attention_mask[rows, :end],
                                       responses[rows, : end - query_len], temperature, with_entropy))
    if not with_entropy:
        return _regroup(outs, groups, response_len, 0.0)
    return (_regroup([o[0] for o in outs], groups, response_len, 0.0),
            _regroup([o[1] for o in outs], groups, response_len, 0.0))


def _token_scores(model, input_ids, attention_mask):
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return base.score(hidden).squeeze(-1).float()


def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, padding_free: str = "off") -> torch.Tensor:
    """Per-position output of a one-label sequence classifier: ``score(hidden_state)``, shape (batch, len).

    The reward model is read at one position of this (the last real token); the critic at every position.
    ``padding_free`` as in :func:`response_logprobs` (trimmed positions hold 0.0).
    """
    groups = length_groups(attention_mask, model, padding_free)
    if groups is None:
        return _token_scores(model, input_ids, attention_mask)
    pieces = [_token_scores(model, input_ids[rows, :end], attention_mask[rows, :end]) for rows, end in groups]
    return _regroup(pieces, groups, input_ids.size(1), 0.0)


def score_at(model, input_ids, attention_mask, index: torch.Tensor, padding_free: str = "off") -> torch.Tensor:
    """The reward model's score read at ``index`` (the last real token) of each row."""
    scores = token_scores(model, input_ids, attention_mask, padding_free)
    return scores[torch.arange(scores.size(0), device=scores.device), index]


def padding_free_mode(ctx) -> str:
    """The cell's ``padding_free`` setting, ``"off"`` where the number of forward calls must not depend on a
    rank's data: under ZeRO-3 (every forward gathers parameters collectively) and with several processes (DDP
    expects one forward per backward)."""
    mode = getattr(ctx.config, "padding_free", "off")
    if getattr(getattr(ctx, "plan", None), "zero_stage", 0) == 3:
        return "off"
    accelerator = getattr(ctx, "accelerator", None)
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        return "off"
    return mode


@dataclass
class Rollout:
    """One batch of sampled episodes with everything both algorithms need."""

    query_ids: torch.Tensor
    responses: torch.Tensor
    """Sampled tokens, pad after the first EOS."""
    input_ids: torch.Tensor
    """query + response."""
    attention_mask: torch.Tensor
    mask: torch.Tensor
    """1.0 for response tokens up to and including the first EOS."""
    last_index: torch.Tensor
    contains_eos: torch.Tensor
    logprobs: torch.Tensor
    """Policy log-probs at sampling time (INVALID_LOGPROB where masked)."""
    ref_logprobs: torch.Tensor
    raw_scores: torch.Tensor
    """The optimised reward before the missing-EOS penalty: the reward model's score as read, or the row's
    weighted sum of components (``reward_weights``; a reward function alone for ``reward = "fn:..."``)."""
    scores: torch.Tensor
    """Scores after the missing-EOS penalty: what the algorithm optimises."""
    prompts: list
    completions: list
    reward_parts: dict | None = None
    """Component -> its unweighted values (``model``, ``fn:NAME``) when the row's reward is not the reward
    model's score alone; ``None`` otherwise."""

    def select(self, index) -> "Rollout":
        """Rows ``index`` of every tensor field (minibatching)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                values[f.name] = value[index]
            elif value is None:
                values[f.name] = None
            elif isinstance(value, dict):
                values[f.name] = {k: v[index] for k, v in value.items()}
            else:
                values[f.name] = [value[i] for i in index.tolist()]
        return Rollout(**values)


@contextmanager
def reference_mode(policy, reference):
    """Yield the model that computes reference log-probs.

    Under LoRA the reference is the base policy with its adapters disabled (no second copy in memory).
    """
    if reference is None:
        with unwrap_peft(policy).disable_adapter():
            yield policy
    else:
        yield reference


def unwrap_peft(model):
    while hasattr(model, "module") and not hasattr(model, "disable_adapter"):
        model = model.module
    return model


def _generation_model(ctx):
    """``ctx.generation_model()``, looked up once per policy object (accelerate's unwrap_model costs a package
    metadata lookup per call, a few ms per step on small models)."""
    policy = ctx.policy
    cached = ctx.__dict__.get("_rlhfkit_generation_model")
    if cached is not None and cached[0] is policy:
        return cached[1]
    model = ctx.generation_model()
    plan = getattr(ctx, "plan", None)
    if plan is None or getattr(plan, "zero_stage", 0) != 3:  # ZeRO-3 may hand out a different view per call
        ctx.__dict__["_rlhfkit_generation_model"] = (policy, model)
    return model


def _scoring_mode(ctx):
    """``inference_mode`` for the reference and reward forwards, except under ZeRO-3: there ``no_grad`` (same
    numbers).  ZeRO-3's fetch hooks replace each module's ``param.data`` as it gathers and releases it (an
    empty placeholder once released); run under inference mode, these are inference tensors, and the next
    training forward fails on them ("Inference tensors cannot be saved for backward", zero/linear.py).  Under
    LoRA the reference forward is the policy's own engine with its adapters off: with 2-process ZeRO-3 + LoRA
    and ``zero3_gather_for_generation = false`` all 39 parameters of the tiny policy had inference-tensor data
    after it (issue 14)."""
    if getattr(getattr(ctx, "plan", None), "zero_stage", 0) == 3:
        return torch.no_grad()
    return torch.inference_mode()


def make_rollout(ctx, prompts: list[str], greedy: bool = False) -> Rollout:
    """Sample one completion per prompt (repeat prompts for k samples), score it, get reference log-probs.

    ``greedy``: argmax decoding (a ReMax baseline) from a throwaway generator, so the cell's own random draws
    are untouched; its completions are generated compute in the ledger but not episodes.
    """
    cfg = ctx.config
    tok = ctx.tokenizer
    query = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(ctx.device)
    policy = ctx.policy
    policy.eval()
    # Decided once here, on the trained policy (under ZeRO-3 its engine counts partitioned parameters whole; the
    # model the sampler calls may be a forward-counting wrapper with no modules()), so the sampler and the ledger
    # agree on which prompt tokens were forwarded.
    shared = shared_prompts(policy, query.input_ids, query.attention_mask, getattr(cfg, "share_prompt_prefill", "off"))
    share_prefill = "off" if shared is None else "on"
    prompt_tokens = int((query.attention_mask if shared is None else shared[1]).sum())
    with ctx.memory.phase(Phase.GENERATION.value), torch.inference_mode(), ctx.generation_context():
        responses, logprobs = sample(
            _generation_model(ctx),
            query.input_ids,
            query.attention_mask,
            cfg.response_length,
            cfg.temperature,
            tok.eos_token_id,
            tok.pad_token_id,
            torch.Generator(device=ctx.device).manual_seed(0) if greedy else ctx.generator,
            top_k=1 if greedy else cfg.top_k,
            drop_finished=getattr(cfg, "drop_finished_rows", False),
            share_prefill=share_prefill,
        )
    # Out of inference mode (cheap copies): these feed autograd graphs in the update.
    responses, logprobs = responses.clone(), logprobs.clone()
    responses, mask, last_index, contains_eos = truncate_after_eos(responses, tok.eos_token_id, tok.pad_token_id)
    logprobs = torch.where(mask.bool(), logprobs, INVALID_LOGPROB)
    input_ids = torch.cat([query.input_ids, responses], dim=1)
    attention_mask = torch.cat([query.attention_mask, mask.long()], dim=1)
    from rlhfkit.engine.reward_tokens import reward_model_scores

    padding_free = padding_free_mode(ctx)
    completions = tok.batch_decode(responses, skip_special_tokens=True)  # reward functions, an RM's own tokenizer
    with ctx.memory.phase(Phase.SCORING.value), _scoring_mode(ctx):
        with reference_mode(policy, ctx.reference) as ref_model:
            ref_logprobs = response_logprobs(ref_model, input_ids, attention_mask, responses, cfg.temperature,
                                             padding_free=padding_free)
        ref_logprobs = torch.where(mask.bool(), ref_logprobs, INVALID_LOGPROB)
        model_scores, reward_tokens = None, 0
        if ctx.reward_model is not None:  # None: the row's reward is a function (reward = "fn:...")
            # The reward model's own tokens when it has its own tokenizer (rlhfkit/engine/reward_tokens.py).
            model_scores, reward_tokens = reward_model_scores(ctx, prompts, completions, contains_eos, input_ids,
                                                              attention_mask, query.input_ids.size(1) + last_index,
                                                              padding_free=padding_free)
    # Clone out of inference mode: these tensors are used in autograd graphs later.
    ref_logprobs = ref_logprobs.clone()
    mix, reward_parts = getattr(ctx, "reward_mix", None), None
    if mix is None:
        raw_scores = model_scores.clone()
    else:
        raw_scores, reward_parts = mixed_scores(mix, model_scores, list(prompts), completions, contains_eos.device)
    scores = raw_scores - cfg.missing_eos_penalty * (~contains_eos).float()
    ledger = getattr(ctx, "ledger", None)
    if ledger is not None:
        real_tokens = int(attention_mask.sum())
        ledger.generated(len(prompts), len(set(prompts)), int(mask.sum()), prompt_tokens, not greedy)
        ledger.forward("reference", real_tokens)
        if model_scores is not None:
            ledger.forward("reward", reward_tokens)
    return Rollout(
        query_ids=query.input_ids,
        responses=responses,
        input_ids=input_ids,
        attention_mask=attention_mask,
        mask=mask,
        last_index=last_index,
        contains_eos=contains_eos,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        raw_scores=raw_scores,
        scores=scores,
        prompts=list(prompts),
        completions=completions,
        reward_parts=reward_parts,
    )


def mixed_scores(mix, model_scores, prompts: list[str], completions: list[str], device):
    """The row's optimised reward, ``sum(weight * component)``, and each component's values (float32 on
    ``device``).  Reward functions see decoded texts (special tokens removed)."""
    parts = {} if model_scores is None else {"model": model_scores.clone()}
    for key, values in mix.function_scores(prompts, completions).items():
        parts[key] = torch.tensor(values, dtype=torch.float32, device=device)
    total = torch.zeros(len(completions), dtype=torch.float32, device=device)
    for component in mix.components:
        total = total + component.weight * parts[component.key]
    return total, parts
