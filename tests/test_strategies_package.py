"""The package's public surface, as ``hypothesis.strategies``'s: ``strategies.__all__`` names
exactly the public strategies of the modules and the spec types they define, each importable
from the package, and importing the package imports nothing else."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import subprocess
import sys
import typing

import pytest
from hypothesis import strategies as st

import strategies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = (
    "bundles",
    "hazards",
    "model_specs",
    "models",
    "optim",
    "options",
    "payloads",
    "refactorings",
    "tensors",
    "training",
)


def is_strategy(value: object) -> bool:
    """A function whose return annotation is a SearchStrategy."""
    if not inspect.isfunction(value):
        return False
    returned = typing.get_type_hints(value).get("return")
    return returned is st.SearchStrategy or typing.get_origin(returned) is st.SearchStrategy


def is_spec_type(value: object) -> bool:
    """A frozen dataclass: plain data a strategy draws or a spec holds."""
    return (
        isinstance(value, type)
        and dataclasses.is_dataclass(value)
        and value.__dataclass_params__.frozen
    )


def record_types(module) -> set[type]:
    """The record types of the module's registries (an exported tuple of records, such as
    ``FAMILY_REGISTRY``): frozen dataclasses too, but what the project knows, not what a
    strategy draws."""
    registries = [getattr(module, name) for name in module.__all__]
    return {
        type(registry[0])
        for registry in registries
        if isinstance(registry, tuple)
        and registry
        and is_spec_type(type(registry[0]))
        and all(type(record) is type(registry[0]) for record in registry)
    }


def public_names() -> dict[str, str]:
    """The strategies and spec types each module exports and defines, with the module."""
    found = {}
    for name in MODULES:
        module = importlib.import_module(f"strategies.{name}")
        records = record_types(module)
        for exported in module.__all__:
            value = getattr(module, exported)
            defined_here = getattr(value, "__module__", None) == module.__name__
            spec_type = is_spec_type(value) and value not in records
            if defined_here and (is_strategy(value) or spec_type):
                found[exported] = module.__name__
    return found


def test_the_modules_listed_are_every_module_of_the_package():
    modules = {
        name.removesuffix(".py")
        for name in os.listdir(os.path.join(ROOT, "strategies"))
        if name.endswith(".py") and not name.startswith("_")
    }
    assert modules == set(MODULES)


def test_all_names_exactly_the_public_strategies_and_spec_types():
    assert sorted(strategies.__all__) == sorted(public_names())
    assert strategies.__all__ == sorted(strategies.__all__)


@pytest.mark.parametrize(("exported", "module"), sorted(public_names().items()))
def test_each_public_name_is_the_module_s_own(exported, module):
    assert getattr(strategies, exported) is getattr(importlib.import_module(module), exported)


def test_every_public_name_is_importable_from_the_package():
    namespace: dict[str, object] = {}
    exec("from strategies import *", namespace)
    assert set(strategies.__all__) <= set(namespace)
    assert set(strategies.__all__) <= set(dir(strategies))


@pytest.mark.parametrize("name", [n for n, m in sorted(public_names().items()) if n[0].islower()])
def test_each_strategy_builds_with_its_defaults(name):
    assert isinstance(getattr(strategies, name)(), st.SearchStrategy)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_strategy'"):
        strategies.no_such_strategy  # noqa: B018


def test_importing_the_package_imports_nothing_and_keeps_the_strategies_names():
    # In a fresh interpreter: this one has imported every module already.
    code = "\n".join(
        [
            "import sys",
            "before = set(sys.modules)",
            "import strategies",
            "new = sorted(set(sys.modules) - before - {'strategies'})",
            "heavy = ('torch', 'numpy', 'hypothesis', 'harness', 'typing', 'strategies.')",
            "assert not [m for m in new if m.startswith(heavy)], new",
            "from strategies.models import build_model",
            "import strategies.tensors, strategies.bundles, strategies.model_specs",
            "for name in ('models', 'tensors', 'bundles', 'model_specs'):",
            "    module = sys.modules['strategies.' + name]",
            "    assert getattr(strategies, name) is getattr(module, name), name",
            "print('ok')",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
