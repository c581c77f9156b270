"""The matrix's descriptions and the identity comparator agree.

For a pair of values, ``describe(a) == describe(b)`` exactly when ``assert_identical(a, b)``
passes. Pairs are drawn from the project's strategies: a value ``a`` (a tensor, a checkpoint
bundle or weights-only content), ``b`` a deep copy of it, the tensor at one place turned
into another kind on both sides alike (a conjugate or negative view, a sparse tensor of each
layout, a quantized tensor of each qscheme), then ``b`` changed by one drawn mutation: a
storage bit flipped, another dtype, stride or storage, a flag resolved, sharing broken or
gained, another key order or container type, a float's bit, or nothing.
"""

from __future__ import annotations

import collections
import copy
import json
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from harness.capabilities import probe, tensor_storage
from harness.compare import (
    QUANTIZED_KINDS,
    TENSOR_KINDS,
    assert_identical,
    find_difference,
    short_repr,
)
from matrix.describe import describe, first_difference
from strategies.bundles import bundles, weights_only_contents
from strategies.tensors import tensor_shapes, tensors

_COMPLEX = (torch.complex64, torch.complex128)
_SPARSE_LAYOUTS = {
    "sparse_coo": lambda t: t.to_sparse(),
    "sparse_csr": lambda t: t.to_sparse_csr(),
    "sparse_csc": lambda t: t.to_sparse_csc(),
    "sparse_bsr": lambda t: t.to_sparse_bsr((1, 1)),
    "sparse_bsc": lambda t: t.to_sparse_bsc((1, 1)),
}


# --- places in a value ------------------------------------------------------------------------


def _places(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, item)`` for the value itself and everything inside its dicts, lists and
    tuples; a path is the keys and indices from the root."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*path, key))
    elif isinstance(value, list | tuple) and not isinstance(value, torch.Size):
        for index, item in enumerate(value):
            yield from _places(item, (*path, index))


def _at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def _replaced(value: Any, path: tuple, new: Any) -> Any:
    """``value`` with ``new`` at ``path``: dicts and lists changed in place, tuples rebuilt."""
    if not path:
        return new
    child = _replaced(value[path[0]], path[1:], new)
    if isinstance(value, tuple):
        items = list(value)
        items[path[0]] = child
        return type(value)(items)
    value[path[0]] = child
    return value


def _quiet(build: Callable[[], Any]) -> Any:
    """``build()``, or None where torch refuses it for this dtype, shape or layout."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # beta sparse layouts, deprecated quantization
        try:
            return build()
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            return None


# --- other kinds of tensor, made on both sides alike ------------------------------------------


def _finite(tensor: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(tensor.detach().to(torch.float32), 0.0, 8.0, -8.0).clamp(-8.0, 8.0)


@st.composite
def _conversions(draw: st.DrawFn, tensor: torch.Tensor) -> tuple[str, Callable | None]:
    """A name and a way to turn ``tensor`` into another kind of tensor (None: keep it)."""
    names = ["none", "per_tensor_affine"]
    if tensor.dim() >= 1:
        names.append("sparse_coo")
    if tensor.dim() == 2:
        names += [name for name in _SPARSE_LAYOUTS if name != "sparse_coo"]
    if tensor.dim() >= 1 and tensor.shape[0] >= 1:
        names += ["per_channel_affine", "per_channel_affine_float_qparams"]
    if tensor.dtype in _COMPLEX:
        names += ["conjugate view", "negative view"]
    name = draw(st.sampled_from(names))
    if name == "none":
        return name, None
    if name == "conjugate view":
        return name, lambda t: t.conj()
    if name == "negative view":
        return name, lambda t: t.conj().imag
    if name in _SPARSE_LAYOUTS:
        return name, _SPARSE_LAYOUTS[name]
    dtype = draw(st.sampled_from([torch.quint8, torch.qint8]))
    if name == "per_tensor_affine":
        scale, zero_point = draw(st.floats(0.01, 2.0)), draw(st.integers(0, 10))
        return name, lambda t: torch.quantize_per_tensor(_finite(t), scale, zero_point, dtype)
    channels = tensor.shape[0] if tensor.dim() else 0
    scales = draw(st.lists(st.floats(0.01, 2.0), min_size=channels, max_size=channels))
    if name == "per_channel_affine":
        points = draw(st.lists(st.integers(0, 10), min_size=channels, max_size=channels))
        zero_points = torch.tensor(points, dtype=torch.int64)
        scale_dtype = torch.float64
    else:
        points = draw(st.lists(st.floats(0.0, 4.0), min_size=channels, max_size=channels))
        zero_points, scale_dtype, dtype = torch.tensor(points), torch.float32, torch.quint8
    return name, lambda t: torch.quantize_per_channel(
        _finite(t), torch.tensor(scales, dtype=scale_dtype), zero_points, 0, dtype
    )


# --- mutations of b -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One way to change ``b`` at one place.

    ``applies`` says whether it can change the item at a place; ``apply`` returns the new
    root (given the draw, the root, the path and the item there); ``always_differs`` whether
    the result is never identical to ``a``.
    """

    name: str
    applies: Callable[[Any], bool]
    apply: Callable[[st.DrawFn, Any, tuple, Any], Any]
    always_differs: bool


def _is_strided(item: Any) -> bool:
    return isinstance(item, torch.Tensor) and item.layout == torch.strided and not item.is_quantized


def _storage_target(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor whose storage holds ``tensor``'s values."""
    if tensor.layout == torch.sparse_coo:
        return tensor._values()
    if tensor.layout != torch.strided:
        return tensor.values()
    return tensor


def _has_bytes(item: Any) -> bool:
    return isinstance(item, torch.Tensor) and tensor_storage(_storage_target(item)).nbytes() > 0


def _storage_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A uint8 tensor over every byte of the storage that holds ``tensor``'s values."""
    storage = tensor_storage(_storage_target(tensor))
    if isinstance(storage, torch.storage.TypedStorage):
        # torch 1.13 has no untyped_storage(); a uint8 tensor is set only to untyped bytes
        storage = storage.untyped()
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def _flip_storage_bit(draw: st.DrawFn, root: Any, path: tuple, tensor: torch.Tensor) -> Any:
    """Flip one bit of the storage in place: every view of it in ``b`` sees the change."""
    raw = _storage_bytes(tensor)
    raw[draw(st.integers(0, raw.numel() - 1))] ^= 1 << draw(st.integers(0, 7))
    return root


def _replacing(build: Callable[[st.DrawFn, Any], Any]):
    return lambda draw, root, path, item: _replaced(root, path, build(draw, item))


def _other_dtype(draw: st.DrawFn, tensor: torch.Tensor) -> torch.Tensor:
    dtype = draw(st.sampled_from([d for d in probe().dtypes if d != tensor.dtype]))
    converted = _quiet(lambda: tensor.to(dtype))
    return tensor if converted is None else converted


def _toggled_requires_grad(draw: st.DrawFn, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().requires_grad_(not tensor.requires_grad)


def _same_storage_new_object(draw: st.DrawFn, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_strided(tensor.shape, tensor.stride(), tensor.storage_offset())


def _new_scale(draw: st.DrawFn, tensor: torch.Tensor) -> torch.Tensor:
    scale, zero_point = tensor.q_scale() * 2, tensor.q_zero_point()
    return torch.quantize_per_tensor(tensor.dequantize(), scale, zero_point, tensor.dtype)


def _aliased(kinds: tuple[type, ...]):
    """Put at the place an object of ``kinds`` found elsewhere in ``b``."""

    def apply(draw: st.DrawFn, root: Any, path: tuple, item: Any) -> Any:
        others = [other for _, other in _places(root) if type(other) in kinds]
        return _replaced(root, path, draw(st.sampled_from(others)))

    return apply


def _flipped_float(draw: st.DrawFn, value: float) -> float:
    (bits,) = struct.unpack("<Q", struct.pack("<d", value))
    flipped = bits ^ (1 << draw(st.sampled_from([0, 51, 63])))
    return struct.unpack("<d", struct.pack("<Q", flipped))[0]


def _other_container_type(draw: st.DrawFn, value: Any) -> Any:
    if type(value) is list:
        return tuple(value)
    if type(value) is tuple:
        return list(value)
    if type(value) is dict:
        return collections.OrderedDict(value)
    return dict(value)


def _reversed_keys(draw: st.DrawFn, mapping: dict) -> dict:
    return type(mapping)(reversed(list(mapping.items())))


_GRADIENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, *_COMPLEX)


def _is_float_tensor(item: Any) -> bool:
    return _is_strided(item) and item.dtype in _GRADIENT_DTYPES


def _is_container(item: Any) -> bool:
    return type(item) in (list, tuple, dict, collections.OrderedDict)


MUTATIONS = (
    Mutation("nothing", lambda item: True, lambda draw, root, path, item: root, False),
    Mutation("flip a storage bit", _has_bytes, _flip_storage_bit, True),
    Mutation("another dtype", _is_strided, _replacing(_other_dtype), False),
    Mutation(
        "contiguous copy",
        _is_strided,
        _replacing(lambda draw, t: t.clone(memory_format=torch.contiguous_format)),
        False,
    ),
    Mutation("own storage", _is_strided, _replacing(lambda draw, t: copy.deepcopy(t)), False),
    Mutation("new object, same storage", _is_strided, _replacing(_same_storage_new_object), False),
    Mutation("requires_grad toggled", _is_float_tensor, _replacing(_toggled_requires_grad), True),
    Mutation(
        "conjugate resolved",
        lambda item: isinstance(item, torch.Tensor) and item.is_conj(),
        _replacing(lambda draw, t: t.resolve_conj()),
        True,
    ),
    Mutation(
        "negative resolved",
        lambda item: isinstance(item, torch.Tensor) and item.is_neg(),
        _replacing(lambda draw, t: t.resolve_neg()),
        True,
    ),
    Mutation(
        "conjugate view",
        lambda item: _is_strided(item) and item.dtype in _COMPLEX and not item.is_conj(),
        _replacing(lambda draw, t: t.conj()),
        True,
    ),
    Mutation(
        "doubled scale",
        lambda item: (
            isinstance(item, torch.Tensor)
            and item.is_quantized
            and item.qscheme() == torch.per_tensor_affine
        ),
        _replacing(_new_scale),
        True,
    ),
    Mutation(
        "a tensor from elsewhere",
        lambda item: isinstance(item, torch.Tensor),
        _aliased((torch.Tensor,)),
        False,
    ),
    Mutation(
        "a container from elsewhere",
        lambda item: type(item) in (list, dict, collections.OrderedDict),
        _aliased((list, dict, collections.OrderedDict)),
        False,
    ),
    Mutation("another container type", _is_container, _replacing(_other_container_type), True),
    Mutation(
        "keys reversed",
        lambda item: type(item) in (dict, collections.OrderedDict) and len(item) > 1,
        _replacing(_reversed_keys),
        True,
    ),
    Mutation(
        "a float's bit",
        lambda item: type(item) is float,
        _replacing(_flipped_float),
        True,
    ),
)


@dataclass
class Pair:
    """A drawn pair and how it was made, printed when an example fails."""

    a: Any
    b: Any
    conversion: str
    mutation: str
    path: tuple

    def __repr__(self) -> str:
        return (
            f"Pair(conversion={self.conversion!r}, mutation={self.mutation!r}, "
            f"path={self.path!r}, a={short_repr(self.a, 2000)}, b={short_repr(self.b, 2000)})"
        )


@st.composite
def pairs(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> Pair:
    """A value, a deep copy of it with the same tensor converted on both sides, and the copy
    changed by one of :data:`MUTATIONS`."""
    a = draw(values)
    b = copy.deepcopy(a)
    conversion = "none"
    tensor_paths = [path for path, item in _places(a) if _is_strided(item)]
    if tensor_paths:
        path = draw(st.sampled_from(tensor_paths))
        conversion, convert = draw(_conversions(_at(a, path)))
        if convert is not None:
            converted_a = _quiet(lambda: convert(_at(a, path)))
            converted_b = _quiet(lambda: convert(_at(b, path)))
            if converted_a is None or converted_b is None:
                conversion = f"{conversion} (refused, kept)"
            else:
                a, b = _replaced(a, path, converted_a), _replaced(b, path, converted_b)
    places = list(_places(b))
    usable = [m for m in MUTATIONS if any(m.applies(item) for _, item in places)]
    mutation = draw(st.sampled_from(usable))
    path, item = draw(st.sampled_from([place for place in places if mutation.applies(place[1])]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # casts that drop an imaginary part
        b = mutation.apply(draw, b, path, item)
    event(f"conversion: {conversion}")
    event(f"mutation: {mutation.name}")
    return Pair(a, b, conversion, mutation.name, path)


_MUTATION_NAMES = {mutation.name: mutation for mutation in MUTATIONS}
VALUES = st.one_of(
    tensors(),
    tensors(shapes=tensor_shapes(min_dims=2, max_dims=2)),  # every sparse layout applies
    tensors(dtypes=st.sampled_from(_COMPLEX)),  # conjugate and negative views apply
    bundles(),
    weights_only_contents(),
)


@settings(max_examples=300)
@given(pairs(VALUES))
def test_descriptions_are_equal_exactly_when_the_values_are_identical(pair):
    difference = find_difference(pair.a, pair.b)
    described_a, described_b = describe(pair.a), describe(pair.b)
    note(f"comparator: {difference and difference.message()}")
    note(f"descriptions: {first_difference(described_a, described_b)}")
    assert (described_a == described_b) == (difference is None)
    mutation = _MUTATION_NAMES[pair.mutation]
    if mutation.name == "nothing":
        assert difference is None
    if mutation.always_differs:
        assert difference is not None
    # What the manifests hold: JSON, and first_difference, asked both ways, finds what ==
    # finds (one way may not report a container that only the actual side has twice).
    assert json.loads(json.dumps(described_a)) == described_a
    both_ways = (
        first_difference(described_a, described_b),
        first_difference(described_b, described_a),
    )
    assert (both_ways == (None, None)) == (described_a == described_b)
    event("identical" if difference is None else f"differs in {difference.aspect}")


# --- every kind of tensor in the table, one by one ----------------------------------------------


def _dense() -> torch.Tensor:
    return torch.tensor([[0.0, 1.5, 0.0, -2.0], [0.0, 0.0, 3.25, 0.0], [4.0, 0.0, 0.0, 0.5]])


def _quantized(scheme: torch.qscheme) -> Callable[[torch.Tensor], torch.Tensor]:
    def quantize(values: torch.Tensor) -> torch.Tensor:
        if scheme == torch.per_tensor_affine:
            return torch.quantize_per_tensor(values, 0.05, 2, torch.quint8)
        scales = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)
        if scheme == torch.per_channel_affine:
            return torch.quantize_per_channel(
                values, scales, torch.tensor([0, 1, 2]), 0, torch.qint8
            )
        return torch.quantize_per_channel(
            values, scales.float(), torch.tensor([0.0, 0.5, 1.0]), 0, torch.quint8
        )

    return quantize


_BUILDS = {
    **{name: convert for name, convert in _SPARSE_LAYOUTS.items()},
    "conjugate view": lambda t: t.to(torch.complex64).mul(1 + 1j).conj(),
    "negative view": lambda t: t.to(torch.complex64).mul(1 + 1j).conj().imag,
    **{
        str(scheme): _quantized(scheme)
        for scheme in (
            torch.per_tensor_affine,
            torch.per_channel_affine,
            torch.per_channel_affine_float_qparams,
        )
    },
}


@pytest.mark.parametrize("name", list(_BUILDS))
def test_every_kind_is_described_as_compared(name):
    build = _BUILDS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = build(_dense()), build(_dense())
        other = _dense()
        other[1, 2] = 3.5
        changed = build(other)
    assert_identical(first, second)
    assert describe(first) == describe(second)
    assert json.loads(json.dumps(describe(first))) == describe(first)
    difference = find_difference(first, changed)
    assert difference is not None
    assert describe(first) != describe(changed)
    assert first_difference(describe(first), describe(changed)) is not None


def test_the_table_knows_every_layout_and_qscheme_built_here():
    layouts = {torch.strided, *(getattr(torch, name) for name in _SPARSE_LAYOUTS)}
    assert set(TENSOR_KINDS) == layouts
    assert {
        torch.per_tensor_affine,
        torch.per_channel_affine,
        torch.per_channel_affine_float_qparams,
    } <= set(QUANTIZED_KINDS)


def test_conjugate_and_negative_bits_are_described():
    z = torch.tensor([1 + 2j, 3 - 4j])
    for flagged, resolved in [
        (z.conj(), z.conj().resolve_conj()),
        (z.conj().imag, z.conj().imag.resolve_neg()),
    ]:
        assert find_difference(flagged, resolved) is not None
        assert describe(flagged) != describe(resolved)


def test_a_container_that_contains_itself_is_described():
    looped: list = [1]
    looped.append(looped)
    other: list = [1]
    other.append(other)
    assert describe(looped) == describe(other)
    assert describe(looped) != describe([1, [1]])
    assert first_difference(describe(looped), describe([1, [1, None]])) is not None


def test_where_the_docstring_says_they_part():
    """describe sees an object of another class by its class only, and a set by its
    elements, where the comparator asks ``==``."""
    unequal = type("Unequal", (), {"__eq__": lambda self, other: False, "__hash__": None})
    assert describe(unequal()) == describe(unequal())
    assert find_difference(unequal(), unequal()) is not None
    assert find_difference({0.0}, {-0.0}) is None
    assert describe({0.0}) != describe({-0.0})
