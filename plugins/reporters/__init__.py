"""Built-in reporters."""

from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import Reporter


@hookimpl
def register_reporters(register):
    register(Reporter("csv", "rlhfkit_plugins.reporters.tables:write_csv", "results.csv, one row per cell"))
    register(Reporter("markdown", "rlhfkit_plugins.reporters.tables:write_markdown", "report.md and plots/*.png"))
    register(Reporter("html", "rlhfkit_plugins.reporters.tables:write_html", "report.html, self-contained (figures inline)"))
    register(Reporter("console", "rlhfkit_plugins.reporters.console:print_console", "rich summary tables in the terminal"))
