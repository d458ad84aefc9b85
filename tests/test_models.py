"""Model adapters of every family: tiny presets build, save and reload identically; reward models are read
the way the engine reads them; checkpoints are detected from config.json; errors are one line.

CPU, tiny models (hidden 64, 2 layers): the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlhfkit import plugins  # noqa: E402
from rlhfkit.models import (  # noqa: E402
    ModelSpec,
    build_causal_lm,
    model_architecture,
    parse_model_spec,
)

FAMILIES = ("llama", "qwen2", "phi3", "minicpm", "deepseek")
TINY_PRESETS = [(f, "tiny") for f in FAMILIES] + [("deepseek", "tiny-moe")]
VOCAB = 96
TOKEN_IDS = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def adapter(family):
    return plugins.get_registry().get("model_adapter", family)


class FakeTokenizer:
    """What build_causal_lm reads from a tokenizer."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self):
        return VOCAB


def write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_every_family_is_registered_and_claims_its_types():
    registry = plugins.get_registry()
    assert set(FAMILIES) <= set(registry.names("model_adapter"))
    for family in FAMILIES:
        a = adapter(family)
        assert a.presets and a.known_checkpoints and a.lora_target_modules
        assert "tiny" in a.presets


@pytest.mark.parametrize("family,preset", TINY_PRESETS)
def test_tiny_preset_roundtrip(tmp_path, family, preset):
    """Build policy + reward model, save, reload with the Auto classes: identical outputs; the engine's
    ``token_scores`` (backbone + ``score``) reads the same reward as the model's own pooled logits."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhfkit.engine.rollout import token_scores

    torch.manual_seed(0)
    a = adapter(family)
    policy = a.causal_lm_from_config(a.preset_config(preset, **TOKEN_IDS)).eval()
    reward = a.sequence_classifier_from_config(a.preset_config(preset, **TOKEN_IDS)).eval()
    assert reward.config.num_labels == 1
    assert hasattr(reward, "score"), f"{type(reward).__name__} has no .score head"
    # the architecture numbers are exact for the built model
    assert a.architecture(policy.config)["num_parameters"] == sum(p.numel() for p in policy.parameters())

    ids = torch.randint(3, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    policy.save_pretrained(tmp_path / "policy")
    reward.save_pretrained(tmp_path / "reward")
    policy2 = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    reward2 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward").eval()
    assert type(policy2) is type(policy) and type(reward2) is type(reward)
    with torch.no_grad():
        torch.testing.assert_close(policy(input_ids=ids).logits, policy2(input_ids=ids).logits, rtol=0, atol=1e-6)
        own = reward(input_ids=ids, attention_mask=mask).logits[:, 0]
        torch.testing.assert_close(own, reward2(input_ids=ids, attention_mask=mask).logits[:, 0], rtol=0, atol=1e-6)
        engine = token_scores(reward2, ids, mask)[:, -1]
        torch.testing.assert_close(engine, own, rtol=1e-5, atol=1e-5)

    # the saved checkpoint is detected as the same family and loads through the adapter
    spec = parse_model_spec(str(tmp_path / "policy"))
    assert spec.family == family and spec.checkpoint
    loaded = build_causal_lm(spec, FakeTokenizer()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, policy(input_ids=ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family,preset", TINY_PRESETS)
def test_lora_targets_exist(family, preset):
    from peft import LoraConfig, get_peft_model

    a = adapter(family)
    model = a.causal_lm_from_config(a.preset_config(preset, **TOKEN_IDS))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=list(a.lora_target_modules), task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable > 0
    if preset != "tiny-moe":  # peft maps MLP names onto fused MoE experts its own way
        assert a.lora_parameters(model.config, 4) == trainable


@pytest.mark.parametrize(
    "config,family",
    [
        ({"model_type": "llama", "vocab_size": 32000}, "llama"),
        ({"model_type": "qwen2"}, "qwen2"),
        ({"model_type": "phi3"}, "phi3"),
        ({"model_type": "minicpm3"}, "minicpm"),
        ({"model_type": "deepseek_v2"}, "deepseek"),
        ({"model_type": "deepseek_v3"}, "deepseek"),
        # Llama-architecture Deepseek checkpoints: by vocabulary, name or explicit mark
        ({"model_type": "llama", "vocab_size": 32256}, "deepseek"),
        ({"model_type": "llama", "vocab_size": 102400}, "deepseek"),
        ({"model_type": "llama", "vocab_size": 1000, "_name_or_path": "deepseek-ai/deepseek-coder-6.7b-base"}, "deepseek"),
        ({"model_type": "llama", "vocab_size": 1000, "rlhfkit_family": "deepseek"}, "deepseek"),
        ({"model_type": "llama", "vocab_size": 32256, "rlhfkit_family": "llama"}, "llama"),
    ],
)
def test_detection_from_config_json(tmp_path, config, family):
    assert parse_model_spec(str(write_config(tmp_path / "ckpt", config))).family == family


def test_explicit_family_prefix_for_a_checkpoint(tmp_path):
    ckpt = write_config(tmp_path / "ckpt", {"model_type": "llama", "vocab_size": 1000})
    assert parse_model_spec(str(ckpt)).family == "llama"
    spec = parse_model_spec(f"deepseek:{ckpt}")
    assert spec.family == "deepseek" and spec.checkpoint == str(ckpt)
    with pytest.raises(ValueError, match="cannot be loaded by family 'qwen2'"):
        parse_model_spec(f"qwen2:{ckpt}")


MINICPM2_CONFIG = {
    "model_type": "minicpm",
    "architectures": ["MiniCPMForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_minicpm.MiniCPMConfig",
        "AutoModel": "modeling_minicpm.MiniCPMModel",
        "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM",
    },
    "hidden_size": 2304,
    "intermediate_size": 5760,
    "num_hidden_layers": 40,
    "num_attention_heads": 36,
    "num_key_value_heads": 36,
    "vocab_size": 122753,
    "tie_word_embeddings": True,
}


def test_minicpm2_needs_trust_remote_code(tmp_path):
    ckpt = write_config(tmp_path / "minicpm-2b", MINICPM2_CONFIG)
    with pytest.raises(ValueError) as info:
        parse_model_spec(str(ckpt))
    message = str(info.value)
    assert "\n" not in message and "trust_remote_code = true" in message and "minicpm" in message
    spec = parse_model_spec(str(ckpt), trust_remote_code=True)
    assert spec.family == "minicpm" and spec.trust_remote_code
    arch = adapter("minicpm").architecture(spec)
    assert arch["num_parameters"] == adapter("minicpm").architecture("minicpm-2b")["num_parameters"]


def test_minicpm2_recipe_row_refused_in_one_line(tmp_path):
    from rlhfkit.recipe import RecipeError, parse_recipe

    ckpt = write_config(tmp_path / "minicpm-2b", MINICPM2_CONFIG)
    raw = {"models": [{"name": "m", "policy": "llama:tiny", "reward": str(ckpt)}]}
    with pytest.raises(RecipeError, match=r"models\[0\]\.reward: .*trust_remote_code = true") as info:
        parse_recipe(raw)
    assert "\n" not in str(info.value)
    raw["models"][0]["trust_remote_code"] = True
    assert parse_recipe(raw).models["m"].trust_remote_code


def test_unknown_model_type_lists_families(tmp_path):
    ckpt = write_config(tmp_path / "odd", {"model_type": "gpt_neox"})
    with pytest.raises(ValueError) as info:
        parse_model_spec(str(ckpt))
    message = str(info.value)
    assert "\n" not in message and "'gpt_neox'" in message
    for family in FAMILIES:
        assert family in message


def test_errors_are_one_line(tmp_path):
    cases = {
        "nosuch:tiny": "unknown model family 'nosuch'",
        "qwen2:huge": "has no preset 'huge'",
        str(tmp_path / "missing-dir"): "neither 'family:preset' nor an existing checkpoint directory",
        "Qwen/Qwen2-0.5B": "HF_HUB_OFFLINE=1",
    }
    (tmp_path / "empty").mkdir()
    cases[str(tmp_path / "empty")] = "has no config.json"
    for text, expected in cases.items():
        with pytest.raises(ValueError, match=expected) as info:
            parse_model_spec(text)
        assert "\n" not in str(info.value)


def test_known_checkpoint_reference_is_architecture_only():
    spec = parse_model_spec("deepseek:deepseek-coder-6.7b")
    assert spec == ModelSpec(family="deepseek", reference="deepseek-coder-6.7b")
    arch = model_architecture("deepseek:deepseek-coder-6.7b")
    assert arch["family"] == "deepseek"
    assert arch["num_layers"] == 32 and arch["hidden_size"] == 4096 and arch["vocab_size"] == 32256
    assert 6.7e9 < arch["num_parameters"] < 6.8e9
    with pytest.raises(ValueError, match="architecture-only reference") as info:
        build_causal_lm(spec, FakeTokenizer())
    assert "\n" not in str(info.value)


def test_architecture_numbers_of_known_checkpoints():
    """Numbers computed from the config equal a meta-device instantiation (exact), and match the published
    sizes of the well-known checkpoints."""
    from transformers import AutoModelForCausalLM, CONFIG_MAPPING

    expected_billions = {
        ("qwen2", "qwen2-0.5b"): 0.494, ("qwen2", "qwen2-7b"): 7.62, ("phi3", "phi-3-mini-4k"): 3.82,
        ("llama", "llama-2-7b"): 6.74, ("llama", "llama-3-8b"): 8.03, ("minicpm", "minicpm-2b"): 2.72,
        ("minicpm", "minicpm3-4b"): 4.07, ("deepseek", "deepseek-coder-6.7b"): 6.74,
        ("deepseek", "deepseek-llm-7b"): 6.91, ("deepseek", "deepseek-v2-lite"): 15.71,
        ("deepseek", "deepseek-v2"): 235.7, ("deepseek", "deepseek-v3"): 671.0,
    }
    for (family, name), billions in expected_billions.items():
        arch = adapter(family).architecture(name)
        assert abs(arch["num_parameters"] / 1e9 - billions) / billions < 0.01, (name, arch["num_parameters"])
    lite = adapter("deepseek").architecture("deepseek-v2-lite")
    assert lite["num_experts"] == 64 and lite["experts_per_token"] == 6 and lite["mla"]
    assert lite["num_active_parameters"] < lite["num_parameters"] / 5
    gqa = adapter("llama").architecture("llama-3-8b")
    assert (gqa["num_heads"], gqa["num_kv_heads"], gqa["head_dim"]) == (32, 8, 128)
    assert gqa["kv_cache_elements_per_token"] == 2 * 32 * 8 * 128

    checked = 0
    for family in FAMILIES:
        a = adapter(family)
        for name, kwargs in a.known_checkpoints.items():
            arch = a.architecture(name)
            if kwargs["model_type"] not in CONFIG_MAPPING or arch["num_parameters"] > 2e10:
                continue
            config = CONFIG_MAPPING[kwargs["model_type"]](**{k: v for k, v in kwargs.items() if k != "model_type"})
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
            assert sum(p.numel() for p in model.parameters()) == arch["num_parameters"], name
            checked += 1
    assert checked >= 10


def test_architecture_keys():
    required = {
        "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "vocab_size",
        "tied_embeddings", "num_experts", "experts_per_token", "num_parameters",
    }
    for family, preset in TINY_PRESETS:
        assert required <= set(adapter(family).architecture(parse_model_spec(f"{family}:{preset}")))


def test_loading_plugins_does_not_import_torch():
    code = (
        "import sys; from rlhfkit.plugins import get_registry; r = get_registry(); "
        "assert {'qwen2','phi3','minicpm','deepseek','llama'} <= set(r.names('model_adapter')); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_checkpoint_without_pad_token_goes_through_the_stage_code(tmp_path):
    """A local checkpoint whose tokenizer has no pad token: the tokenizer stage adds one (not EOS), and the
    policy and reward model load through the adapter with embeddings resized to the new vocabulary."""
    from rlhfkit.data import PreferenceTask
    from rlhfkit.recipe import ModelEntry
    from rlhfkit.stages.pipeline import ensure_tokenizer
    from rlhfkit.tokenizer import train_tokenizer
    from rlhfkit.models import build_sequence_classifier

    texts = ["the cat sat on the mat", "a dog ran in the park", "hello there, how are you?"] * 20
    tok = train_tokenizer(texts, "bpe", 300)
    tok.pad_token = None
    a = adapter("qwen2")
    model = a.causal_lm_from_config(
        a.preset_config("tiny", vocab_size=len(tok), pad_token_id=None, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    )
    ckpt = tmp_path / "qwen2-ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)

    entry = ModelEntry(name="q", policy=str(ckpt))
    task = PreferenceTask(name="t", sft=[], pairs=[], eval_pairs=[], rl_prompts=[], eval_prompts=[])
    tokenizer = ensure_tokenizer(entry, task, tmp_path / "tokenizer")
    assert tokenizer.pad_token == "<|rlhfkit_pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == len(tok) + 1

    spec = parse_model_spec(str(ckpt))
    assert spec.family == "qwen2"
    policy = build_causal_lm(spec, tokenizer)
    assert policy.config.pad_token_id == tokenizer.pad_token_id
    reward = build_sequence_classifier(spec, tokenizer)
    assert reward.config.num_labels == 1 and reward.config.pad_token_id == tokenizer.pad_token_id
    for m in (policy, reward):
        if m.get_input_embeddings().num_embeddings < len(tokenizer):
            m.resize_token_embeddings(len(tokenizer))
        assert m.get_input_embeddings().num_embeddings == len(tokenizer)


def test_known_checkpoint_dicts_are_complete():
    """Known-checkpoint dicts list every number the architecture needs: the raw dict (what a planner that
    avoids importing transformers reads) gives the same numbers as the dict with config-class defaults."""
    for family in FAMILIES:
        a = adapter(family)
        for name, raw in a.known_checkpoints.items():
            assert "model_type" in raw and "tie_word_embeddings" in raw, name
            assert a.architecture_numbers(dict(raw)) == a.architecture(name), name
