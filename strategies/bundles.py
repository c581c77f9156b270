"""Strategies for checkpoint bundles: the dictionaries users pass to ``torch.save``.

:func:`bundles` draws checkpoints shaped like the ones training scripts write (epoch, model
and optimizer state dicts, losses, configuration, RNG state, ...). :func:`weights_only_contents`
draws arbitrary nested content that ``torch.load(weights_only=True)`` accepts on the installed
torch, and :func:`unsafe_contents` draws values it must refuse. Tensors in bundles and
contents share storage the way real checkpoints do: the same tensor in two places (tied
weights) and views into one base at different offsets (flattened parameters).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import pathlib
from typing import Any

import numpy as np
import torch
from hypothesis import event
from hypothesis import strategies as st

from harness.capabilities import (
    probe,
    weights_only_loadable_dtypes,
    weights_only_loadable_types,
    weights_only_loads_empty_bytes,
)
from strategies.tensors import dtypes, layouts, tensors

__all__ = [
    "CheckpointNote",
    "TrainingConfig",
    "UnsafeContent",
    "bundles",
    "unsafe_contents",
    "weights_only_contents",
]


@dataclasses.dataclass(frozen=True)
class UnsafeContent:
    """A value that ``torch.load(weights_only=True)`` must refuse, and what kind it is."""

    kind: str
    value: object


@dataclasses.dataclass
class TrainingConfig:
    """A training configuration as users keep it in a dataclass."""

    learning_rate: float
    batch_size: int
    model_name: str


class CheckpointNote:
    """A user's own class, stored in a checkpoint as an instance."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return type(other) is CheckpointNote and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"CheckpointNote({self.text!r})"


@dataclasses.dataclass(frozen=True)
class _SharedRef:
    """A placeholder, replaced after drawing, for a tensor that shares storage.

    ``length`` 0 stands for shared base number ``base`` itself (the same object wherever it
    appears); otherwise for a 1-d view of up to ``length`` elements into that base, starting
    at element ``start`` (taken modulo the base's size).
    """

    base: int
    start: int
    length: int


_SHARED_REFS = st.builds(
    _SharedRef, st.integers(0, 1), st.integers(0, 7), st.one_of(st.just(0), st.integers(1, 8))
)
_FLOAT_DTYPES = st.deferred(
    lambda: dtypes(include=[d for d in probe().dtypes if d.is_floating_point])
)
_SHARED_BASES = tensors(
    dtypes=_FLOAT_DTYPES,
    shapes=st.integers(2, 8).map(lambda n: (n,)),
    layouts=st.just("contiguous"),
)


def _resolve(draw: st.DrawFn, value: Any, bases: dict[int, torch.Tensor]) -> Any:
    """``value`` with every :class:`_SharedRef` in it replaced by a tensor.

    Each shared base is drawn the first time a reference to it is met; containers keep
    their exact type and order.
    """
    if isinstance(value, _SharedRef):
        if value.base not in bases:
            bases[value.base] = draw(_SHARED_BASES)
        base = bases[value.base]
        if not value.length:
            return base
        start = value.start % base.shape[0]
        return base[start : start + value.length]
    if type(value) is collections.OrderedDict:
        return collections.OrderedDict((k, _resolve(draw, v, bases)) for k, v in value.items())
    if type(value) is dict:
        return {k: _resolve(draw, v, bases) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_resolve(draw, item, bases) for item in value)
    return value


@functools.cache
def _parameters(shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    """Floating-point tensors of ``shape`` in any layout."""
    return tensors(dtypes=_FLOAT_DTYPES, shapes=st.just(shape), layouts=layouts())


_SIDES = st.integers(1, 3)
_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
# The strategies the composites below draw from are built once, not at every draw: building
# and validating a strategy costs more than drawing from it.
_LAYER_KINDS = st.lists(
    st.sampled_from(["linear", "batchnorm", "conv", "embedding", "flat_rnn"]),
    min_size=1,
    max_size=4,
)
_BATCHES_TRACKED = st.integers(0, 10_000)
_BOOLEANS = st.booleans()


@st.composite
def _model_state_dicts(draw: st.DrawFn) -> collections.OrderedDict:
    state: collections.OrderedDict[str, Any] = collections.OrderedDict()
    for index, kind in enumerate(draw(_LAYER_KINDS)):
        if kind == "linear":
            out_features, in_features = draw(_SIDES), draw(_SIDES)
            state[f"encoder.{index}.weight"] = draw(_parameters((out_features, in_features)))
            if draw(_BOOLEANS):
                state[f"encoder.{index}.bias"] = draw(_parameters((out_features,)))
        elif kind == "batchnorm":
            features = (draw(_SIDES),)
            for name in ("weight", "bias", "running_mean", "running_var"):
                state[f"bn{index}.{name}"] = draw(_parameters(features))
            tracked = draw(_BATCHES_TRACKED)
            state[f"bn{index}.num_batches_tracked"] = torch.tensor(tracked, dtype=torch.int64)
        elif kind == "conv":
            shape = tuple(draw(_SIDES) for _ in range(4))
            state[f"conv{index}.weight"] = draw(_parameters(shape))
        elif kind == "embedding":
            weight = draw(_parameters((draw(_SIDES), draw(_SIDES))))
            state[f"embed{index}.weight"] = weight
            if draw(_BOOLEANS):
                state[f"lm_head{index}.weight"] = weight
        else:
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"):
                state[f"rnn{index}.{name}"] = draw(_SHARED_REFS)
    return state


_PARAMETER_COUNTS = st.integers(0, 3)
_BUFFERS = st.one_of(_SIDES.flatmap(lambda side: _parameters((side,))), _SHARED_REFS)
_STEPS = st.integers(0, 1000)
_LEARNING_RATES = st.floats(1e-6, 1.0)
_BETAS = st.floats(0.0, 0.9999)
_MOMENTA = st.floats(0.0, 0.99)
_WEIGHT_DECAYS = st.floats(0.0, 0.1)


@functools.cache
def _parameter_indices(count: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, max(count - 1, 0)), unique=True, max_size=count)


@st.composite
def _optimizer_state_dicts(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(_PARAMETER_COUNTS)
    adam = draw(_BOOLEANS)
    buffers = _BUFFERS
    state: dict[int, dict[str, Any]] = {}
    for param in draw(_parameter_indices(count)):
        if adam:
            step = torch.tensor(float(draw(_STEPS)))
            state[param] = {"step": step, "exp_avg": draw(buffers), "exp_avg_sq": draw(buffers)}
        else:
            state[param] = {"momentum_buffer": draw(buffers)}
    group: dict[str, Any] = {"lr": draw(_LEARNING_RATES)}
    if adam:
        group.update(betas=(draw(_BETAS), draw(_BETAS)), eps=1e-8, amsgrad=draw(_BOOLEANS))
    else:
        group.update(momentum=draw(_MOMENTA), nesterov=draw(_BOOLEANS))
    group["weight_decay"] = draw(_WEIGHT_DECAYS)
    group["params"] = list(range(count))
    return {"state": state, "param_groups": [group]}


@st.composite
def _scheduler_state_dicts(draw: st.DrawFn) -> dict[str, Any]:
    base_lrs = draw(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=2))
    return {
        "step_size": draw(st.integers(1, 100)),
        "gamma": draw(st.floats(0.01, 1.0)),
        "base_lrs": base_lrs,
        "last_epoch": draw(st.integers(-1, 1000)),
        "_step_count": draw(st.integers(0, 1000)),
        "_get_lr_called_within_step": False,
        "_last_lr": list(base_lrs),
    }


_RNG_STATES = st.integers(0, 2**63 - 1).map(
    lambda seed: torch.Generator().manual_seed(seed).get_state()
)

_MODEL_CONFIGS = st.fixed_dictionaries(
    {"hidden_size": st.integers(1, 4096)},
    optional={
        "num_layers": st.integers(1, 48),
        "dropout": st.floats(0.0, 1.0),
        "activation": st.sampled_from(["relu", "gelu", "tanh"]),
        "bias": st.booleans(),
        "layer_sizes": st.lists(st.integers(1, 512), max_size=4),
    },
)

_VERSIONS = st.builds("{}.{}.{}".format, st.integers(0, 2), st.integers(0, 13), st.integers(0, 3))

_BUNDLE_ENTRIES = st.fixed_dictionaries(
    {},
    optional={
        "epoch": st.integers(0, 1000),
        "model_state_dict": _model_state_dicts(),
        "optimizer_state_dict": _optimizer_state_dicts(),
        "scheduler_state_dict": _scheduler_state_dicts(),
        "loss": st.one_of(st.floats(), st.floats().map(torch.tensor)),
        "train_loss": st.lists(st.floats(), max_size=4),
        "val_loss": st.lists(st.floats(), max_size=4),
        "model_config": _MODEL_CONFIGS,
        "normalization": st.fixed_dictionaries(
            {
                "mean": st.lists(st.floats(0, 1), min_size=3, max_size=3),
                "std": st.lists(st.floats(0.01, 1), min_size=3, max_size=3),
            }
        ),
        "class_names": st.lists(_NAMES, max_size=4),
        "timestamp": st.one_of(
            st.datetimes().map(lambda moment: moment.isoformat()), st.floats(0, 2e9)
        ),
        "torch_version": _VERSIONS,
        "rng_state": _RNG_STATES,
    },
)


@st.composite
def _bundles(draw: st.DrawFn) -> dict[str, Any]:
    bundle = _resolve(draw, draw(_BUNDLE_ENTRIES), {})
    for key in bundle:
        event(f"bundle key: {key}")
    return bundle


def bundles() -> st.SearchStrategy[dict[str, Any]]:
    """Checkpoint dictionaries as training scripts write them; every key is optional.

    Keys: ``epoch``; ``model_state_dict`` (an ``OrderedDict`` of realistic parameter and
    buffer names such as ``encoder.0.weight`` and ``bn1.num_batches_tracked``, with tied
    weights and views into shared flat buffers); ``optimizer_state_dict`` (Adam- or SGD-
    shaped, whose buffers may alias the model's storage); ``scheduler_state_dict``; ``loss``
    (a float or a 0-d tensor); ``train_loss`` and ``val_loss``; ``model_config``;
    ``normalization`` (mean and std); ``class_names``; ``timestamp`` (an ISO string or a
    float); ``torch_version``; ``rng_state`` (a CPU generator's state). Everything in a bundle
    is loadable with ``weights_only=True`` except floats where the installed torch refuses
    them (``float`` not in :func:`harness.capabilities.weights_only_loadable_types`; 1.13.1).
    Shrinks toward the empty dictionary.
    """
    return _bundles()


@functools.cache
def _leaves() -> st.SearchStrategy[Any]:
    """Scalars, fresh tensors and shared-storage placeholders, in equal measure."""
    loadable = weights_only_loadable_types()
    # 1.13.1's weights-only unpickler refuses floats (finding 8).
    floats = [st.floats()] if float in loadable else []
    scalars = [st.none(), st.booleans(), st.integers(), *floats, st.text(max_size=8)]
    optional = [
        (complex, st.complex_numbers()),
        # Empty bytes need builtins.bytes, which weights_only refuses here (finding 25).
        (bytes, st.binary(min_size=0 if weights_only_loads_empty_bytes() else 1, max_size=8)),
        (bytearray, st.binary(max_size=8).map(bytearray)),
        (set, st.sets(st.one_of(st.integers(), st.text(max_size=4)), max_size=3)),
        (frozenset, st.frozensets(st.integers(), max_size=3)),
        (torch.Size, st.lists(st.integers(0, 8), max_size=3).map(torch.Size)),
        (torch.dtype, st.deferred(lambda: dtypes(include=weights_only_loadable_dtypes()))),
        (torch.device, st.just(torch.device("cpu"))),
        (torch.layout, st.just(torch.strided)),
    ]
    scalars.extend(strategy for kind, strategy in optional if kind in loadable)
    fresh = tensors(shapes=st.lists(st.integers(0, 3), max_size=2).map(tuple))
    # A flat one_of would weigh each scalar kind as much as each kind of tensor.
    groups = (st.one_of(scalars), fresh, _SHARED_REFS)
    return st.sampled_from(groups).flatmap(lambda group: group)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(max_size=6), st.integers(-5, 5))
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=3),
        st.lists(st.tuples(keys, children), max_size=3).map(collections.OrderedDict),
    )


_NESTED = st.deferred(lambda: st.recursive(_leaves(), _containers, max_leaves=8))


@st.composite
def _weights_only_contents(draw: st.DrawFn) -> Any:
    return _resolve(draw, draw(_NESTED), {})


def weights_only_contents() -> st.SearchStrategy[Any]:
    """Small nested values made only of what ``torch.load(weights_only=True)`` accepts here.

    Containers are dicts, ``OrderedDict``, lists and tuples; leaves are None, bools, ints,
    strings and tensors, plus floats, complex numbers, bytes, bytearrays, sets, frozensets,
    ``torch.Size``, dtypes, devices and layouts where the installed torch's weights-only
    unpickler accepts them (see :func:`harness.capabilities.weights_only_loadable_types`
    and, for dtypes, :func:`~harness.capabilities.weights_only_loadable_dtypes`).
    Scalars, fresh tensors and shared tensors are drawn in equal measure; a shared tensor is
    one of two base tensors (the same object wherever it appears) or a 1-d view into one at
    a drawn offset, so storage sharing is common. Shrinks toward ``None``.
    """
    return _weights_only_contents()


def _object_arrays() -> st.SearchStrategy[np.ndarray]:
    def to_array(items: list[Any]) -> np.ndarray:
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array

    return st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3).map(to_array)


_UNSAFE_VALUES = {
    "dataclass": st.builds(TrainingConfig, st.floats(1e-6, 1.0), st.integers(1, 512), _NAMES),
    "namespace": st.builds(argparse.Namespace, lr=st.floats(1e-6, 1.0), epochs=st.integers(1, 100)),
    "numpy_array": st.lists(st.floats(allow_nan=False), max_size=4).map(np.array),
    "numpy_object_array": _object_arrays(),
    "path": st.lists(_NAMES, min_size=1, max_size=3).map(lambda parts: pathlib.Path(*parts)),
    "custom_class": st.builds(CheckpointNote, st.text(max_size=8)),
}


@st.composite
def _unsafe_contents(draw: st.DrawFn) -> UnsafeContent:
    kind = draw(st.sampled_from(sorted(_UNSAFE_VALUES)))
    event(f"unsafe kind: {kind}")
    return UnsafeContent(kind, draw(_UNSAFE_VALUES[kind]))


def unsafe_contents() -> st.SearchStrategy[UnsafeContent]:
    """Values ``torch.load(weights_only=True)`` must refuse, each as an :class:`UnsafeContent`.

    Kinds: ``"custom_class"`` (a :class:`CheckpointNote`), ``"dataclass"`` (a
    :class:`TrainingConfig`), ``"namespace"`` (an ``argparse.Namespace``), ``"numpy_array"``
    (numeric), ``"numpy_object_array"`` and ``"path"`` (a ``pathlib.Path``). Shrinks toward
    the first kind in that order and its simplest value.
    """
    return _unsafe_contents()
