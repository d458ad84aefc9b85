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
from typing import Any, Literal

from rlhfkit.executors import EXECUTORS, RaySettings, SlurmSettings
from rlhfkit.memory import strategy_id
from rlhfkit.plugins import get_registry
from rlhfkit.registry import config_fields
from rlhfkit.rewards import check_entry as check_reward_entry, has_reward_model
from rlhfkit.sweeps import confounder_warnings, freeze, setting_combinations, settings_text, thaw
from rlhfkit.validation import check_choices, check_number, check_range, check_string, choice_error, did_you_mean, hint

TUNING_FILE = "tuning.json"
RUN_RECIPE_COPY = "recipe.toml"


class RecipeError(ValueError):
    """The recipe is wrong; the message is one line naming the key and what is allowed."""


TOP_LEVEL_KEYS = (
    "name", "description", "data", "models", "grid", "tuning", "sft", "reward_model", "dpo", "rl", "algorithms", "run",
    "report",
)
PHASES = ("grid", "tuning", "final")
TUNING_METRICS = ("gold_at_kl", "gold_final")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class DataSettings:
    """Keys of the ``[data]`` table that every data set takes; the other keys are the data set's own options."""

    name: str = ""
    """The data set (``rlhfkit plugins`` lists them); empty = the default one (``synthetic``)."""
    chat_template: Literal["auto", "off"] = "auto"
    """``"auto"``: when the policy's tokenizer has a chat template, every prompt (SFT, reward model, DPO, RL,
    evaluation) is formatted with it (``apply_chat_template(..., add_generation_prompt=True)``; HH and plain
    conversations are split into their turns).  ``"off"``: prompts stay the data's own text.  Tiny presets have
    no template, so both give the same numbers."""

    def __post_init__(self):
        check_choices(self)


@dataclass
class ModelEntry:
    """One ``[[models]]`` row: a policy and the reward model that judges it."""

    name: str
    """Label used in the grid and the report (letters, digits, '.', '_', '-')."""
    policy: str
    """``family:preset`` (tiny, random init, then SFT) or a checkpoint directory / hub id."""
    reward: str = ""
    """The reward model's base, same forms as ``policy``; empty means the same as ``policy``.  ``"fn:NAME"``: a
    registered reward function is the reward (``rlhfkit plugins`` lists them): no reward model, no RM stage."""
    trust_remote_code: bool = False
    """Allow checkpoints that ship their own modelling code (e.g. MiniCPM 1/2)."""
    train_sft: bool = True
    """``false``: ``policy`` is already an SFT checkpoint (with its own tokenizer), used as is: no SFT stage.
    Refused for a ``family:preset`` policy (random init)."""
    train_reward: bool = True
    """``false``: ``reward`` is a trained ``...ForSequenceClassification`` checkpoint with one label, loaded as is
    with its own tokenizer (never retrained or resized): no reward-model stage.  Refused for presets."""
    dpo: bool = False
    """Run a DPO stage (TRL's DPOTrainer, settings in ``[dpo]``) on the preference pairs after SFT: its policy is
    the RL start and the reference policy (the KL leash) of this row's cells."""
    reward_weights: dict = field(default_factory=dict)
    """Optimise a weighted sum of reward components: ``{ model = 1.0, "fn:arith_exact" = 0.5 }`` (``model`` = this
    row's reward model, ``fn:NAME`` = a reward function); empty = ``reward`` alone, weight 1.  Finite weights;
    ``model`` must be listed when ``reward`` is a model, and the ``fn:`` of ``reward = "fn:..."`` likewise."""

    def __post_init__(self):
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if not self.policy.strip():
            raise ValueError("policy must not be empty; write 'family:preset' (e.g. 'llama:tiny') or a checkpoint directory")
        if not self.reward:
            self.reward = self.policy


@dataclass
class GridSettings:
    """The grid: every combination runs as one cell."""

    algorithms: list[str] = field(default_factory=lambda: default_algorithms())
    """Registered algorithm names; by default those whose plugin marks them ``default_in_grid``."""
    memory: list[str] = field(default_factory=lambda: ["full"])
    """Memory strategies, parts joined by '+' (``"lora"``, ``"zero3+lora"``); a part takes settings in
    parentheses (``"lora(r=8,alpha=16)"``, lists with '|': ``target_modules=q_proj|v_proj``)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """RL seeds; SFT and reward model are trained once, shared by every seed."""
    models: list[str] = field(default_factory=list)
    """Names of ``[[models]]`` rows to run; empty means all."""
    data_seeds: list[int] = field(default_factory=list)
    """Data seeds, each an outer stratum with its own data draw, tokenizer, SFT policy and reward model (RL seeds
    are nested in it); empty means ``[run] data_seed`` only."""

    def __post_init__(self):
        for key in ("algorithms", "memory", "seeds", "models", "data_seeds"):
            values = getattr(self, key)
            if not values and key not in ("models", "data_seeds"):
                raise ValueError(f"{key} must not be empty")
            _refuse_duplicates(values, key)


def _refuse_duplicates(values: list, key: str) -> None:
    """Every grid list: a value listed twice would run (and count) the same cells twice."""
    for i, value in enumerate(values):
        if value in values[:i]:
            raise ValueError(f"{key}[{i}]: {value!r} is listed twice (also {key}[{values.index(value)}]); each value must be distinct")


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
    stage_timeout_s: float = 86400.0
    """The SFT + reward-model stages of one model row still running after this many seconds are stopped and
    marked failed (their cells then fail without running)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision: ``fp32``, ``bf16`` or ``fp16`` (mixed precision through accelerate)."""
    num_processes: int = 1
    """Processes per cell (data parallel / ZeRO shards)."""
    data_seed: int = 0
    """Seed of the data set, tokenizer, SFT and reward-model stages (shared by every cell)."""
    gpu: str = ""
    """What ``rlhfkit plan`` plans for when ``--gpu`` is not given: a GPU name (``rlhfkit plan --help`` lists
    them) or ``cpu``; empty = this machine's RAM.  Planning only: the run itself uses ``device``."""
    num_gpus: int = 0
    """Devices ``rlhfkit plan`` plans for when ``--num-gpus`` is not given; 0 = ``num_processes``."""
    gpu_memory_gib: float = 0.0
    """A custom device capacity for ``rlhfkit plan`` (GiB), instead of a named GPU's; 0 = none."""
    plan_typical_length_fraction: float = 0.5
    """The typical answer length ``rlhfkit plan`` sizes beside the worst case, as a fraction of
    ``response_length`` (``--typical-length`` overrides it).  The worst case (every answer reaches
    ``response_length``) decides whether a cell fits; the typical peak is what a step with shorter answers holds."""
    cpu_memory: Literal["resident", "live"] = "resident"
    """How CPU cells measure memory.  ``resident``: the resident set with the allocator as it is (fast; glibc
    keeps freed blocks resident, so peaks are upper bounds that depend on allocation history).  ``live``: glibc
    returns every freed block of 64 KiB or more, so the resident set follows live memory (what the planner
    predicts); each such allocation then maps fresh pages, ~1.6x slower steps on the tiny presets."""
    checkpoint_every: int = 0
    """Save a cell's training state every this many steps into ``cells/<cell>/checkpoint/`` (0 = never); a rerun
    resumes an unfinished cell from its checkpoint with the numbers of an uninterrupted run, and a cell that
    finishes ok removes it.  Single-process cells without ZeRO (others train without checkpoints, a note in
    their log.txt)."""
    save_policies: Literal["none", "best", "all"] = "none"
    """Keep trained policies: ``none``; ``all`` (every ok cell saves its final policy with ``save_pretrained``
    into ``cells/<cell>/policy/``, with its tokenizer; under LoRA the peft adapter); ``best`` (every cell saves,
    then per algorithm only the policy of the ok cell with the highest final eval gold, or proxy score without a
    gold reward, is kept; ``policies.json`` says which).  The report links them (docs/scaling.md)."""
    save_merged: bool = False
    """Under LoRA, also save the adapter merged into its base as a full model (``policy/merged/``); cells without
    LoRA (nothing to merge) and over a 4-bit base (not merged: a note in log.txt) save as they would without it."""
    executor: str = "local"
    """Where cells run: ``local`` (processes on this machine), ``ray`` (``[run.ray]``) or ``slurm`` (``[run.slurm]``);
    ``--executor`` overrides it.  The cell process is the same everywhere, so results do not depend on it."""
    ray: RaySettings = field(default_factory=RaySettings)
    """``[run.ray]``: cluster address and resources per cell."""
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    """``[run.slurm]``: partition, time limit and resources of each cell's job."""

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of: {', '.join(EXECUTORS)} (got {self.executor!r})"
                             f"{hint(self.executor, EXECUTORS)}")
        if self.parallel_cells < 1:
            raise ValueError("parallel_cells must be >= 1")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 = no checkpoints; got {self.checkpoint_every})")
        if self.threads_per_cell < 0:
            raise ValueError("threads_per_cell must be >= 0")
        if self.cell_timeout_s <= 0:
            raise ValueError("cell_timeout_s must be > 0")
        check_choices(self)  # device, precision, cpu_memory
        if self.num_processes < 1:
            raise ValueError("num_processes must be >= 1")
        if not 0 < self.plan_typical_length_fraction <= 1:
            raise ValueError("plan_typical_length_fraction must be in (0, 1]")
        if self.gpu:
            from rlhfkit.planner import gpu_capacity

            try:
                gpu_capacity(self.gpu)
            except ValueError as exc:
                raise ValueError(f"gpu: {exc}") from None


@dataclass
class ReportSettings:
    """Which reporters run after the grid (the recipe's ``[report]`` table)."""

    reporters: list[str] = field(default_factory=list)
    """Reporter names; empty means every reporter registered as default."""
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers fed from every training step: registered tracker names (``rlhfkit plugins`` lists
    them; built in: ``tensorboard``, ``wandb``, ``trackio``, each when its package is installed)."""

    def __post_init__(self):
        known = get_registry().names("tracker")
        for i, name in enumerate(self.trackers):
            if name not in known:
                raise ValueError(f"trackers[{i}]: unknown tracker {name!r}{did_you_mean(name, known)}; allowed: {', '.join(known)}")
        _refuse_duplicates(self.trackers, "trackers")
        _refuse_duplicates(self.reporters, "reporters")


def default_algorithms() -> list[str]:
    """The algorithms registered with ``default_in_grid`` (the grid of a recipe that names none)."""
    registry = get_registry()
    return [name for name in registry.names("algorithm") if registry.get("algorithm", name).default_in_grid]


def default_dataset() -> str:
    """The data set registered with ``default`` (``[data]`` without a name)."""
    registry = get_registry()
    flagged = [name for name in registry.names("dataset") if registry.get("dataset", name).default]
    if len(flagged) != 1:
        raise RecipeError(f"data.name: required (no single default data set is registered; found: "
                          f"{', '.join(flagged) or 'none'}); allowed: {', '.join(registry.names('dataset'))}")
    return flagged[0]


@dataclass
class TuningSettings:
    """The recipe's ``[tuning]`` table: pick each arm's best swept setting on seeds of its own."""

    seeds: list[int]
    """Tuning seeds; never reused by the final comparison (disjoint from ``[grid] seeds``)."""
    metric: Literal["gold_at_kl", "gold_final"] = "gold_at_kl"
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
        check_choices(self)  # metric
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
    data_seed: int | None = None
    """The stage stratum (data draw, tokenizer, SFT policy, reward model); None = the recipe's ``[run] data_seed``."""

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
        memory = strategy_id(self.memory)  # "zero3+lora(r=4)" -> "zero3-lora_r4": file-name safe, stable
        parts = [self.model, self.algorithm, memory]
        if self.settings or self.phase != "grid":
            parts.append(self.settings_text or "default")  # a final/tuning cell never shares a grid cell's id
        if self.data_seed is not None:  # only other strata: the run.data_seed cells keep the ids of a plain grid
            parts.append(f"d{self.data_seed}")
        cell_id = "__".join(parts) + f"__s{self.seed}"
        return "tune__" + cell_id if self.phase == "tuning" else cell_id

    @property
    def stage(self) -> str:
        """Key of the cell's stages in ``stages.json``: the model row, ``<model>@d<seed>`` for another data seed."""
        return self.model if self.data_seed is None else f"{self.model}@d{self.data_seed}"

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if self.data_seed is None:  # spec.json/result.json of default-stratum cells stay as before
            del out["data_seed"]
        return out


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
    dpo: Any = None
    """The ``[dpo]`` table (:class:`rlhfkit.stages.dpo.DPOStageConfig`), used by rows with ``dpo = true``."""
    chat_template: str = "auto"
    """``[data] chat_template``: ``"auto"`` or ``"off"`` (see :class:`DataSettings`)."""

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
                Cell(m, a, mem, s, settings=settings, data_seed=d)
                for m, a, mem in self.arms()
                for settings in self.settings_for(a)
                for d in self.strata()
                for s in self.grid.seeds
            ]
        return self.tuning_cells() + self.default_cells() + self.final_cells()

    def tuning_cells(self) -> list[Cell]:
        if self.tuning is None:
            return []
        return [
            Cell(m, a, mem, s, settings=settings, phase="tuning", data_seed=d)
            for m, a, mem in self.arms()
            if len(self.settings_for(a)) > 1
            for settings in self.settings_for(a)
            for d in self.strata()
            for s in self.tuning.seeds
        ]

    def default_cells(self) -> list[Cell]:
        return [Cell(m, a, mem, s, data_seed=d) for m, a, mem in self.arms() for d in self.strata() for s in self.grid.seeds]

    def final_cells(self) -> list[Cell]:
        return [
            Cell(m, a, mem, s, settings=self.tuned[(m, a, mem)], phase="final", data_seed=d)
            for m, a, mem in self.arms()
            if (m, a, mem) in self.tuned
            for d in self.strata()
            for s in self.grid.seeds
        ]

    def strata(self) -> list[int | None]:
        """The ``data_seed`` of each stage stratum's cells: None for ``[run] data_seed`` (ids as without
        ``data_seeds``), the seed itself for the others."""
        return [None if d == self.run.data_seed else d for d in self.grid.data_seeds] or [None]

    def data_seed_of(self, cell: Cell) -> int:
        """The data seed a cell's stages were built with."""
        return self.run.data_seed if cell.data_seed is None else cell.data_seed

    def warnings(self) -> list[str]:
        """One line per way the arms differ that is not the algorithm and is not swept (and a ``[dpo]`` table that
        no row uses)."""
        unused = ["[dpo] is set but no [[models]] row has dpo = true: no DPO stage runs"] if (
            "dpo" in self.raw and not any(e.dpo for e in self.models.values())) else []
        return confounder_warnings(self.algorithms, self.sweeps) + unused

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

    def run_context(self, recipe_path) -> "RunContext":
        """What lifecycle hooks receive about this run (``recipe_path``: the copy in the run directory)."""
        from rlhfkit.registry import RunContext

        return RunContext(recipe_name=self.name, recipe_path=str(recipe_path), output_dir=str(Path(recipe_path).parent),
                          trackers=tuple(self.report.trackers))

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
    if origin is typing.Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != any(isinstance(c, bool) for c in typing.get_args(tp)):
            parent, _, key = where.rpartition(".")
            raise RecipeError(f"{parent or where}: {choice_error(key or where, value, typing.get_args(tp))}")
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
        check_number(value, where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        check_string(value, where)
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
            raise RecipeError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(known))}{hint(key, known)}")
        kwargs[key] = _check_value(value, hints.get(key, known[key].type), f"{where}.{key}")
        check_range(key, kwargs[key], f"{where}.{key}")
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
        listed = ", ".join(allowed) or "(none registered)"
        raise RecipeError(f"{where}: unknown {value!r}; allowed: {listed}{hint(value, allowed)}")


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
    except OSError as exc:
        raise RecipeError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    run_copy = path.name == RUN_RECIPE_COPY and (path.parent / "run.json").is_file()
    recipe = parse_recipe(raw, path, base_dir=_recipe_dir(path, run_copy))
    if run_copy:
        # The copy inside a run directory: cells, the report and resumes all see the tuned settings.
        recipe.load_tuned(path.parent)
    return recipe


def _recipe_dir(path: Path, run_copy: bool) -> Path | None:
    """Where relative data paths of a recipe resolve: the recipe file's directory; for the copy inside a run
    directory, the original recipe's (``run.json`` ``recipe_dir``; older runs: the current directory)."""
    if not run_copy:
        return path.resolve().parent
    from rlhfkit.results import read_json

    recorded = (read_json(path.parent / "run.json") or {}).get("recipe_dir")
    return Path(recorded) if isinstance(recorded, str) and recorded else None


def _resolve_data_paths(data: dict, base_dir: Path | None) -> dict:
    """``[data] path`` relative to the recipe's directory (absolute and ``~`` paths are kept as written)."""
    import os

    value = data.get("path")
    if base_dir is None or not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return data
    return {**data, "path": os.path.normpath(base_dir / value)}


def _check_memory(memory: list[str]) -> None:
    """Each strategy composes with valid settings (unknown parts and settings get a "did you mean"); the same
    parts with the same settings in another order are the same strategy listed twice."""
    from rlhfkit.memory import build_memory_plan, strategy_parts

    names = get_registry().names("memory_strategy")
    seen: dict[frozenset, int] = {}
    for i, strategy in enumerate(memory):
        check_string(strategy, f"grid.memory[{i}]")
        try:
            build_memory_plan(strategy)
        except ValueError as exc:
            text = str(exc)
            unknown = [] if "did you mean" in text else [p for p, _ in _parsed_or_empty(strategy) if p not in names]
            raise RecipeError(f"grid.memory[{i}]: {text}{hint(unknown[0], names) if unknown else ''}") from None
        parts = frozenset((s.name, repr(s.params)) for s in strategy_parts(strategy))
        if parts in seen:
            raise RecipeError(
                f"grid.memory[{i}]: {strategy!r} is the same strategy as grid.memory[{seen[parts]}] "
                f"{memory[seen[parts]]!r}; each value must be distinct"
            )
        seen[parts] = i


def _parsed_or_empty(strategy: str) -> list:
    from rlhfkit.memory import parse_strategy

    try:
        return parse_strategy(strategy)
    except ValueError:
        return []


def _parse_data(raw: dict, base_dir: Path | None) -> tuple[str, Any, str]:
    """``[data]``: the data set's name, its validated options (a relative ``path`` resolved, and present) and
    the chat-template mode."""
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise RecipeError(f"data: expected a table, got {data!r}")
    common = build_dataclass(DataSettings, {k: v for k, v in data.items() if k in ("name", "chat_template")}, "data")
    data_name = common.name or default_dataset()
    registry = get_registry()
    _choose(data_name, registry.names("dataset"), "data.name")
    dataset = registry.get("dataset", data_name)
    if "path" in {f.name for f in config_fields(dataset.options_class)}:
        written = data.get("path")
        data = _resolve_data_paths(data, base_dir)
        if isinstance(written, str) and written and not Path(data["path"]).expanduser().is_file():
            where = f"the recipe's directory {base_dir}" if base_dir else "the current directory"
            raise RecipeError(f"data.path: {written!r} is not a file (looked at {data['path']}; relative paths "
                              f"resolve against {where})")
    options = build_dataclass(dataset.options_class, data, "data", skip=("name", "chat_template"))
    return data_name, options, common.chat_template


def _parse_models(rows: Any) -> dict[str, ModelEntry]:
    """``[[models]]`` rows, names unique, each model reference checked."""
    if not rows:
        raise RecipeError("models: at least one [[models]] entry is required (e.g. name = 'llama-tiny', policy = 'llama:tiny')")
    if not isinstance(rows, list):
        raise RecipeError("models: expected [[models]] entries")
    models: dict[str, ModelEntry] = {}
    for i, row in enumerate(rows):
        entry = build_dataclass(ModelEntry, row, f"models[{i}]")
        if entry.name in models:
            raise RecipeError(f"models[{i}].name: {entry.name!r} is used twice")
        models[entry.name] = entry
        _check_model_ref(entry.policy, entry.trust_remote_code, f"models[{i}].policy")
        if has_reward_model(entry):
            _check_model_ref(entry.reward, entry.trust_remote_code, f"models[{i}].reward")
        _check_given_is_checkpoint(entry, f"models[{i}]")
        try:
            check_reward_entry(entry, f"models[{i}]", get_registry())
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
    return models


def _check_given_is_checkpoint(entry: ModelEntry, where: str) -> None:
    """``train_sft``/``train_reward = false`` take a checkpoint as is: a preset (random init) cannot be one."""
    from rlhfkit.models import parse_model_spec

    for key, which in (("train_sft", "policy"), ("train_reward", "reward")):
        if getattr(entry, key):
            continue
        text = getattr(entry, which)
        spec = parse_model_spec(text, entry.trust_remote_code)
        what = "an SFT checkpoint directory" if which == "policy" else "a trained reward-model checkpoint directory"
        if spec.is_preset:
            raise RecipeError(
                f"{where}.{key}: false needs {which} to be {what}, but {text!r} is a preset (random init, it must "
                f"be trained); set {key} = true or point {which} at a checkpoint"
            )
        if spec.checkpoint is not None and not Path(spec.checkpoint).expanduser().is_dir():
            # A given checkpoint's artifact links its files: it must be on this machine.
            raise RecipeError(
                f"{where}.{key}: false needs {which} to be {what} on this machine, but {text!r} is a hub id; "
                f"download it first (e.g. `hf download {spec.checkpoint} --local-dir DIR`) and write the directory"
            )


def parse_recipe(raw: dict, path: Path | None = None, base_dir: Path | None = None) -> Recipe:
    """Validate a parsed TOML recipe; ``base_dir`` is where relative data paths resolve (None: the current
    directory)."""
    from rlhfkit.stages.dpo import DPOStageConfig
    from rlhfkit.stages.reward import RewardStageConfig
    from rlhfkit.stages.sft import SFTStageConfig

    prefix = f"{path}: " if path else ""

    def fail(msg: str):
        raise RecipeError(prefix + msg)

    try:
        for key in raw:
            if key not in TOP_LEVEL_KEYS:
                fail(f"unknown top-level key {key!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}{hint(key, TOP_LEVEL_KEYS)}")
        registry = get_registry()
        name = raw.get("name", path.stem if path else "recipe")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            fail(f"name: {name!r} must be letters, digits, '.', '_' or '-'")
        description = raw.get("description", "")
        if not isinstance(description, str):
            fail("description: expected a string")

        data_name, data_options, chat_template = _parse_data(raw, base_dir)
        models = _parse_models(raw.get("models"))

        grid = build_dataclass(GridSettings, raw.get("grid"), "grid", skip=("sweep",))
        check_range("data_seed", grid.data_seeds, "grid.data_seeds")
        for i, model in enumerate(grid.models):
            _choose(model, list(models), f"grid.models[{i}]")
        for i, algo in enumerate(grid.algorithms):
            _choose(algo, registry.names("algorithm"), f"grid.algorithms[{i}]")
        _check_memory(grid.memory)

        sft = build_dataclass(SFTStageConfig, raw.get("sft"), "sft")
        reward_model = build_dataclass(RewardStageConfig, raw.get("reward_model"), "reward_model")
        dpo = build_dataclass(DPOStageConfig, raw.get("dpo"), "dpo")

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
        dpo=dpo,
        chat_template=chat_template,
    )


def _parse_algorithms(raw: dict, grid: GridSettings):
    """``[rl]`` checked against the shared config, then each algorithm's config built from ``[rl]`` under
    ``[algorithms.<name>]`` (every table written, also for algorithms not in the grid); returns the shared
    table, the grid algorithms' configs and the tables they came from."""
    from rlhfkit.engine.config import RLConfig

    registry = get_registry()
    shared = raw.get("rl", {})
    if not isinstance(shared, dict):
        raise RecipeError(f"rl: expected a table, got {shared!r}")
    algo_tables = raw.get("algorithms", {})
    if not isinstance(algo_tables, dict):
        raise RecipeError(f"algorithms: expected [algorithms.<name>] tables, got {algo_tables!r}")
    for algo, table in algo_tables.items():
        _choose(algo, registry.names("algorithm"), "algorithms")
        if not isinstance(table, dict):
            raise RecipeError(f"algorithms.{algo}: expected a table ([algorithms.{algo}]), got {table!r}")
    shared_fields = {f.name: f for f in config_fields(RLConfig)}
    hints = typing.get_type_hints(RLConfig)
    for key, value in shared.items():
        if key not in shared_fields:
            raise RecipeError(f"rl: unknown key {key!r}; allowed: {', '.join(sorted(shared_fields))}{hint(key, shared_fields)}")
        check_range(key, _check_value(value, hints[key], f"rl.{key}"), f"rl.{key}")
    algorithms, tables = {}, {}
    for algo in dict.fromkeys([*grid.algorithms, *algo_tables]):
        spec = registry.get("algorithm", algo)
        tables[algo] = {**shared, **(algo_tables.get(algo) or {})}
        try:
            config = build_dataclass(spec.config_class, tables[algo], f"algorithms.{algo}")
        except RecipeError:
            _blame_shared(spec.config_class, shared, algo_tables.get(algo) or {}, algo)
            raise
        if algo in grid.algorithms:
            algorithms[algo] = config
    return shared, algorithms, {algo: tables[algo] for algo in grid.algorithms}


def _blame_shared(config_class: type, shared: dict, own: dict, algo: str) -> None:
    """When ``[rl]`` under ``[algorithms.<algo>]`` is refused: an ``[rl]`` value refused on its own is reported
    as ``rl.<key>``; otherwise nothing is raised here (the caller reports ``algorithms.<algo>``)."""
    try:
        build_dataclass(config_class, own, f"algorithms.{algo}")
    except RecipeError:
        return  # the algorithm's own table is wrong by itself
    for key, value in shared.items():
        if key in own:
            continue
        label = f"algorithms.{algo}"
        try:
            build_dataclass(config_class, {**own, key: value}, label)
        except RecipeError as exc:
            from rlhfkit.sweeps import _reason

            raise RecipeError(f"rl.{key}: value {value!r} refused for {algo}: {_reason(str(exc), label)}") from None


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
        raise RecipeError(f"{where}: {exc}{_model_hint(text)}") from None


def _model_hint(text: str) -> str:
    """A "did you mean" for a misspelt family (``lama:tiny``) or preset (``llama:tiyn``)."""
    registry = get_registry()
    family, sep, rest = text.partition(":")
    if not sep or Path(text).expanduser().exists():
        return ""
    adapters = registry.entries["model_adapter"]
    if family not in adapters:
        return hint(family, adapters)
    adapter = registry.get("model_adapter", family)
    return hint(rest, [*adapter.presets, *adapter.known_checkpoints])


def check_trainable(recipe: Recipe) -> None:
    """What ``run`` and ``validate`` need beyond a well-formed recipe: every model row the grid uses can be
    trained (no architecture-only reference), and every tracker named is installed."""
    from rlhfkit.models import parse_model_spec

    prefix = f"{recipe.path}: " if recipe.path else ""
    used = set(recipe.grid.models or recipe.models)
    for i, (name, entry) in enumerate(recipe.models.items()):
        for which in ("policy", "reward") if has_reward_model(entry) else ("policy",):
            text = getattr(entry, which)
            if name in used and parse_model_spec(text, entry.trust_remote_code).is_reference:
                raise RecipeError(
                    f"{prefix}models[{i}].{which}: {text!r} is an architecture-only reference (published config numbers, "
                    "no weights): it can only be planned (rlhfkit plan); to train, use 'family:preset' or a "
                    "checkpoint directory"
                )
        if name in used:
            from rlhfkit.given import check_row

            try:
                check_row(entry, f"models[{i}]")
            except ValueError as exc:
                raise RecipeError(f"{prefix}{exc}") from None
    registry = get_registry()
    for i, tracker in enumerate(recipe.report.trackers):
        spec = registry.get("tracker", tracker)
        if not spec.available():
            missing = " ".join(spec.requires)
            raise RecipeError(
                f"{prefix}report.trackers[{i}]: tracker {tracker!r} is not installed (pip install {missing}); "
                "install it or remove it from [report] trackers"
            )
