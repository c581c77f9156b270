"""Tests of strategies.bundles: bundles and weights-only contents survive a weights-only round
trip identically, unsafe contents are refused, and storage sharing really appears; and of
strategies.options: every save/load option combination drawn by default reads back."""

from __future__ import annotations

import collections
import io
import os
import pickle
import tempfile

import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis.errors import InvalidArgument, NoSuchExample

from harness.capabilities import probe, tensor_storage, weights_only_loadable_types
from harness.compare import assert_identical
from harness.persistence import SaveOptions
from strategies.bundles import (
    UnsafeContent,
    bundles,
    unsafe_contents,
    weights_only_contents,
)
from strategies.options import save_options

pytestmark = pytest.mark.skipif(
    not probe().load_weights_only, reason="torch.load has no weights_only keyword here"
)

FIND = settings(database=None, derandomize=True, max_examples=1000, phases=[Phase.generate])
UNSAFE_KINDS = [
    "custom_class",
    "dataclass",
    "namespace",
    "numpy_array",
    "numpy_object_array",
    "path",
]


def round_trip(obj, weights_only: bool = True):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=weights_only)


def values_in(obj) -> list:
    """``obj`` and everything inside it, containers included."""
    found = [obj]
    if isinstance(obj, dict):
        for value in obj.values():
            found.extend(values_in(value))
    elif isinstance(obj, list | tuple | set | frozenset) and not isinstance(obj, torch.Size):
        for value in obj:
            found.extend(values_in(value))
    return found


def tensors_in(obj) -> list[torch.Tensor]:
    return [value for value in values_in(obj) if isinstance(value, torch.Tensor)]


def storage_pointer(tensor: torch.Tensor) -> int:
    storage = tensor_storage(tensor)
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


def loaded_identical(obj):
    """``obj`` loaded back, asserted identical: with ``weights_only=True``, or, where ``obj``
    holds a float and the probe says that loader refuses floats (1.13.1), asserted refused
    there and loaded with ``weights_only=False``."""
    holds_float = any(type(value) is float for value in values_in(obj))
    if holds_float and float not in weights_only_loadable_types():
        with pytest.raises(pickle.UnpicklingError):
            round_trip(obj)
        loaded = round_trip(obj, weights_only=False)
    else:
        loaded = round_trip(obj)
    assert_identical(obj, loaded)
    return loaded


@given(bundles())
def test_bundles_survive_a_weights_only_round_trip(bundle):
    loaded_identical(bundle)


@given(weights_only_contents())
def test_weights_only_contents_survive_a_weights_only_round_trip(contents):
    assert_identical(contents, round_trip(contents))


@given(bundles(), unsafe_contents())
def test_unsafe_contents_are_refused_inside_a_bundle(bundle, unsafe):
    bundle["extra"] = unsafe.value
    with pytest.raises(pickle.UnpicklingError):
        round_trip(bundle)
    # The refusal is the weights-only unpickler's: the full unpickler loads the same bytes.
    assert type(round_trip(bundle, weights_only=False)["extra"]) is type(unsafe.value)


def type_name(kind: type) -> str:
    return kind.__name__


@pytest.mark.parametrize(
    "kind", sorted(weights_only_loadable_types(), key=type_name), ids=type_name
)
def test_every_loadable_type_is_reachable(kind):
    def holds_kind(contents):
        return any(type(value) is kind for value in values_in(contents))

    found = find(weights_only_contents(), holds_kind, settings=FIND)
    assert holds_kind(round_trip(found))


@pytest.mark.parametrize("kind", UNSAFE_KINDS)
def test_every_unsafe_kind_is_reachable(kind):
    found = find(unsafe_contents(), lambda unsafe: unsafe.kind == kind, settings=FIND)
    assert isinstance(found, UnsafeContent) and found.kind == kind


@pytest.mark.parametrize("strategy", [bundles, weights_only_contents])
def test_the_same_tensor_appears_in_two_places(strategy):
    found = find(strategy(), has_same_object_twice, settings=FIND)
    assert has_same_object_twice(loaded_identical(found))


@pytest.mark.parametrize("strategy", [bundles, weights_only_contents])
def test_views_share_storage_at_different_offsets(strategy):
    found = find(strategy(), has_views_at_different_offsets, settings=FIND)
    assert has_views_at_different_offsets(loaded_identical(found))


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
    assert type(found["model_state_dict"]) is collections.OrderedDict
    generator_state = torch.Generator().get_state()
    assert (found["rng_state"].dtype, found["rng_state"].shape) == (
        generator_state.dtype,
        generator_state.shape,
    )
    group = found["optimizer_state_dict"]["param_groups"][0]
    assert isinstance(group["betas"], tuple) and len(group["betas"]) == 2


# --- strategies.options -----------------------------------------------------------------------


def save_and_load(obj, options: SaveOptions):
    """``obj`` saved as ``options`` say and loaded with ``torch.load(weights_only=True)``,
    calling torch directly (not the harness's persistence module)."""
    with tempfile.TemporaryDirectory() as directory:
        target = io.BytesIO() if options.to_buffer else os.path.join(directory, "checkpoint.pt")
        torch.save(
            obj,
            target,
            pickle_protocol=options.pickle_protocol,
            _use_new_zipfile_serialization=not options.legacy_format,
        )
        if options.to_buffer:
            target.seek(0)
        return torch.load(target, weights_only=True, **({"mmap": True} if options.mmap else {}))


@given(save_options())
def test_every_drawn_save_option_reads_a_tensor_dict_back(options):
    tensors = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.zeros(3)}
    assert_identical(tensors, save_and_load(tensors, options))


@given(weights_only_contents(), save_options())
def test_weights_only_contents_read_back_with_every_drawn_save_option(contents, options):
    assert_identical(contents, save_and_load(contents, options))


def test_save_options_reach_a_buffer_and_mmap():
    find(save_options(), lambda options: options.to_buffer, settings=FIND)
    if probe().load_mmap:
        find(save_options(), lambda options: options.mmap, settings=FIND)


# Combinations the strategy drew before it knew what torch reads back.
COMBINATIONS = {
    "highest_protocol": lambda options: options.pickle_protocol == pickle.HIGHEST_PROTOCOL,
    "protocol_4": lambda options: options.pickle_protocol == 4,
    "legacy_buffer": lambda options: options.legacy_format and options.to_buffer,
}
if probe().load_mmap:
    COMBINATIONS["mmap_protocol_3"] = lambda options: options.mmap and options.pickle_protocol == 3


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_combinations_torch_cannot_read_are_drawn_only_when_asked(name):
    found = find(save_options(include_unreadable=True), COMBINATIONS[name], settings=FIND)
    tensors = {"weight": torch.arange(6.0).reshape(2, 3)}
    try:
        save_and_load(tensors, found)
    except Exception:  # unreadable here (pickle protocols 4 and 5 on torch 2.13.0)
        with pytest.raises(NoSuchExample):
            find(save_options(), lambda options: options == found, settings=FIND)


def test_save_options_shrink_to_torch_defaults():
    shrink = settings(database=None, derandomize=True)
    assert find(save_options(), lambda options: True, settings=shrink) == SaveOptions()
    everything = save_options(include_unreadable=True)
    assert find(everything, lambda options: True, settings=shrink) == SaveOptions()
    failing = find(everything, lambda o: o.pickle_protocol > 2 and o.to_buffer, settings=shrink)
    assert failing == SaveOptions(pickle_protocol=3, to_buffer=True)


def test_save_options_refuse_a_non_boolean_switch():
    with pytest.raises(InvalidArgument, match="include_unreadable"):
        save_options(include_unreadable="yes")
