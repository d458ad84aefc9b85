"""Issue 14: a hostile user's bad input never gets through and never shows a traceback.

Each bad input asserts the exit code (2 for a refusal; 0 where the contract says so, e.g. `rlhfkit report` on a
damaged run directory, which names each damaged cell on one line), the one line (no traceback, names the key
and value) and that nothing was written or lost.  No training: damaged run directories start from
tests/fixtures/run_dir, a finished 2-cell run (trimmed).
"""

import fcntl
import hashlib
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from rlhfkit.cli import main
from rlhfkit.recipe import Cell, RecipeError, check_trainable, load_recipe
from rlhfkit.results import DAMAGED, inspect_result, read_metrics, results_table
from rlhfkit.runner import LOCK_FILE, Runner, RunOutcome, results_fingerprint, results_settings
from rlhfkit.validation import MAX_SEED

BASE = '[[models]]\nname = "m"\npolicy = "llama:tiny"\n'
FIXTURE = REPO / "tests" / "fixtures" / "run_dir"
CELL = "llama-tiny__rloo__full__s1"

# (recipe text added to BASE, or a whole recipe when it starts with "!", and what the one line must say)
BAD_RECIPES = [
    ("[rl]\nlearning_rate = nan\n", "rl.learning_rate: expected a finite number, got nan"),
    ("[rl]\ntemperature = inf\n", "rl.temperature: expected a finite number, got inf"),
    ("[rl]\nadamw_kernel = \"fast\"\n", "adamw_kernel must be one of: auto, foreach, fused"),
    ("[run]\ncell_timeout_s = nan\n", "run.cell_timeout_s: expected a finite number, got nan"),
    ("[algorithms.ppo]\ngamma = -inf\n", "algorithms.ppo.gamma: expected a finite number, got -inf"),
    ("[sft]\nlearning_rate = nan\n", "sft.learning_rate: expected a finite number"),
    ("[grid.sweep]\nkl_coef = [0.1, nan]\n", "grid.sweep.kl_coef[1]: value nan refused for ppo: expected a finite number"),
    (f"[grid]\nseeds = [1, {MAX_SEED + 1}]\n", f"grid.seeds[1]: {MAX_SEED + 1} is out of range; allowed: seeds >= 0 and <= 4,294,966"),
    ("[grid]\nseeds = [-1]\n", "grid.seeds[0]: -1 is out of range"),
    ("[sft]\nseed = -1\n", "sft.seed: -1 is out of range; allowed: seed >= 0"),
    ("[reward_model]\nseed = 9999999999\n", "reward_model.seed: 9999999999 is out of range"),
    ("[run]\ndata_seed = 5000000\n", "run.data_seed: 5000000 is out of range"),
    ("[grid.sweep]\nkl_coef = [0.1, 0.2]\n[tuning]\nseeds = [5000000]\nkl_budget = 1.0\n", "tuning.seeds[0]: 5000000 is out of range"),
    ("[rl]\nmax_grad_norm = -1.0\n", "rl.max_grad_norm: -1.0 is out of range; allowed: max_grad_norm > 0"),
    ("[rl]\nweight_decay = -0.1\n", "rl.weight_decay: -0.1 is out of range; allowed: weight_decay >= 0"),
    ("[rl]\nresponse_length = 1000000000000\n", "rl.response_length: 1000000000000 is out of range; allowed: response_length <= 32,768"),
    ("[rl]\nbatch_size = 1000000000000\n", "rl.batch_size: 1000000000000 is out of range"),
    ("[rl]\nsteps = 1000000000000\n", "rl.steps: 1000000000000 is out of range"),
    ("[rl]\neval_batch_size = 10000000\n", "rl.eval_batch_size: 10000000 is out of range"),
    ("[data]\nnum_eval_prompts = 1000000000000\n", "data.num_eval_prompts: 1000000000000 is out of range"),
    ("[run]\nnum_processes = 100000\n", "run.num_processes: 100000 is out of range"),
    ("[run]\nstage_timeout_s = 0\n", "run.stage_timeout_s: 0.0 is out of range"),
    ("[rl]\nlearning_rate = 0\n", "rl.learning_rate: 0.0 is out of range; allowed: learning_rate > 0"),
    ("[rl]\nsteps = 0\n", "rl.steps: value 0 refused for ppo: steps must be >= 1"),
    ("[rl]\nbatch_size = 6\n", "rl.batch_size: value 6 refused for ppo: batch_size (6) must be divisible by num_minibatches (4)"),
    ('[grid]\nmodels = ["m", "m"]\n', "grid: models[1]: 'm' is listed twice (also models[0])"),
    ('[grid]\nalgorithms = ["ppo", "ppo"]\n', "grid: algorithms[1]: 'ppo' is listed twice"),
    ("[grid]\nseeds = [3, 3]\n", "grid: seeds[1]: 3 is listed twice"),
    ('[grid]\nmemory = ["zero3+lora", "lora+zero3"]\n', "grid.memory[1]: 'lora+zero3' is the same strategy as grid.memory[0] 'zero3+lora'"),
    ('[[models]]\nname = "m"\npolicy = "llama:tiny"\n', "models[1].name: 'm' is used twice"),
    ("[algorithms]\nppo = 5\n", "algorithms.ppo: expected a table ([algorithms.ppo]), got 5"),
    ("!algorithms = 5\n" + BASE, "algorithms: expected [algorithms.<name>] tables, got 5"),
    ('[grid]\nalgorithms = ["ppo"]\n[algorithms.rloo]\nk = 3\n', "algorithms.rloo: batch_size (32) must be divisible by k (3)"),
    ("[algorithms.ppoo]\nnum_epochs = 1\n", "algorithms: unknown 'ppoo'; allowed: dpo, "),
    ('!name = "base\\n"\n' + BASE, "name: 'base\\n' must be letters, digits"),
    ('![[models]]\nname = "m\\n"\npolicy = "llama:tiny"\n', "models[0].name: 'm\\n' contains a control character"),
    ('![[models]]\nname = "m"\npolicy = ""\n', "models[0]: policy must not be empty"),
    ('![[models]]\nname = "m"\npolicy = "qwen2:qwen2-7b"\n', "models[0].policy: 'qwen2:qwen2-7b' is an architecture-only reference"),
    ('[report]\ntrackers = ["trackio"]\n', "report.trackers[0]: tracker 'trackio' is not installed"),
    ('[report]\ntrackers = ["wandbb"]\n', "unknown tracker 'wandbb' (did you mean 'wandb'?)"),
    ("[rll]\nsteps = 1\n", "unknown top-level key 'rll'; allowed: name, description"),
    ("[rl]\nstep = 1\n", "rl: unknown key 'step'; allowed: "),
    ("[algorithms.ppo]\nnum_epoch = 1\n", "algorithms.ppo: unknown key 'num_epoch'; allowed: "),
    ('[grid]\nalgorithms = ["ppoo"]\n', "grid.algorithms[0]: unknown 'ppoo'; allowed: dpo, "),
    ('[grid]\nmemory = ["lorra"]\n', "unknown part 'lorra'; allowed: "),
    ('[data]\nname = "synthetc"\n', "data.name: unknown 'synthetc'; allowed: arithmetic, hh_rlhf, hub, preference_jsonl, synthetic; did you mean 'synthetic'?"),
    ('[report]\nreporters = ["consol"]\n', "report.reporters[0]: unknown 'consol'; allowed: "),
    ('![[models]]\nname = "m"\npolicy = "lama:tiny"\n', "unknown model family 'lama'; allowed: deepseek, llama, minicpm, phi3, qwen2; did you mean 'llama'?"),
    ('![[models]]\nname = "m"\npolicy = "llama:tiyn"\n', "family 'llama' has no preset 'tiyn'"),
    ('[run]\ngpu = "V100"\n', "run: gpu: unknown GPU 'V100'; known: "),
    ('[data]\nname = "hh_rlhf"\npath = "missing.jsonl"\n', "data.path: 'missing.jsonl' is not a file (looked at "),
    ('[data]\nname = "synthetic"\nnum_sft = 1e3\n', "data.num_sft: expected an integer, got 1000.0"),
]
DID_YOU_MEAN = {
    "[rl]\nstep = 1\n": "did you mean 'steps'?",
    "[algorithms.ppo]\nnum_epoch = 1\n": "did you mean 'num_epochs'?",
    '[grid]\nalgorithms = ["ppoo"]\n': "did you mean 'ppo'?",
    '[grid]\nmemory = ["lorra"]\n': "did you mean 'lora'?",
    '[report]\nreporters = ["consol"]\n': "did you mean 'console'?",
    "[rll]\nsteps = 1\n": "did you mean 'rl'?",
    '![[models]]\nname = "m"\npolicy = "llama:tiyn"\n': "did you mean 'tiny'?",
    '[run]\ngpu = "V100"\n': "did you mean one of: 'V100-16GB', 'V100-32GB'?",
}


def write_recipe(tmp_path, text, name="bad.toml"):
    path = tmp_path / name
    path.write_text(text[1:] if text.startswith("!") else BASE + text)
    return path


def listing(path: Path) -> dict:
    """Every file under path with its hash (what "nothing written or lost" compares)."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


@pytest.mark.parametrize("text, message", BAD_RECIPES, ids=[m[:40] for _, m in BAD_RECIPES])
def test_bad_recipe_is_refused_in_one_line(tmp_path, text, message):
    if "trackio" in text and __import__("importlib.util").util.find_spec("trackio") is not None:
        pytest.skip("trackio is installed here")
    path = write_recipe(tmp_path, text)
    before = listing(tmp_path)
    with pytest.raises(RecipeError) as caught:
        check_trainable(load_recipe(path))
    line = str(caught.value)
    assert message in line, line
    assert "\n" not in line.replace("\\n", "")
    assert DID_YOU_MEAN.get(text, "") in line
    assert listing(tmp_path) == before


# Through the real command line: exit 2, one line on stderr, no traceback, the output directory never created.
CLI_CASES = [BAD_RECIPES[0], BAD_RECIPES[6], BAD_RECIPES[14], BAD_RECIPES[24], BAD_RECIPES[29], BAD_RECIPES[36]]


@pytest.mark.parametrize("text, message", CLI_CASES, ids=[m[:30] for _, m in CLI_CASES])
def test_bad_recipe_through_the_cli_writes_nothing(tmp_path, text, message):
    path = write_recipe(tmp_path, text)
    out_dir = tmp_path / "out"
    for command in (["validate", path], ["run", path, "--output", out_dir]):
        out = run_cli(*command)
        assert out.returncode == 2, out.stdout + out.stderr
        assert message in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_planning_only_reference_is_still_planned(tmp_path, capsys):
    path = write_recipe(tmp_path, '![[models]]\nname = "m"\npolicy = "qwen2:qwen2-7b"\nreward = "qwen2:qwen2-0.5b"\n'
                                  '[grid]\nalgorithms = ["rloo"]\n[data]\nnum_sft = 20\nnum_pairs = 20\nnum_eval_pairs = 10\n')
    assert main(["plan", str(path), "--gpu", "h100", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["hardware"] for r in rows} == {"H100-80GB"}


# --- command-line arguments and output directories ---------------------------------------------------------


def run_main(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code, err, *needles, expected=2):
    assert code == expected, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_output_under_a_file_is_refused(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "")
    (tmp_path / "afile").write_text("keep")
    before = listing(tmp_path)
    for output in ("afile/sub", "afile", "afile/sub/deeper"):
        code, _, err = run_main(capsys, "run", recipe, "--output", tmp_path / output)
        assert_one_line(code, err, f"--output {tmp_path / output} is not a directory")
    assert listing(tmp_path) == before


def test_read_only_output_dir_is_refused(tmp_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path, "")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores permission bits: make the check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    before = listing(tmp_path)
    for output, needle in ((locked, "is not writable"), (locked / "sub" / "deeper", f"cannot be created: {locked} is not writable")):
        code, _, err = run_main(capsys, "run", recipe, "--output", output)
        assert_one_line(code, err, needle)
    assert listing(tmp_path) == before
    locked.chmod(0o755)


def test_missing_parents_of_the_output_dir_are_created(tmp_path):
    from rlhfkit.runner import prepare_output

    recipe = load_recipe(write_recipe(tmp_path, ""))
    prepare_output(recipe, tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_version_and_argument_errors_are_one_line(capsys):
    from rlhfkit import __version__

    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"rlhfkit {__version__}"
    for args, needle in (
        (["plan", "x.toml", "--gpu-memory-gib", "-3"], "expected a positive finite number, got '-3'"),
        (["plan", "x.toml", "--gpu-memory-gib", "nan"], "expected a positive finite number, got 'nan'"),
        (["run", "x.toml", "--num-processes", "0"], "expected a positive integer, got '0'"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["run"], "the following arguments are required: recipe"),
        (["validate", "/no/such/recipe.toml"], "recipe '/no/such/recipe.toml' does not exist"),
        (["plan", str(REPO / "recipes" / "seed_table.toml"), "--gpu", "V100"], "unknown GPU 'V100'"),
    ):
        code, _, err = run_main(capsys, *args)
        assert_one_line(code, err, needle)


def test_report_on_what_is_not_a_run_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    for target, needle in (
        (tmp_path / "empty", "is not an rlhfkit run directory (no recipe.toml in it)"),
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "afile", "is not a directory"),
    ):
        before = listing(tmp_path)
        code, _, err = run_main(capsys, "report", target)
        assert_one_line(code, err, needle)
        assert listing(tmp_path) == before


@pytest.fixture
def run_dir(tmp_path):
    target = tmp_path / "run"
    shutil.copytree(FIXTURE, target)
    return target


def test_report_refuses_while_a_run_holds_the_lock(run_dir, capsys):
    before = listing(run_dir)
    with open(run_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run_main(capsys, "report", run_dir)
    assert_one_line(code, err, "another rlhfkit run or report is using", "wait for it to finish")
    assert listing(run_dir) == before | {LOCK_FILE: listing(run_dir)[LOCK_FILE]}


def test_a_different_recipe_is_refused_naming_the_setting(run_dir, tmp_path, capsys):
    text = (run_dir / "recipe.toml").read_text().replace("steps = 2", "steps = 3")
    recipe = tmp_path / "changed.toml"
    recipe.write_text(text)
    before = listing(run_dir)
    code, _, err = run_main(capsys, "run", recipe, "--output", run_dir)
    assert_one_line(code, err, "holds results of a different recipe (rl.steps is 3 here, 2 there)")
    assert listing(run_dir) == before


def test_thread_count_is_in_the_results_fingerprint(monkeypatch):
    raw = {"run": {"parallel_cells": 2}}
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert results_settings(raw)["run"]["threads"] == 4
    eight = results_fingerprint(raw)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert results_fingerprint(raw) != eight  # 8 threads per cell now: other numbers
    fixed = {"run": {"parallel_cells": 2, "threads_per_cell": 1}}
    assert "threads" not in results_settings(fixed)["run"]


# --- damaged run directories --------------------------------------------------------------------------------


def _result(d):
    return d / "cells" / CELL / "result.json"


def _metrics(d):
    return d / "cells" / CELL / "metrics.jsonl"


def _edit_result(d, edit):
    result = json.loads(_result(d).read_text())
    edit(result)
    _result(d).write_text(json.dumps(result))


DAMAGE = {
    "result is []": (lambda d: _result(d).write_text("[]"), "result.json holds list [], not an object"),
    "result not JSON": (lambda d: _result(d).write_text("{oops"), "result.json is not valid JSON"),
    "result not UTF-8": (lambda d: _result(d).write_bytes(b'{"status": "ok", "x": "\xe9"}'), "result.json is not UTF-8 text"),
    "number as a string": (lambda d: _edit_result(d, lambda r: r["summary"].update(gold_final="0.5")),
                           "result.json summary.gold_final is '0.5', not a number"),
    "unknown status": (lambda d: _edit_result(d, lambda r: r.update(status="great")), "result.json status 'great' is not one of"),
    "evaluations not objects": (lambda d: _edit_result(d, lambda r: r.update(evaluations=[1, 2])),
                                "result.json evaluations is not a list of objects"),
    "result is a directory": (lambda d: (_result(d).unlink(), _result(d).mkdir()), "result.json cannot be read"),
    "metrics not objects": (lambda d: _metrics(d).write_text("[1]\n2\n"), "metrics.jsonl line 1 is list, not an object"),
    "metrics not UTF-8": (lambda d: _metrics(d).write_bytes(b'{"a": "\xe9"}\n'), "metrics.jsonl line 1 is not UTF-8"),
    "metrics number as a string": (lambda d: _metrics(d).write_text('{"step": 0}\n{"step": "1"}\n'),
                                   "metrics.jsonl line 2 has step = '1', a number written as a string"),
}
REPORT_OUTPUTS = ("results.csv", "report.md", "report.html", "plots", LOCK_FILE)


def _kept(d: Path) -> dict:
    return {k: v for k, v in listing(d).items() if not k.startswith(REPORT_OUTPUTS)}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cell_is_reported_as_damaged(run_dir, damage, capsys):
    harm, reason = DAMAGE[damage]
    harm(run_dir)
    before = _kept(run_dir)
    code, out, err = run_main(capsys, "report", run_dir)
    assert code == 0 and "Traceback" not in err, err
    lines = [line for line in out.splitlines() if line.startswith("damaged: ")]
    assert len(lines) == 1 and lines[0].startswith(f"damaged: {CELL}: {reason}"), out
    assert _kept(run_dir) == before  # nothing of the run is lost or rewritten
    if damage.startswith("result"):
        import pandas as pd

        table = pd.read_csv(run_dir / "results.csv")
        assert table.set_index("cell").loc[CELL, "status"] == DAMAGED


def test_missing_files_are_pending_or_empty_not_errors(run_dir, capsys):
    _result(run_dir).unlink()
    _metrics(run_dir).unlink()
    for name in ("stages.json", "resolved.json", "run.json"):
        (run_dir / name).unlink()
    code, out, err = run_main(capsys, "report", run_dir)
    assert code == 0 and "Traceback" not in err and "damaged:" not in out


@pytest.mark.parametrize("name, text", [
    ("stages.json", "[]"), ("stages.json", '{"llama-tiny": []}'), ("run.json", "5"), ("resolved.json", '{"cells": []}'),
    ("resolved.json", '{"cells": {"x": 1}}'), ("stages.json", b"\xff\xfe"),
])
def test_damaged_side_files_are_ignored(run_dir, capsys, name, text):
    target = run_dir / name
    target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
    code, out, err = run_main(capsys, "report", run_dir)
    assert code == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("content", [b"[[models\nname=", b"name = '\xe9'\n", b'name = "x"\n[rl]\nlearning_rate = nan\n'])
def test_corrupt_recipe_copy_is_one_line(run_dir, capsys, content):
    (run_dir / "recipe.toml").write_bytes(content)
    before = listing(run_dir)
    code, _, err = run_main(capsys, "report", run_dir)
    assert_one_line(code, err, "its recipe.toml copy cannot be read")
    assert {k: v for k, v in listing(run_dir).items() if k != LOCK_FILE} == {k: v for k, v in before.items() if k != LOCK_FILE}


def test_report_cli_on_a_damaged_dir_never_shows_a_traceback(run_dir):
    """Every default reporter (the fixture's recipe names the fast ones only), one damaged cell of each kind."""
    recipe = run_dir / "recipe.toml"
    recipe.write_text(recipe.read_text().split("[report]")[0])
    _result(run_dir).write_text("[]")
    (run_dir / "cells" / "llama-tiny__ppo__full__s1" / "metrics.jsonl").write_text('{"step": 0}\n[2]\n')
    out = run_cli("report", run_dir)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    damaged = [line for line in out.stdout.splitlines() if line.startswith("damaged: ")]
    assert damaged == [f"damaged: {CELL}: result.json holds list [], not an object",
                       "damaged: llama-tiny__ppo__full__s1: metrics.jsonl line 2 is list, not an object; later steps ignored"]
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()


def test_resume_reruns_a_damaged_cell(run_dir):
    recipe = load_recipe(run_dir / "recipe.toml")
    cells = {c.id: c for c in recipe.cells()}
    _result(run_dir).write_text("[]")
    outcome = RunOutcome(run_dir)
    todo = Runner(recipe, run_dir)._pending(list(cells.values()), {"llama-tiny": {"status": "ok"}}, outcome)
    assert [c.id for c in todo] == [CELL] and [c.id for c in outcome.kept] == ["llama-tiny__ppo__full__s1"]
    assert inspect_result(run_dir, cells[CELL]) == (None, "result.json holds list [], not an object")
    table = results_table(run_dir, list(cells.values()))
    assert dict(zip(table["cell"], table["status"])) == {"llama-tiny__ppo__full__s1": "ok", CELL: DAMAGED}
    assert read_metrics(run_dir, Cell("llama-tiny", "rloo", "full", 1))  # metrics of the damaged cell still read


# --- data paths and planning hardware -----------------------------------------------------------------------


def test_relative_data_path_resolves_against_the_recipe_directory(tmp_path, monkeypatch):
    recipes = tmp_path / "project" / "recipes"
    recipes.mkdir(parents=True)
    data = tmp_path / "project" / "data" / "prefs.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    recipe = recipes / "r.toml"
    recipe.write_text(BASE + '[data]\nname = "preference_jsonl"\npath = "../data/prefs.jsonl"\n')
    monkeypatch.chdir(tmp_path)  # neither the recipe's directory nor the project root
    assert Path(load_recipe(recipe).data_options.path) == data
    absolute = recipes / "abs.toml"
    absolute.write_text(BASE + f'[data]\nname = "preference_jsonl"\npath = "{data}"\n')
    assert load_recipe(absolute).data_options.path == str(data)
    # the copy in a run directory resolves against the original recipe's directory (run.json recipe_dir)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(recipe, run / "recipe.toml")
    (run / "run.json").write_text(json.dumps({"recipe_dir": str(recipes)}))
    assert Path(load_recipe(run / "recipe.toml").data_options.path) == data


def test_shipped_real_data_recipe_resolves_from_its_own_directory():
    recipe = REPO / "recipes" / "hh_rlhf_tiny.toml"
    shared = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    if not shared.is_file():
        pytest.skip("the shared HH-RLHF file is not beside this checkout")
    assert Path(load_recipe(recipe).data_options.path) == shared


def test_plan_hardware_never_comes_from_the_description(tmp_path):
    from rlhfkit.planner import GPUS, GiB, gpu_capacity, plan_recipe

    path = write_recipe(tmp_path, '!description = "we do not have 4 x H200"\n' + BASE + '[grid]\nalgorithms = ["rloo"]\n')
    plans = plan_recipe(load_recipe(path))
    assert {(p.hardware, p.num_devices) for p in plans} == {("cpu", 1)}
    with_run = write_recipe(tmp_path, '[grid]\nalgorithms = ["rloo"]\n[run]\ngpu = "L40S"\nnum_gpus = 2\n', "run.toml")
    assert {(p.hardware, p.num_devices, p.capacity_bytes) for p in plan_recipe(load_recipe(with_run))} == {
        ("L40S-48GB", 2, GPUS["L40S-48GB"])}
    custom = plan_recipe(load_recipe(path), gpu_memory_gib=24)
    assert {p.capacity_bytes for p in custom} == {24 * GiB}
    for name, canonical in (("h100", "H100-80GB"), ("H100 NVL", "H100-94GB"), ("H200", "H200"), ("a10-24g", "A10-24GB"),
                            ("RTX_4090", "RTX-4090-24GB"), ("A100-40GB", "A100-40GB"), ("nvidia a100 80gb", "A100-80GB")):
        assert gpu_capacity(name)[0] == canonical


def test_stage_timeout_stops_the_stage_process(tmp_path, monkeypatch):
    import subprocess
    import time

    from rlhfkit import runner as runner_module

    recipe = load_recipe(write_recipe(tmp_path, "[run]\nstage_timeout_s = 0.5\n"))
    real_popen = subprocess.Popen  # the stage process is replaced by a sleeper: only the timeout is looked at
    monkeypatch.setattr(runner_module.subprocess, "Popen", lambda cmd, **kw: real_popen(["sleep", "30"], **kw))
    started = time.monotonic()
    rc = runner_module.Runner(recipe, tmp_path)._run_stage_process(tmp_path / "spec.json", tmp_path / "log.txt")
    assert rc is None and time.monotonic() - started < 10
