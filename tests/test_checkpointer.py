"""check_checkpointer: the reference recipes pass, and each planted defect is caught."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
from hypothesis import find, settings
from hypothesis.errors import InvalidArgument, NoSuchExample

import harness.compare
from harness import InferencePackage, TrainingCheckpoint, check_checkpointer
from harness.checkpointer import CAUSES, checkpointer_invariants
from harness.state import global_rng_state, set_global_rng_state
from strategies.hazards import hazard_cases
from strategies.training import TrainingCase, training_cases

EXAMPLES = 5


def failed(report) -> set[str]:
    return {result.name for result in report.failures}


def test_training_checkpoint_passes():
    report = check_checkpointer(
        TrainingCheckpoint(), purpose="resume", max_examples=EXAMPLES, seed=0
    )
    assert report.ok, [f.message for f in report.failures]
    assert [r.name for r in report.results] == [
        "state_restored",
        "resume_equivalence",
        "save_changes_nothing",
        "cuda_tagged_round_trip",
        "hostile_file_runs_nothing",
        "written_files_run_nothing",
        "damaged_files_detected",
    ]


def test_inference_package_passes(tmp_path):
    report = check_checkpointer(
        InferencePackage(), purpose="inference", max_examples=EXAMPLES, seed=0
    )
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
    """Reads the file with weights_only=False first (and then restores as the recipe does)."""

    def load(self, path, into, map_location=None):
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        with tempfile.TemporaryDirectory() as directory:
            copied = os.path.join(directory, "copy.pt")
            torch.save(checkpoint, copied)
            super().load(copied, into, map_location)


class StaysInTrainingMode(InferencePackage):
    def load(self, path, into, map_location=None):
        super().load(path, into, map_location)
        into.model.train()


class ForgetsRngState(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        rng = torch.get_rng_state()
        super().load(path, into, map_location)
        torch.set_rng_state(rng)


class StepsOnSave(TrainingCheckpoint):
    """Saves after one more optimizer step on the live state, as code that builds the
    optimizer state with a dummy step does: Adam's step counters move."""

    def save(self, state, path):
        if state.optimizer is not None and state.optimizer.state:
            for per_parameter in state.optimizer.state.values():
                if isinstance(per_parameter.get("step"), torch.Tensor):
                    per_parameter["step"] += 1
        super().save(state, path)


class HalvesOnSave(InferencePackage):
    """Casts the live model to half precision to save a smaller file, and back."""

    def save(self, state, path):
        state.model.half()
        super().save(state, path)
        state.model.float()


class EvalOnSave(TrainingCheckpoint):
    """Puts the live model in eval mode to save it and never back in training mode."""

    def save(self, state, path):
        state.model.eval()
        super().save(state, path)


class DrawsOnSave(TrainingCheckpoint):
    """Draws from the global RNG while saving (a random suffix made with torch)."""

    def save(self, state, path):
        torch.rand(1)
        super().save(state, path)


@pytest.mark.parametrize(
    ("checkpointer", "purpose"),
    [(StepsOnSave(), "resume"), (HalvesOnSave(), "inference"), (EvalOnSave(), "resume")],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else value,
)
def test_a_save_that_changes_the_live_state_is_caught(checkpointer, purpose):
    report = check_checkpointer(
        checkpointer,
        purpose=purpose,
        max_examples=10,
        seed=0,
        invariants=["save_changes_nothing"],
        shrink=False,
    )
    assert failed(report) == {"save_changes_nothing"}
    if not isinstance(checkpointer, EvalOnSave):
        assert "likely cause (save_changes_state)" in report.failures[0].message


def test_a_save_that_draws_from_the_rng_fails_only_where_training_draws_too():
    check = _check_of(DrawsOnSave(), "save_changes_nothing").check
    with_dropout = find(
        training_cases(),
        lambda case: case.has_dropout,
        settings=settings(database=None, derandomize=True, max_examples=1000),
    )
    without = find(
        training_cases(),
        lambda case: not case.has_dropout,
        settings=settings(database=None, derandomize=True, max_examples=1000),
    )
    assert "steps after save" in _failure(check, with_dropout)
    assert _failure(check, without) is None


@pytest.mark.parametrize(
    ("checkpointer", "purpose", "broken"),
    [
        (ForgetsExtra(), "resume", "state_restored"),
        (IgnoresMapLocation(), "resume", "cuda_tagged_round_trip"),
        (LoadsUnsafely(), "resume", "hostile_file_runs_nothing written_files_run_nothing"),
        (StaysInTrainingMode(), "inference", "state_restored"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else value,
)
def test_planted_defect_breaks_only_its_invariant(checkpointer, purpose, broken):
    report = check_checkpointer(
        checkpointer, purpose=purpose, max_examples=EXAMPLES, seed=0, shrink=False
    )
    assert failed(report) == set(broken.split())
    failure = report.failures[0]
    assert failure.minimal_example and failure.reproduction.startswith(
        "harness.check_checkpointer("
    )


def _check_of(checkpointer, name: str, purpose: str = "resume", **kwargs):
    (invariant,) = [
        i for i in checkpointer_invariants(checkpointer, purpose, **kwargs) if i.name == name
    ]
    return invariant


def _failure(check, example) -> str | None:
    try:
        list(check(example) or ())
    except AssertionError as failure:
        return str(failure)
    return None


def test_resume_without_rng_state_is_caught_on_a_model_with_dropout():
    resume = _check_of(ForgetsRngState(), "resume_equivalence")
    case = find(
        training_cases(),
        lambda case: case.has_dropout and _failure(resume.check, case) is not None,
        settings=settings(database=None, derandomize=True, max_examples=1000),
    )
    assert "likely cause (rng_not_restored)" in _failure(resume.check, case)
    # the state itself is restored, and saving the RNG state fixes it
    assert _failure(_check_of(ForgetsRngState(), "state_restored").check, case) is None
    assert _failure(_check_of(TrainingCheckpoint(), "resume_equivalence").check, case) is None


class ForgetsHostRng(TrainingCheckpoint):
    """Restores torch's RNG but leaves Python's and numpy's as load found them."""

    def load(self, path, into, map_location=None):
        found = global_rng_state()
        super().load(path, into, map_location)
        set_global_rng_state(
            {**global_rng_state(), "python": found["python"], "numpy": found["numpy"]}
        )


def test_resume_without_python_and_numpy_rng_is_caught_where_the_step_draws_from_them():
    drawn = find(
        training_cases(optimizers=["SGD"], schedulers=[]),
        lambda case: True,
        settings=settings(database=None, derandomize=True),
    )
    case = TrainingCase(dataclasses.replace(drawn.spec, host_rng=True))
    resume = _check_of(ForgetsHostRng(), "resume_equivalence")
    assert "likely cause (host_rng_not_restored)" in _failure(resume.check, case)
    assert _failure(_check_of(ForgetsHostRng(), "state_restored").check, case) is None
    assert _failure(_check_of(TrainingCheckpoint(), "resume_equivalence").check, case) is None
    assert _failure(resume.check, drawn) is None  # a step that draws from neither


class KeepsCastState(TrainingCheckpoint):
    """Loads the optimizer with torch's load_state_dict alone, which casts its state."""

    def load(self, path, into, map_location=None):
        super().load(path, into, map_location)
        saved = torch.load(path, map_location=map_location, weights_only=True)
        into.optimizer.load_state_dict(saved["optimizer_state_dict"])  # casts again


def test_optimizer_state_cast_is_explained_as_torchs():
    restored = _check_of(KeepsCastState(), "state_restored")
    case = find(
        training_cases(optimizers=["NAdam"]),
        lambda case: _failure(restored.check, case) is not None,
        settings=settings(database=None, derandomize=True, max_examples=1000),
    )
    message = _failure(restored.check, case)
    assert "dtype differs" in message
    assert "likely cause (optimizer_state_cast)" in message and "pytorch/pytorch#43706" in message
    assert _failure(_check_of(TrainingCheckpoint(), "state_restored").check, case) is None


class SkipsOptimizer(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        optimizer, into.optimizer = into.optimizer, None
        super().load(path, into, map_location)
        into.optimizer = optimizer


class SkipsScheduler(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        scheduler, into.scheduler = into.scheduler, None
        super().load(path, into, map_location)
        into.scheduler = scheduler


class SkipsScaler(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        scaler, into.scaler = into.scaler, None
        super().load(path, into, map_location)
        into.scaler = scaler


class SkipsData(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        data, into.data = into.data, None
        super().load(path, into, map_location)
        into.data = data


class SkipsModel(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        model_state = copy.deepcopy(into.model.state_dict())
        super().load(path, into, map_location)
        into.model.load_state_dict(model_state)


class SavesArguments(TrainingCheckpoint):
    """Saves the run's argparse.Namespace beside the state, which weights_only=True refuses."""

    def save(self, state, path):
        super().save(state, path)
        checkpoint = torch.load(path, weights_only=True)
        torch.save({**checkpoint, "args": argparse.Namespace(lr=0.1)}, path)


# Each known cause, a checkpointer with that defect, and the invariant that shows it; the
# cases it needs are among the known hazards or drawn often enough for 20 examples at seed 0
# (the dropout and cast causes are tested above).
PLANTED_CAUSES = {
    "refused_by_weights_only": (SavesArguments(), "resume", "state_restored"),
    "cuda_needs_map_location": (IgnoresMapLocation(), "resume", "cuda_tagged_round_trip"),
    "model_not_restored": (SkipsModel(), "resume", "state_restored"),
    "optimizer_not_restored": (SkipsOptimizer(), "resume", "state_restored"),
    "scheduler_not_restored": (SkipsScheduler(), "resume", "state_restored"),
    "extra_not_restored": (ForgetsExtra(), "resume", "state_restored"),
    "left_in_training_mode": (StaysInTrainingMode(), "inference", "state_restored"),
    "save_changes_state": (StepsOnSave(), "resume", "save_changes_nothing"),
    "scaler_not_restored": (SkipsScaler(), "resume", "state_restored"),
    "data_not_restored": (SkipsData(), "resume", "state_restored"),
}


def test_every_known_cause_has_a_planted_defect():
    tested_elsewhere = {"rng_not_restored", "optimizer_state_cast", "host_rng_not_restored"}
    assert set(PLANTED_CAUSES) | tested_elsewhere == {cause.name for cause in CAUSES}


@pytest.mark.parametrize("cause", sorted(PLANTED_CAUSES))
def test_a_known_cause_is_named_with_what_to_do(cause):
    checkpointer, purpose, invariant = PLANTED_CAUSES[cause]
    report = check_checkpointer(
        checkpointer,
        purpose=purpose,
        max_examples=20,
        seed=0,
        shrink=False,
        invariants=[invariant],
    )
    messages = [failure.message for failure in report.failures]
    assert any(f"likely cause ({cause})" in message for message in messages), messages


def test_a_correct_checkpointer_gets_no_cause():
    # The causes read the evidence of failures only: a passing run has no message at all.
    report = check_checkpointer(TrainingCheckpoint(), max_examples=EXAMPLES, seed=0)
    assert report.ok, [f.message for f in report.failures]


def test_gpu_tags_only_what_a_gpu_run_keeps_on_the_gpu(tmp_path):
    class RngBeside(TrainingCheckpoint):
        """Keeps the CPU RNG state in a file of its own, loaded without map_location."""

        def save(self, state, path):
            super().save(state, path)
            torch.save(torch.get_rng_state(), f"{path}.rng")

        def load(self, path, into, map_location=None):
            super().load(path, into, map_location)
            torch.set_rng_state(torch.load(f"{path}.rng", weights_only=True))

    report = check_checkpointer(
        RngBeside(), max_examples=20, seed=0, invariants=["cuda_tagged_round_trip"]
    )
    assert report.ok, [f.message for f in report.failures]


def test_inference_cases_hold_no_uninitialized_lazy_module():
    (restored, *_) = checkpointer_invariants(InferencePackage(), "inference")
    with pytest.raises(NoSuchExample):
        find(
            restored.examples(),
            lambda case: case.spec.has_uninitialized_parameters,
            settings=settings(database=None, max_examples=300),
        )


def test_minimal_examples_are_plain_specs():
    report = check_checkpointer(StaysInTrainingMode(), purpose="inference", max_examples=5, seed=0)
    example = report.failures[0].minimal_example
    assert example.startswith("build_model(ModelSpec(input=InputSpec("), example
    assert "Parameter containing" not in example and "tensor(" not in example


def test_exclusions_leave_out_what_they_name():
    excluded = ["dropout", "NAdam", "StepLR", "resume_equivalence"]
    invariants = checkpointer_invariants(TrainingCheckpoint(), "resume", exclude=excluded)
    assert "resume_equivalence" not in [invariant.name for invariant in invariants]
    with pytest.raises(NoSuchExample):
        find(
            invariants[0].examples(),
            lambda case: (
                any(layer.kind == "dropout" for layer in case.spec.model.walk())
                or case.spec.optimizer.name == "NAdam"
                or (case.spec.scheduler is not None and case.spec.scheduler.name == "StepLR")
            ),
            settings=settings(database=None, max_examples=300),
        )


def test_bad_arguments_are_clear_errors():
    for arguments, match in [
        ({"purpose": "deploy"}, "purpose must be one of"),
        ({"max_examples": 0}, "max_examples=0 must be a positive int"),
        ({"timeout": -1}, "timeout=-1 must be a positive number"),
        ({"exclude": "dropout"}, "must be a collection of names"),
        ({"exclude": ["no_such_thing"]}, "no invariant, model family, optimizer or scheduler"),
        ({"invariants": ["resume_equivalence"], "purpose": "inference"}, "invariants names"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            check_checkpointer(TrainingCheckpoint(), **arguments)
    with pytest.raises(InvalidArgument, match="needs save\\(state, path\\) and load"):
        check_checkpointer(object())


USER_FILE = """
import time

import torch

from harness import TrainingCheckpoint


class CheckpointException(BaseException):
    \"\"\"Like torch.distributed.checkpoint's, not an Exception.\"\"\"


class RaisesKeyError(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        checkpoint = torch.load(path, weights_only=True)
        into.model.load_state_dict(checkpoint["no such key"])


class RaisesBaseException(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        raise CheckpointException("collective failed")


class Exits(TrainingCheckpoint):
    def save(self, state, path):
        raise SystemExit(3)


class Hangs(TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        try:
            time.sleep(600)
        except BaseException:  # a loader that swallows the first interruption
            time.sleep(600)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    path = tmp_path / "user_checkpoints.py"
    path.write_text(USER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("user_checkpoints")
    yield module
    sys.modules.pop("user_checkpoints", None)


def test_an_exception_in_user_code_names_its_line(user_module):
    report = check_checkpointer(user_module.RaisesKeyError(), max_examples=3, seed=0, shrink=False)
    line = USER_FILE.splitlines().index(
        '        into.model.load_state_dict(checkpoint["no such key"])'
    )
    message = report.failures[0].message
    assert "load raised KeyError: 'no such key'" in message
    assert f"user_checkpoints.py:{line + 1} in load" in message


@pytest.mark.parametrize("name", ["RaisesBaseException", "Exits"])
def test_a_base_exception_in_user_code_is_a_failure_not_a_crash(user_module, name):
    report = check_checkpointer(getattr(user_module, name)(), max_examples=3, seed=0, shrink=False)
    assert not report.ok and len(report.results) == 7
    assert all(
        "raised CheckpointException: collective failed" in f.message
        or "save raised SystemExit: 3" in f.message
        for f in report.failures
    ), [f.message for f in report.failures]


def test_a_hang_is_a_failure_and_the_run_goes_on(user_module):
    report = check_checkpointer(
        user_module.Hangs(), max_examples=3, seed=0, timeout=0.2, invariants=["state_restored"]
    )
    (failure,) = report.failures
    assert "load did not return within 0.2 s" in failure.message
    # reported on the first example that hung, the first known hazard, without shrinking
    # (each try would hang as long) and without going on to the drawn examples
    assert failure.minimal_example == repr(hazard_cases("resume")[0])
    assert report.results[0].examples == 0 and report.results[0].shrinking == 0


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
        "--invariant",
        "state_restored",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "state_restored" in result.stdout and "FAILED" in result.stdout
    assert "reproduce: python -m harness check-checkpointer" in result.stdout


class FrozenInferencePackage(InferencePackage):
    """Freezes the loaded model, as deployment code often does."""

    def load(self, path, into, map_location=None):
        super().load(path, into, map_location)
        into.model.requires_grad_(False)


def test_a_loader_that_freezes_the_model_for_inference_passes():
    # Seed 3 draws an RNN whose output differed in the last bits when the original still
    # required grad (finding 23).
    report = check_checkpointer(
        FrozenInferencePackage(), purpose="inference", max_examples=10, seed=3
    )
    assert report.ok, [f.message for f in report.failures]


def test_finding_23_matmul_result_depends_on_requires_grad_under_no_grad():
    # torch 2.13.0: a non-contiguous batched input times a weight gives other bits when the
    # weight requires grad, under no_grad too (each result repeats exactly: two kernels, no
    # nondeterminism). If this starts failing, torch made the result independent of the
    # flag: update docs/findings.md (finding 23).
    generator = torch.Generator().manual_seed(0)
    differing = 0
    for _ in range(20):
        x = torch.randn(1, 2, 4, generator=generator).transpose(0, 1)
        weight = torch.randn(4, 4, generator=generator)
        trainable = weight.clone().requires_grad_()
        with torch.no_grad():
            frozen = torch.nn.functional.linear(x, weight)
            with_grad = torch.nn.functional.linear(x, trainable)
            assert torch.equal(frozen, torch.nn.functional.linear(x, weight))
            assert torch.equal(with_grad, torch.nn.functional.linear(x, trainable))
        differing += not torch.equal(frozen, with_grad)
    assert differing > 0


def test_finding_24_conv_transpose3d_output_lies_in_a_larger_buffer():
    # torch 2.13.0: the output of a 1x1x1 ConvTranspose3d without bias is a view of a buffer
    # three times its size, the rest never written; torch.save writes that whole storage. If
    # this starts failing, torch returns a compact output: update docs/findings.md (24).
    layer = torch.nn.ConvTranspose3d(3, 1, kernel_size=1, bias=False)
    with torch.no_grad():
        output = layer(torch.randn(1, 3, 4, 4, 4))
    assert output.untyped_storage().nbytes() == 3 * output.numel() * output.element_size()
    # compared as a computed result, only its elements count
    assert harness.compare.computed(output).untyped_storage().nbytes() == output.numel() * 4


def test_exclusions_given_as_a_generator_are_read_once():
    report = check_checkpointer(
        TrainingCheckpoint(),
        max_examples=2,
        seed=0,
        exclude=(name for name in ["dropout", "hostile_file_runs_nothing"]),
    )
    assert report.excluded == ["dropout", "hostile_file_runs_nothing"]
    assert "hostile_file_runs_nothing" not in [result.name for result in report.results]


class FolderCheckpointer:
    """A folder at the path: the model and optimizer with torch.save, the RNG state and the
    extra entries with pickle, loaded back with weights_only=True and pickle.load."""

    strict = True
    mmap = False

    def save(self, state, path):
        os.makedirs(path)
        torch.save(state.model.state_dict(), os.path.join(path, "model.pt"))
        torch.save(state.optimizer.state_dict(), os.path.join(path, "optimizer.pt"))
        if state.scheduler is not None:
            torch.save(state.scheduler.state_dict(), os.path.join(path, "scheduler.pt"))
        with open(os.path.join(path, "rng.pkl"), "wb") as file:
            pickle.dump({"rng": torch.get_rng_state(), "extra": state.extra}, file)

    def _load(self, path, map_location):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=self.mmap)

    def load(self, path, into, map_location=None):
        into.model.load_state_dict(self._load(os.path.join(path, "model.pt"), map_location))
        optimizer = os.path.join(path, "optimizer.pt")
        if self.strict or os.path.exists(optimizer):
            into.optimizer.load_state_dict(self._load(optimizer, map_location))
        if into.scheduler is not None:
            into.scheduler.load_state_dict(
                self._load(os.path.join(path, "scheduler.pt"), map_location)
            )
        with open(os.path.join(path, "rng.pkl"), "rb") as file:
            saved = pickle.load(file)
        torch.set_rng_state(saved["rng"])
        into.extra.update(saved["extra"])


class SafeFolderCheckpointer(FolderCheckpointer):
    """The same folder, the RNG state and extra entries saved with torch.save as well."""

    def save(self, state, path):
        super().save(state, path)
        os.remove(os.path.join(path, "rng.pkl"))
        extra = {"rng": torch.get_rng_state(), "extra": state.extra}
        torch.save(extra, os.path.join(path, "rng.pt"))

    def load(self, path, into, map_location=None):
        saved = self._load(os.path.join(path, "rng.pt"), map_location)
        with open(os.path.join(path, "rng.pkl"), "wb") as file:
            pickle.dump(saved, file)  # (the parent's load, unchanged, reads it from here)
        try:
            super().load(path, into, map_location)
        finally:
            os.remove(os.path.join(path, "rng.pkl"))


class LenientFolderCheckpointer(SafeFolderCheckpointer):
    """Goes on without the optimizer state when its file is missing."""

    strict = False


class MappingFolderCheckpointer(SafeFolderCheckpointer):
    """Memory-maps every file it loads (torch.load(weights_only=True, mmap=True))."""

    mmap = True


def _folder_report(checkpointer, invariants):
    return check_checkpointer(
        checkpointer,
        max_examples=5,
        seed=0,
        invariants=invariants,
        shrink=False,
        exclude=["LBFGS", "SparseAdam"],  # (one closure optimizer, one sparse: not needed)
    )


def test_a_plain_pickle_in_a_folder_checkpoint_is_attacked():
    # The one hostile file at the path is refused (the path is a folder): only attacking
    # every written file finds the pickle.load.
    report = _folder_report(
        FolderCheckpointer(), ["hostile_file_runs_nothing", "written_files_run_nothing"]
    )
    assert failed(report) == {"written_files_run_nothing"}
    message = report.failures[0].message
    assert "rng.pkl (plain_pickle) replaced by" in message
    assert "model.pt" not in message and "optimizer.pt" not in message


def test_every_file_of_a_safe_folder_checkpoint_is_attacked_and_damaged():
    report = _folder_report(
        SafeFolderCheckpointer(), ["written_files_run_nothing", "damaged_files_detected"]
    )
    assert report.ok, [f.message for f in report.failures]
    attacked = report.results[0].observations
    assert any(text.startswith("3 written file(s), 78 hostile files tried") for text in attacked)


def test_a_missing_file_that_load_goes_on_without_is_silently_wrong():
    report = _folder_report(LenientFolderCheckpointer(), ["damaged_files_detected"])
    assert failed(report) == {"damaged_files_detected"}
    message = report.failures[0].message
    assert "optimizer.pt deleted (removed): returned restored" in message
    assert "model.pt deleted" not in message


def test_a_memory_mapped_load_that_accepts_a_short_storage_record_is_caught():
    # docs/findings.md, finding 21: torch.load(weights_only=True, mmap=True) accepts a
    # storage record shorter than the storage it declares.
    report = _folder_report(MappingFolderCheckpointer(), ["written_files_run_nothing"])
    assert failed(report) == {"written_files_run_nothing"}
    assert "replaced by storage_record_short (memory)" in report.failures[0].message
