"""The training package's import graph: no cycles among gansvc.train's modules (imports inside functions
count), and the launcher side (the launcher, the side channels, the errors, the world) imports no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gansvc" / "train"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Return module -> the gansvc.train modules it imports anywhere in its source (functions too)."""
    modules = {_module(p): p for p in PACKAGE.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from gansvc.train import trainer` imports the module gansvc.train.trainer
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]  # fmt: skip
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one cycle of the graph as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_train_modules_import_one_way():
    graph = import_graph()
    assert {"gansvc.train.trainer", "gansvc.train.distributed", "gansvc.train.launch"} <= set(graph)
    assert "gansvc.train.trainer" in graph["gansvc.train"]  # the package's lazy import of the Trainer is seen
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the launcher and the ranks' process group know nothing of the trainer
    for low in ("gansvc.train.launch", "gansvc.train.distributed", "gansvc.train.sidechannel"):
        assert "gansvc.train.trainer" not in graph[low], low


def test_the_launcher_side_imports_no_torch():
    program = (
        "import sys\n"
        "import gansvc.train, gansvc.train.launch, gansvc.train.sidechannel, gansvc.train.errors, gansvc.train.world\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
