"""The whole training state: the data stream resumes its batches, the global RNG states come
back from a ``weights_only`` file, the snapshot holds the GradScaler and the data position,
``harness.TrainingCheckpoint`` restores all of it, and a checkpointer that drops one part
fails ``resume_equivalence`` on the cases that have it."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import random

import numpy
import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

import harness
from harness.capabilities import grad_scaler_on_cpu
from harness.checkpointer import checkpointer_invariants
from harness.state import (
    DataStream,
    TrainingState,
    global_rng_state,
    seed_global_rngs,
    set_global_rng_state,
    snapshot,
)
from strategies.training import DATA_BATCHES, TrainingCase, training_cases

needs_scaler = pytest.mark.skipif(
    not grad_scaler_on_cpu(), reason="torch.amp.GradScaler does not run on CPU here"
)


def _round_trip(value):
    """``value`` saved with torch.save and loaded back with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- The data stream ----------------------------------------------------------------------


@given(
    batches=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    other_seed=st.integers(0, 2**31),
    taken=st.integers(0, 20),
    more=st.integers(1, 20),
)
def test_data_stream_resumes_the_same_batches(batches, seed, other_seed, taken, more):
    dataset = torch.arange(batches * 2).reshape(batches, 2)
    stream = DataStream(dataset, seed)
    for _ in range(taken):
        stream.next_batch()
    saved = _round_trip(stream.state_dict())
    expected = [stream.next_batch() for _ in range(more)]
    resumed = DataStream(dataset, other_seed)
    resumed.load_state_dict(saved)
    harness.assert_identical(expected, [resumed.next_batch() for _ in range(more)])


@given(batches=st.integers(1, 6), seed=st.integers(0, 2**31), epochs=st.integers(1, 4))
def test_each_epoch_visits_every_batch_once(batches, seed, epochs):
    stream = DataStream(torch.arange(batches), seed)
    for _ in range(epochs):
        assert sorted(int(stream.next_batch()) for _ in range(batches)) == list(range(batches))


def test_the_order_depends_on_the_seed_and_the_state_is_a_copy():
    dataset = torch.arange(8)
    orders = {tuple(DataStream(dataset, seed).state_dict()["order"].tolist()) for seed in (0, 1)}
    assert len(orders) == 2
    stream = DataStream(dataset, 0)
    state = stream.state_dict()
    for _ in range(10):  # into the next epoch: a new order
        stream.next_batch()
    assert (state["epoch"], state["position"]) == (0, 0)
    assert (stream.state_dict()["epoch"], stream.state_dict()["position"]) == (1, 2)


def test_a_state_of_another_stream_is_refused():
    state = DataStream(torch.arange(3), 0).state_dict()
    with pytest.raises(ValueError, match="same dataset"):
        DataStream(torch.arange(4), 0).load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        DataStream(torch.arange(3), 0).load_state_dict({"position": 0})


# --- The global RNG states ----------------------------------------------------------------


def _draw_from_each() -> tuple:
    return (
        random.random(),
        random.gauss(0.0, 1.0),
        numpy.random.standard_normal(3).tolist(),
        torch.rand(3).tolist(),
    )


@given(python=st.integers(0, 4), gauss=st.booleans(), numpy_draws=st.integers(0, 5))
def test_global_rng_state_comes_back_from_a_weights_only_file(python, gauss, numpy_draws):
    # Hypothesis puts Python's and numpy's global RNGs back after each example; torch's is
    # forked here.
    with torch.random.fork_rng(devices=[]):
        for _ in range(python):
            random.random()
        if gauss:
            random.gauss(0.0, 1.0)  # leaves a cached second value (gauss_next)
        numpy.random.standard_normal(numpy_draws)  # an odd count caches one (has_gauss)
        torch.rand(python + numpy_draws)
        state = global_rng_state()
        saved = _round_trip(state)
        expected = _draw_from_each()
        set_global_rng_state(saved)
        harness.assert_identical(state, global_rng_state())
        assert _draw_from_each() == expected


def test_seeding_the_global_rngs_repeats_their_draws():
    with torch.random.fork_rng(devices=[]):
        before = global_rng_state()
        draws = []
        for seed in (3, 3, 4):
            seed_global_rngs(seed)
            draws.append(_draw_from_each())
        set_global_rng_state(before)
    assert draws[0] == draws[1] != draws[2]


# --- Training cases with a scaler, a data stream, host RNG ---------------------------------


@functools.cache
def _simplest_case() -> TrainingCase:
    """A Linear model trained with Adam: every flag False."""
    return find(
        training_cases(families=["linear"], optimizers=["Adam"], schedulers=[]),
        lambda case: True,
        settings=settings(database=None, derandomize=True),
    )


def _case(**flags: bool) -> TrainingCase:
    return TrainingCase(dataclasses.replace(_simplest_case().spec, steps=2, **flags))


def _trained(case: TrainingCase, seed: int, steps: int) -> tuple[harness.TrainingState, list]:
    state = case.build(0)
    with torch.random.fork_rng(devices=[]):
        before = global_rng_state()
        seed_global_rngs(seed)
        losses = [case.train_step(state) for _ in range(steps)]
        set_global_rng_state(before)
    return state, losses


def _every_flag() -> dict[str, bool]:
    return {"scaler": grad_scaler_on_cpu(), "data": True, "host_rng": True}


def test_a_case_with_every_flag_trains_bit_identically_from_the_same_seeds():
    case = _case(**_every_flag())
    assert case.uses_host_rng
    first, first_losses = _trained(case, 0, 5)
    second, second_losses = _trained(case, 0, 5)
    harness.assert_identical(snapshot(first), snapshot(second))
    assert first_losses == second_losses
    # Python's and numpy's RNGs (not torch's: no dropout here) change the trajectory.
    other, _ = _trained(case, 1, 5)
    with pytest.raises(AssertionError):
        harness.assert_identical(snapshot(first), snapshot(other))


def test_the_data_stream_changes_the_batch_from_step_to_step():
    state, losses = _trained(_case(data=True), 0, DATA_BATCHES)
    assert len(set(losses)) == DATA_BATCHES
    assert snapshot(state)["data"]["position"] == DATA_BATCHES


@needs_scaler
def test_snapshot_holds_the_scaler_and_the_data_position():
    state, _ = _trained(_case(scaler=True, data=True), 0, 2)
    taken = snapshot(state)
    assert set(taken) == {"model", "optimizer", "learning_rates", "scaler", "data"}
    # From 256, doubled after every 2 steps without an infinite gradient.
    assert (taken["scaler"]["scale"], taken["scaler"]["_growth_tracker"]) == (512.0, 0)
    assert (taken["data"]["epoch"], taken["data"]["position"]) == (0, 2)
    _case().train_step(state)  # a later step does not change the snapshot
    assert taken["data"]["position"] == 2
    assert set(snapshot(_case().build(0))) == {"model", "optimizer", "learning_rates"}


def test_grad_scaler_probe_is_what_torch_amp_offers():
    # torch.amp.GradScaler runs on CPU wherever torch.amp has one (2.3 on).
    assert grad_scaler_on_cpu() == hasattr(torch.amp, "GradScaler")


# --- TrainingCheckpoint -------------------------------------------------------------------


def test_training_checkpoint_passes_resume_and_restore():
    report = harness.check_checkpointer(
        harness.TrainingCheckpoint(),
        seed=0,
        max_examples=20,
        invariants=["resume_equivalence", "state_restored"],
    )
    assert report.ok, [f.message for result in report.failures for f in result.failures]


def test_seeding_the_global_rngs_gives_torch_manual_seed_s_cpu_stream():
    with torch.random.fork_rng(devices=[]):
        before = global_rng_state()
        seed_global_rngs(11)
        seeded = global_rng_state()
        torch.manual_seed(11)
        random.seed(11)
        numpy.random.seed(11)
        expected = global_rng_state()
        set_global_rng_state(before)
    harness.assert_identical(seeded, expected)


def test_training_checkpoint_file_holds_every_part_and_loads_weights_only(tmp_path):
    case = _case(**_every_flag())
    state, _ = _trained(case, 0, 3)
    path = os.path.join(tmp_path, "checkpoint.pt")
    with torch.random.fork_rng(devices=[]):
        before = global_rng_state()
        seed_global_rngs(5)
        at_save = global_rng_state()
        harness.TrainingCheckpoint().save(state, path)
        seed_global_rngs(6)
        fresh = case.build(1)
        harness.TrainingCheckpoint().load(path, fresh, map_location="cpu")
        after_load = global_rng_state()
        set_global_rng_state(before)
    checkpoint = torch.load(path, weights_only=True)
    expected = {"data_state_dict", "python_rng_state", "numpy_rng_state", "rng_state"}
    if grad_scaler_on_cpu():
        expected.add("scaler_state_dict")
    assert expected <= set(checkpoint)
    harness.assert_identical(snapshot(state), snapshot(fresh))
    harness.assert_identical(at_save, after_load)


# --- Checkpointers that drop a part -------------------------------------------------------


class DropsScaler(harness.TrainingCheckpoint):
    """Restores everything but the GradScaler, which keeps its initial scale."""

    def load(self, path, into, map_location=None):
        scaler, into.scaler = into.scaler, None
        super().load(path, into, map_location)
        into.scaler = scaler


class DropsDataPosition(harness.TrainingCheckpoint):
    """Restores everything but the data stream, which starts again from its first batch."""

    def load(self, path, into, map_location=None):
        data, into.data = into.data, None
        super().load(path, into, map_location)
        into.data = data


class DropsPythonRng(harness.TrainingCheckpoint):
    """Restores everything but Python's ``random``, which load leaves as it finds it."""

    def load(self, path, into, map_location=None):
        kept = random.getstate()
        super().load(path, into, map_location)
        random.setstate(kept)


class DropsNumpyRng(harness.TrainingCheckpoint):
    """Restores everything but numpy's global RNG, which load leaves as it finds it."""

    def load(self, path, into, map_location=None):
        kept = numpy.random.get_state()
        super().load(path, into, map_location)
        numpy.random.set_state(kept)


def _resume_failure(checkpointer, case: TrainingCase) -> str | None:
    (invariant,) = [
        i for i in checkpointer_invariants(checkpointer, "resume") if i.name == "resume_equivalence"
    ]
    try:
        list(invariant.check(case))
    except AssertionError as failure:
        return str(failure)
    return None


@pytest.mark.parametrize(
    ("checkpointer", "flag", "cause"),
    [
        pytest.param(
            DropsScaler(), "scaler", "scaler_not_restored", marks=needs_scaler, id="scaler"
        ),
        pytest.param(DropsDataPosition(), "data", "data_not_restored", id="data"),
        pytest.param(DropsPythonRng(), "host_rng", "host_rng_not_restored", id="python-rng"),
        pytest.param(DropsNumpyRng(), "host_rng", "host_rng_not_restored", id="numpy-rng"),
    ],
)
def test_a_checkpointer_that_drops_a_part_fails_resume_equivalence(checkpointer, flag, cause):
    with_part, without_part = _case(**{flag: True}), _case()
    message = _resume_failure(checkpointer, with_part)
    assert message is not None and "after 3 steps" in message
    assert f"likely cause ({cause})" in message
    # The part is the cause: the reference restores it, and without the part the same
    # checkpointer resumes exactly.
    assert _resume_failure(harness.TrainingCheckpoint(), with_part) is None
    assert _resume_failure(checkpointer, without_part) is None


@needs_scaler
def test_a_dropped_scaler_shows_in_its_state():
    # Scales are powers of two, so the unscaled gradients and the parameters are the same;
    # the scaler's own state (scale, growth tracker) is what differs.
    message = _resume_failure(DropsScaler(), _case(scaler=True))
    assert "['scaler']" in message


def test_a_scheduler_restored_from_json_is_identical_in_the_snapshot():
    # SequentialLR's state_dict holds one _last_lr list in two places; JSON gives two equal
    # lists back, which no scheduler behaves differently for.
    def built():
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        children = [
            torch.optim.lr_scheduler.ConstantLR(optimizer),
            torch.optim.lr_scheduler.StepLR(optimizer, 1),
        ]
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, children, milestones=[2])
        return TrainingState(model, optimizer, scheduler)

    saved, restored = built(), built()
    saved.optimizer.step()
    saved.scheduler.step()
    state_dict = saved.scheduler.state_dict()
    assert state_dict["_schedulers"][0]["_last_lr"] is state_dict["_last_lr"]
    restored.scheduler.load_state_dict(json.loads(json.dumps(state_dict)))
    harness.assert_identical(snapshot(saved)["scheduler"], snapshot(restored)["scheduler"])
