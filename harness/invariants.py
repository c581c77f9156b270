"""The save/load promises, each a named check on one example.

Each check takes one drawn example and raises ``AssertionError`` (through
:func:`harness.assert_identical` wherever "nothing was lost" is judged) when the promise is
broken; it returns observations to report, such as an option combination the installed torch
refuses. :data:`INVARIANTS` lists them with the strategies that feed them, for the suite.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from hypothesis import strategies as st

from harness.capabilities import probe
from harness.compare import assert_identical
from harness.devices import CPU_MAP_LOCATIONS, storages_tagged_as
from harness.persistence import (
    DEFAULT_OPTIONS,
    SaveOptions,
    UnsupportedOptions,
    load,
    round_trip,
    save,
)
from harness.suite import Invariant

__all__ = [
    "INVARIANTS",
    "bundle_round_trip",
    "cuda_checkpoint_on_cpu",
    "non_persistent_buffer_names",
    "state_dict_round_trip",
]

# The init seed of the fresh instance a state_dict is loaded into; any seed other than the
# one the drawn case was built with gives a different random init.
_FRESH_INIT_SEED = 1


def non_persistent_buffer_names(module: torch.nn.Module) -> set[str]:
    """Fully qualified names of the buffers registered with ``persistent=False``."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, submodule in module.named_modules()
        for name in getattr(submodule, "_non_persistent_buffers_set", ())
    }


def _eval_output(module: torch.nn.Module, example_input: tuple) -> Any:
    module.eval()
    with torch.no_grad():
        return module(*example_input)


def state_dict_round_trip(example: tuple[Any, SaveOptions]) -> Iterator[str]:
    """A state_dict saved and loaded into a fresh instance restores the model exactly.

    The loaded state_dict is identical to the saved one (aliasing included, so tied
    parameters stay tied), holds no non-persistent buffer, loads with ``strict=True`` into
    an instance built from the same spec with another random init, after which that
    instance's state_dict and its eval-mode outputs are bit-identical to the original's.
    """
    case, options = example
    original = case.module
    state = original.state_dict()
    with tempfile.TemporaryDirectory() as directory:
        try:
            loaded = round_trip(state, options, directory)
        except UnsupportedOptions as refusal:
            yield str(refusal)
            return
    assert_identical(state, loaded, name="state_dict")
    leaked = sorted(non_persistent_buffer_names(original) & set(loaded))
    assert not leaked, f"non-persistent buffers were saved: {leaked}"
    fresh = case.rebuild(_FRESH_INIT_SEED)
    result = fresh.module.load_state_dict(loaded, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    assert_identical(state, fresh.module.state_dict(), name="fresh.state_dict()")
    assert_identical(
        _eval_output(original, case.example_input),
        _eval_output(fresh.module, case.example_input),
        name="eval output",
    )


def bundle_round_trip(example: tuple[dict, SaveOptions]) -> Iterator[str]:
    """A checkpoint bundle comes back from ``torch.load(weights_only=True)`` identical.

    Identical means :func:`harness.assert_identical`: every key in order, every value of the
    same type and bits, the same objects shared and the same storages shared. Also reports
    whether saving the same bundle twice writes the same bytes on this torch.
    """
    bundle, options = example
    with tempfile.TemporaryDirectory() as directory:
        try:
            loaded = round_trip(bundle, options, directory)
        except UnsupportedOptions as refusal:
            yield str(refusal)
            return
        if not options.to_buffer:
            yield _same_bytes_when_saved_twice(bundle, options)
    assert_identical(bundle, loaded, name="bundle")


def _same_bytes_when_saved_twice(obj: Any, options: SaveOptions) -> str:
    files = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as directory:
            with open(save(obj, options, directory), "rb") as handle:
                files.append(handle.read())
    verdict = "identical" if files[0] == files[1] else "different"
    return f"saving the same object twice ({options}) writes {verdict} bytes"


def _has_storage(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(_has_storage(value) for value in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_storage(value) for value in obj)
    return False


def cuda_checkpoint_on_cpu(bundle: dict) -> Iterator[str]:
    """A checkpoint whose storages are tagged ``cuda:0`` loads on the CPU with map_location.

    The file is written with every storage tagged ``cuda:0``, as a GPU save tags them. On a
    host without CUDA, loading it without ``map_location`` raises torch's RuntimeError that
    points to ``map_location``; with each of ``'cpu'``, ``torch.device('cpu')``,
    ``{'cuda:0': 'cpu'}`` and a callable it gives a bundle identical to the source.
    """
    with tempfile.TemporaryDirectory() as directory:
        with storages_tagged_as("cuda:0"):
            source = save(bundle, DEFAULT_OPTIONS, directory)
        locations: list[str] = []

        def record_location(storage, location):
            locations.append(location)
            return storage

        load(source, map_location=record_location)
        assert set(locations) <= {"cuda:0"}, f"storages were tagged {sorted(set(locations))}"
        if _has_storage(bundle) and not probe().cuda_available:
            try:
                load(source)
            except RuntimeError as error:
                assert "map_location" in str(error), f"unclear error: {error}"
                yield "without map_location on a CPU-only host: RuntimeError naming map_location"
            else:
                raise AssertionError("a cuda:0-tagged checkpoint loaded on a CPU-only host")
        for spelling, map_location in CPU_MAP_LOCATIONS:
            loaded = load(source, map_location=map_location)
            assert_identical(bundle, loaded, name=f"bundle loaded with map_location={spelling}")


def _models_with_options() -> st.SearchStrategy:
    from strategies.models import models
    from strategies.options import save_options

    return st.tuples(models(), save_options())


def _bundles() -> st.SearchStrategy:
    from strategies.bundles import bundles

    return bundles()


def _bundles_with_options() -> st.SearchStrategy:
    from strategies.bundles import bundles
    from strategies.options import save_options

    return st.tuples(bundles(), save_options())


INVARIANTS: list[Invariant] = [
    Invariant(
        "state_dict_round_trip",
        "A state_dict saved and loaded into a fresh instance (strict=True) gives identical "
        "parameters and buffers, keeps tied parameters tied, leaves out non-persistent "
        "buffers and gives bit-identical eval-mode outputs.",
        _models_with_options,
        state_dict_round_trip,
    ),
    Invariant(
        "bundle_round_trip",
        "cuda_checkpoint_on_cpu",
        "A checkpoint dictionary saved and loaded with weights_only=True is identical, "
        "aliasing included.",
        _bundles_with_options,
        bundle_round_trip,
    ),
    Invariant(
        "cuda_checkpoint_on_cpu",
        "A checkpoint whose storages are tagged cuda:0 fails to load on a CPU-only host "
        "without map_location, with an error naming map_location, and loads identical with "
        "map_location='cpu', torch.device('cpu'), {'cuda:0': 'cpu'} or a callable.",
        _bundles,
        cuda_checkpoint_on_cpu,
    ),
]
