"""Checking checkpoint code: yours, or the reference recipes.

A checkpointer is any object with ``save(state, path)`` and
``load(path, into, map_location=None)``. :func:`check_checkpointer` draws training states
(or, for ``purpose="inference"``, models), saves them with the checkpointer, loads them into
fresh states built from the same specs with another random init, and checks that nothing was
lost: the state is restored exactly, training resumes bit for bit (or the model is ready for
inference), a checkpoint whose parameters and optimizer state are tagged ``cuda:0`` (as a GPU
run saves them) loads with ``map_location="cpu"``, and a hostile file at the path runs
nothing.

What the user's code does is never allowed to end the run: an exception from ``save`` or
``load`` (``BaseException`` included, but not ``KeyboardInterrupt``) and a call that does
not return within ``timeout`` seconds are failures of that example, reported with the place
in the user's file that raised. A failure whose cause the harness knows (:data:`CAUSES`)
says what the cause is and what to do.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import os
import pickle
import random
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import hypothesis
import torch
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.capabilities import probe
from harness.compare import assert_identical, computed, find_difference
from harness.devices import storages_tagged_as
from harness.files import (
    AttackTrial,
    DamageTrial,
    attack_written_files,
    damage_written_files,
    written_files,
)
from harness.report import Finding, Report, first_line
from harness.state import (
    TrainingState,
    global_rng_state,
    seed_global_rngs,
    set_global_rng_state,
    snapshot,
)
from harness.suite import Invariant, Unshrinkable, run_suite, scratch_directory
from harness.user_models import user_cases
from strategies.hazards import HAZARD_REGISTRY, hazard_cases
from strategies.model_specs import available_families
from strategies.models import models as generated_models
from strategies.payloads import hostile_payloads
from strategies.training import training_cases

__all__ = [
    "CAUSES",
    "CHECKPOINTER_INVARIANTS",
    "DEFAULT_TIMEOUT",
    "PURPOSES",
    "Cause",
    "Checkpointer",
    "CheckpointerError",
    "CheckpointerHung",
    "CheckpointerInvariant",
    "check_checkpointer",
    "checkpointer_invariants",
]

PURPOSES = ("resume", "inference")

# Steps trained after the checkpoint, on the original and on the restored state.
RESUME_STEPS = 3
# Seconds one call of the user's save or load may take. The drawn states are tiny (a few
# KiB): a correct save or load of one takes milliseconds, so a call this long is a hang.
DEFAULT_TIMEOUT = 60.0
# Hypothesis's phases that only make a failure smaller or explain it.
_SHRINKING = (Phase.shrink, Phase.explain)
# Seeds: the original state, the fresh one loaded into, and the RNG disturbance before load.
_ORIGINAL_SEED, _FRESH_SEED, _DISTURBING_SEED = 0, 1, 12345


class Checkpointer(Protocol):
    """What :func:`check_checkpointer` needs: your save and load functions."""

    def save(self, state: TrainingState, path: str) -> None:
        """Write ``state`` to ``path``."""

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        """Restore the checkpoint at ``path`` into ``into``, in place."""


# --- Calling the user's code -------------------------------------------------------------


class CheckpointerError(AssertionError):
    """The checkpointer's ``save`` or ``load`` raised.

    A failure of the example it happened on, not of the run. ``error`` is what the user's
    code raised; the message names the call, the exception and the place in the user's
    file.
    """

    def __init__(self, message: str, error: BaseException) -> None:
        super().__init__(message)
        self.error = error


class CheckpointerHung(Unshrinkable):
    """The checkpointer's ``save`` or ``load`` did not return within the time limit.

    A failure of the example it happened on, reported unshrunk: each smaller example tried
    would take the whole time limit again.
    """


class _TimedOut(BaseException):
    """Raised into a call that ran past its time limit (a BaseException, so that the user's
    ``except Exception`` cannot swallow it)."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`_TimedOut` in the main thread after ``seconds``, and every second after
    that until the block ends (code that catches the first one is interrupted again)."""

    def on_alarm(signum, frame):
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _call_in_thread(function: Callable[[], None], seconds: float) -> None:
    """Run ``function`` in a helper thread and wait at most ``seconds`` (outside the main
    thread no signal can interrupt it: a call that hangs is abandoned, still running)."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as error:
            raised.append(error)

    worker = threading.Thread(target=target, name="harness-checkpointer-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _TimedOut
    if raised:
        raise raised[0]


def _with_time_limit(function: Callable[[], None], seconds: float | None) -> None:
    if seconds is None:
        function()
    elif threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        with _alarm(seconds):
            function()
    else:
        _call_in_thread(function, seconds)


def _shown_path(filename: str) -> str:
    """``filename`` relative to the working directory when it is below it."""
    relative = os.path.relpath(filename)
    return filename if relative.startswith(os.pardir) else relative


# Frames of these folders are not the user's: torch, Hypothesis, the harness, its strategies.
_NOT_USER_CODE = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (torch, hypothesis, sys.modules["harness"])
) + (os.path.join(os.path.dirname(os.path.dirname(__file__)), "strategies") + os.sep,)
_STANDARD_LIBRARY = os.path.dirname(os.__file__) + os.sep


def _is_user_code(filename: str) -> bool:
    if filename.startswith(_NOT_USER_CODE):
        return False
    return not filename.startswith(_STANDARD_LIBRARY) or "site-packages" in filename


def _location(error: BaseException, user_file: str | None) -> str | None:
    """``file:line in function`` of the innermost frame of the user's file in the traceback,
    else of the innermost frame outside torch, the harness and the standard library."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [frame for frame in frames if user_file and frame.filename == user_file]
    if not own:
        own = [frame for frame in frames if _is_user_code(frame.filename)]
    if not own:
        return None
    frame = own[-1]
    return f"{_shown_path(frame.filename)}:{frame.lineno} in {frame.name}"


@dataclass(frozen=True)
class _Calls:
    """The user's checkpointer, called under a time limit, with its failures as data."""

    checkpointer: Any
    timeout: float | None

    @functools.cached_property
    def _user_file(self) -> str | None:
        try:
            return inspect.getsourcefile(type(self.checkpointer))
        except TypeError:  # a built-in type
            return None

    def save(self, state: TrainingState, path: str) -> None:
        self._run("save", self.checkpointer.save, state, path)

    def load(self, path: str, into: TrainingState, **kwargs: Any) -> None:
        self._run("load", self.checkpointer.load, path, into, **kwargs)

    def _run(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            _with_time_limit(lambda: method(*args, **kwargs), self.timeout)
        except KeyboardInterrupt:
            raise
        except _TimedOut:
            raise CheckpointerHung(
                f"{what} did not return within {self.timeout:g} s: it hangs, or is slower "
                "than the time limit (raise it with timeout= or --timeout SECONDS); the "
                "example is not shrunk, since each smaller one would take the limit again"
            ) from None
        except BaseException as error:
            where = _location(error, self._user_file)
            message = f"{what} raised {first_line(error)}" + (f" (at {where})" if where else "")
            raise CheckpointerError(message, error) from error


# --- Known causes of failures --------------------------------------------------------------


@dataclass
class _Evidence:
    """What a check knows when an example fails, for :data:`CAUSES` to read.

    ``saved`` is the original state's snapshot taken before ``save``; ``loaded`` the fresh
    state's right after ``load`` (None when load did not return); ``rng_restored``, for
    each global RNG (``torch``, ``python``, ``numpy``), whether its state after ``load`` is
    the one at ``save`` (None: not measured).
    """

    invariant: str
    purpose: str
    case: Any
    saved: dict[str, Any]
    restored: TrainingState
    extra_saved: dict[str, Any] = field(default_factory=dict)
    loaded: dict[str, Any] | None = None
    rng_restored: dict[str, bool] | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Cause:
    """A known reason for a failure: when it applies, and what the user should do.

    Attributes:
        name: short identifier, e.g. ``"rng_not_restored"``.
        applies: reads the evidence of a failed example; True when this is the cause.
        advice: what happened and what to do, in a sentence or two.
    """

    name: str
    applies: Callable[[_Evidence], bool]
    advice: str


def _state_dtypes(optimizer_state: dict[str, Any]) -> dict[tuple[Any, str], torch.dtype]:
    return {
        (index, key): value.dtype
        for index, state in optimizer_state["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def _differs(expected: Any, actual: Any) -> bool:
    try:
        assert_identical(expected, actual)
    except AssertionError:
        return True
    return False


def _part_differs(part: str) -> Callable[[_Evidence], bool]:
    def applies(evidence: _Evidence) -> bool:
        loaded = evidence.loaded
        return (
            loaded is not None
            and evidence.invariant != "save_changes_nothing"
            and part in evidence.saved
            and _differs(evidence.saved[part], loaded[part])
        )

    return applies


def _optimizer_cast(evidence: _Evidence) -> bool:
    if (
        evidence.loaded is None
        or evidence.invariant == "save_changes_nothing"
        or "optimizer" not in evidence.saved
    ):
        return False
    saved = _state_dtypes(evidence.saved["optimizer"])
    loaded = _state_dtypes(evidence.loaded["optimizer"])
    return any(loaded.get(key, dtype) != dtype for key, dtype in saved.items())


def _optimizer_not_restored(evidence: _Evidence) -> bool:
    return _part_differs("optimizer")(evidence) and not _optimizer_cast(evidence)


def _extra_missing(evidence: _Evidence) -> bool:
    return evidence.loaded is not None and bool(
        set(evidence.extra_saved) - set(evidence.restored.extra)
    )


def _cuda_refused(evidence: _Evidence) -> bool:
    """torch.load refused a storage for its device (``_validate_device`` on torch 2,
    ``validate_cuda_device`` on 1.13) in the CUDA-tagged check."""
    error = evidence.error
    return (
        evidence.invariant == "cuda_tagged_round_trip"
        and isinstance(error, RuntimeError)
        and any(
            frame.filename.endswith(os.path.join("torch", "serialization.py"))
            and "device" in frame.name
            for frame in traceback.extract_tb(error.__traceback__)
        )
    )


def _save_changed(evidence: _Evidence) -> bool:
    return (
        evidence.invariant == "save_changes_nothing"
        and evidence.loaded is not None
        and _differs(evidence.saved, evidence.loaded)
    )


def _in_training_mode(evidence: _Evidence) -> bool:
    return (
        evidence.purpose == "inference"
        and evidence.loaded is not None
        and any(module.training for module in evidence.restored.model.modules())
    )


CAUSES: tuple[Cause, ...] = (
    Cause(
        "refused_by_weights_only",
        lambda e: isinstance(e.error, pickle.UnpicklingError),
        "torch.load(weights_only=True) refused an object in the file: save state_dict()s and "
        "plain data (tensors, numbers, strings, lists, dicts), not modules or your own "
        "classes, or allowlist them with torch.serialization.add_safe_globals.",
    ),
    Cause(
        "cuda_needs_map_location",
        _cuda_refused,
        "The checkpoint's tensors were saved on cuda:0, as a GPU run saves them, and this host "
        "has no GPU: pass load's map_location on to every torch.load (also for files saved "
        "beside the checkpoint).",
    ),
    Cause(
        "model_not_restored",
        _part_differs("model"),
        "The model's state right after load differs from the saved one: call "
        "model.load_state_dict(saved_state_dict) (strict=True, the default, names what is "
        "missing) and restore every parameter and buffer.",
    ),
    Cause(
        "optimizer_state_cast",
        _optimizer_cast,
        "torch's Optimizer.load_state_dict casts floating-point optimizer state to each "
        "parameter's dtype (pytorch/pytorch#43706), so state that the optimizer keeps in "
        "another dtype (NAdam's mu_product, ASGD's eta and mu, LBFGS) comes back changed: put "
        "the saved tensors back after load_state_dict, as harness.TrainingCheckpoint does.",
    ),
    Cause(
        "optimizer_not_restored",
        _optimizer_not_restored,
        "The optimizer's state right after load differs from the saved one: save "
        "optimizer.state_dict() and call optimizer.load_state_dict() on it in load.",
    ),
    Cause(
        "scheduler_not_restored",
        _part_differs("scheduler"),
        "The learning-rate scheduler's state right after load differs from the saved one: save "
        "scheduler.state_dict() and call scheduler.load_state_dict() on it in load.",
    ),
    Cause(
        "extra_not_restored",
        _extra_missing,
        "Entries of state.extra (epoch, loss, config, ...) are missing after load: save them "
        "with the checkpoint and put them back into into.extra.",
    ),
    Cause(
        "rng_not_restored",
        lambda e: (
            e.invariant == "resume_equivalence"
            and e.case.has_dropout
            and e.rng_restored is not None
            and not e.rng_restored["torch"]
        ),
        "The model draws random numbers in training (dropout) and load did not restore the "
        "global RNG state of save time: save torch.get_rng_state() with the checkpoint and "
        "call torch.set_rng_state() on it in load, as harness.TrainingCheckpoint does.",
    ),
    Cause(
        "save_changes_state",
        _save_changed,
        "save changed the live state it was given (a cast, a move, an optimizer step, a "
        "state_dict loaded back), so training goes on from another state than it would "
        "without the checkpoint: save copies (state_dict(), .clone()) and leaves the objects "
        "as they were. Building an optimizer state dict can itself step the optimizer "
        "(torch.distributed.checkpoint's get_optimizer_state_dict on an optimizer without "
        "state, pytorch/pytorch#164929).",
    ),
    Cause(
        "host_rng_not_restored",
        lambda e: (
            e.invariant == "resume_equivalence"
            and e.case.uses_host_rng
            and e.rng_restored is not None
            and not (e.rng_restored["python"] and e.rng_restored["numpy"])
        ),
        "The training step draws from Python's random and numpy's global RNG (augmentation, "
        "sampling) and load did not restore their states of save time: save random.getstate() "
        "and numpy.random.get_state() with the checkpoint and set them back in load (as "
        "tensors and ints they load with weights_only=True: harness.state.global_rng_state).",
    ),
    Cause(
        "scaler_not_restored",
        _part_differs("scaler"),
        "The GradScaler's state right after load differs from the saved one (its scale and "
        "growth tracker decide the next steps): save scaler.state_dict() and call "
        "scaler.load_state_dict() on it in load.",
    ),
    Cause(
        "data_not_restored",
        _part_differs("data"),
        "The position in the data stream right after load differs from the saved one, so the "
        "resumed run sees other batches: save the sampler's or loader's state_dict() and load "
        "it back (state.data).",
    ),
    Cause(
        "left_in_training_mode",
        _in_training_mode,
        "A model loaded for inference must be in eval mode (dropout off, batch norm using its "
        "running statistics): call model.eval() at the end of load.",
    ),
)


@contextlib.contextmanager
def _explained(evidence: _Evidence) -> Iterator[_Evidence]:
    """Add the known causes that apply to any failure raised in the block."""
    try:
        yield evidence
    except AssertionError as failure:
        if isinstance(failure, CheckpointerError):
            evidence.error = failure.error
        causes = [cause for cause in CAUSES if cause.applies(evidence)]
        if not causes:
            raise
        advice = "\n".join(f"likely cause ({cause.name}): {cause.advice}" for cause in causes)
        message = f"{failure}\n{advice}"
        if isinstance(failure, CheckpointerError):
            raise CheckpointerError(message, failure.error) from failure
        raise AssertionError(message) from failure


# --- The invariants ----------------------------------------------------------------------


def _inference_extra(case: Any) -> dict[str, Any]:
    features = 3
    return {
        "model_config": {"spec": repr(case.spec)},
        "preprocessing": {"mean": [0.5] * features, "std": [0.25] * features},
        "class_names": [f"class_{index}" for index in range(features)],
    }


def _fresh(purpose: str, case: Any) -> TrainingState:
    """A fresh state to load into: the same specs, another random init."""
    if purpose == "inference":
        return TrainingState(model=case.rebuild(_FRESH_SEED).module)
    return case.build(_FRESH_SEED)


def _trained(case: Any) -> TrainingState:
    """The original training state: built from one seed and trained ``case.steps`` steps
    from a seeded RNG, so that building it twice gives the same state twice."""
    original = case.build(_ORIGINAL_SEED)
    seed_global_rngs(_ORIGINAL_SEED)  # dropout draws the same masks on every run
    losses = [case.train_step(original) for _ in range(case.steps)]
    original.extra.update(epoch=case.steps, loss=losses[-1], train_loss=losses)
    return original


def _original(purpose: str, case: Any) -> TrainingState:
    """The state that is saved: the trained one for resume, the model for inference."""
    if purpose == "inference":
        return TrainingState(model=case.module, extra=_inference_extra(case))
    return _trained(case)


def _prepare(purpose: str, case: Any) -> tuple[TrainingState, TrainingState]:
    """The original state and a fresh one to load into."""
    return _original(purpose, case), _fresh(purpose, case)


def _evidence(invariant: str, purpose: str, case: Any, original, fresh) -> _Evidence:
    return _Evidence(
        invariant,
        purpose,
        case,
        saved=snapshot(original),
        restored=fresh,
        extra_saved=copy.deepcopy(original.extra),
    )


def _keeps_caller_rng(check):
    """Run ``check`` (a generator function) with the caller's global RNG state restored after."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        callers = global_rng_state()
        try:
            yield from check(*args, **kwargs)
        finally:
            set_global_rng_state(callers)

    return wrapper


def _disturb_global_rng() -> None:
    seed_global_rngs(_DISTURBING_SEED)


def _rng_restored(at_save: dict[str, Any]) -> dict[str, bool]:
    now = global_rng_state()
    return {name: not _differs(state, now[name]) for name, state in at_save.items()}


def _gpu_resident(state: TrainingState) -> list[torch.Tensor]:
    """The tensors a GPU training run keeps on the GPU: parameters, buffers, gradients and
    the optimizer's per-parameter state. Scalar optimizer state (step counts) is left out:
    torch keeps it on the CPU for most optimizers unless ``capturable`` or ``fused``."""
    tensors = [*state.model.parameters(), *state.model.buffers()]
    tensors += [p.grad for p in state.model.parameters() if p.grad is not None]
    if state.optimizer is not None:
        tensors += [
            value
            for per_parameter in state.optimizer.state.values()
            for value in per_parameter.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0
        ]
    # A sparse gradient has no storage of its own (its indices and values are saved as
    # tensors of their own, left untagged).
    return [tensor for tensor in tensors if tensor.layout == torch.strided]


@_keeps_caller_rng
def state_restored(calls: _Calls, purpose: str, case: Any) -> Iterator[str]:
    """After save and load, model, optimizer, scheduler and extra are identical.

    For inference the loaded model must also be in eval mode and give bit-identical outputs.
    """
    original, fresh = _prepare(purpose, case)
    with _explained(_evidence("state_restored", purpose, case, original, fresh)) as evidence:
        with scratch_directory() as directory:
            path = os.path.join(directory, "checkpoint.pt")
            calls.save(original, path)
            _disturb_global_rng()
            calls.load(path, fresh)
        evidence.loaded = snapshot(fresh)
        assert_identical(evidence.saved, evidence.loaded, name="restored")
        kept = {key: fresh.extra[key] for key in original.extra if key in fresh.extra}
        assert_identical(original.extra, kept, name="restored.extra")
        if purpose == "inference":
            training = sorted(
                name or "model" for name, m in fresh.model.named_modules() if m.training
            )
            assert not training, f"loaded for inference but in training mode: {training}"
            original.model.eval()
            _match_requires_grad(original.model, fresh.model)
            with torch.no_grad():
                expected = computed(original.model(*case.example_input))
                actual = computed(fresh.model(*case.example_input))
            assert_identical(expected, actual, name="output")
    yield from ()


def _match_requires_grad(original: torch.nn.Module, restored: torch.nn.Module) -> None:
    """Give the original's parameters the ``requires_grad`` of the restored ones.

    A loader may freeze the model for inference (``requires_grad_(False)``), and torch's
    matmul takes another path for a non-contiguous batched input when an operand requires
    grad, even under ``no_grad`` (docs/findings.md, finding 23): the outputs would then
    differ in the last bits though every parameter is restored exactly.
    """
    flags = {name: p.requires_grad for name, p in restored.named_parameters()}
    for name, parameter in original.named_parameters():
        if name in flags:
            parameter.requires_grad_(flags[name])


@_keeps_caller_rng
def resume_equivalence(calls: _Calls, purpose: str, case: Any) -> Iterator[str]:
    """Training k more steps after loading equals training them without interruption.

    The uninterrupted run is a twin of the original that is never saved (so a ``save`` that
    changes the live state cannot hide a load defect; that is ``save_changes_nothing``'s
    concern). Compared bit for bit after the steps: parameters and buffers, optimizer state,
    learning rates and scheduler state. The global RNG is disturbed before loading, so a
    model with dropout resumes exactly only if the checkpoint restores the RNG state.
    """
    original, fresh = _prepare("resume", case)
    with _explained(_evidence("resume_equivalence", purpose, case, original, fresh)) as evidence:
        with scratch_directory() as directory:
            path = os.path.join(directory, "checkpoint.pt")
            rng_at_save = global_rng_state()
            calls.save(original, path)
            _disturb_global_rng()
            calls.load(path, fresh)
            evidence.loaded = snapshot(fresh)
            evidence.rng_restored = _rng_restored(rng_at_save)
            try:
                for _ in range(RESUME_STEPS):
                    case.train_step(fresh)
            except Exception as error:
                message = f"training the restored state raised {first_line(error)}"
                raise AssertionError(message) from error
        uninterrupted = _trained(case)
        for _ in range(RESUME_STEPS):
            case.train_step(uninterrupted)
        assert_identical(
            snapshot(uninterrupted), snapshot(fresh), name=f"after {RESUME_STEPS} steps"
        )
    yield "model with dropout" if case.has_dropout else "model without dropout"


def _modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name or "model": module.training for name, module in model.named_modules()}


@_keeps_caller_rng
def save_changes_nothing(calls: _Calls, purpose: str, case: Any) -> Iterator[str]:
    """``save`` leaves the live state as it was, and training on after a save follows the
    trajectory it follows without one.

    Compared right after ``save`` with the snapshot taken before it: the model, optimizer
    (step counts included), scheduler and extra entries, and for resume each module's
    training mode;
    then, for resume, the state trained on after the save against a twin trained on without
    one (so a save that draws from the global RNG fails where training draws from it too).
    """
    original = _original(purpose, case)
    with _explained(
        _evidence("save_changes_nothing", purpose, case, original, original)
    ) as evidence:
        modes = _modes(original.model)
        with scratch_directory() as directory:
            calls.save(original, os.path.join(directory, "checkpoint.pt"))
        evidence.loaded = snapshot(original)
        assert_identical(evidence.saved, evidence.loaded, name="live state after save")
        assert_identical(evidence.extra_saved, original.extra, name="live state after save.extra")
        if purpose == "resume":
            # (A model exported for inference may be left in eval mode: it is done training.)
            changed = sorted(n for n, mode in _modes(original.model).items() if modes[n] != mode)
            assert not changed, f"save changed the training mode of {changed}"
            # One after the other, each from the RNG state training left: the original's
            # steps start from whatever save left of it, the twin's from the untouched one.
            for _ in range(RESUME_STEPS):
                case.train_step(original)
            uninterrupted = _trained(case)
            for _ in range(RESUME_STEPS):
                case.train_step(uninterrupted)
            assert_identical(
                snapshot(uninterrupted),
                snapshot(original),
                name=f"{RESUME_STEPS} steps after save",
            )
    yield from ()


@_keeps_caller_rng
def cuda_tagged_round_trip(calls: _Calls, purpose: str, case: Any) -> Iterator[str]:
    """A checkpoint saved with the GPU-resident tensors tagged ``cuda:0`` loads on the CPU
    with ``map_location="cpu"``, restored exactly."""
    original, fresh = _prepare(purpose, case)
    with _explained(
        _evidence("cuda_tagged_round_trip", purpose, case, original, fresh)
    ) as evidence:
        with scratch_directory() as directory:
            path = os.path.join(directory, "checkpoint.pt")
            with storages_tagged_as("cuda:0", only=_gpu_resident(original)):
                calls.save(original, path)
            calls.load(path, fresh, map_location="cpu")
        evidence.loaded = snapshot(fresh)
        # Only the tensors' state: the extra entries are state_restored's concern.
        assert_identical(evidence.saved, evidence.loaded, name="restored")
    yield from ()


@_keeps_caller_rng
def hostile_file_runs_nothing(calls: _Calls, purpose: str, example) -> Iterator[str]:
    """Loading a hostile file from the checkpoint path never runs the code inside it, and
    never hangs."""
    case, payload = example
    fresh = _fresh(purpose, case)
    with scratch_directory() as directory:
        path = os.path.join(directory, "checkpoint.pt")
        sentinel = os.path.join(directory, "payload-ran")
        payload.write(path, sentinel)
        try:
            calls.load(path, fresh)
        except CheckpointerError as refusal:
            yield f"hostile file refused with {type(refusal.error).__name__}"
        assert not os.path.exists(sentinel), (
            f"load ran code from a hostile file: the {payload.name} payload created its sentinel"
        )


class WrittenFilesHarmed(Unshrinkable):
    """A hostile or damaged written file got through: every file and every attack or damage
    has been tried on the example already, so a smaller example would show no more."""


class _Layouts:
    """The file layouts (relative paths and kinds) whose exhaustive trials have passed in this
    run: an example whose save writes a layout already tried is not tried again. Only passes
    are remembered, so a failing example fails again on replay."""

    def __init__(self) -> None:
        self.passed: set[tuple[tuple[str, str], ...]] = set()


def _layout(files) -> tuple[tuple[str, str], ...]:
    return tuple((file.path, file.kind) for file in files)


def _trial_limit(calls: _Calls) -> float:
    return calls.timeout if calls.timeout is not None else DEFAULT_TIMEOUT


def _attack_line(trial: AttackTrial) -> str:
    return f"{trial.file} ({trial.kind}) replaced by {trial.attack} ({trial.group}): {trial.detail}"


@_keeps_caller_rng
def written_files_run_nothing(
    layouts: _Layouts, calls: _Calls, purpose: str, case: Any
) -> Iterator[str]:
    """Every file save wrote, replaced in turn by every hostile file of its kind, is loaded
    by load in a forked child: no code runs, nothing crashes or hangs, no memory attack is
    accepted."""
    original, fresh = _prepare(purpose, case)
    with scratch_directory() as directory:
        path = os.path.join(directory, "checkpoint.pt")
        calls.save(original, path)
        if _layout(written_files(directory)) in layouts.passed:
            yield "written files of a layout already attacked"
            return
        result = attack_written_files(
            directory,
            functools.partial(calls.checkpointer.load, path, fresh),
            timeout=_trial_limit(calls),
        )
    layout = _layout(result.files)
    yield f"{len(result.files)} written file(s), {len(result.trials)} hostile files tried"
    for file in result.not_attacked:
        yield f"a written file of kind {file.kind} is not attacked (no hostile file of its kind)"
    if result.harmful:
        lines = "\n".join(_attack_line(trial) for trial in result.harmful)
        raise WrittenFilesHarmed(
            f"{len(result.harmful)} of {len(result.trials)} hostile files in place of a "
            f"written file got through load:\n{lines}"
        )
    layouts.passed.add(layout)


def _damage_line(trial: DamageTrial) -> str:
    return (
        f"{trial.file} {trial.damage} ({trial.where}): {trial.outcome} {trial.value or trial.error}"
    )


def _what_differs(expected: dict[str, Any], extra: dict[str, Any], restored: TrainingState):
    """In the forked child after a load: None when the restored state's snapshot and extra
    entries are ``expected`` and ``extra``, else one line saying what differs."""
    difference = find_difference(expected, snapshot(restored), name="restored")
    if difference is None:
        kept = {key: restored.extra[key] for key in extra if key in restored.extra}
        difference = find_difference(extra, kept, name="restored.extra")
    return None if difference is None else difference.headline


@_keeps_caller_rng
def damaged_files_detected(
    layouts: _Layouts, calls: _Calls, purpose: str, case: Any
) -> Iterator[str | Finding]:
    """Each file save wrote, truncated, emptied, bit-flipped or deleted in turn: load raises,
    or restores what it restores from the undamaged files; it never restores something else.

    A load that restores something else is blamed on the checkpointer when the file kind's
    own reader refuses the damaged file (the checkpointer had an error to see, or a missing
    file, and went on); where the format itself cannot tell (torch does not check the CRC-32
    of zip records, pytorch/pytorch#126952) it is a finding, not a failure.
    """
    original, fresh = _prepare(purpose, case)

    def trial() -> str | None:
        _disturb_global_rng()
        calls.checkpointer.load(path, fresh)
        if _differs(expected_rng, global_rng_state()):
            return "the global RNG states differ from those the undamaged files restore"
        return _what_differs(expected, expected_extra, fresh)

    with scratch_directory() as directory:
        path = os.path.join(directory, "checkpoint.pt")
        calls.save(original, path)
        if _layout(written_files(directory)) in layouts.passed:
            yield "written files of a layout already damaged"
            return
        # What load restores from the undamaged files is the reference: whether that is the
        # original state is state_restored's concern, not this invariant's.
        undamaged = _fresh(purpose, case)
        _disturb_global_rng()
        calls.load(path, undamaged)
        expected, expected_extra = snapshot(undamaged), copy.deepcopy(undamaged.extra)
        expected_rng = global_rng_state()
        result = damage_written_files(directory, trial, timeout=_trial_limit(calls))
    yield f"{len(result.files)} written file(s), {len(result.trials)} damaged versions tried"
    kinds = {file.path: file.kind for file in result.files}
    for trial_ in result.silently_wrong:
        kind = kinds[trial_.file]
        if trial_.format_noticed is False:
            yield Finding(
                f"a {kind} file {trial_.damage} ({trial_.where.split(' (')[-1].rstrip(')')}) "
                "loads without an error, with other contents: the format does not notice",
                "pytorch/pytorch#126952" if kind in ("torch_zip", "legacy_torch") else None,
            )
        elif trial_.format_noticed is None:
            yield (
                f"a {kind} file {trial_.damage} loads with other contents, and its format's "
                "reader cannot tell whether the damage is noticeable"
            )
    # Blamed only where there was something to notice: a missing file, or a damage the
    # file's own reader refuses (an error swallowed, a default used).
    blamed = [t for t in result.silently_wrong if t.format_noticed is True]
    broken = blamed + list(result.failures)
    if broken:
        lines = "\n".join(_damage_line(trial_) for trial_ in broken)
        raise WrittenFilesHarmed(
            f"{len(blamed)} damaged file(s) loaded silently wrong and {len(result.failures)} "
            f"crashed or hung load, of {len(result.trials)} tried:\n{lines}"
        )
    layouts.passed.add(_layout(result.files))


@dataclass(frozen=True)
class _Draws:
    """What the examples are drawn from, after the user's exclusions."""

    purpose: str
    families: tuple[str, ...] | None
    optimizers: tuple[str, ...] | None
    schedulers: tuple[str, ...] | None
    hazards_excluded: tuple[str, ...] = ()
    user: tuple[Any, Any, Any] | None = None

    def explicit(self) -> tuple[Any, ...]:
        """The known hazards' cases (:data:`strategies.hazards.HAZARD_REGISTRY`), checked
        first at every seed and budget; none when the cases are built from the user's own
        models, optimizers or schedulers (the hazards are the harness's own models)."""
        if self.user is not None:
            return ()
        return hazard_cases(
            self.purpose,
            self.families,
            self.optimizers,
            self.schedulers,
            exclude=self.hazards_excluded,
        )

    def cases(self) -> st.SearchStrategy:
        if self.user is not None:
            models, optimizers, schedulers = self.user
            return user_cases(
                self.purpose,
                models,
                optimizers,
                schedulers,
                families=self.families,
                optimizer_names=self.optimizers,
                scheduler_names=self.schedulers,
            )
        if self.purpose == "inference":
            # An uninitialized lazy module holds UninitializedParameters, which no
            # weights_only=True loader can read and no trained model has.
            return generated_models(self.families, allow_uninitialized=False)
        return training_cases(self.families, self.optimizers, self.schedulers)

    def hostile(self) -> st.SearchStrategy:
        return st.tuples(self.cases(), hostile_payloads())


@dataclass(frozen=True)
class CheckpointerInvariant:
    """A promise about a checkpointer, for the purposes it applies to.

    Attributes:
        name: short identifier, e.g. ``"resume_equivalence"``.
        description: one sentence stating the promise.
        purposes: the purposes (of :data:`PURPOSES`) it is checked for.
        hostile: whether its examples pair a case with a hostile file.
        check: ``check(calls, purpose, example)``, a generator of observations; for an
            exhaustive one ``check(layouts, calls, purpose, example)``.
        exhaustive: whether it tries every written file in every way (attacks, damages):
            an example whose save writes a file layout that has passed in this run is not
            tried again (:class:`_Layouts`).
    """

    name: str
    description: str
    purposes: tuple[str, ...]
    hostile: bool
    check: Callable[..., Iterator[str | Finding]]
    exhaustive: bool = False


CHECKPOINTER_INVARIANTS: tuple[CheckpointerInvariant, ...] = (
    CheckpointerInvariant(
        "state_restored",
        "After save and load into a fresh state, model, optimizer, scheduler and extra "
        "entries are identical; for inference the model is in eval mode and gives "
        "identical outputs.",
        PURPOSES,
        False,
        state_restored,
    ),
    CheckpointerInvariant(
        "resume_equivalence",
        f"Training {RESUME_STEPS} more steps after loading gives bit-identical parameters, "
        "optimizer state and learning rates to training them without interruption, even "
        "with the global RNG disturbed before loading.",
        ("resume",),
        False,
        resume_equivalence,
    ),
    CheckpointerInvariant(
        "save_changes_nothing",
        "Right after save the live model, optimizer (step counts included), scheduler, extra "
        "entries and training modes are as they were, and training on after a save follows "
        "the trajectory it follows without one.",
        PURPOSES,
        False,
        save_changes_nothing,
    ),
    CheckpointerInvariant(
        "cuda_tagged_round_trip",
        "A checkpoint saved with parameters, buffers, gradients and optimizer state tagged "
        "cuda:0 (as a GPU run saves them) loads with map_location='cpu' and restores the "
        "state exactly.",
        PURPOSES,
        False,
        cuda_tagged_round_trip,
    ),
    CheckpointerInvariant(
        "hostile_file_runs_nothing",
        "Loading a hostile checkpoint from the path never runs the code inside it, and "
        "never hangs.",
        PURPOSES,
        True,
        hostile_file_runs_nothing,
    ),
    CheckpointerInvariant(
        "written_files_run_nothing",
        "Every file save wrote (a file or a folder, at or beside the path), replaced in turn "
        "by every hostile file of its kind, is loaded in a forked child: no code runs, "
        "nothing crashes or hangs, no memory attack is accepted.",
        PURPOSES,
        False,
        written_files_run_nothing,
        exhaustive=True,
    ),
    CheckpointerInvariant(
        "damaged_files_detected",
        "Every file save wrote, truncated, emptied, bit-flipped or deleted in turn: load "
        "raises or restores the state identically, never something else (where the format "
        "itself cannot notice a flipped bit, a finding instead).",
        PURPOSES,
        False,
        damaged_files_detected,
        exhaustive=True,
    ),
)


def _exclude_names(exclude: Iterable[str]) -> frozenset[str]:
    """``exclude`` as a set of names, read once (it may be a generator)."""
    if isinstance(exclude, str) or not isinstance(exclude, Iterable):
        raise InvalidArgument(
            f"exclude={exclude!r} must be a collection of names, e.g. exclude=['dropout', 'LBFGS']"
        )
    return frozenset(exclude)


def _exclusions(names: frozenset[str], purpose: str) -> tuple[set[str], _Draws]:
    """The invariants left out and what the examples are drawn from, from the names."""
    caps = probe()
    kinds = {
        "invariants": [invariant.name for invariant in CHECKPOINTER_INVARIANTS],
        "families": list(available_families()),
        "optimizers": list(caps.optimizers),
        "schedulers": list(caps.schedulers),
        "hazards": [hazard.name for hazard in HAZARD_REGISTRY],
    }
    unknown = sorted(names - {name for known in kinds.values() for name in known})
    if unknown:
        listing = "; ".join(f"{kind}: {', '.join(known)}" for kind, known in kinds.items())
        raise InvalidArgument(
            f"exclude names {unknown}, which is no invariant, model family, optimizer or "
            f"scheduler class of the installed torch, nor known hazard ({listing})"
        )

    def kept(kind: str) -> tuple[str, ...] | None:
        known = kinds[kind]
        return None if names.isdisjoint(known) else tuple(n for n in known if n not in names)

    if kept("families") == () or kept("optimizers") == ():
        raise InvalidArgument(f"exclude={sorted(names)} leaves no model family or no optimizer")
    return names & set(kinds["invariants"]), _Draws(
        purpose,
        kept("families"),
        kept("optimizers"),
        kept("schedulers"),
        tuple(sorted(names & set(kinds["hazards"]))),
    )


def checkpointer_invariants(
    checkpointer: Checkpointer,
    purpose: str,
    *,
    exclude: Iterable[str] = (),
    timeout: float | None = DEFAULT_TIMEOUT,
    models: Any = None,
    optimizers: Any = None,
    schedulers: Any = None,
) -> list[Invariant]:
    """The invariants a checkpointer for ``purpose`` (``"resume"`` or ``"inference"``) must
    keep, as :class:`~harness.suite.Invariant` objects; see :func:`check_checkpointer` for
    ``exclude``, ``timeout``, ``models``, ``optimizers`` and ``schedulers``."""
    _check_arguments(checkpointer, purpose, timeout)
    left_out, draws = _exclusions(_exclude_names(exclude), purpose)
    if (models, optimizers, schedulers) != (None, None, None):
        draws = dataclasses.replace(draws, user=(models, optimizers, schedulers))
        draws.cases()  # the user's factories are checked now, with InvalidArgument
    calls = _Calls(checkpointer, timeout)
    return [
        Invariant(
            record.name,
            record.description,
            draws.hostile if record.hostile else draws.cases,
            functools.partial(record.check, _Layouts(), calls, purpose)
            if record.exhaustive
            else functools.partial(record.check, calls, purpose),
            # A hostile example pairs a case with a payload: the hazards are not hostile.
            tuple if record.hostile else draws.explicit,
        )
        for record in CHECKPOINTER_INVARIANTS
        if purpose in record.purposes and record.name not in left_out
    ]


def _check_arguments(checkpointer: Any, purpose: str, timeout: float | None) -> None:
    if purpose not in PURPOSES:
        raise InvalidArgument(f"purpose must be one of {PURPOSES}, not {purpose!r}")
    missing = [name for name in ("save", "load") if not callable(getattr(checkpointer, name, None))]
    if missing:
        raise InvalidArgument(
            f"{checkpointer!r} has no {' or '.join(missing)} method: a checkpointer needs "
            "save(state, path) and load(path, into, map_location=None)"
        )
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise InvalidArgument(f"timeout={timeout!r} must be a positive number of seconds, or None")


def check_checkpointer(
    checkpointer: Checkpointer,
    purpose: str = "resume",
    max_examples: int = 50,
    seed: int | None = None,
    reproduce: str | None = None,
    *,
    exclude: Iterable[str] = (),
    invariants: Sequence[str] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    shrink: bool = True,
    progress: Callable[[str], None] = lambda line: None,
    models: Any = None,
    optimizers: Any = None,
    schedulers: Any = None,
) -> Report:
    """Check your checkpoint code against every invariant for ``purpose``.

    Args:
        checkpointer: an object with ``save(state, path)`` and
            ``load(path, into, map_location=None)``; ``load`` restores into ``into`` in place.
        purpose: ``"resume"`` (model, optimizer, scheduler and extra; training must resume
            exactly) or ``"inference"`` (model and extra; the loaded model must be in eval
            mode and give identical outputs).
        max_examples: examples per invariant.
        seed: seed of the random draws; the same seed checks the same examples. None (the
            default) draws a seed, recorded in the report (``report.seed``).
        reproduce: the command reported for rerunning (default: the Python call).
        exclude: names to leave out, each an invariant, a model family, or an optimizer or
            scheduler class (a case you knowingly accept); the report lists them.
        invariants: check only these invariants (default: every one for ``purpose``).
        timeout: seconds one call of ``save`` or ``load`` may take before it counts as a
            hang (a failure of that example; the run goes on); None for no limit.
        shrink: whether to shrink a failing example to a minimal one (False: report the
            first failing example as found, for a quicker verdict).
        progress: called with a line before and after each invariant, and while one runs.
        models, optimizers, schedulers: your own factories instead of the generated models,
            optimizers and schedulers (:func:`harness.user_models.user_cases`: a
            :class:`~harness.user_models.UserModel`, an optimizer factory, a scheduler
            factory, a strategy or a sequence of them; the parts left None are generated).
            The known hazards are the harness's own models, so they are not checked then.

    Returns:
        a :class:`~harness.report.Report`: ``report.ok``, and ``report.failures``, each
        naming the invariant, the message, the minimal example and a reproduction line.

    Raises:
        InvalidArgument: for a bad argument (an unknown purpose or name, no save or load).
    """
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise InvalidArgument(f"max_examples={max_examples!r} must be a positive int")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgument(f"seed={seed!r} must be an int, or None for a random one")
    exclude = _exclude_names(exclude)
    checks = checkpointer_invariants(
        checkpointer,
        purpose,
        exclude=exclude,
        timeout=timeout,
        models=models,
        optimizers=optimizers,
        schedulers=schedulers,
    )
    if invariants is not None:
        known = [check.name for check in checks]
        unknown = sorted(set(invariants) - set(known))
        if unknown:
            raise InvalidArgument(
                f"invariants names {unknown}; for purpose={purpose!r} the invariants are {known}"
            )
        checks = [check for check in checks if check.name in invariants]
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    excluded = sorted(exclude)
    line = reproduce or (
        f"harness.check_checkpointer({type(checkpointer).__name__}(), purpose={purpose!r}, "
        f"max_examples={max_examples}, seed={seed}"
        + (f", exclude={excluded!r}" if excluded else "")
        + (f", timeout={timeout!r}" if timeout != DEFAULT_TIMEOUT else "")
        + ")"
    )
    return run_suite(
        checks,
        profile=f"check_checkpointer(max_examples={max_examples})",
        settings_=settings(
            max_examples=max_examples,
            derandomize=False,
            deadline=None,
            database=None,
            phases=Phase if shrink else [p for p in Phase if p not in _SHRINKING],
        ),
        random_seed=seed,
        reproduce=lambda invariant: line,
        progress=progress,
        excluded=excluded,
    )
