"""What the benchmarks save: state dicts of a given size and an optimizer state."""

from __future__ import annotations

import torch

from harness.capabilities import tensor_storage

__all__ = [
    "SIZES",
    "adam_state_dict",
    "size_label",
    "state_dict",
    "tensor_bytes",
]

#: Total tensor bytes of the state dicts benchmarked, from a few KiB to 256 MiB.
SIZES = (4 * 2**10, 256 * 2**10, 16 * 2**20, 256 * 2**20)

_ELEMENT_BYTES = 4  # float32


def size_label(size: int) -> str:
    """``4096`` -> ``"4KiB"``, ``16 * 2**20`` -> ``"16MiB"`` (binary units)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def state_dict(total_bytes: int, tensors: int = 1) -> dict[str, torch.Tensor]:
    """A state dict of ``tensors`` float32 tensors of equal size, ``total_bytes`` in all.

    The values are random (seed 0) so that no layer of the stack can profit from zeros.
    """
    if total_bytes % (tensors * _ELEMENT_BYTES):
        raise ValueError(
            f"total_bytes={total_bytes} is not a multiple of {tensors} float32 tensors"
        )
    elements = total_bytes // (tensors * _ELEMENT_BYTES)
    generator = torch.Generator().manual_seed(0)
    return {
        f"layers.{index}.weight": torch.randn(elements, generator=generator)
        for index in range(tensors)
    }


def tensor_bytes(obj: object) -> int:
    """The bytes of every distinct tensor storage in ``obj`` (nested dicts, lists, tuples)."""
    storages: dict[int, int] = {}

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            storage = tensor_storage(value)
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(obj)
    return sum(storages.values())


def adam_state_dict(width: int = 1024, depth: int = 4) -> dict:
    """``torch.optim.Adam(...).state_dict()`` after one step on an MLP of ``depth`` square
    ``width`` x ``width`` layers: two moment tensors per parameter plus the step counters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(depth)))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(8, width)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()
