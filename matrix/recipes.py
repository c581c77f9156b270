"""The project's own checkpoint recipes through every torch of the matrix: the committed
example of :mod:`matrix.user_code` (``docs/your-code-across-versions.md``).

``python -m matrix run`` writes, in each version's environment, the corpus of each recipe
of :data:`RECIPES` with that recipe's ``save`` (``recipes-write``: into
``matrix/recipes/<purpose>/corpus/<version>``, where none is committed yet), reads every
committed corpus of it with its ``load`` (``recipes-read``: into
``matrix/recipes/<purpose>/results/<version>.json``), and last merges each recipe's records
into ``matrix/recipes/<purpose>/results.json`` drawn as ``grid.md`` and ``grid.png``:
exactly what ``python -m matrix run --checkpointer`` gives a user for their own code.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable
from typing import Any

from matrix.driver import ROOT, corpora

__all__ = [
    "RECIPES",
    "RECIPES_DIR",
    "committed_versions",
    "merge_recipes",
    "read_recipes",
    "write_recipes",
]

#: Where each recipe's corpora, per-reader results, merged results and grid go.
RECIPES_DIR = os.path.join(ROOT, "matrix", "recipes")
#: Purpose -> the name in :mod:`harness` of the recipe checked for it.
RECIPES = {"resume": "TrainingCheckpoint", "inference": "InferencePackage"}


def _recipe(purpose: str) -> Any:
    import harness

    return getattr(harness, RECIPES[purpose])()


def _corpus_dir(purpose: str) -> str:
    return os.path.join(RECIPES_DIR, purpose, "corpus")


def committed_versions() -> set[str]:
    """The torch versions whose corpus of every recipe is committed."""
    per_purpose = [{os.path.basename(path) for path in corpora(_corpus_dir(p))} for p in RECIPES]
    return set.intersection(*per_purpose)


def write_recipes(say: Callable[[str], None] = print) -> None:
    """Write this torch's corpus of every recipe (an earlier one of this version replaced)."""
    from harness.capabilities import torch_version
    from matrix.user_code import write_user_corpus

    for purpose in RECIPES:
        directory = os.path.join(_corpus_dir(purpose), torch_version())
        shutil.rmtree(directory, ignore_errors=True)
        manifest = write_user_corpus(_recipe(purpose), purpose, directory)
        unwritable = sum("unwritable" in case for case in manifest["cases"])
        say(f"{RECIPES[purpose]}: wrote {len(manifest['cases'])} cases ({unwritable} unwritable)")


def read_recipes(say: Callable[[str], None] = print) -> None:
    """Load every committed corpus of every recipe with that recipe's ``load``; this
    reader's records into ``matrix/recipes/<purpose>/results/<version>.json``."""
    from harness.capabilities import torch_version
    from matrix.user_code import read_user_corpora, write_user_records

    for purpose in RECIPES:
        folders = corpora(_corpus_dir(purpose))
        records = read_user_corpora(_recipe(purpose), folders)
        out = os.path.join(RECIPES_DIR, purpose, "results", f"{torch_version()}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write_user_records(records, out)
        say(f"{RECIPES[purpose]}: read {len(folders)} corpora, {len(records)} records")


def merge_recipes(say: Callable[[str], None] = print) -> None:
    """Merge each recipe's per-reader records into its ``results.json`` and draw its grid."""
    from matrix.user_code import read_user_records, render_user_grid, write_user_records

    for purpose in RECIPES:
        folder = os.path.join(RECIPES_DIR, purpose)
        parts = sorted(glob.glob(os.path.join(folder, "results", "*.json")))
        if not parts:
            continue
        records = [record for part in parts for record in read_user_records(part)]
        write_user_records(records, os.path.join(folder, "results.json"))
        render_user_grid(records, folder, purpose)
        say(f"{RECIPES[purpose]}: merged {len(parts)} readers, {len(records)} records")
