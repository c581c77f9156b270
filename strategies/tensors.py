"""Strategies for CPU tensors of every dtype the installed torch supports.

Each tensor is built from a drawn :class:`TensorSpec`: the dtype, the shape, a layout name
and the raw bit pattern of every element of the storage behind it. Element values come from
bit patterns, so NaN payloads, signed zeros, infinities and subnormals all appear, and a
failing example prints a spec that a person can read and paste into ``@example``.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.capabilities import probe
from strategies._arguments import collection_argument

__all__ = [
    "LAYOUTS",
    "TensorSpec",
    "build_tensor",
    "dtypes",
    "layouts",
    "tensor_shapes",
    "tensor_specs",
    "tensors",
]

#: Layout names in the order :func:`layouts` prefers them, simplest first.
LAYOUTS = ("contiguous", "transposed", "strided_slice", "offset_view", "channels_last")

# Floating-point formats by dtype name: (exponent bits, mantissa bits, has a sign bit).
_FLOAT_FORMATS = {
    "float64": (11, 52, True),
    "float32": (8, 23, True),
    "float16": (5, 10, True),
    "bfloat16": (8, 7, True),
    "float8_e4m3fn": (4, 3, True),
    "float8_e4m3fnuz": (4, 3, True),
    "float8_e5m2": (5, 2, True),
    "float8_e5m2fnuz": (5, 2, True),
    "float8_e8m0fnu": (8, 0, False),
}

# Complex dtypes by name: the name of the float dtype of each component.
_COMPLEX_COMPONENTS = {"complex32": "float16", "complex64": "float32", "complex128": "float64"}

# At most this many storage elements differ from the drawn fill pattern.
_DRAWN_ELEMENTS = 16


@dataclass(frozen=True)
class TensorSpec:
    """A plain description of a tensor, from which :func:`build_tensor` builds it.

    Attributes:
        dtype: the tensor's dtype.
        shape: the tensor's shape.
        layout: one of :data:`LAYOUTS`, the one actually applied to ``shape``.
        bits: the bit pattern of each element of the storage, in storage order. A complex
            element holds the real part in its low half and the imaginary part in its high half.
        step: for ``"strided_slice"``, the step of the slice; 1 otherwise.
        offset: for ``"offset_view"``, the storage offset of the view; 0 otherwise.
    """

    dtype: torch.dtype
    shape: tuple[int, ...]
    layout: str
    bits: tuple[int, ...]
    step: int = 1
    offset: int = 0


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@functools.cache
def _component_width(dtype: torch.dtype) -> int:
    """Bits in one component of an element: the whole element, or half of a complex one."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return itemsize * 4 if _dtype_name(dtype) in _COMPLEX_COMPONENTS else itemsize * 8


def _slice_dim(shape: tuple[int, ...]) -> int:
    """The dimension a strided slice steps along: the last one longer than 1, else the last."""
    longer = [d for d, side in enumerate(shape) if side > 1]
    return longer[-1] if longer else len(shape) - 1


def _base_shape(spec_shape: tuple[int, ...], layout: str, step: int, offset: int):
    shape = list(spec_shape)
    if layout == "transposed":
        shape[-2], shape[-1] = shape[-1], shape[-2]
    elif layout == "strided_slice":
        shape[_slice_dim(spec_shape)] *= step
    elif layout == "offset_view":
        shape = [offset + math.prod(spec_shape)]
    elif layout == "channels_last":
        n, c, h, w = shape
        shape = [n, h, w, c]
    return tuple(shape)


def build_tensor(spec: TensorSpec) -> torch.Tensor:
    """Build the CPU tensor that ``spec`` describes.

    For every layout but ``"contiguous"`` the result is a view into a base tensor that owns
    the storage and holds ``spec.bits``: the view shares storage with that base.
    """
    base_shape = _base_shape(spec.shape, spec.layout, spec.step, spec.offset)
    width = _component_width(spec.dtype)
    components = 2 if _dtype_name(spec.dtype) in _COMPLEX_COMPONENTS else 1
    mask = (1 << width) - 1
    raw = bytearray()
    for bits in spec.bits:
        for part in range(components):
            raw += ((bits >> (part * width)) & mask).to_bytes(width // 8, sys.byteorder)
    flat = torch.tensor(list(raw), dtype=torch.uint8).view(spec.dtype)
    base = flat.reshape(base_shape).clone()
    if spec.layout == "transposed":
        return base.transpose(-2, -1)
    if spec.layout == "strided_slice":
        dim = _slice_dim(spec.shape)
        index = [slice(None)] * len(spec.shape)
        index[dim] = slice(None, None, spec.step)
        return base[tuple(index)]
    if spec.layout == "offset_view":
        if not spec.shape:
            return base[spec.offset]
        return base[spec.offset :].view(spec.shape)
    if spec.layout == "channels_last":
        return base.permute(0, 3, 1, 2)
    return base


def dtypes(
    include: Iterable[torch.dtype] | None = None,
    exclude: Iterable[torch.dtype] | None = None,
) -> st.SearchStrategy[torch.dtype]:
    """Dtypes a CPU tensor can have on the installed torch (``probe().dtypes``).

    ``include`` narrows the choice to the dtypes listed, each of which must be supported
    here; ``exclude`` removes dtypes. Draws in the order of ``probe().dtypes`` and shrinks
    toward the simplest, ``torch.float32``.
    """
    supported = probe().dtypes
    included = collection_argument(
        include, name="include", item_type=torch.dtype, example="[torch.float32]"
    )
    excluded = (
        collection_argument(
            exclude, name="exclude", item_type=torch.dtype, example="[torch.float32]"
        )
        or ()
    )
    if included is not None:
        missing = [d for d in included if d not in supported]
        if missing:
            raise InvalidArgument(
                f"include={list(included)!r} names {missing!r}, which the installed torch "
                f"does not support; ask harness.capabilities.probe().dtypes for those it does"
            )
    chosen = [d for d in supported if (included is None or d in included) and d not in excluded]
    if not chosen:
        raise InvalidArgument(
            f"include={include!r} and exclude={exclude!r} leave no dtype to draw; "
            f"the installed torch supports {list(supported)!r}"
        )
    return st.sampled_from(chosen)


def tensor_shapes(
    min_dims: int = 0, max_dims: int = 4, max_side: int = 4
) -> st.SearchStrategy[tuple[int, ...]]:
    """Tensor shapes with ``min_dims`` to ``max_dims`` dimensions, each of size 0 to ``max_side``.

    Includes 0-d shapes (when ``min_dims`` is 0) and zero-size shapes. Shrinks toward fewer
    and smaller dimensions.
    """
    for name, value in (("min_dims", min_dims), ("max_dims", max_dims), ("max_side", max_side)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"{name}={value!r} must be a non-negative int")
    if min_dims > max_dims:
        raise InvalidArgument(f"min_dims={min_dims} must be at most max_dims={max_dims}")
    return st.lists(st.integers(0, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def layouts() -> st.SearchStrategy[str]:
    """Names of ways to lay a tensor out in memory, from :data:`LAYOUTS`.

    ``"contiguous"``: a tensor that owns its storage. ``"transposed"``: the last two
    dimensions of a contiguous base swapped. ``"strided_slice"``: every second or third
    element of a base along one dimension. ``"offset_view"``: a view starting past the
    beginning of a larger base's storage. ``"channels_last"``: a 4-d tensor with
    ``torch.channels_last`` strides. Shrinks toward ``"contiguous"``.
    """
    return st.sampled_from(LAYOUTS)


def _applies(layout: str, ndim: int) -> bool:
    return {"transposed": ndim >= 2, "strided_slice": ndim >= 1, "channels_last": ndim == 4}.get(
        layout, True
    )


def _unsigned_bits(width: int) -> st.SearchStrategy[int]:
    top = (1 << width) - 1
    return st.one_of(
        st.integers(0, 15), st.sampled_from([top, top - 1, 1 << (width - 1)]), st.integers(0, top)
    )


def _signed_bits(width: int) -> st.SearchStrategy[int]:
    mask = (1 << width) - 1
    low, high = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return st.one_of(
        st.integers(-8, 8), st.sampled_from([low, high, -1]), st.integers(low, high)
    ).map(lambda value: value & mask)


def _float_bits(exponent_bits: int, mantissa_bits: int, signed: bool) -> st.SearchStrategy[int]:
    width = exponent_bits + mantissa_bits + int(signed)
    sign_bit = (1 << (width - 1)) if signed else 0
    top_exponent = ((1 << exponent_bits) - 1) << mantissa_bits
    bias = (1 << (exponent_bits - 1)) - 1
    signs = st.sampled_from([0, sign_bit]) if signed else st.just(0)
    extra = min(mantissa_bits, 3)
    ordinary = st.builds(
        lambda sign, exponent, fraction: (
            sign | ((bias + exponent) << mantissa_bits) | (fraction << (mantissa_bits - extra))
        ),
        signs,
        st.integers(-3, 3),
        st.integers(0, (1 << extra) - 1),
    )
    specials = [sign_bit, top_exponent, sign_bit | top_exponent]
    choices = [st.just(0), ordinary, st.sampled_from(specials)]
    if mantissa_bits >= 1:
        quiet = 1 << (mantissa_bits - 1)
        choices.append(
            st.builds(
                lambda sign, is_quiet, payload: (
                    sign
                    | top_exponent
                    | (quiet if is_quiet else 0)
                    | (payload if is_quiet or payload else 1)
                ),
                signs,
                st.booleans(),
                st.integers(0, quiet - 1),
            )
        )
        fractions = st.integers(1, (1 << mantissa_bits) - 1)
        choices.append(st.builds(lambda sign, fraction: sign | fraction, signs, fractions))
    choices.append(st.integers(0, (1 << width) - 1))
    return st.one_of(choices)


@functools.cache
def _element_bits(dtype: torch.dtype) -> st.SearchStrategy[int]:
    """Bit patterns of single elements of ``dtype``, shrinking toward all bits zero."""
    name = _dtype_name(dtype)
    if dtype == torch.bool:
        return st.integers(0, 1)
    if name in _FLOAT_FORMATS:
        return _float_bits(*_FLOAT_FORMATS[name])
    if name in _COMPLEX_COMPONENTS:
        component = _float_bits(*_FLOAT_FORMATS[_COMPLEX_COMPONENTS[name]])
        width = _component_width(dtype)
        return st.tuples(component, component).map(lambda pair: pair[0] | (pair[1] << width))
    width = _component_width(dtype)
    return _signed_bits(width) if dtype.is_signed else _unsigned_bits(width)


@functools.cache
def _changes(dtype: torch.dtype, count: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Up to 16 (position, bits) changes to a storage of ``count`` elements of ``dtype``:
    built once per dtype and count, not at every draw (building and validating a strategy
    costs more than drawing from it)."""
    changes = st.tuples(st.integers(0, count - 1), _element_bits(dtype))
    return st.lists(changes, max_size=min(count, _DRAWN_ELEMENTS))


@st.composite
def _storage_bits(draw: st.DrawFn, dtype: torch.dtype, count: int) -> tuple[int, ...]:
    """One fill pattern for every element, then up to 16 elements drawn one by one.

    The draws do not depend on the shape beyond ``count``, so shrinking the shape does not
    disturb the element draws.
    """
    bits = [draw(_element_bits(dtype))] * count
    if count:
        for position, value in draw(_changes(dtype, count)):
            bits[position] = value
    return tuple(bits)


_STEPS = st.integers(2, 3)
_OFFSETS = st.integers(1, 4)


@st.composite
def _drawn_specs(
    draw: st.DrawFn,
    dtypes: st.SearchStrategy[torch.dtype],
    shapes: st.SearchStrategy[tuple[int, ...]],
    layouts: st.SearchStrategy[str],
) -> TensorSpec:
    dtype = draw(dtypes)
    shape = tuple(draw(shapes))
    layout = draw(layouts)
    if layout not in LAYOUTS:
        raise InvalidArgument(f"layouts drew {layout!r}, which is not one of {LAYOUTS!r}")
    if not _applies(layout, len(shape)):
        layout = "contiguous"
    # Drawn for every layout, so that shrinking the layout keeps later draws in step.
    step, offset = draw(_STEPS), draw(_OFFSETS)
    step = step if layout == "strided_slice" else 1
    offset = offset if layout == "offset_view" else 0
    count = math.prod(_base_shape(shape, layout, step, offset))
    bits = draw(_storage_bits(dtype, count))
    event(f"dtype: {dtype}")
    event(f"layout: {layout}")
    return TensorSpec(dtype, shape, layout, bits, step, offset)


_ALL_DTYPES = st.deferred(dtypes)
_SMALL_SHAPES = tensor_shapes()
_ALL_LAYOUTS = layouts()


def tensor_specs(
    dtypes: st.SearchStrategy[torch.dtype] = _ALL_DTYPES,
    shapes: st.SearchStrategy[tuple[int, ...]] = _SMALL_SHAPES,
    layouts: st.SearchStrategy[str] = _ALL_LAYOUTS,
) -> st.SearchStrategy[TensorSpec]:
    """The :class:`TensorSpec` values behind :func:`tensors`; same arguments, same shrinking.

    Useful to see which layout was applied, or to build the tensor more than once.
    """
    for name, value in (("dtypes", dtypes), ("shapes", shapes), ("layouts", layouts)):
        if not isinstance(value, st.SearchStrategy):
            raise InvalidArgument(f"{name}={value!r} must be a strategy, e.g. {name}=st.just(...)")
    return _drawn_specs(dtypes, shapes, layouts)


def tensors(
    dtypes: st.SearchStrategy[torch.dtype] = _ALL_DTYPES,
    shapes: st.SearchStrategy[tuple[int, ...]] = _SMALL_SHAPES,
    layouts: st.SearchStrategy[str] = _ALL_LAYOUTS,
) -> st.SearchStrategy[torch.Tensor]:
    """CPU tensors with a dtype from ``dtypes``, a shape from ``shapes`` and a layout name
    from ``layouts``.

    Element values are drawn as bit patterns, mixing zero, small ordinary values, signed
    zeros, infinities, NaNs with several payloads (quiet and signalling, either sign),
    subnormals and arbitrary bits; bool elements are 0 or 1. A layout that does not apply
    to the drawn shape (``"transposed"`` below 2 dimensions, ``"strided_slice"`` on a 0-d
    shape, ``"channels_last"`` unless 4-d) gives a contiguous tensor. Views share storage
    with a larger base tensor. Shrinks toward the first dtype, the simplest shape, a
    contiguous layout and all element bits zero.
    """
    return tensor_specs(dtypes, shapes, layouts).map(build_tensor)
