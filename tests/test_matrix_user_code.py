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
from matrix.user_code import (
    LOAD_MODE,
    Regression,
    UserRecord,
    changed_pairs,
    read_user_records,
    regressions,
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
