"""Checking checkpoint code: yours, or the reference recipes.

A checkpointer is any object with ``save(state, path)`` and
``load(path, into, map_location=None)``. :func:`check_checkpointer` draws training states
(or, for ``purpose="inference"``, models), saves them with the checkpointer, loads them into
fresh states built from the same specs with another random init, and checks that nothing was
lost: the state is restored exactly, training resumes bit for bit (or the model is ready for
inference), a checkpoint whose storages are tagged ``cuda:0`` loads with
``map_location="cpu"``, and a hostile file at the path runs nothing.
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from hypothesis import settings
from hypothesis import strategies as st

from harness.compare import assert_identical
from harness.devices import storages_tagged_as
from harness.report import Report
from harness.state import TrainingState
from harness.suite import Invariant, run_suite

__all__ = ["PURPOSES", "Checkpointer", "check_checkpointer", "checkpointer_invariants"]

PURPOSES = ("resume", "inference")

# Steps trained after the checkpoint, on the original and on the restored state.
RESUME_STEPS = 3
# Seeds: the original state, the fresh one loaded into, and the RNG disturbance before load.
_ORIGINAL_SEED, _FRESH_SEED, _DISTURBING_SEED = 0, 1, 12345


class Checkpointer(Protocol):
    """What :func:`check_checkpointer` needs: your save and load functions."""

    def save(self, state: TrainingState, path: str) -> None:
        """Write ``state`` to ``path``."""

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        """Restore the checkpoint at ``path`` into ``into``, in place."""


def _inference_extra(case: Any) -> dict[str, Any]:
    features = 3
    return {
        "model_config": {"spec": repr(case.spec)},
        "preprocessing": {"mean": [0.5] * features, "std": [0.25] * features},
        "class_names": [f"class_{index}" for index in range(features)],
    }


def _prepare(purpose: str, case: Any) -> tuple[TrainingState, TrainingState]:
    """The original state (trained, for resume) and a fresh one to load into."""
    if purpose == "inference":
        original = TrainingState(model=case.module, extra=_inference_extra(case))
        return original, TrainingState(model=case.rebuild(_FRESH_SEED).module)
    original = case.build(_ORIGINAL_SEED)
    torch.manual_seed(_ORIGINAL_SEED)  # dropout draws the same masks on every run
    losses = [case.train_step(original) for _ in range(case.steps)]
    original.extra.update(epoch=case.steps, loss=losses[-1], train_loss=losses)
    return original, case.build(_FRESH_SEED)


def _snapshot(state: TrainingState) -> dict[str, Any]:
    """Everything a restored state must agree on, copied so later training cannot change it."""
    snapshot: dict[str, Any] = {"model": state.model.state_dict()}
    if state.optimizer is not None:
        snapshot["optimizer"] = state.optimizer.state_dict()
        snapshot["learning_rates"] = [group["lr"] for group in state.optimizer.param_groups]
    if state.scheduler is not None:
        snapshot["scheduler"] = state.scheduler.state_dict()
    return copy.deepcopy(snapshot)


def _assert_restored(original: TrainingState, restored: TrainingState) -> None:
    assert_identical(_snapshot(original), _snapshot(restored), name="restored")
    kept = {key: restored.extra[key] for key in original.extra if key in restored.extra}
    assert_identical(original.extra, kept, name="restored.extra")


def _keeps_caller_rng(check):
    """Run ``check`` (a generator function) with the caller's global RNG state restored after."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            yield from check(*args, **kwargs)

    return wrapper


def _disturb_global_rng() -> None:
    torch.manual_seed(_DISTURBING_SEED)


@_keeps_caller_rng
def state_restored(checkpointer: Checkpointer, purpose: str, case: Any) -> Iterator[str]:
    """After save and load, model, optimizer, scheduler and extra are identical.

    For inference the loaded model must also be in eval mode and give bit-identical outputs.
    """
    original, fresh = _prepare(purpose, case)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint.pt")
        checkpointer.save(original, path)
        _disturb_global_rng()
        checkpointer.load(path, fresh)
    _assert_restored(original, fresh)
    if purpose == "inference":
        training = sorted(name or "model" for name, m in fresh.model.named_modules() if m.training)
        assert not training, f"loaded for inference but in training mode: {training}"
        original.model.eval()
        with torch.no_grad():
            expected = original.model(*case.example_input)
            actual = fresh.model(*case.example_input)
        assert_identical(expected, actual, name="output")
    yield from ()


@_keeps_caller_rng
def resume_equivalence(checkpointer: Checkpointer, case: Any) -> Iterator[str]:
    """Training k more steps after loading equals training them without interruption.

    Compared bit for bit after the steps: parameters and buffers, optimizer state, learning
    rates and scheduler state. The global RNG is disturbed before loading, so a model with
    dropout resumes exactly only if the checkpoint restores the RNG state.
    """
    original, fresh = _prepare("resume", case)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint.pt")
        rng_at_save = torch.get_rng_state()
        checkpointer.save(original, path)
        torch.set_rng_state(rng_at_save)
        for _ in range(RESUME_STEPS):
            case.train_step(original)
        _disturb_global_rng()
        checkpointer.load(path, fresh)
        for _ in range(RESUME_STEPS):
            case.train_step(fresh)
    assert_identical(_snapshot(original), _snapshot(fresh), name=f"after {RESUME_STEPS} steps")
    yield "model with dropout" if case.has_dropout else "model without dropout"


@_keeps_caller_rng
def cuda_tagged_round_trip(checkpointer: Checkpointer, purpose: str, case: Any) -> Iterator[str]:
    """A checkpoint saved with storages tagged ``cuda:0`` loads on the CPU, restored exactly."""
    original, fresh = _prepare(purpose, case)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint.pt")
        with storages_tagged_as("cuda:0"):
            checkpointer.save(original, path)
        checkpointer.load(path, fresh, map_location="cpu")
    # Only the tensors' state: the extra entries are state_restored's concern.
    assert_identical(_snapshot(original), _snapshot(fresh), name="restored")
    yield from ()


@_keeps_caller_rng
def hostile_file_runs_nothing(checkpointer: Checkpointer, purpose: str, example) -> Iterator[str]:
    """Loading a hostile file from the checkpoint path never runs the code inside it."""
    case, payload = example
    _, fresh = _prepare(purpose, case)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint.pt")
        sentinel = os.path.join(directory, "payload-ran")
        payload.write(path, sentinel)
        try:
            checkpointer.load(path, fresh)
        except Exception as error:
            yield f"hostile file refused with {type(error).__name__}"
        assert not os.path.exists(sentinel), (
            f"load ran code from a hostile file: the {payload.name} payload created its sentinel"
        )


def _cases(purpose: str) -> st.SearchStrategy:
    if purpose == "inference":
        from strategies.models import models

        return models()
    from strategies.training import training_cases

    return training_cases()


def _hostile_examples(purpose: str) -> st.SearchStrategy:
    from strategies.payloads import hostile_payloads

    return st.tuples(_cases(purpose), hostile_payloads())


def checkpointer_invariants(checkpointer: Checkpointer, purpose: str) -> list[Invariant]:
    """The invariants a checkpointer for ``purpose`` (``"resume"`` or ``"inference"``) must keep."""
    _check_arguments(checkpointer, purpose)
    invariants = [
        Invariant(
            "state_restored",
            "After save and load into a fresh state, model, optimizer, scheduler and extra "
            "entries are identical"
            + (
                "; the model is in eval mode and gives identical outputs."
                if purpose == "inference"
                else "."
            ),
            lambda: _cases(purpose),
            lambda case: state_restored(checkpointer, purpose, case),
        ),
    ]
    if purpose == "resume":
        invariants.append(
            Invariant(
                "resume_equivalence",
                f"Training {RESUME_STEPS} more steps after loading gives bit-identical "
                "parameters, optimizer state and learning rates to training them without "
                "interruption, even with the global RNG disturbed before loading.",
                lambda: _cases(purpose),
                lambda case: resume_equivalence(checkpointer, case),
            )
        )
    invariants += [
        Invariant(
            "cuda_tagged_round_trip",
            "A checkpoint saved with storages tagged cuda:0 loads with map_location='cpu' "
            "and restores the state exactly.",
            lambda: _cases(purpose),
            lambda case: cuda_tagged_round_trip(checkpointer, purpose, case),
        ),
        Invariant(
            "hostile_file_runs_nothing",
            "Loading a hostile checkpoint from the path never runs the code inside it.",
            lambda: _hostile_examples(purpose),
            lambda example: hostile_file_runs_nothing(checkpointer, purpose, example),
        ),
    ]
    return invariants


def _check_arguments(checkpointer: Any, purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, not {purpose!r}")
    missing = [name for name in ("save", "load") if not callable(getattr(checkpointer, name, None))]
    if missing:
        raise TypeError(
            f"{checkpointer!r} has no {' or '.join(missing)} method: a checkpointer needs "
            "save(state, path) and load(path, into, map_location=None)"
        )


def check_checkpointer(
    checkpointer: Checkpointer,
    purpose: str = "resume",
    max_examples: int = 50,
    seed: int = 0,
    reproduce: str | None = None,
) -> Report:
    """Check your checkpoint code against every invariant for ``purpose``.

    Args:
        checkpointer: an object with ``save(state, path)`` and
            ``load(path, into, map_location=None)``; ``load`` restores into ``into`` in place.
        purpose: ``"resume"`` (model, optimizer, scheduler and extra; training must resume
            exactly) or ``"inference"`` (model and extra; the loaded model must be in eval
            mode and give identical outputs).
        max_examples: examples per invariant.
        seed: seed of the random draws; the same seed checks the same examples.
        reproduce: the command reported for rerunning (default: the Python call).

    Returns:
        a :class:`~harness.report.Report`: ``report.ok``, and ``report.failures``, each
        naming the invariant, the message, the minimal example and a reproduction line.
    """
    invariants = checkpointer_invariants(checkpointer, purpose)
    line = reproduce or (
        f"harness.check_checkpointer({type(checkpointer).__name__}(), purpose={purpose!r}, "
        f"max_examples={max_examples}, seed={seed})"
    )
    return run_suite(
        invariants,
        profile=f"check_checkpointer(max_examples={max_examples})",
        settings_=settings(
            max_examples=max_examples, derandomize=False, deadline=None, database=None
        ),
        random_seed=seed,
        reproduce=lambda invariant: line,
    )
