"""The identity comparator: is ``actual`` exactly what ``expected`` was?

Every invariant of the harness judges "nothing was lost" through :func:`assert_identical`.
One walker visits both objects side by side and records the path to every value; a small
handler per kind of value (tensor, mapping, sequence, float, numpy array, anything else)
decides whether the two are identical. The first difference found is data, a
:class:`Difference` (path, aspect, expected, actual, evidence), and
:meth:`Difference.message` is the one place it is put into words.

"Identical" is strict on purpose: tensors must agree in every piece of metadata and bit for
bit in content (NaN payloads, the sign of zero and subnormals count), also in the bytes of
their storage that no element reaches (``torch.save`` writes the whole storage), containers
in exact type and key order, and the sharing structure (which entries are the same object,
which tensors share storage) must be the same on both sides.

What is compared for a tensor is one table, kept here: :data:`TENSOR_ASPECTS` for every
tensor, then the :class:`TensorKind` of its layout (or, for a quantized tensor, of its
qscheme) with its own aspects and parts. :mod:`matrix.describe` derives its version-neutral
descriptions from the same table, so adding an aspect here adds it to both.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.capabilities import tensor_storage

__all__ = [
    "IDENTITY_TRACKED",
    "QUANTIZED_KINDS",
    "STRIDED",
    "TENSOR_ASPECTS",
    "TENSOR_KINDS",
    "Difference",
    "NotIdentical",
    "TensorAspect",
    "TensorKind",
    "TensorPart",
    "assert_identical",
    "computed",
    "dtype_name",
    "element_bytes",
    "find_difference",
    "short_repr",
    "storage_bytes",
    "storage_key",
    "tensor_kind",
    "type_name",
]

# How many mismatched elements a message quotes before it summarises the rest.
_QUOTED_ELEMENTS = 3

# The objects whose identity is compared: each must be the same object wherever the other
# side's is (pickling preserves it and users can observe it). Immutable values (numbers,
# strings, tuples) may be interned or copied freely.
IDENTITY_TRACKED = (torch.Tensor, dict, list, set, bytearray)


@dataclass(frozen=True)
class Difference:
    """The first way in which ``actual`` is not identical to ``expected``.

    Attributes:
        path: where, from the root, e.g. ``obj['optimizer_state_dict']['state'][3]['exp_avg']``.
        aspect: what differs: ``type``, ``dtype``, ``stride``, ``contents``, ``key order``,
            ``aliasing``, ``storage sharing``, ... (:data:`TENSOR_ASPECTS` names the tensor ones).
        expected: what ``expected`` has for that aspect (for ``contents``, its first differing
            element; for ``aliasing`` and ``storage sharing``, the path of the object it is
            the same as or shares storage with, or None).
        actual: the same for ``actual``.
        detail: the evidence, where ``expected ..., actual ...`` would not say it all.
    """

    path: str
    aspect: str
    expected: Any = None
    actual: Any = None
    detail: str | None = None

    @property
    def headline(self) -> str:
        """``<path>: <aspect> differs``: where and what, without the evidence."""
        return f"{self.path}: {self.aspect} differs"

    def message(self) -> str:
        """The difference in words: ``<path>: <aspect> differs: <evidence>``."""
        detail = self.detail
        if detail is None:
            detail = f"expected {self.expected}, actual {self.actual}"
        return f"{self.headline}: {detail}"


class NotIdentical(AssertionError):
    """Raised by :func:`assert_identical`; ``difference`` is the first :class:`Difference`."""

    def __init__(self, difference: Difference) -> None:
        super().__init__(difference.message())
        self.difference = difference

    def __reduce__(self):
        return type(self), (self.difference,)


def assert_identical(expected: Any, actual: Any, *, name: str = "obj") -> None:
    """Raise :class:`NotIdentical` (an ``AssertionError``) unless ``actual`` is identical to
    ``expected``.

    Returns None when the two objects are identical. Otherwise the message names the path of
    the first difference (e.g. ``obj['optimizer_state_dict']['state'][3]['exp_avg']``), the
    aspect that differs (dtype, shape, stride, contents, key order, aliasing, ...) and both
    values; the error's ``difference`` holds the same as a :class:`Difference`.

    Args:
        expected: the object as it was before saving.
        actual: the object as it came back.
        name: how the root is called in messages.
    """
    difference = find_difference(expected, actual, name=name)
    if difference is not None:
        raise NotIdentical(difference)


def computed(value: Any) -> Any:
    """``value``, a computation's result (a model's output), with each tensor copied into a
    storage of its own, to compare by value with :func:`assert_identical`.

    An operator may return a view of a larger work buffer whose other bytes are whatever
    memory held (``ConvTranspose3d`` does): those bytes are no part of the result, and
    comparing them would fail two equal results at random. Tuples, lists and dicts are
    walked; anything else is returned as it is.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().clone(memory_format=torch.contiguous_format)
    if isinstance(value, tuple | list):
        items = [computed(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return type(value)((key, computed(item)) for key, item in value.items())
    return value


def find_difference(expected: Any, actual: Any, *, name: str = "obj") -> Difference | None:
    """The first :class:`Difference` between ``expected`` and ``actual``, or None when they
    are identical in the sense of :func:`assert_identical`.

    Raises ``TypeError`` for values no handler can compare (nested tensors, tensors of an
    unknown layout, objects whose ``__eq__`` does not return a bool).
    """
    walk = _Walk()
    try:
        walk.compare(expected, actual, name)
        walk.check_storage_sharing()
        walk.check_storage_contents()
    except NotIdentical as found:
        return found.difference
    return None


# --- what is compared for a tensor ----------------------------------------------------------


def _unchanged(value: Any) -> Any:
    return value


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorAspect:
    """A fact about a tensor that must be equal on both sides.

    Attributes:
        name: the aspect as messages name it.
        read: reads it from a tensor; the two sides are compared with ``!=``.
        key: the key under which a description's tensor header records it; None where a
            description records it otherwise (the layout by the description's tag, the
            storage size in its storage record).
        plain: its JSON form in a description.
    """

    name: str
    read: Callable[[torch.Tensor], Any]
    key: str | None = None
    plain: Callable[[Any], Any] = _unchanged


@dataclass(frozen=True)
class TensorPart:
    """A component of a tensor, compared as a value of its own at ``<path>.<method>()``.

    A description records a tensor part under ``key`` among the tensor's parts, and a scalar
    one (a scale, a zero point) under ``key`` in the tensor's header.
    """

    method: str
    key: str

    def read(self, tensor: torch.Tensor) -> Any:
        """The part of ``tensor``."""
        return getattr(tensor, self.method)()


@dataclass(frozen=True)
class TensorKind:
    """What identity means for one kind of tensor, beyond :data:`TENSOR_ASPECTS`.

    Attributes:
        tag: the tag of its description (``tensor``, ``sparse_coo``, ``quantized``, ...).
        aspects: compared after :data:`TENSOR_ASPECTS`, in order.
        parts: compared after the aspects, in order.
        implied: keys of :data:`TENSOR_ASPECTS` its description leaves out because its parts
            record them (the device of a sparse or quantized tensor is its parts' device).
        strided: whether the tensor's own storage is compared: its elements bit for bit, the
            bytes no element reaches, and which other tensors share it.
        described_first: keys of parts a description describes before the others (and so
            numbers their storages first), where that is not the order they are compared in.
    """

    tag: str
    aspects: tuple[TensorAspect, ...] = ()
    parts: tuple[TensorPart, ...] = ()
    implied: frozenset[str] = frozenset()
    strided: bool = False
    described_first: tuple[str, ...] = ()

    def described_parts(self) -> tuple[TensorPart, ...]:
        """The parts in the order a description describes them."""
        first = [part for key in self.described_first for part in self.parts if part.key == key]
        return (*first, *(part for part in self.parts if part not in first))


#: Compared for every tensor, in this order, before the aspects of its :class:`TensorKind`.
TENSOR_ASPECTS = (
    TensorAspect("layout", lambda t: t.layout),
    TensorAspect("dtype", lambda t: t.dtype, "dtype", dtype_name),
    TensorAspect("device", lambda t: t.device, "device", str),
    TensorAspect("shape", lambda t: tuple(t.shape), "shape", list),
    TensorAspect("requires_grad", lambda t: t.requires_grad, "requires_grad"),
    TensorAspect("is_conj", lambda t: t.is_conj(), "conj"),
    TensorAspect("is_neg", lambda t: t.is_neg(), "neg"),
)

#: Tensors that own a strided storage.
STRIDED = TensorKind(
    "tensor",
    aspects=(
        TensorAspect("stride", lambda t: t.stride(), "stride", list),
        TensorAspect("storage_offset", lambda t: t.storage_offset(), "storage_offset"),
        TensorAspect("storage size in bytes", lambda t: tensor_storage(t).nbytes()),
    ),
    strided=True,
)


def _sparse(tag: str, *parts: str, aspects: tuple[TensorAspect, ...] = ()) -> TensorKind:
    """A sparse kind whose parts are described under their method names, without ``_``."""
    return TensorKind(
        tag,
        aspects=aspects,
        parts=tuple(TensorPart(method, method.lstrip("_")) for method in parts),
        implied=frozenset({"device"}),
    )


#: The kinds of tensor that are not quantized, by layout.
TENSOR_KINDS = {
    torch.strided: STRIDED,
    torch.sparse_coo: _sparse(
        "sparse_coo",
        "_indices",
        "_values",
        aspects=(TensorAspect("is_coalesced", lambda t: t.is_coalesced(), "coalesced"),),
    ),
    torch.sparse_csr: _sparse("sparse_csr", "crow_indices", "col_indices", "values"),
    torch.sparse_csc: _sparse("sparse_csc", "ccol_indices", "row_indices", "values"),
    torch.sparse_bsr: _sparse("sparse_bsr", "crow_indices", "col_indices", "values"),
    torch.sparse_bsc: _sparse("sparse_bsc", "ccol_indices", "row_indices", "values"),
}

_QSCHEME = TensorAspect("qscheme", lambda t: t.qscheme(), "qscheme", str)
_PER_TENSOR = TensorKind(
    "quantized",
    aspects=(_QSCHEME,),
    parts=(
        TensorPart("q_scale", "scale"),
        TensorPart("q_zero_point", "zero_point"),
        TensorPart("int_repr", "int_repr"),
    ),
    implied=frozenset({"device"}),
)
_PER_CHANNEL = TensorKind(
    "quantized",
    aspects=(
        _QSCHEME,
        TensorAspect("q_per_channel_axis", lambda t: t.q_per_channel_axis(), "axis"),
    ),
    parts=(
        TensorPart("q_per_channel_scales", "scales"),
        TensorPart("q_per_channel_zero_points", "zero_points"),
        TensorPart("int_repr", "int_repr"),
    ),
    implied=frozenset({"device"}),
    described_first=("int_repr",),  # as the committed manifests number the storages
)

#: The kinds of quantized tensor, by qscheme.
QUANTIZED_KINDS = {
    torch.per_tensor_affine: _PER_TENSOR,
    torch.per_tensor_symmetric: _PER_TENSOR,
    torch.per_channel_affine: _PER_CHANNEL,
    torch.per_channel_symmetric: _PER_CHANNEL,
    torch.per_channel_affine_float_qparams: _PER_CHANNEL,
}


def tensor_kind(tensor: torch.Tensor) -> TensorKind | None:
    """The :class:`TensorKind` of ``tensor``: of its qscheme if it is quantized, else of its
    layout; None for a layout or qscheme the table does not know."""
    if tensor.is_quantized:
        return QUANTIZED_KINDS.get(tensor.qscheme())
    return TENSOR_KINDS.get(tensor.layout)


def storage_key(tensor: torch.Tensor) -> tuple[str, int, int]:
    """What identifies the storage under ``tensor``: its device, address and size."""
    storage = tensor_storage(tensor)
    return str(tensor.device), storage.data_ptr(), storage.nbytes()


def element_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as rows of raw bytes: shape (numel, itemsize), dtype uint8."""
    # clone, not contiguous(): a tensor whose size-1 dimensions have odd strides counts as
    # contiguous, and viewing it as bytes would fail.
    dense = tensor.detach().resolve_conj().resolve_neg().cpu()
    if dense.element_size() == 1:
        dense = dense.view(torch.uint8)  # copying a bool tensor would make every byte 0 or 1
    flat = dense.clone(memory_format=torch.contiguous_format).reshape(-1)
    itemsize = flat.element_size()
    return flat.view(torch.uint8).reshape(-1, itemsize)


def storage_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Every whole element of the storage under a strided ``tensor``, from its start, as the
    tensor reads them (conjugate and negative bits resolved): a 1-d uint8 tensor."""
    return element_bytes(_whole_storage(tensor)).reshape(-1)


def _covers_storage(tensor: torch.Tensor, nbytes: int) -> bool:
    """Whether the elements of ``tensor`` are exactly the bytes of its storage: it starts at
    the storage's start, has as many bytes and steps through them without gaps or overlaps."""
    if tensor.storage_offset() != 0 or tensor.numel() * tensor.element_size() != nbytes:
        return False
    dimensions = [
        (stride, side) for side, stride in zip(tensor.shape, tensor.stride(), strict=True)
    ]
    step = 1
    for stride, side in sorted(dimension for dimension in dimensions if dimension[1] != 1):
        if stride != step:
            return False
        step *= side
    return True


# --- the walk -------------------------------------------------------------------------------


def _differs(path: str, aspect: str, expected: Any, actual: Any, detail=None) -> NotIdentical:
    return NotIdentical(Difference(path, aspect, expected, actual, detail))


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
            detail = f"expected {type_name(expected)}, actual {type_name(actual)}"
            raise _differs(path, "type", type(expected), type(actual), detail)
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

        Only the objects of :data:`IDENTITY_TRACKED` are tracked.
        """
        if not isinstance(expected, IDENTITY_TRACKED):
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
            detail = f"in expected it is the same object as {earlier[0]}, in actual it is not"
            other = earlier_actual[0] if earlier_actual is not None else None
            raise _differs(path, "aliasing", earlier[0], other, detail)
        detail = f"in actual it is the same object as {earlier_actual[0]}, in expected it is not"
        raise _differs(path, "aliasing", None, earlier_actual[0], detail)

    def _compare_mappings(self, expected: Mapping, actual: Mapping, path: str) -> None:
        expected_keys, actual_keys = list(expected), list(actual)
        if expected_keys != actual_keys:
            missing = [k for k in expected_keys if k not in actual]
            extra = [k for k in actual_keys if k not in expected]
            if missing or extra:
                detail = f"missing keys {missing!r}, unexpected keys {extra!r}"
                raise _differs(path, "keys", expected_keys, actual_keys, detail)
            raise _differs(path, "key order", expected_keys, actual_keys)
        for key in expected_keys:
            self.compare(expected[key], actual[key], f"{path}[{key!r}]")

    def _compare_sequences(self, expected, actual, path: str) -> None:
        if len(expected) != len(actual):
            raise _differs(path, "length", len(expected), len(actual))
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            self.compare(left, right, f"{path}[{index}]")

    def _compare_tensors(self, expected: torch.Tensor, actual: torch.Tensor, path: str) -> None:
        if getattr(expected, "is_nested", False):
            raise TypeError(
                f"{path}: assert_identical does not compare nested tensors; compare "
                "expected.unbind() with actual.unbind() instead"
            )
        for aspect in TENSOR_ASPECTS:
            _compare_aspect(aspect, expected, actual, path)
        kind = tensor_kind(expected)
        if kind is None:
            what = (
                f"quantized tensors of qscheme {expected.qscheme()}"
                if expected.is_quantized
                else f"tensors of layout {expected.layout}"
            )
            raise TypeError(
                f"{path}: assert_identical does not know how to compare {what}; compare "
                "their components yourself"
            )
        for aspect in kind.aspects:
            _compare_aspect(aspect, expected, actual, path)
        for part in kind.parts:
            self.compare(part.read(expected), part.read(actual), f"{path}.{part.method}()")
        if kind.strided and expected.device.type != "meta":  # meta tensors have no contents
            _compare_bits(expected, actual, path)
            if tensor_storage(expected).nbytes() > 0:
                self.storage_users.append((path, expected, actual))

    def check_storage_contents(self) -> None:
        """The bytes of each storage that no element of a tensor reaches, once per pair of
        storages; after everything else, so that they are the last difference reported."""
        compared = set()
        for path, expected, actual in self.storage_users:
            if _covers_storage(expected, tensor_storage(expected).nbytes()):
                continue
            pair = (storage_key(expected), storage_key(actual))
            if pair not in compared:
                compared.add(pair)
                _compare_storage_bytes(expected, actual, path)

    def check_storage_sharing(self) -> None:
        """Tensors that share storage in expected must share it in actual, and only those."""
        expected_groups = _storage_groups(expected for _, expected, _ in self.storage_users)
        actual_groups = _storage_groups(actual for _, _, actual in self.storage_users)
        for index, (left, right) in enumerate(zip(expected_groups, actual_groups, strict=True)):
            if left == right:
                continue
            path = self.storage_users[index][0]
            left_path = self.storage_users[left][0] if left != index else None
            right_path = self.storage_users[right][0] if right != index else None
            if left_path is not None:
                detail = f"in expected it shares storage with {left_path}, in actual it does not"
            else:
                detail = f"in actual it shares storage with {right_path}, in expected it does not"
            raise _differs(path, "storage sharing", left_path, right_path, detail)


def _compare_aspect(aspect: TensorAspect, expected, actual, path: str) -> None:
    left, right = aspect.read(expected), aspect.read(actual)
    if left != right:
        raise _differs(path, aspect.name, left, right)


# The integer dtype of each element width: two tensors are identical bit for bit exactly when
# their elements, read as these integers, are equal (no NaN, no signed zero among integers).
_SAME_WIDTH_INTEGERS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_equal(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    """Whether two strided tensors of the same dtype, shape and device hold the same bits in
    every element, without copying them; False also where this cannot tell (conjugate or
    negative views, elements of another width, other devices), so that the full comparison
    decides and explains."""
    integer = _SAME_WIDTH_INTEGERS.get(expected.element_size())
    if integer is None or expected.device.type != "cpu":
        return False
    if expected.is_conj() or expected.is_neg() or actual.is_conj() or actual.is_neg():
        return False
    try:
        return torch.equal(expected.detach().view(integer), actual.detach().view(integer))
    except RuntimeError:  # a dtype that cannot be viewed so
        return False


def _whole_storage(tensor: torch.Tensor) -> torch.Tensor:
    """Every whole element of the storage under ``tensor``, from its start, as a 1-d view."""
    elements = tensor_storage(tensor).nbytes() // tensor.element_size()
    return tensor.detach().as_strided((elements,), (1,), 0)


def _compare_storage_bytes(expected: torch.Tensor, actual: torch.Tensor, path: str) -> None:
    if _bits_equal(_whole_storage(expected), _whole_storage(actual)):
        return
    left, right = storage_bytes(expected), storage_bytes(actual)
    differs = left != right
    count = int(differs.sum())
    if count == 0:
        return
    first = int(differs.nonzero()[0])
    left_byte, right_byte = f"0x{int(left[first]):02x}", f"0x{int(right[first]):02x}"
    detail = (
        f"{count} / {differs.numel()} bytes of the storage differ where no element of "
        f"the tensor lies; the first at byte {first}: expected {left_byte}, actual "
        f"{right_byte}"
    )
    raise _differs(path, "storage contents", left_byte, right_byte, detail)


def _storage_groups(tensors) -> list[int]:
    """For each tensor, the index of the first tensor that uses the same storage."""
    first_user: dict[tuple[str, int, int], int] = {}
    return [first_user.setdefault(storage_key(t), index) for index, t in enumerate(tensors)]


def _compare_bits(expected: torch.Tensor, actual: torch.Tensor, path: str) -> None:
    if _bits_equal(expected, actual):
        return
    left, right = element_bytes(expected), element_bytes(actual)
    differs = (left != right).any(dim=1)
    count = int(differs.sum())
    if count == 0:
        return
    total = differs.numel()
    positions = differs.nonzero().reshape(-1)[:_QUOTED_ELEMENTS].tolist()
    shape = tuple(expected.shape)
    quoted = [
        (
            _unravel(position, shape),
            _describe_element(expected, left, position),
            _describe_element(actual, right, position),
        )
        for position in positions
    ]
    evidence = "; ".join(
        f"at index {index}: expected {left_element}, actual {right_element}"
        for index, left_element, right_element in quoted
    )
    more = f"; and {count - len(positions)} more" if count > len(positions) else ""
    share = f"{count} / {total} elements ({100.0 * count / total:.1f}%)"
    detail = f"{share} differ bit for bit; {evidence}{more}"
    raise _differs(path, "contents", quoted[0][1], quoted[0][2], detail)


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
        detail = f"expected {left}, actual {actual!r} ({_float_bits(actual)})"
        raise _differs(path, "value", expected, actual, detail)


def _compare_numpy_values(expected, actual, path: str) -> None:
    if not hasattr(expected, "dtype"):
        _compare_by_equality(expected, actual, path)
        return
    # Strides are not compared: pickle stores every numpy array C-contiguous.
    for aspect in ("dtype", "shape"):
        left, right = getattr(expected, aspect), getattr(actual, aspect)
        if left != right:
            raise _differs(path, aspect, left, right)
    if expected.dtype.hasobject:
        same = expected.tolist() == actual.tolist()
    else:
        same = expected.tobytes() == actual.tobytes()
    if not same:
        detail = f"expected {short_repr(expected)}, actual {short_repr(actual)}"
        raise _differs(path, "contents", expected, actual, detail)


def _compare_by_equality(expected: Any, actual: Any, path: str) -> None:
    equal = expected == actual
    if not isinstance(equal, bool):
        raise TypeError(
            f"{path}: {type_name(expected)}.__eq__ returned {type_name(equal)}, not a bool; "
            "assert_identical cannot compare such values"
        )
    if not equal:
        detail = f"expected {short_repr(expected)}, actual {short_repr(actual)}"
        raise _differs(path, "value", expected, actual, detail)


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
