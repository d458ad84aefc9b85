"""The plugin system: built-ins, third-party entry points, runtime plugins, errors, disabling, a light CLI.

Fast tests: nothing here imports torch (the CLI checks run in subprocesses and assert that it stays so).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlhfkit import plugins
from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import KINDS, AlgorithmSpec, PluginError, Reporter, resolve

HEAVY_MODULES = ("torch", "transformers", "peft", "trl", "deepspeed", "accelerate", "bitsandbytes")
EXAMPLE_DIST = "rlhfkit-example-plugin"


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    """Every test starts and ends with a fresh plugin manager, whatever RLHFKIT_DISABLE_PLUGINS says outside."""
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def entry(registry, kind, name):
    return registry.entries[kind].get(name)


def subprocess_env(*extra_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(plugins.DISABLE_ENV, None)
    paths = [str(p) for p in extra_path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# A third-party distribution written on the fly: a module plus its .dist-info, found by importlib.metadata
# exactly like an installed wheel.

FAKE_DIST = "rlhfkit-fake-plugin"
FAKE_ENTRY_POINT = "fake"

FAKE_MODULE_SOURCE = '''
from dataclasses import dataclass

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import AlgorithmSpec, Reporter


@dataclass
class FakeConfig:
    lr: float = 1e-5


@hookimpl
def register_algorithms(register):
    register(AlgorithmSpec(name="fake-algo", config_class=FakeConfig, trainer="{module}:train",
                           description="fake algorithm from a test distribution"))


@hookimpl
def register_reporters(register):
    register(Reporter(name="fake-report", write=lambda context: [], description="fake reporter"))
'''

MISSPELT_MODULE_SOURCE = '''
from rlhfkit.hookspecs import hookimpl


@hookimpl
def register_algorithm(register):  # no "s": not a rlhfkit hook
    pass
'''


@pytest.fixture
def make_dist(tmp_path, monkeypatch):
    """``make_dist(module, source, dist=..., entry_point=...)`` writes a distribution under tmp_path and puts it
    on sys.path; the registry is reset so the next use discovers it."""
    modules = []

    def make(module: str, source: str, dist: str = FAKE_DIST, entry_point: str = FAKE_ENTRY_POINT) -> Path:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source).format(module=module))
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\n{entry_point} = {module}\n")
        modules.append(module)
        monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates the import caches
        plugins.reset()
        return tmp_path

    yield make
    for module in modules:
        sys.modules.pop(module, None)


def test_builtins_are_registered_by_distribution_rlhfkit():
    registry = plugins.get_registry()
    expected = {
        ("model_adapter", "llama"): "rlhfkit_plugins.models.llama",
        ("algorithm", "ppo"): "rlhfkit_plugins.algorithms",
        ("algorithm", "rloo"): "rlhfkit_plugins.algorithms",
        ("memory_strategy", "full"): "rlhfkit_plugins.memory",
        ("memory_strategy", "lora"): "rlhfkit_plugins.memory",
        ("dataset", "synthetic"): "rlhfkit_plugins.datasets",
    }
    for (kind, name), plugin in expected.items():
        e = entry(registry, kind, name)
        assert e is not None, f"{kind} {name!r} is not registered"
        assert e.distribution == "rlhfkit"
        assert e.plugin == plugin
    assert set(plugins.builtin_plugin_names()) <= set(dict(plugins.get_plugin_manager().list_name_plugin()))


def test_lazy_references_stay_strings_at_registration():
    """Trainers and builders are registered as "module:attr" so loading plugins imports no torch."""
    registry = plugins.get_registry()
    for name in ("ppo", "rloo"):
        assert isinstance(registry.get("algorithm", name).trainer, str)
    assert isinstance(registry.get("dataset", "synthetic").build, str)


def test_third_party_distribution_is_discovered_through_entry_points(make_dist):
    path = make_dist("rlhfkit_fake_plugin_ep", FAKE_MODULE_SOURCE)

    # importlib.metadata sees it as an installed distribution with a rlhfkit entry point ...
    dist = importlib.metadata.distribution(FAKE_DIST)
    assert [ep.name for ep in dist.entry_points if ep.group == plugins.ENTRY_POINT_GROUP] == [FAKE_ENTRY_POINT]

    # ... and the plugin manager loads it under its entry-point name, after the built-ins.
    registry = plugins.get_registry()
    algo = entry(registry, "algorithm", "fake-algo")
    assert algo is not None
    assert algo.distribution == FAKE_DIST
    assert algo.plugin == FAKE_ENTRY_POINT
    assert entry(registry, "reporter", "fake-report").distribution == FAKE_DIST
    assert entry(registry, "algorithm", "ppo").distribution == "rlhfkit"
    algorithms = [e.name for e in registry.all() if e.kind == "algorithm"]
    assert algorithms.index("ppo") < algorithms.index("fake-algo"), "built-ins register before third parties"

    # The CLI in a fresh process finds it too.
    out = subprocess.run(
        [sys.executable, "-m", "rlhfkit", "plugins", "--json"],
        env=subprocess_env(path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = json.loads(out)
    assert {"kind": "algorithm", "name": "fake-algo", "distribution": FAKE_DIST}.items() <= next(
        r for r in rows if r["name"] == "fake-algo"
    ).items()
    assert any(r["kind"] == "reporter" and r["name"] == "fake-report" for r in rows)


def test_inline_plugin_register_and_unregister():
    @dataclasses.dataclass
    class InlineConfig:
        lr: float = 1e-5

    class InlinePlugin:
        @hookimpl
        def register_algorithms(self, register):
            register(AlgorithmSpec(name="inline-algo", config_class=InlineConfig, trainer="inline_module:train"))

        @hookimpl
        def register_reporters(self, register):
            register(Reporter(name="inline-report", write=lambda context: []))

    plugin = InlinePlugin()
    registry = plugins.get_registry()
    assert entry(registry, "algorithm", "inline-algo") is None

    name = plugins.register_plugin(plugin, name="inline")
    try:
        assert name == "inline"
        registry = plugins.get_registry()  # rebuilt after registration
        algo = entry(registry, "algorithm", "inline-algo")
        assert algo is not None and algo.plugin == "inline"
        assert algo.distribution == "(registered at runtime)"
        assert entry(registry, "reporter", "inline-report").plugin == "inline"
        assert entry(registry, "algorithm", "ppo") is not None  # built-ins still there
    finally:
        plugins.unregister_plugin(plugin)

    registry = plugins.get_registry()
    assert entry(registry, "algorithm", "inline-algo") is None
    assert entry(registry, "reporter", "inline-report") is None
    assert entry(registry, "algorithm", "ppo") is not None


def test_duplicate_name_names_both_plugins():
    @dataclasses.dataclass
    class Config:
        pass

    class Duplicate:
        @hookimpl
        def register_algorithms(self, register):
            register(AlgorithmSpec(name="ppo", config_class=Config, trainer="nowhere:train"))

    plugin = Duplicate()
    plugins.register_plugin(plugin, name="my-duplicate-plugin")
    try:
        with pytest.raises(PluginError) as excinfo:
            plugins.get_registry()
        message = str(excinfo.value)
        assert "'ppo'" in message
        assert "rlhfkit_plugins.algorithms" in message
        assert "my-duplicate-plugin" in message
        # load order: the built-in came first, the newcomer is the duplicate
        assert message.index("rlhfkit_plugins.algorithms") < message.index("my-duplicate-plugin")
    finally:
        plugins.unregister_plugin(plugin)
    assert entry(plugins.get_registry(), "algorithm", "ppo").plugin == "rlhfkit_plugins.algorithms"


def test_misspelt_hook_is_rejected_at_runtime_registration():
    class Misspelt:
        @hookimpl
        def register_algorithm(self, register):  # no "s"
            pass

    plugin = Misspelt()
    with pytest.raises(PluginError, match="register_algorithm"):
        plugins.register_plugin(plugin, name="misspelt")
    pm = plugins.get_plugin_manager()
    assert pm.get_plugin("misspelt") is None, "a rejected plugin is not left registered"
    assert entry(plugins.get_registry(), "algorithm", "ppo") is not None


def test_misspelt_hook_in_an_entry_point_is_rejected(make_dist):
    make_dist("rlhfkit_fake_plugin_misspelt", MISSPELT_MODULE_SOURCE)
    with pytest.raises(PluginError, match="register_algorithm"):
        plugins.get_registry()


def test_disable_builtin_by_module_name(monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, "rlhfkit_plugins.models.llama")
    plugins.reset()
    registry = plugins.get_registry()
    assert entry(registry, "model_adapter", "llama") is None
    assert entry(registry, "algorithm", "ppo") is not None  # only that plugin is off
    assert plugins.get_plugin_manager().get_plugin("rlhfkit_plugins.models.llama") is None


def test_disable_third_party_by_entry_point_name(make_dist, monkeypatch):
    make_dist("rlhfkit_fake_plugin_disabled", FAKE_MODULE_SOURCE)
    assert entry(plugins.get_registry(), "algorithm", "fake-algo") is not None

    monkeypatch.setenv(plugins.DISABLE_ENV, f" rlhfkit_plugins.models.llama , {FAKE_ENTRY_POINT} ")
    plugins.reset()
    registry = plugins.get_registry()
    assert entry(registry, "algorithm", "fake-algo") is None
    assert entry(registry, "reporter", "fake-report") is None
    assert entry(registry, "model_adapter", "llama") is None
    assert entry(registry, "algorithm", "rloo") is not None


def test_disabling_turns_off_a_misspelt_entry_point(make_dist, monkeypatch):
    """The way out when an installed plugin breaks rlhfkit: disable it by its entry-point name."""
    make_dist("rlhfkit_fake_plugin_misspelt2", MISSPELT_MODULE_SOURCE)
    monkeypatch.setenv(plugins.DISABLE_ENV, FAKE_ENTRY_POINT)
    plugins.reset()
    assert entry(plugins.get_registry(), "algorithm", "ppo") is not None


# The CLI stays light: plugin loading must not pull in torch.

NO_HEAVY_IMPORTS = textwrap.dedent(
    """
    import sys
    from rlhfkit.cli import main
    try:
        rc = main(sys.argv[1:])
    except SystemExit as exc:  # argparse --help
        rc = exc.code
    sys.stdout.flush()
    heavy = [m for m in {heavy!r} if m in sys.modules]
    if heavy:
        sys.exit("heavy modules imported: " + ", ".join(heavy))
    sys.exit(rc)
    """
).format(heavy=HEAVY_MODULES)


@pytest.mark.parametrize("argv", [["--help"], ["plugins", "--json"], ["plugins"]])
def test_cli_imports_no_torch(argv):
    proc = subprocess.run(
        [sys.executable, "-c", NO_HEAVY_IMPORTS, *argv],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout


def test_help_is_fast():
    script = Path(sys.executable).with_name("rlhfkit")
    commands = [[sys.executable, "-m", "rlhfkit", "--help"]]
    if script.exists():
        commands.append([str(script), "--help"])
    for command in commands:
        timings = []
        for _ in range(3):  # best of three: the machine may be busy with other tests
            start = time.perf_counter()
            proc = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=60)
            timings.append(time.perf_counter() - start)
            assert proc.returncode == 0, proc.stderr
            assert "usage: rlhfkit" in proc.stdout
        assert min(timings) < 1.0, f"{command}: --help took {min(timings):.2f}s"


def test_plugins_json_format():
    proc = subprocess.run(
        [sys.executable, "-m", "rlhfkit", "plugins", "--json"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert isinstance(row, dict)
        assert {"kind", "name", "distribution"} <= row.keys()
        assert row["kind"] in KINDS
        assert isinstance(row["name"], str) and row["name"]
        assert isinstance(row["distribution"], str) and row["distribution"]
    assert {"kind": "algorithm", "name": "ppo", "distribution": "rlhfkit"}.items() <= next(
        r for r in rows if r["name"] == "ppo"
    ).items()


# The example plugin package (examples/rlhfkit-example-plugin), when it is installed.


def example_installed() -> bool:
    try:
        importlib.metadata.distribution(EXAMPLE_DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_example = pytest.mark.skipif(
    not example_installed(),
    reason=f"{EXAMPLE_DIST} is not installed (pip install -e examples/rlhfkit-example-plugin)",
)


@needs_example
def test_example_plugin_is_registered():
    registry = plugins.get_registry()
    critic = entry(registry, "memory_strategy", "critic-full")
    jsonl = entry(registry, "reporter", "jsonl")
    assert critic is not None and jsonl is not None
    assert critic.distribution == jsonl.distribution == EXAMPLE_DIST
    assert critic.plugin == "example"

    rows = json.loads(
        subprocess.run(
            [sys.executable, "-m", "rlhfkit", "plugins", "--json"],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert any(r["name"] == "critic-full" and r["distribution"] == EXAMPLE_DIST for r in rows)


@needs_example
def test_example_critic_full_strategy():
    from rlhfkit.memory import build_memory_plan

    plan = build_memory_plan("lora+critic-full")
    assert plan.uses_lora and plan.value_model_lora is False
    assert plan.parts == ["lora", "critic-full"]
    assert build_memory_plan("critic-full+lora").value_model_lora is False  # checks run after every part
    assert build_memory_plan("lora").value_model_lora is None  # untouched without the part
    with pytest.raises(ValueError, match="critic-full"):
        build_memory_plan("critic-full")


@needs_example
def test_example_jsonl_reporter(tmp_path):
    pd = pytest.importorskip("pandas")
    from types import SimpleNamespace

    results = pd.DataFrame(
        [
            {"cell": "tiny__ppo__lora__s0", "status": "ok", "gold_reward": 0.5},
            {"cell": "tiny__rloo__lora__s0", "status": "failed", "gold_reward": None},
        ]
    )
    context = SimpleNamespace(output_dir=tmp_path / "report", results=results)
    written = resolve(plugins.get_registry().get("reporter", "jsonl").write)(context)
    path = tmp_path / "report" / "results.jsonl"
    assert [Path(p) for p in written] == [path]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["cell"] for line in lines] == ["tiny__ppo__lora__s0", "tiny__rloo__lora__s0"]
    assert lines[0]["gold_reward"] == 0.5 and lines[1]["gold_reward"] is None


RAISING_MODULE_SOURCE = '''
raise ImportError("No module named 'some_missing_dependency'")
'''


def test_an_entry_point_that_raises_at_import_is_named_in_one_line(make_dist):
    make_dist("rlhfkit_fake_plugin_raising", RAISING_MODULE_SOURCE, dist="broken-plugin-dist", entry_point="broken")
    with pytest.raises(PluginError) as excinfo:
        plugins.get_registry()
    message = str(excinfo.value)
    assert "\n" not in message
    assert "'broken'" in message and "'broken-plugin-dist'" in message
    assert "some_missing_dependency" in message and "RLHFKIT_DISABLE_PLUGINS=broken" in message


def test_cli_reports_a_broken_entry_point_in_one_line_exit_2(make_dist):
    root = make_dist("rlhfkit_fake_plugin_raising2", RAISING_MODULE_SOURCE, dist="broken-plugin-dist", entry_point="broken")
    out = subprocess.run([sys.executable, "-m", "rlhfkit", "plugins"], capture_output=True, text=True,
                         env=subprocess_env(root), timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "entry point 'broken'" in out.stderr


def test_misspelt_hook_gets_a_did_you_mean():
    class Misspelt:
        @hookimpl
        def register_reporter(self, register):
            pass

    with pytest.raises(PluginError, match="did you mean 'register_reporters'"):
        plugins.register_plugin(Misspelt(), name="misspelt-reporter")


def test_a_hookimpl_with_arguments_the_hook_does_not_have_is_one_line():
    class WrongArguments:
        @hookimpl
        def register_algorithms(self, register, extra):
            pass

    with pytest.raises(PluginError) as excinfo:
        plugins.register_plugin(WrongArguments(), name="wrong-args")
    assert "'wrong-args'" in str(excinfo.value) and "extra" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_model_types_alone_are_enough_for_checkpoint_detection():
    from rlhfkit.models import detect_family
    from rlhfkit.registry import ModelAdapter

    class FamilyWithoutHook:
        @hookimpl
        def register_model_adapters(self, register):
            class Adapter(ModelAdapter):
                name = "newfam"
                model_types = ("newfam_arch",)

            register(Adapter())

    plugins.register_plugin(FamilyWithoutHook(), name="newfam-plugin")
    registry = plugins.get_registry()
    assert detect_family({"model_type": "newfam_arch"}, registry) == "newfam"
    assert detect_family({"model_type": "llama"}, registry) == "llama"  # the built-in hook still answers first
    assert detect_family({"model_type": "unheard_of"}, registry) is None


TYPO_MODULE_SOURCE = '''
from dataclasses import dataclass

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import AlgorithmSpec


@dataclass
class TypoConfig:
    steps: int = 2


@hookimpl
def register_algorithms(register):
    register(AlgorithmSpec(name="typo-algo", config_class=TypoConfig, trainer="{module}:trian"))
'''


def test_validate_resolves_lazy_references_so_a_typo_fails_there(make_dist, tmp_path):
    root = make_dist("rlhfkit_fake_plugin_typo", TYPO_MODULE_SOURCE, dist="typo-dist", entry_point="typo")
    recipe = tmp_path / "typo.toml"
    recipe.write_text('name = "typo"\n[data]\nname = "synthetic"\n[[models]]\nname = "m"\npolicy = "llama:tiny"\n'
                      '[grid]\nalgorithms = ["typo-algo"]\n')
    out = subprocess.run([sys.executable, "-m", "rlhfkit", "validate", str(recipe)], capture_output=True, text=True,
                         env=subprocess_env(root), timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "algorithm 'typo-algo'" in line and "'typo-dist'" in line and "trainer = 'rlhfkit_fake_plugin_typo:trian'" in line
    assert not (tmp_path / "reports").exists()


def test_the_recipes_shipped_resolve_every_reference():
    from rlhfkit.recipe import load_recipe
    from rlhfkit.references import check_recipe_references, recipe_entries

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "families.toml")
    check_recipe_references(recipe)
    kinds = {kind for kind, _ in recipe_entries(recipe, plugins.get_registry())}
    assert kinds == {"dataset", "algorithm", "model_adapter", "memory_strategy", "reporter"}


def test_docs_list_every_builtin_plugin_as_registered():
    """docs/plugins.md is generated from the registry, so it names every built-in and cannot drift."""
    from rlhfkit.cli import plugin_modules_markdown, plugins_markdown

    rows = [
        {"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": e.distribution,
         "description": getattr(e.obj, "description", "")}
        for e in plugins.get_registry().all() if e.distribution == "rlhfkit"
    ]
    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    assert doc.endswith(plugins_markdown(rows) + plugin_modules_markdown(True)), "docs/plugins.md is stale: run `bash docs/plugins.sh`"
    for module in plugins.builtin_plugin_names():  # every built-in plugin module is named, registry or not
        assert f"| `{module}` | rlhfkit |" in doc


def test_validate_runs_the_data_sets_own_check_before_anything(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "r"\n[data]\nname = "preference_jsonl"\npath = "{empty}"\n[[models]]\nname = "m"\n'
                      'policy = "llama:tiny"\n')
    out = subprocess.run([sys.executable, "-m", "rlhfkit", "validate", str(recipe)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert str(empty) in out.stderr and "no rows" in out.stderr


def test_memory_strategy_checks_its_recipe_before_a_run(monkeypatch):
    from rlhfkit.preflight import check_memory_strategies
    from rlhfkit.recipe import parse_recipe

    seen = []
    registry = plugins.get_registry()
    qlora = registry.get("memory_strategy", "qlora")
    monkeypatch.setattr(type(qlora), "check_recipe", lambda self, recipe: seen.append(recipe.grid.memory), raising=False)
    recipe = parse_recipe({"name": "r", "data": {"name": "synthetic"}, "models": [{"name": "m", "policy": "llama:tiny"}],
                           "grid": {"memory": ["lora", "zero2+qlora"]}})
    check_memory_strategies(recipe, registry)
    assert seen == [["lora", "zero2+qlora"]]  # called once, for the part that has the check


def test_core_defaults_come_from_the_registry_not_from_names():
    """The default grid and data set are what the built-in plugins flag; recipe.py names no built-in."""
    import re

    from rlhfkit.plugins import get_registry
    from rlhfkit.recipe import GridSettings, default_algorithms, default_dataset, parse_recipe

    registry = get_registry()
    assert default_algorithms() == [n for n in registry.names("algorithm") if registry.get("algorithm", n).default_in_grid]
    assert GridSettings().algorithms == default_algorithms() == ["ppo", "rloo"]
    assert default_dataset() == "synthetic" == parse_recipe({"models": [{"name": "m", "policy": "llama:tiny"}]}).data_name
    source = (Path(__file__).resolve().parents[1] / "rlhfkit" / "recipe.py").read_text()
    code = re.sub(r'""".*?"""', "", source, flags=re.DOTALL)
    for name in ("ppo", "rloo", "synthetic", "tensorboard", "wandb", "trackio"):
        assert f'"{name}"' not in code, name
