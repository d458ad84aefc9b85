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
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rlhfkit plugins")
    for column in ("kind", "name", "distribution", "plugin", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["name"], row["distribution"], row["plugin"], row["description"])
    Console().print(table)
    return 0


def _load(path: str):
    from rlhfkit.recipe import RecipeError, load_recipe

    try:
        return load_recipe(path)
    except RecipeError as exc:
        raise UsageError(str(exc)) from None


def _cmd_validate(args) -> int:
    recipe = _load(args.recipe)
    cells = recipe.cells()
    print(
        f"{args.recipe}: ok: {len(cells)} cells ({len(recipe.models)} model(s) x {len(recipe.grid.algorithms)} "
        f"algorithm(s) x {len(recipe.grid.memory)} memory strateg(ies) x {len(recipe.grid.seeds)} seed(s))"
    )
    return 0


def _cmd_run(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from rlhfkit.progress import RichProgress
    from rlhfkit.report import write_reports
    from rlhfkit.runner import RunError, run_recipe

    recipe = _load(args.recipe)
    output_dir = Path(recipe.output_dir(args.output))
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output {output_dir} exists and is not a directory")
    console = Console()
    console.print(f"[bold]rlhfkit run[/] {args.recipe}: {len(recipe.cells())} cells -> {output_dir}")
    try:
        with RichProgress(console) as progress:
            outcome = run_recipe(recipe, output_dir, progress=progress, retry_failed=args.retry_failed)
    except RunError as exc:
        raise UsageError(str(exc)) from None
    context = write_reports(output_dir, console=console)
    for path in context.written:
        console.print(f"wrote {path}")
    failed = [c for c, s in outcome.statuses.items() if s != "ok"]
    if failed:
        console.print(f"[yellow]{len(failed)} cell(s) did not finish ok: {', '.join(failed)}")
        return 1
    return 0


def _cmd_report(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from rlhfkit.report import write_reports

    output_dir = Path(args.directory)
    if not (output_dir / "recipe.toml").is_file():
        raise UsageError(f"{output_dir} is not an rlhfkit run directory (no recipe.toml in it)")
    console = Console()
    context = write_reports(output_dir, console=console)
    for path in context.written:
        console.print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfkit",
        description="Compare RLHF algorithms (PPO, RLOO) on your own models, data and hardware.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list registered model adapters, algorithms, memory strategies, data sets, reporters")
    p.add_argument("--json", action="store_true", help="print a JSON list of {kind, name, plugin, distribution}")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("validate", help="check a recipe without running anything")
    p.add_argument("recipe", help="path to a TOML recipe")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="train every cell of a recipe's grid and write the report")
    p.add_argument("recipe", help="path to a TOML recipe")
    p.add_argument("--output", "-o", help="output directory (default: the recipe's [run] output, else reports/NAME)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells that ended failed/oom/diverged/timeout")
    p.set_defaults(func=_cmd_run)

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
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"rlhfkit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rlhfkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
