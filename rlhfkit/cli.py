"""The ``rlhfkit`` command line.  Heavy modules are imported inside the commands that need them."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _cmd_plugins(args) -> int:
    from rlhfkit.plugins import get_registry

    entries = get_registry().all()
    rows = [
        {
            "kind": e.kind,
            "name": e.name,
            "plugin": e.plugin,
            "distribution": e.distribution,
            "description": getattr(e.obj, "description", ""),
        }
        for e in entries
    ]
    if args.builtin:
        rows = [row for row in rows if row["distribution"] == "rlhfkit"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        print(plugins_markdown(rows) + plugin_modules_markdown(args.builtin), end="")
        return 0
    from rlhfkit.progress import make_console
    from rich.table import Table

    table = Table(title="rlhfkit plugins")
    for column in ("kind", "name", "distribution", "plugin", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["name"], row["distribution"], row["plugin"], row["description"])
    make_console().print(table)
    return 0


def plugins_markdown(rows: list[dict]) -> str:
    """The registered entries as one Markdown table per kind (docs/plugins.md is this output, checked by a test)."""
    lines = []
    for kind in dict.fromkeys(row["kind"] for row in rows):
        lines += [f"## {kind}", "", "| name | plugin | distribution | description |", "|---|---|---|---|"]
        for row in (r for r in rows if r["kind"] == kind):
            description = " ".join(str(row["description"] or "").split()).replace("|", "\\|")
            lines.append(f"| `{row['name']}` | `{row['plugin']}` | {row['distribution']} | {description} |")
        lines.append("")
    return "\n".join(lines)


def plugin_modules_markdown(builtin_only: bool) -> str:
    """Every loaded plugin and the hooks it implements (lifecycle-only plugins such as trackers register nothing)."""
    from rlhfkit.plugins import distribution_of, get_plugin_manager

    pm = get_plugin_manager()
    lines = ["## plugin modules", "", "| plugin | distribution | hooks |", "|---|---|---|"]
    for name, plugin in pm.list_name_plugin():
        distribution = distribution_of(plugin)
        if plugin is None or (builtin_only and distribution != "rlhfkit"):
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        lines.append(f"| `{name}` | {distribution} | {', '.join(f'`{h}`' for h in hooks)} |")
    return "\n".join(lines) + "\n"


def _cmd_config(args) -> int:
    """A config key's type, default and help (``rlhfkit config rl.kl_coef``), a section's keys, the sections,
    or the whole reference as Markdown (docs/config.md)."""
    from rlhfkit import configdoc

    if args.markdown:
        print(configdoc.HEADER + configdoc.markdown(), end="")
        return 0
    try:
        print(configdoc.describe(args.key or ""))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _load(path: str, trainable: bool = True, executor: str | None = None):
    """Load and validate a recipe; ``trainable``: also refuse what can be planned but not run (architecture-only
    model references, trackers that are not installed) and run the preflight checks (lazy references, data
    files, memory strategies on this machine: what a cell would otherwise find out after the stages trained).
    ``executor``: the command line's ``--executor``, which replaces the recipe's."""
    from rlhfkit.preflight import preflight
    from rlhfkit.recipe import RecipeError, check_trainable, load_recipe

    try:
        recipe = load_recipe(path)
    except (RecipeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if executor:
        recipe.run.executor = executor  # where cells run, not what they compute: not in the fingerprint
    if trainable:
        # Before preflight: a missing Ray/submitit is found in ~0.5 s, not after ~5 s of tokenizers and checks.
        _check_executor(recipe)
    try:
        if trainable:
            check_trainable(recipe)
            preflight(recipe)
    except (RecipeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return recipe


def _check_executor(recipe) -> None:
    """The chosen executor's package is installed (Ray, submitit are optional extras): one line if not."""
    from rlhfkit.executors import ExecutorError, check_installed

    try:
        check_installed(recipe.run.executor)
    except ExecutorError as exc:
        prefix = f"{recipe.path}: " if recipe.path else ""
        raise UsageError(prefix + str(exc)) from None


def _print_damaged(console, context) -> None:
    """One line per damaged cell (result.json unreadable) or cell whose metrics.jsonl stops early."""
    from rlhfkit.results import DAMAGED, metrics_damage

    frame = context.results
    for row in frame[frame["status"] == DAMAGED].to_dict("records"):
        console.print(f"damaged: {row['cell']}: {row['error']}", markup=False, highlight=False, soft_wrap=True)
    for cell in context.cells():
        reason = metrics_damage(context.output_dir, cell)
        if reason:
            console.print(f"damaged: {cell.id}: {reason}", markup=False, highlight=False, soft_wrap=True)


def _fraction(text: str) -> float:
    value = _positive_number(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive_number(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _cmd_validate(args) -> int:
    recipe = _load(args.recipe)
    cells = recipe.cells()
    print(
        f"{args.recipe}: ok: {len(cells)} cells ({len(recipe.models)} model(s) x {len(recipe.grid.algorithms)} "
        f"algorithm(s) x {len(recipe.grid.memory)} memory strateg(ies) x {len(recipe.grid.seeds)} seed(s))"
        + _sweep_summary(recipe)
    )
    for line in recipe.warnings():
        print(line)
    return 0


def _sweep_summary(recipe) -> str:
    """What the sweep adds to the cell count: settings per algorithm, and the tuning phase."""
    counts = {algo: len(recipe.settings_for(algo)) for algo in recipe.grid.algorithms}
    if all(n == 1 for n in counts.values()):
        return ""
    text = "; settings swept: " + ", ".join(f"{algo} {n}" for algo, n in counts.items())
    if recipe.tuning is not None:
        text += (
            f"; tuning on seed(s) {', '.join(map(str, recipe.tuning.seeds))} by {recipe.tuning.metric}, then "
            f"{len(recipe.default_cells())} more cells for the tuned settings"
        )
    return text


def _cmd_run(args) -> int:
    from pathlib import Path

    from rlhfkit.progress import make_console

    from rlhfkit.progress import RichProgress
    from rlhfkit.report import write_reports
    from rlhfkit.runner import RunError, check_output_dir, run_recipe

    recipe = _load(args.recipe, executor=getattr(args, "executor", None))
    if getattr(args, "num_processes", None):
        # Processes per cell changes the results: it joins the recipe (and its results fingerprint).
        recipe.run.num_processes = args.num_processes
        recipe.raw.setdefault("run", {})["num_processes"] = args.num_processes
    output_dir = Path(recipe.output_dir(args.output))
    try:
        check_output_dir(output_dir)
    except RunError as exc:
        raise UsageError(str(exc)) from None
    console = make_console()
    for line in recipe.warnings():
        console.print(line, markup=False, highlight=False, soft_wrap=True)  # one line, even when piped
    console.print(f"[bold]rlhfkit run[/] {args.recipe}: {len(recipe.cells())} cells -> {output_dir}")
    try:
        with RichProgress(console) as progress:
            outcome = run_recipe(recipe, output_dir, progress=progress, retry_failed=args.retry_failed)
    except RunError as exc:
        raise UsageError(str(exc)) from None
    context = write_reports(output_dir, console=console)
    for path in context.written:
        console.print(f"wrote {path}")
    _print_damaged(console, context)
    failed = [c for c, s in outcome.statuses.items() if s != "ok"]
    if failed:
        console.print(f"[yellow]{len(failed)} cell(s) did not finish ok: {', '.join(failed)}")
        return 1
    return 0


def _cmd_report(args) -> int:
    """Exit 0 even when cells are damaged (each named on one line); 2 when the directory cannot be read as a run
    (no recipe.toml, a damaged recipe.toml copy, not writable, a run holds it)."""
    from pathlib import Path

    from rlhfkit.progress import make_console
    from rlhfkit.recipe import RecipeError
    from rlhfkit.report import write_reports
    from rlhfkit.runner import OutputLock, RunError, check_output_dir

    output_dir = Path(args.directory)
    try:
        check_output_dir(output_dir, must_exist=True)
    except RunError as exc:
        raise UsageError(str(exc)) from None
    if not (output_dir / "recipe.toml").is_file():
        raise UsageError(f"{output_dir} is not an rlhfkit run directory (no recipe.toml in it)")
    console = make_console()
    try:
        with OutputLock(output_dir, "rlhfkit report"):
            context = write_reports(output_dir, console=console)
    except RecipeError as exc:
        raise UsageError(f"{output_dir}: its recipe.toml copy cannot be read ({exc}); rerun the recipe into it to restore it") from None
    except RunError as exc:
        raise UsageError(str(exc)) from None
    for path in context.written:
        console.print(f"wrote {path}")
    _print_damaged(console, context)
    return 0


def _cmd_plan(args) -> int:
    from rlhfkit.planner import GiB, format_bytes, plan_recipe

    recipe = _load(args.recipe, trainable=False)  # architecture-only references can be planned, for any hardware
    try:
        plans = plan_recipe(recipe, gpu=args.gpu, num_gpus=args.num_gpus, gpu_memory_gib=args.gpu_memory_gib,
                            typical_length_fraction=args.typical_length)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps([row for plan in plans for row in plan.rows()], indent=2))
        return 0
    from rlhfkit.progress import make_console
    from rich.table import Table

    first = plans[0]
    where = f"{first.num_devices} x {first.hardware} ({format_bytes(first.capacity_bytes)} each)"
    table = Table(title=f"rlhfkit plan {args.recipe}: per-device peak on {where}")
    typical = f"typical ({first.typical_length_fraction:g} x length)"
    for column in ("cell", "generation", "scoring", "training", "peak", typical, "fits"):
        table.add_column(column, justify="left" if column == "cell" else "right")
    for plan in plans:
        cells = [format_bytes(plan.phases[p]) for p in ("generation", "scoring", "training")]
        verdict = "yes" if plan.fits else f"[red]OOM[/] (+{(plan.peak_bytes - plan.capacity_bytes) / GiB:.1f} GiB)"
        table.add_row(plan.cell, *cells, format_bytes(plan.peak_bytes), format_bytes(plan.typical_peak_bytes), verdict)
    console = make_console()
    console.print(table)
    console.print(f"peaks: the worst case, every answer reaches response_length (it decides 'fits'); typical: "
                  f"answers of {first.typical_length_fraction:g} x response_length (--typical-length)")
    missing = [plan.cell for plan in plans if not plan.fits]
    if missing:
        console.print(f"will not fit: {', '.join(missing)}")
    else:
        console.print("every cell fits")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other refusal; ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rlhfkit",
        description="Compare RLHF algorithms (PPO, RLOO) on your own models, data and hardware.",
    )
    from rlhfkit import __version__
    from rlhfkit.planner import GPUS

    parser.add_argument("--version", action="version", version=f"rlhfkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list registered model adapters, algorithms, memory strategies, data sets, reporters, trackers...")
    p.add_argument("--json", action="store_true", help="print a JSON list of {kind, name, plugin, distribution}")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables, one per kind (docs/plugins.md)")
    p.add_argument("--builtin", action="store_true", help="only what rlhfkit itself registers")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("config", help="help on recipe keys: rlhfkit config rl.kl_coef (a key), rl (a section), or none (the sections)")
    p.add_argument("key", nargs="?", help="SECTION or SECTION.KEY, e.g. rl.kl_coef, algorithms.ppo, memory.lora.r")
    p.add_argument("--markdown", action="store_true", help="print the whole reference as Markdown (docs/config.md)")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("validate", help="check a recipe without running anything")
    p.add_argument("recipe", help="path to a TOML recipe")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="train every cell of a recipe's grid and write the report")
    p.add_argument("recipe", help="path to a TOML recipe")
    p.add_argument("--output", "-o", help="output directory (default: the recipe's [run] output, else reports/NAME)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells that ended failed/oom/diverged/timeout/killed")
    p.add_argument("--num-processes", type=_positive_int, metavar="N",
                   help="processes per cell (torch.distributed.run; overrides [run] num_processes)")
    p.add_argument("--executor", choices=("local", "ray", "slurm"),
                   help="where cells run (overrides [run] executor; ray and slurm are optional extras)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("plan", help="predict every cell's per-device memory peak per phase, before running")
    p.add_argument("recipe", help="path to a TOML recipe")
    p.add_argument("--gpu", help=f"device to plan for: {', '.join(GPUS)} (case-insensitive; '80GB' or '80G' "
                   "both work) or cpu (default: [run] gpu, else this machine's RAM)")
    p.add_argument("--num-gpus", type=_positive_int, metavar="N",
                   help="devices (default: [run] num_gpus, else [run] num_processes)")
    p.add_argument("--gpu-memory-gib", type=_positive_number, metavar="GIB",
                   help="a custom device capacity in GiB (with --gpu: instead of that GPU's memory)")
    p.add_argument("--typical-length", type=_fraction, metavar="F",
                   help="size a typical step beside the worst case: answers of F x response_length, 0 < F <= 1 "
                   "(default: [run] plan_typical_length_fraction, 0.5)")
    p.add_argument("--json", action="store_true", help="one JSON object per cell and phase")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("report", help="rebuild every report file of a run directory from its saved results")
    p.add_argument("directory", help="a run's output directory")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from rlhfkit.registry import PluginError

    try:
        return args.func(args)
    except (UsageError, PluginError) as exc:  # a user's recipe or installed plugin: one line, no traceback
        print(f"rlhfkit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rlhfkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
