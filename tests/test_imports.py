"""The import graph of src/mimkit, read statically: no cycle among the imports that run when a module is loaded,
nor among all imports, those inside functions included."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mimkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _nearest_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.AST, path: Path) -> list[str]:
    """The mimkit modules an import statement loads (a package's __init__ is left out: Python runs it first)."""
    if isinstance(node, ast.Import):
        return [m for a in node.names if (m := _nearest_module(a.name))]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        here = module_name(path).split(".")
        here = here if path.name == "__init__.py" else here[:-1]
        base = ".".join(here[: len(here) - (node.level - 1)] + ([node.module] if node.module else []))
    found = []
    for alias in node.names:
        full = f"{base}.{alias.name}"
        target = full if full in MODULES else _nearest_module(base)
        if target is not None:
            found.append(target)
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph(load_time_only: bool) -> dict[str, set[str]]:
    """module -> the mimkit modules it imports; load_time_only: only the imports that run when it is loaded (not
    those inside functions or under `if TYPE_CHECKING`)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        if load_time_only:
            stack = [n for n in tree.body if not _is_type_checking(n)]
            nodes = []
            while stack:  # statements at module level, also inside if / try / with, never inside a def or class body
                node = stack.pop()
                nodes.append(node)
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    stack += [
                        c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt) and not _is_type_checking(c)
                    ]
        else:
            nodes = list(ast.walk(tree))
        graph[name] = {m for node in nodes for m in _imported(node, path) if m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(group)
    return found


def test_the_graph_is_read_correctly():
    """The walker sees a module-level import, a lazy one and a relative one where they are."""
    load_time, everything = import_graph(True), import_graph(False)
    assert "mimkit.config" in load_time["mimkit.bench.suite"]  # `from mimkit.config import ...` at the top
    assert "mimkit.methods.distill" not in load_time["mimkit.bench.suite"]  # imported inside a function
    assert "mimkit.methods.distill" in everything["mimkit.bench.suite"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle_when_modules_load():
    assert cycles(import_graph(load_time_only=True)) == []


def test_no_import_cycle_at_all():
    """Also none among the imports inside functions: a lazy import is for start-up time, never to hide a cycle."""
    assert cycles(import_graph(load_time_only=False)) == []


# Modules under methods/ that run distillations rather than define one: they read other runs' configs, so they
# import config; config never imports them (the registry entry does not), which the cycle tests above check.
RUN_MODULES = {"mimkit.methods.distill.teacher", "mimkit.methods.distill.chain"}


def test_errors_and_domain_modules_do_not_import_config_or_cli():
    """ConfigError lives in mimkit.errors, so the domains (data, models, methods, the engine) raise it, and declare
    and check their config sections, without importing the config package that assembles them (config imports
    them, never the other way round); cli is a leaf."""
    graph = import_graph(load_time_only=False)
    assert graph["mimkit.errors"] == set()
    for name, imported in graph.items():
        if (
            name.startswith(
                (
                    "mimkit.data.",
                    "mimkit.models.",
                    "mimkit.methods",
                    "mimkit.engine.",
                    "mimkit.fast.",
                    "mimkit.eval.options",
                    "mimkit.errors",
                )
            )
            and name not in RUN_MODULES
        ):
            assert "mimkit.config" not in imported, name
        if name not in ("mimkit.cli", "mimkit.__main__"):
            assert "mimkit.cli" not in imported, name


def test_no_method_name_branch_outside_the_registry():
    """What a method does is declared in its registry entry (methods/<name>/spec.py): no code compares a config's
    method name to decide anything."""
    pattern = re.compile(r"\b(method|meth)\.name\s*(==|!=|in\b|not\s+in\b)")
    assert pattern.search('if cfg.method.name == "mae":') and pattern.search("x = meth.name in KINDS")
    found = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in MODULES.values()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
