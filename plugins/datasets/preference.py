"""Real preference data: shared parsing, cleaning and splitting for the ``hh_rlhf``, ``preference_jsonl``
and ``hub`` data sets.

Every source becomes rows ``{"prompt", "chosen", "rejected"}`` in plain text (completions never repeat the
prompt).  Rows that cannot be used are *counted by reason* in ``task.stats["dropped"]`` and reported on
stderr, never dropped silently:

- ``not_utf8``: a line that is not UTF-8 text (e.g. Latin-1);
- ``not_json``: a line that is not JSON;
- ``not_object``: a JSON value that is not an object (a list, a string, a number);
- ``missing_keys``: no chosen/rejected (or prompt, where the format needs one), or a null value;
- ``wrong_type``: a prompt/chosen/rejected value of the wrong type (a number, a message without content);
- ``no_assistant_turn``: an HH-style conversation without ``"\\n\\nAssistant:"``;
- ``prompt_mismatch``: chosen and rejected share no conversation up to an assistant turn;
- ``empty_prompt``, ``empty_completion``: nothing left after splitting/stripping;
- ``identical``: chosen equals rejected (no preference to learn);
- ``prompt_too_long``: no turn boundary leaves the prompt within ``max_prompt_chars`` (with
  ``long_prompts = "drop"``).

The first few places of each reason (``file:line`` for JSONL, ``file:item`` for JSON lists and Parquet rows)
are kept in ``task.stats["dropped_at"]``.  Every text is capped at ``MAX_TEXT_CHARS`` characters when read
(prompts keep their end, answers their start; counted as ``capped_texts``): one pathological row must not
decide the memory of tokenizer training or of any stage.  A file with fewer than two usable pairs is refused
in one line naming the file and the reasons counted (``check`` does this before anything runs).

Real data has no gold reward: ``task.gold_reward`` is ``None`` and reports leave the gold columns empty.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from rlhfkit.data import PreferenceTask
from rlhfkit.validation import check_choices

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
LONG_PROMPT_POLICIES = ("truncate", "drop")
# 64 characters per token x 4096 tokens: longer than any sequence the stages keep (they cap again at
# 64 x their own max_length), short enough that a 10 MB row costs a few MB of copies, not GBs of tokens.
MAX_TEXT_CHARS = 64 * 4096
MIN_PAIRS = 2  # one held-out pair and one training pair
EXAMPLES_PER_REASON = 5
CHAT_FORMATS = ("hh", "plain")


@dataclass
class PreferenceOptions:
    """Options shared by every real preference data set (the recipe's ``[data]`` table)."""

    max_pairs: int = 0
    """Use at most this many clean pairs (after shuffling with the data seed); 0 = all."""
    eval_fraction: float = 0.1
    """Fraction of the clean pairs held out: reward-model accuracy and policy evaluation use them."""
    num_eval_prompts: int = 64
    """Held-out prompts (from the held-out pairs) the SFT and final policies are evaluated on."""
    max_rl_prompts: int = 0
    """RL prompts, taken from the training pairs' prompts (distinct); 0 = all."""
    max_prompt_chars: int = 0
    """Longest prompt kept, in characters; 0 = no limit.  Long prompts keep their *last* turns (the context
    closest to the answer), cut at a turn boundary; see ``long_prompts``."""
    long_prompts: Literal["truncate", "drop"] = "truncate"
    """What to do when even the last turn is longer than ``max_prompt_chars``: ``"truncate"`` keeps its last
    ``max_prompt_chars`` characters, ``"drop"`` drops the pair (counted as ``prompt_too_long``)."""
    max_completion_chars: int = 0
    """Longest chosen/rejected answer, in characters (cut at a word boundary); 0 = no limit.  A pair whose
    answers become identical is dropped (counted as ``identical``)."""
    tokenizer_kind: Literal["bpe", "word"] = "bpe"
    """Tokenizer trained for tiny-preset models: ``"bpe"`` (byte-level BPE, right for real text) or ``"word"``."""
    tokenizer_vocab_size: int = 2048
    """Vocabulary of that tokenizer (checkpoints bring their own tokenizer)."""

    def __post_init__(self):
        if self.max_pairs < 0:
            raise ValueError("max_pairs must be >= 0 (0 = all)")
        if not 0 < self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in (0, 1)")
        for name in ("num_eval_prompts", "tokenizer_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("max_rl_prompts", "max_prompt_chars", "max_completion_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = no limit)")
        check_choices(self)  # long_prompts, tokenizer_kind


# --- files -----------------------------------------------------------------------------------------------


def resolve_data_path(path: str, key: str = "data.path") -> Path:
    """A data file path; relative paths resolve against the current directory.  One-line error if missing."""
    if not path:
        raise ValueError(f"{key} is required (a file path)")
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = Path(os.path.normpath(Path(os.getcwd()) / resolved))
    if not resolved.is_file():
        raise ValueError(
            f"{key} {path!r} does not exist (looked at {resolved}; relative paths resolve against the current "
            f"directory)"
        )
    return resolved


@dataclass(frozen=True)
class Line:
    """A record read from a file and where: its line (JSONL) or item (JSON list, Parquet) number, from 1.
    ``reason`` is set (and ``value`` None) when the line could not be read."""

    number: int
    value: Any = None
    reason: str | None = None


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _unreadable(path: Path, exc: Exception, where: str) -> ValueError:
    return ValueError(f"data.path {str(path)!r}: cannot be read {where}: {type(exc).__name__}: {exc}")


def read_json_lines(path: Path, stats: Counter | None = None) -> Iterator[Line]:
    """Records of a ``.jsonl``/``.jsonl.gz`` file (or a ``.json`` list), one :class:`Line` each.

    Lines are decoded one by one, so one Latin-1 line costs that line (``not_utf8``), not the file; a line
    that is not JSON is ``not_json``.  A damaged gzip stream or an invalid ``.json`` file is a one-line
    ``ValueError`` naming the file.
    """
    stats = Counter() if stats is None else stats
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    if name.endswith(".json"):
        yield from _read_json_list(path)
        return
    number = 0
    try:
        with _open_binary(path) as handle:
            for raw in handle:
                number += 1
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    stats["not_utf8"] += 1
                    yield Line(number, reason="not_utf8")
                    continue
                if not text.strip():
                    continue
                try:
                    yield Line(number, json.loads(text))
                except json.JSONDecodeError:
                    stats["not_json"] += 1
                    yield Line(number, reason="not_json")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise _unreadable(path, exc, f"after line {number}") from None


def _read_json_list(path: Path) -> Iterator[Line]:
    try:
        with _open_binary(path) as handle:
            data = json.loads(handle.read().decode("utf-8-sig"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(path, exc, "as one JSON document") from None
    for number, record in enumerate(data if isinstance(data, list) else [data], start=1):
        yield Line(number, record)


def read_records(path: Path, stats: Counter | None = None) -> Iterator[Line]:
    """Records of a JSONL (optionally gzipped), JSON or Parquet file, one :class:`Line` each."""
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises its own types for damaged files
            raise _unreadable(path, exc, "as Parquet") from None
        for number, record in enumerate(frame.to_dict(orient="records"), start=1):
            yield Line(number, {k: _plain(v) for k, v in record.items()})
        return
    yield from read_json_lines(path, stats)


def _plain(value):
    """numpy arrays/records from Parquet -> lists/dicts."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- rows -> (prompt, chosen, rejected) -------------------------------------------------------------------



@dataclass
class ColumnOptions(PreferenceOptions):
    """Options shared by sources with named columns (``preference_jsonl``, ``hub``)."""

    prompt_key: str = "prompt"
    """Column holding the prompt (absent in implicit-prompt rows)."""
    chosen_key: str = "chosen"
    """Column holding the preferred answer (or full conversation)."""
    rejected_key: str = "rejected"
    """Column holding the dispreferred answer (or full conversation)."""
    chat_format: str = "hh"
    """How conversational rows become text: ``"hh"`` (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) or
    ``"plain"`` (``"role: content"`` lines).  When the policy's tokenizer has a chat template (and ``chat_template``
    is ``"auto"``), the turns are read back from this text and formatted with the template instead."""

    def __post_init__(self):
        super().__post_init__()
        if self.chat_format not in CHAT_FORMATS:
            raise ValueError(f"chat_format must be one of: {', '.join(CHAT_FORMATS)}")

    def row_normaliser(self):
        """``row -> (prompt, chosen, rejected)`` for these column names and chat format."""
        return partial(
            normalise_row,
            prompt_key=self.prompt_key,
            chosen_key=self.chosen_key,
            rejected_key=self.rejected_key,
            chat_format=self.chat_format,
        )

class Malformed(Exception):
    """A row that cannot be used; ``str(exc)`` is the reason key."""


def split_hh(chosen_text: str, rejected_text: str) -> tuple[str, str, str]:
    """Split two HH-RLHF transcripts into (prompt, chosen, rejected).

    The prompt is the longest common prefix of the two transcripts, cut back to end at its last
    ``"\n\nAssistant:"`` (the data set's own definition); the answers are what follows.
    """
    if ASSISTANT not in chosen_text or ASSISTANT not in rejected_text:
        raise Malformed("no_assistant_turn")
    shared = len(os.path.commonprefix([chosen_text, rejected_text]))
    cut = chosen_text.rfind(ASSISTANT, 0, shared)
    if cut < 0:
        raise Malformed("prompt_mismatch")
    prompt = chosen_text[: cut + len(ASSISTANT)]
    return prompt, chosen_text[len(prompt):], rejected_text[len(prompt):]


def common_prefix_split(chosen_text: str, rejected_text: str) -> tuple[str, str, str]:
    """Implicit-prompt rows: HH transcripts split at the last assistant turn, others at the common prefix
    (moved back to the last whitespace so no word is cut)."""
    if ASSISTANT in chosen_text:
        return split_hh(chosen_text, rejected_text)
    n = len(os.path.commonprefix([chosen_text, rejected_text]))
    while n > 0 and not chosen_text[n - 1].isspace():
        n -= 1
    return chosen_text[:n], chosen_text[n:], rejected_text[n:]


def render_messages(messages: list, chat_format: str = "hh", open_assistant: bool = False) -> str:
    """Render conversational messages as text: HH style (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) or plain
    (``"role: content\\n"``).  ``open_assistant`` ends with an open assistant turn (a prompt)."""
    parts = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise Malformed("wrong_type")
        role, content = message.get("role", "user"), str(message["content"])
        if chat_format == "hh":
            label = {"user": "Human", "assistant": "Assistant", "system": "System"}.get(role, role.capitalize())
            parts.append(f"\n\n{label}: {content}")
        else:
            parts.append(f"{role}: {content}\n")
    if open_assistant:
        parts.append(ASSISTANT if chat_format == "hh" else "assistant:")
    return "".join(parts)


def _render_answer(messages, chat_format: str) -> str:
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        raise Malformed("wrong_type")
    texts = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise Malformed("wrong_type")
        texts.append(str(m["content"]))
    # the prompt ends with an open assistant turn; a multi-message answer continues in the same format
    answer = " " + texts[0] if texts else ""
    if len(messages) > 1:
        answer += render_messages(messages[1:], chat_format)
    return answer


def normalise_row(row: Any, prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", chat_format="hh"):
    """(prompt, chosen, rejected) from a row in any supported format; raises :class:`Malformed`.

    Formats (TRL's names): standard explicit prompt (strings), standard implicit prompt (chosen/rejected
    transcripts only), conversational explicit prompt (lists of ``{"role", "content"}``), conversational
    implicit prompt (full conversations; the shared leading messages are the prompt).
    """
    if not isinstance(row, dict):
        raise Malformed("not_json" if row is None else "not_object")
    if chosen_key not in row or rejected_key not in row or row[chosen_key] is None or row[rejected_key] is None:
        raise Malformed("missing_keys")
    chosen, rejected = row[chosen_key], row[rejected_key]
    prompt = row.get(prompt_key)
    if prompt is None:
        if isinstance(chosen, str) and isinstance(rejected, str):
            return common_prefix_split(chosen, rejected)
        if isinstance(chosen, list) and isinstance(rejected, list):
            k = 0
            while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
                k += 1
            if k == 0:
                raise Malformed("empty_prompt")
            prompt_text = render_messages(chosen[:k], chat_format, open_assistant=True)
            return prompt_text, _render_answer(chosen[k:], chat_format), _render_answer(rejected[k:], chat_format)
        raise Malformed("wrong_type")
    if isinstance(prompt, str):
        if not isinstance(chosen, (str, list)) or not isinstance(rejected, (str, list)):
            raise Malformed("wrong_type")
        return prompt, _render_answer(chosen, chat_format), _render_answer(rejected, chat_format)
    if isinstance(prompt, list):
        prompt_text = render_messages(prompt, chat_format, open_assistant=True)
        return prompt_text, _render_answer(chosen, chat_format), _render_answer(rejected, chat_format)
    raise Malformed("wrong_type")


def _truncate_prompt(prompt: str, limit: int, policy: str) -> tuple[str, bool]:
    if not limit or len(prompt) <= limit:
        return prompt, False
    # keep the last turns that fit, starting at a turn boundary
    start = 0
    while True:
        nxt = prompt.find(HUMAN, start + 1)
        if nxt < 0:
            break
        if len(prompt) - nxt <= limit:
            return prompt[nxt:], True
        start = nxt
    if policy == "drop":
        raise Malformed("prompt_too_long")
    return prompt[-limit:], True


def _truncate_completion(text: str, limit: int) -> tuple[str, bool]:
    if not limit or len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut, True


def clean_pair(prompt: str, chosen: str, rejected: str, options: PreferenceOptions, counts: Counter) -> dict:
    """Apply the length limits and the sanity checks to one pair; raises :class:`Malformed`."""
    if not prompt.strip():
        raise Malformed("empty_prompt")
    if not chosen.strip() or not rejected.strip():
        raise Malformed("empty_completion")
    if chosen.strip() == rejected.strip():
        raise Malformed("identical")
    prompt, cut_prompt = _truncate_prompt(prompt, options.max_prompt_chars, options.long_prompts)
    chosen, cut_chosen = _truncate_completion(chosen, options.max_completion_chars)
    rejected, cut_rejected = _truncate_completion(rejected, options.max_completion_chars)
    if chosen.strip() == rejected.strip():
        raise Malformed("identical")
    counts["truncated_prompts"] += cut_prompt
    counts["truncated_completions"] += cut_chosen + cut_rejected
    capped = [len(t) > MAX_TEXT_CHARS for t in (prompt, chosen, rejected)]
    if any(capped):
        prompt, chosen, rejected = prompt[-MAX_TEXT_CHARS:], chosen[:MAX_TEXT_CHARS], rejected[:MAX_TEXT_CHARS]
        counts["capped_texts"] += sum(capped)
        if chosen.strip() == rejected.strip():
            raise Malformed("identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def collect_pairs(
    rows: Iterable[Any], options: PreferenceOptions, row_to_triple, source: str = "", limit: int = 0
) -> tuple[list[dict], dict]:
    """Clean pairs from raw rows (plain records or :class:`Line`), and the counts: rows read, dropped by
    reason with their first places (``source:line``), truncations.  ``limit`` > 0 stops after that many
    clean pairs (a cheap check)."""
    dropped: Counter = Counter()
    places: dict[str, list[str]] = {}
    counts: Counter = Counter()
    pairs = []
    n_rows = 0
    for row in rows:
        n_rows += 1
        number = row.number if isinstance(row, Line) else n_rows
        try:
            if isinstance(row, Line):
                if row.reason:
                    raise Malformed(row.reason)
                row = row.value
            pairs.append(clean_pair(*row_to_triple(row), options, counts))
        except Malformed as exc:
            reason = str(exc)
            dropped[reason] += 1
            if len(places.setdefault(reason, [])) < EXAMPLES_PER_REASON:
                places[reason].append(f"{source}:{number}" if source else str(number))
        if limit and len(pairs) >= limit:
            break
    stats = {
        "rows": n_rows,
        "clean_pairs": len(pairs),
        "dropped": dict(sorted(dropped.items())),
        "dropped_total": sum(dropped.values()),
        "dropped_at": dict(sorted(places.items())),
        "truncated_prompts": counts["truncated_prompts"],
        "truncated_completions": counts["truncated_completions"],
        "capped_texts": counts["capped_texts"],
    }
    if source:
        stats["source"] = source
    return pairs, stats


def refuse_too_few(name: str, pairs: list, stats: dict) -> None:
    """One-line ``ValueError`` when fewer than ``MIN_PAIRS`` pairs are usable, naming the file and reasons."""
    if len(pairs) >= MIN_PAIRS:
        return
    source = stats.get("source") or name
    if not stats["rows"]:
        raise ValueError(f"data set {name!r}: {source} has no rows (empty file); at least {MIN_PAIRS} pairs needed")
    reasons = ", ".join(
        f"{reason} {count} (first at {', '.join(stats.get('dropped_at', {}).get(reason, [])) or '?'})"
        for reason, count in stats["dropped"].items()
    )
    raise ValueError(
        f"data set {name!r}: {source} has {len(pairs)} usable preference pair(s) in {stats['rows']} rows, "
        f"at least {MIN_PAIRS} needed; dropped: {reasons or 'none'}"
    )


def build_preference_task(name: str, pairs: list[dict], stats: dict, options: PreferenceOptions, seed: int) -> PreferenceTask:
    """Shuffle with ``seed``, hold out ``eval_fraction``, derive SFT rows (the chosen answers) and prompts."""
    refuse_too_few(name, pairs, stats)
    rng = random.Random(seed)
    pairs = list(pairs)
    rng.shuffle(pairs)
    if options.max_pairs:
        pairs = pairs[: options.max_pairs]
    n_eval = min(len(pairs) - 1, max(1, round(len(pairs) * options.eval_fraction)))
    eval_pairs, train_pairs = pairs[:n_eval], pairs[n_eval:]
    sft = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in train_pairs]
    rl_prompts = list(dict.fromkeys(p["prompt"] for p in train_pairs))
    if options.max_rl_prompts:
        rl_prompts = rl_prompts[: options.max_rl_prompts]
    eval_prompts = list(dict.fromkeys(p["prompt"] for p in eval_pairs))[: options.num_eval_prompts]
    stats = dict(stats)
    stats.update(
        pairs=len(train_pairs),
        eval_pairs=len(eval_pairs),
        sft=len(sft),
        rl_prompts=len(rl_prompts),
        eval_prompts=len(eval_prompts),
    )
    if stats["dropped_total"]:
        reasons = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items())
        where = f" of {stats['source']}" if stats.get("source") else ""
        print(
            f"data set {name!r}: dropped {stats['dropped_total']} of {stats['rows']} rows{where} ({reasons}; first "
            f"places in the stage stats, data/stats.dropped_at)",
            file=sys.stderr,
        )
    return PreferenceTask(
        name=name,
        sft=sft,
        pairs=train_pairs,
        eval_pairs=eval_pairs,
        rl_prompts=rl_prompts,
        eval_prompts=eval_prompts,
        gold_reward=None,
        tokenizer_kind=options.tokenizer_kind,
        tokenizer_vocab_size=options.tokenizer_vocab_size,
        stats=stats,
    )
