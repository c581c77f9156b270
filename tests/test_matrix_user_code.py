"""``python -m matrix run --checkpointer``: a user's checkpointer across torch environments.

The default run uses the default torch only (writer = reader); the run across 2.13.0 and
1.13.1 needs ``.tox/oldest`` and ``HARNESS_MATRIX_TWO_VERSIONS=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from harness.capabilities import torch_version
from matrix import user_code
from matrix.user_code import (
    LOAD_MODE,
    Regression,
    UserRecord,
    changed_pairs,
    read_user_records,
    regressions,
    render_user_grid,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = os.path.join(ROOT, ".tox", "oldest", "bin", "python")

CORRECT = """
    import harness

    CHECKPOINTER = harness.TrainingCheckpoint()
"""
# The same checkpointer after an edit that forgets the optimizer and the scheduler.
FORGETS_OPTIMIZER = """
    import torch

    class Forgetful:
        def save(self, state, path):
            torch.save({"model": state.model.state_dict(), **state.extra}, path)

        def load(self, path, into, map_location=None):
            saved = torch.load(path, map_location=map_location, weights_only=True)
            into.model.load_state_dict(saved.pop("model"))
            into.extra.update(saved)

    CHECKPOINTER = Forgetful()
"""


def _record(writer: str, reader: str, artifact: str, outcome: str) -> UserRecord:
    return UserRecord(writer, reader, artifact, "checkpointer:resume:Adam", LOAD_MODE, outcome)


def test_a_cell_that_got_worse_is_a_regression_and_one_that_got_better_is_not():
    before = [
        _record("1.13.1", "2.13.0", "resume/a", "identical"),
        _record("1.13.1", "2.13.0", "resume/b", "differs"),
        _record("2.13.0", "2.13.0", "resume/a", "identical"),
        _record("2.13.0", "2.13.0", "resume/b", "identical"),
        _record("2.13.0", "1.13.1", "resume/a", "identical"),  # a pair not run again
    ]
    now = [
        _record("1.13.1", "2.13.0", "resume/a", "refused"),
        _record("1.13.1", "2.13.0", "resume/b", "identical"),
        _record("2.13.0", "2.13.0", "resume/a", "identical"),
    ]
    assert regressions(before, now) == [
        Regression("1.13.1", "2.13.0", "resume/a", "identical", "refused", ""),
        Regression("2.13.0", "2.13.0", "resume/b", "identical", "missing", ""),
    ]
    assert changed_pairs(before, now) == [("1.13.1", "2.13.0"), ("2.13.0", "2.13.0")]
    assert regressions(before, before) == [] and changed_pairs(before, before) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "optimizer:Adam"},
        {"kind": "checkpointer:training:Adam"},
        {"outcome": "fine"},
        {"load_mode": "weights_only"},
    ],
)
def test_a_record_outside_the_vocabulary_is_refused(fields):
    good = {
        "writer": "2.13.0",
        "reader": "2.13.0",
        "artifact": "resume/a",
        "kind": "checkpointer:resume:Adam",
        "load_mode": LOAD_MODE,
        "outcome": "identical",
    }
    with pytest.raises(ValueError):
        UserRecord(**{**good, **fields})


def _run(directory, *arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "matrix", "run", *arguments]
    return subprocess.run(
        command, cwd=directory, env=env, capture_output=True, text=True, timeout=300
    )


def _write(path, source: str) -> None:
    path.write_text(textwrap.dedent(source))


def test_a_planted_regression_fails_the_baseline_and_a_rerun_passes(tmp_path):
    code = tmp_path / "my_checkpoints.py"  # the user's file, outside the repository
    _write(code, CORRECT)
    reference = f"{code}:CHECKPOINTER"
    first = _run(tmp_path, "--checkpointer", reference)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "checkpointer-matrix"  # the default, in the current directory
    records = read_user_records(str(out / "results.json"))
    version = torch_version()
    assert {(r.writer, r.reader) for r in records} == {(version, version)}
    assert len(records) == 3 and {r.outcome for r in records} == {"identical"}, records
    assert {r.kind for r in records} == {
        "checkpointer:resume:Adam",
        "checkpointer:resume:AdamW",
        "checkpointer:resume:SGD",
    }
    assert (out / "grid.md").read_text().count("| ✓ |") >= 1
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "run" / "my_checkpoints.py").read_text() == code.read_text()

    _write(code, FORGETS_OPTIMIZER)
    worse = _run(tmp_path, "--checkpointer", reference, "--out", "edited", "--baseline", str(out))
    assert worse.returncode == 1, worse.stderr
    lines = worse.stdout.splitlines()
    assert lines[0] == f"changed (writer -> reader) pairs since {out}: {version} -> {version}"
    regressed = [line for line in lines if line.startswith("worse: ")]
    assert len(regressed) == 3, worse.stdout
    assert all(": identical -> differs (restored: ['optimizer']" in line for line in regressed)

    _write(code, CORRECT)
    again = _run(tmp_path, "--checkpointer", reference, "--out", "again", "--baseline", str(out))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0].endswith(": none")


# The user's own models, in a file of theirs.
MODELS = """
    import torch
    import harness

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.norm = torch.nn.BatchNorm1d(2)

        def forward(self, x):
            return self.norm(self.fc(x))

    MODELS = [harness.UserModel(build=Tiny, example_input=(torch.ones(4, 3),), name=NAME)]
"""
# A checkpointer that keeps the parameters and forgets the buffers (batch-norm statistics).
FORGETS_BUFFERS = """
    import torch
    import harness

    class Forgetful(harness.InferencePackage):
        def load(self, path, into, map_location=None):
            super().load(path, into, map_location)
            for buffer in into.model.buffers():
                if buffer.is_floating_point():
                    buffer.zero_()

    CHECKPOINTER = Forgetful()
"""


def test_your_models_are_cases_of_their_own(tmp_path, purpose="resume"):
    models = tmp_path / "my_models.py"
    _write(models, MODELS.replace("NAME", repr("tiny")))
    recipe = "TrainingCheckpoint" if purpose == "resume" else "InferencePackage"
    _write(tmp_path / "mine.py", f"import harness\nCHECKPOINTER = harness.{recipe}()\n")
    given = ["--checkpointer", f"{tmp_path}/mine.py:CHECKPOINTER", "--purpose", purpose]
    result = _run(tmp_path, *given, "--models", f"{models}:MODELS")
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_user_records(str(tmp_path / "checkpointer-matrix" / "results.json"))
    mine = [r for r in records if r.kind == f"checkpointer:{purpose}:user_model"]
    assert len(records) == 4 and len(mine) == 1, records
    assert mine[0].artifact.endswith("0-tiny") and mine[0].outcome == "identical", mine


def test_a_loader_that_forgets_your_models_buffers_differs_on_your_model(tmp_path):
    models = tmp_path / "my_models.py"
    _write(models, MODELS.replace("NAME", repr("tiny")))
    _write(tmp_path / "mine.py", FORGETS_BUFFERS)
    given = ["--checkpointer", f"{tmp_path}/mine.py:CHECKPOINTER", "--purpose", "inference"]
    result = _run(tmp_path, *given, "--models", f"{models}:MODELS")
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_user_records(str(tmp_path / "checkpointer-matrix" / "results.json"))
    outcomes = {r.kind.rsplit(":", 1)[1]: r.outcome for r in records}
    # batch_norm and the user's model hold floating-point buffers; linear and conv2d none.
    assert outcomes == {
        "linear": "identical",
        "conv2d": "identical",
        "batch_norm": "differs",
        "user_model": "differs",
    }, records


def test_a_reader_given_other_models_says_so_instead_of_comparing(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    _write(tmp_path / "mine.py", CORRECT)
    for name in ("tiny", "renamed"):
        _write(tmp_path / f"{name}.py", MODELS.replace("NAME", repr(name)))

    def step(*arguments: str) -> None:
        command = [sys.executable, "-m", "matrix.user_code", *arguments]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    checkpointer = f"{tmp_path}/mine.py:CHECKPOINTER"
    corpus, results = str(tmp_path / "corpus"), str(tmp_path / "results.json")
    step("write", checkpointer, "resume", corpus, "--models", f"{tmp_path}/tiny.py:MODELS")
    step("read", checkpointer, results, corpus, "--models", f"{tmp_path}/renamed.py:MODELS")
    (mine,) = [r for r in read_user_records(results) if r.kind.endswith(":user_model")]
    assert mine.outcome == "error"
    assert "the writer's model 0 was 'tiny', --models gives 'renamed'" in mine.message


# A project of the user's, installed into each environment: the checkpointer imports it.
PROJECT = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "my-checkpoints"
        version = "0.1"
    """,
    "my_checkpoints_pkg/__init__.py": """
        import harness

        CHECKPOINTER = harness.TrainingCheckpoint()
    """,
}
USES_PROJECT = """
    from my_checkpoints_pkg import CHECKPOINTER
"""


def test_install_puts_your_project_into_each_environment_first(tmp_path):
    # An environment of its own, so that the install changes nothing else: a venv that sees
    # this one's packages (torch, this project) through a .pth file.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (venv / site / "ours.pth").write_text("\n".join(ours) + "\n")
    project = tmp_path / "project"
    for name, text in PROJECT.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        _write(project / name, text)
    _write(tmp_path / "mine.py", USES_PROJECT)
    given = ["--checkpointer", f"{tmp_path}/mine.py:CHECKPOINTER", "--python", str(python)]
    # Without --install the file cannot be imported: a usage error, before any environment.
    without = _run(tmp_path, *given, "--out", "without")
    assert without.returncode == 2, without.stdout + without.stderr
    assert "No module named 'my_checkpoints_pkg'" in without.stderr
    result = _run(tmp_path, *given, "--install", str(project))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"install {project} into {torch_version()}: ok" in result.stderr
    records = read_user_records(str(tmp_path / "checkpointer-matrix" / "results.json"))
    assert len(records) == 3 and {r.outcome for r in records} == {"identical"}, records


# A load that ends its process: the reader's environment dies.
DIES_ON_LOAD = """
    import os
    import harness

    class Dies(harness.TrainingCheckpoint):
        def load(self, path, into, map_location=None):
            os._exit(3)

    CHECKPOINTER = Dies()
"""


def test_an_environment_that_dies_reading_makes_its_loads_crashed(tmp_path):
    code = tmp_path / "my_checkpoints.py"
    _write(code, DIES_ON_LOAD)
    result = _run(tmp_path, "--checkpointer", f"{code}:CHECKPOINTER", "--out", "died")
    assert result.returncode == 1, result.stdout + result.stderr
    records = read_user_records(str(tmp_path / "died" / "results.json"))
    assert len(records) == 3 and {r.outcome for r in records} == {"crashed"}
    assert all(r.message.startswith("the reader exited 3; see ") for r in records), records


@pytest.mark.parametrize(
    "arguments",
    [
        ["--checkpointer", "missing.py:CHECKPOINTER"],
        ["--checkpointer", "my_checkpoints.py:NOTHING"],
        ["--checkpointer", "my_checkpoints.py"],
        ["--checkpointer", "my_checkpoints.py:CHECKPOINTER", "--baseline", "nowhere"],
        ["--checkpointer", "my_checkpoints.py:CHECKPOINTER", "--python", "/no/python"],
        ["--checkpointer", "my_checkpoints.py:CHECKPOINTER", "--versions", "0.1"],
        ["--python", sys.executable],
    ],
)
def test_a_bad_argument_exits_2_with_one_line(tmp_path, arguments):
    _write(tmp_path / "my_checkpoints.py", CORRECT)
    result = _run(tmp_path, *arguments)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "checkpointer-matrix").exists()


_TWO_VERSIONS = os.environ.get("HARNESS_MATRIX_TWO_VERSIONS") == "1" and os.path.isfile(OLDEST)


@pytest.mark.skipif(
    not _TWO_VERSIONS,
    reason="needs .tox/oldest/bin/python (torch 1.13.1) and HARNESS_MATRIX_TWO_VERSIONS=1",
)
@pytest.mark.parametrize(
    ("name", "purpose"),
    [("TrainingCheckpoint", "resume"), ("InferencePackage", "inference")],
)
def test_the_recipes_across_1_13_1_and_2_13_0(tmp_path, name, purpose):
    """Today's behaviour (docs/your-code-across-versions.md): torch 1.13.1's weights_only
    unpickler refuses every file the recipes write, its own and 2.13.0's (a Python float:
    pickle's BINFLOAT, operand 71); 2.13.0 restores 1.13.1's exactly."""
    code = tmp_path / "recipes.py"
    _write(code, f"import harness\n\nCHECKPOINTER = harness.{name}()\n")
    pythons = ["--python", os.path.join(ROOT, ".tox", "tests", "bin", "python")]
    pythons += ["--python", OLDEST]
    result = _run(
        tmp_path, "--checkpointer", f"{code}:CHECKPOINTER", "--purpose", purpose, *pythons
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_user_records(str(tmp_path / "checkpointer-matrix" / "results.json"))
    by_pair: dict[tuple[str, str], set[str]] = {}
    for record in records:
        by_pair.setdefault((record.writer, record.reader), set()).add(record.outcome)
    assert by_pair == {
        ("1.13.1", "1.13.1"): {"refused"},
        ("2.13.0", "1.13.1"): {"refused"},
        ("1.13.1", "2.13.0"): {"identical"},
        ("2.13.0", "2.13.0"): {"identical"},
    }
    refusals = {r.message for r in records if r.outcome == "refused"}
    assert refusals == {"UnpicklingError: WeightsUnpickler error: Unsupported operand 71"}
    manifest = json.loads(
        (tmp_path / "checkpointer-matrix" / "corpus" / "1.13.1" / "manifest.json").read_text()
    )
    assert manifest["writer"] == "1.13.1" and len(manifest["cases"]) == 3


@pytest.mark.skipif(
    not _TWO_VERSIONS,
    reason="needs .tox/oldest/bin/python (torch 1.13.1) and HARNESS_MATRIX_TWO_VERSIONS=1",
)
def test_1_13_1_refuses_a_python_float(tmp_path):
    """The cause of the refusals above, standalone (pytorch/pytorch#94670): torch 1.13.1's
    weights_only unpickler has no BINFLOAT; an int loads."""
    code = textwrap.dedent(
        f"""
        import pickle, torch
        assert torch.__version__.startswith("1.13.1"), torch.__version__
        for value in (1, 0.5):
            torch.save({{"loss": value}}, {str(tmp_path / "f.pt")!r})
            try:
                torch.load({str(tmp_path / "f.pt")!r}, weights_only=True)
                print(value, "loads")
            except pickle.UnpicklingError as error:
                print(value, str(error).rsplit("error: ", 1)[-1])
        """
    )
    found = subprocess.run([OLDEST, "-c", code], capture_output=True, text=True, timeout=120)
    assert found.stdout.splitlines() == ["1 loads", "0.5 Unsupported operand 71"]


def test_the_grid_shows_a_state_restored_but_not_resumed_apart_from_identical(tmp_path):
    def record(writer: str, reader: str, artifact: str, message: str = "") -> UserRecord:
        kind = "checkpointer:resume:Adam"
        return UserRecord(writer, reader, artifact, kind, LOAD_MODE, "identical", message)

    not_compared = user_code._NOT_COMPARED  # what the reader records where kernels differ
    records = [
        record("2.0.1", "2.0.1", "a"),
        record("2.0.1", "2.0.1", "b"),
        record("2.0.1", "2.13.0", "a"),
        record("2.0.1", "2.13.0", "b", not_compared),
    ]
    render_user_grid(records, str(tmp_path), "resume", picture=False)
    rows = [line for line in (tmp_path / "grid.md").read_text().splitlines() if "**2.0.1**" in line]
    assert rows[0] == "| **2.0.1** | ✓ | ✓°1 |"  # every case; then the Adam table, the same
    assert "Restored (✓°)" in (tmp_path / "grid.md").read_text()
