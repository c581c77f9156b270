"""The recipe for a user's own project (docs/your-code-across-versions.md): the tox sections
of ``docs/examples/tox-torch-versions.ini`` and the GitHub Actions workflow
``docs/examples/torch-versions.yml``.

The default run checks them statically: the workflow parses and fans out write -> read ->
grid over the snippet's torch versions with the documented commands, and tox itself reads
the snippet's environments, dependencies and commands as the docs show them. The real run
of the documented commands in a project in a temporary folder needs
``HARNESS_TOX_RECIPE=1`` (the default torch, about a minute); with
``HARNESS_MATRIX_TWO_VERSIONS=1`` as well it adds torch 1.13.1, a CUDA build of several GB
that the first run installs into ``.tox/recipe/`` and later runs reuse.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import yaml

from harness.capabilities import torch_version
from matrix.user_code import read_user_records
from tests.test_plugin_corpus import FORGETS, REFERENCE, USERS_TESTS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
SNIPPET = EXAMPLES / "tox-torch-versions.ini"
WORKFLOW = EXAMPLES / "torch-versions.yml"
DOCS = ROOT / "docs" / "your-code-across-versions.md"
VERSIONS = ["1.13.1", "2.13.0"]
ENVS = ",".join(f"torch{version}" for version in VERSIONS)
# The two passes, as the docs and the snippet give them.
WRITE = f"tox run -e {ENVS} -- --harness-write-corpus torch-corpus"
READ = f"tox run -e {ENVS} -- --harness-read-corpus torch-corpus"
# A project of the user's: no package of its own to install, the snippet's sections after.
HEADER = "[tox]\nenv_list = {envs}\n\n[testenv]\nskip_install = true\n\n"


def _tox(project: Path, *arguments: str, env: dict[str, str] | None = None):
    """This environment's tox in ``project``; virtualenv and pip rather than uv, because pip
    reads this machine's configuration (the CPU wheel of the default torch on its disk)."""
    command = [sys.executable, "-m", "tox", *arguments[:1], "-x", "testenv.runner=virtualenv"]
    return subprocess.run(
        [*command, *arguments[1:]],
        cwd=project,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=3600,
    )


def _project(folder: Path, envs: str) -> Path:
    folder.mkdir()
    (folder / "tox.ini").write_text(HEADER.format(envs=envs) + SNIPPET.read_text())
    (folder / "test_users.py").write_text(textwrap.dedent(USERS_TESTS))
    return folder


def _section(text: str) -> str:
    """The snippet's ``[testenv:...]`` section: the part a user copies."""
    return text[text.index("[testenv:") :]


def test_the_docs_show_the_snippet_and_its_commands():
    docs = DOCS.read_text()
    assert _section(SNIPPET.read_text()) in docs
    snippet_lines = [
        line.lstrip("# ").split("  #")[0].strip() for line in SNIPPET.read_text().splitlines()
    ]
    for command in (WRITE, READ):
        assert command in docs and command in snippet_lines, command


def test_tox_reads_one_environment_per_version_with_its_torch(tmp_path):
    project = _project(tmp_path / "project", ENVS)
    found = _tox(project, "config", "-e", ENVS, "-k", "deps", "commands", "--", "--x", "y")
    assert found.returncode == 0, found.stdout + found.stderr
    sections = dict(re.findall(r"\[testenv:(\S+)\]\n(.*?)(?=\n\[|\Z)", found.stdout, re.S))
    assert sorted(sections) == [f"torch{version}" for version in VERSIONS]
    common = "deps =\n  pytest\n  torch-persistence-harness\n  "
    assert common + "torch==1.13.1\n  numpy<2\n" in sections["torch1.13.1"]
    assert common + "torch==2.13.0\n" in sections["torch2.13.0"]
    assert all("commands = pytest --x y" in text for text in sections.values()), sections


def _step_runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def _step_using(job: dict, action: str) -> list[dict]:
    return [
        step.get("with", {}) for step in job["steps"] if step.get("uses", "").startswith(action)
    ]


def test_the_workflow_writes_then_reads_every_version_then_draws_the_grid():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    assert list(jobs) == ["write", "read", "grid"]
    assert jobs["read"]["needs"] == "write" and jobs["grid"]["needs"] == "read"
    for name in ("write", "read"):
        assert jobs[name]["strategy"]["matrix"]["torch"] == VERSIONS
    env = "tox run -e torch${{ matrix.torch }} -- "
    assert env + "--harness-write-corpus torch-corpus" in _step_runs(jobs["write"])
    assert env + "--harness-read-corpus torch-corpus" in _step_runs(jobs["read"])
    # Every reader gets every writer's corpus; the grid gets every reader's records.
    (corpus,) = _step_using(jobs["write"], "actions/upload-artifact")
    assert corpus["name"] == "corpus-${{ matrix.torch }}" and corpus["path"] == "torch-corpus/"
    (corpora,) = _step_using(jobs["read"], "actions/download-artifact")
    assert corpora == {"pattern": "corpus-*", "path": "torch-corpus", "merge-multiple": True}
    (records,) = _step_using(jobs["read"], "actions/upload-artifact")
    assert records["name"] == "records-${{ matrix.torch }}"
    assert records["path"] == "torch-corpus/*/*/*/results.json"
    (merged,) = _step_using(jobs["grid"], "actions/download-artifact")
    assert merged == {"pattern": "records-*", "path": "torch-corpus", "merge-multiple": True}
    assert "python -m matrix.user_code merge torch-corpus" in _step_runs(jobs["grid"])


def _wheel(folder: Path) -> Path:
    """A wheel of this checkout, built from a copy (nothing is written into the checkout)."""
    source = folder / "source"
    ignore = shutil.ignore_patterns("__pycache__", "corpus", "bench", "results.json", "grid.*")
    for name in ("harness", "strategies", "matrix"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("lazy_exports.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = folder / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*command, "-q", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("torch_persistence_harness-*.whl")
    return wheel


_RECIPE = os.environ.get("HARNESS_TOX_RECIPE") == "1"
_TWO_VERSIONS = os.environ.get("HARNESS_MATRIX_TWO_VERSIONS") == "1"


@pytest.mark.skipif(not _RECIPE, reason="runs tox (about a minute): HARNESS_TOX_RECIPE=1")
def test_the_documented_passes_in_a_users_project(tmp_path):
    """Write in every environment, then read in every environment, with the snippet's
    commands: the last reader leaves the merged records of every writer x reader."""
    versions = VERSIONS if _TWO_VERSIONS else [torch_version()]
    envs = ",".join(f"torch{version}" for version in versions)
    project = _project(tmp_path / "project", envs)
    wheel = _wheel(tmp_path)
    env = {**os.environ, "PIP_FIND_LINKS": f"/opt/wheels {wheel.parent}", "PIP_NO_CACHE_DIR": "1"}
    for name in ("PYTHONPATH", "HARNESS_PROFILE", "CI"):
        env.pop(name, None)
    # 1.13.1's environment is several GB: kept in .tox/recipe/ between runs.
    work = ROOT / ".tox" / "recipe" if _TWO_VERSIONS else tmp_path / "tox-work"
    created = _tox(project, "run", "--workdir", str(work), "-e", envs, "--notest", env=env)
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
    for version in versions:  # a kept environment gets this checkout's harness too
        python = work / f"torch{version}" / "bin" / "python"
        reinstall = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
        done = subprocess.run([*reinstall, str(wheel)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    def documented(option: str):
        arguments = ["run", "--workdir", str(work), "-e", envs, "--", option, "torch-corpus"]
        return _tox(project, *arguments, env=env)

    written = documented("--harness-write-corpus")
    assert written.returncode == 0, written.stdout[-5000:]
    corpus = project / "torch-corpus"
    assert sorted(p.name for p in corpus.iterdir()) == versions
    read = documented("--harness-read-corpus")
    assert read.returncode != 0, read.stdout[-5000:]  # the forgetful checkpointer fails
    merged = read_user_records(str(corpus / "results.json"))
    cells = Counter((r.artifact.split(": ")[0], r.writer, r.reader, r.outcome) for r in merged)
    expected: Counter = Counter()
    for writer in versions:
        for reader in versions:
            if reader == "1.13.1":  # no Python float through its weights_only unpickler
                expected[(REFERENCE, writer, reader, "refused")] = 3
                expected[(FORGETS, writer, reader, "refused")] = 3
            else:
                expected[(REFERENCE, writer, reader, "identical")] = 3
                expected[(FORGETS, writer, reader, "differs")] = 3
    assert cells == expected
    assert (corpus / "grid.md").is_file()
