"""The import graph of gansvc: no cycles (imports inside functions count), and a client that reaches no
server code. Every module under gansvc/ is parsed with `ast`; nothing is imported to build the graph."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gansvc"
# What gansvc.client may reach under gansvc.service: the store-free conversions (and the package itself,
# whose __init__ is a docstring).
CLIENT_MAY_REACH = {"gansvc.service", "gansvc.service.convert"}


def module_names() -> dict[str, Path]:
    """Return every module of the package by dotted name (packages by their __init__)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Return the gansvc modules `name` imports anywhere in its file (functions included).

    A module that calls importlib.import_module imports the gansvc modules its string constants name
    (gansvc.cli's table of subcommand modules).
    """
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    dynamic = any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree))
    found = set()
    for node in ast.walk(tree):
        if dynamic and isinstance(node, ast.Constant) and node.value in modules and node.value != name:
            found.add(node.value)
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from package import submodule` imports the submodule; `from module import name` the module.
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import a.b.c` runs a.b.c; a name not in the package (numpy, grpc) is no edge.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    """Return {module: the gansvc modules it imports}."""
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return the import cycles: every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    """Return every module importing `start` runs: what it imports, transitively, and their parent packages."""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        parents = [node.rsplit(".", i)[0] for i in range(1, node.count(".") + 1)]
        todo.extend(edges.get(node, ()))
        todo.extend(p for p in parents if p in edges)
    return seen


def test_the_graph_sees_imports_inside_functions_and_by_name():
    edges = graph()
    assert "gansvc.train.errors" in edges["gansvc.service.worker"]  # imported inside functions only
    assert "gansvc.runtime.events" in edges["gansvc.service.store"]
    assert "gansvc.service.cli" in edges["gansvc.cli"]  # importlib.import_module of its command table


def test_no_import_cycles():
    found = cycles(graph())
    assert found == [], "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_client_reaches_no_server_module():
    reached = reachable(graph(), "gansvc.client")
    server_side = sorted(m for m in reached if m.startswith("gansvc.service") and m not in CLIENT_MAY_REACH)
    assert server_side == [], f"gansvc.client reaches server modules: {server_side}"
    assert "gansvc.service.convert" in reached and "gansvc._proto.v1.gansvc_pb2" in reached
    # nothing heavy either: no torch-side package
    assert not {m for m in reached if m.split(".")[1:2] and m.split(".")[1] in ("train", "ops", "metrics", "data")}
