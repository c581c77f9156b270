"""check_checkpointer: the reference recipes pass, and each planted defect is caught."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import find, settings

from harness import InferencePackage, TrainingCheckpoint, check_checkpointer
from harness.checkpointer import resume_equivalence, state_restored
from strategies.training import training_cases

EXAMPLES = 5


def failed(report) -> set[str]:
    return {result.name for result in report.failures}


def test_training_checkpoint_passes():
    report = check_checkpointer(TrainingCheckpoint(), purpose="resume", max_examples=EXAMPLES)
    assert report.ok, [f.message for f in report.failures]
    assert [r.name for r in report.results] == [
        "state_restored",
        "resume_equivalence",
        "cuda_tagged_round_trip",
        "hostile_file_runs_nothing",
    ]


def test_inference_package_passes(tmp_path):
    report = check_checkpointer(InferencePackage(), purpose="inference", max_examples=EXAMPLES)
    assert report.ok, [f.message for f in report.failures]


class ForgetsExtra(TrainingCheckpoint):
    """Restores tensors but not epoch, loss and the other extra entries."""

    def load(self, path, into, map_location=None):
        extra = dict(into.extra)
        super().load(path, into, map_location)
        into.extra.clear()
        into.extra.update(extra)


class IgnoresMapLocation(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        super().load(path, into, None)


class LoadsUnsafely(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        into.model.load_state_dict(checkpoint["model_state_dict"])
        if into.optimizer is not None:
            into.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        if into.scheduler is not None:
            into.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        torch.set_rng_state(checkpoint["rng_state"])
        into.extra.update(epoch=checkpoint["epoch"], loss=checkpoint["loss"])
        into.extra.update(train_loss=checkpoint["train_loss"])


class StaysInTrainingMode(InferencePackage):
    def load(self, path, into, map_location=None):
        super().load(path, into, map_location)
        into.model.train()


class ForgetsRngState(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        rng = torch.get_rng_state()
        super().load(path, into, map_location)
        torch.set_rng_state(rng)


@pytest.mark.parametrize(
    ("checkpointer", "purpose", "broken"),
    [
        (ForgetsExtra(), "resume", "state_restored"),
        (IgnoresMapLocation(), "resume", "cuda_tagged_round_trip"),
        (LoadsUnsafely(), "resume", "hostile_file_runs_nothing"),
        (StaysInTrainingMode(), "inference", "state_restored"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else value,
)
def test_planted_defect_breaks_only_its_invariant(checkpointer, purpose, broken):
    report = check_checkpointer(checkpointer, purpose=purpose, max_examples=EXAMPLES)
    assert failed(report) == {broken}
    failure = report.failures[0]
    assert failure.minimal_example and failure.reproduction.startswith(
        "harness.check_checkpointer("
    )


def test_resume_without_rng_state_is_caught_on_a_model_with_dropout():
    def resume_breaks(case) -> bool:
        try:
            list(resume_equivalence(ForgetsRngState(), case))
        except AssertionError:
            return True
        return False

    case = find(
        training_cases(),
        lambda case: case.has_dropout and resume_breaks(case),
        settings=settings(database=None, derandomize=True, max_examples=1000),
    )
    list(state_restored(ForgetsRngState(), "resume", case))  # the state itself is restored
    list(resume_equivalence(TrainingCheckpoint(), case))  # and saving the RNG state fixes it


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="purpose must be one of"):
        check_checkpointer(TrainingCheckpoint(), purpose="deploy")
    with pytest.raises(TypeError, match="needs save\\(state, path\\) and load"):
        check_checkpointer(object())


def test_command_line_checks_a_file_outside_the_repository(tmp_path):
    script = tmp_path / "my_checkpoints.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch

            class NoOptimizer:
                def save(self, state, path):
                    torch.save({"model": state.model.state_dict()}, path)

                def load(self, path, into, map_location=None):
                    into.model.load_state_dict(torch.load(path, map_location=map_location))
            """
        )
    )
    command = [
        sys.executable,
        "-m",
        "harness",
        "check-checkpointer",
        f"{script}:NoOptimizer",
        "--max-examples",
        "3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "state_restored" in result.stdout and "FAILED" in result.stdout
    assert "reproduce: python -m harness check-checkpointer" in result.stdout
