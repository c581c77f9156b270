"""Self-tests of the identity comparator, harness.assert_identical.

Two tables: pairs that differ in exactly one aspect (each must be caught, with a message
naming that aspect and the path of the difference), and pairs that must compare identical;
then the difference as data (harness.compare.Difference).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch

from harness import assert_identical
from harness.capabilities import probe
from harness.compare import Difference, NotIdentical, find_difference

Point = collections.namedtuple("Point", "x y")
OtherPoint = collections.namedtuple("OtherPoint", "x y")


class Marked(torch.Tensor):
    """A tensor subclass, to check that the exact type counts."""


def float_from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def nan_tensor(payload: int) -> torch.Tensor:
    """A float32 NaN with the given payload in its mantissa."""
    return torch.tensor([0x7FC00000 | payload], dtype=torch.int32).view(torch.float32)


def shared_pair():
    base = torch.arange(6.0)
    return {"a": base[:3], "b": base[3:]}


def separate_pair():
    base, other = torch.arange(6.0), torch.arange(6.0)
    return {"a": base[:3], "b": other[3:]}


def one_tensor_twice():
    tensor = torch.ones(2)
    return {"a": tensor, "b": tensor}


def same_list_twice():
    inner = [1, 2]
    return {"a": inner, "b": inner}


def sparse(values):
    return torch.sparse_coo_tensor([[0, 1]], torch.tensor(values), (3,))


def quantized(scale):
    return torch.quantize_per_tensor(torch.tensor([0.5, 1.0]), scale, 0, torch.quint8)


def dense():
    return torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]])


def compressed(layout: str, values=None):
    """``dense()`` (or ``values``) in a compressed sparse layout, without beta warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensor = dense() if values is None else torch.tensor(values)
        if layout in ("bsr", "bsc"):
            return getattr(tensor, f"to_sparse_{layout}")((1, 1))
        return getattr(tensor, f"to_sparse_{layout}")()


def per_channel(zero_points, dtype=torch.qint8):
    """A per-channel quantized tensor: per_channel_affine_float_qparams for float zero points."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scales = torch.tensor([0.1, 0.2], dtype=torch.float64)
        if zero_points.is_floating_point():
            scales = scales.float()
        return torch.quantize_per_channel(dense(), scales, zero_points, 0, dtype)


def outside_the_view(tail: float):
    """A view of the first three elements of a storage whose last two are ``tail``."""
    return torch.cat([torch.zeros(3), torch.full((2,), tail)])[:3]


def complex_pair():
    return torch.tensor([1 + 2j, 3 - 4j])


def strided_view():
    return torch.zeros(2, 4)[:, ::2]


def offset_view():
    return torch.zeros(5)[1:4]


# (id, expected, actual, aspect named in the message, path named in the message)
DIFFERENT = [
    ("dtype", lambda: torch.zeros(2), lambda: torch.zeros(2, dtype=torch.float64), "dtype", "obj"),
    ("shape", lambda: torch.zeros(2, 3), lambda: torch.zeros(3, 2), "shape", "obj"),
    ("stride", lambda: torch.zeros(2, 3), lambda: torch.zeros(3, 2).t(), "stride", "obj"),
    (
        "storage offset",
        offset_view,
        lambda: torch.zeros(5)[:3],
        "storage_offset",
        "obj",
    ),
    (
        "storage size",
        lambda: torch.zeros(5)[:3],
        lambda: torch.zeros(3),
        "storage size in bytes",
        "obj",
    ),
    (
        "requires_grad",
        lambda: torch.zeros(2, requires_grad=True),
        lambda: torch.zeros(2),
        "requires_grad",
        "obj",
    ),
    (
        "Parameter vs Tensor",
        lambda: torch.nn.Parameter(torch.zeros(2)),
        lambda: torch.zeros(2, requires_grad=True),
        "type",
        "obj",
    ),
    (
        "tensor subclass",
        lambda: torch.zeros(2).as_subclass(Marked),
        lambda: torch.zeros(2),
        "type",
        "obj",
    ),
    ("layout", lambda: sparse([1.0, 2.0]), lambda: torch.zeros(3), "layout", "obj"),
    (
        "contents",
        lambda: torch.tensor([1.0, 2.0]),
        lambda: torch.tensor([1.0, 3.0]),
        "contents",
        "obj",
    ),
    ("signed zero", lambda: torch.tensor([0.0]), lambda: torch.tensor([-0.0]), "contents", "obj"),
    ("NaN payload", lambda: nan_tensor(1), lambda: nan_tensor(2), "contents", "obj"),
    (
        "subnormal flushed",
        lambda: torch.tensor([1e-40]),
        lambda: torch.tensor([0.0]),
        "contents",
        "obj",
    ),
    (
        "bool",
        lambda: torch.tensor([True, False]),
        lambda: torch.tensor([True, True]),
        "contents",
        "obj",
    ),
    (
        "bool byte other than 0 or 1",
        lambda: torch.tensor([True]),
        lambda: torch.tensor([3], dtype=torch.uint8).view(torch.bool),
        "contents",
        "obj",
    ),
    (
        "complex",
        lambda: torch.tensor([1 + 2j]),
        lambda: torch.tensor([1 + 3j]),
        "contents",
        "obj",
    ),
    (
        "int64",
        lambda: torch.tensor([2**40]),
        lambda: torch.tensor([2**40 + 1]),
        "contents",
        "obj",
    ),
    (
        "sparse values",
        lambda: sparse([1.0, 2.0]),
        lambda: sparse([1.0, 5.0]),
        "contents",
        "obj._values()",
    ),
    ("quantized scale", lambda: quantized(0.1), lambda: quantized(0.2), "value", "obj.q_scale()"),
    (
        "sparse csc values",
        lambda: compressed("csc"),
        lambda: compressed("csc", [[0.0, 1.5, 0.0], [2.5, 0.0, 0.0]]),
        "contents",
        "obj.values()",
    ),
    (
        "sparse bsr columns",
        lambda: compressed("bsr"),
        lambda: compressed("bsr", [[0.0, 0.0, 1.5], [2.0, 0.0, 0.0]]),
        "contents",
        "obj.col_indices()",
    ),
    (
        "sparse bsc layout",
        lambda: compressed("bsc"),
        lambda: compressed("bsr"),
        "layout",
        "obj",
    ),
    (
        "per-channel zero points",
        lambda: per_channel(torch.tensor([0, 1])),
        lambda: per_channel(torch.tensor([0, 2])),
        "contents",
        "obj.q_per_channel_zero_points()",
    ),
    (
        "float qparams zero points",
        lambda: per_channel(torch.tensor([0.0, 1.0]), torch.quint8),
        lambda: per_channel(torch.tensor([0.0, 1.25]), torch.quint8),  # same int_repr()
        "contents",
        "obj.q_per_channel_zero_points()",
    ),
    (
        "qscheme",
        lambda: per_channel(torch.tensor([0, 1]), torch.quint8),
        lambda: per_channel(torch.tensor([0.0, 1.0]), torch.quint8),
        "qscheme",
        "obj",
    ),
    (
        "conjugate bit",
        lambda: complex_pair().conj(),
        lambda: complex_pair().conj().resolve_conj(),
        "is_conj",
        "obj",
    ),
    (
        "negative bit",
        lambda: complex_pair().conj().imag,
        lambda: complex_pair().conj().imag.resolve_neg(),
        "is_neg",
        "obj",
    ),
    (
        "storage bytes no element reaches",
        lambda: outside_the_view(0.0),
        lambda: outside_the_view(1.0),
        "storage contents",
        "obj",
    ),
    ("zero-size shape", lambda: torch.zeros(0, 2), lambda: torch.zeros(2, 0), "shape", "obj"),
    ("0-d vs 1-d", lambda: torch.tensor(1.0), lambda: torch.tensor([1.0]), "shape", "obj"),
    (
        "nested path",
        lambda: {"optimizer_state_dict": {"state": {3: {"exp_avg": torch.zeros(2)}}}},
        lambda: {"optimizer_state_dict": {"state": {3: {"exp_avg": torch.ones(2)}}}},
        "contents",
        "obj['optimizer_state_dict']['state'][3]['exp_avg']",
    ),
    ("dict vs OrderedDict", lambda: {"a": 1}, lambda: collections.OrderedDict(a=1), "type", "obj"),
    ("list vs tuple", lambda: [1, 2], lambda: (1, 2), "type", "obj"),
    ("namedtuple type", lambda: Point(1, 2), lambda: OtherPoint(1, 2), "type", "obj"),
    ("key order", lambda: {"a": 1, "b": 2}, lambda: {"b": 2, "a": 1}, "key order", "obj"),
    ("missing key", lambda: {"a": 1, "b": 2}, lambda: {"a": 1}, "keys", "obj"),
    ("length", lambda: [1, 2, 3], lambda: [1, 2], "length", "obj"),
    ("int vs float", lambda: 1, lambda: 1.0, "type", "obj"),
    ("int vs bool", lambda: 1, lambda: True, "type", "obj"),
    ("float bits", lambda: 0.0, lambda: -0.0, "value", "obj"),
    (
        "float NaN payload",
        lambda: float_from_bits(0x7FF8000000000001),
        lambda: float_from_bits(0x7FF8000000000002),
        "value",
        "obj",
    ),
    ("string", lambda: "adam", lambda: "sgd", "value", "obj"),
    ("element of list", lambda: [1, [2, 3]], lambda: [1, [2, 4]], "value", "obj[1][1]"),
    (
        "storage sharing lost",
        shared_pair,
        separate_pair,
        "storage sharing",
        "obj['b']",
    ),
    (
        "storage sharing gained",
        separate_pair,
        shared_pair,
        "storage sharing",
        "obj['b']",
    ),
    (
        "same tensor object lost",
        one_tensor_twice,
        lambda: {"a": torch.ones(2), "b": torch.ones(2)},
        "aliasing",
        "obj['b']",
    ),
    (
        "same list object lost",
        same_list_twice,
        lambda: {"a": [1, 2], "b": [1, 2]},
        "aliasing",
        "obj['b']",
    ),
    (
        "same list object gained",
        lambda: {"a": [1, 2], "b": [1, 2]},
        same_list_twice,
        "aliasing",
        "obj['b']",
    ),
    (
        "numpy contents",
        lambda: np.array([1.0, 2.0]),
        lambda: np.array([1.0, 2.5]),
        "contents",
        "obj",
    ),
    ("numpy dtype", lambda: np.zeros(2, np.float32), lambda: np.zeros(2), "dtype", "obj"),
    ("path object", lambda: pathlib.Path("a"), lambda: pathlib.Path("b"), "value", "obj"),
    (
        "namespace",
        lambda: argparse.Namespace(lr=0.1),
        lambda: argparse.Namespace(lr=0.2),
        "value",
        "obj",
    ),
]

IDENTICAL = [
    ("equal NaN payloads", lambda: nan_tensor(3)),
    ("negative zero", lambda: torch.tensor([-0.0, 0.0])),
    ("subnormal", lambda: torch.tensor([1e-40], dtype=torch.float32)),
    ("empty", lambda: torch.zeros(0)),
    ("zero-size 2-d", lambda: torch.zeros(3, 0)),
    ("0-d", lambda: torch.tensor(7.0)),
    ("shared storage on both sides", shared_pair),
    ("same object twice", one_tensor_twice),
    ("same list twice", same_list_twice),
    ("strided view", strided_view),
    ("offset view", offset_view),
    ("size-1 dimension with a non-unit stride", lambda: torch.zeros(1, 2)[:, ::2]),
    ("parameter", lambda: torch.nn.Parameter(torch.ones(2))),
    ("sparse", lambda: sparse([1.0, 2.0])),
    ("quantized", lambda: quantized(0.1)),
    ("conjugate view", lambda: torch.tensor([1 + 2j]).conj()),
    ("negative view", lambda: complex_pair().conj().imag),
    ("sparse csr", lambda: compressed("csr")),
    ("sparse csc", lambda: compressed("csc")),
    ("sparse bsr", lambda: compressed("bsr")),
    ("sparse bsc", lambda: compressed("bsc")),
    ("per-channel quantized", lambda: per_channel(torch.tensor([0, 1]))),
    ("float qparams", lambda: per_channel(torch.tensor([0.0, 1.0]), torch.quint8)),
    ("bytes outside a view", lambda: outside_the_view(2.0)),
    ("nested containers", lambda: {"a": [1, (2.5, "x")], "b": collections.OrderedDict(c=None)}),
    ("namedtuple", lambda: Point(torch.ones(1), 2)),
    ("float NaN", lambda: float("nan")),
    ("numpy array", lambda: np.arange(3)),
]


def assert_caught(expected, actual, aspect: str, path: str) -> None:
    with pytest.raises(AssertionError) as caught:
        assert_identical(expected, actual)
    message = str(caught.value)
    assert message.startswith(f"{path}: {aspect} differs"), message


@pytest.mark.parametrize(
    ("expected", "actual", "aspect", "path"),
    [row[1:] for row in DIFFERENT],
    ids=[row[0] for row in DIFFERENT],
)
def test_single_aspect_difference_is_caught(expected, actual, aspect, path):
    assert_caught(expected(), actual(), aspect, path)


@pytest.mark.parametrize("make", [row[1] for row in IDENTICAL], ids=[row[0] for row in IDENTICAL])
def test_identical_pairs_pass(make):
    # Two independent constructions: identical values, not the same objects.
    assert assert_identical(make(), make()) is None


@pytest.mark.parametrize("dtype", probe().dtypes, ids=str)
def test_every_dtype_compares_bit_for_bit(dtype):
    # bool elements must hold 0 or 1; any byte pattern is a valid element of the others.
    pattern = [0, 1, 1, 0] if dtype == torch.bool else [0, 1, 0x7F, 0xFF]
    raw = torch.tensor(pattern * 4, dtype=torch.uint8)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    expected = raw[: 4 * itemsize].clone().view(dtype)
    changed = raw[: 4 * itemsize].clone()
    changed[-1] ^= 1  # flip one bit of the last element
    assert assert_identical(expected, expected.clone()) is None
    assert_caught(expected, changed.view(dtype), "contents", "obj")


def test_contents_message_gives_index_bits_and_count():
    expected = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    actual = expected.clone()
    actual[1, 0] = -0.0
    actual[1, 1] = float("nan")
    with pytest.raises(AssertionError) as caught:
        assert_identical(expected, actual, name="state['w']")
    message = str(caught.value)
    assert "state['w']: contents differs" in message
    assert "2 / 4 elements (50.0%)" in message
    assert "at index (1, 0): expected 0x40000000 (2.0), actual 0x80000000 (-0.0)" in message
    assert "at index (1, 1)" in message


def test_sharing_message_names_both_paths():
    with pytest.raises(AssertionError) as caught:
        assert_identical(shared_pair(), separate_pair())
    assert "shares storage with obj['a']" in str(caught.value)


def test_cycles_terminate():
    expected, actual = [], []
    expected.append(expected)
    actual.append(actual)
    assert assert_identical(expected, actual) is None


def test_unknown_layout_is_a_clear_error():
    if not hasattr(torch, "nested") or not hasattr(torch.nested, "nested_tensor"):
        pytest.skip("this torch has no nested tensors")
    nested = torch.nested.nested_tensor([torch.zeros(1), torch.zeros(2)])
    with pytest.raises(TypeError, match="nested tensors"):
        assert_identical(nested, nested)


def test_the_difference_is_data():
    with pytest.raises(NotIdentical) as caught:
        assert_identical({"w": torch.zeros(2)}, {"w": torch.zeros(2, dtype=torch.float64)})
    difference = caught.value.difference
    assert isinstance(caught.value, AssertionError)
    assert difference == Difference("obj['w']", "dtype", torch.float32, torch.float64)
    assert str(caught.value) == difference.message()
    assert difference.message() == (
        "obj['w']: dtype differs: expected torch.float32, actual torch.float64"
    )
    assert difference.headline == "obj['w']: dtype differs"


def test_find_difference_returns_the_difference_without_raising():
    assert find_difference([1, 2], [1, 2]) is None
    found = find_difference({"a:b": 1.0}, {"a:b": -1.0}, name="checkpoint")
    assert (found.path, found.aspect, found.expected, found.actual) == (
        "checkpoint['a:b']",
        "value",
        1.0,
        -1.0,
    )
    assert found.headline == "checkpoint['a:b']: value differs"


def test_contents_and_sharing_differences_carry_their_evidence():
    contents = find_difference(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
    assert (contents.expected, contents.actual) == ("0x40000000 (2.0)", "0x40400000 (3.0)")
    sharing = find_difference(shared_pair(), separate_pair())
    assert (sharing.path, sharing.expected, sharing.actual) == ("obj['b']", "obj['a']", None)
    outside = find_difference(outside_the_view(0.0), outside_the_view(1.0))
    assert outside.message() == (
        "obj: storage contents differs: 4 / 20 bytes of the storage differ where no element "
        "of the tensor lies; the first at byte 14: expected 0x00, actual 0x80"
    )


def test_storage_bytes_are_compared_after_everything_else():
    """A difference found before is reported as before: bytes that no element of the first
    view reaches are the second tensor's elements."""
    base = torch.zeros(4)
    changed = base.clone()
    changed[3] = 1.0
    found = find_difference({"head": base[:2], "all": base}, {"head": changed[:2], "all": changed})
    assert (found.path, found.aspect) == ("obj['all']", "contents")


def test_not_identical_survives_pickling():
    with pytest.raises(NotIdentical) as caught:
        assert_identical([1], [2])
    again = pickle.loads(pickle.dumps(caught.value))
    assert again.difference == caught.value.difference and str(again) == str(caught.value)
