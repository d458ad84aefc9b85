"""A synthetic preference task with a known gold reward.

Completions are short strings of words drawn from three lexicons.  The gold reward is

    gold = (#distinct positive words) - (#negative words) - repeat_penalty * (#repeated words)

The SFT data (the "base" distribution) mixes the lexicons at random, so the SFT policy scores near zero and
RLHF has much to gain.  Preference pairs are two base completions ranked by gold with label noise.  Because
base completions rarely repeat a positive word, the reward model learns mostly "more positive words is
better" and little about repetition: a policy pushed far enough from the SFT model can raise the proxy
reward by repeating positive words while the gold reward falls.  That is the over-optimisation a report
must make visible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from rlhfkit.data import PreferenceTask

POSITIVE = (
    "good great happy bright calm kind warm fresh lovely clever brave gentle joyful proud sweet wise"
).split()
NEGATIVE = ("bad sad dark cold rude dull weak angry bitter broken cruel gloomy harsh lazy nasty ugly").split()
FILLER = (
    "the a of and to in it was is on with as for at by this that very some many then from one two day "
    "night city river garden house road tree time"
).split()
TOPICS = "garden city river forest house market school harbor mountain village kitchen library".split()
STYLES = "short long plain honest".split()

_POSITIVE = frozenset(POSITIVE)
_NEGATIVE = frozenset(NEGATIVE)


@dataclass
class SyntheticOptions:
    """Options of the ``synthetic`` task (the recipe's ``[data]`` table)."""

    num_sft: int = 2000
    """Demonstrations for the SFT stage."""
    num_pairs: int = 2000
    """Training preference pairs for the reward model."""
    num_eval_pairs: int = 400
    """Held-out preference pairs (reward-model accuracy)."""
    num_eval_prompts: int = 64
    """Held-out prompts for evaluating policies (at most the 12 style x topic pairs kept out of RL training)."""
    min_words: int = 4
    """Shortest base completion, in words."""
    max_words: int = 10
    """Longest base completion, in words."""
    positive_rate: float = 0.2
    """Probability that a base word is positive."""
    negative_rate: float = 0.2
    """Probability that a base word is negative."""
    label_noise: float = 0.1
    """Probability that a preference label is flipped."""
    repeat_penalty: float = 0.5
    """Gold reward lost per repeated word."""

    def __post_init__(self):
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError("min_words must be >= 1 and <= max_words")
        if self.positive_rate < 0 or self.negative_rate < 0 or self.positive_rate + self.negative_rate > 1:
            raise ValueError("positive_rate and negative_rate must be >= 0 and sum to at most 1")
        if not 0 <= self.label_noise < 0.5:
            raise ValueError("label_noise must be in [0, 0.5)")
        for name in ("num_sft", "num_pairs", "num_eval_pairs", "num_eval_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def gold_score(completion: str, repeat_penalty: float) -> float:
    words = completion.split()
    distinct_positive = len({w for w in words if w in _POSITIVE})
    negative = sum(w in _NEGATIVE for w in words)
    repeated = len(words) - len(set(words))
    return float(distinct_positive - negative - repeat_penalty * repeated)


class GoldReward:
    """Picklable gold reward of the synthetic task."""

    def __init__(self, repeat_penalty: float):
        self.repeat_penalty = repeat_penalty

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [gold_score(c, self.repeat_penalty) for c in completions]


def _prompt(rng: random.Random) -> str:
    return f"write a {rng.choice(STYLES)} note about the {rng.choice(TOPICS)} :"


def _completion(rng: random.Random, opts: SyntheticOptions) -> str:
    words = []
    for _ in range(rng.randint(opts.min_words, opts.max_words)):
        u = rng.random()
        if u < opts.positive_rate:
            words.append(rng.choice(POSITIVE))
        elif u < opts.positive_rate + opts.negative_rate:
            words.append(rng.choice(NEGATIVE))
        else:
            words.append(rng.choice(FILLER))
    return " " + " ".join(words)


def _pairs(rng: random.Random, opts: SyntheticOptions, n: int) -> list[dict]:
    pairs = []
    while len(pairs) < n:
        prompt = _prompt(rng)
        a, b = _completion(rng, opts), _completion(rng, opts)
        ga, gb = gold_score(a, opts.repeat_penalty), gold_score(b, opts.repeat_penalty)
        if ga == gb:
            continue  # no preference to learn
        chosen, rejected = (a, b) if ga > gb else (b, a)
        if rng.random() < opts.label_noise:
            chosen, rejected = rejected, chosen
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def split_prompts() -> tuple[list[str], list[str]]:
    """RL training prompts and held-out evaluation prompts: disjoint style x topic pairs.

    Every word of both sets appears in the SFT data (so the word tokenizer knows it), but no evaluation
    prompt is ever an RL training prompt: a quarter of the 48 pairs (one topic per style in every four,
    balanced over styles and topics) is kept out of RL.  Before, evaluation drew from the same 48 prompts
    the policy was trained on.
    """
    train, held_out = [], []
    for i, style in enumerate(STYLES):
        for j, topic in enumerate(TOPICS):
            prompt = f"write a {style} note about the {topic} :"
            (held_out if (i + j) % 4 == 0 else train).append(prompt)
    return train, held_out


def build(options: SyntheticOptions, seed: int) -> PreferenceTask:
    """Build the task; everything is a function of ``options`` and ``seed``."""
    rng = random.Random(seed)
    sft = [{"prompt": _prompt(rng), "completion": _completion(rng, options)} for _ in range(options.num_sft)]
    pairs = _pairs(rng, options, options.num_pairs)
    eval_pairs = _pairs(rng, options, options.num_eval_pairs)
    rl_prompts, held_out = split_prompts()
    eval_prompts = held_out[: options.num_eval_prompts]
    return PreferenceTask(
        name="synthetic",
        sft=sft,
        pairs=pairs,
        eval_pairs=eval_pairs,
        rl_prompts=rl_prompts,
        eval_prompts=eval_prompts,
        gold_reward=GoldReward(options.repeat_penalty),
        tokenizer_kind="word",
        tokenizer_vocab_size=256,
        stats={"sft": len(sft), "pairs": len(pairs), "eval_pairs": len(eval_pairs)},
    )
