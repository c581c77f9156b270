"""Version-neutral descriptions of what a checkpoint holds.

A reader in one torch environment checks a file written in another without anything from
the writer's environment: the writer records :func:`describe` of what it saved, the reader
computes :func:`describe` of what it loaded, and :func:`first_difference` says where they
part. A description is plain JSON: the exact type of every container, floats by their bit
pattern (``float.hex``), and for every tensor its dtype name, shape, stride, storage offset,
``requires_grad``, which other tensors share its storage, and a SHA-256 of the storage's
bytes (the whole storage, not only the elements the view reaches, since that is what
``torch.save`` writes). Sparse and quantized tensors are described by their parts.

Within one environment, :func:`harness.assert_identical` compares live objects; this is
what crosses environments.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import torch

from harness.capabilities import tensor_storage
from harness.compare import element_bytes, short_repr, type_name

__all__ = ["describe", "first_difference"]

_SCALARS = (bool, int, str, type(None))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class _Describer:
    """One description: numbers storages in the order they are first met."""

    def __init__(self) -> None:
        self.storages: dict[tuple[int, int], int] = {}
        # Every tensor described stays alive until the description is done: the parts of a
        # quantized tensor (int_repr(), q_per_channel_scales()) are temporaries, and a freed
        # one's address, reused by the next, would read as storage sharing.
        self.described: list[torch.Tensor] = []

    def _storage(self, tensor: torch.Tensor) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated on 2.x
            storage = tensor_storage(tensor)
            nbytes = storage.nbytes()
            key = (storage.data_ptr(), nbytes)
        self.described.append(tensor)
        whole = tensor.detach().as_strided((nbytes // tensor.element_size(),), (1,), 0)
        description = {
            "nbytes": nbytes,
            "sha256": hashlib.sha256(element_bytes(whole).numpy().tobytes()).hexdigest(),
        }
        if nbytes:
            description["shared_as"] = self.storages.setdefault(key, len(self.storages))
        return description

    def tensor(self, tensor: torch.Tensor) -> list:
        header = {
            "type": type_name(tensor),
            "dtype": _dtype_name(tensor.dtype),
            "shape": list(tensor.shape),
            "requires_grad": tensor.requires_grad,
        }
        if tensor.is_sparse:
            header["coalesced"] = tensor.is_coalesced()
            parts = {"indices": tensor._indices(), "values": tensor._values()}
            return ["sparse_coo", header, self._parts(parts)]
        if tensor.layout == torch.sparse_csr:
            parts = {
                "crow_indices": tensor.crow_indices(),
                "col_indices": tensor.col_indices(),
                "values": tensor.values(),
            }
            return ["sparse_csr", header, self._parts(parts)]
        if tensor.is_quantized:
            header["qscheme"] = str(tensor.qscheme())
            if tensor.qscheme() == torch.per_tensor_affine:
                header["scale"] = float(tensor.q_scale()).hex()
                header["zero_point"] = tensor.q_zero_point()
                parts = {"int_repr": tensor.int_repr()}
            else:
                header["axis"] = tensor.q_per_channel_axis()
                parts = {
                    "int_repr": tensor.int_repr(),
                    "scales": tensor.q_per_channel_scales(),
                    "zero_points": tensor.q_per_channel_zero_points(),
                }
            return ["quantized", header, self._parts(parts)]
        header["device"] = str(tensor.device)
        header["stride"] = list(tensor.stride())
        header["storage_offset"] = tensor.storage_offset()
        header["storage"] = self._storage(tensor)
        return ["tensor", header]

    def _parts(self, parts: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {name: self.value(part) for name, part in parts.items()}

    def value(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if isinstance(value, float):
            return ["float", value.hex()]
        if isinstance(value, _SCALARS):
            return [type_name(value), value]
        if isinstance(value, torch.dtype):
            return ["torch.dtype", _dtype_name(value)]
        if isinstance(value, torch.device):
            return ["torch.device", str(value)]
        if isinstance(value, torch.Size):
            return ["torch.Size", list(value)]
        if isinstance(value, bytes):
            return ["bytes", hashlib.sha256(value).hexdigest()]
        if isinstance(value, dict):
            items = [[self.value(key), self.value(item)] for key, item in value.items()]
            return [type_name(value), items]
        if isinstance(value, list | tuple | set | frozenset):
            items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
            return [type_name(value), [self.value(item) for item in items]]
        if isinstance(value, np.ndarray):
            digest = hashlib.sha256(value.tobytes()).hexdigest() if value.dtype != object else None
            return [
                "numpy.ndarray",
                {"dtype": str(value.dtype), "shape": list(value.shape), "sha256": digest},
            ]
        if isinstance(value, torch.nn.Module):
            return [
                type_name(value),
                {"training": value.training, "state_dict": self.value(value.state_dict())},
            ]
        return [type_name(value), None]


def describe(value: Any) -> Any:
    """A JSON-able description of ``value`` that is equal, in any torch version, exactly when
    the value is identical: same types, same bits, same strides, same storage sharing.

    Objects of other classes are described by their qualified class name only (a module by
    its class, train/eval mode and ``state_dict``).
    """
    return _Describer().value(value)


def _key_label(described_key: Any) -> str:
    if isinstance(described_key, list) and len(described_key) == 2:
        return repr(described_key[1])
    return repr(described_key)


def _is_mapping(description: Any) -> bool:
    """Whether ``description`` is ``[type name, [[key, value], ...]]``: a described dict."""
    return (
        isinstance(description, list)
        and len(description) == 2
        and isinstance(description[0], str)
        and isinstance(description[1], list)
        and all(isinstance(item, list) and len(item) == 2 for item in description[1])
        and (description[0] == "dict" or description[0].endswith("Dict"))
    )


def _is_tagged(description: Any) -> bool:
    """Whether ``description`` is ``[type name, payload, ...]``."""
    return (
        isinstance(description, list) and len(description) >= 2 and isinstance(description[0], str)
    )


def _walk(expected: Any, actual: Any, path: str) -> str | None:
    where = path or "the value"
    if type(expected) is not type(actual):
        return f"{where}: expected {short_repr(expected, 80)}, got {short_repr(actual, 80)}"
    if _is_mapping(expected) and _is_mapping(actual):
        if expected[0] != actual[0]:
            return f"{where}: expected a {expected[0]}, got a {actual[0]}"
        expected_keys = [key for key, _ in expected[1]]
        actual_keys = [key for key, _ in actual[1]]
        for key, value in expected[1]:
            label = f"{path}[{_key_label(key)}]"
            if key not in actual_keys:
                return f"{label}: missing"
            found = _walk(value, actual[1][actual_keys.index(key)][1], label)
            if found:
                return found
        for key in actual_keys:
            if key not in expected_keys:
                return f"{path}[{_key_label(key)}]: unexpected"
        if expected_keys != actual_keys:
            return f"{where}: same keys in another order"
        return None
    if isinstance(expected, dict):
        for key in [*expected, *(key for key in actual if key not in expected)]:
            if key not in actual:
                return f"{path}.{key}: missing"
            if key not in expected:
                return f"{path}.{key}: unexpected"
            found = _walk(expected[key], actual[key], f"{path}.{key}")
            if found:
                return found
        return None
    if _is_tagged(expected) and _is_tagged(actual):
        if expected[0] != actual[0]:
            return f"{where}: expected a {expected[0]}, got a {actual[0]}"
        return (
            _walk(expected[1:], actual[1:], path)
            if len(expected) > 2
            else _walk(expected[1], actual[1], path)
        )
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return f"{where}: expected {len(expected)} items, got {len(actual)}"
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found = _walk(left, right, f"{path}[{index}]")
            if found:
                return found
        return None
    if expected != actual:
        return f"{where}: expected {short_repr(expected, 80)}, got {short_repr(actual, 80)}"
    return None


def first_difference(expected: Any, actual: Any) -> str | None:
    """Where two descriptions first differ, as ``path: expected ..., got ...``; None if equal.

    Paths name dict entries by their keys (``['model_state_dict']['weight'].dtype``).
    """
    return _walk(expected, actual, "")
