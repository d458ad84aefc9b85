"""Built-in reporters."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import Reporter


@hookimpl
def register_reporters(register):
    register(Reporter("csv", "rlhfkit_plugins.reporters.tables:write_csv", "results.csv, one row per cell"))
    register(Reporter("markdown", "rlhfkit_plugins.reporters.tables:write_markdown", "report.md"))
    register(Reporter("console", "rlhfkit_plugins.reporters.tables:print_console", "rich tables in the terminal"))
