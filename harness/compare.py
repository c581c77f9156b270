"""The identity comparator: is ``actual`` exactly what ``expected`` was?

Every invariant of the harness judges "nothing was lost" through :func:`assert_identical`.
One walker visits both objects side by side and records the path to every value; a small
handler per kind of value (tensor, mapping, sequence, float, numpy array, anything else)
decides whether the two are identical; one function builds every failure message, so each
names the path of the first difference, the aspect that differs and the evidence.

"Identical" is strict on purpose: tensors must agree in every piece of metadata and bit for
bit in content (NaN payloads, the sign of zero and subnormals count), containers in exact
type and key order, and the sharing structure (which entries are the same object, which
tensors share storage) must be the same on both sides.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.capabilities import tensor_storage

__all__ = ["assert_identical"]

# How many mismatched elements a message quotes before it summarises the rest.
_QUOTED_ELEMENTS = 3


def assert_identical(expected: Any, actual: Any, *, name: str = "obj") -> None:
    """Raise ``AssertionError`` unless ``actual`` is identical to ``expected``.

    Returns None when the two objects are identical. Otherwise the message names the path of
    the first difference (e.g. ``obj['optimizer_state_dict']['state'][3]['exp_avg']``), the
    aspect that differs (dtype, shape, stride, contents, key order, aliasing, ...) and both
    values.

    Args:
        expected: the object as it was before saving.
        actual: the object as it came back.
        name: how the root is called in messages.
    """
    walk = _Walk()
    walk.compare(expected, actual, name)
    walk.check_storage_sharing()


def _fail(path: str, aspect: str, detail: str) -> AssertionError:
    """The one place failure messages are built."""
    return AssertionError(f"{path}: {aspect} differs: {detail}")


def _mismatch(path: str, aspect: str, expected: Any, actual: Any) -> AssertionError:
    return _fail(path, aspect, f"expected {expected}, actual {actual}")


@dataclass
class _Walk:
    """State of one comparison: what has been seen, to check sharing and stop at cycles."""

    # id(object in expected) -> (path, the object in actual at that path)
    seen_expected: dict[int, tuple[str, Any]] = field(default_factory=dict)
    # id(object in actual) -> (path, the object in expected at that path)
    seen_actual: dict[int, tuple[str, Any]] = field(default_factory=dict)
    # (path, expected tensor, actual tensor) for every strided tensor with storage
    storage_users: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # keep visited objects alive so that their ids stay unique during the walk
    keep_alive: list[Any] = field(default_factory=list)

    def compare(self, expected: Any, actual: Any, path: str) -> None:
        if type(expected) is not type(actual):
            raise _mismatch(path, "type", type_name(expected), type_name(actual))
        if self._seen_before(expected, actual, path):
            return
        if isinstance(expected, torch.Tensor):
            self._compare_tensors(expected, actual, path)
        elif isinstance(expected, Mapping):
            self._compare_mappings(expected, actual, path)
        elif isinstance(expected, list | tuple):
            self._compare_sequences(expected, actual, path)
        elif isinstance(expected, float):
            _compare_floats(expected, actual, path)
        elif isinstance(expected, complex):
            _compare_floats(expected.real, actual.real, f"{path}.real")
            _compare_floats(expected.imag, actual.imag, f"{path}.imag")
        elif type(expected).__module__ == "numpy":  # arrays and numpy scalars
            _compare_numpy_values(expected, actual, path)
        else:
            _compare_by_equality(expected, actual, path)

    def _seen_before(self, expected: Any, actual: Any, path: str) -> bool:
        """Check that both sides share objects alike; True when this pair was compared already.

        Only objects whose identity pickling preserves and users can observe are tracked:
        tensors and mutable containers. Immutable values (numbers, strings, tuples) may be
        interned or copied freely.
        """
        if not isinstance(expected, torch.Tensor | dict | list | set | bytearray):
            return False
        earlier = self.seen_expected.get(id(expected))
        earlier_actual = self.seen_actual.get(id(actual))
        if earlier is None and earlier_actual is None:
            self.seen_expected[id(expected)] = (path, actual)
            self.seen_actual[id(actual)] = (path, expected)
            self.keep_alive.append((expected, actual))
            return False
        if earlier is not None and earlier[1] is actual:
            return True
        if earlier is not None:
            raise _fail(
                path,
                "aliasing",
                f"in expected it is the same object as {earlier[0]}, in actual it is not",
            )
        raise _fail(
            path,
            "aliasing",
            f"in actual it is the same object as {earlier_actual[0]}, in expected it is not",
        )

    def _compare_mappings(self, expected: Mapping, actual: Mapping, path: str) -> None:
        expected_keys, actual_keys = list(expected), list(actual)
        if expected_keys != actual_keys:
            missing = [k for k in expected_keys if k not in actual]
            extra = [k for k in actual_keys if k not in expected]
            if missing or extra:
                detail = f"missing keys {missing!r}, unexpected keys {extra!r}"
                raise _fail(path, "keys", detail)
            raise _mismatch(path, "key order", repr(expected_keys), repr(actual_keys))
        for key in expected_keys:
            self.compare(expected[key], actual[key], f"{path}[{key!r}]")

    def _compare_sequences(self, expected, actual, path: str) -> None:
        if len(expected) != len(actual):
            raise _mismatch(path, "length", len(expected), len(actual))
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            self.compare(left, right, f"{path}[{index}]")

    def _compare_tensors(self, expected: torch.Tensor, actual: torch.Tensor, path: str) -> None:
        if getattr(expected, "is_nested", False):
            raise TypeError(
                f"{path}: assert_identical does not compare nested tensors; compare "
                "expected.unbind() with actual.unbind() instead"
            )
        for aspect, read in _TENSOR_METADATA:
            left, right = read(expected), read(actual)
            if left != right:
                raise _mismatch(path, aspect, left, right)
        layout = expected.layout
        if expected.is_quantized:
            self._compare_quantized(expected, actual, path)
        elif layout == torch.strided:
            self._compare_strided(expected, actual, path)
        elif layout == torch.sparse_coo:
            coalesced = expected.is_coalesced(), actual.is_coalesced()
            if coalesced[0] != coalesced[1]:
                raise _mismatch(path, "is_coalesced", coalesced[0], coalesced[1])
            self.compare(expected._indices(), actual._indices(), f"{path}._indices()")
            self.compare(expected._values(), actual._values(), f"{path}._values()")
        elif layout in _COMPRESSED_PARTS:
            for part in _COMPRESSED_PARTS[layout]:
                self.compare(getattr(expected, part)(), getattr(actual, part)(), f"{path}.{part}()")
        else:
            raise TypeError(
                f"{path}: assert_identical does not know how to compare tensors of layout "
                f"{layout}; compare their components yourself"
            )

    def _compare_strided(self, expected: torch.Tensor, actual: torch.Tensor, path: str) -> None:
        for aspect, read in _STRIDED_METADATA:
            left, right = read(expected), read(actual)
            if left != right:
                raise _mismatch(path, aspect, left, right)
        if expected.device.type == "meta":
            return  # meta tensors have no contents
        _compare_bits(expected, actual, path)
        if tensor_storage(expected).nbytes() > 0:
            self.storage_users.append((path, expected, actual))

    def _compare_quantized(self, expected: torch.Tensor, actual: torch.Tensor, path: str) -> None:
        scheme = expected.qscheme()
        if scheme != actual.qscheme():
            raise _mismatch(path, "qscheme", scheme, actual.qscheme())
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            _compare_floats(expected.q_scale(), actual.q_scale(), f"{path}.q_scale()")
            self.compare(expected.q_zero_point(), actual.q_zero_point(), f"{path}.q_zero_point()")
        else:
            axis = expected.q_per_channel_axis(), actual.q_per_channel_axis()
            if axis[0] != axis[1]:
                raise _mismatch(path, "q_per_channel_axis", axis[0], axis[1])
            for part in ("q_per_channel_scales", "q_per_channel_zero_points"):
                self.compare(getattr(expected, part)(), getattr(actual, part)(), f"{path}.{part}()")
        self.compare(expected.int_repr(), actual.int_repr(), f"{path}.int_repr()")

    def check_storage_sharing(self) -> None:
        """Tensors that share storage in expected must share it in actual, and only those."""
        expected_groups = _storage_groups(expected for _, expected, _ in self.storage_users)
        actual_groups = _storage_groups(actual for _, _, actual in self.storage_users)
        for index, (left, right) in enumerate(zip(expected_groups, actual_groups, strict=True)):
            if left == right:
                continue
            path = self.storage_users[index][0]
            if left != index:
                other = self.storage_users[left][0]
                detail = f"in expected it shares storage with {other}, in actual it does not"
            else:
                other = self.storage_users[right][0]
                detail = f"in actual it shares storage with {other}, in expected it does not"
            raise _fail(path, "storage sharing", detail)


def _storage_groups(tensors) -> list[int]:
    """For each tensor, the index of the first tensor that uses the same storage."""
    first_user: dict[tuple[str, int], int] = {}
    return [
        first_user.setdefault((str(t.device), tensor_storage(t).data_ptr()), index)
        for index, t in enumerate(tensors)
    ]


_TENSOR_METADATA = (
    ("layout", lambda t: t.layout),
    ("dtype", lambda t: t.dtype),
    ("device", lambda t: t.device),
    ("shape", lambda t: tuple(t.shape)),
    ("requires_grad", lambda t: t.requires_grad),
    ("is_conj", lambda t: t.is_conj()),
    ("is_neg", lambda t: t.is_neg()),
)

_STRIDED_METADATA = (
    ("stride", lambda t: t.stride()),
    ("storage_offset", lambda t: t.storage_offset()),
    ("storage size in bytes", lambda t: tensor_storage(t).nbytes()),
)

_COMPRESSED_PARTS = {
    torch.sparse_csr: ("crow_indices", "col_indices", "values"),
    torch.sparse_csc: ("ccol_indices", "row_indices", "values"),
    torch.sparse_bsr: ("crow_indices", "col_indices", "values"),
    torch.sparse_bsc: ("ccol_indices", "row_indices", "values"),
}


def element_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as rows of raw bytes: shape (numel, itemsize), dtype uint8."""
    # clone, not contiguous(): a tensor whose size-1 dimensions have odd strides counts as
    # contiguous, and viewing it as bytes would fail.
    dense = tensor.detach().resolve_conj().resolve_neg().cpu()
    flat = dense.clone(memory_format=torch.contiguous_format).reshape(-1)
    itemsize = flat.element_size()
    return flat.view(torch.uint8).reshape(-1, itemsize)


def _compare_bits(expected: torch.Tensor, actual: torch.Tensor, path: str) -> None:
    left, right = element_bytes(expected), element_bytes(actual)
    differs = (left != right).any(dim=1)
    count = int(differs.sum())
    if count == 0:
        return
    total = differs.numel()
    positions = differs.nonzero().reshape(-1)[:_QUOTED_ELEMENTS].tolist()
    shape = tuple(expected.shape)
    quoted = "; ".join(
        f"at index {_unravel(position, shape)}: expected "
        f"{_describe_element(expected, left, position)}, actual "
        f"{_describe_element(actual, right, position)}"
        for position in positions
    )
    more = f"; and {count - len(positions)} more" if count > len(positions) else ""
    share = f"{count} / {total} elements ({100.0 * count / total:.1f}%)"
    detail = f"{share} differ bit for bit; {quoted}{more}"
    raise _fail(path, "contents", detail)


def _unravel(position: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    index = []
    for side in reversed(shape):
        index.append(position % side)
        position //= side
    return tuple(reversed(index))


def _describe_element(tensor: torch.Tensor, byte_rows: torch.Tensor, position: int) -> str:
    """An element (row ``position`` of its :func:`element_bytes`) as its bit pattern (hex,
    most significant byte first) and its value."""
    raw = bytes(byte_rows[position].tolist())
    bits = "0x" + raw[::-1].hex()
    try:
        value = tensor.detach().cpu().reshape(-1)[position].item()
    except (RuntimeError, TypeError):  # e.g. dtypes without a Python scalar conversion
        return bits
    return f"{bits} ({value!r})"


def _float_bits(value: float) -> str:
    return "0x" + struct.pack(">d", value).hex()


def _compare_floats(expected: float, actual: float, path: str) -> None:
    if struct.pack("<d", expected) != struct.pack("<d", actual):
        left = f"{expected!r} ({_float_bits(expected)})"
        raise _mismatch(path, "value", left, f"{actual!r} ({_float_bits(actual)})")


def _compare_numpy_values(expected, actual, path: str) -> None:
    if not hasattr(expected, "dtype"):
        _compare_by_equality(expected, actual, path)
        return
    # Strides are not compared: pickle stores every numpy array C-contiguous.
    for aspect in ("dtype", "shape"):
        left, right = getattr(expected, aspect), getattr(actual, aspect)
        if left != right:
            raise _mismatch(path, aspect, left, right)
    if expected.dtype.hasobject:
        if expected.tolist() != actual.tolist():
            raise _mismatch(path, "contents", short_repr(expected), short_repr(actual))
    elif expected.tobytes() != actual.tobytes():
        raise _mismatch(path, "contents", short_repr(expected), short_repr(actual))


def _compare_by_equality(expected: Any, actual: Any, path: str) -> None:
    equal = expected == actual
    if not isinstance(equal, bool):
        raise TypeError(
            f"{path}: {type_name(expected)}.__eq__ returned {type_name(equal)}, not a bool; "
            "assert_identical cannot compare such values"
        )
    if not equal:
        raise _mismatch(path, "value", short_repr(expected), short_repr(actual))


def type_name(value: Any) -> str:
    """The qualified name of ``value``'s class; builtins by their bare name."""
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
