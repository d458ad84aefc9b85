"""docs/config.md is generated from the config dataclasses; every key's help is readable at run time; Literal
choices are checked by the generic validator."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfkit import configdoc
from rlhfkit.recipe import RecipeError, parse_recipe

BASE = {"models": [{"name": "m", "policy": "llama:tiny"}]}


def test_docs_config_md_is_the_generated_reference():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert doc == configdoc.HEADER + configdoc.markdown(), \
        "docs/config.md is stale: run `python -m rlhfkit.configdoc > docs/config.md`"


def test_the_reference_lists_keys_no_other_page_did():
    doc = configdoc.markdown()
    for key in ("kl_coef", "cliprange", "missing_eos_penalty", "lr_schedule", "vf_coef", "target_modules"):
        assert f"| `{key}` |" in doc, key
    assert "| `kl_coef` | `float` | `0.05` | beta: weight of the KL penalty" in doc


def test_algorithm_sections_list_only_what_they_add_or_change():
    ppo = next(s for s in configdoc.sections() if s.key == "algorithms.ppo")
    names = [k.name for k in configdoc.section_keys(ppo)]
    assert "vf_coef" in names and "num_epochs" in names  # added; default changed (4 vs 1)
    assert "kl_coef" not in names and "steps" not in names


def test_field_docs_come_from_the_string_after_each_field():
    from rlhfkit.engine.config import RLConfig

    docs = configdoc.field_docs(RLConfig)
    assert docs["cliprange"] == "Clip range of the policy ratio."
    assert docs["kl_estimator"].startswith("Per-token KL estimator")


def test_runtime_help_of_one_key_and_its_errors():
    assert configdoc.describe("rl.kl_coef").startswith("rl.kl_coef: float = 0.05\n    beta:")
    assert configdoc.describe("memory.lora.r").startswith("memory.lora.r: int = 16")
    assert "steps" in configdoc.describe("algorithms.ppo")  # runtime help knows the inherited keys too
    with pytest.raises(ValueError, match="unknown key 'rank'; allowed: r, alpha, dropout, target_modules; did you mean 'r'"):
        configdoc.describe("memory.lora.rank")
    with pytest.raises(ValueError, match="unknown config section 'rll'; .*did you mean 'rl'"):
        configdoc.describe("rll.kl_coef")


@pytest.mark.parametrize("extra, message", [
    ({"rl": {"lr_schedule": "cosine"}}, "rl: lr_schedule must be one of: linear, constant (got 'cosine')"),
    ({"run": {"precision": "bf61"}}, "run: precision must be one of: fp32, bf16, fp16 (got 'bf61'); did you mean 'bf16'?"),
    ({"algorithms": {"dpo": {"loss_type": "hing"}}}, "loss_type must be one of: sigmoid, hinge (got 'hing'); did you mean 'hinge'?"),
    ({"sft": {"lr_scheduler": 3}}, "sft: lr_scheduler must be one of: cosine, linear, constant (got 3)"),
])
def test_literal_choices_are_checked_in_one_line(extra, message):
    with pytest.raises(RecipeError) as info:
        parse_recipe({**BASE, **extra})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_literal_choices_hold_for_configs_built_in_code():
    from rlhfkit.engine.config import RLConfig

    with pytest.raises(ValueError, match="loss_agg must be one of: token_mean, seq_mean_token_sum, seq_mean_token_mean"):
        RLConfig(loss_agg="mean")
