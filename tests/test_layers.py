"""The architecture holds: no import cycle, no upward import, short modules and functions.

Layers, lowest first: data <- models <- automl <- ui <- app (app.py). Every import counts, the
ones inside functions included (that is where version 1 hid its search <-> leaderboard circle).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("data", "models", "automl", "ui")
MAX_AUTOML_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    found["app"] = ROOT / "app.py"
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level or inside functions)."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            resolved = _resolve(name)
            if resolved and resolved != module:
                targets.add(resolved)
    return targets


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> int:
    return len(LAYERS) if module == "app" else LAYERS.index(module.split(".")[0])


def _is_package_reexport(a: str, b: str) -> bool:
    """``pkg/__init__`` lazily re-exporting its own submodules is not a cycle."""
    return (MODULES[a].name == "__init__.py" and b.startswith(a + ".")) or (
        MODULES[b].name == "__init__.py" and a.startswith(b + "."))


def _cycles(graph: dict[str, set[str]] = GRAPH) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if _is_package_reexport(v, w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return components


def test_the_walk_sees_function_local_imports() -> None:
    # automl.search imports automl.leaderboard; the attribution study front imports models.attribution_eval
    assert "automl.leaderboard" in GRAPH["automl.search"]
    assert "models.attribution_eval" in GRAPH["automl.attribution_eval"]
    assert "data._files" in GRAPH["models.predictor"]


def test_no_import_cycle() -> None:
    assert _cycles() == []


def test_no_upward_import() -> None:
    upward = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m)]
    assert upward == []


def test_a_planted_cycle_is_caught() -> None:
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["automl.study"].add("automl.search")
    assert any("automl.study" in c and "automl.search" in c for c in _cycles(graph))
    assert _layer("ui.charts") > _layer("data._io")  # what test_no_upward_import compares


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("automl")))
def test_automl_modules_stay_short(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_AUTOML_LINES, f"{MODULES[module]} has {lines} lines (> {MAX_AUTOML_LINES}): split it by concern"


def test_functions_stay_short() -> None:
    long = []
    for path in [*MODULES.values(), *sorted((ROOT / "benchmarks").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []
