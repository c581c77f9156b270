"""The save/load promises, each a named check on one example.

Each check takes one drawn example and raises ``AssertionError`` (through
:func:`harness.assert_identical` wherever "nothing was lost" is judged) when the promise is
broken; it returns observations to report, such as an option combination the installed torch
refuses. :data:`INVARIANTS` lists them with the strategies that feed them, for the suite.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import re
from collections.abc import Iterator
from typing import Any

import torch
from hypothesis import strategies as st

from harness.capabilities import probe
from harness.checkpointer import checkpointer_invariants
from harness.compare import assert_identical, computed
from harness.devices import CPU_MAP_LOCATIONS, storages_tagged_as
from harness.formats import format_invariants
from harness.persistence import (
    DEFAULT_OPTIONS,
    SaveOptions,
    UnsupportedOptions,
    explain_error,
    load,
    round_trip,
    save,
)
from harness.pickle_scan import referenced_globals
from harness.recipes import TrainingCheckpoint
from harness.safety import safety_invariants
from harness.suite import Invariant, scratch_directory
from harness.temp_modules import temporary_module
from strategies.bundles import bundles, unsafe_contents
from strategies.models import models
from strategies.options import save_options
from strategies.refactorings import refactoring_cases, render_source

__all__ = [
    "INVARIANTS",
    "bundle_round_trip",
    "cuda_checkpoint_on_cpu",
    "non_persistent_buffer_names",
    "state_dict_round_trip",
    "weights_only_refusal",
    "whole_model_refactoring",
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
        return computed(module(*example_input))


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
    with scratch_directory() as directory:
        try:
            loaded = round_trip(state, options, directory)
        except UnsupportedOptions as refusal:
            yield str(refusal)
            return
        except pickle.UnpicklingError as error:
            if not case.spec.has_uninitialized_parameters:
                raise
            yield (
                "finding: weights_only=True refuses the state_dict of a model with an "
                f"uninitialized lazy module: {explain_error(error)}"
            )
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
    with scratch_directory() as directory:
        try:
            loaded = round_trip(bundle, options, directory)
        except UnsupportedOptions as refusal:
            yield str(refusal)
            return
        if not options.to_buffer:
            (first,) = os.listdir(directory)  # the file the round trip saved and loaded
            yield _same_bytes_when_saved_again(bundle, options, os.path.join(directory, first))
    assert_identical(bundle, loaded, name="bundle")


def _saved_bytes(obj: Any, options: SaveOptions, directory: str) -> bytes:
    """The bytes ``save`` writes for ``obj``; the file it wrote, if any, is removed."""
    target = save(obj, options, directory)
    if isinstance(target, io.BytesIO):
        return target.getvalue()
    with open(target, "rb") as handle:
        data = handle.read()
    os.unlink(target)
    return data


# Chunks in which two saved files are compared: the files are not read into memory whole.
_CHUNK = 1 << 20


def _same_file_bytes(first: str, second: str) -> bool:
    if os.path.getsize(first) != os.path.getsize(second):
        return False
    with open(first, "rb") as one, open(second, "rb") as other:
        while chunk := one.read(_CHUNK):
            if chunk != other.read(_CHUNK):
                return False
    return True


def _same_bytes_when_saved_again(obj: Any, options: SaveOptions, saved: str) -> str:
    """Whether saving ``obj`` once more writes the bytes of ``saved``, a save of it."""
    kept = f"{saved}.first"
    os.replace(saved, kept)
    again = save(obj, options, os.path.dirname(saved))
    verdict = "identical" if _same_file_bytes(kept, again) else "different"
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
    with scratch_directory() as directory:
        with storages_tagged_as("cuda:0"):
            source = save(bundle, DEFAULT_OPTIONS, directory)
        # The callable spelling first, recording the tags it is called with: the tags are
        # judged before anything else, at no load of their own.
        spellings = sorted(CPU_MAP_LOCATIONS, key=lambda spelling: not callable(spelling[1]))
        for spelling, map_location in spellings:
            locations: list[str] = []
            if callable(map_location):
                loaded = load(source, map_location=_recording(map_location, locations))
                tags = sorted(set(locations))
                assert set(locations) <= {"cuda:0"}, f"storages were tagged {tags}"
            else:
                loaded = load(source, map_location=map_location)
            assert_identical(bundle, loaded, name=f"bundle loaded with map_location={spelling}")
            del loaded  # else it would still be held while the next spelling loads
        if _has_storage(bundle) and not probe().cuda_available:
            try:
                load(source)
            except RuntimeError as error:
                assert "map_location" in str(error), f"unclear error: {error}"
                yield "without map_location on a CPU-only host: RuntimeError naming map_location"
            else:
                raise AssertionError("a cuda:0-tagged checkpoint loaded on a CPU-only host")


def _recording(map_location: Any, locations: list[str]) -> Any:
    """``map_location`` (a callable) that also appends each location it is called with."""

    def recorded(storage, location):
        locations.append(location)
        return map_location(storage, location)

    return recorded


# Protocol 2 pickles bytes through _codecs.encode, which the weights_only loader accepts,
# so it is not one of the globals that make a file unsafe.
_GLOBALS_ALLOWED_FOR_BYTES = {"_codecs.encode"}
# How torch names a type it refuses to build: "... but got <class 'numpy.dtypes.Float64DType'>".
_REFUSED_TYPE = re.compile(r"got <class '([\w.]+)'>")
_EXTRA_TYPE_ATTEMPTS = 4


def _resolve_global(qualified: str) -> Any:
    """The object named by ``module.attribute`` (the longest importable module prefix)."""
    parts = qualified.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            value = getattr(value, attribute)
        return value
    raise ImportError(f"cannot import {qualified}")


def _load_allowlisted(data: bytes, names: set[str]) -> tuple[Any, list[str]]:
    """Load with ``weights_only=True`` and the globals ``names`` allowlisted.

    The pickle names functions and classes, not the types of the objects they return, and
    torch may still refuse to build such an object ("... but got <class X>"); each such type
    is allowlisted in turn, a bounded number of times, and returned so it can be reported.
    Raises ``UnpicklingError`` when torch refuses for any other reason.
    """
    allowed = [_resolve_global(name) for name in sorted(names)]
    also_wanted: list[str] = []
    for _ in range(_EXTRA_TYPE_ATTEMPTS):
        try:
            with torch.serialization.safe_globals(allowed):
                return load(io.BytesIO(data)), also_wanted
        except pickle.UnpicklingError as error:
            wanted = _REFUSED_TYPE.search(str(error))
            if wanted is None:
                raise
            also_wanted.append(wanted.group(1))
            allowed.append(_resolve_global(wanted.group(1)))
    raise pickle.UnpicklingError(
        f"still refused after allowlisting {sorted(names)} and {also_wanted}"
    )


def weights_only_refusal(example: tuple[dict, Any, SaveOptions]) -> Iterator[str]:
    """``weights_only=True`` refuses a bundle holding a non-allowed type, and says which.

    The harness finds the globals the unsafe value brings in by reading the pickle itself.
    ``torch.load(weights_only=True)`` must raise ``UnpicklingError`` naming one of them;
    ``get_unsafe_globals_in_checkpoint`` (where present) must list all of them and only
    globals the file really refers to; with exactly those allowlisted through the
    ``safe_globals`` context manager (where present) the bundle loads identical.
    """
    bundle, unsafe, options = example
    unsafe_bundle = {**bundle, "unsafe": unsafe.value}
    caps = probe()
    with scratch_directory() as directory:
        data = _saved_bytes(unsafe_bundle, options, directory)
        safe_data = _saved_bytes(bundle, options, directory)
    referenced = referenced_globals(data)
    involved = referenced - referenced_globals(safe_data) - _GLOBALS_ALLOWED_FOR_BYTES
    assert involved, f"{unsafe.kind} content brought in no global: {sorted(referenced)}"
    try:
        load(io.BytesIO(data))
    except Exception as error:
        named = any(name in str(error) for name in involved)
        if not (isinstance(error, pickle.UnpicklingError) and named):
            try:
                load(io.BytesIO(safe_data))
            except Exception as safe_error:  # the same file without the unsafe value fails too
                yield f"weights_only load with {options}: {explain_error(safe_error)}"
                return
            raise AssertionError(
                f"the refusal of {unsafe.kind} content is not an UnpicklingError naming one "
                f"of {sorted(involved)}: {explain_error(error)}"
            ) from error
    else:
        raise AssertionError(f"weights_only=True loaded {unsafe.kind} content")
    if caps.get_unsafe_globals:
        try:
            reported = set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
        except Exception as error:
            yield f"get_unsafe_globals_in_checkpoint with {options}: {explain_error(error)}"
        else:
            assert involved <= reported <= referenced, (
                f"get_unsafe_globals_in_checkpoint listed {sorted(reported)}; the file's "
                f"unsafe globals are {sorted(involved)}"
            )
    if not caps.safe_globals_context:
        yield "this torch has no safe_globals context manager: allowlisting not checked"
        return
    try:
        loaded, also_wanted = _load_allowlisted(data, involved)
    except pickle.UnpicklingError as error:
        yield (
            f"finding: allowlisted {unsafe.kind} content is still refused with {options}: "
            f"{explain_error(error)}"
        )
        return
    for name in also_wanted:
        yield (
            f"finding: allowlisting the globals in the file is not enough for {unsafe.kind} "
            f"content: torch also wants {name}"
        )
    assert_identical(unsafe_bundle, loaded, name="allowlisted bundle")


def _whole_model_outcome(path: str, example_input: torch.Tensor, expected: torch.Tensor) -> str:
    """What loading a whole-model pickle (``weights_only=False``) and running it does."""
    try:
        model = load(path, weights_only=False)
    except Exception as error:
        return f"fails at load ({type(error).__name__})"
    try:
        output = _eval_output(model, (example_input,))
    except Exception as error:
        return f"loads, fails at forward ({type(error).__name__})"
    try:
        assert_identical(expected, output)
    except AssertionError:
        return "loads and silently computes something else"
    return "loads and behaves the same"


def _built_with_seed(model_class: type, init_seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        # The CPU generator alone: torch.manual_seed also seeds every accelerator's.
        torch.default_generator.manual_seed(init_seed)
        return model_class()


def whole_model_refactoring(case: Any) -> Iterator[str]:
    """What a refactoring of the model's code does to a whole-model pickle and to a state_dict.

    The model class is written to a temporary module, saved both whole (``torch.save(model)``)
    and as a state_dict, then the code is refactored. Checked: ``weights_only=True`` refuses
    the whole-model pickle (and, where torch can allowlist, loads it once the globals
    ``get_unsafe_globals_in_checkpoint`` lists are allowed); with no refactoring the pickle
    loads and behaves the same; the state_dict loads strictly into the refactored class
    when parameter names are kept (bit-identical outputs when forward is unchanged), and
    otherwise fails with an error naming every missing and unexpected key. What the
    whole-model pickle does after the refactoring is reported.
    """
    caps = probe()
    with temporary_module(render_source(case.model)) as module, scratch_directory() as d:
        model = _built_with_seed(module.load().Net, init_seed=0)
        example_input = torch.linspace(-2.0, 2.0, 3 * case.model.sizes[0]).reshape(3, -1)
        expected = _eval_output(model, (example_input,))
        whole_path, state_path = f"{d}/model.pt", f"{d}/state_dict.pt"
        torch.save(model, whole_path)
        torch.save(model.state_dict(), state_path)

        try:
            load(whole_path)
        except pickle.UnpicklingError:
            pass
        else:
            raise AssertionError("weights_only=True loaded a whole-model pickle")
        if caps.safe_globals_context and caps.get_unsafe_globals:
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(whole_path))
            with open(whole_path, "rb") as handle:
                allowlisted, also_wanted = _load_allowlisted(handle.read(), names)
            assert_identical(expected, _eval_output(allowlisted, (example_input,)))
            extra = f" and {', '.join(also_wanted)}" if also_wanted else ""
            yield f"whole-model pickle loads with weights_only=True once allowlisted{extra}"

        refactoring = case.record
        refactoring.apply(module, case.model)
        outcome = _whole_model_outcome(whole_path, example_input, expected)
        yield f"whole-model pickle after {refactoring.name}: {outcome}"
        if not refactoring.changes_code:
            assert outcome == refactoring.pickle_outcome, outcome
        if not refactoring.keeps_class:
            return  # the class is gone: there is nothing to load a state_dict into

        fresh = _built_with_seed(getattr(module.load(), refactoring.class_name), init_seed=1)
        state = load(state_path)
        if refactoring.keeps_parameter_names:
            fresh.load_state_dict(state, strict=True)
            if refactoring.keeps_forward:
                actual = _eval_output(fresh, (example_input,))
                assert_identical(expected, actual, name="output after load_state_dict")
            return
        missing = set(fresh.state_dict()) - set(state)
        unexpected = set(state) - set(fresh.state_dict())
        try:
            fresh.load_state_dict(state, strict=True)
        except RuntimeError as error:
            message = str(error)
            unnamed = sorted(key for key in missing | unexpected if f'"{key}"' not in message)
            assert not unnamed, f"load_state_dict's error does not name {unnamed}: {message}"
            assert "Missing key(s)" in message and "Unexpected key(s)" in message, message
            yield f"state_dict after {refactoring.name}: strict load names missing/unexpected keys"
        else:
            raise AssertionError(f"strict load_state_dict accepted renamed keys {sorted(missing)}")


def _unsafe_examples() -> st.SearchStrategy:
    return st.tuples(bundles(), unsafe_contents(), save_options(include_unreadable=True))


def _models_with_options() -> st.SearchStrategy:
    return st.tuples(models(), save_options(include_unreadable=True))


def _bundles_with_options() -> st.SearchStrategy:
    return st.tuples(bundles(), save_options(include_unreadable=True))


def _training_checkpoint_invariants() -> list[Invariant]:
    """The reference training checkpoint's state and resume invariants, named for the report."""
    wanted = {
        "state_restored": "training_checkpoint_restored",
        "resume_equivalence": "resume_equivalence",
    }
    return [
        Invariant(wanted[i.name], i.description, i.examples, i.check)
        for i in checkpointer_invariants(TrainingCheckpoint(), "resume")
        if i.name in wanted
    ]


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
        bundles,
        cuda_checkpoint_on_cpu,
    ),
    Invariant(
        "weights_only_refusal",
        "weights_only=True refuses a bundle holding a non-allowed type with UnpicklingError "
        "naming the global, get_unsafe_globals_in_checkpoint lists exactly the globals "
        "involved, and the bundle loads identical once those are allowlisted.",
        _unsafe_examples,
        weights_only_refusal,
    ),
    Invariant(
        "whole_model_refactoring",
        "A whole-model pickle is refused by weights_only=True; after a refactoring of the "
        "model's code its outcome is reported (fails at load, fails at forward, silently "
        "computes something else, or behaves the same), while the state_dict route loads "
        "strictly when parameter names are kept and names every missing and unexpected key "
        "when they change.",
        refactoring_cases,
        whole_model_refactoring,
    ),
]
INVARIANTS += _training_checkpoint_invariants()
INVARIANTS += safety_invariants()
INVARIANTS += format_invariants()
