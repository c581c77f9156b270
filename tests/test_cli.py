"""The command line, run as a user runs it: ``python -m harness`` in a project of their own."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds any one command may take before the test fails

CHECKPOINTERS = '''
import time
import warnings

from harness import InferencePackage, TrainingCheckpoint

import helpers  # a sibling module of this file


class Configured(TrainingCheckpoint):
    """Built with keyword arguments of several types; warns (in bold) on every save."""

    def __init__(self, copies, name, scale=1.0):
        assert (copies, name, scale) == (2, "fast", 0.5), (copies, name, scale)
        assert helpers.READY

    def save(self, state, path):
        warnings.warn("\\x1b[1msaving\\x1b[0m slowly", UserWarning, stacklevel=1)
        super().save(state, path)


def make(copies, name):
    return Configured(copies, name, scale=0.5)


ready = Configured(2, "fast", 0.5)


class StaysInTrainingMode(InferencePackage):
    def load(self, path, into, map_location=None):
        super().load(path, into, map_location)
        into.model.train()


class SleepsInLoad(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        print("sleeping in load", flush=True)
        time.sleep(TIMEOUT)


class NoSave:
    def load(self, path, into, map_location=None):
        pass


class ForgetsBuffers(TrainingCheckpoint):
    """Restores the parameters only: the batch-norm statistics stay the fresh model's."""

    def load(self, path, into, map_location=None):
        buffers = {name: b.clone() for name, b in into.model.named_buffers()}
        super().load(path, into, map_location)
        for name, buffer in into.model.named_buffers():
            buffer.data.copy_(buffers[name])


NOT_A_MODEL = 3
'''.replace("TIMEOUT", str(TIMEOUT))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: checkpointers in a folder of their own, beside a sibling module, run
    from a working directory and a folder that both hold a module called ``strategies``."""
    shadow = "raise ImportError('the user\\'s strategies.py was imported')\n"
    (tmp_path / "strategies.py").write_text(shadow)
    code = tmp_path / "code"
    code.mkdir()
    (code / "strategies.py").write_text(shadow)
    (code / "helpers.py").write_text("READY = True\n")
    (code / "checkpoints.py").write_text(CHECKPOINTERS)
    (code / "syntax_error.py").write_text("def broken(:\n")
    (code / "import_error.py").write_text("import a_module_nobody_has\n")
    (code / "needs_arguments.py").write_text(
        "class NeedsRoot:\n    def __init__(self, root):\n        self.root = root\n"
    )
    return tmp_path


def environment(**changes: str) -> dict[str, str]:
    """The environment for a child: this checkout first on the path, no profile chosen."""
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_PROFILE", "CI")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(changes)
    return env


def harness(*arguments: str, cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "harness", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or environment(),
        timeout=TIMEOUT,
    )


USAGE_ERRORS = {
    "no save method": (["check-checkpointer", "code/checkpoints.py:NoSave"], "no save method"),
    "syntax error": (["check-checkpointer", "code/syntax_error.py:X"], "SyntaxError"),
    "import error": (["check-checkpointer", "code/import_error.py:X"], "ModuleNotFoundError"),
    "init needs arguments": (
        ["check-checkpointer", "code/needs_arguments.py:NeedsRoot"],
        "missing a required argument: 'root'; give keyword arguments with --arg KEY=VALUE",
    ),
    "no such name": (["check-checkpointer", "code/checkpoints.py:Nope"], "defines no 'Nope'"),
    "no such file": (["check-checkpointer", "code/missing.py:X"], "no such file"),
    "not FILE.py:NAME": (["check-checkpointer", "code/checkpoints.py"], "expected FILE.py:NAME"),
    "arg for an instance": (
        ["check-checkpointer", "code/checkpoints.py:ready", "--arg", "copies=2"],
        "is an instance",
    ),
    "arg without =": (
        ["check-checkpointer", "code/checkpoints.py:make", "--arg", "2"],
        "KEY=VALUE",
    ),
    "max-examples 0": (
        ["check-checkpointer", "code/checkpoints.py:ready", "--max-examples", "0"],
        "--max-examples: must be at least 1",
    ),
    "negative timeout": (
        ["check-checkpointer", "code/checkpoints.py:ready", "--timeout", "-1"],
        "--timeout: must be a positive number of seconds",
    ),
    "unknown checkpointer invariant": (
        ["check-checkpointer", "code/checkpoints.py:ready", "--invariant", "nope"],
        "unknown invariant(s) nope",
    ),
    "unknown exclusion": (
        ["check-checkpointer", "code/checkpoints.py:ready", "--exclude", "nope"],
        "exclude names ['nope']",
    ),
    "models: no such file": (
        ["check-checkpointer", "code/checkpoints.py:ready", "--models", "code/missing.py:X"],
        "--models: no such file: code/missing.py",
    ),
    "optimizers: no such name": (
        ["check-checkpointer", "code/checkpoints.py:ready"]
        + ["--optimizers", "code/checkpoints.py:make_optimizer"],
        "--optimizers: code/checkpoints.py defines no 'make_optimizer'",
    ),
    "schedulers: not FILE.py:NAME": (
        ["check-checkpointer", "code/checkpoints.py:ready", "--schedulers", "StepLR"],
        "--schedulers: expected FILE.py:NAME (e.g. my_training.py:make_scheduler)",
    ),
    "unknown invariant": (["check", "--invariant", "nope"], "unknown invariant(s) nope"),
    "unknown profile": (["check", "--profile", "bogus"], "unknown Hypothesis profile 'bogus'"),
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_with_one_line_and_no_traceback(project, case):
    arguments, expected = USAGE_ERRORS[case]
    result = harness(*arguments, cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unknown_profile_from_the_environment_is_a_usage_error(project):
    result = harness("check", cwd=project, env=environment(HARNESS_PROFILE="bogus"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m harness check: error: unknown Hypothesis profile 'bogus' (from "
        "$HARNESS_PROFILE); use one of: dev, ci, thorough"
    ]


def test_traceback_option_adds_the_traceback(project):
    result = harness("check-checkpointer", "code/syntax_error.py:X", "--traceback", cwd=project)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "SyntaxError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m harness")


def test_version_names_the_package_and_torch(project):
    result = harness("--version", cwd=project)
    assert result.returncode == 0
    assert result.stdout.startswith("torch-persistence-harness ") and ", torch 2." in result.stdout


FAST = ["--max-examples", "1", "--invariant", "state_restored", "--seed", "0"]


@pytest.mark.parametrize(
    "target",
    [
        ["code/checkpoints.py:Configured", "--arg", "copies=2", "--arg", "name=fast"]
        + ["--arg", "scale=0.5"],
        ["code/checkpoints.py:make", "--arg", "copies=2", "--arg", "name='fast'"],
        ["code/checkpoints.py:ready"],
    ],
    ids=["class", "factory", "instance"],
)
def test_class_factory_or_instance_beside_a_sibling_module_and_a_strategies_py(project, target):
    # The project's own strategies package is used although the working directory and the
    # checkpointer's folder both hold a strategies.py that raises when imported.
    result = harness("check-checkpointer", *target, *FAST, cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 of 1 invariant held, 0 failed" in result.stdout
    # The checkpointer's warnings are captured and counted, and come without escapes.
    # (once per save: the example and each known hazard checked first)
    assert re.search(r"\n  [1-9][0-9]*x UserWarning: saving slowly\n", result.stdout), result.stdout
    assert "\x1b" not in result.stdout + result.stderr


def test_check_prints_the_seed_and_a_partial_run_keeps_the_full_report(project):
    out = project / "reports"
    out.mkdir()
    (out / "report.json").write_text("the full report")
    options = "--invariant bundle_round_trip --profile dev --seed 7".split()
    result = harness("check", *options, "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert "profile 'dev' (chosen with --profile), seed 7 (rerun with --seed 7)" in first
    assert (out / "report.json").read_text() == "the full report"
    data = json.loads((out / "partial-report.json").read_text())
    assert data["seed"] == 7 and data["profile_reason"] == "chosen with --profile"
    assert [r["name"] for r in data["results"]] == ["bundle_round_trip"]
    assert result.stdout.strip().splitlines()[-1] == data["headline"]


def _minimal_example(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("minimal example: ")]
    assert len(lines) == 1, stdout
    return lines[0]


def test_the_reproduction_command_fails_again_with_the_same_minimal_example(project):
    options = (
        "--purpose inference --max-examples 2 --seed 3 --exclude hostile_file_runs_nothing "
        "--timeout 30 --out first"
    )
    target = "code/checkpoints.py:StaysInTrainingMode"
    first = harness("check-checkpointer", target, *options.split(), cwd=project)
    assert first.returncode == 1, first.stdout + first.stderr
    (command,) = [
        line.removeprefix("reproduce: ")
        for line in first.stdout.splitlines()
        if line.startswith("reproduce: ")
    ]
    assert command == (
        "python -m harness check-checkpointer code/checkpoints.py:StaysInTrainingMode "
        "--purpose inference --max-examples 2 --seed 3 --exclude hostile_file_runs_nothing "
        "--timeout 30 --invariant state_restored"
    )
    report = json.loads((project / "first" / "report.json").read_text())
    assert report["excluded"] == ["hostile_file_runs_nothing"] and report["seed"] == 3
    assert report["results"][0]["failures"][0]["reproduction"] == command
    arguments = shlex.split(command.removeprefix("python -m harness "))
    again = harness(*arguments, cwd=project)
    assert again.returncode == 1, again.stdout + again.stderr
    assert _minimal_example(again.stdout) == _minimal_example(first.stdout)


def test_ctrl_c_writes_the_partial_report_and_exits_130(project):
    child = subprocess.Popen(
        [sys.executable, "-m", "harness", "check-checkpointer"]
        + ["code/checkpoints.py:SleepsInLoad", "--max-examples", "2", "--timeout", "600"]
        + ["--out", "out"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=project,
        env=environment(),
        # A shell that runs tests in the background may have the child ignore SIGINT.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    watchdog = threading.Timer(TIMEOUT, child.kill)
    watchdog.start()
    try:
        seen = []
        for line in child.stdout:
            seen.append(line)
            if line.startswith("sleeping in load"):
                break
        # "[1/N] state_restored ...", N the number of invariants for the purpose.
        assert any(
            line.startswith("[1/") and line.endswith("] state_restored ...\n") for line in seen
        ), seen
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=TIMEOUT)
    finally:
        watchdog.cancel()
        child.kill()
    assert child.returncode == 130, "".join(seen) + stdout + stderr
    assert "Traceback" not in stderr
    data = json.loads((project / "out" / "report.json").read_text())
    assert data["interrupted"] == "state_restored" and data["ok"] is False
    assert data["not_run"][0] == "state_restored"
    assert stdout.strip().splitlines()[-1] == data["headline"]
    assert data["headline"].startswith("INTERRUPTED during state_restored")


# --- the user's own models, optimizers and schedulers ---------------------------------------

EXAMPLES = ROOT / "docs" / "examples" / "my_models.py"


def test_a_reference_that_is_no_model_is_a_usage_error(project):
    result = harness(
        "check-checkpointer",
        "code/checkpoints.py:ready",
        "--models",
        "code/checkpoints.py:NOT_A_MODEL",
        cwd=project,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "models holds 3, which is no harness.UserModel" in result.stderr


def test_the_users_models_reach_the_report_and_its_reproduction_command(project):
    options = [
        "--models",
        f"{EXAMPLES}:CNN",
        "--optimizers",
        f"{EXAMPLES}:OPTIMIZERS",
        "--schedulers",
        "none",
        "--invariant",
        "state_restored",
        "--max-examples",
        "3",
        "--seed",
        "0",
    ]
    first = harness(
        "check-checkpointer", "code/checkpoints.py:ForgetsBuffers", *options, cwd=project
    )
    assert first.returncode == 1, first.stdout + first.stderr
    minimal = _minimal_example(first.stdout)
    assert minimal.startswith("minimal example: UserTrainingCase(model=SmallCNN, "), minimal
    assert "scheduler=None" in minimal
    (command,) = [
        line.removeprefix("reproduce: ")
        for line in first.stdout.splitlines()
        if line.startswith("reproduce: ")
    ]
    assert command == (
        "python -m harness check-checkpointer code/checkpoints.py:ForgetsBuffers "
        "--purpose resume --max-examples 3 --seed 0 "
        f"--models {EXAMPLES}:CNN --optimizers {EXAMPLES}:OPTIMIZERS --schedulers none "
        "--timeout 60 --invariant state_restored"
    )
    again = harness(*shlex.split(command.removeprefix("python -m harness ")), cwd=project)
    assert again.returncode == 1, again.stdout + again.stderr
    assert _minimal_example(again.stdout) == minimal
