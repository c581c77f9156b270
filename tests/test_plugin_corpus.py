"""``pytest --harness-write-corpus DIR`` / ``--harness-read-corpus DIR``: a user's own
``check_checkpointer`` tests, in a project in a temporary folder, write the fixed corpus of
``python -m matrix run --checkpointer`` under one torch and load every torch's under another.

The default run uses the default torch only (writer = reader); writing with torch 1.13.1
and reading with 2.13.0 (and the other way) needs ``.tox/oldest`` and
``HARNESS_MATRIX_TWO_VERSIONS=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from harness.capabilities import torch_version
from matrix.user_code import read_user_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = os.path.join(ROOT, ".tox", "oldest", "bin", "python")
VERSION = torch_version()

# A user's tests: the harness's own recipe, and the same save after an edit that forgets the
# optimizer and the scheduler. ``invariants=[]``: no property check, the corpus alone.
USERS_TESTS = """
import pytest
import torch

import harness


class ForgetsOptimizer:
    def save(self, state, path):
        torch.save({"model": state.model.state_dict(), **state.extra}, path)

    def load(self, path, into, map_location=None):
        saved = torch.load(path, map_location=map_location, weights_only=True)
        into.model.load_state_dict(saved.pop("model"))
        into.extra.update(saved)


CHECKPOINTERS = {"reference": harness.TrainingCheckpoint(), "forgets": ForgetsOptimizer()}


@pytest.fixture(params=sorted(CHECKPOINTERS))
def checkpointer(request):
    return CHECKPOINTERS[request.param]


def test_resume(check_checkpointer, checkpointer):
    check_checkpointer(checkpointer, invariants=[])
"""

# Two calls in one test, a test with a property check as well, and one on a model of the
# user's (a case of its own in the corpus).
MORE_TESTS = """
import torch

import harness
from harness.user_models import UserModel
from test_users import ForgetsOptimizer

MODEL = UserModel(
    lambda: torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)),
    example_input=lambda: (torch.randn(5, 3),),
    name="LinearNorm",
)


def test_both_purposes(check_checkpointer):
    check_checkpointer(harness.TrainingCheckpoint(), invariants=[])
    check_checkpointer(harness.InferencePackage(), purpose="inference", invariants=[])


def test_checked_too(check_checkpointer):
    check_checkpointer(
        ForgetsOptimizer(), max_examples=2, seed=0, invariants=["state_restored"]
    )


def test_own_model(check_checkpointer):
    check_checkpointer(harness.TrainingCheckpoint(), models=MODEL, invariants=[])
"""

# The three resume cases and the three inference cases of matrix.user_code.
RESUME = ["resume/Adam-StepLR-linear", "resume/SGD-none-linear"]
RESUME.append("resume/AdamW-none-transformer_encoder_layer")
INFERENCE = ["inference/linear", "inference/conv2d", "inference/batch_norm"]
FORGETS = "test_users.py::test_resume[forgets]"
REFERENCE = "test_users.py::test_resume[reference]"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The user's project: their tests, in a folder of their own."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "test_users.py").write_text(textwrap.dedent(USERS_TESTS))
    return folder


def _pytest(python: str, project: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``python -m pytest ARGUMENTS`` in ``project`` with this checkout importable, no
    harness profile asked for and outside CI."""
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "HARNESS_PROFILE")}
    env.pop("__TOX_ENVIRONMENT_VARIABLE_ORIGINAL_CI", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    command = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", *arguments]
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def _cell_lines(output: str) -> list[str]:
    """The failure lines naming one load each: ``<writer> -> <reader> <case>: <outcome>...``."""
    return [line.strip() for line in output.splitlines() if " -> " in line and line[:2] == "  "]


def _failed(output: str) -> list[str]:
    return sorted(line.split()[1] for line in output.splitlines() if line.startswith("FAILED "))


def test_write_then_read_in_one_run_fails_the_loads_that_differ(project):
    (project / "test_more.py").write_text(textwrap.dedent(MORE_TESTS))
    result = _pytest(sys.executable, project, "--harness-write-corpus=c", "--harness-read-corpus=c")
    assert result.returncode == 1, result.stdout + result.stderr
    assert _failed(result.stdout) == ["test_more.py::test_checked_too", FORGETS], result.stdout
    restored = "differs (restored: ['optimizer']['state'][0]: missing)"
    expected = [f"{VERSION} -> {VERSION} {case}: {restored}" for case in RESUME]
    assert _cell_lines(result.stdout) == expected * 2, result.stdout
    # The property check's report comes first, then the corpus's lines.
    assert result.stdout.index("likely cause (optimizer_not_restored)") < result.stdout.index(
        expected[0]
    )
    corpus = project / "c"
    both = corpus / VERSION / "test_more.py_test_both_purposes"
    manifests = [json.loads((both / str(n) / "manifest.json").read_text()) for n in (1, 2)]
    assert [m["purpose"] for m in manifests] == ["resume", "inference"]
    assert [[case["name"] for case in m["cases"]] for m in manifests] == [RESUME, INFERENCE]
    assert {m["writer"] for m in manifests} == {VERSION}
    second = read_user_records(str(both / "2" / "results.json"))
    assert [r.artifact for r in second] == [
        f"test_more.py::test_both_purposes (call 2): {case}" for case in sorted(INFERENCE)
    ]
    assert {r.outcome for r in second} == {"identical"}, second
    own_model = corpus / VERSION / "test_more.py_test_own_model" / "1"
    own = json.loads((own_model / "manifest.json").read_text())
    assert [case["kind"] for case in own["cases"]] == [
        "checkpointer:resume:Adam",
        "checkpointer:resume:SGD",
        "checkpointer:resume:AdamW",
        "checkpointer:resume:user_model",
    ]
    assert own["cases"][-1]["spec"]["label"] == "LinearNorm"
    # The merged records: every call's, once, named after its test.
    merged = read_user_records(str(corpus / "results.json"))
    by_test = Counter((r.artifact.split(": ")[0], r.outcome) for r in merged)
    assert by_test == {
        (REFERENCE, "identical"): 3,
        (FORGETS, "differs"): 3,
        ("test_more.py::test_both_purposes", "identical"): 3,
        ("test_more.py::test_both_purposes (call 2)", "identical"): 3,
        ("test_more.py::test_checked_too", "differs"): 3,
        ("test_more.py::test_own_model", "identical"): 4,
    }
    grid = (corpus / "grid.md").read_text()
    assert grid.startswith("# Your checkpointer across torch versions (inference, resume)")
    assert f"| {VERSION} | {VERSION} | {FORGETS}: {RESUME[0]} | differs |" in grid
    assert (corpus / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = f"19 loads (6 differs, 13 identical) across torch {VERSION}: {corpus}/results.json"
    assert summary in result.stdout


ADDED_LATER = """
import harness


def test_added_later(check_checkpointer):
    check_checkpointer(harness.TrainingCheckpoint(), invariants=[])
"""


def test_write_in_one_run_and_read_in_another_under_xdist(project):
    corpus = project / "corpus"
    written = _pytest(sys.executable, project, f"--harness-write-corpus={corpus}")
    # Writing judges nothing: the corpus is for the readers.
    assert written.returncode == 0, written.stdout + written.stderr
    assert "torch-persistence-harness" not in written.stdout
    assert sorted(p.name for p in (corpus / VERSION).iterdir()) == [
        "test_users.py_test_resume_forgets_",
        "test_users.py_test_resume_reference_",
    ]
    assert not list(corpus.rglob("results.json"))

    (project / "test_added.py").write_text(textwrap.dedent(ADDED_LATER))
    read = _pytest(sys.executable, project, "-n", "2", f"--harness-read-corpus={corpus}")
    assert read.returncode == 1, read.stdout + read.stderr
    assert _failed(read.stdout) == ["test_added.py::test_added_later", FORGETS], read.stdout
    assert len(_cell_lines(read.stdout)) == 3, read.stdout
    assert (
        f"--harness-read-corpus {corpus}: no corpus of check_checkpointer call 1 of this test "
        "(<torch version>/test_added.py_test_added_later/1/ there)"
    ) in read.stdout
    # The workers' records, merged once by the controller.
    merged = read_user_records(str(corpus / "results.json"))
    assert Counter(r.outcome for r in merged) == {"identical": 3, "differs": 3}
    # The workflow's grid job: the readers' records alone, merged by the command.
    records = project / "records"
    for path in corpus.glob("*/*/*/results.json"):
        copied = records / path.relative_to(corpus)
        copied.parent.mkdir(parents=True)
        copied.write_bytes(path.read_bytes())
    command = [sys.executable, "-m", "matrix.user_code", "merge", str(records)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"merged 6 loads into {records / 'results.json'}\n"
    assert read_user_records(str(records / "results.json")) == merged
    assert (records / "grid.md").read_text() == (corpus / "grid.md").read_text()


def test_without_the_options_nothing_is_written(project):
    result = _pytest(sys.executable, project)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = ("manifest.json", "results.json", "grid.md", "grid.png")
    assert [path for path in project.rglob("*") if path.name in outputs] == []
    assert "torch-persistence-harness" not in result.stdout + result.stderr


def _usage_error(project: Path, *arguments: str) -> list[str]:
    result = _pytest(sys.executable, project, *arguments)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("option", "folder", "says"),
    [
        ("--harness-read-corpus", "missing", "no such folder; write a corpus there first with"),
        ("--harness-read-corpus", "empty", "no corpus there; write one first with"),
        ("--harness-write-corpus", "a_file", "not a folder; give a folder"),
        ("--harness-read-corpus", "a_file", "not a folder; give a folder"),
    ],
)
def test_a_bad_folder_is_a_one_line_usage_error(project, option, folder, says):
    (project / "empty").mkdir()
    (project / "a_file").write_text("")
    (line,) = _usage_error(project, option, folder)
    assert line.startswith(f"ERROR: {option} {folder}: {says}"), line
    assert not list(project.rglob("manifest.json"))


def test_the_options_are_in_the_help(project):
    result = _pytest(sys.executable, project, "--help")
    assert "--harness-write-corpus=DIR" in result.stdout
    assert "--harness-read-corpus=DIR" in result.stdout


_TWO_VERSIONS = os.environ.get("HARNESS_MATRIX_TWO_VERSIONS") == "1" and os.path.isfile(OLDEST)


@pytest.mark.skipif(
    not _TWO_VERSIONS,
    reason="needs .tox/oldest/bin/python (torch 1.13.1) and HARNESS_MATRIX_TWO_VERSIONS=1",
)
def test_written_under_1_13_1_and_read_under_2_13_0_and_back(project):
    """Today's behaviour (docs/your-code-across-versions.md): 2.13.0 restores what the
    recipe saved under 1.13.1 and under itself; 1.13.1's weights_only unpickler refuses
    both (a Python float: pickle's BINFLOAT, pytorch/pytorch#94670)."""
    corpus = project / "corpus"
    current = sys.executable
    for python in (OLDEST, current):
        written = _pytest(python, project, f"--harness-write-corpus={corpus}")
        assert written.returncode == 0, written.stdout + written.stderr
    assert sorted(p.name for p in corpus.iterdir()) == ["1.13.1", VERSION]

    newer = _pytest(current, project, f"--harness-read-corpus={corpus}")
    assert newer.returncode == 1, newer.stdout + newer.stderr
    assert _failed(newer.stdout) == [FORGETS], newer.stdout
    restored = "differs (restored: ['optimizer']['state'][0]: missing)"
    assert _cell_lines(newer.stdout) == [
        f"{writer} -> 2.13.0 {case}: {restored}"
        for writer in ("1.13.1", "2.13.0")
        for case in RESUME
    ]

    older = _pytest(OLDEST, project, f"--harness-read-corpus={corpus}")
    assert older.returncode == 1, older.stdout + older.stderr
    assert _failed(older.stdout) == [FORGETS, REFERENCE], older.stdout
    refused = "refused (UnpicklingError: WeightsUnpickler error: Unsupported operand 71)"
    one_test = [f"{w} -> 1.13.1 {case}: {refused}" for w in ("1.13.1", "2.13.0") for case in RESUME]
    assert _cell_lines(older.stdout) == one_test * 2

    merged = read_user_records(str(corpus / "results.json"))
    cells = Counter((r.artifact.split(": ")[0], r.writer, r.reader, r.outcome) for r in merged)
    assert cells == {
        **{(REFERENCE, w, "2.13.0", "identical"): 3 for w in ("1.13.1", "2.13.0")},
        **{(FORGETS, w, "2.13.0", "differs"): 3 for w in ("1.13.1", "2.13.0")},
        **{
            (t, w, "1.13.1", "refused"): 3
            for t in (REFERENCE, FORGETS)
            for w in ("1.13.1", "2.13.0")
        },
    }
    # 1.13.1's environment has no matplotlib: the grid is the markdown alone.
    assert (corpus / "grid.md").is_file() and not (corpus / "grid.png").exists()
