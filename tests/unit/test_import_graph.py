"""The import graph of runtime/ and migrate/ (docs/architecture.md): no circles, no module
importing another module's private name, and the one-way doors between the rooms.

Every import counts, also those inside functions (a lazy import is still a dependency; it only
moves the failure to run time); imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "migrate")

# room -> rooms it must not import (the doors open one way: cli/remote -> engine -> core ->
# migration/archive -> runtime)
FORBIDDEN = {
    "runtime": ("migrate",),
    "migrate.archive": ("migrate.migration", "migrate.remote", "migrate.cli", "migrate.engine", "migrate.checkpoint",
                        "migrate.restore"),
    "migrate.migration": ("migrate.remote", "migrate.cli", "migrate.engine"),
    "migrate.remote": ("migrate.cli",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "_proto" in path.parts:
                continue
            found[_module_name(path)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import in the module."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    out: list[tuple[str, str | None]] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub, None) if sub in modules else (base, alias.name))
    return [(m, n) for m, n in out if m.split(".")[0] in PACKAGES]


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []
    for name, path in modules.items():
        for target, imported in _imports(name, path, modules):
            if target not in modules:
                continue
            if target != name:
                graph[name].add(target)
            if imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name} imports {target}.{imported}")
            owner, _, leaf = target.rpartition(".")
            # a private module may be imported from inside its own package only
            if leaf.startswith("_") and name != owner and not name.startswith(owner + "."):
                private.append(f"{name} imports the private module {target}")
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles() -> None:
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_no_private_names_imported_across_modules() -> None:
    _, private = _graph()
    assert private == []


def test_the_doors_open_one_way() -> None:
    graph, _ = _graph()
    wrong = [
        f"{source} imports {target}"
        for source, targets in graph.items()
        for target in targets
        for room, banned in FORBIDDEN.items()
        if (source == room or source.startswith(room + ".")) and any(target == b or target.startswith(b + ".") for b in banned)
    ]
    assert wrong == []


def test_the_checker_sees_a_circle_and_a_private_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
