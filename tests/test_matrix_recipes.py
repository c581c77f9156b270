"""The project's recipes through the matrix (matrix.recipes): written, read and merged on the
default torch in a temporary folder, and planned into the steps of ``python -m matrix run``."""

from __future__ import annotations

import json
import os

import pytest

from matrix import recipes
from matrix.__main__ import plan
from matrix.user_code import read_user_records


@pytest.fixture
def recipes_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "RECIPES_DIR", str(tmp_path))
    return tmp_path


def _records(recipes_dir, purpose):
    return read_user_records(os.path.join(recipes_dir, purpose, "results.json"))


def test_each_recipe_reads_its_own_corpus_back_identical(recipes_dir):
    recipes.write_recipes(say=lambda line: None)
    assert recipes.committed_versions() == {os.listdir(recipes_dir / "resume" / "corpus")[0]}
    recipes.read_recipes(say=lambda line: None)
    recipes.merge_recipes(say=lambda line: None)
    for purpose in recipes.RECIPES:
        records = _records(recipes_dir, purpose)
        assert len(records) == 3
        assert {record.outcome for record in records} == {"identical"}, records
        assert {record.kind.split(":")[1] for record in records} == {purpose}
        assert (recipes_dir / purpose / "grid.png").stat().st_size > 0
        assert "every case" in (recipes_dir / purpose / "grid.md").read_text()


def test_a_changed_manifest_is_a_cell_that_differs(recipes_dir):
    recipes.write_recipes(say=lambda line: None)
    (corpus,) = (recipes_dir / "resume" / "corpus").iterdir()
    manifest_path = corpus / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # What must come back now says the first tensor of the first case held other bytes.
    expected = json.dumps(manifest["cases"][0]["expected"])
    digest = expected.split('"sha256": "', 1)[1][:64]
    manifest["cases"][0]["expected"] = json.loads(expected.replace(digest, "0" * 64, 1))
    manifest_path.write_text(json.dumps(manifest))
    recipes.read_recipes(say=lambda line: None)
    recipes.merge_recipes(say=lambda line: None)
    outcomes = {r.artifact: r.outcome for r in _records(recipes_dir, "resume")}
    first = manifest["cases"][0]["name"]
    assert outcomes.pop(first) == "differs"
    assert set(outcomes.values()) == {"identical"}


def test_run_writes_only_what_is_missing_then_reads_everything():
    steps = plan(["2.5.1", "2.6.0", "2.7.1"], {"2.5.1", "2.6.0"}, {"2.5.1"}, False, False)
    planned = [(step.phase, step.version, step.commands) for step in steps]
    assert planned == [
        ("write", "2.6.0", [["recipes-write"]]),
        ("write", "2.7.1", [["write"], ["recipes-write"]]),
        *[
            ("read", version, [["verify-corpus"], ["read"], ["recipes-read"]])
            for version in ("2.5.1", "2.6.0", "2.7.1")
        ],
    ]
    rewrite = plan(["2.5.1"], {"2.5.1"}, {"2.5.1"}, True, True)
    assert [step.commands for step in rewrite] == [
        [["write"], ["recipes-write"]],
        [["verify-corpus"], ["read"], ["recipes-read"], ["bench"]],
    ]
