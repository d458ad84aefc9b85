"""Real preference data sets: HH-RLHF parsing, generic JSONL/Parquet formats, malformed rows counted, hub
refused offline, relative paths, and the recipes that use them.  Fast: no model is trained here.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit import plugins
from rlhfkit.recipe import RecipeError, parse_recipe
from rlhfkit.registry import resolve

REPO = Path(__file__).resolve().parents[1]
SHARED_HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
needs_shared = pytest.mark.skipif(not SHARED_HH.is_file(), reason=f"shared HH-RLHF file not found at {SHARED_HH}")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def build(name: str, table: dict, seed: int = 0):
    """Validate ``[data]`` like a recipe does, then build the task."""
    recipe = parse_recipe({"data": {"name": name, **table}, "models": [{"name": "m", "policy": "llama:tiny"}]})
    spec = plugins.get_registry().get("dataset", name)
    return resolve(spec.build)(recipe.data_options, seed)


def hh(*turns: str) -> str:
    """An HH transcript from alternating Human/Assistant texts."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


GOOD = [
    {"chosen": hh("Hi", "Hello!", "How do I bake bread?", "Mix flour, water, yeast."),
     "rejected": hh("Hi", "Hello!", "How do I bake bread?", "No idea.")},
    {"chosen": hh("What is 2+2?", "4."), "rejected": hh("What is 2+2?", "5.")},
    {"chosen": hh("Name a colour.", "Blue."), "rejected": hh("Name a colour.", "Seven.")},
    {"chosen": hh("Say hi.", "Hi there."), "rejected": hh("Say hi.", "Go away.")},
]


def test_hh_prompt_is_split_at_the_last_assistant_turn():
    from rlhfkit_plugins.datasets.preference import split_hh

    prompt, chosen, rejected = split_hh(GOOD[0]["chosen"], GOOD[0]["rejected"])
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert chosen == " Mix flour, water, yeast." and rejected == " No idea."


def test_hh_rows_and_malformed_rows_are_counted(tmp_path):
    bad = [
        "{not json",
        {"chosen": hh("Q", "A")},  # missing rejected
        {"chosen": hh("Q?", "Same."), "rejected": hh("Q?", "Same.")},  # identical
        {"chosen": "\n\nHuman: no answer turn", "rejected": "\n\nHuman: still none"},
        {"chosen": hh("Q?", ""), "rejected": hh("Q?", "Something.")},  # empty chosen answer
        {"chosen": "Assistant-less text", "rejected": "Other text"},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl.gz", GOOD + bad, gz=True)
    task = build("hh_rlhf", {"path": str(path), "eval_fraction": 0.25, "num_eval_prompts": 4})
    stats = task.stats
    assert stats["rows"] == 10 and stats["clean_pairs"] == 4 and stats["dropped_total"] == 6
    assert stats["dropped"] == {
        "not_json": 1, "missing_keys": 1, "identical": 1, "no_assistant_turn": 2, "empty_completion": 1,
    }
    assert len(task.pairs) == 3 and len(task.eval_pairs) == 1 and stats["pairs"] == 3
    assert task.gold_reward is None and task.tokenizer_kind == "bpe"
    # SFT data are the chosen answers of the training pairs; prompts end with the open assistant turn
    assert [r["completion"] for r in task.sft] == [p["chosen"] for p in task.pairs]
    assert all(p.endswith("\n\nAssistant:") for p in task.rl_prompts + task.eval_prompts)
    assert set(task.eval_prompts) == {p["prompt"] for p in task.eval_pairs}


def test_length_limits_keep_the_last_turns(tmp_path):
    long_history = hh("x " * 200, "y " * 50, "Final question?", "Short answer " * 20)
    rejected = hh("x " * 200, "y " * 50, "Final question?", "Different answer.")
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": long_history, "rejected": rejected}] + GOOD)
    task = build("hh_rlhf", {"path": str(path), "max_prompt_chars": 60, "max_completion_chars": 40})
    pair = next(p for p in task.pairs + task.eval_pairs if "Final question?" in p["prompt"])
    assert pair["prompt"] == "\n\nHuman: Final question?\n\nAssistant:"
    assert len(pair["chosen"]) <= 40 and task.stats["truncated_prompts"] >= 1
    task = build("hh_rlhf", {"path": str(path), "max_prompt_chars": 34, "long_prompts": "drop"})
    assert task.stats["dropped"].get("prompt_too_long", 0) >= 1


@needs_shared
def test_real_hh_rlhf_file():
    task = build("hh_rlhf", {"path": str(SHARED_HH)})
    stats = task.stats
    assert stats["rows"] == 2312
    assert stats["clean_pairs"] == 2308 and stats["dropped"] == {"empty_completion": 4}
    assert stats["pairs"] + stats["eval_pairs"] == 2308
    assert abs(stats["eval_pairs"] - 231) <= 1
    for pair in task.pairs[:200]:
        assert pair["prompt"].startswith("\n\nHuman:") and pair["prompt"].endswith("\n\nAssistant:")
        assert pair["chosen"] != pair["rejected"]
    # the same seed gives the same split; another seed another
    assert build("hh_rlhf", {"path": str(SHARED_HH)}).pairs[:5] == task.pairs[:5]
    assert build("hh_rlhf", {"path": str(SHARED_HH)}, seed=1).pairs[:5] != task.pairs[:5]


@needs_shared
def test_relative_data_path_resolves_against_cwd(monkeypatch):
    monkeypatch.chdir(REPO)
    task = build("hh_rlhf", {"path": "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz", "max_pairs": 100})
    assert task.stats["pairs"] + task.stats["eval_pairs"] == 100


def test_missing_file_is_a_one_line_recipe_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("hh_rlhf", "preference_jsonl"):
        with pytest.raises(RecipeError, match=r"data\.path: 'nope/x\.jsonl' is not a file .*relative paths") as info:
            build(name, {"path": "nope/x.jsonl"})
        assert "\n" not in str(info.value)
    with pytest.raises(RecipeError, match="data: path is required"):
        build("hh_rlhf", {})


def test_preference_jsonl_formats(tmp_path):
    rows = [
        # standard, explicit prompt
        {"prompt": "Capital of France?", "chosen": " Paris.", "rejected": " Rome."},
        # standard, implicit prompt (common prefix, cut at a word boundary)
        {"chosen": "The sky is blue today.", "rejected": "The sky is green today."},
        # conversational, explicit prompt
        {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "assistant", "content": "Bye."}]},
        # conversational, implicit prompt
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "22"}]},
        # malformed
        {"prompt": "", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "only chosen"},
        ["not", "a", "dict"],
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    task = build("preference_jsonl", {"path": str(path), "eval_fraction": 0.25})
    assert task.stats["dropped"] == {"empty_prompt": 1, "identical": 1, "missing_keys": 1, "not_object": 1}
    assert task.stats["dropped_at"]["not_object"] == [f"{path}:8"]
    by_prompt = {p["prompt"]: p for p in task.pairs + task.eval_pairs}
    assert by_prompt["Capital of France?"]["chosen"] == " Paris."
    assert by_prompt["The sky is "] == {"prompt": "The sky is ", "chosen": "blue today.", "rejected": "green today."}
    assert by_prompt["\n\nHuman: Hi?\n\nAssistant:"]["rejected"] == " Bye."
    assert by_prompt["\n\nHuman: 2+2?\n\nAssistant:"]["chosen"] == " 4"
    assert task.gold_reward is None


def test_preference_parquet_and_custom_keys(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame(
        {"question": [f"q{i}?" for i in range(6)], "good": [" yes"] * 6, "bad": [" no"] * 5 + [" yes"]}
    )
    path = tmp_path / "prefs.parquet"
    frame.to_parquet(path)
    task = build(
        "preference_jsonl",
        {"path": str(path), "prompt_key": "question", "chosen_key": "good", "rejected_key": "bad"},
    )
    assert task.stats["clean_pairs"] == 5 and task.stats["dropped"] == {"identical": 1}


def test_hub_is_refused_offline_in_one_line():
    with pytest.raises(RecipeError, match=r"data: .*'Anthropic/hh-rlhf'.*load only when online") as info:
        build("hub", {"dataset": "Anthropic/hh-rlhf"})
    assert "\n" not in str(info.value)


def test_options_fields_have_docstrings():
    """Every option of the real-data sets is documented (a string right after the field)."""
    import ast
    import inspect

    from rlhfkit_plugins.datasets import hh_rlhf, hub, preference, preference_jsonl

    for module, cls in ((preference, "PreferenceOptions"), (hh_rlhf, "HHRLHFOptions"),
                        (preference_jsonl, "PreferenceFileOptions"), (hub, "HubOptions")):
        tree = ast.parse(inspect.getsource(getattr(module, cls)))
        body = tree.body[0].body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), (cls, node.target.id)


@pytest.mark.parametrize("recipe", ["recipes/families.toml", "recipes/hh_rlhf_tiny.toml"])
def test_recipes_validate(recipe):
    if "hh_rlhf" in recipe and not SHARED_HH.is_file():
        pytest.skip(f"shared HH-RLHF file not found at {SHARED_HH}")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop(plugins.DISABLE_ENV, None)
    out = subprocess.run(
        [sys.executable, "-m", "rlhfkit", "validate", recipe], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout


# --- bad rows and bad files (issue 14) --------------------------------------------------------------------


def _prefs(i: int) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f" Good answer {i}.", "rejected": f" Bad answer {i}."}


def _write_lines(path: Path, lines: list[bytes], gz: bool = False) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_a_latin1_line_among_good_ones_is_dropped_with_its_line(tmp_path, gz):
    good = [json.dumps(_prefs(i)).encode() for i in range(60)]
    latin1 = '{"prompt": "Caf\u00e9?", "chosen": " Oui.", "rejected": " Non."}'.encode("latin-1")
    lines = good[:30] + [latin1] + good[30:]
    path = _write_lines(tmp_path / ("prefs.jsonl.gz" if gz else "prefs.jsonl"), lines, gz=gz)
    task = build("preference_jsonl", {"path": str(path)})
    assert task.stats["clean_pairs"] == 60 and task.stats["dropped"] == {"not_utf8": 1}
    assert task.stats["dropped_at"] == {"not_utf8": [f"{path}:31"]}
    # the same for an HH file
    hh_lines = [json.dumps(r).encode() for r in GOOD] + [json.dumps(GOOD[0]).encode().replace(b"bread", b"p\xe2in")]
    path = _write_lines(tmp_path / "hh.jsonl", hh_lines)
    task = build("hh_rlhf", {"path": str(path), "eval_fraction": 0.25, "num_eval_prompts": 4})
    assert task.stats["dropped"] == {"not_utf8": 1} and task.stats["dropped_at"]["not_utf8"] == [f"{path}:5"]


def test_bad_rows_are_counted_by_reason_with_places(tmp_path):
    rows = [_prefs(i) for i in range(4)] + [
        "[1, 2, 3]",  # line 5: JSON, not an object
        '"just a string"',  # line 6
        "{broken",  # line 7
        {"prompt": "p?", "chosen": 3, "rejected": " no"},  # line 8: a number where text belongs
        {"prompt": "p?", "chosen": "", "rejected": " no"},  # line 9: empty answer
        {"prompt": "p?", "chosen": None, "rejected": " no"},  # line 10
        {"prompt": 7, "chosen": " a", "rejected": " b"},  # line 11
        {"prompt": "p?", "chosen": [{"role": "assistant"}], "rejected": " no"},  # line 12: message w/o content
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    task = build("preference_jsonl", {"path": str(path), "eval_fraction": 0.25})
    assert task.stats["dropped"] == {
        "empty_completion": 1, "missing_keys": 1, "not_json": 1, "not_object": 2, "wrong_type": 3,
    }
    assert task.stats["dropped_at"]["not_object"] == [f"{path}:5", f"{path}:6"]
    assert task.stats["dropped_at"]["wrong_type"] == [f"{path}:8", f"{path}:11", f"{path}:12"]
    assert task.stats["clean_pairs"] == 4


@pytest.mark.parametrize("name", ["preference_jsonl", "hh_rlhf"])
def test_an_empty_file_is_refused_in_one_line_naming_it(tmp_path, name):
    from rlhfkit.preflight import check_dataset as check_data

    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError) as info:
        build(name, {"path": str(path)})
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "empty" in message
    recipe = parse_recipe({"data": {"name": name, "path": str(path)}, "models": [{"name": "m", "policy": "llama:tiny"}]})
    with pytest.raises(ValueError) as checked:
        check_data(name, recipe.data_options)
    assert str(checked.value) == message


def test_zero_usable_rows_are_refused_with_the_reasons_and_places(tmp_path):
    from rlhfkit.preflight import check_dataset as check_data
    from rlhfkit_plugins.datasets.preference_jsonl import PreferenceFileOptions

    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "q?", "answer": " a"}] * 3 + ["not json"])
    options = PreferenceFileOptions(path=str(path))
    with pytest.raises(ValueError) as info:
        check_data("preference_jsonl", options)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "0 usable preference pair(s) in 4 rows" in message
    assert f"missing_keys 3 (first at {path}:1, {path}:2, {path}:3)" in message
    assert f"not_json 1 (first at {path}:4)" in message
    with pytest.raises(ValueError, match="0 usable"):
        build("preference_jsonl", {"path": str(path)})


def test_check_reads_only_until_two_usable_pairs(tmp_path):
    from rlhfkit.preflight import check_dataset as check_data
    from rlhfkit_plugins.datasets.preference_jsonl import PreferenceFileOptions

    path = write_jsonl(tmp_path / "prefs.jsonl", ["{bad"] + [_prefs(i) for i in range(1000)])
    stats = check_data("preference_jsonl", PreferenceFileOptions(path=str(path)))
    assert stats["rows"] == 3 and stats["clean_pairs"] == 2 and stats["dropped"] == {"not_json": 1}
    # data sets without a file have nothing to check
    from rlhfkit_plugins.datasets.synthetic import SyntheticOptions

    assert check_data("synthetic", SyntheticOptions()) == {}


def test_a_damaged_gzip_or_json_file_is_one_line_naming_it(tmp_path):
    from rlhfkit.preflight import check_dataset as check_data
    from rlhfkit_plugins.datasets.hh_rlhf import HHRLHFOptions
    from rlhfkit_plugins.datasets.preference_jsonl import PreferenceFileOptions

    full = write_jsonl(tmp_path / "full.jsonl.gz", GOOD * 50, gz=True).read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError) as info:
        build("hh_rlhf", {"path": str(cut)})
    assert "\n" not in str(info.value) and str(cut) in str(info.value) and "cannot be read" in str(info.value)
    bad_json = tmp_path / "prefs.json"
    bad_json.write_bytes(b'[{"prompt": "caf\xe9"')
    with pytest.raises(ValueError) as info:
        check_data("preference_jsonl", PreferenceFileOptions(path=str(bad_json)))
    assert "\n" not in str(info.value) and str(bad_json) in str(info.value)
    assert check_data("hh_rlhf", HHRLHFOptions(path=str(tmp_path / "full.jsonl.gz")))["clean_pairs"] == 2


def test_texts_are_capped_when_read(tmp_path):
    from rlhfkit_plugins.datasets.preference import MAX_TEXT_CHARS

    huge = {"prompt": "Tell me everything?" + " context" * (MAX_TEXT_CHARS // 4),
            "chosen": " word" * (MAX_TEXT_CHARS // 2), "rejected": " Short."}
    path = write_jsonl(tmp_path / "prefs.jsonl", [huge] + [_prefs(i) for i in range(4)])
    task = build("preference_jsonl", {"path": str(path), "eval_fraction": 0.2})
    pair = next(p for p in task.pairs + task.eval_pairs if p["rejected"] == " Short.")
    assert len(pair["prompt"]) == MAX_TEXT_CHARS and len(pair["chosen"]) == MAX_TEXT_CHARS
    assert pair["prompt"].endswith(" context") and task.stats["capped_texts"] == 2
