"""The timed operations: torch save/load, safetensors, and the machine's limits.

Operations *under test* (everything but the limits) honour :data:`SLOWDOWN_VARIABLE`: with
``HARNESS_BENCH_SLOWDOWN=0.25`` each of them does busy work for a quarter of its own duration
after finishing, a known regression to check that the regression tracking catches.
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy
import torch

__all__ = [
    "SLOWDOWN",
    "SLOWDOWN_VARIABLE",
    "fsync_path",
    "load_buffer",
    "load_file",
    "load_mmap_and_read",
    "memory_copy",
    "raw_read",
    "raw_write",
    "safetensors_load",
    "safetensors_load_and_read",
    "safetensors_save",
    "save_buffer",
    "save_file",
    "under_test",
]

SLOWDOWN_VARIABLE = "HARNESS_BENCH_SLOWDOWN"


def _slowdown_from_environment() -> float:
    value = os.environ.get(SLOWDOWN_VARIABLE, "").strip()
    try:
        fraction = float(value) if value else 0.0
    except ValueError:
        raise ValueError(
            f"{SLOWDOWN_VARIABLE}={value!r}: expected a fraction such as 0.25 (25% slower)"
        ) from None
    if fraction < 0:
        raise ValueError(f"{SLOWDOWN_VARIABLE}={value!r}: expected a fraction >= 0")
    return fraction


#: The injected slowdown, read once: 0.0 unless the environment variable says otherwise.
SLOWDOWN = _slowdown_from_environment()

F = TypeVar("F", bound=Callable[..., Any])


def under_test(function: F) -> F:
    """Mark ``function`` as an operation under test: slowed down by :data:`SLOWDOWN` when set,
    returned unchanged (no overhead) otherwise."""
    if not SLOWDOWN:
        return function

    @functools.wraps(function)
    def slowed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = function(*args, **kwargs)
        until = time.perf_counter() + (time.perf_counter() - start) * SLOWDOWN
        while time.perf_counter() < until:
            pass
        return result

    return slowed  # type: ignore[return-value]


def fsync_path(path: str) -> None:
    """Flush the file at ``path`` to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# torch


@under_test
def save_file(obj: Any, path: str) -> None:
    """``torch.save`` to ``path``, then fsync: the checkpoint is on disk when this returns."""
    torch.save(obj, path)
    fsync_path(path)


@under_test
def save_buffer(obj: Any) -> io.BytesIO:
    """``torch.save`` into a new ``io.BytesIO``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer


@under_test
def load_file(path: str, *, weights_only: bool = True, mmap: bool = False) -> Any:
    """``torch.load`` from ``path``."""
    if mmap:
        return torch.load(path, weights_only=weights_only, mmap=True)
    return torch.load(path, weights_only=weights_only)


@under_test
def load_mmap_and_read(path: str) -> Any:
    """``torch.load(mmap=True)``, then every tensor read once: the lazy load made eager."""
    loaded = torch.load(path, weights_only=True, mmap=True)
    for tensor in loaded.values():
        tensor.sum()
    return loaded


@under_test
def load_buffer(data: bytes, *, weights_only: bool = True) -> Any:
    """``torch.load`` from an ``io.BytesIO`` over ``data``."""
    return torch.load(io.BytesIO(data), weights_only=weights_only)


# safetensors (optional)


@under_test
def safetensors_save(tensors: dict[str, torch.Tensor], path: str) -> None:
    """``safetensors.torch.save_file``, then fsync."""
    from safetensors.torch import save_file as save

    save(tensors, path)
    fsync_path(path)


@under_test
def safetensors_load(path: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``."""
    from safetensors.torch import load_file as load

    return load(path)


@under_test
def safetensors_load_and_read(path: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, then every tensor read once."""
    from safetensors.torch import load_file as load

    loaded = load(path)
    for tensor in loaded.values():
        tensor.sum()
    return loaded


# The machine's limits for the same bytes: not under test, never slowed down.


def memory_copy(source: numpy.ndarray, destination: numpy.ndarray) -> None:
    """Copy ``source`` into the preallocated ``destination`` of the same size, in one thread.

    ``numpy.copyto`` rather than ``Tensor.copy_``: on a 2-core machine torch's parallel copy
    takes milliseconds to wake its threads, which is no limit of the machine.
    """
    numpy.copyto(destination, source)


def raw_write(data: memoryview, path: str) -> None:
    """Write ``data`` to ``path`` in one call, then fsync."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def raw_read(path: str, into: bytearray) -> int:
    """Read the whole file at ``path`` into the preallocated ``into``."""
    with open(path, "rb", buffering=0) as handle:
        return handle.readinto(into)
