"""Tests of strategies.bundles: bundles and weights-only contents survive a weights-only round
trip identically, unsafe contents are refused, and storage sharing really appears."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from hypothesis import Phase, find, given, settings

from harness import assert_identical
from harness.capabilities import probe
from strategies.bundles import (
    UnsafeContent,
    bundles,
    unsafe_contents,
    weights_only_contents,
)

pytestmark = pytest.mark.skipif(
    not probe().load_weights_only, reason="torch.load has no weights_only keyword here"
)

FIND = settings(database=None, derandomize=True, max_examples=1000, phases=[Phase.generate])
UNSAFE_KINDS = ["custom_class", "dataclass", "namespace", "numpy_array", "numpy_object_array"]


def round_trip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def tensors_in(obj, found=None) -> list[torch.Tensor]:
    found = [] if found is None else found
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            tensors_in(value, found)
    elif isinstance(obj, list | tuple):
        for value in obj:
            tensors_in(value, found)
    return found


def storage_pointer(tensor: torch.Tensor) -> int:
    storage = tensor.untyped_storage() if hasattr(tensor, "untyped_storage") else tensor.storage()
    return storage.data_ptr()


def has_same_object_twice(obj) -> bool:
    tensors = tensors_in(obj)
    return len({id(t) for t in tensors}) < len(tensors)


def has_views_at_different_offsets(obj) -> bool:
    offsets: dict[int, set[int]] = {}
    for tensor in tensors_in(obj):
        if tensor.numel():
            offsets.setdefault(storage_pointer(tensor), set()).add(tensor.storage_offset())
    return any(len(found) >= 2 for found in offsets.values())


@given(bundles())
def test_bundles_survive_a_weights_only_round_trip(bundle):
    assert_identical(bundle, round_trip(bundle))


@given(weights_only_contents())
def test_weights_only_contents_survive_a_weights_only_round_trip(contents):
    assert_identical(contents, round_trip(contents))


@given(bundles(), unsafe_contents())
def test_unsafe_contents_are_refused_inside_a_bundle(bundle, unsafe):
    bundle["extra"] = unsafe.value
    with pytest.raises(pickle.UnpicklingError):
        round_trip(bundle)


@pytest.mark.parametrize("kind", [*UNSAFE_KINDS, "path"])
def test_every_unsafe_kind_is_reachable(kind):
    found = find(unsafe_contents(), lambda unsafe: unsafe.kind == kind, settings=FIND)
    assert isinstance(found, UnsafeContent) and found.kind == kind


@pytest.mark.parametrize("strategy", [bundles, weights_only_contents])
def test_the_same_tensor_appears_in_two_places(strategy):
    found = find(strategy(), has_same_object_twice, settings=FIND)
    loaded = round_trip(found)
    assert has_same_object_twice(loaded)
    assert_identical(found, loaded)


@pytest.mark.parametrize("strategy", [bundles, weights_only_contents])
def test_views_share_storage_at_different_offsets(strategy):
    found = find(strategy(), has_views_at_different_offsets, settings=FIND)
    loaded = round_trip(found)
    assert has_views_at_different_offsets(loaded)
    assert_identical(found, loaded)


def test_bundles_hold_realistic_entries():
    def realistic(bundle):
        model = bundle.get("model_state_dict", {})
        optimizer = bundle.get("optimizer_state_dict", {"state": {}})
        return (
            any(key.endswith("num_batches_tracked") for key in model)
            and any("exp_avg" in state for state in optimizer["state"].values())
            and "rng_state" in bundle
        )

    found = find(bundles(), realistic, settings=FIND)
    assert type(found["model_state_dict"]).__name__ == "OrderedDict"
    assert found["rng_state"].dtype == torch.uint8
    group = found["optimizer_state_dict"]["param_groups"][0]
    assert isinstance(group["betas"], tuple) and len(group["betas"]) == 2
