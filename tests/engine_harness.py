"""The in-process harness of the engine tests: it lives in :mod:`rlhfkit.testing` (plugin authors use the same
one through ``check_algorithm``); re-exported here for the tests' imports."""

from rlhfkit.testing import PROMPTS, WORDS, run, tiny_context, tiny_models, tiny_task, tiny_tokenizer  # noqa: F401
