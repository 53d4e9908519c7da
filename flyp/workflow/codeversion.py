"""Which library code a workflow step runs, as a content hash (Snakemake reruns a job whose hash
changed: it is one of the rule's ``params``).

A step's code is found statically (no import, so parsing the Snakefile stays light): starting from
its entry points (the ``flyp`` CLI command it runs, plus what the registries pick at run time: the
method's class, the benchmark's ``prepare``), every top-level definition those reach, following
names within a module and ``flyp`` imports across modules (including imports inside functions).
So a change to a function only evaluation calls reruns evaluation, not training; comments,
docstrings and formatting change nothing (the hash is of the syntax tree without docstrings).

Conservative where it cannot see: a name that is also a local variable counts as a reference; a
module imported whole (``import flyp.x``) counts whole; a module's registrations (definitions
decorated with ``@register_...``, e.g. the metrics) and its other top-level statements count
whenever anything of it is reached; ``flyp.models`` brings the model configs it registers with
open_clip. The benchmark and method a job uses are picked by name at run time, so the rule names
them (``PICKED_BY_NAME``).
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

from flyp.workflow import parsecache

PACKAGE = "flyp"
ROOT = Path(__file__).resolve().parents[1]  # the flyp package
DATA_FILES = {"flyp.models": ("model_configs", "*.json")}  # files a module reads at import
# Registries whose entry a job picks by name at run time: the rule names it as an entry (the
# method's class, the benchmark's prepare), and the benchmark's definition (classes, templates,
# test sets) as parameter values, so these registrations are not effects of importing a module.
PICKED_BY_NAME = {"register_benchmark", "register_method", "register_fixture"}

Node = tuple[str, str | None]  # (module, top-level name); name None = the whole module


def code_version(*entries: str | Callable) -> str:
    """Hash of the code reached from ``entries``: ``"module:name"``, ``"module"`` (all of it), or
    a function or class (its module and name). Kept in flyp.workflow.parsecache while the package
    does not change (walking the syntax trees of every step takes seconds)."""
    key = " ".join(sorted(":".join(n for n in _entry(e) if n) for e in entries))
    known = parsecache.load("codeversion", ROOT)
    if key not in known:
        digest = hashlib.sha256()
        for name, text in sorted(reached_code(*entries).items()):
            digest.update(json.dumps([name, text]).encode())
        known[key] = digest.hexdigest()[:16]
        parsecache.store("codeversion", known, ROOT)
    return known[key]


def reached_code(*entries: str | Callable) -> dict[str, str]:
    """{"module:name": normalised source} of every definition reached (and data files read)."""
    todo = [_entry(e) for e in entries]
    seen: set[Node] = set()
    while todo:
        node = todo.pop()
        if node in seen or _module(node[0]) is None:
            continue
        seen.add(node)
        module, name = node
        if (module, None) not in seen:  # the module's registrations run whenever it is imported
            todo.extend((module, n) for n in _module(module).side_effects)
        todo.extend(_references(module, name))
    code = {}
    for module, name in seen:
        info = _module(module)
        names = info.definitions if name is None else {name: info.definitions.get(name, [])}
        for n, statements in names.items():
            code[f"{module}:{n}"] = "\n".join(ast.dump(s) for s in statements)
        if module in DATA_FILES:
            folder, pattern = DATA_FILES[module]
            for path in sorted((ROOT / folder).glob(pattern)):
                code[f"{module}:{folder}/{path.name}"] = path.read_text()
    return code


def _entry(entry: str | Callable) -> Node:
    if callable(entry):
        return entry.__module__, entry.__qualname__.split(".")[0]
    module, _, name = entry.partition(":")
    return module, name or None


class _ModuleInfo:
    """A module's top-level definitions (name -> statements, docstrings removed), what each of its
    import statements binds (name -> node), and its statements that run on import for effect."""

    def __init__(self, name: str, tree: ast.Module):
        self.name = name
        self.definitions: dict[str, list[ast.stmt]] = {}
        self.imports: dict[str, Node] = {}
        self.side_effects: list[str] = []
        for stmt in _strip_docstrings(tree).body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                continue
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self.imports.update(_bound_imports(stmt, name))
                continue
            names = _defined_names(stmt)
            # a statement that defines nothing is named by its content, not its position
            key = (
                names[0]
                if names
                else f"<statement {hashlib.sha256(ast.dump(stmt).encode()).hexdigest()[:12]}>"
            )
            for n in names or [key]:
                self.definitions.setdefault(n, []).append(stmt)
            if not names or _registers(stmt):
                self.side_effects.append(key)


@cache
def _module(name: str) -> _ModuleInfo | None:
    """The parsed module ``name`` of this package (None: not ours, or no such file)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    folder = ROOT.joinpath(*parts[1:])
    for path in (folder.with_suffix(".py") if parts[1:] else None, folder / "__init__.py"):
        if path is not None and path.is_file():
            return _ModuleInfo(name, ast.parse(path.read_text(), filename=str(path)))
    return None


def _references(module: str, name: str | None) -> list[Node]:
    """Nodes that the definition ``name`` of ``module`` (or all of it) refers to."""
    info = _module(module)
    statements = (
        [s for stmts in info.definitions.values() for s in stmts]
        if name is None
        else info.definitions.get(name, [])
    )
    nodes: list[Node] = []
    if name is not None and name not in info.definitions and name in info.imports:
        nodes.append(info.imports[name])  # a name the module imports from another (re-export)
    for stmt in statements:
        for sub in ast.walk(stmt):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):  # imports inside a function
                nodes.extend(_bound_imports(sub, module).values())
            elif isinstance(sub, ast.Name):
                if sub.id in info.imports:
                    nodes.append(info.imports[sub.id])
                elif sub.id in info.definitions and sub.id != name:
                    nodes.append((module, sub.id))
    if name is None:
        nodes.extend(info.imports.values())
    return nodes


def _bound_imports(stmt: ast.Import | ast.ImportFrom, module: str) -> dict[str, Node]:
    """{local name: node} bound by an import statement; only this package's modules."""
    bound: dict[str, Node] = {}
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            bound[(alias.asname or alias.name).split(".")[0]] = (alias.name, None)
        return bound
    source = stmt.module or ""  # relative imports (level > 0): this package has none
    for alias in stmt.names:
        submodule = f"{source}.{alias.name}"
        node = (submodule, None) if _module(submodule) is not None else (source, alias.name)
        bound[alias.asname or alias.name] = node
    return bound


def _defined_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    targets = (
        stmt.targets
        if isinstance(stmt, ast.Assign)
        else [stmt.target]
        if isinstance(stmt, (ast.AnnAssign, ast.AugAssign))
        else []
    )
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _registers(stmt: ast.stmt) -> bool:
    """A definition decorated with ``@register_...(...)``: it adds itself to a registry that the
    code reaching the module uses (``PICKED_BY_NAME`` excepted)."""
    for decorator in getattr(stmt, "decorator_list", []):
        func = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (
            isinstance(func, ast.Name)
            and func.id.startswith("register")
            and func.id not in PICKED_BY_NAME
        ):
            return True
    return False


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree
