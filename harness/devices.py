"""Checkpoints that look GPU-saved, written on any host.

A checkpoint saved on a GPU records, for each storage, the location tag ``"cuda:0"``;
that tag is what makes ``torch.load`` on a CPU-only host fail without ``map_location``.
:func:`storages_tagged_as` makes ``torch.save`` record such a tag for CPU storages, through
torch's own extension point for device tags (``torch.serialization.register_package``), so
the file is what a GPU save writes, byte for byte in its records, without a GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

__all__ = ["CPU_MAP_LOCATIONS", "storages_tagged_as"]

_tag_for_cpu_storages: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tag_for_cpu_storages", default=None
)
_registered = False


def _tagger(storage) -> str | None:
    location = _tag_for_cpu_storages.get()
    return location if location is not None and storage.device.type == "cpu" else None


def _no_deserializer(storage, location: str) -> None:
    return None  # loading is left to torch's own deserializers


@contextlib.contextmanager
def storages_tagged_as(location: str = "cuda:0") -> Iterator[None]:
    """Within this context, ``torch.save`` tags every CPU storage with ``location``."""
    global _registered
    if not _registered:
        # Priority 0 runs before torch's own CPU tagger (priority 10).
        torch.serialization.register_package(0, _tagger, _no_deserializer)
        _registered = True
    token = _tag_for_cpu_storages.set(location)
    try:
        yield
    finally:
        _tag_for_cpu_storages.reset(token)


def _keep_storage(storage, location):
    return storage


# The four spellings of "load onto the CPU" that users pass as map_location.
CPU_MAP_LOCATIONS = (
    ("'cpu'", "cpu"),
    ("torch.device('cpu')", torch.device("cpu")),
    ("{'cuda:0': 'cpu'}", {"cuda:0": "cpu"}),
    ("lambda storage, location: storage", _keep_storage),
)
