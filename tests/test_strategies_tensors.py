"""Tests of strategies.tensors: drawn tensors match their spec, every dtype, layout and
special value is reachable, views share storage, and failures shrink to small tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.capabilities import probe, tensor_storage
from strategies.tensors import (
    LAYOUTS,
    TensorSpec,
    build_tensor,
    dtypes,
    layouts,
    tensor_shapes,
    tensor_specs,
    tensors,
)

# Reachability only needs an example, not the smallest one: no shrinking.
FIND = settings(database=None, derandomize=True, max_examples=1000, phases=[Phase.generate])
SHRINK = settings(database=None, derandomize=True, max_examples=1000)
FLOATS = [
    d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16) if d in probe().dtypes
]
# 4-d shapes with every side at least 2, where every layout applies and makes a real view.
WIDE_4D = st.tuples(*[st.integers(2, 3)] * 4)


def storage_pointer(tensor: torch.Tensor) -> int:
    storage = tensor_storage(tensor)
    return storage.data_ptr()


def storage_bytes(tensor: torch.Tensor) -> int:
    storage = tensor_storage(tensor)
    return storage.nbytes()


def element_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The elements' raw bytes, one row per element."""
    flat = tensor.clone(memory_format=torch.contiguous_format).reshape(-1)
    return flat.view(torch.uint8).reshape(flat.numel(), flat.element_size())


def integer_view(tensor: torch.Tensor) -> torch.Tensor:
    """The elements' bits as signed integers of the same width (int64 for the result)."""
    kind = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.contiguous().reshape(-1).view(kind).to(torch.int64)


@given(st.data())
def test_tensors_have_the_drawn_dtype_and_shape(data):
    dtype = data.draw(dtypes(), label="dtype")
    shape = data.draw(tensor_shapes(), label="shape")
    tensor = data.draw(tensors(dtypes=st.just(dtype), shapes=st.just(shape)), label="tensor")
    assert tensor.dtype == dtype
    assert tuple(tensor.shape) == shape
    assert tensor.device.type == "cpu"


@given(tensor_specs())
def test_build_tensor_follows_the_spec(spec):
    tensor = build_tensor(spec)
    assert (tensor.dtype, tuple(tensor.shape)) == (spec.dtype, spec.shape)
    assert storage_bytes(tensor) == len(spec.bits) * tensor.element_size()
    assert (tensor.storage_offset() > 0) == (spec.layout == "offset_view")


@given(tensors(dtypes=dtypes(include=[torch.bool])))
def test_bool_elements_are_zero_or_one(tensor):
    assert set(tensor.view(torch.uint8).reshape(-1).tolist()) <= {0, 1}


@given(tensor_specs(shapes=WIDE_4D))
def test_views_share_storage_with_a_larger_base(spec):
    tensor = build_tensor(spec)
    if spec.layout == "contiguous":
        assert tensor.is_contiguous()
        assert tensor._base is None
        return
    base = tensor._base
    assert base is not None
    assert storage_pointer(base) == storage_pointer(tensor)
    if spec.layout == "offset_view":
        assert tensor.is_contiguous()
        assert tensor.storage_offset() > 0
        assert storage_bytes(tensor) > tensor.numel() * tensor.element_size()
    else:
        assert not tensor.is_contiguous()
    if spec.layout == "strided_slice":
        assert base.numel() >= 2 * tensor.numel()
    if spec.layout == "channels_last":
        assert tensor.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", probe().dtypes, ids=str)
def test_every_dtype_is_reachable_with_varied_elements(dtype):
    def varied(tensor):
        return tensor.numel() >= 2 and element_bytes(tensor).unique(dim=0).shape[0] >= 2

    found = find(tensors(dtypes=dtypes(include=[dtype])), varied, settings=FIND)
    assert found.dtype == dtype


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_is_reachable(layout):
    found = find(tensor_specs(), lambda spec: spec.layout == layout, settings=FIND)
    assert build_tensor(found).shape == found.shape


def is_negative_zero(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor == 0) & torch.signbit(tensor)


def is_subnormal(tensor: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(tensor) & (tensor != 0) & (tensor.abs() < torch.finfo(tensor.dtype).tiny)


def has_unusual_nan(tensor: torch.Tensor) -> bool:
    """A NaN other than the one ``float('nan')`` gives, e.g. signalling or negative."""
    default = integer_view(torch.tensor([float("nan")], dtype=tensor.dtype))
    bits = integer_view(tensor)
    return bool((torch.isnan(tensor.reshape(-1)) & (bits != default)).any())


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize(
    "special",
    [
        has_unusual_nan,
        lambda t: bool(is_negative_zero(t).any()),
        lambda t: bool(is_subnormal(t).any()),
        lambda t: bool(torch.isposinf(t).any()),
        lambda t: bool(torch.isneginf(t).any()),
    ],
    ids=["nan_payload", "negative_zero", "subnormal", "positive_inf", "negative_inf"],
)
def test_special_values_are_reachable(dtype, special):
    found = find(tensors(dtypes=dtypes(include=[dtype])), special, settings=FIND)
    assert found.dtype == dtype and special(found)


def test_non_contiguous_failures_shrink_to_a_small_tensor():
    found = find(tensors(), lambda t: not t.is_contiguous(), settings=SHRINK)
    assert not found.is_contiguous()
    assert found.numel() <= 4
    assert found.ndim <= 2


def test_shapes_include_zero_dimensional_and_zero_size():
    assert find(tensor_shapes(), lambda shape: shape == (), settings=FIND) == ()
    assert find(tensor_shapes(min_dims=2), lambda shape: 0 in shape, settings=SHRINK) == (0, 0)


@given(tensor_shapes(min_dims=1, max_dims=3, max_side=2))
def test_shapes_respect_their_bounds(shape):
    assert 1 <= len(shape) <= 3
    assert all(0 <= side <= 2 for side in shape)


def test_specs_print_readably():
    spec = TensorSpec(torch.float32, (2,), "strided_slice", (0, 1, 2, 3), step=2)
    assert "strided_slice" in repr(spec)
    assert integer_view(build_tensor(spec)).tolist() == [0, 2]


@pytest.mark.parametrize(
    "make",
    [
        lambda: dtypes(include="float32"),
        lambda: dtypes(include=[torch.float32, "int8"]),
        lambda: dtypes(exclude=probe().dtypes),
        lambda: dtypes(include=[torch.float32], exclude=[torch.float32]),
        lambda: tensor_shapes(min_dims=3, max_dims=2),
        lambda: tensor_shapes(max_side=-1),
        lambda: tensors(dtypes=torch.float32),
        lambda: tensor_specs(layouts="contiguous"),
    ],
)
def test_bad_arguments_are_rejected(make):
    with pytest.raises(InvalidArgument):
        make()


def test_unknown_layout_names_are_rejected():
    with pytest.raises(InvalidArgument):
        find(tensors(layouts=st.just("sparse")), lambda t: True, settings=FIND)


def test_layouts_shrink_toward_contiguous():
    assert find(layouts(), lambda name: True, settings=SHRINK) == "contiguous"
