"""The import graph of gansvc: no cycles (imports inside functions count), and the borders of the layout:
the clients (gansvc.clients) reach no server module, the server (gansvc.service) no client module, and
what both need (gansvc.api) neither. Every module under gansvc/ is parsed with `ast`; nothing is imported to
build the graph."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gansvc"
SERVER, CLIENTS, API = "gansvc.service", "gansvc.clients", "gansvc.api"


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


@functools.cache  # parsed once per test run; the tests only read it
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


def inside(module: str, package: str) -> bool:
    """Return whether `module` is `package` or one of its modules."""
    return module == package or module.startswith(package + ".")


def reached_from_package(edges: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """Return {module of `package`: every module importing it runs}."""
    return {name: reachable(edges, name) for name in edges if inside(name, package)}


def test_the_graph_sees_imports_inside_functions_and_by_name():
    edges = graph()
    assert "gansvc.train.errors" in edges["gansvc.service.worker"]  # imported inside functions only
    assert "gansvc.runtime.events" in edges["gansvc.service.store"]
    # importlib.import_module of its command table
    assert {"gansvc.service.cli", "gansvc.clients.cli", "gansvc.clients.sweep_cli"} <= edges["gansvc.cli"]


def test_no_import_cycles():
    found = cycles(graph())
    assert found == [], "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_clients_reach_no_server_module():
    reached = reached_from_package(graph(), CLIENTS)
    assert {"gansvc.clients.python", "gansvc.clients.cli", "gansvc.clients.commands"} <= set(reached)
    crossing = {name: sorted(m for m in found if inside(m, SERVER)) for name, found in reached.items()}
    assert {name: found for name, found in crossing.items() if found} == {}, "client modules reach server code"
    # the documented import (gansvc.client) is the clients' too
    assert reachable(graph(), "gansvc.client") == {"gansvc", "gansvc.client"} | reached["gansvc.clients.python"]


def test_the_web_dashboard_is_a_client():
    """gansvc web reads and acts only through the gRPC API: no server module, no torch-side package."""
    reached = reached_from_package(graph(), "gansvc.web")
    assert {"gansvc.web.app", "gansvc.web.cli"} <= set(reached)
    assert "gansvc.clients.python" in reached["gansvc.web.app"] | reached["gansvc.web.cli"]
    for name, found in reached.items():
        assert not {m for m in found if inside(m, SERVER)}, name
    torch_side = {m for m in reached["gansvc.web.app"] if m.split(".")[1:2] and m.split(".")[1] in ("train", "ops")}
    assert not torch_side, "the running dashboard needs no trainer or kernels"
    assert not {m for m in reachable(graph(), SERVER + ".serve") if inside(m, "gansvc.web")}  # serve --web: a process


def test_the_server_reaches_no_client_module():
    reached = reached_from_package(graph(), SERVER)
    assert {"gansvc.service.scheduler", "gansvc.service.server", "gansvc.service.cli"} <= set(reached)
    crossing = {name: sorted(m for m in found if inside(m, CLIENTS) or m == "gansvc.client")
                for name, found in reached.items()}  # fmt: skip
    assert {name: found for name, found in crossing.items() if found} == {}, "server modules reach client code"


def test_the_api_reaches_neither_end():
    reached = reached_from_package(graph(), API)
    assert "gansvc._proto.v1.gansvc_pb2" in reached["gansvc.api.convert"]
    for name, found in reached.items():
        assert not {m for m in found if inside(m, SERVER) or inside(m, CLIENTS)}, name


def test_the_client_commands_live_with_the_clients():
    """Every command of `gansvc` that talks to a server is a client module; `serve` alone is the server's."""
    from gansvc.cli import COMMANDS

    talking = {"submit", "watch", "jobs", "samples", "cancel", "download", "health", "info", "sweep"}
    elsewhere = {name: module for name, (module, _) in COMMANDS.items() if name in talking}
    elsewhere = {name: module for name, module in elsewhere.items() if not inside(module, CLIENTS)}
    assert elsewhere == {}
    assert COMMANDS["serve"][0] == "gansvc.service.cli"


def test_the_python_client_needs_no_torch_side_package():
    reached = reachable(graph(), "gansvc.clients.python")
    assert "gansvc.api.convert" in reached and "gansvc._proto.v1.gansvc_pb2" in reached
    assert not {m for m in reached if m.split(".")[1:2] and m.split(".")[1] in ("train", "ops", "metrics", "data")}


def test_the_documented_client_import_is_the_client():
    import gansvc.client
    import gansvc.clients.python

    for name in gansvc.clients.python.__all__:
        assert getattr(gansvc.client, name) is getattr(gansvc.clients.python, name), name
