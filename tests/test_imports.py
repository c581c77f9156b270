"""Imports run in one direction: the foundation of :data:`harness.FOUNDATION` below
``strategies``, ``strategies`` below the rest of ``harness``, and ``matrix`` and ``benchmarks``
on top, neither importing the other. Above them all, the entry points of :data:`ENTRY_POINTS`,
which no project module imports.

Two checks of every module of the four packages. What importing it alone loads: each module is
imported in a child forked from an interpreter that has imported only torch, numpy and
Hypothesis, so no project module is loaded before it. What it could load later: every import
statement of its source, function-level ones included, must obey the same direction.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import FOUNDATION

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "strategies", "matrix", "benchmarks")
#: Importing it runs the command line.
RUNS_ON_IMPORT = {"harness.__main__"}
#: Modules only something outside the project loads, which may import any package but
#: ``benchmarks``: pytest loads the plugin (pyproject's ``pytest11``), whose corpus options
#: drive ``matrix.user_code``.
ENTRY_POINTS = {"harness.pytest_plugin"}

#: Imports each module named on the command line in a child of its own (forked after the
#: third-party libraries are loaded, to keep it cheap) and prints, per module, the project
#: modules the import loaded, or the error it raised.
_IMPORT_EACH = """
import importlib, json, os, sys
import hypothesis, numpy, torch
PACKAGES = {packages!r}
assert not [m for m in sys.modules if m.split(".")[0] in PACKAGES]
found = {{}}
for name in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in PACKAGES)
        except BaseException as error:
            loaded = f"{{type(error).__name__}}: {{error}}"
        with os.fdopen(write, "w") as out:
            json.dump(loaded, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as result:
        found[name] = json.load(result)
    os.wait()
print(json.dumps(found))
"""


def _sources() -> dict[str, Path]:
    """Every module of the project's packages: its name -> its source file."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            sources[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return sources


SOURCES = _sources()
MODULES = list(SOURCES)


def _forbidden(importer: str, imported: str) -> bool:
    """Whether ``importer`` may not import ``imported`` (both project modules)."""
    package, other = importer.split(".")[0], imported.split(".")[0]
    if imported == importer or imported == "harness":  # the package: its names load lazily
        return False
    if imported in ENTRY_POINTS:
        return True
    if importer in ENTRY_POINTS:
        return other == "benchmarks"
    if importer in FOUNDATION:
        return imported not in FOUNDATION
    if package == "strategies":
        return other in ("matrix", "benchmarks") or (
            other == "harness" and imported not in FOUNDATION
        )
    if package == "harness":
        return other in ("matrix", "benchmarks")
    if package == "matrix":
        return other == "benchmarks"
    if package == "benchmarks":
        return other == "matrix"
    return False


def _all_imported_names(module: str) -> set[str]:
    """Every module that ``module``'s source imports anywhere in it (absolute imports)."""
    source = SOURCES[module]
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in MODULES:
                    names.add(submodule)
    return names


def _imported_names(module: str) -> set[str]:
    """The project modules that ``module``'s source imports anywhere in it."""
    return {name for name in _all_imported_names(module) if name.split(".")[0] in PACKAGES}


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str] | str]:
    """Per module: the project modules importing it alone loads."""
    script = _IMPORT_EACH.format(packages=PACKAGES)
    modules = [name for name in MODULES if name not in RUNS_ON_IMPORT]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, *modules],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_foundation_names_modules_that_exist():
    assert FOUNDATION and all(name in MODULES for name in FOUNDATION)


@pytest.mark.parametrize("module", [m for m in MODULES if m not in RUNS_ON_IMPORT])
def test_importing_a_module_alone_loads_only_what_is_below_it(loaded, module):
    found = loaded[module]
    assert isinstance(found, list), f"importing {module} alone failed: {found}"
    wrong = [name for name in found if _forbidden(module, name)]
    assert not wrong, f"importing {module} alone loads {', '.join(wrong)}"


@pytest.mark.parametrize("module", MODULES)
def test_every_import_statement_points_down(module):
    wrong = sorted(name for name in _imported_names(module) if _forbidden(module, name))
    assert not wrong, f"{module} imports {', '.join(wrong)}"


@pytest.mark.parametrize("module", FOUNDATION)
def test_the_foundation_imports_only_the_standard_library_torch_numpy_and_hypothesis(module):
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "hypothesis", "harness"}
    outside = sorted(
        name for name in _all_imported_names(module) if name.split(".")[0] not in allowed
    )
    assert not outside, f"{module} imports {', '.join(outside)}"


def test_lazy_exports_imports_only_the_standard_library():
    # lazy_exports.py sits below harness and strategies: both packages import it.
    tree = ast.parse((ROOT / "lazy_exports.py").read_text())
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    names |= {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert names and {name.split(".")[0] for name in names} <= set(sys.stdlib_module_names)
