"""Built-in reward functions (``reward = "fn:NAME"`` in a ``[[models]]`` row): the task's gold reward and the
arithmetic task's exact match.  The scorers live in ``functions.py`` (lazy references: nothing heavy is
imported when plugins load)."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import RewardFunctionSpec


@hookimpl
def register_reward_functions(register):
    register(
        RewardFunctionSpec(
            name="gold",
            fn="rlhfkit_plugins.rewards.functions:gold",
            description="the task's own gold reward (synthetic: the lexicon score; arithmetic: exact match)",
            needs_gold=True,
        )
    )
    register(
        RewardFunctionSpec(
            name="arith_exact",
            fn="rlhfkit_plugins.rewards.functions:arith_exact",
            description="1 if the first number in the response equals the prompt's answer, else 0",
            needs_metadata=True,
        )
    )
