"""Recipes: a TOML file naming a grid of models x algorithms x memory strategies x seeds.

Everything is validated before anything runs; a problem is one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.plugins import get_registry
from rlhfkit.registry import config_fields
from rlhfkit.sweeps import confounder_warnings, freeze, setting_combinations, settings_text, thaw

TUNING_FILE = "tuning.json"
RUN_RECIPE_COPY = "recipe.toml"


class RecipeError(ValueError):
    """The recipe is wrong; the message is one line naming the key and what is allowed."""


TOP_LEVEL_KEYS = (
    "name", "description", "data", "models", "grid", "tuning", "sft", "reward_model", "rl", "algorithms", "run", "report",
)
PHASES = ("grid", "tuning", "final")
TUNING_METRICS = ("gold_at_kl", "gold_final")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ModelEntry:
    """One ``[[models]]`` row: a policy and the reward model that judges it."""

    name: str
    """Label used in the grid and the report (letters, digits, '.', '_', '-')."""
    policy: str
    """``family:preset`` (tiny, random init, then SFT) or a checkpoint directory / hub id."""
    reward: str = ""
    """The reward model's base, same forms as ``policy``; empty means the same as ``policy``."""
    trust_remote_code: bool = False
    """Allow checkpoints that ship their own modelling code (e.g. MiniCPM 1/2)."""

    def __post_init__(self):
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if not self.reward:
            self.reward = self.policy


@dataclass
class GridSettings:
    """The grid: every combination runs as one cell."""

    algorithms: list[str] = field(default_factory=lambda: ["ppo", "rloo"])
    """Registered algorithm names."""
    memory: list[str] = field(default_factory=lambda: ["full"])
    """Memory strategies, parts joined by '+' (``"lora"``, ``"zero3+lora"``)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """RL seeds; SFT and reward model are trained once, shared by every seed."""
    models: list[str] = field(default_factory=list)
    """Names of ``[[models]]`` rows to run; empty means all."""

    def __post_init__(self):
        for key in ("algorithms", "memory", "seeds"):
            values = getattr(self, key)
            if not values:
                raise ValueError(f"{key} must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{key} lists a value twice")


@dataclass
class RunSettings:
    """How the grid runs (the recipe's ``[run]`` table)."""

    output: str = ""
    """Output directory; empty means ``reports/<recipe name>``.  ``--output`` overrides it."""
    parallel_cells: int = 1
    """Cells run at the same time (each in its own process)."""
    threads_per_cell: int = 0
    """torch threads per cell process; 0 = CPU cores / parallel_cells."""
    cell_timeout_s: float = 3600.0
    """A cell still running after this many seconds is stopped with status ``timeout``."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    precision: str = "fp32"
    """Training precision: ``fp32``, ``bf16`` or ``fp16`` (mixed precision through accelerate)."""
    num_processes: int = 1
    """Processes per cell (data parallel / ZeRO shards)."""
    data_seed: int = 0
    """Seed of the data set, tokenizer, SFT and reward-model stages (shared by every cell)."""
    cpu_memory: str = "resident"
    """How CPU cells measure memory.  ``resident``: the resident set with the allocator as it is (fast; glibc
    keeps freed blocks resident, so peaks are upper bounds that depend on allocation history).  ``live``: glibc
    returns every freed block of 64 KiB or more, so the resident set follows live memory (what the planner
    predicts); each such allocation then maps fresh pages, ~1.6x slower steps on the tiny presets."""

    def __post_init__(self):
        if self.parallel_cells < 1:
            raise ValueError("parallel_cells must be >= 1")
        if self.threads_per_cell < 0:
            raise ValueError("threads_per_cell must be >= 0")
        if self.cell_timeout_s <= 0:
            raise ValueError("cell_timeout_s must be > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError("device must be one of: auto, cpu, cuda")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError("precision must be one of: fp32, bf16, fp16")
        if self.num_processes < 1:
            raise ValueError("num_processes must be >= 1")
        if self.cpu_memory not in ("resident", "live"):
            raise ValueError("cpu_memory must be one of: resident, live")


@dataclass
class ReportSettings:
    """Which reporters run after the grid (the recipe's ``[report]`` table)."""

    reporters: list[str] = field(default_factory=list)
    """Reporter names; empty means every reporter registered as default."""
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers fed from every training step: ``tensorboard``, ``wandb``, ``trackio`` (when installed)."""

    def __post_init__(self):
        for name in self.trackers:
            if name not in ("tensorboard", "wandb", "trackio"):
                raise ValueError(f"unknown tracker {name!r}; allowed: tensorboard, wandb, trackio")


@dataclass
class TuningSettings:
    """The recipe's ``[tuning]`` table: pick each arm's best swept setting on seeds of its own."""

    seeds: list[int]
    """Tuning seeds; never reused by the final comparison (disjoint from ``[grid] seeds``)."""
    metric: str = "gold_at_kl"
    """``gold_at_kl``: mean over tuning seeds of the best eval gold among checkpoints with eval KL <= kl_budget;
    ``gold_final``: mean over tuning seeds of the last evaluation's gold."""
    kl_budget: float | None = None
    """KL budget of ``gold_at_kl`` (required there)."""
    allow_unequal: bool = False
    """Allow algorithms to get different numbers of settings tried (unequal tuning effort)."""

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds lists a value twice")
        if self.metric not in TUNING_METRICS:
            raise ValueError(f"metric must be one of: {', '.join(TUNING_METRICS)}")
        if self.metric == "gold_at_kl" and self.kl_budget is None:
            raise ValueError("kl_budget is required for metric gold_at_kl (e.g. kl_budget = 1.0)")
        if self.kl_budget is not None and self.metric != "gold_at_kl":
            raise ValueError("kl_budget only applies to metric gold_at_kl")
        if self.kl_budget is not None and self.kl_budget <= 0:
            raise ValueError("kl_budget must be > 0")


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    model: str
    algorithm: str
    memory: str
    seed: int
    settings: tuple = ()
    """Swept config keys of this cell, sorted by key: ``(("kl_coef", 0.1),)``."""
    phase: str = "grid"
    """``grid`` (plain grid), ``tuning`` (tuning seeds) or ``final`` (the tuned setting on fresh seeds)."""

    def __post_init__(self):
        # Settings come back from JSON as lists of lists: normalise so equal cells compare and hash equal.
        settings = tuple(sorted((str(k), freeze(v)) for k, v in self.settings))
        object.__setattr__(self, "settings", settings)
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of: {', '.join(PHASES)}")

    @property
    def settings_text(self) -> str:
        return settings_text(self.settings)

    @property
    def id(self) -> str:
        memory = self.memory.replace("+", "-")
        parts = [self.model, self.algorithm, memory]
        if self.settings or self.phase != "grid":
            parts.append(self.settings_text or "default")  # a final/tuning cell never shares a grid cell's id
        cell_id = "__".join(parts) + f"__s{self.seed}"
        return "tune__" + cell_id if self.phase == "tuning" else cell_id

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Recipe:
    name: str
    description: str
    path: Path | None
    raw: dict
    """The parsed TOML, kept so cells and reports see exactly what the user wrote."""
    data_name: str
    data_options: Any
    models: dict[str, ModelEntry]
    grid: GridSettings
    sft: Any
    reward_model: Any
    rl: dict
    """The ``[rl]`` table (shared settings), already checked against every algorithm."""
    algorithms: dict[str, Any]
    """Algorithm name -> its validated config dataclass (``[rl]`` merged under ``[algorithms.<name>]``)."""
    run: RunSettings
    report: ReportSettings
    sweeps: dict[str, dict[str, list]] = field(default_factory=dict)
    """Algorithm -> swept key -> values (``[grid.sweep]`` merged with ``[grid.sweep.<algorithm>]``)."""
    tuning: TuningSettings | None = None
    algorithm_tables: dict[str, dict] = field(default_factory=dict)
    """Algorithm -> the table its config is built from (``[rl]`` under ``[algorithms.<name>]``)."""
    tuned: dict[tuple, tuple] = field(default_factory=dict)
    """(model, algorithm, memory) -> the setting tuning picked; filled from the run's ``tuning.json``."""
    _configs: dict = field(default_factory=dict, repr=False)

    def settings_for(self, algorithm: str) -> list[tuple]:
        """Every swept setting of one algorithm, in sweep order (``[()]`` when it sweeps nothing)."""
        return setting_combinations(self.sweeps.get(algorithm, {}))

    def config_for(self, cell: Cell):
        """The cell's algorithm config with its swept settings applied (validated like the recipe)."""
        if not cell.settings:
            return self.algorithms[cell.algorithm]
        key = (cell.algorithm, cell.settings)
        if key not in self._configs:
            spec = get_registry().get("algorithm", cell.algorithm)
            table = {**self.algorithm_tables.get(cell.algorithm, {}), **{k: thaw(v) for k, v in cell.settings}}
            where = f"algorithms.{cell.algorithm} ({cell.settings_text})"
            self._configs[key] = build_dataclass(spec.config_class, table, where)
        return self._configs[key]

    def arms(self) -> list[tuple[str, str, str]]:
        """(model, algorithm, memory) of every arm compared."""
        model_names = self.grid.models or list(self.models)
        return [(m, a, mem) for m in model_names for a in self.grid.algorithms for mem in self.grid.memory]

    def cells(self) -> list[Cell]:
        """Without ``[tuning]``: every arm x swept setting x seed.  With it: the tuning cells (arms with more
        than one setting, tuning seeds), the defaults on the grid seeds, and, once tuning has picked them
        (:attr:`tuned`), each arm's tuned setting on the grid seeds."""
        if self.tuning is None:
            return [
                Cell(m, a, mem, s, settings=settings)
                for m, a, mem in self.arms()
                for settings in self.settings_for(a)
                for s in self.grid.seeds
            ]
        return self.tuning_cells() + self.default_cells() + self.final_cells()

    def tuning_cells(self) -> list[Cell]:
        if self.tuning is None:
            return []
        return [
            Cell(m, a, mem, s, settings=settings, phase="tuning")
            for m, a, mem in self.arms()
            if len(self.settings_for(a)) > 1
            for settings in self.settings_for(a)
            for s in self.tuning.seeds
        ]

    def default_cells(self) -> list[Cell]:
        return [Cell(m, a, mem, s) for m, a, mem in self.arms() for s in self.grid.seeds]

    def final_cells(self) -> list[Cell]:
        return [
            Cell(m, a, mem, s, settings=self.tuned[(m, a, mem)], phase="final")
            for m, a, mem in self.arms()
            if (m, a, mem) in self.tuned
            for s in self.grid.seeds
        ]

    def warnings(self) -> list[str]:
        """One line per way the arms differ that is not the algorithm and is not swept."""
        return confounder_warnings(self.algorithms, self.sweeps)

    def load_tuned(self, output_dir: Path) -> None:
        """Take the tuned settings from a run directory's ``tuning.json`` (nothing when absent)."""
        from rlhfkit.results import read_json

        info = read_json(Path(output_dir) / TUNING_FILE) if self.tuning is not None else None
        self.tuned = {}
        for arm in (info or {}).get("arms", []):
            if arm.get("winner_settings") is not None:
                key = (arm["model"], arm["algorithm"], arm["memory"])
                self.tuned[key] = Cell(*key, 0, settings=tuple(arm["winner_settings"].items())).settings

    def output_dir(self, override: str | None = None) -> Path:
        if override:
            return Path(override)
        if self.run.output:
            return Path(self.run.output)
        return Path("reports") / self.name

    def stage_fingerprint(self) -> dict:
        """What the SFT and reward-model stages depend on (their cache key)."""
        return {
            "data": {"name": self.data_name, "options": dataclasses.asdict(self.data_options)},
            "data_seed": self.run.data_seed,
            "sft": dataclasses.asdict(self.sft),
            "reward_model": dataclasses.asdict(self.reward_model),
        }


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- generic dataclass-from-table validation ------------------------------------------------------------


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check_value(value: Any, tp: Any, where: str) -> Any:
    if isinstance(tp, str):
        tp = eval(tp, vars(typing) | {"Any": Any})  # annotations are strings under "from __future__"
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(f"{where}: expected {' or '.join(_type_name(a) for a in args if a is not type(None))}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(tp) or (Any,)
        items = [_check_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def build_dataclass(cls: type, table: Any, where: str, skip: tuple[str, ...] = ()):
    """Build ``cls`` from a TOML table, refusing unknown keys and wrongly typed values in one line."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: expected a table, got {table!r}")
    known = {f.name: f for f in config_fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        if key in skip:
            continue
        if key not in known:
            raise RecipeError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(known))}")
        kwargs[key] = _check_value(value, hints.get(key, known[key].type), f"{where}.{key}")
    missing = [
        name
        for name, f in known.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in kwargs
    ]
    if missing:
        raise RecipeError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def _choose(value: str, allowed: list[str], where: str) -> None:
    if value not in allowed:
        raise RecipeError(f"{where}: unknown {value!r}; allowed: {', '.join(allowed) or '(none registered)'}")


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file") from None
    recipe = parse_recipe(raw, path)
    if path.name == RUN_RECIPE_COPY and (path.parent / "run.json").is_file():
        # The copy inside a run directory: cells, the report and resumes all see the tuned settings.
        recipe.load_tuned(path.parent)
    return recipe


def parse_recipe(raw: dict, path: Path | None = None) -> Recipe:
    from rlhfkit.memory import build_memory_plan
    from rlhfkit.stages.reward import RewardStageConfig
    from rlhfkit.stages.sft import SFTStageConfig

    prefix = f"{path}: " if path else ""

    def fail(msg: str):
        raise RecipeError(prefix + msg)

    try:
        for key in raw:
            if key not in TOP_LEVEL_KEYS:
                fail(f"unknown top-level key {key!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
        registry = get_registry()
        name = raw.get("name", path.stem if path else "recipe")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            fail(f"name: {name!r} must be letters, digits, '.', '_' or '-'")
        description = raw.get("description", "")
        if not isinstance(description, str):
            fail("description: expected a string")

        data = raw.get("data", {"name": "synthetic"})
        if not isinstance(data, dict):
            fail("data: expected a table")
        data_name = data.get("name", "synthetic")
        _choose(data_name, registry.names("dataset"), "data.name")
        dataset = registry.get("dataset", data_name)
        data_options = build_dataclass(dataset.options_class, data, "data", skip=("name",))

        rows = raw.get("models")
        if not rows:
            fail("models: at least one [[models]] entry is required (e.g. name = 'llama-tiny', policy = 'llama:tiny')")
        if not isinstance(rows, list):
            fail("models: expected [[models]] entries")
        models: dict[str, ModelEntry] = {}
        for i, row in enumerate(rows):
            entry = build_dataclass(ModelEntry, row, f"models[{i}]")
            if entry.name in models:
                fail(f"models[{i}].name: {entry.name!r} is used twice")
            models[entry.name] = entry
            _check_model_ref(entry.policy, entry.trust_remote_code, f"models[{i}].policy")
            _check_model_ref(entry.reward, entry.trust_remote_code, f"models[{i}].reward")

        grid = build_dataclass(GridSettings, raw.get("grid"), "grid", skip=("sweep",))
        for i, model in enumerate(grid.models):
            _choose(model, list(models), f"grid.models[{i}]")
        for i, algo in enumerate(grid.algorithms):
            _choose(algo, registry.names("algorithm"), f"grid.algorithms[{i}]")
        for i, memory in enumerate(grid.memory):
            try:
                build_memory_plan(memory)
            except ValueError as exc:
                fail(f"grid.memory[{i}]: {exc}")

        sft = build_dataclass(SFTStageConfig, raw.get("sft"), "sft")
        reward_model = build_dataclass(RewardStageConfig, raw.get("reward_model"), "reward_model")

        shared, algorithms, tables = _parse_algorithms(raw, grid)
        sweeps, tuning = _parse_sweeps_and_tuning(raw, grid, tables)

        run = build_dataclass(RunSettings, raw.get("run"), "run")
        report = build_dataclass(ReportSettings, raw.get("report"), "report")
        for i, reporter in enumerate(report.reporters):
            _choose(reporter, registry.names("reporter"), f"report.reporters[{i}]")
    except RecipeError as exc:
        msg = str(exc)
        raise RecipeError(msg if msg.startswith(prefix) else prefix + msg) from None

    return Recipe(
        name=name,
        description=description,
        path=path,
        raw=raw,
        data_name=data_name,
        data_options=data_options,
        models=models,
        grid=grid,
        sft=sft,
        reward_model=reward_model,
        rl=shared,
        algorithms=algorithms,
        run=run,
        report=report,
        sweeps=sweeps,
        tuning=tuning,
        algorithm_tables=tables,
    )


def _parse_algorithms(raw: dict, grid: GridSettings):
    """``[rl]`` checked against the shared config, then each grid algorithm's config built from ``[rl]``
    under ``[algorithms.<name>]``; returns the shared table, the configs and the tables they came from."""
    from rlhfkit.engine.config import RLConfig

    registry = get_registry()
    shared = raw.get("rl", {})
    if not isinstance(shared, dict):
        raise RecipeError("rl: expected a table")
    algo_tables = raw.get("algorithms", {})
    if not isinstance(algo_tables, dict):
        raise RecipeError("algorithms: expected a table of [algorithms.<name>] tables")
    for algo in algo_tables:
        _choose(algo, registry.names("algorithm"), "algorithms")
    shared_keys = {f.name for f in config_fields(RLConfig)}
    for key in shared:
        if key not in shared_keys:
            raise RecipeError(f"rl: unknown key {key!r}; allowed: {', '.join(sorted(shared_keys))}")
    algorithms, tables = {}, {}
    for algo in grid.algorithms:
        spec = registry.get("algorithm", algo)
        tables[algo] = {**shared, **(algo_tables.get(algo) or {})}
        algorithms[algo] = build_dataclass(spec.config_class, tables[algo], f"algorithms.{algo}")
    return shared, algorithms, tables


def _parse_sweeps_and_tuning(raw: dict, grid: GridSettings, tables: dict[str, dict]):
    """``[grid.sweep]`` (validated value by value) and ``[tuning]`` (seeds apart, equal effort)."""
    from rlhfkit.sweeps import check_tuning_effort, parse_sweeps

    registry = get_registry()
    classes = {algo: registry.get("algorithm", algo).config_class for algo in grid.algorithms}

    def builder(algo):
        return lambda overrides, where: build_dataclass(classes[algo], {**tables[algo], **overrides}, where)

    grid_table = raw.get("grid") or {}
    sweeps = parse_sweeps(
        grid_table.get("sweep") if isinstance(grid_table, dict) else None,
        grid.algorithms, {algo: builder(algo) for algo in grid.algorithms}, classes,
    )
    tuning = None
    if "tuning" in raw:
        tuning = build_dataclass(TuningSettings, raw["tuning"], "tuning")
        for i, seed in enumerate(tuning.seeds):
            if seed in grid.seeds:
                raise RecipeError(
                    f"tuning.seeds[{i}]: {seed} is also a grid seed; tuning seeds must be disjoint from "
                    "[grid] seeds (the final comparison runs fresh seeds)"
                )
        check_tuning_effort(sweeps, tuning)
    return sweeps, tuning


def _check_model_ref(text: str, trust_remote_code: bool, where: str) -> None:
    from rlhfkit.models import parse_model_spec

    try:
        parse_model_spec(text, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise RecipeError(f"{where}: {exc}") from None
