"""docs/catalog.md is what ``python -m harness.catalog`` writes from the registries: a
record added, changed or removed without writing the file again fails here, so the tables
cannot drift from the code."""

from __future__ import annotations

import difflib
import os

import pytest

from harness.capabilities import OPTIMIZER_REGISTRY
from harness.catalog import DEFAULT_PATH, catalog, main
from strategies.model_specs import FAMILY_REGISTRY
from strategies.optim import SCHEDULER_REGISTRY
from strategies.payloads import ATTACK_REGISTRY
from strategies.refactorings import REFACTORING_REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRIES = {
    "families": FAMILY_REGISTRY,
    "attack classes": ATTACK_REGISTRY,
    "optimizers": OPTIMIZER_REGISTRY,
    "schedulers": SCHEDULER_REGISTRY,
    "refactorings": REFACTORING_REGISTRY,
}


def test_the_committed_catalog_is_what_the_generator_writes():
    with open(os.path.join(ROOT, DEFAULT_PATH), encoding="utf-8") as handle:
        committed = handle.read()
    written = catalog()
    difference = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            written.splitlines(keepends=True),
            "committed",
            "generated",
            n=0,
        )
    )
    assert not difference, f"{DEFAULT_PATH} is stale: run python -m harness.catalog\n{difference}"


@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=REGISTRIES.keys())
def test_every_record_is_one_row_in_registry_order(registry):
    names = [record.name for record in registry]
    assert len(set(names)) == len(names), "a name is registered twice"
    rows = [line.split(" | ")[0].removeprefix("| ") for line in catalog().splitlines()]
    positions = [rows.index(f"`{name}`") for name in names]
    assert positions == sorted(positions)


def test_check_says_whether_the_file_is_stale(tmp_path, capsys):
    path = str(tmp_path / "catalog.md")
    assert main(["--out", path, "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert main(["--out", path]) == 0
    assert main(["--out", path, "--check"]) == 0
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("edited by hand\n")
    assert main(["--out", path, "--check"]) == 1
