"""A small offline arithmetic task with a verifiable reward (RL with verifiable rewards, no reward model needed).

Prompts are additions of two whole numbers, ``"7 + 5 ="``; the answer is one number, ``" 12"``.  The SFT
demonstrations give the correct answer for a fraction ``sft_correct_rate`` of the rows and a wrong answer for the
rest (``wrong_answer``): by default the sum plus one, one systematic error that the SFT policy learns as the
likelier answer for every prompt; or a random offset.  The SFT policy answers correctly less often than
``sft_correct_rate`` (a tiny Llama spreads some probability over neighbouring numbers): RL has room to raise it.
Measured with a tiny Llama, 40 RL steps (recipes/arithmetic_rlvr.toml): ``off_by_one`` lets RL unlearn the
error on the RL prompts and carry it over to held-out ones (PPO 0.34 -> 0.64 on one seed), while ``random``
offsets gave no rise (0.34 -> 0.33), and single digits (``max_operand = 9``, 100 prompts) rose only 0.25 -> 0.36.  Preference pairs are correct (chosen) vs wrong (rejected), with label
noise, for rows that learn a reward model instead.  The gold reward is exact match (1 if the first number of the
completion equals the answer, else 0; see ``rlhfkit_plugins.rewards.functions.first_number``), so ``eval/gold`` is
the exact-match rate; the per-prompt answers are the task's ``prompt_metadata`` (``{"answer": 12}``) that the
``fn:arith_exact`` reward function reads.

RL and evaluation prompts are disjoint (a quarter of the operand pairs are held out of RL, spread over the sums);
every prompt appears in the SFT data, so the word tokenizer knows every number.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Sequence

from rlhfkit.data import PreferenceTask
from rlhfkit.validation import check_choices


@dataclass
class ArithmeticOptions:
    """Options of the ``arithmetic`` task (the recipe's ``[data]`` table)."""

    max_operand: int = 6
    """Operands are 0 .. max_operand (6: 49 prompts, 35 for RL and 14 held out)."""
    num_sft: int = 2000
    """Demonstrations for the SFT stage."""
    sft_correct_rate: float = 0.4
    """Fraction of the demonstrations with the correct answer (the rest are off by 1 .. max_offset)."""
    wrong_answer: Literal["off_by_one", "random"] = "off_by_one"
    """What a wrong demonstration answers: ``off_by_one`` (the sum plus one: one systematic error, so the SFT
    policy finds the wrong answer the likelier one for every prompt) or ``random`` (the sum off by 1 ..
    ``max_offset`` either way, never negative)."""
    max_offset: int = 3
    """With ``wrong_answer = "random"``: the largest distance of a wrong answer from the correct one."""
    num_pairs: int = 1000
    """Training preference pairs (correct vs wrong) for a reward model."""
    num_eval_pairs: int = 200
    """Held-out preference pairs (reward-model accuracy)."""
    num_eval_prompts: int = 64
    """Held-out prompts for evaluating policies (at most the operand pairs kept out of RL: 25 with max_operand 9)."""
    label_noise: float = 0.1
    """Probability that a preference label is flipped."""

    def __post_init__(self):
        if self.max_operand < 1:
            raise ValueError("max_operand must be >= 1")
        if not 0 <= self.sft_correct_rate <= 1:
            raise ValueError("sft_correct_rate must be in [0, 1]")
        if self.max_offset < 1:
            raise ValueError("max_offset must be >= 1")
        check_choices(self)  # wrong_answer
        if not 0 <= self.label_noise < 0.5:
            raise ValueError("label_noise must be in [0, 0.5)")
        for name in ("num_sft", "num_pairs", "num_eval_pairs", "num_eval_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def prompt_of(a: int, b: int) -> str:
    return f"{a} + {b} ="


class ExactMatchGold:
    """Picklable gold reward: exact match against each prompt's answer."""

    def __init__(self, answers: dict[str, int]):
        self.answers = answers

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        from rlhfkit_plugins.rewards.functions import exact_match

        return [exact_match(c, self.answers[p]) for p, c in zip(prompts, completions)]


def split_prompts(max_operand: int) -> tuple[list[str], list[str]]:
    """RL prompts and held-out evaluation prompts: ``(a + 2b) % 4 == 0`` is held out (a quarter, every sum's
    neighbourhood represented on both sides)."""
    train, held_out = [], []
    for a in range(max_operand + 1):
        for b in range(max_operand + 1):
            (held_out if (a + 2 * b) % 4 == 0 else train).append(prompt_of(a, b))
    return train, held_out


def _wrong(rng: random.Random, a: int, b: int, opts: "ArithmeticOptions") -> int:
    """A wrong answer to ``a + b``."""
    answer = a + b
    if opts.wrong_answer == "off_by_one":
        return answer + 1
    while True:
        wrong = answer + rng.choice([-1, 1]) * rng.randint(1, opts.max_offset)
        if wrong >= 0:
            return wrong


def _operands(rng: random.Random, opts: ArithmeticOptions) -> tuple[int, int]:
    return rng.randint(0, opts.max_operand), rng.randint(0, opts.max_operand)


def _pairs(rng: random.Random, opts: ArithmeticOptions, n: int) -> list[dict]:
    pairs = []
    for _ in range(n):
        a, b = _operands(rng, opts)
        chosen, rejected = f" {a + b}", f" {_wrong(rng, a, b, opts)}"
        if rng.random() < opts.label_noise:
            chosen, rejected = rejected, chosen
        pairs.append({"prompt": prompt_of(a, b), "chosen": chosen, "rejected": rejected})
    return pairs


def build(options: ArithmeticOptions, seed: int) -> PreferenceTask:
    """Build the task; everything is a function of ``options`` and ``seed``."""
    rng = random.Random(seed)
    sft = []
    for _ in range(options.num_sft):
        a, b = _operands(rng, options)
        answer = a + b if rng.random() < options.sft_correct_rate else _wrong(rng, a, b, options)
        sft.append({"prompt": prompt_of(a, b), "completion": f" {answer}"})
    pairs = _pairs(rng, options, options.num_pairs)
    eval_pairs = _pairs(rng, options, options.num_eval_pairs)
    rl_prompts, held_out = split_prompts(options.max_operand)
    answers = {prompt_of(a, b): a + b for a in range(options.max_operand + 1) for b in range(options.max_operand + 1)}
    return PreferenceTask(
        name="arithmetic",
        sft=sft,
        pairs=pairs,
        eval_pairs=eval_pairs,
        rl_prompts=rl_prompts,
        eval_prompts=held_out[: options.num_eval_prompts],
        gold_reward=ExactMatchGold(answers),
        tokenizer_kind="word",
        tokenizer_vocab_size=128,
        stats={"sft": len(sft), "pairs": len(pairs), "eval_pairs": len(eval_pairs)},
        prompt_metadata={p: {"answer": answer} for p, answer in answers.items()},
    )
