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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfkit",
        description="Compare RLHF algorithms (PPO, RLOO) on your own models, data and hardware.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list registered model adapters, algorithms, memory strategies, data sets, reporters")
    p.add_argument("--json", action="store_true", help="print a JSON list of {kind, name, plugin, distribution}")
    p.set_defaults(func=_cmd_plugins)
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
