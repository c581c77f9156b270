"""Training cases: every drawn case builds, trains, and is reproducible from its spec; the
facts read from the spec while drawing hold for the built model; bad arguments are refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import find, given, settings
from hypothesis.errors import InvalidArgument

from harness import TrainingState, assert_identical
from harness.capabilities import (
    grad_scaler_on_cpu,
    optimizer_constraints,
    sgd_state_without_momentum,
)
from harness.state import global_rng_state, set_global_rng_state
from strategies.models import build_model
from strategies.training import ScaledOutput, optimizer_fits, training_cases, training_states


@given(training_cases())
def test_every_case_builds_and_trains(case):
    state = case.build(0)
    assert isinstance(state, TrainingState) and state.optimizer is not None
    losses = [case.train_step(state) for _ in range(case.steps)]
    # Losses may turn NaN (e.g. Adafactor on a one-element parameter); persistence of NaN
    # state is exactly what the invariants check, so that is not rejected here.
    assert len(losses) == case.steps and all(isinstance(loss, float) for loss in losses)
    trainable = [p for p in state.model.parameters() if p.requires_grad]
    assert any(p.grad is not None for p in trainable), "no parameter received a gradient"
    if case.spec.model.has_sparse_gradients:
        assert case.spec.optimizer.name == "SparseAdam"


@given(training_cases())
def test_what_the_draw_reads_from_the_spec_holds_for_the_built_model(case):
    spec = case.spec
    assert not spec.model.has_uninitialized_parameters
    model = build_model(spec.model, 0).module
    assert spec.scaled_output == (not any(p.requires_grad for p in model.parameters()))
    if spec.scaled_output:
        model = ScaledOutput(model)
    assert optimizer_fits(spec.optimizer.name, model, spec.model)


@given(training_cases())
def test_a_scaler_is_drawn_only_where_it_can_train(case):
    spec = case.spec
    state = case.build(0)
    assert (state.scaler is not None) == spec.scaler
    assert (state.data is not None) == spec.data
    if spec.scaler:
        constraints = optimizer_constraints(spec.optimizer.name)
        assert grad_scaler_on_cpu()
        assert not constraints.needs_closure and not constraints.sparse_gradients_only
        assert not spec.model.has_sparse_gradients and torch.float16 not in spec.model.dtypes


_FLAGS = ("scaler", "data", "host_rng")


@pytest.mark.parametrize("flag", _FLAGS)
def test_each_flag_is_drawn_and_shrinks_alone(flag):
    if flag == "scaler" and not grad_scaler_on_cpu():
        pytest.skip("torch.amp.GradScaler does not run on CPU here")
    case = find(
        training_cases(),
        lambda case: getattr(case.spec, flag),
        settings=settings(database=None, derandomize=True, max_examples=200),
    )
    # The minimal case with the flag has every other flag False.
    assert [name for name in _FLAGS if getattr(case.spec, name)] == [flag]


@given(training_cases())
def test_building_and_training_are_reproducible(case):
    first, second = case.build(0), case.build(0)
    assert_identical(_trained_parts(first), _trained_parts(second))
    start = global_rng_state()
    for state in (first, second):
        set_global_rng_state(start)  # torch's, Python's and numpy's: dropout, augmentation
        for _ in range(case.steps):
            case.train_step(state)
    assert_identical(_trained_parts(first), _trained_parts(second))


def _trained_parts(state: TrainingState) -> dict:
    """The state_dicts of what a step changes (not deep-copied, as harness.state.snapshot
    does: on 1.13.1 a CyclicLR or OneCycleLR state holds a WeakMethod, which cannot be)."""
    parts = {"model": state.model, "optimizer": state.optimizer}
    parts.update(scaler=state.scaler, data=state.data)
    return {name: part.state_dict() for name, part in parts.items() if part is not None}


@given(training_states())
def test_trained_states_have_optimizer_state(state):
    optimizer = state.optimizer
    # SGD without momentum is the one optimizer whose steps leave no per-parameter state.
    stateless = isinstance(optimizer, torch.optim.SGD) and all(
        group["momentum"] == 0 for group in optimizer.param_groups
    )
    kept = optimizer.state_dict()["state"]
    if stateless:
        # Empty, or one entry per parameter stepped ({"momentum_buffer": None} on 1.13.1).
        expected = sgd_state_without_momentum()
        assert bool(kept) == bool(expected), f"SGD kept {kept!r} after training"
        assert all(state == expected for state in kept.values()), kept
        return
    assert kept, f"{type(optimizer).__name__} kept no state after training"
    assert all(kept.values()), "a parameter's state is empty"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"families": "linear"}, "collection"),
        ({"families": ["convolution"]}, "known names"),
        ({"optimizers": "Adam"}, "collection"),
        ({"optimizers": []}, "nothing to draw"),
        ({"optimizers": ["NoSuchOptimizer"]}, "known names"),
        ({"schedulers": ["NoSuchScheduler"]}, "known names"),
    ],
)
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(InvalidArgument, match=message):
        training_cases(**arguments)


def test_the_simplest_training_case_is_sgd_with_one_group():
    """Every case draws a scheduler and a GradScaler flag, whatever its optimizer: a case of
    LBFGS, which gets neither, took fewer choices and was the simplest example."""
    case = find(
        training_cases(),
        lambda case: True,
        settings=settings(database=None, derandomize=True, max_examples=200),
    )
    assert case.spec.optimizer.name == "SGD"
    assert len(case.spec.optimizer.groups) == 1
