"""The package's shape: layers that only import downward, no import circles, no streamlit in
the library, and files and functions short enough to read in one sitting (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retino_core"

# Bottom to top; a module may import its own layer and the ones below it, never one above.
LAYERS = (("config", "errors"), ("runs",), ("data",), ("models",), ("judging",), ("training",),
          ("report",), ("grading",), ("engines",), ("cli", "__main__"))
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # retino_core/__init__.py: a docstring and a version
        return 0
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer of {LAYERS}: add it to ARCHITECTURE.md and LAYERS")


def imports_of(module: str, path: Path | None = None) -> set[str]:
    """Every retino_core module ``module`` (at ``path``) imports, at the top or inside a function."""
    path = path or MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("retino_core")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("retino_core"):
                continue
            for alias in node.names:  # `from ..judging import trust` imports a module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer(module)


def test_layers_only_import_downward() -> None:
    upward = [f"{m} (layer {layer(m)}) imports {dep} (layer {layer(dep)})"
              for m, deps in GRAPH.items() for dep in sorted(deps) if layer(dep) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circles() -> None:
    state: dict[str, str] = {}
    circles = []

    def visit(m: str, trail: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == "open":
                circles.append(" -> ".join(trail[trail.index(dep):] + [dep]) if dep in trail else f"{m} -> {dep}")
            elif dep not in state:
                visit(dep, trail + [dep])
        state[m] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_library_never_imports_streamlit() -> None:
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert not offenders


def test_the_layering_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk must catch what it is for: a data module importing the trainer, inside a function."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..training import trainer\n    from .. import runs\n")
    deps = imports_of("retino_core.data.probe", probe)
    assert deps == {"retino_core.training.trainer", "retino_core.runs"}
    assert layer("retino_core.training.trainer") > layer("retino_core.data.probe") > layer("retino_core.runs")


SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "streamlit_app.py"])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_are_short(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: {', '.join(long)}"
