"""ap_core's import graph has no circle: each module can be read (and imported) before everything that uses it."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "ap_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(tree: ast.Module, known: set[str]) -> set[str]:
    """The ap_core modules a module imports when it runs: at its top or inside a function (imports for type
    checkers only are left out). `from package import name` counts `package.name` when that is a module."""
    found: set[str] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if is_type_checking_block(node):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in CORE.rglob("*.py")}
    known = set(paths)
    return {name: imported_modules(ast.parse(path.read_text()), known) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path from a module back to itself, or None (depth-first, colouring visited nodes)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_ap_core_has_no_import_circle():
    graph = import_graph()
    assert "ap_core.pruning.base" in graph["ap_core.pruning.demp"]  # the graph sees real edges
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_config_is_plain_data_at_the_bottom_of_the_graph():
    """The config never reaches the registries (ap_core.checks does that, a separate step), and no primitive depends
    on the config."""
    graph = import_graph()
    assert graph["ap_core.settings"] <= {"ap_core.errors", "ap_core.typed_values"}
    assert graph["ap_core.config"] <= {"ap_core.errors", "ap_core.settings", "ap_core.typed_values"}
    assert "ap_core.config" in graph["ap_core.checks"]
    for module in ("ap_core.training", "ap_core.network", "ap_core.retraining", "ap_core.pruning.base"):
        assert "ap_core.config" not in graph[module], module


MAX_MODULE_LINES = 250


def test_every_ap_core_module_stays_under_250_lines():
    """A module that outgrows this holds more than one idea: split it along its seams (issue 17)."""
    too_long = {
        str(path.relative_to(CORE.parent)): n
        for path in sorted(CORE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) >= MAX_MODULE_LINES
    }
    assert not too_long, f"modules of {MAX_MODULE_LINES} lines or more: {too_long}"


def test_no_module_imports_another_modules_private_names():
    """`from ap_core.x import _name` anywhere in the project: make the name public or move the code that needs it."""
    root = CORE.parent
    offenders = [
        f"{path.relative_to(root)}:{node.lineno} imports {node.module}.{alias.name}"
        for folder in ("ap_core", "trainables", "sweeps", "benchmarks", "tests")
        for path in sorted((root / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.split(".")[0] in ("ap_core", "sweeps", "trainables")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not offenders, "\n".join(offenders)
