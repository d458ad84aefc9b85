"""Issue 15 item 4: chat templates and conversation-format preference data.

A tiny word-level tokenizer gets a small Jinja chat template (saved locally, nothing downloaded).  Prompts of a
tokenizer with a template are formatted with it (``apply_chat_template(..., add_generation_prompt=True)``) for
the SFT/RM/DPO stages, RL and evaluation alike; ``[data] chat_template = "off"`` keeps the data's text; a
tokenizer without a template (every tiny preset) leaves the task untouched, so default numbers cannot move.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from rlhfkit import plugins
from rlhfkit.chat import OriginalPromptGold, chat_task, prompt_messages
from rlhfkit.recipe import RecipeError, parse_recipe
from rlhfkit.registry import resolve

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIALS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def templated_tokenizer(texts, template: str | None = TEMPLATE):
    """A word-level tokenizer trained on ``texts``, with the template's role markers as special tokens."""
    from rlhfkit.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, "word", 512)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    if template:
        tokenizer.chat_template = template
    return tokenizer


def synthetic_task(seed: int = 0, **options):
    recipe = parse_recipe({"data": {"name": "synthetic", **options}, "models": [{"name": "m", "policy": "llama:tiny"}]})
    spec = plugins.get_registry().get("dataset", "synthetic")
    return resolve(spec.build)(recipe.data_options, seed)


CONVERSATIONS = [
    {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "name a colour"}],
     "chosen": [{"role": "assistant", "content": "blue"}], "rejected": [{"role": "assistant", "content": "seven"}]},
    {"prompt": [{"role": "user", "content": "two plus two"}, {"role": "assistant", "content": "four"},
                {"role": "user", "content": "and three plus three"}],
     "chosen": [{"role": "assistant", "content": "six"}], "rejected": [{"role": "assistant", "content": "ten"}]},
    {"prompt": [{"role": "user", "content": "say hello"}],
     "chosen": [{"role": "assistant", "content": "hello there"}], "rejected": [{"role": "assistant", "content": "no"}]},
]


def conversation_task(tmp_path: Path, chat_format: str = "hh"):
    path = tmp_path / "conv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CONVERSATIONS * 4))
    table = {"name": "preference_jsonl", "path": str(path), "chat_format": chat_format, "eval_fraction": 0.25}
    recipe = parse_recipe({"data": table, "models": [{"name": "m", "policy": "llama:tiny"}]})
    return resolve(plugins.get_registry().get("dataset", "preference_jsonl").build)(recipe.data_options, 0)


# -- reading a prompt's conversation back ------------------------------------------------------------------


def test_prompt_messages_reads_hh_plain_and_plain_text():
    assert prompt_messages("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:") == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    assert prompt_messages("\n\nSystem: be kind\n\nHuman: hi\n\nAssistant:") == [
        {"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    assert prompt_messages("user: hi\nassistant: hello\nuser: bye\nassistant:") == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    # anything else is one user message (a synthetic prompt, an HH text without an open assistant turn)
    assert prompt_messages("write a short note about the city :") == [
        {"role": "user", "content": "write a short note about the city :"}]
    assert prompt_messages("\n\nHuman: hi\n\nAssistant: done") == [
        {"role": "user", "content": "\n\nHuman: hi\n\nAssistant: done".strip()}]


def test_prompt_messages_reads_a_truncated_hh_prompt():
    """``long_prompts = "truncate"`` may cut inside the last human turn: the fragment is that speaker's turn."""
    assert prompt_messages("of a question?\n\nAssistant:") == [{"role": "user", "content": "of a question?"}]
    assert prompt_messages("an answer tail.\n\nHuman: next\n\nAssistant:") == [
        {"role": "assistant", "content": "an answer tail."}, {"role": "user", "content": "next"}]


SHARED_HH = [base / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
             for base in (Path(__file__).resolve().parents[2], Path(__file__).resolve().parents[3])]


@pytest.mark.skipif(not any(p.is_file() for p in SHARED_HH), reason="shared HH-RLHF file not found")
@pytest.mark.parametrize("extra", [{}, {"max_prompt_chars": 240}])
def test_every_real_hh_prompt_reads_back_as_turns(extra):
    """On the shared harmless-base test file (2,139 RL and evaluation prompts) every prompt becomes a conversation
    that starts and ends with a user turn; none falls back to one message holding the raw transcript."""
    path = next(p for p in SHARED_HH if p.is_file())
    recipe = parse_recipe({"data": {"name": "hh_rlhf", "path": str(path), **extra},
                           "models": [{"name": "m", "policy": "llama:tiny"}]})
    task = resolve(plugins.get_registry().get("dataset", "hh_rlhf").build)(recipe.data_options, 0)
    prompts = task.rl_prompts + task.eval_prompts
    conversations = [prompt_messages(p) for p in prompts]
    assert len(conversations) > 2000
    assert all(c[0]["role"] == "user" and c[-1]["role"] == "user" for c in conversations)
    # one message per closed turn (the open "Assistant:" at the end is the generation prompt)
    assert all(len(c) >= p.count("\n\nHuman:") + p.count("\n\nAssistant:") - 1 for p, c in zip(prompts, conversations))


# -- the task -------------------------------------------------------------------------------------------------


def test_no_template_or_off_leaves_the_task_itself():
    """Tiny presets have no template: the task object is returned as is, so no number can change."""
    task = synthetic_task(num_sft=20, num_pairs=20, num_eval_pairs=5)
    plain = templated_tokenizer(task.tokenizer_corpus(), template=None)
    assert chat_task(task, plain, "auto") is task
    assert chat_task(task, templated_tokenizer(task.tokenizer_corpus()), "off") is task
    with pytest.raises(ValueError, match="data.chat_template: 'on' is not allowed; allowed: auto, off"):
        chat_task(task, plain, "on")


def test_template_formats_every_prompt_of_the_task_and_keeps_gold_on_the_data_text():
    task = synthetic_task(num_sft=20, num_pairs=20, num_eval_pairs=5)
    tokenizer = templated_tokenizer(task.tokenizer_corpus())
    chatted = chat_task(task, tokenizer, "auto")

    def fmt(prompt):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)

    assert chatted.rl_prompts == [fmt(p) for p in task.rl_prompts]
    assert chatted.eval_prompts == [fmt(p) for p in task.eval_prompts]
    assert chatted.rl_prompts[0] == f"<|user|> {task.rl_prompts[0]} <|end|> <|assistant|> "
    for before, after in ((task.sft, chatted.sft), (task.pairs, chatted.pairs), (task.eval_pairs, chatted.eval_pairs)):
        assert [r["prompt"] for r in after] == [fmt(r["prompt"]) for r in before]
    # answers are the assistant turn's content: the space after the data's prompt is dropped, nothing else
    assert [r["completion"] for r in chatted.sft] == [r["completion"][1:] for r in task.sft]
    assert [(p["chosen"], p["rejected"]) for p in chatted.pairs] == [(p["chosen"][1:], p["rejected"][1:]) for p in task.pairs]
    assert chatted.stats["chat_template"] == "applied" and "chat_template" not in task.stats
    # the gold reward reads the data's own prompt (a task's gold may parse it)
    assert isinstance(chatted.gold_reward, OriginalPromptGold)
    completions = [" good great", " bad"]
    assert chatted.gold_reward(chatted.eval_prompts[:2], completions) == task.gold_reward(task.eval_prompts[:2], completions)
    seen = []
    chatted.gold_reward.gold = lambda prompts, completions: seen.extend(prompts) or [0.0] * len(prompts)
    chatted.gold_reward(chatted.eval_prompts[:2], completions)
    assert seen == task.eval_prompts[:2]


@pytest.mark.parametrize("chat_format", ["hh", "plain"])
def test_conversation_rows_go_through_the_template(tmp_path, chat_format):
    """TRL's conversational rows (lists of {"role", "content"}) are read by preference_jsonl, rendered as text
    (the fallback without a template) and, with a template, formatted exactly as apply_chat_template formats the
    row's own messages."""
    task = conversation_task(tmp_path, chat_format)
    fallback = {r["prompt"] for r in task.pairs + task.eval_pairs}
    if chat_format == "hh":
        assert "\n\nSystem: be kind\n\nHuman: name a colour\n\nAssistant:" in fallback
    else:
        assert "system: be kind\nuser: name a colour\nassistant:" in fallback
    tokenizer = templated_tokenizer([json.dumps(r) for r in CONVERSATIONS])
    chatted = chat_task(task, tokenizer, "auto")
    expected = {tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True): r
                for r in CONVERSATIONS}
    assert {p["prompt"] for p in chatted.pairs + chatted.eval_pairs} == set(expected)
    for pair in chatted.pairs + chatted.eval_pairs:
        row = expected[pair["prompt"]]
        assert pair["chosen"] == row["chosen"][0]["content"] and pair["rejected"] == row["rejected"][0]["content"]
    assert "<|system|> be kind <|end|> <|user|> name a colour <|end|> <|assistant|> " in expected


def test_a_template_that_refuses_the_prompt_is_one_line():
    task = synthetic_task(num_sft=5, num_pairs=5, num_eval_pairs=2)
    strict = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system turn must come first') }}{% endif %}"
    tokenizer = templated_tokenizer(task.tokenizer_corpus(), template=strict)
    with pytest.raises(ValueError) as info:
        chat_task(task, tokenizer, "auto")
    message = str(info.value)
    assert "\n" not in message and "a system turn must come first" in message
    assert 'set [data] chat_template = "off"' in message


# -- the recipe setting ------------------------------------------------------------------------------------------


def test_recipe_setting_and_stage_keys(tmp_path):
    """``[data] chat_template``: auto (default) or off, refused otherwise in one line; it enters the stage keys of a
    checkpoint policy only, so preset keys (and every default number) stay as they were."""
    from rlhfkit.artifacts import artifact_dirs

    def recipe(extra: dict, policy="llama:tiny"):
        return parse_recipe({"data": {"name": "synthetic", **extra}, "models": [{"name": "m", "policy": policy}]})

    assert recipe({}).chat_template == "auto" and recipe({"chat_template": "off"}).chat_template == "off"
    with pytest.raises(RecipeError, match=r"data: chat_template must be one of"):
        recipe({"chat_template": "on"})
    root = tmp_path / "art"
    default = recipe({})
    assert (artifact_dirs(default, default.models["m"], root)
            == artifact_dirs(recipe({"chat_template": "off"}), default.models["m"], root))
    checkpoint = tmp_path / "ckpt"
    save_tiny_checkpoint(checkpoint, templated_tokenizer(["a b c"]))
    auto, off = recipe({}, str(checkpoint)), recipe({"chat_template": "off"}, str(checkpoint))
    a, o = artifact_dirs(auto, auto.models["m"], root), artifact_dirs(off, off.models["m"], root)
    assert a.tokenizer == o.tokenizer and a.sft != o.sft and a.reward_model != o.reward_model


def test_bad_chat_template_value_is_one_line_exit_2(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[data]\nchat_template = "yes"\n[[models]]\nname = "m"\npolicy = "llama:tiny"\n')
    out = run_cli("validate", path)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "data: chat_template must be one of" in lines[0] and "'yes'" in lines[0], out.stderr


# -- end to end: stages and cell see the same formatted prompts --------------------------------------------------


def save_tiny_checkpoint(directory: Path, tokenizer) -> None:
    from transformers import LlamaForCausalLM, set_seed

    from rlhfkit.testing import tiny_llama_config

    set_seed(0)
    config = tiny_llama_config(tokenizer)
    config.max_position_embeddings = 128
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


RECIPE = """
name = "chat"
[data]
name = "synthetic"
num_sft = 40
num_pairs = 40
num_eval_pairs = 8
num_eval_prompts = 4
{chat}
[[models]]
name = "m"
policy = "{policy}"
[grid]
algorithms = ["rloo"]
[sft]
epochs = 1
batch_size = 8
[reward_model]
epochs = 1
batch_size = 8
[rl]
steps = 1
batch_size = 4
response_length = 4
eval_batch_size = 4
[algorithms.rloo]
k = 2
[run]
threads_per_cell = 1
"""


@pytest.mark.slow
def test_checkpoint_with_template_stages_and_cell_read_formatted_prompts(tmp_path):
    """A checkpoint whose tokenizer has a template: the stages train on formatted prompts (the SFT policy learns
    the template's markers) and the cell samples from formatted prompts; with "off", neither does."""
    from rlhfkit.artifacts import artifact_dirs
    from rlhfkit.cellspec.build import build_cell
    from rlhfkit.recipe import load_recipe
    from rlhfkit.stages.pipeline import build_task, load_tokenizer, run_stages

    task = synthetic_task()
    checkpoint = tmp_path / "ckpt"
    save_tiny_checkpoint(checkpoint, templated_tokenizer(task.tokenizer_corpus()))
    for mode in ("auto", "off"):
        recipe_path = tmp_path / f"{mode}.toml"
        recipe_path.write_text(textwrap.dedent(RECIPE.format(chat=f'chat_template = "{mode}"', policy=checkpoint)))
        root = tmp_path / f"art-{mode}"
        metrics = run_stages({"recipe": str(recipe_path), "model": "m", "artifacts_root": str(root), "threads": 1})
        assert metrics["data/stats"].get("chat_template") == ("applied" if mode == "auto" else None)
        recipe = load_recipe(recipe_path)
        dirs = artifact_dirs(recipe, recipe.models["m"], root)
        assert load_tokenizer(dirs.tokenizer).chat_template == TEMPLATE  # the artifact keeps the template
        cell = recipe.cells()[0]
        built = build_cell({"recipe": str(recipe_path), "cell": cell.as_dict(), "artifacts_root": str(root), "threads": 1})
        prompts = built.ctx.task.rl_prompts + built.ctx.task.eval_prompts
        if mode == "auto":
            assert all(p.startswith("<|user|> write a ") and p.endswith(" <|end|> <|assistant|> ") for p in prompts)
        else:
            own = build_task(recipe)
            assert prompts == own.rl_prompts + own.eval_prompts
