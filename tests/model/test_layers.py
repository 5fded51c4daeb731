"""The core never depends on the application (docs/design.md#layers).

Core: every module of ``atfnn_fast`` outside ``atfnn_fast/app/`` (and the ``atfnn_fast.cli``
entry point), with the ``kernels`` and ``export`` subpackages. Application:
``atfnn_fast.app``. Every import statement of every core file is read (those inside
functions too) and resolved to an absolute module name; an edge into the application fails
the test and names the file and line.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = "atfnn_fast.app"
ENTRY_POINTS = {"atfnn_fast.cli"}  # `python -m atfnn_fast.cli`: part of the application
# source folder -> the package its files install as (pyproject.toml's package-dir)
PACKAGE_DIRS = {
    "atfnn_fast": "atfnn_fast",
    "kernels": "atfnn_fast.kernels",
    "export": "atfnn_fast.export",
}


def core_modules() -> dict[str, Path]:
    """{module name: file} of every core module."""
    found = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            if not (name == APP or name.startswith(APP + ".") or name in ENTRY_POINTS):
                found[name] = path
    return found


def imported_modules(module: str, source: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``source``; for ``from X import a`` both
    ``X`` and ``X.a`` are listed (``a`` may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value == APP or node.value.startswith(APP + "."):  # importlib by name
                found.append((node.lineno, node.value))
    return found


def app_edges(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """``module:line -> target`` for every import of the application by a core module.
    ``modules``: {module name: (source, is_package)}."""
    edges = []
    for name, (source, is_package) in modules.items():
        for line, target in imported_modules(name, source, is_package):
            if target == APP or target.startswith(APP + ".") or target in ENTRY_POINTS:
                edges.append(f"{name}:{line} -> {target}")
    return edges


def test_no_core_module_imports_the_application():
    modules = {
        name: (path.read_text(), path.name == "__init__.py")
        for name, path in core_modules().items()
    }
    assert {
        "atfnn_fast.features",
        "atfnn_fast.export.predictor",
        "atfnn_fast.kernels.freq_encoder_op.op",
    } <= set(modules)
    assert not any(name.startswith(APP) for name in modules)
    assert app_edges(modules) == []


@pytest.mark.parametrize(
    "module,is_package,source",
    [
        ("atfnn_fast.features", False, "from .app import train"),
        ("atfnn_fast.features", False, "from .app.train import train_fold"),
        ("atfnn_fast.export.validate", False, "def f():\n    from ..app.datasets import prepare"),
        ("atfnn_fast.export", True, "from ..app import cli"),
        ("atfnn_fast.inference", False, "import atfnn_fast.app.predict"),
        ("atfnn_fast.inference", False, "from atfnn_fast import app"),
        (
            "atfnn_fast.kernels.freq_encoder_op.op",
            False,
            "importlib.import_module('atfnn_fast.app.demo')",
        ),
        ("atfnn_fast.model", False, "from atfnn_fast.cli import main"),
    ],
)
def test_the_walk_catches_every_form_of_core_to_app_import(module, is_package, source):
    """The check above fails when a core module imports the application (lazily, relatively,
    by name): shown here on each form of import."""
    assert app_edges({module: (source, is_package)})


def test_core_imports_stay_core_at_run_time():
    """Importing the whole core (ONNX export included) loads nothing of the application."""
    names = sorted(core_modules())
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({APP!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def package_modules() -> dict[str, Path]:
    """{module name: file} of every module of the package, the application included."""
    found = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def import_graph(modules: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """{module: the package modules it imports}, lazy imports included; ``from pkg import
    name`` counts as an import of ``pkg.name`` where that is a module, else of ``pkg``."""
    graph = {}
    for name, (source, is_package) in modules.items():
        targets = set()
        for _, target in imported_modules(name, source, is_package):
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def mutual_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a <-> b`` for every pair of modules that import each other (a package's
    ``__init__`` importing its own submodules is not counted against them)."""
    pairs = []
    for a, targets in graph.items():
        for b in targets:
            if a < b and a in graph.get(b, set()):
                inner = b.startswith(a + ".") or a.startswith(b + ".")
                if not inner:
                    pairs.append(f"{a} <-> {b}")
    return sorted(pairs)


def test_no_two_modules_import_each_other():
    """No import circle of length two anywhere in the package (docs/design.md#layers):
    every module read, lazy imports included."""
    modules = {
        name: (path.read_text(), path.name == "__init__.py")
        for name, path in package_modules().items()
    }
    assert mutual_imports(import_graph(modules)) == []


def test_the_circle_check_catches_a_lazy_circle():
    modules = {
        "atfnn_fast.config": ("def f():\n    from .reference import ATFNNReference\n", False),
        "atfnn_fast.reference": ("from .config import ATFNNConfig\n", False),
    }
    assert mutual_imports(import_graph(modules)) == ["atfnn_fast.config <-> atfnn_fast.reference"]
