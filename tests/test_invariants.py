"""The persistence invariants as properties, and planted defects each one must catch."""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import warnings

import pytest
import torch
from hypothesis import given

from harness import invariants
from harness.capabilities import probe
from harness.persistence import DEFAULT_OPTIONS, SaveOptions
from strategies.bundles import UnsafeContent, bundles, unsafe_contents
from strategies.options import save_options


def run(check, example) -> list[str]:
    return list(check(example))


@given(bundles(), save_options(include_unreadable=True))
def test_bundle_round_trip(bundle, options):
    run(invariants.bundle_round_trip, (bundle, options))


@given(bundles())
def test_cuda_checkpoint_on_cpu(bundle):
    run(invariants.cuda_checkpoint_on_cpu, bundle)


@given(bundles(), unsafe_contents(), save_options(include_unreadable=True))
def test_weights_only_refusal(bundle, unsafe, options):
    run(invariants.weights_only_refusal, (bundle, unsafe, options))


def shared_bundle() -> dict:
    weights = torch.arange(6.0)
    return {"model_state_dict": {"w": weights, "w_tail": weights[2:]}, "epoch": 3}


def test_bundle_round_trip_catches_a_loader_that_breaks_sharing(monkeypatch):
    real = invariants.round_trip

    def cloning_round_trip(obj, options, directory, **kwargs):
        loaded = real(obj, options, directory, **kwargs)
        state = loaded["model_state_dict"]
        loaded["model_state_dict"] = {key: value.clone() for key, value in state.items()}
        return loaded

    monkeypatch.setattr(invariants, "round_trip", cloning_round_trip)
    with pytest.raises(AssertionError, match="storage"):
        run(invariants.bundle_round_trip, (shared_bundle(), DEFAULT_OPTIONS))


def weights_only_refusal_of(obj: object, pickle_protocol: int) -> Exception | None:
    """The exception ``torch.load(weights_only=True)`` raises on ``obj`` saved with
    ``pickle_protocol``, None where it loads: asked of torch itself, not of the harness."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=pickle_protocol)
    buffer.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4 in the checkpoint"
            torch.load(buffer, weights_only=True)
    except Exception as error:  # noqa: BLE001 - which refusal it is is the answer
        return error
    return None


def test_bundle_round_trip_reports_refused_options_instead_of_failing():
    options = SaveOptions(pickle_protocol=4)
    refusal = weights_only_refusal_of(shared_bundle(), pickle_protocol=4)
    observed = run(invariants.bundle_round_trip, (shared_bundle(), options))
    if refusal is None:
        # this torch reads protocol 4: the bundle comes back, and saving twice is reported
        assert observed == [f"saving the same object twice ({options}) writes identical bytes"]
    else:
        # this torch refuses it: reported as a refusal of these options, with torch's class
        assert isinstance(refusal, pickle.UnpicklingError), refusal
        (line,) = observed
        assert line.startswith(f"loading with weights_only=True with {options}: UnpicklingError: ")


def test_cuda_checkpoint_on_cpu_catches_untagged_storages(monkeypatch):
    monkeypatch.setattr(invariants, "storages_tagged_as", lambda location: contextlib.nullcontext())
    with pytest.raises(AssertionError, match="storages were tagged \\['cpu'\\]"):
        run(invariants.cuda_checkpoint_on_cpu, shared_bundle())


def test_weights_only_refusal_catches_a_loader_that_runs_code(monkeypatch):
    real = invariants.load
    monkeypatch.setattr(
        invariants, "load", lambda source, *a, **k: real(source, weights_only=False)
    )
    unsafe = UnsafeContent(kind="namespace", value=argparse.Namespace(lr=0.1))
    with pytest.raises(AssertionError, match="weights_only=True loaded namespace content"):
        run(invariants.weights_only_refusal, (shared_bundle(), unsafe, DEFAULT_OPTIONS))


def test_weights_only_refusal_names_the_unsafe_global():
    unsafe = UnsafeContent(kind="namespace", value=argparse.Namespace(lr=0.1))
    observed = run(invariants.weights_only_refusal, (shared_bundle(), unsafe, DEFAULT_OPTIONS))
    if probe().safe_globals_context:
        assert observed == []  # refused, listed exactly, and loads identical once allowlisted
    else:
        assert observed == [
            "this torch has no safe_globals context manager: allowlisting not checked"
        ]
