"""Distributed checkpointers with one planted defect each, as real sharded training code has.

Each is :class:`harness.distributed.DistributedCheckpoint` (DCP's recipe) or plain
``torch.save`` per rank, with one mistake; ``tests/test_distributed.py`` checks that
:func:`harness.distributed.check_distributed_checkpointer` catches each by the invariant it
breaks. Classes at module level: they are pickled to the ranks.

- :class:`RankZeroOnly`: only rank 0 writes its local shard (``if rank == 0: save``), and
  every rank loads that file: the other ranks' shards are never saved.
- :class:`OwnFilePerRank`: each rank ``torch.save``s its local state dicts to a file of its
  own and loads its own file: right at equal world sizes, wrong when resharding.
- :class:`OptimizerDroppedOnResize`: DCP's recipe, but when the loading world size differs
  from the saving one the optimizer state is not loaded (a fresh optimizer is kept).
- :class:`HangsOnLastRank`: DCP's recipe, but the last rank's load waits on a barrier the
  other ranks never reach (a collective never matched).
- :class:`TargetDtypeWins`: each rank saves its shards with ``torch.save`` and copies them
  into the target's tensors on load, so the target's dtype silently wins (a cast).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from harness.distributed import DistributedCheckpoint, ShardedState, _Application
from harness.state import global_rng_state, set_global_rng_state

__all__ = [
    "HangsOnLastRank",
    "OptimizerDroppedOnResize",
    "OwnFilePerRank",
    "RankZeroOnly",
    "TargetDtypeWins",
]


def _local(value: Any) -> Any:
    """``value`` with every DTensor replaced by (a copy of) its local shard."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.to_local().clone()
    if isinstance(value, dict):
        return {key: _local(item) for key, item in value.items()}
    return value


def _parts(state: ShardedState) -> dict[str, Any]:
    parts = {"scheduler": state.scheduler, "data": state.data}
    return {name: part for name, part in parts.items() if part is not None}


def _local_state(state: ShardedState) -> dict[str, Any]:
    """Each rank's own view: its local shards of the model's and the optimizer's state dicts
    (DCP's ``get_state_dict``), the other parts, the RNG states and the extra entries."""
    model, optimizer = get_state_dict(state.model, state.optimizer)
    return {
        "model": _local(model),
        "optimizer": _local(optimizer),
        **{name: part.state_dict() for name, part in _parts(state).items()},
        "rng": global_rng_state(),
        "extra": dict(state.extra),
    }


def _copy_into(target: dict[str, Any], saved: dict[str, Any]) -> None:
    """Copy the saved local shards into the target's (``Tensor.copy_``, which broadcasts a
    smaller shard and casts to the target's dtype); other values replace the target's."""
    from torch.distributed.tensor import DTensor

    for key, value in saved.items():
        into = target.get(key)
        if isinstance(into, DTensor):
            into.to_local().copy_(value)
        elif isinstance(into, torch.Tensor):
            into.copy_(value)
        elif isinstance(into, dict) and isinstance(value, dict):
            _copy_into(into, value)
        else:
            target[key] = value


def _restore_local(into: ShardedState, saved: dict[str, Any]) -> None:
    model, optimizer = get_state_dict(into.model, into.optimizer)
    with torch.no_grad():
        _copy_into(model, saved["model"])
        _copy_into(optimizer, saved["optimizer"])
    set_state_dict(into.model, into.optimizer, model_state_dict=model, optim_state_dict=optimizer)
    for name, part in _parts(into).items():
        part.load_state_dict(saved[name])
    set_global_rng_state(saved["rng"])
    into.extra.update(saved["extra"])


class RankZeroOnly:
    """Only rank 0 saves its local shards (``if rank == 0: torch.save``); every rank loads
    rank 0's file into its own shards."""

    def save(self, state: ShardedState, path: str) -> None:
        local = _local_state(state)
        if state.rank == 0:
            torch.save(local, path)
        dist.barrier()

    def load(self, path: str, into: ShardedState, map_location: Any = None) -> None:
        _restore_local(into, torch.load(path, weights_only=True))


class OwnFilePerRank:
    """Each rank saves its local shards to ``path/rank-N.pt`` and loads its own file."""

    def save(self, state: ShardedState, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        torch.save(_local_state(state), os.path.join(path, f"rank-{state.rank}.pt"))
        dist.barrier()

    def load(self, path: str, into: ShardedState, map_location: Any = None) -> None:
        saved = torch.load(os.path.join(path, f"rank-{into.rank}.pt"), weights_only=True)
        _restore_local(into, saved)


class _WithoutOptimizer(_Application):
    """DCP's application state without the optimizer: the model, the other parts, the RNG
    states and the extra entries."""

    def state_dict(self) -> dict[str, Any]:
        whole = super().state_dict()
        del whole["optimizer"]
        return whole

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_model_state_dict(self.state.model, state_dict["model"])
        self._load_parts(state_dict)


class OptimizerDroppedOnResize(DistributedCheckpoint):
    """DCP's recipe, with the saving world size written beside the checkpoint; loaded at
    another world size, everything but the optimizer state is loaded (the optimizer stays
    fresh), as code that cannot reshard the optimizer does."""

    def save(self, state: ShardedState, path: str) -> None:
        super().save(state, path)
        if state.rank == 0:
            with open(os.path.join(path, "world_size"), "w") as stream:
                stream.write(str(state.world_size))
        dist.barrier()

    def load(self, path: str, into: ShardedState, map_location: Any = None) -> None:
        import torch.distributed.checkpoint as dcp

        with open(os.path.join(path, "world_size")) as stream:
            saved_size = int(stream.read())
        if saved_size == into.world_size:
            super().load(path, into)
        else:
            dcp.load({"app": _WithoutOptimizer(into)}, checkpoint_id=path)


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class TargetDtypeWins:
    """The full-state-dict recipe: rank 0 ``torch.save``s the gathered model and optimizer
    state dicts (``full_state_dict=True``), every rank loads the file and
    ``set_state_dict`` copies the full tensors into its shards, in the target's dtype:
    right at every world size, a silent cast when the target's dtype differs."""

    def save(self, state: ShardedState, path: str) -> None:
        model = get_model_state_dict(state.model, options=_FULL)
        optimizer = get_optimizer_state_dict(state.model, state.optimizer, options=_FULL)
        if state.rank == 0:
            parts = {name: part.state_dict() for name, part in _parts(state).items()}
            whole = {"model": model, "optimizer": optimizer, **parts}
            whole.update(rng=global_rng_state(), extra=dict(state.extra))
            torch.save(whole, path)
        dist.barrier()

    def load(self, path: str, into: ShardedState, map_location: Any = None) -> None:
        saved = torch.load(path, weights_only=True)
        set_state_dict(
            into.model,
            into.optimizer,
            model_state_dict=saved["model"],
            optim_state_dict=saved["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
        # set_state_dict(full_state_dict=True) gives the groups' tuples (Adam's betas) back
        # as lists: put the saved hyperparameters back as they were.
        for group, saved_group in zip(
            into.optimizer.param_groups, saved["optimizer"]["param_groups"], strict=True
        ):
            group.update({key: value for key, value in saved_group.items() if key != "params"})
        for name, part in _parts(into).items():
            part.load_state_dict(saved[name])
        set_global_rng_state(saved["rng"])
        into.extra.update(saved["extra"])


class HangsOnLastRank(DistributedCheckpoint):
    """DCP's recipe; the last rank's load first waits on a barrier no other rank enters."""

    def load(self, path: str, into: ShardedState, map_location: Any = None) -> None:
        if into.rank == into.world_size - 1:
            dist.barrier()
        super().load(path, into)
