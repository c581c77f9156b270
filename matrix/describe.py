"""Version-neutral descriptions of what a checkpoint holds.

A reader in one torch environment checks a file written in another without anything from
the writer's environment: the writer records :func:`describe` of what it saved, the reader
computes :func:`describe` of what it loaded, and :func:`first_difference` says where they
part. A description is plain JSON: the exact type of every container, floats by their bit
pattern, and for every tensor what :mod:`harness.compare`'s table compares: its kind as the
tag (``tensor``, ``sparse_coo``, ..., ``quantized``), its header (type, dtype, shape,
``requires_grad``, conjugate and negative bits, and per kind the device, stride, storage
offset, coalescing, qscheme, scale, zero point or axis) and its parts (the indices and
values of a sparse tensor, the integer representation and per-channel parameters of a
quantized one). A strided tensor's storage is described by its size, a SHA-256 of its
bytes (the whole storage, not only the elements the view reaches, since that is what
``torch.save`` writes) and which other tensors share it. An object met a second time (a
tensor or a dict, list, set or bytearray) also says where it was met first.

Within one environment, :func:`harness.assert_identical` compares live objects; this is
what crosses environments.
"""

from __future__ import annotations

import hashlib
import math
import struct
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from harness.capabilities import tensor_storage
from harness.compare import (
    IDENTITY_TRACKED,
    QUANTIZED_KINDS,
    TENSOR_ASPECTS,
    TENSOR_KINDS,
    dtype_name,
    short_repr,
    storage_bytes,
    storage_key,
    tensor_kind,
    type_name,
)

__all__ = ["describe", "first_difference"]

_SCALARS = (bool, int, str, type(None))
_TORCH_ENUMS = (torch.device, torch.layout, torch.memory_format, torch.qscheme)

# Where an object met a second time was met first: a key of a tensor's header, and the
# third element of a container's description, {_SAME_OBJECT: path}.
_SAME_OBJECT = "same_object_as"

# The keys of a tensor's header in the committed manifests, written before conjugate and
# negative bits and object identity were described. A header without _NEW_HEADER_MARK is one
# of those: first_difference does not compare the keys added since, the writer did not
# record them.
_FIRST_HEADER_KEYS = frozenset(
    {"type", "dtype", "shape", "requires_grad", "device", "stride", "storage_offset"}
    | {"storage", "coalesced", "qscheme", "scale", "zero_point", "axis"}
)
_ADDED_HEADER_KEYS = (
    frozenset(
        aspect.key
        for kind in (*TENSOR_KINDS.values(), *QUANTIZED_KINDS.values())
        for aspect in (*TENSOR_ASPECTS, *kind.aspects)
        if aspect.key
    )
    | {_SAME_OBJECT}
) - _FIRST_HEADER_KEYS
_NEW_HEADER_MARK = "conj"

_PYTHON_NAN = struct.pack(">d", float("nan"))


def _plain_float(value: float) -> str:
    """``float.hex``, which keeps every bit but a NaN's: a NaN other than Python's own
    (``float("nan")``, which ``float.hex`` writes ``nan``) by its bit pattern."""
    bits = struct.pack(">d", value)
    if math.isnan(value) and bits != _PYTHON_NAN:
        return f"nan(0x{bits.hex()})"
    return value.hex()


def _plain_scalar(value: Any) -> Any:
    return _plain_float(value) if isinstance(value, float) else value


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key_label(described_key: Any) -> str:
    if isinstance(described_key, list) and len(described_key) == 2:
        return repr(described_key[1])
    return repr(described_key)


class _Describer:
    """One description: remembers where each object was first met and numbers storages in
    the order they are first met."""

    def __init__(self) -> None:
        self.storages: dict[tuple[str, int, int], int] = {}
        self.first_met: dict[int, str] = {}
        self.open: set[int] = set()  # containers being described: a cycle stops at them
        # Everything described stays alive until the description is done: the parts of a
        # quantized tensor (int_repr(), q_per_channel_scales()) are temporaries, and a freed
        # one's address, reused by the next, would read as storage sharing.
        self.described: list[Any] = []

    def _met_before(self, value: Any, path: str) -> str | None:
        """Where ``value`` was first met, if it was; else remember ``path`` for it."""
        first = self.first_met.get(id(value))
        if first is None:
            self.described.append(value)
            self.first_met[id(value)] = path or "the value"
        return first

    def _storage(self, tensor: torch.Tensor) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated on 2.x
            nbytes = tensor_storage(tensor).nbytes()
            if tensor.device.type == "meta":  # no contents, no address
                return {"nbytes": nbytes}
            key = storage_key(tensor)
            contents = storage_bytes(tensor).numpy().tobytes()
        self.described.append(tensor)
        description = {"nbytes": nbytes, "sha256": _sha256(contents)}
        if nbytes:
            description["shared_as"] = self.storages.setdefault(key, len(self.storages))
        return description

    def tensor(self, tensor: torch.Tensor, path: str | None) -> list:
        """A tensor's description; ``path`` is None for a part of another tensor (a new
        object at every call)."""
        kind = tensor_kind(tensor)
        if getattr(tensor, "is_nested", False) or kind is None:
            what = f"qscheme {tensor.qscheme()}" if tensor.is_quantized else tensor.layout
            raise TypeError(f"describe does not know tensors of {what}; describe their parts")
        header: dict[str, Any] = {"type": type_name(tensor)}
        for aspect in (*TENSOR_ASPECTS, *kind.aspects):
            if aspect.key is not None and aspect.key not in kind.implied:
                header[aspect.key] = aspect.plain(aspect.read(tensor))
        if path is not None:
            first = self._met_before(tensor, path)
            if first is not None:
                header[_SAME_OBJECT] = first
        parts = {}
        for entry in kind.described_parts():
            value = entry.read(tensor)
            if isinstance(value, torch.Tensor):
                parts[entry.key] = self.tensor(value, None)
            else:
                header[entry.key] = _plain_scalar(value)
        if kind.strided:
            header["storage"] = self._storage(tensor)
        return [kind.tag, header, parts] if kind.parts else [kind.tag, header]

    def value(self, value: Any, path: str) -> Any:
        """The description of ``value``, met at ``path`` (spelled as in
        :func:`first_difference`)."""
        if isinstance(value, torch.Tensor):
            return self.tensor(value, path)
        if not isinstance(value, IDENTITY_TRACKED):
            return self._untracked(value, path)
        first = self._met_before(value, path)
        if id(value) in self.open:  # the value contains itself
            return [type_name(value), None, {_SAME_OBJECT: first}]
        self.open.add(id(value))
        description = self._untracked(value, path)
        self.open.discard(id(value))
        return description if first is None else [*description, {_SAME_OBJECT: first}]

    def _untracked(self, value: Any, path: str) -> list:
        """The description of ``value`` but for its identity."""
        if isinstance(value, Mapping):
            items = []
            for key, item in value.items():
                described = self.value(key, f"{path}.key")
                items.append([described, self.value(item, f"{path}[{_key_label(described)}]")])
            return [type_name(value), items]
        if isinstance(value, torch.Size):
            return ["torch.Size", list(value)]
        if isinstance(value, list | tuple | set | frozenset):
            items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
            described = [self.value(item, f"{path}[{index}]") for index, item in enumerate(items)]
            return [type_name(value), described]
        if isinstance(value, float):
            return [type_name(value), _plain_float(value)]
        if isinstance(value, complex):
            return [type_name(value), [_plain_float(value.real), _plain_float(value.imag)]]
        if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
            digest = _sha256(value.tobytes()) if not value.dtype.hasobject else None
            return [
                type_name(value),
                {"dtype": str(value.dtype), "shape": list(value.shape), "sha256": digest},
            ]
        if isinstance(value, _SCALARS):
            return [type_name(value), value]
        if isinstance(value, torch.dtype):
            return ["torch.dtype", dtype_name(value)]
        if isinstance(value, _TORCH_ENUMS):
            return [type_name(value), str(value)]
        if isinstance(value, bytes | bytearray):
            return [type_name(value), _sha256(value)]
        if isinstance(value, torch.nn.Module):
            state = self.value(value.state_dict(), f"{path}.state_dict")
            return [type_name(value), {"training": value.training, "state_dict": state}]
        return [type_name(value), None]


def describe(value: Any) -> Any:
    """A JSON-able description of ``value``, for comparing it with a value in another torch
    environment through :func:`first_difference`.

    Two descriptions are equal exactly when :func:`harness.assert_identical` finds the
    values identical, for values made of tensors (strided, sparse and quantized of every
    layout and qscheme ``harness.compare``'s table knows), dicts and other mappings, lists,
    tuples, floats, complex numbers, numpy arrays and scalars, ints, bools, strings, None,
    bytes, bytearrays, ``torch.Size``, dtypes, devices, layouts, memory formats and
    qschemes. Elsewhere they part:

    - an object of another class is described by its qualified class name only, where
      ``assert_identical`` compares it with ``==``; a module by its class, train/eval mode
      and ``state_dict``, where ``assert_identical`` finds two modules identical only when
      they are the same object;
    - a set by its elements in ``repr`` order, where ``assert_identical`` compares sets with
      ``==`` (``{0.0}`` and ``{-0.0}`` are equal sets);
    - a numpy array of Python objects by its dtype and shape only.

    Raises ``TypeError`` for a nested tensor and a tensor of a layout or qscheme that table
    does not know.
    """
    return _Describer().value(value, "")


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


def _identity(description: Any) -> tuple[str | None, Any]:
    """Where a described container was first met (None if this is its first description),
    and its description without that."""
    if (
        _is_tagged(description)
        and len(description) == 3
        and isinstance(description[2], dict)
        and list(description[2]) == [_SAME_OBJECT]
    ):
        return description[2][_SAME_OBJECT], description[:2]
    return None, description


def _walk(expected: Any, actual: Any, path: str) -> str | None:
    where = path or "the value"
    expected_first, expected = _identity(expected)
    actual_first, actual = _identity(actual)
    # A description that does not say where a container was met first may have been written
    # before descriptions said so: only a lost identity is a difference.
    if expected_first is not None and expected_first != actual_first:
        got = "another object" if actual_first is None else f"the same object as {actual_first}"
        return f"{where}: expected the same object as {expected_first}, got {got}"
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
                if key in _ADDED_HEADER_KEYS and _NEW_HEADER_MARK not in expected:
                    continue  # a header written before this aspect was described
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
    ``expected`` may come from a manifest written before descriptions had every aspect they
    have now; what it did not record is not compared: the keys of a tensor's header added
    since (conjugate and negative bits, where a tensor met twice was met first) in a header
    without them, and where a container met twice was met first, when ``expected`` does not
    say. So between two descriptions made by :func:`describe` it is None exactly when they
    are equal, but where ``actual`` alone has a container a second time.
    """
    return _walk(expected, actual, "")
