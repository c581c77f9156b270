"""Save/load speed of torch (and safetensors), side by side with the machine's limits.

Every figure sets ``extra_info`` for :mod:`benchmarks.report`: the tensor bytes moved, the
limit it is compared with, the bytes written. Rounds are explicit and fewer for big sizes so
that the whole suite runs in a few minutes on a 2-core machine.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from benchmarks import operations
from benchmarks.payloads import (
    SIZES,
    adam_state_dict,
    size_label,
    state_dict,
    tensor_bytes,
)
from harness.capabilities import probe

MEMORY, FILE_WRITE, FILE_READ = "memory copy", "file write", "file read"

# Rounds per size: enough for a stable median, few enough for ~5 minutes in all.
_ROUNDS = {SIZES[0]: 200, SIZES[1]: 50, SIZES[2]: 10, SIZES[3]: 3}
# Per-tensor overhead: the 16 MiB state dict as one tensor or as this many 4 KiB tensors.
_OVERHEAD_SIZE, _MANY_TENSORS = 16 * 2**20, 4096

sizes = pytest.mark.parametrize("size", SIZES, ids=size_label)
weights_only_modes = pytest.mark.parametrize(
    "weights_only", [True, False], ids=["weights_only", "full_unpickler"]
)


def _measure(benchmark, function, *args, rounds: int, info: dict, **kwargs):
    benchmark.extra_info.update(info)
    return benchmark.pedantic(
        function, args=args, kwargs=kwargs, rounds=rounds, warmup_rounds=1, iterations=1
    )


@functools.cache
def _payload(size: int, tensors: int = 1) -> dict[str, torch.Tensor]:
    return state_dict(size, tensors)


@functools.cache
def _optimizer_state() -> dict:
    return adam_state_dict()


@pytest.fixture(scope="session")
def directory(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def saved(directory):
    """The path of ``obj`` saved with ``torch.save``, written once per key."""
    paths: dict[str, str] = {}

    def path_of(key: str, obj) -> str:
        if key not in paths:
            paths[key] = os.path.join(directory, f"saved-{key}.pt")
            torch.save(obj, paths[key])
        return paths[key]

    return path_of


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


# The machine's limits for the same bytes.


def _limit_memory_copy(benchmark, size: int, rounds: int) -> None:
    source = torch.randn(size // 4).numpy()
    destination = source.copy()
    info = {"bytes": size, "measures": MEMORY}
    _measure(benchmark, operations.memory_copy, source, destination, rounds=rounds, info=info)


@sizes
def test_limit_memory_copy(benchmark, size):
    _limit_memory_copy(benchmark, size, _ROUNDS[size])


@sizes
def test_limit_file_write(benchmark, size, directory):
    data = memoryview(torch.randn(size // 4).numpy()).cast("B")
    path = os.path.join(directory, "raw.bin")
    info = {"bytes": size, "measures": FILE_WRITE}
    _measure(benchmark, operations.raw_write, data, path, rounds=_ROUNDS[size], info=info)


@sizes
def test_limit_file_read(benchmark, size, directory):
    path = os.path.join(directory, f"raw-{size}.bin")
    operations.raw_write(memoryview(torch.randn(size // 4).numpy()).cast("B"), path)
    into = bytearray(size)
    info = {"bytes": size, "measures": FILE_READ}
    _measure(benchmark, operations.raw_read, path, into, rounds=_ROUNDS[size], info=info)


# torch.save and torch.load


@sizes
def test_torch_save_file(benchmark, size, directory):
    path = os.path.join(directory, "save.pt")
    info = {"bytes": size, "limit": FILE_WRITE}
    _measure(benchmark, operations.save_file, _payload(size), path, rounds=_ROUNDS[size], info=info)
    benchmark.extra_info["file_bytes"] = os.path.getsize(path)


@sizes
def test_torch_save_buffer(benchmark, size):
    info = {"bytes": size, "limit": MEMORY}
    buffer = _measure(
        benchmark, operations.save_buffer, _payload(size), rounds=_ROUNDS[size], info=info
    )
    benchmark.extra_info["file_bytes"] = buffer.getbuffer().nbytes


@sizes
@weights_only_modes
def test_torch_load_file(benchmark, size, weights_only, saved):
    path = saved(size_label(size), _payload(size))
    info = {"bytes": size, "limit": FILE_READ, "file_bytes": os.path.getsize(path)}
    _measure(
        benchmark,
        operations.load_file,
        path,
        weights_only=weights_only,
        rounds=_ROUNDS[size],
        info=info,
    )


@sizes
@weights_only_modes
def test_torch_load_buffer(benchmark, size, weights_only, saved):
    data = _read_bytes(saved(size_label(size), _payload(size)))
    info = {"bytes": size, "limit": MEMORY, "file_bytes": len(data)}
    _measure(
        benchmark,
        operations.load_buffer,
        data,
        weights_only=weights_only,
        rounds=_ROUNDS[size],
        info=info,
    )


needs_mmap = pytest.mark.skipif(
    not probe().load_mmap, reason="torch.load has no mmap argument on this torch"
)


@needs_mmap
@sizes
def test_torch_load_mmap(benchmark, size, saved):
    """Lazy: maps the file, reads no tensor bytes."""
    path = saved(size_label(size), _payload(size))
    info = {"bytes": size, "limit": FILE_READ, "file_bytes": os.path.getsize(path)}
    _measure(benchmark, operations.load_file, path, mmap=True, rounds=_ROUNDS[size], info=info)


@needs_mmap
@sizes
def test_torch_load_mmap_and_read(benchmark, size, saved):
    path = saved(size_label(size), _payload(size))
    info = {"bytes": size, "limit": FILE_READ, "file_bytes": os.path.getsize(path)}
    _measure(benchmark, operations.load_mmap_and_read, path, rounds=_ROUNDS[size], info=info)


# Per-tensor overhead: the same bytes as many small tensors.


def test_many_tensors_save_buffer(benchmark):
    payload = _payload(_OVERHEAD_SIZE, _MANY_TENSORS)
    info = {"bytes": _OVERHEAD_SIZE, "limit": MEMORY, "tensors": _MANY_TENSORS}
    buffer = _measure(benchmark, operations.save_buffer, payload, rounds=10, info=info)
    benchmark.extra_info["file_bytes"] = buffer.getbuffer().nbytes


def test_many_tensors_load_buffer(benchmark, saved):
    payload = _payload(_OVERHEAD_SIZE, _MANY_TENSORS)
    data = _read_bytes(saved("many", payload))
    info = {
        "bytes": _OVERHEAD_SIZE,
        "limit": MEMORY,
        "tensors": _MANY_TENSORS,
        "file_bytes": len(data),
    }
    _measure(benchmark, operations.load_buffer, data, rounds=10, info=info)


# An optimizer state dict: Adam after one step on a 4-layer 1024-wide MLP (~48 MiB).


def test_limit_memory_copy_optimizer(benchmark):
    _limit_memory_copy(benchmark, tensor_bytes(_optimizer_state()), rounds=10)


def test_optimizer_save_buffer(benchmark):
    state = _optimizer_state()
    info = {"bytes": tensor_bytes(state), "limit": MEMORY}
    buffer = _measure(benchmark, operations.save_buffer, state, rounds=10, info=info)
    benchmark.extra_info["file_bytes"] = buffer.getbuffer().nbytes


def test_optimizer_load_buffer(benchmark, saved):
    state = _optimizer_state()
    data = _read_bytes(saved("adam", state))
    info = {"bytes": tensor_bytes(state), "limit": MEMORY, "file_bytes": len(data)}
    _measure(benchmark, operations.load_buffer, data, rounds=10, info=info)


# safetensors, for comparison (skipped when it is not installed).


@sizes
def test_safetensors_save_file(benchmark, size, directory):
    pytest.importorskip("safetensors")
    path = os.path.join(directory, "save.safetensors")
    info = {"bytes": size, "limit": FILE_WRITE}
    _measure(
        benchmark,
        operations.safetensors_save,
        _payload(size),
        path,
        rounds=_ROUNDS[size],
        info=info,
    )
    benchmark.extra_info["file_bytes"] = os.path.getsize(path)


@sizes
@pytest.mark.parametrize("read", [False, True], ids=["lazy", "and_read"])
def test_safetensors_load_file(benchmark, size, read, directory):
    """``load_file`` maps the file; ``and_read`` also reads every tensor once."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = os.path.join(directory, f"load-{size}.safetensors")
    if not os.path.exists(path):
        safetensors_torch.save_file(_payload(size), path)
    info = {"bytes": size, "limit": FILE_READ, "file_bytes": os.path.getsize(path)}
    load = operations.safetensors_load_and_read if read else operations.safetensors_load
    _measure(benchmark, load, path, rounds=_ROUNDS[size], info=info)
