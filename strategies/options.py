"""Strategies for the save and load options users pass to ``torch.save``/``torch.load``."""

from __future__ import annotations

import functools
import pickle
import tempfile
import warnings

import torch
from hypothesis import event
from hypothesis import strategies as st

from harness.capabilities import probe, weights_only_loadable_types, weights_only_samples
from harness.compare import assert_identical
from harness.persistence import SaveOptions, UnsupportedOptions, round_trip
from strategies._arguments import check_bool

__all__ = ["save_options"]


@functools.cache
def _combinations() -> tuple[SaveOptions, ...]:
    """Every combination the installed torch can be asked to save and load, simplest first
    (torch's defaults: protocol 2, zip format, a file, no mmap)."""
    found = []
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        for legacy_format in (False, True):
            for to_buffer in (False, True):
                # mmap needs a file in the zip format, and a torch.load that has the keyword.
                mmaps = (
                    (False, True)
                    if probe().load_mmap and not (legacy_format or to_buffer)
                    else (False,)
                )
                for mmap in mmaps:
                    found.append(SaveOptions(protocol, legacy_format, to_buffer, mmap))
    return tuple(found)


def _reads_back(options: SaveOptions) -> bool:
    """Whether a checkpoint of a tensor of every dtype and one value of every other type
    that ``torch.load(weights_only=True)`` reads with torch's default options, saved with
    ``options``, loads back identical (with ``weights_only=True`` where torch has it)."""
    loadable = weights_only_loadable_types()
    checkpoint = {
        "weight": torch.arange(6.0).reshape(2, 3),
        "tensors": [torch.zeros(2, dtype=dtype) for dtype in probe().dtypes],
        "values": [value for value in weights_only_samples() if type(value) in loadable],
    }
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 3 in the checkpoint"
        try:
            loaded = round_trip(checkpoint, options, directory)
        except UnsupportedOptions:
            return False
    try:
        assert_identical(checkpoint, loaded)
    except AssertionError:
        return False
    return True


@functools.cache
def _readable_combinations() -> tuple[SaveOptions, ...]:
    # Found by trying each combination once, as harness.capabilities finds what torch
    # supports. On torch 2.13.0 weights_only=True cannot read pickle protocols 4 and 5 at
    # all, nor bytes saved with protocol 3, nor float8 tensors in the legacy format.
    return tuple(options for options in _combinations() if _reads_back(options))


@st.composite
def _save_options(draw: st.DrawFn, include_unreadable: bool) -> SaveOptions:
    combinations = _combinations() if include_unreadable else _readable_combinations()
    # Ordered simplest first, field by field: a failure shrinks to the first combination,
    # in that order, that still fails.
    options = draw(st.sampled_from(combinations))
    event(f"save options: {options}")
    return options


def save_options(*, include_unreadable: bool = False) -> st.SearchStrategy[SaveOptions]:
    """Combinations of ``torch.save``/``torch.load`` options that the installed torch reads back.

    Draws the pickle protocol (2 to the highest Python has), the legacy or zip format, a
    file or an in-memory buffer, and ``mmap=True`` where torch has it and the target is a
    zip-format file. By default only the combinations with which ``torch.load`` (with
    ``weights_only=True`` where torch has it) gives back, identical, a checkpoint holding a
    tensor of every dtype and one value of every other type it reads with torch's default
    options: each combination is tried once, at the first draw. On torch 2.13.0 that leaves
    pickle protocol 2 in the zip format, to a file (with or without ``mmap``) or a buffer
    (``weights_only=True`` cannot read protocols 4 and 5, nor bytes saved with protocol 3,
    nor float8 tensors in the legacy format), so a property test fails on the code it
    tests, not on torch.

    ``include_unreadable=True`` draws every combination, also those torch saves but then
    refuses to load, for checks that report such refusals (they raise
    :class:`harness.persistence.UnsupportedOptions` there).

    Shrinks toward torch's defaults: protocol 2, zip format, a file, no mmap.
    """
    check_bool(include_unreadable, name="include_unreadable")
    return _save_options(include_unreadable)
