"""Issue 15 items 1, 2, 7: bring your own models.

A tiny Qwen2 SFT checkpoint and a tiny Llama reward model with different tokenizers (trained here with
``tokenizers``, saved with ``save_pretrained``; nothing downloads), and the other way round, are run with
``train_sft = false`` and ``train_reward = false`` through the docs' "my own models" recipe: no SFT or
reward-model stage runs, the checkpoints' tensors are the cells' tensors, and the reward model's score of a fixed
text inside the cell is its score of that text computed directly with its own tokenizer.  Bad checkpoints are
refused in one line, exit 2, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli

GOOD = ["great", "nice", "fine", "lovely", "superb"]
BAD = ["awful", "poor", "dull", "boring", "weak"]
TOPICS = ["movie", "film", "book", "song", "show"]
PROMPT = "review : the movie was "
COMPLETION = "great and nice"


def pairs(n: int = 40, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = f"review : the {rng.choice(TOPICS)} was "
        rows.append({"prompt": prompt, "chosen": f"{rng.choice(GOOD)} and {rng.choice(GOOD)}",
                     "rejected": f"{rng.choice(BAD)} and {rng.choice(BAD)}"})
    return rows


def corpus() -> list[str]:
    return [r["prompt"] + r[k] for r in pairs(200) for k in ("chosen", "rejected")] + [PROMPT + COMPLETION]


def tokenizer(kind: str):
    from rlhfkit.tokenizer import train_tokenizer

    return train_tokenizer(corpus(), kind, 300)


def save_model(path: Path, family: str, kind: str, classifier: bool, num_labels: int = 1, seed: int = 0):
    """A tiny random-init ``family`` model on a ``kind`` tokenizer, saved with its tokenizer."""
    import torch

    from rlhfkit.plugins import get_registry

    adapter = get_registry().get("model_adapter", family)
    tok = tokenizer(kind)
    config = adapter.preset_config("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    if classifier:
        model = adapter.sequence_classifier_from_config(config)
        if num_labels != 1:
            config.num_labels = num_labels
            model = type(model)(config)
    else:
        model = adapter.causal_lm_from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def sha(path: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def docs_recipe() -> str:
    """The "my own models" recipe of docs/recipes.md, as written there."""
    text = (REPO / "docs" / "recipes.md").read_text()
    section = text.split("### My own models", 1)[1]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    # Qwen2 on byte-level BPE, Llama on a word-level vocabulary: transformers 5 loads a qwen2 checkpoint's
    # tokenizer as Qwen2Tokenizer (a byte-level BPE) whatever tokenizer_config.json says, so a word-level
    # tokenizer saved beside a Qwen2 model would not load as itself.
    save_model(root / "my_sft", "qwen2", "bpe", classifier=False)
    save_model(root / "my_rm", "llama", "word", classifier=True, seed=1)
    save_model(root / "llama_sft", "llama", "word", classifier=False, seed=2)
    save_model(root / "qwen_rm", "qwen2", "bpe", classifier=True, seed=3)
    with open(root / "prefs.jsonl", "w") as handle:
        for row in pairs():
            handle.write(json.dumps(row) + "\n")
    return root


def test_tokenizers_differ(checkpoints):
    from transformers import AutoTokenizer

    from rlhfkit.engine.reward_tokens import same_vocabulary

    qwen = AutoTokenizer.from_pretrained(checkpoints / "my_sft")
    llama = AutoTokenizer.from_pretrained(checkpoints / "my_rm")
    assert not same_vocabulary(qwen, llama) and len(qwen) != len(llama)
    assert same_vocabulary(qwen, AutoTokenizer.from_pretrained(checkpoints / "qwen_rm"))
    for tok in (qwen, llama):  # each loads as itself: the fixed text survives a round trip
        ids = tok(PROMPT + COMPLETION, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == PROMPT + COMPLETION


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict, b: dict):
    import torch

    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_docs_recipe_runs_given_models_both_orders(checkpoints):
    """The docs' recipe plus the other order (Llama policy, Qwen2 reward model) as a second row: PPO and RLOO
    run, nothing is trained before RL, the tensors are the checkpoints', the in-cell score is the direct one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    root = checkpoints
    before = {name: sha(root / name) for name in ("my_sft", "my_rm", "llama_sft", "qwen_rm")}
    text = docs_recipe() + ('\n[[models]]\nname = "llama-sft"\npolicy = "./llama_sft"\nreward = "./qwen_rm"\n'
                            'train_sft = false\ntrain_reward = false\n\n[run]\nthreads_per_cell = 1\n')
    (root / "my_models.toml").write_text(text)
    out = root / "run"
    done = subprocess.run([sys.executable, "-m", "rlhfkit", "run", "my_models.toml", "--output", str(out)],
                          capture_output=True, text=True, cwd=root, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    stages = json.loads((out / "stages.json").read_text())
    for row in ("my-sft", "llama-sft"):
        assert stages[row]["stages"] == {"tokenizer": "given", "sft": "given", "reward_model": "given"}
        assert stages[row]["reward/tokenizer"] == "own"
        assert "sft/train_loss" not in stages[row] and "reward/train_loss" not in stages[row]
    report = (out / "report.md").read_text()
    assert report.count("tokenizer given, SFT given, RM given") == 2
    assert "re-encoded" in report and "starts from the SFT policy" in report
    results = {json.loads(p.read_text())["cell"]["algorithm"] + ":" + json.loads(p.read_text())["cell"]["model"]:
               json.loads(p.read_text()) for p in out.glob("cells/*/result.json")}
    assert len(results) == 4 and all(r["status"] == "ok" for r in results.values())
    for row in ("my-sft", "llama-sft"):
        assert results[f"ppo:{row}"]["model_set"]["critic"]["start"] == "sft"
        assert results[f"rloo:{row}"]["model_set"]["critic"] is None
    assert {name: sha(root / name) for name in before} == before  # the checkpoints are not touched

    from rlhfkit.cellspec.build import build_cell
    from rlhfkit.engine.reward_tokens import reward_model_scores
    from rlhfkit.stages.reward import score_texts

    for row, policy_dir, reward_dir in (("my-sft", "my_sft", "my_rm"), ("llama-sft", "llama_sft", "qwen_rm")):
        cell = results[f"rloo:{row}"]["cell"]
        cwd = os.getcwd()
        os.chdir(root)  # the recipe's model paths are relative to where it runs
        try:
            built = build_cell({"recipe": str(out / "recipe.toml"), "cell": cell, "artifacts_root": str(out / "artifacts"),
                                "threads": 1}, broadcast=False)
        finally:
            os.chdir(cwd)
        ctx = built.ctx
        policy = AutoModelForCausalLM.from_pretrained(root / policy_dir)
        reward = AutoModelForSequenceClassification.from_pretrained(root / reward_dir)
        _assert_same(_state(ctx.policy), _state(policy))
        _assert_same(_state(ctx.reward_model), _state(reward))
        assert ctx.reward_tokenizer is not None

        policy_tok = ctx.tokenizer
        ids = policy_tok(COMPLETION, add_special_tokens=False)["input_ids"] + [policy_tok.eos_token_id]
        responses = torch.tensor([ids])
        query = policy_tok([PROMPT], return_tensors="pt", add_special_tokens=False)
        input_ids = torch.cat([query.input_ids, responses], 1)
        mask = torch.ones_like(input_ids)
        with torch.no_grad():
            completions = policy_tok.batch_decode(responses, skip_special_tokens=True)
            inside, tokens = reward_model_scores(ctx, [PROMPT], completions, torch.tensor([True]), input_ids, mask,
                                                 torch.tensor([input_ids.size(1) - 1]))
        own = AutoTokenizer.from_pretrained(root / reward_dir)
        direct = score_texts(reward, own, [PROMPT], [COMPLETION])
        torch.testing.assert_close(inside.float().cpu(), direct, rtol=0, atol=1e-5)
        assert tokens == len(own(PROMPT + COMPLETION + own.eos_token, add_special_tokens=False)["input_ids"])


def _bad_recipe(root: Path, where: Path, row: str) -> Path:
    path = where / f"bad-{abs(hash(row))}.toml"
    path.write_text(f'[data]\nname = "preference_jsonl"\npath = "{root / "prefs.jsonl"}"\nchat_format = "plain"\n'
                    f'[[models]]\nname = "m"\n{row}\n[grid]\nalgorithms = ["rloo"]\n')
    return path


def test_bad_given_models_are_refused_in_one_line(checkpoints, tmp_path):
    """Each bad input: exit 2, one line naming the key and what is allowed, no traceback, nothing written."""
    root = checkpoints
    two_labels = save_model(tmp_path / "rm2", "llama", "word", classifier=True, num_labels=2)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in os.listdir(root / "my_sft"):
        if not name.endswith(".safetensors"):
            (no_weights / name).write_bytes((root / "my_sft" / name).read_bytes())
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((root / "my_sft" / name).read_bytes())
    cases = [
        (f'policy = "{root / "my_sft"}"\nreward = "{two_labels}"\ntrain_sft = false\ntrain_reward = false',
         "models[0].reward: checkpoint", "has 2 labels (num_labels = 2); train_reward = false needs a reward model with num_labels = 1"),
        (f'policy = "{no_weights}"\nreward = "{root / "my_rm"}"\ntrain_sft = false\ntrain_reward = false',
         "models[0].policy: checkpoint", "has no weights (none of model.safetensors"),
        (f'policy = "{no_tokenizer}"\nreward = "{root / "my_rm"}"\ntrain_sft = false\ntrain_reward = false',
         "models[0].policy: checkpoint", "has no tokenizer (none of tokenizer.json"),
        (f'policy = "{root / "my_sft"}"\nreward = "{no_tokenizer}"\ntrain_reward = true',
         "models[0].reward: checkpoint", "has no tokenizer"),
        (f'policy = "{root / "my_sft"}"\nreward = "{root / "my_sft"}"\ntrain_reward = false',
         "models[0].reward: checkpoint", "is a Qwen2ForCausalLM, not a ...ForSequenceClassification"),
        ('policy = "qwen2:tiny"\ntrain_sft = false',
         "models[0].train_sft: false needs policy to be an SFT checkpoint directory", "'qwen2:tiny' is a preset"),
        (f'policy = "llama:tiny"\nreward = "llama:tiny"\ntrain_reward = false',
         "models[0].train_reward: false needs reward to be a trained reward-model checkpoint directory", "preset"),
    ]
    for i, (row, where, what) in enumerate(cases):
        path = _bad_recipe(root, tmp_path, row)
        out_dir = tmp_path / f"out{i}"
        commands = (["validate", path],) if i % 2 else (["validate", path], ["run", path, "--output", out_dir])
        for command in commands:
            done = run_cli(*command)
            assert done.returncode == 2, (row, done.stdout + done.stderr)
            assert where in done.stderr and what in done.stderr, done.stderr
            assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not out_dir.exists()


def test_artifact_keys_follow_the_checkpoint(checkpoints, tmp_path):
    """A given checkpoint's artifact key covers its path and content: rewriting a file gives a new key; rows
    with trained stages keep their keys (the default recipe's artifacts are not rebuilt)."""
    import shutil

    from rlhfkit.artifacts import artifact_dirs
    from rlhfkit.recipe import load_recipe

    for name in ("my_sft", "my_rm"):
        shutil.copytree(checkpoints / name, tmp_path / name)
    shutil.copy(checkpoints / "prefs.jsonl", tmp_path / "prefs.jsonl")
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(docs_recipe().replace("./my_sft", str(tmp_path / "my_sft")).replace("./my_rm", str(tmp_path / "my_rm")))
    recipe = load_recipe(recipe_path)
    entry = recipe.models["my-sft"]
    first = artifact_dirs(recipe, entry, tmp_path / "a")
    assert first.reward_tokenizer == first.reward_model
    config = tmp_path / "my_rm" / "config.json"
    config.write_text(config.read_text() + " ")
    second = artifact_dirs(recipe, entry, tmp_path / "a")
    assert second.reward_model != first.reward_model and second.sft == first.sft
    (tmp_path / "my_sft" / "model.safetensors").write_bytes((tmp_path / "my_sft" / "model.safetensors").read_bytes())
    os.utime(tmp_path / "my_sft" / "model.safetensors", ns=(1, 1))
    third = artifact_dirs(recipe, entry, tmp_path / "a")
    assert third.sft != second.sft and third.tokenizer != second.tokenizer

    default = load_recipe(REPO / "recipes" / "ppo_vs_rloo.toml")
    dirs = artifact_dirs(default, default.models["llama-tiny"], Path("/x"))
    assert (dirs.tokenizer.name, dirs.sft.name, dirs.reward_model.name, dirs.reward_tokenizer) == (
        "tokenizer-00a91ee490b70c6d", "sft-dbcdb27351dab2a1", "reward-89e5fdcdbcf74ebe", None)


def test_critic_start_rule():
    from types import SimpleNamespace

    from rlhfkit.cellspec.modelset import MemoryPlan, critic_start, derive_model_set

    ppo = SimpleNamespace(needs_value_model=True, critic_from="reward_model")
    assert critic_start(ppo, True) == "reward_model" and critic_start(ppo, False) == "sft"
    plan = MemoryPlan(strategy="full")
    assert derive_model_set(plan, ppo).critic.start == "reward_model"
    other = derive_model_set(plan, ppo, reward_reads_policy_tokens=False)
    assert other.critic.start == "sft" and other.critic.arch_of == "policy" and other.critic.head == "classifier"


def test_chat_template_of_a_given_reward_model():
    """A given reward model whose tokenizer ships a chat template is scored on the rendered conversation."""
    from rlhfkit.engine.reward_tokens import RewardTokenizer

    tok = tokenizer("bpe")
    plain = RewardTokenizer(tok)
    assert plain.texts([PROMPT], [COMPLETION], [True]) == [PROMPT + COMPLETION + tok.eos_token]
    assert plain.texts([PROMPT], [COMPLETION], [False]) == [PROMPT + COMPLETION]
    assert plain.pad_id == tok.pad_token_id
    tok.pad_token = None  # a given reward model without a pad token: its EOS fills the (masked) left padding
    assert plain.pad_id == tok.eos_token_id and len(tok) == len(tok.get_vocab())
    ids, mask = plain.encode([PROMPT, "a"], [COMPLETION, "b"], [True, False], "cpu")
    assert ids[1, 0] == tok.eos_token_id and mask[1, 0] == 0 and mask[0].all()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    templated = RewardTokenizer(tok, chat_template=True)
    assert templated.texts([PROMPT], [COMPLETION], [True]) == [f"<user>{PROMPT}<assistant>{COMPLETION}"]


def _recipe(tmp_path: Path, root: Path, row: str, algorithms: str = '["rloo"]') -> Path:
    path = tmp_path / "r.toml"
    path.write_text(f'[data]\nname = "preference_jsonl"\npath = "{root / "prefs.jsonl"}"\nchat_format = "plain"\n'
                    f'num_eval_prompts = 4\n[[models]]\nname = "m"\n{row}\n[grid]\nalgorithms = {algorithms}\n'
                    '[reward_model]\nepochs = 1\nbatch_size = 8\n[run]\nthreads_per_cell = 1\n')
    return path


def test_reward_model_trained_from_another_family_keeps_its_own_tokenizer(checkpoints, tmp_path):
    """train_reward = true from a Llama checkpoint beside a Qwen2 policy: the reward stage trains it on its own
    tokenizer (embedding rows = its own vocabulary, not resized to the policy's); a rerun finds it cached."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from rlhfkit.artifacts import artifact_dirs
    from rlhfkit.recipe import load_recipe
    from rlhfkit.stages.pipeline import run_stages

    root = checkpoints
    path = _recipe(tmp_path, root, f'policy = "{root / "my_sft"}"\nreward = "{root / "my_rm"}"\ntrain_sft = false')
    spec = {"recipe": str(path), "model": "m", "artifacts_root": str(tmp_path / "artifacts"), "threads": 1}
    metrics = run_stages(spec)
    assert metrics["stages"] == {"tokenizer": "given", "sft": "given", "reward_model": "trained"}
    assert metrics["reward/tokenizer"] == "own" and metrics["reward/train_pairs"] > 0
    recipe = load_recipe(path)
    dirs = artifact_dirs(recipe, recipe.models["m"], tmp_path / "artifacts")
    own = AutoTokenizer.from_pretrained(root / "my_rm")
    saved = AutoTokenizer.from_pretrained(dirs.reward_tokenizer)
    assert saved.get_vocab() == own.get_vocab()  # it had a pad token: nothing added
    weights = load_file(str(dirs.reward_model / "model.safetensors"))
    assert weights["model.embed_tokens.weight"].shape[0] == len(own)
    assert run_stages(spec)["stages"] == {"tokenizer": "given", "sft": "given", "reward_model": "cached"}


def test_given_policy_without_pad_token_gets_one_row(checkpoints, tmp_path):
    """A given SFT checkpoint whose tokenizer has no pad token: the tokenizer stage adds one; the embedding
    matrix has no spare row, so the SFT artifact is a copy with one row more, the others unchanged."""
    from safetensors.torch import load_file
    import torch

    from rlhfkit.recipe import ModelEntry
    from rlhfkit.stages.pipeline import PAD_TOKEN, ensure_given_sft, ensure_tokenizer

    ckpt = save_model(tmp_path / "nopad", "llama", "word", classifier=False)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    entry = ModelEntry(name="n", policy=str(ckpt), train_sft=False)
    tok = ensure_tokenizer(entry, None, tmp_path / "tokenizer")
    assert tok.pad_token == PAD_TOKEN and len(tok) == 25
    metrics = ensure_given_sft(entry, tok, tmp_path / "sft")
    assert metrics["sft/embedding_rows"] == 24 and metrics["sft/embedding_rows_added"] == 1
    old = load_file(str(ckpt / "model.safetensors"))["model.embed_tokens.weight"]
    new = load_file(str(tmp_path / "sft" / "model.safetensors"))["model.embed_tokens.weight"]
    assert new.shape[0] == 25 and torch.equal(new[:24], old)


def test_planner_sizes_the_critic_from_the_policy(checkpoints, tmp_path):
    """`rlhfkit plan` on a given-models row: PPO's critic starts from the SFT policy (the reward model reads
    another vocabulary) and is sized with the policy's architecture."""
    from rlhfkit.cellspec.arch import cell_model_set, reward_reads_policy_tokens
    from rlhfkit.planner import plan_recipe
    from rlhfkit.recipe import load_recipe

    root = checkpoints
    path = _recipe(tmp_path, root, f'policy = "{root / "my_sft"}"\nreward = "{root / "my_rm"}"\ntrain_sft = false\n'
                                   'train_reward = false', algorithms='["ppo", "rloo"]')
    recipe = load_recipe(path)
    assert not reward_reads_policy_tokens(recipe, "m")
    ppo = next(c for c in recipe.cells() if c.algorithm == "ppo")
    assert cell_model_set(recipe, ppo, False).critic.start == "sft"
    plans = plan_recipe(recipe, gpu="h100")
    assert len(plans) == 2 and all(p.fits for p in plans)
    same = _recipe(tmp_path, root, f'policy = "{root / "my_sft"}"\nreward = "{root / "qwen_rm"}"\ntrain_sft = false\n'
                                   'train_reward = false', algorithms='["ppo"]')
    recipe = load_recipe(same)  # same vocabulary: the critic starts from the reward model, as before
    assert reward_reads_policy_tokens(recipe, "m")
    assert cell_model_set(recipe, recipe.cells()[0], False).critic.start == "reward_model"


def test_a_checkpoint_tokenizer_that_loses_the_prompts_words_is_refused(tmp_path):
    """transformers 5 loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer whatever tokenizer_config.json says:
    a word-level vocabulary saved beside a Qwen2 model then reads "review : the song was " as ":" (every word
    lost), and a run would train on prompts without their words.  Refused before anything runs, in one line."""
    save_model(tmp_path / "qwen_word", "qwen2", "word", classifier=False)
    save_model(tmp_path / "rm", "llama", "word", classifier=True, seed=1)
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs()))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\nname = "preference_jsonl"\npath = "{tmp_path}/prefs.jsonl"\nchat_format = "plain"\n'
                      f'[[models]]\nname = "m"\npolicy = "{tmp_path}/qwen_word"\nreward = "{tmp_path}/rm"\n'
                      'train_sft = false\ntrain_reward = false\n')
    for command in ("validate", "run"):
        out = run_cli(command, recipe, *(["--output", tmp_path / "out"] if command == "run" else []))
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and "models[0].policy" in lines[0], out.stderr
        assert "reads " in lines[0] and "back as" in lines[0]
    assert not (tmp_path / "out").exists()
