"""The package's structure, read from its imports (function-local ones included)."""

# the front (what the notebook imports) never imports `backstage/` (the instructor, the benchmark, the offline world),
# and no import runs in a circle. The command line (`__main__`) is the top floor and may import everything.

from __future__ import annotations

import ast
from graphlib import TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lab_utils"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports (anywhere in its code)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # `from . import x` imports the module x; `from .m import f`, module m
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if candidate in modules else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def is_backstage(name: str) -> bool:
    return name.startswith("lab_utils.backstage")


def test_the_front_never_imports_the_backstage():
    arrows = [
        f"{a} -> {b}"
        for a, targets in imports().items()
        for b in targets
        if not is_backstage(a) and a != "lab_utils.__main__" and is_backstage(b)
    ]
    assert arrows == []


def test_no_import_runs_in_a_circle():
    TopologicalSorter(imports()).prepare()  # raises CycleError naming the circle


def test_the_reader_sees_every_module():
    """A guard on the test itself: it reads the modules and the arrows that are there."""
    graph = imports()
    assert "lab_utils.checkpoints" in graph and "lab_utils.s3" in graph["lab_utils.checkpoints"]
    assert "lab_utils.backstage.instructor" in graph["lab_utils.__main__"]
