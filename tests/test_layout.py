"""How the library is laid out, read from its source with ``ast`` (nothing is imported): no import
cycle among flyp's modules, the core apart from the workflow, and functions short enough to read."""

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flyp"  # this checkout's, not the installed one
MAX_LINES = 60  # of a function or method, its def line to its last line


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache  # parsed once for every test here
def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), filename=str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def imported(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The flyp modules that module ``name`` imports anywhere in it (in functions too): for
    ``from a import b``, a.b when that is a module, else a; relative imports resolved."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                source = ".".join(base + ([source] if source else []))
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {m for m in found if m in known and m != name}  # a module importing itself is no cycle


@cache
def import_graph() -> dict[str, set[str]]:
    trees = modules()
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    return {n: imported(t, n, n in packages, set(trees)) for n, t in trees.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (a depth-first search)."""
    done, path = set(), []

    def visit(node):
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def test_find_cycle_names_the_modules_of_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_in_functions_and_relative_ones_count():
    tree = ast.parse(
        "import torch\nfrom . import b\nfrom .c import f\n"
        "def g():\n    from flyp import d\n    import flyp.e\n    from flyp.c import h\n"
    )
    known = {"flyp", "flyp.p", "flyp.p.a", "flyp.p.b", "flyp.p.c", "flyp.d", "flyp.e", "flyp.c"}
    assert imported(tree, "flyp.p.a", False, known) == {
        "flyp.p.b",
        "flyp.p.c",
        "flyp.d",
        "flyp.e",
        "flyp.c",
    }
    assert imported(ast.parse("from . import b"), "flyp.p", True, known) == {"flyp.p.b"}


def test_no_import_cycle_among_flyp_modules():
    graph = import_graph()
    assert {"flyp.training", "flyp.distributed", "flyp.loading"} <= graph.keys()
    assert "flyp.distributed" in graph["flyp.training"]  # the walk sees imports at all
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_does_not_import_the_workflow():
    graph = import_graph()
    core = {m for m in graph if m != "flyp.cli" and not m.startswith("flyp.workflow")}
    # What the check looks for, where it is allowed: the CLI runs the workflow's commands.
    assert any(t.startswith("flyp.workflow.") for t in graph["flyp.cli"])
    offenders = {
        f"{m} imports {t}"
        for m in core
        for t in graph[m]
        if t.split(".")[:2] == ["flyp", "workflow"]
    }
    assert not offenders, sorted(offenders)


def function_lengths(node: ast.AST, prefix: str):
    """(qualified name, lines from def to last line) of every function and method in ``node``."""
    for child in ast.iter_child_nodes(node):
        name = f"{prefix}.{getattr(child, 'name', '')}"
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield name, child.end_lineno - child.lineno + 1
        yield from function_lengths(child, name if hasattr(child, "name") else prefix)


def test_function_lengths_count_methods_and_nested_functions():
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n")
    assert list(function_lengths(tree, "m")) == [("m.A.f", 3), ("m.A.f.g", 2)]


def test_no_function_is_longer_than_60_lines():
    offenders = [
        f"{name} ({lines} lines)"
        for module, tree in modules().items()
        for name, lines in function_lengths(tree, module)
        if lines > MAX_LINES
    ]
    assert not offenders, f"functions over {MAX_LINES} lines: {offenders}"
