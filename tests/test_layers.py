"""The shape of the code: no import cycle at module level, no overlong function in the cell and planner core,
no private helper imported by the benchmarks, one atomic-write helper."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
# The modules issue 13 split (cell, model set, planner): every function in them stays readable.
SHORT_FUNCTION_FILES = ["rlhfkit/cell.py", "rlhfkit/planner.py", "rlhfkit/memory.py", "rlhfkit/fileio.py",
                        *sorted(str(p.relative_to(REPO)) for p in (REPO / "rlhfkit" / "cellspec").glob("*.py"))]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "plugins":  # installed as rlhfkit_plugins
        parts[0] = "rlhfkit_plugins"
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _module_level_imports(tree: ast.Module, package: str) -> set[str]:
    """Modules imported when the module itself is imported (not inside functions or TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try,)):
                visit(node.body)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    files = list((REPO / "rlhfkit").rglob("*.py")) + list((REPO / "plugins").rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = _module_level_imports(ast.parse(path.read_text()), package)
        # Importing a.b.c imports the packages a and a.b first.
        edges = set()
        for target in imported:
            parts = target.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        graph[name] = {t for t in edges if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_level_import_cycle():
    graph = import_graph()
    assert {"rlhfkit.planner", "rlhfkit.cellspec.modelset", "rlhfkit.registry"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_model_set_and_registry_import_nothing_from_core():
    graph = import_graph()
    assert graph["rlhfkit.cellspec.modelset"] <= {"rlhfkit", "rlhfkit.cellspec"}
    # The registry may lean on plain-data leaves (architecture arithmetic, model references) that themselves
    # import nothing from core.
    leaves = {"rlhfkit.architecture", "rlhfkit.modelspec"}
    assert graph["rlhfkit.registry"] <= {"rlhfkit"} | leaves
    for leaf in leaves:
        assert {m for m in graph[leaf] if m.startswith("rlhfkit")} <= {"rlhfkit"}, leaf


def test_no_function_over_80_lines_in_the_cell_and_planner_core():
    long = []
    for rel in SHORT_FUNCTION_FILES:
        for node in ast.walk(ast.parse((REPO / rel).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_benchmarks_import_no_private_helper():
    private = []
    for path in (REPO / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlhfkit"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not private, private


def test_one_atomic_write_helper_in_the_files_that_use_it():
    """``os.replace`` only in rlhfkit/fileio.py: files and whole directories (artifacts, training checkpoints,
    saved policies) are put in place by its helpers."""
    allowed = {"rlhfkit/fileio.py"}
    users = sorted(str(p.relative_to(REPO)) for d in ("rlhfkit", "plugins", "benchmarks")
                   for p in (REPO / d).rglob("*.py")
                   if not any(part.startswith(".") for part in p.relative_to(REPO).parts)  # venvs, caches
                   and "os.replace(" in p.read_text())
    assert set(users) <= allowed, users
