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
from collections.abc import Iterable, Iterator

import torch

from harness.capabilities import tensor_storage

__all__ = ["CPU_MAP_LOCATIONS", "storages_tagged_as"]

# (location, the data pointers of the storages to tag, or None for every CPU storage)
_tagging: contextvars.ContextVar[tuple[str, frozenset[int] | None] | None] = contextvars.ContextVar(
    "tagging", default=None
)
_registered = False


def _tagger(storage) -> str | None:
    tagging = _tagging.get()
    if tagging is None or storage.device.type != "cpu":
        return None
    location, pointers = tagging
    return location if pointers is None or storage.data_ptr() in pointers else None


def _no_deserializer(storage, location: str) -> None:
    return None  # loading is left to torch's own deserializers


@contextlib.contextmanager
def storages_tagged_as(
    location: str = "cuda:0", only: Iterable[torch.Tensor] | None = None
) -> Iterator[None]:
    """Within this context, ``torch.save`` tags CPU storages with ``location``.

    Every CPU storage, or with ``only`` just the storages under those tensors: a GPU run
    keeps its parameters and optimizer state on the GPU, but not the CPU RNG state or the
    tensors a checkpointer builds on the side.
    """
    global _registered
    if not _registered:
        # Priority 0 runs before torch's own CPU tagger (priority 10).
        torch.serialization.register_package(0, _tagger, _no_deserializer)
        _registered = True
    # An empty storage has no address (0) to tell it by: it is left untagged.
    pointers = None if only is None else frozenset(tensor_storage(t).data_ptr() for t in only) - {0}
    token = _tagging.set((location, pointers))
    try:
        yield
    finally:
        _tagging.reset(token)


def _keep_storage(storage, location):
    return storage


# The four spellings of "load onto the CPU" that users pass as map_location.
CPU_MAP_LOCATIONS = (
    ("'cpu'", "cpu"),
    ("torch.device('cpu')", torch.device("cpu")),
    ("{'cuda:0': 'cpu'}", {"cuda:0": "cpu"}),
    ("lambda storage, location: storage", _keep_storage),
)
