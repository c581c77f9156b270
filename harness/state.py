"""The training state a checkpoint saves and restores, and the global RNG states beside it.

:class:`TrainingState` is what a checkpointer saves and restores: model, optimizer,
scheduler, gradient scaler, the position in the data stream (:class:`DataStream`) and plain
extra entries. :func:`snapshot` is what a restored state is compared on.
:func:`global_rng_state` and :func:`set_global_rng_state` read and set the global random
number generators a training step may draw from (torch's CPU generator, Python's
``random``, numpy's global ``RandomState``) as plain data that ``torch.load`` reads back
with ``weights_only=True``; :func:`seed_global_rngs` seeds all three.
"""

from __future__ import annotations

import copy
import functools
import random
from dataclasses import dataclass, field
from typing import Any

import numpy
import torch

__all__ = [
    "DataStream",
    "TrainingState",
    "global_rng_state",
    "seed_global_rngs",
    "set_global_rng_state",
    "snapshot",
]


class DataStream:
    """A stream of batches: shuffled passes over a fixed dataset, one epoch after another.

    ``dataset[i]`` is the ``i``-th batch (the first dimension indexes batches). Each epoch
    visits every batch once, in an order drawn with ``torch.randperm`` from a
    ``torch.Generator`` seeded with ``seed``; :meth:`next_batch` returns the next batch and
    starts a new epoch, with a new order, after the last. The dataset is not part of the
    state (like a data loader's files, it is there again after a restart); the position in
    the stream is: :meth:`state_dict` returns it as tensors and ints, which
    ``torch.load(weights_only=True)`` reads back on every supported torch, and after
    :meth:`load_state_dict` of it the stream gives the same batches, in the same order, as
    the stream it was taken from.
    """

    def __init__(self, dataset: torch.Tensor, seed: int) -> None:
        if not isinstance(dataset, torch.Tensor) or dataset.dim() == 0 or len(dataset) == 0:
            raise ValueError(f"dataset must be a tensor of at least one batch, not {dataset!r}")
        self.dataset = dataset
        self._generator = torch.Generator().manual_seed(seed)
        self._epoch = 0
        self._position = 0
        self._order = torch.randperm(len(dataset), generator=self._generator)

    def __len__(self) -> int:
        """The number of batches in one epoch."""
        return len(self.dataset)

    def next_batch(self) -> torch.Tensor:
        """The next batch of the stream (a new epoch, in a new order, after the last)."""
        if self._position == len(self.dataset):
            self._epoch += 1
            self._position = 0
            self._order = torch.randperm(len(self.dataset), generator=self._generator)
        index = int(self._order[self._position])
        self._position += 1
        return self.dataset[index]

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream: ``epoch`` and ``position`` (batches taken in this
        epoch), ints; ``order``, this epoch's order (int64 tensor); ``generator``, the
        state of the generator that draws the next epoch's order (uint8 tensor)."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "order": self._order.clone(),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from the position ``state_dict`` (of :meth:`state_dict`) describes.

        Raises:
            ValueError: it is not such a state, or its order is not over this dataset.
        """
        expected = {"epoch", "position", "order", "generator"}
        if not isinstance(state_dict, dict) or set(state_dict) != expected:
            keys = sorted(state_dict) if isinstance(state_dict, dict) else state_dict
            raise ValueError(f"a DataStream state has the keys {sorted(expected)}, not {keys!r}")
        order = state_dict["order"].cpu()
        position = state_dict["position"]
        if len(order) != len(self.dataset) or not 0 <= position <= len(order):
            raise ValueError(
                f"the state is of a stream of {len(order)} batches at position {position}; "
                f"this stream has {len(self.dataset)}: load it into a stream over the same dataset"
            )
        self._generator.set_state(state_dict["generator"].cpu())
        self._epoch = state_dict["epoch"]
        self._position = position
        self._order = order.clone()


@dataclass
class TrainingState:
    """Everything a training checkpoint is expected to carry.

    Attributes:
        model: the module being trained.
        optimizer: its optimizer, or None (an inference package has none).
        scheduler: the learning-rate scheduler, or None.
        extra: plain data saved beside them: epoch, loss, model config, preprocessing
            statistics, class names, and so on.
        scaler: the ``torch.amp.GradScaler`` that scales the loss, or None.
        data: the stream the training batches come from (its position is state), or None.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    scaler: Any | None = None
    data: DataStream | None = None


def snapshot(state: TrainingState) -> dict[str, Any]:
    """Everything a restored state must agree on, copied so later training cannot change it:
    ``model``, ``optimizer``, ``scheduler``, ``scaler`` and ``data`` (each one's
    ``state_dict()``, those that are not None) and ``learning_rates`` (of each param group,
    with an optimizer).

    The scheduler's lists and dicts are copied without their sharing: a scheduler's
    ``state_dict()`` may hold one list in two places (SequentialLR's ``_last_lr`` and its
    child's) that a checkpointer writing JSON restores as two equal lists, and no scheduler
    behaves differently for it.
    """
    taken: dict[str, Any] = {"model": state.model.state_dict()}
    if state.optimizer is not None:
        taken["optimizer"] = state.optimizer.state_dict()
        taken["learning_rates"] = [group["lr"] for group in state.optimizer.param_groups]
    if state.scheduler is not None:
        taken["scheduler"] = state.scheduler.state_dict()
    if state.scaler is not None:
        taken["scaler"] = state.scaler.state_dict()
    if state.data is not None:
        taken["data"] = state.data.state_dict()
    taken = copy.deepcopy(taken)
    if "scheduler" in taken:
        taken["scheduler"] = _unshared(taken["scheduler"])
    return taken


def _unshared(value: Any) -> Any:
    """``value`` with every list, tuple and dict in it a new object of its own."""
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_unshared(item) for item in value)
    return value


def _float(value: float) -> torch.Tensor:
    # A float64 tensor, not a float: torch.load(weights_only=True) refuses floats on 1.13.
    return torch.tensor(value, dtype=torch.float64)


def global_rng_state() -> dict[str, Any]:
    """The state of each global random number generator a training step may draw from.

    ``torch``: ``torch.get_rng_state()`` (the CPU generator). ``python``: Python's
    ``random``, as ``version`` (int), ``internal`` (int64 tensor) and ``gauss_next`` (None
    or a float64 tensor). ``numpy``: numpy's global ``RandomState``, as ``key`` (int64
    tensor), ``pos`` and ``has_gauss`` (ints) and ``cached_gaussian`` (float64 tensor).
    Only tensors, ints and None, so that a checkpoint holding it loads with
    ``weights_only=True``; two states compare with :func:`harness.compare.assert_identical`,
    and :func:`set_global_rng_state` sets them back.
    """
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached_gaussian = numpy.random.get_state(legacy=True)
    if name != "MT19937":  # the only bit generator of numpy's global RandomState
        raise RuntimeError(f"numpy's global RandomState uses {name}, not MT19937")
    return {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else _float(gauss_next),
        },
        "numpy": {
            "key": torch.from_numpy(key.astype(numpy.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": _float(cached_gaussian),
        },
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Set the global random number generators to ``state``, of :func:`global_rng_state`
    (its tensors may be on any device: they are read on the CPU)."""
    torch.set_rng_state(state["torch"].cpu())
    python = state["python"]
    gauss_next = python["gauss_next"]
    random.setstate(
        (
            python["version"],
            tuple(python["internal"].tolist()),
            None if gauss_next is None else float(gauss_next),
        )
    )
    generator = state["numpy"]
    numpy.random.set_state(
        (
            "MT19937",
            generator["key"].cpu().numpy().astype(numpy.uint32),
            generator["pos"],
            generator["has_gauss"],
            float(generator["cached_gaussian"]),
        )
    )


def seed_global_rngs(seed: int) -> None:
    """Seed torch's generators, Python's ``random`` and numpy's global ``RandomState`` with
    ``seed``, so that what a training step draws from them is the same on every run.

    Where torch has an accelerator (CUDA, XPU, MPS) this is ``torch.manual_seed``, which
    seeds each device's generators too; elsewhere the CPU generator is all there is, seeded
    alone: ``torch.manual_seed`` would also queue a seed for CUDA's lazy start, recording
    the caller's whole stack to do so (0.5 ms a call inside a Hypothesis test, against
    1 us). Both leave the CPU generator in the same state.
    """
    if _has_accelerator():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    random.seed(seed)
    numpy.random.seed(seed)


@functools.cache
def _has_accelerator() -> bool:
    """Whether torch can use a device with generators of its own: CUDA, XPU or MPS."""
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return (
        torch.cuda.is_available()
        or bool(xpu is not None and xpu.is_available())
        or bool(mps is not None and mps.is_available())
    )
