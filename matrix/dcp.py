"""torch.distributed.checkpoint (DCP) checkpoints in the matrix: written at world size 2,
read back at world sizes 1 and 3 (resharding, uneven shards), by every torch version.

Each item of :data:`ITEMS` is one DCP checkpoint (a folder of ``.metadata`` and one
``.distcp`` file per saving rank). :func:`write_dcp` writes every item in one launch of a
gloo process group of :data:`WRITER_WORLD_SIZE` ranks (forkserver processes on 127.0.0.1, one
CPU thread each, :data:`TIMEOUT` seconds at most, every process reaped:
:func:`harness.distributed.run_group`) and records, for each, :func:`matrix.describe.describe`
of the full tensors the ranks gathered from their shards. :func:`read_dcp` loads every given
checkpoint in one launch per world size of :data:`LOAD_MODES` into a fresh state built from
another seed, gathers it and compares its description with the manifest's, bit for bit:
``identical``, ``differs`` (the first difference), ``error`` (the exception, one line) or
``crashed`` (a rank died, or the time limit passed). Writing twice on one torch gives the
same manifest: every value comes from fixed seeds.

The API each torch offers is looked up, not inferred from its version; the newest one found
is used, and what an item needs but the torch lacks makes it unwritable (and its reading an
``error``) with the reason. By torch's sources and documentation:

- 1.13.1: no ``torch.distributed.checkpoint`` (its ``torch.distributed._shard.checkpoint``
  has no DTensor, and fails to import on Python 3.11: ``ValueError: mutable default``):
  both items unwritable, ``ImportError``.
- 2.0 and 2.1: ``save_state_dict``/``load_state_dict`` with a ``FileSystemWriter``/
  ``FileSystemReader``; DTensor in ``torch.distributed._tensor``, whose ``DeviceMesh``
  builds the mesh on 2.0 (``init_device_mesh`` is in
  ``torch.distributed._tensor.device_mesh`` on 2.1). ``training`` needs more.
- 2.2 on: ``save``/``load`` (``save_state_dict`` deprecated; ``checkpoint_id`` only from
  2.3, so every version is given a ``FileSystemWriter``/``FileSystemReader``), and
  ``init_device_mesh`` in ``torch.distributed.device_mesh``.
- What the matrix found besides (``matrix/results.json``): FSDP2 on a CPU mesh trains only
  from 2.7 (2.3 and 2.4 need a CUDA driver, 2.5 "FSDP requires CUDA for streams", 2.6 a
  stream without ``record_event``), so ``training`` is written from 2.7 on; 2.3's ``load``
  leaves the state dict's non-tensor values (the ``int``) as they were
  (pytorch/pytorch#125528, #125096).
- ``training`` needs ``get_state_dict``/``set_state_dict`` of
  ``torch.distributed.checkpoint.state_dict`` (documented from 2.3) and FSDP2's
  ``fully_shard`` (``torch.distributed._composable.fsdp``, public in
  ``torch.distributed.fsdp`` from 2.6), as :mod:`harness.distributed` finds it.
- 2.5 on: DTensor public in ``torch.distributed.tensor`` (where the 2.x releases before
  keep only tensor parallelism).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness.capabilities import torch_version
from harness.persistence import explain_error
from matrix.describe import describe, first_difference

__all__ = [
    "ITEMS",
    "LOAD_MODES",
    "TIMEOUT",
    "WRITER_WORLD_SIZE",
    "DcpItem",
    "missing_api",
    "read_dcp",
    "write_dcp",
]

#: The world size every checkpoint is written at.
WRITER_WORLD_SIZE = 2
#: How each checkpoint is read: at world size 1 (every shard gathered on one rank) and 3
#: (resharded; the row counts of the items split unevenly over 3 ranks).
LOAD_MODES = ("world_size_1", "world_size_3")
_LOAD_WORLD_SIZES = {"world_size_1": 1, "world_size_3": 3}
#: Seconds one process group may take, from starting its ranks to their end (a few seconds
#: on two cores; a rank still running then is a crash of every load of that launch).
TIMEOUT = 60.0
# The seeds of the state written and of the fresh state it is loaded into.
_WRITTEN_SEED, _FRESH_SEED = 20261201, 1
_TRAINING_STEPS = 3
# The learning rates of the written and the fresh optimizer: loading must restore the first.
_WRITTEN_LR, _FRESH_LR = 0.01, 0.5
# Where each name of the API is looked for, newest home first.
_DTENSOR_HOMES = ("torch.distributed.tensor", "torch.distributed._tensor")
_MESH_HOMES = ("torch.distributed.device_mesh", "torch.distributed._tensor.device_mesh")
_STATE_DICT_HOME = "torch.distributed.checkpoint.state_dict"


# --- what the installed torch offers ---------------------------------------------------------


def _dcp() -> Any:
    """``torch.distributed.checkpoint``; ImportError naming the torch that lacks it."""
    if not torch.distributed.is_available():
        raise ImportError(f"torch {torch_version()} was built without torch.distributed")
    try:
        return importlib.import_module("torch.distributed.checkpoint")
    except ImportError as error:
        raise ImportError(
            f"torch {torch_version()} has no torch.distributed.checkpoint ({error})"
        ) from error


def _home(homes: Sequence[str], name: str) -> Any:
    """The first module of ``homes`` that has ``name``; ImportError naming them all."""
    for home in homes:
        try:
            module = importlib.import_module(home)
        except ImportError:
            continue
        if hasattr(module, name):
            return module
    raise ImportError(f"torch {torch_version()} has no {name} in {' or '.join(homes)}")


def _found(homes: Sequence[str], name: str) -> Any:
    """``name`` from the first of ``homes`` that has it."""
    return getattr(_home(homes, name), name)


def _dtensor() -> Any:
    """The DTensor module (``DTensor``, ``Shard``, ``Replicate``, ``distribute_tensor``)."""
    return _home(_DTENSOR_HOMES, "DTensor")


def _mesh(world_size: int) -> Any:
    """A 1-D CPU device mesh of every rank."""
    try:
        return _found(_MESH_HOMES, "init_device_mesh")("cpu", (world_size,))
    except ImportError:  # torch 2.0: the mesh's constructor
        return _found(_DTENSOR_HOMES, "DeviceMesh")("cpu", list(range(world_size)))


def _save(state: dict[str, Any], path: str) -> None:
    # ``storage_writer=`` in every version: 2.2's ``save`` has no ``checkpoint_id`` yet.
    dcp = _dcp()
    save = dcp.save if hasattr(dcp, "save") else dcp.save_state_dict
    save(state, storage_writer=dcp.FileSystemWriter(path))


def _load(state: dict[str, Any], path: str) -> None:
    dcp = _dcp()
    load = dcp.load if hasattr(dcp, "load") else dcp.load_state_dict
    load(state, storage_reader=dcp.FileSystemReader(path))


def _api_name() -> str:
    """The saving function used, as the manifest records it."""
    return "save" if hasattr(_dcp(), "save") else "save_state_dict"


def _fully_shard() -> Any:
    from harness.distributed import find_fully_shard

    found = find_fully_shard()
    if found is None:
        raise ImportError(f"torch {torch_version()} has no FSDP2 fully_shard")
    return found


def _state_dict_functions() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``get_state_dict`` and ``set_state_dict``; ImportError where torch lacks them."""
    return tuple(_found([_STATE_DICT_HOME], name) for name in ("get_state_dict", "set_state_dict"))


# --- the items ---------------------------------------------------------------------------------


def _full(value: Any) -> Any:
    """``value`` with every DTensor gathered to a full tensor of its own (a collective)."""
    dtensor = _dtensor()
    if isinstance(value, dtensor.DTensor):
        if hasattr(value, "full_tensor"):
            return value.full_tensor().clone()
        replicated = [dtensor.Replicate()] * value.device_mesh.ndim
        return value.redistribute(value.device_mesh, replicated).to_local().clone()
    if isinstance(value, dict):
        return type(value)((key, _full(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_full(item) for item in value)
    return value


def _tensors(seed: int) -> dict[str, Any]:
    """The tensors of the ``state_dict`` item, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "linear.weight": torch.randn(7, 4, generator=generator),
        "linear.bias": torch.randn(7, generator=generator),
        "embedding.weight": torch.randn(5, 3, generator=generator, dtype=torch.float64),
        "counts": torch.randint(-(2**40), 2**40, (5,), generator=generator),
        "scale": torch.randn((), generator=generator).to(torch.bfloat16),
        "step": seed % 1000,
    }


def _sharded_tensors(seed: int, world_size: int) -> dict[str, Any]:
    """Those tensors with every one of a dimension or more a DTensor, ``Shard(0)`` over every
    rank; the scalar tensor and the int as they are (DCP saves them once, from rank 0)."""
    dtensor = _dtensor()
    mesh = _mesh(world_size)
    return {
        key: dtensor.distribute_tensor(value, mesh, [dtensor.Shard(0)])
        if isinstance(value, torch.Tensor) and value.dim()
        else value
        for key, value in _tensors(seed).items()
    }


def _write_state_dict(path: str, world_size: int) -> dict[str, Any]:
    state = _sharded_tensors(_WRITTEN_SEED, world_size)
    _save(state, path)
    return _full(state)


def _read_state_dict(path: str, world_size: int) -> dict[str, Any]:
    state = _sharded_tensors(_FRESH_SEED, world_size)
    _load(state, path)
    return _full(state)


def _training(seed: int, lr: float, step_size: int, world_size: int) -> tuple:
    """A small model built from ``seed``, sharded with ``fully_shard`` over every rank, its
    Adam optimizer and a ``StepLR`` scheduler of it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5))
    _fully_shard()(model, mesh=_mesh(world_size))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma=0.5)


class _SchedulerState:
    """The scheduler as DCP's recipe saves it: a ``Stateful`` whose state is an
    ``io.BytesIO`` of ``torch.save`` of its ``state_dict()`` (plain Python values, whose keys
    a fresh target does not know in advance)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def state_dict(self) -> dict[str, Any]:
        buffer = io.BytesIO()
        torch.save(self.scheduler.state_dict(), buffer)
        buffer.seek(0)
        return {"state": buffer}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict["state"].seek(0)
        self.scheduler.load_state_dict(torch.load(state_dict["state"], weights_only=True))


def _training_state(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    get_state_dict, _ = _state_dict_functions()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def _write_training(path: str, world_size: int) -> dict[str, Any]:
    model, optimizer, scheduler = _training(_WRITTEN_SEED, _WRITTEN_LR, 2, world_size)
    generator = torch.Generator().manual_seed(_WRITTEN_SEED)
    inputs, targets = torch.randn(6, 4, generator=generator), torch.randn(6, 5, generator=generator)
    for _ in range(_TRAINING_STEPS):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        scheduler.step()
    state = _training_state(model, optimizer)
    _save({**state, "scheduler": _SchedulerState(scheduler)}, path)
    return _full({**state, "scheduler": scheduler.state_dict()})


def _read_training(path: str, world_size: int) -> dict[str, Any]:
    _, set_state_dict = _state_dict_functions()
    model, optimizer, scheduler = _training(_FRESH_SEED, _FRESH_LR, 5, world_size)
    state = _training_state(model, optimizer)
    _load({**state, "scheduler": _SchedulerState(scheduler)}, path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    return _full({**_training_state(model, optimizer), "scheduler": scheduler.state_dict()})


@dataclasses.dataclass(frozen=True)
class DcpItem:
    """One DCP checkpoint of the matrix.

    Attributes:
        name: the item (artifact ``dcp/<name>``, kind ``dcp:<name>``).
        holds: what it holds, in a few words.
        write: ``write(path, world_size)`` on every rank: save into ``path``; return the
            full (gathered) state saved.
        read: ``read(path, world_size)`` on every rank: load ``path`` into a fresh state from
            another seed; return its full state.
        needs: what it needs of the installed torch beyond DCP and DTensor: functions that
            raise ImportError naming what is missing.
    """

    name: str
    holds: str
    write: Callable[[str, int], Any]
    read: Callable[[str, int], Any]
    needs: tuple[Callable[[], Any], ...] = ()

    @property
    def folder(self) -> str:
        """Its folder in a corpus."""
        return f"dcp--{self.name}"


#: Every DCP checkpoint of a corpus, in the order it is written.
ITEMS = (
    DcpItem(
        "state_dict",
        "a state_dict of float32, float64 and int64 DTensors sharded `Shard(0)` (7 and 5 "
        "rows), a bfloat16 scalar tensor and an int",
        _write_state_dict,
        _read_state_dict,
    ),
    DcpItem(
        "training",
        f"a model sharded with `fully_shard`, its Adam state through `get_state_dict` and its "
        f"`StepLR` (a `Stateful` of bytes, as DCP's recipe saves it) after {_TRAINING_STEPS} "
        "steps",
        _write_training,
        _read_training,
        (_state_dict_functions, _fully_shard),
    ),
)
_BY_NAME = {item.name: item for item in ITEMS}


def missing_api(item: DcpItem) -> str | None:
    """Why the installed torch cannot write or read ``item`` (``"ImportError: ..."``, as
    :func:`harness.persistence.explain_error` writes it), or None when it can."""
    try:
        _dcp()
        _dtensor()
        for need in item.needs:
            need()
    except ImportError as error:
        return explain_error(error)
    return None


# --- what the ranks do -------------------------------------------------------------------------


def _failures() -> tuple[type[BaseException], ...]:
    """What a save or load on a rank can raise: DCP gathers every rank's error into a
    ``CheckpointException``, a BaseException (not an Exception), raised on every rank."""
    try:
        from torch.distributed.checkpoint.api import CheckpointException
    except ImportError:
        return (Exception,)
    return (Exception, CheckpointException)


def _why(error: BaseException) -> str:
    """One line: the exception, and for DCP's CheckpointException the first failing rank's
    own exception (its message is a traceback per rank)."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        rank = min(failures)
        cause = failures[rank][0] if isinstance(failures[rank], tuple) else failures[rank]
        if isinstance(cause, BaseException):
            return f"{type(error).__name__}: rank {rank}: {explain_error(cause)}"
    return explain_error(error)


def _group_keys(state: Any) -> list[str]:
    """The hyperparameter names of the first param group of ``state``'s optimizer and the
    entries of its scheduler's state (none for a state without them)."""
    if not isinstance(state, dict) or "optimizer" not in state:
        return []
    keys = set(state["optimizer"]["param_groups"][0]) - {"params"}
    return sorted(keys | set(state.get("scheduler", {})))


def _this_torchs_group_keys() -> set[str]:
    """The hyperparameter names this torch's Adam keeps in a param group, and the entries of
    its ``StepLR``'s state."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    return set(optimizer.param_groups[0]) - {"params"} | set(scheduler.state_dict())


def _without_keys(description: Any, keys: set[str]) -> Any:
    """``description`` (of :func:`matrix.describe.describe`) without the mapping entries
    whose key is a string of ``keys``, at every level. A mapping is described as ``[type,
    [[key, value], ...]]``, each key and value ``[type, ...]``."""
    if not isinstance(description, list):
        return description
    if (
        len(description) == 2
        and isinstance(description[0], str)
        and isinstance(description[1], list)
        and all(
            isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
            for item in description[1]
        )
    ):
        kept = [
            [key, _without_keys(value, keys)]
            for key, value in description[1]
            if not (key[0] == "str" and key[1] in keys)
        ]
        return [description[0], kept]
    return [_without_keys(item, keys) for item in description]


def _write_task(jobs: list[tuple[str, str]], rank: int, world_size: int) -> list[dict]:
    """On every rank: write each ``(item, path)``; the description of each full state (and
    its optimizer's hyperparameter names), or why it could not be written."""
    failures = _failures()
    results = []
    for name, path in jobs:
        try:
            state = _BY_NAME[name].write(path, world_size)
        except failures as error:
            results.append({"unwritable": _why(error)})
            continue
        written = {"expected": describe(state)}
        if _group_keys(state):
            written["param_group_keys"] = _group_keys(state)
        results.append(written)
    return results


def _read_task(
    jobs: list[tuple[str, str, Any, list[str]]], rank: int, world_size: int
) -> list[tuple[str, str]]:
    """On every rank: load each ``(item, path, expected, the writer's param group keys)``;
    ``(outcome, message)`` each. Entries only one of the writer's and this torch's Adam
    param group or ``StepLR`` state has (a newer torch adds ``decoupled_weight_decay``, ...;
    an older one drops what it does not know when DCP loads) are left out of the
    comparison, and the message names them."""
    failures = _failures()
    results = []
    for name, path, expected, writer_keys in jobs:
        try:
            actual = describe(_BY_NAME[name].read(path, world_size))
        except failures as error:
            results.append(("error", _why(error)))
            continue
        one_sided = set(writer_keys) ^ _this_torchs_group_keys() if writer_keys else set()
        if one_sided:
            expected, actual = _without_keys(expected, one_sided), _without_keys(actual, one_sided)
        difference = first_difference(expected, actual)
        note = (
            f"optimizer hyperparameters or scheduler entries one torch has and the other "
            f"lacks, not compared: "
            f"{', '.join(sorted(one_sided))}"
            if one_sided
            else ""
        )
        results.append(("differs", difference) if difference else ("identical", note))
    return results


def _launch(world_size: int, task: Callable[[int, int], Any]) -> tuple[list | None, str, str]:
    """Run ``task`` on a fresh group: every rank's value, or None with the outcome
    (``crashed`` or ``error``) and the message of every load of the launch."""
    from harness.distributed import run_group

    try:
        outcomes = run_group(world_size, task, timeout=TIMEOUT)
    except Exception as error:  # noqa: BLE001 - a group this torch cannot start
        return None, "error", explain_error(error)
    died = [o for o in outcomes if o.outcome in ("crashed", "hung")]
    if died:
        lines = "; ".join(
            f"rank {o.rank} {o.error}"
            if o.outcome == "crashed"
            else f"rank {o.rank} did not finish within {TIMEOUT:g} s"
            for o in died
        )
        return None, "crashed", lines
    raised = [o for o in outcomes if o.outcome == "raised"]
    if raised:
        return None, "error", raised[0].error or "Exception: a rank raised"
    return [o.value for o in outcomes], "", ""


# --- the hook of the matrix --------------------------------------------------------------------


def _entry(item: DcpItem) -> dict[str, Any]:
    return {"name": f"dcp/{item.name}", "kind": f"dcp:{item.name}"}


def write_dcp(directory: str, progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Write every item of :data:`ITEMS` under ``directory`` at world size
    :data:`WRITER_WORLD_SIZE`, in one launch of a process group; return their manifest
    entries (``folder``, ``expected``, ``world_size`` and ``api``, the saving function), or
    ``unwritable`` with the reason."""
    entries = {item.name: _entry(item) for item in ITEMS}
    jobs = []
    for item in ITEMS:
        reason = missing_api(item)
        if reason is not None:
            entries[item.name]["unwritable"] = reason
            continue
        path = os.path.join(directory, item.folder)
        shutil.rmtree(path, ignore_errors=True)
        jobs.append((item.name, path))
    if jobs:
        started = time.monotonic()
        values, outcome, message = _launch(WRITER_WORLD_SIZE, functools.partial(_write_task, jobs))
        for index, (name, _) in enumerate(jobs):
            if values is None:
                entries[name]["unwritable"] = (
                    message if outcome == "error" else f"RuntimeError: {message}"
                )
                continue
            written = values[0][index]
            entries[name].update(written)
            if "expected" in written:
                entries[name].update(
                    folder=_BY_NAME[name].folder, world_size=WRITER_WORLD_SIZE, api=_api_name()
                )
        progress(
            f"  dcp: {len(jobs)} checkpoint(s) written at world size {WRITER_WORLD_SIZE} "
            f"({time.monotonic() - started:.1f} s)"
        )
    for entry in entries.values():
        if "unwritable" in entry:
            progress(f"  {entry['name']}: unwritable ({entry['unwritable']})")
    return list(entries.values())


def read_dcp(
    entries: list[dict[str, Any]], directory: str, progress: Callable[[str], None] = print
) -> list[tuple[dict[str, Any], str, str, str]]:
    """Load every written entry of ``entries`` (of the corpus in ``directory``) at each world
    size of :data:`LOAD_MODES`, one launch each, into a fresh state; ``(entry, load_mode,
    outcome, message)`` for every entry and load mode."""
    results = []
    for load_mode in LOAD_MODES:
        world_size = _LOAD_WORLD_SIZES[load_mode]
        verdicts: dict[int, tuple[str, str]] = {}
        jobs, positions = [], []
        for position, entry in enumerate(entries):
            name = entry["kind"].partition(":")[2]
            item = _BY_NAME.get(name)
            if item is None:
                verdicts[position] = ("error", f"KeyError: no DCP item {name!r} in this harness")
                continue
            reason = missing_api(item)
            if reason is not None:
                verdicts[position] = ("error", reason)
                continue
            folder = os.path.join(directory, entry["folder"])
            jobs.append((name, folder, entry["expected"], entry.get("param_group_keys", [])))
            positions.append(position)
        if jobs:
            started = time.monotonic()
            values, outcome, message = _launch(world_size, functools.partial(_read_task, jobs))
            for index, position in enumerate(positions):
                if values is None:
                    verdicts[position] = (outcome, message)
                    continue
                per_rank = [value[index] for value in values]
                # every rank gathered the same state; one that did not says why
                verdicts[position] = next(
                    (found for found in per_rank if found[0] != "identical"), per_rank[0]
                )
            progress(
                f"  dcp: {len(jobs)} checkpoint(s) read at world size {world_size} "
                f"({time.monotonic() - started:.1f} s)"
            )
        results += [(entry, load_mode, *verdicts[i]) for i, entry in enumerate(entries)]
    return results
