"""Saving and loading with the options users pass: the one place the harness calls torch.save
and torch.load for its round trips.

Save and load options are an axis of every round-trip invariant, not a constant:
:class:`SaveOptions` names one combination (pickle protocol, legacy or zip format, file or
in-memory buffer, ``mmap`` on load). A combination the installed torch refuses raises
:class:`UnsupportedOptions` carrying torch's own message, so a report can say so.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import torch

from harness.capabilities import probe

__all__ = [
    "DEFAULT_OPTIONS",
    "SaveOptions",
    "UnsupportedOptions",
    "explain_error",
    "load",
    "round_trip",
    "save",
]


@dataclass(frozen=True)
class SaveOptions:
    """One combination of ``torch.save``/``torch.load`` options.

    Attributes:
        pickle_protocol: passed to ``torch.save`` (torch's default is 2).
        legacy_format: save with ``_use_new_zipfile_serialization=False``.
        to_buffer: save to an ``io.BytesIO`` instead of a file path.
        mmap: load with ``mmap=True`` (needs a file path).
    """

    pickle_protocol: int = 2
    legacy_format: bool = False
    to_buffer: bool = False
    mmap: bool = False

    def __str__(self) -> str:
        parts = [f"pickle_protocol={self.pickle_protocol}"]
        if self.legacy_format:
            parts.append("legacy format")
        parts.append("to a buffer" if self.to_buffer else "to a file")
        if self.mmap:
            parts.append("mmap=True")
        return ", ".join(parts)


DEFAULT_OPTIONS = SaveOptions()


class UnsupportedOptions(Exception):
    """The installed torch refuses this combination of options (not a broken promise)."""

    def __init__(self, options: SaveOptions, stage: str, error: BaseException):
        self.options = options
        self.stage = stage
        self.reason = explain_error(error)
        super().__init__(f"{stage} with {options}: {self.reason}")


def explain_error(error: BaseException) -> str:
    """One line saying why a save or load failed: the exception type and torch's reason.

    torch's weights_only errors are several paragraphs long; the line that explains them
    follows "WeightsUnpickler error:" (or the first line, for other errors).
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else ""
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            if not detail and index + 1 < len(lines):
                detail = lines[index + 1]
            reason = f"WeightsUnpickler error: {detail}"
            break
    return f"{type(error).__name__}: {reason}"


def save(obj: Any, options: SaveOptions, directory: str | os.PathLike) -> str | io.BytesIO:
    """Save ``obj`` as ``options`` say, into ``directory`` or a buffer; return the target."""
    target: str | io.BytesIO = (
        io.BytesIO() if options.to_buffer else os.path.join(directory, "checkpoint.pt")
    )
    torch.save(
        obj,
        target,
        pickle_protocol=options.pickle_protocol,
        _use_new_zipfile_serialization=not options.legacy_format,
    )
    return target


def load(
    source: str | io.BytesIO,
    options: SaveOptions = DEFAULT_OPTIONS,
    *,
    weights_only: bool = True,
    map_location: Any = None,
) -> Any:
    """Load what :func:`save` wrote, with ``weights_only`` and ``map_location`` as given."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
    keywords: dict[str, Any] = {"map_location": map_location}
    if probe().load_weights_only:
        keywords["weights_only"] = weights_only
    if options.mmap:
        keywords["mmap"] = True
    return torch.load(source, **keywords)


def round_trip(
    obj: Any,
    options: SaveOptions,
    directory: str | os.PathLike,
    *,
    weights_only: bool = True,
) -> Any:
    """Save ``obj`` and load it back.

    Raises :class:`UnsupportedOptions` when torch refuses a non-default combination of
    options; with the default options every error propagates as it is.
    """
    stage = "saving"
    try:
        source = save(obj, options, directory)
        stage = "loading with weights_only=True" if weights_only else "loading"
        return load(source, options, weights_only=weights_only)
    except Exception as error:
        if options == DEFAULT_OPTIONS:
            raise
        raise UnsupportedOptions(options, stage, error) from error
