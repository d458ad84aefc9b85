"""Review of issue 15 (given checkpoints, reward model with its own tokenizer, chat templates, DPO stage):
regressions for what the review found and fixed, and the DPO maths checked on a case computed by hand.
Fast: no subprocess grid (the runs the review did by hand are in its report)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from conftest import run_cli

sys.path.insert(0, str(Path(__file__).parent))


# -- DPO maths ----------------------------------------------------------------------------------------------


def test_dpo_loss_and_implicit_reward_match_the_paper_on_a_hand_case():
    """-log sigmoid(beta * ((logpi_c - logref_c) - (logpi_r - logref_r))), computed by hand."""
    import torch

    from rlhfkit.stages.dpo import implicit_reward_metrics

    policy = torch.tensor([[-2.0, -3.0], [-4.0, -1.0]])  # (chosen, rejected) summed log-probs
    ref = torch.tensor([[-2.5, -2.5], [-3.0, -3.0]])
    beta = 0.5
    # pair 0: rewards 0.25, -0.25 -> margin 0.5; pair 1: rewards -0.5, 1.0 -> margin -1.5
    loss0 = -math.log(1 / (1 + math.exp(-0.5)))  # 0.474077
    loss1 = -math.log(1 / (1 + math.exp(1.5)))  # 1.701413
    m = implicit_reward_metrics(policy, ref, beta, "dpo/x_")
    assert m["dpo/x_loss"] == pytest.approx((loss0 + loss1) / 2, abs=1e-6)
    assert m["dpo/x_margin"] == pytest.approx((0.5 - 1.5) / 2, abs=1e-6)
    assert m["dpo/x_chosen_reward"] == pytest.approx((0.25 - 0.5) / 2, abs=1e-6)
    assert m["dpo/x_rejected_reward"] == pytest.approx((-0.25 + 1.0) / 2, abs=1e-6)
    assert m["dpo/x_reward_accuracy"] == 0.5
    # before training (policy == reference) every margin is 0 and the loss is log 2
    same = implicit_reward_metrics(ref, ref, beta, "p_")
    assert same["p_loss"] == pytest.approx(math.log(2)) and same["p_reward_accuracy"] == 0.0


def test_answer_logps_sum_the_answer_tokens_only_whatever_the_padding():
    """The summed log-probability of an answer (EOS included, prompt excluded), one sequence at a time by hand,
    equals the batched, right-padded value of :func:`answer_logps`."""
    import torch

    from rlhfkit.plugins import get_registry
    from rlhfkit.stages.dpo import answer_logps

    adapter = get_registry().get("model_adapter", "llama")
    config = adapter.preset_config("tiny", vocab_size=50, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = adapter.causal_lm_from_config(config).eval()
    encoded = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 2], "rejected_ids": [10, 2]},
        {"prompt_ids": [11], "chosen_ids": [12, 2], "rejected_ids": [13, 14, 15, 16, 2]},
    ]

    def by_hand(prompt, answer):
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        return sum(float(logp[len(prompt) + i - 1, tok]) for i, tok in enumerate(answer))

    expected = torch.tensor([[by_hand(e["prompt_ids"], e[k]) for k in ("chosen_ids", "rejected_ids")] for e in encoded])
    for batch in (1, 3, 64):
        got = answer_logps(model, encoded, pad_id=0, batch_size=batch)
        assert torch.allclose(got, expected, atol=1e-4), (batch, got, expected)


# -- [dpo] values: the message names the value ----------------------------------------------------------------


@pytest.mark.parametrize("table, message", [
    ("beta = 0.0", "dpo: beta must be > 0 (got 0.0)"),
    ("epochs = 0", "dpo: epochs must be >= 1 (got 0)"),
    ("warmup_ratio = 1.0", "dpo: warmup_ratio must be in [0, 1) (got 1.0)"),
    ("max_pairs = -3", "dpo: max_pairs must be >= 0, 0 = all (got -3)"),
])
def test_bad_dpo_value_is_named(tmp_path, table, message):
    path = tmp_path / "r.toml"
    path.write_text(f'[[models]]\nname = "m"\npolicy = "llama:tiny"\ndpo = true\n[dpo]\n{table}\n')
    out = run_cli("validate", path)
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr and list(tmp_path.iterdir()) == [path]


# -- a given reward model's own chat template -----------------------------------------------------------------


RM_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"


def _rm_tokenizer(template=RM_TEMPLATE):
    from rlhfkit.tokenizer import train_tokenizer

    tok = train_tokenizer(["hello there how are you", "blue seven name a colour"], "word", 64)
    tok.chat_template = template
    return tok


def test_reward_template_renders_the_conversation_not_the_policys_template_text(tmp_path):
    """Before: a policy with a chat template made the reward model's template wrap the policy's rendered prompt
    (``[user]<|user|> name a colour <|end|><|assistant|> [assistant]blue``).  Now the data's own conversation
    is rendered by the reward model's template."""
    from test_chat_templates import conversation_task, templated_tokenizer

    from rlhfkit.chat import chat_task
    from rlhfkit.engine.reward_tokens import RewardTokenizer

    task = conversation_task(tmp_path)
    policy_tok = templated_tokenizer([p["prompt"] + p["chosen"] for p in task.pairs])
    chatted = chat_task(task, policy_tok, "auto")
    reader = RewardTokenizer(_rm_tokenizer(), chat_template=True)
    formatted = next(p for p in chatted.rl_prompts + chatted.eval_prompts if "colour" in p)
    assert "<|user|>" in formatted
    text = reader.texts([formatted], ["blue"], [True])[0]
    assert text == "[system]be kind[user]name a colour[assistant]blue", text
    # a prompt never formatted (the policy has no template): HH turns are read back, plain text stays one turn
    plain = task.rl_prompts[0]
    assert reader.texts([plain], ["x"], [True])[0].startswith("[")
    assert "Human:" not in reader.texts([plain], ["x"], [True])[0]
    assert reader.texts(["review : the movie was "], ["great"], [True]) == ["[user]review : the movie was [assistant]great"]


def test_reward_template_that_raises_is_one_line():
    from rlhfkit.engine.reward_tokens import RewardTokenizer

    reader = RewardTokenizer(_rm_tokenizer("{{ raise_exception('system turn first') }}"), chat_template=True)
    with pytest.raises(ValueError) as info:
        reader.texts(["hi"], ["there"], [True])
    assert "\n" not in str(info.value) and "system turn first" in str(info.value)
    assert "reward model" in str(info.value)


# -- given checkpoints gone or changed ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def given(tmp_path_factory):
    from test_byo_models import pairs, save_model

    root = tmp_path_factory.mktemp("given")
    save_model(root / "my sft", "qwen2", "bpe", classifier=False)  # a space in the path
    save_model(root / "rm", "llama", "word", classifier=True, seed=1)
    (root / "prefs.jsonl").write_text("".join(__import__("json").dumps(r) + "\n" for r in pairs()))
    return root


def _row_recipe(tmp_path, root, policy, reward, extra=""):
    path = tmp_path / "r.toml"
    path.write_text(f'[data]\nname = "preference_jsonl"\npath = "{root}/prefs.jsonl"\nchat_format = "plain"\n'
                    f'[[models]]\nname = "m"\npolicy = "{policy}"\nreward = "{reward}"\ntrain_sft = false\n'
                    f'train_reward = false\n{extra}')
    return path


def test_symlinked_and_spaced_checkpoint_paths_key_on_the_target(given, tmp_path):
    """A checkpoint reached through a symlink, or with a space in its path, validates and gets artifacts (the
    key names the path as written, so a link is a second artifact of the same files: a cache miss, never a
    wrong hit)."""
    from rlhfkit.artifacts import artifact_dirs
    from rlhfkit.recipe import load_recipe

    (tmp_path / "link").symlink_to(given / "my sft")
    a = load_recipe(_row_recipe(tmp_path, given, given / "my sft", given / "rm"))
    dirs_a = artifact_dirs(a, a.models["m"], tmp_path / "art")
    b = load_recipe(_row_recipe(tmp_path, given, tmp_path / "link", given / "rm", "dpo = true\n"))
    dirs_b = artifact_dirs(b, b.models["m"], tmp_path / "art")
    assert dirs_a.dpo is None and dirs_b.dpo is not None and dirs_a.reward_model == dirs_b.reward_model
    out = run_cli("validate", _row_recipe(tmp_path, given, tmp_path / "link", given / "rm", "dpo = true\n"))
    assert out.returncode == 0, out.stderr


def test_a_deleted_given_checkpoint_is_one_line_exit_2(given, tmp_path):
    import shutil

    gone = tmp_path / "gone"
    shutil.copytree(given / "rm", gone)
    path = _row_recipe(tmp_path, given, given / "my sft", gone)
    assert run_cli("validate", path).returncode == 0
    shutil.rmtree(gone)
    for command in ("validate", "plan", "run"):
        out = run_cli(command, path, *(["--output", tmp_path / "out"] if command == "run" else []))
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and "models[0].reward" in lines[0], (command, out.stderr)
    assert not (tmp_path / "out").exists()


RAISING = ("{% if messages[0]['role'] != 'system' %}{{ raise_exception('Conversation must start with a system "
           "turn') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")


def _raising_policy(given, tmp_path):
    import json
    import shutil

    policy = tmp_path / "raising"
    shutil.copytree(given / "my sft", policy)
    config = json.loads((policy / "tokenizer_config.json").read_text())
    (policy / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": RAISING}))
    return policy


def test_preflight_renders_the_policy_template_and_dpo_lengths_in_process(given, tmp_path):
    """The fast twin of the two CLI tests below: :func:`rlhfkit.preflight.preflight` refuses in one line."""
    from rlhfkit.preflight import preflight
    from rlhfkit.recipe import load_recipe

    recipe = load_recipe(_row_recipe(tmp_path, given, _raising_policy(given, tmp_path), given / "rm"))
    with pytest.raises(ValueError, match=r"^models\[0\]\.policy .*data\.chat_template: .*system turn") as info:
        preflight(recipe)
    assert "\n" not in str(info.value)
    recipe = load_recipe(_row_recipe(tmp_path, given, given / "my sft", given / "rm", "dpo = true\n[dpo]\nmax_length = 2\n"))
    with pytest.raises(ValueError, match=r"^dpo\.max_length: 2 leaves no answer token"):
        preflight(recipe)
    preflight(load_recipe(_row_recipe(tmp_path, given, given / "my sft", given / "rm", "dpo = true\n")))


@pytest.mark.slow
def test_a_policy_template_that_refuses_the_prompts_is_refused_before_anything_runs(given, tmp_path):
    """Before: validate said ok; run trained nothing, failed the stage and every cell (exit 1, a run directory
    written).  Now validate and run refuse in one line, exit 2, nothing written; ``chat_template = "off"`` passes."""
    path = _row_recipe(tmp_path, given, _raising_policy(given, tmp_path), given / "rm")
    for command in ("validate", "run"):
        out = run_cli(command, path, *(["--output", tmp_path / "out"] if command == "run" else []))
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1, (command, out.stderr)
        assert "models[0].policy" in lines[0] and "chat_template" in lines[0] and "system turn" in lines[0]
    assert not (tmp_path / "out").exists()
    text = path.read_text().replace('chat_format = "plain"', 'chat_format = "plain"\nchat_template = "off"')
    path.write_text(text)
    assert run_cli("validate", path).returncode == 0


@pytest.mark.slow
def test_a_dpo_max_length_no_pair_fits_is_refused_before_anything_runs(given, tmp_path):
    """Before: validate said ok; run failed the DPO stage and every cell (exit 1).  Now one line, exit 2."""
    path = _row_recipe(tmp_path, given, given / "my sft", given / "rm", "dpo = true\n[dpo]\nmax_length = 2\n")
    for command in ("validate", "run"):
        out = run_cli(command, path, *(["--output", tmp_path / "out"] if command == "run" else []))
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("rlhfkit: error:"), (command, out.stderr)
        assert "dpo.max_length: 2" in lines[0] and "models[0]" in lines[0]
    assert not (tmp_path / "out").exists()
    path.write_text(path.read_text().replace("max_length = 2", "max_length = 64"))
    assert run_cli("validate", path).returncode == 0


def test_reward_model_with_its_own_tokenizer_scores_a_ragged_batch_as_each_text_alone(given):
    """Inside the cell (decode with the policy's tokenizer, re-encode with the RM's, left-pad a batch of unequal
    lengths, read at the last token) each score equals the RM's direct score of ``prompt + completion (+ eos)``
    with its own tokenizer, one text at a time (no padding)."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.engine.reward_tokens import RewardTokenizer, reward_model_scores

    policy_tok = AutoTokenizer.from_pretrained(given / "my sft")
    rm_tok = AutoTokenizer.from_pretrained(given / "rm")
    rm = AutoModelForSequenceClassification.from_pretrained(given / "rm").eval()
    prompts = ["review : the movie was ", "review : the book was ", "review : the show was "]
    completions = ["great and nice", "awful", "fine and lovely and superb"]
    ended = [True, False, True]
    rows = [policy_tok(c + (policy_tok.eos_token if e else ""), add_special_tokens=False)["input_ids"]
            for c, e in zip(completions, ended)]
    width = max(map(len, rows))
    pad = policy_tok.pad_token_id if policy_tok.pad_token_id is not None else 0
    responses = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    ctx = SimpleNamespace(reward_model=rm, tokenizer=policy_tok, reward_tokenizer=RewardTokenizer(rm_tok))
    with torch.no_grad():
        decoded = policy_tok.batch_decode(responses, skip_special_tokens=True)
        scores, read = reward_model_scores(ctx, prompts, decoded, torch.tensor(ended),
                                           torch.ones(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long), None)
        direct = []
        for p, c, e in zip(prompts, completions, ended):
            ids = rm_tok(p + c + (rm_tok.eos_token if e else ""), add_special_tokens=False, return_tensors="pt")
            direct.append(float(rm(**ids).logits[0, 0]))
    assert torch.allclose(scores, torch.tensor(direct), atol=1e-5), (scores, direct)
    assert len(set(round(d, 4) for d in direct)) == 3  # three different texts, three different scores


def test_a_given_checkpoint_rewritten_after_a_run_is_refused_for_that_output(given, tmp_path):
    """Found by the review: a given reward model rewritten in place got a new artifact, but the finished cells
    scored by the old one were kept and reported beside new ones.  The run records every given checkpoint's
    content hash; a rerun into the same output with a changed checkpoint is refused in one line."""
    import os
    import shutil

    from rlhfkit.recipe import load_recipe
    from rlhfkit.runner import RunError, _record_run, prepare_output

    rm = tmp_path / "rm"
    shutil.copytree(given / "rm", rm)
    recipe = load_recipe(_row_recipe(tmp_path, given, given / "my sft", rm))
    out = tmp_path / "out"
    prepare_output(recipe, out)
    _record_run(recipe, out)
    prepare_output(recipe, out)  # unchanged: accepted
    weights = next(rm.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    with pytest.raises(RunError, match=r"checkpoint 'm.reward' as it was before it changed"):
        prepare_output(recipe, out)
    prepare_output(recipe, tmp_path / "elsewhere")  # another output is fine
