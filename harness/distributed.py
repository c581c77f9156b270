"""Checking distributed checkpoints: torch.distributed.checkpoint across world sizes.

:func:`check_distributed_checkpointer` checks a checkpointer whose ``save(state, path)`` and
``load(path, into, map_location=None)`` are called on every rank of a real process group
(gloo on 127.0.0.1, one process per rank, one CPU thread each), the way a sharded training
job calls them. For each drawn training case and each (saving, loading) world size it starts
a group of the saving size, builds the case's model on every rank from the same seed,
shards it with FSDP2's ``fully_shard`` on a CPU device mesh (:func:`mesh_shape`: 1-D, the
parameters and optimizer state ``DTensor`` shards with placement ``Shard(0)``, world size 3
giving uneven shards; 2-D at an even world size of 4 or more, hybrid sharding: replicated
over the first mesh dimension and sharded over the second, placements
``(Replicate(), Shard(0))``), trains it
a few steps and calls ``save`` on every rank; then it starts a group of the loading size,
builds a fresh sharded state from another seed, calls ``load`` on every rank and gathers the
full state (each ``DTensor``'s ``full_tensor()``) to compare it bit for bit with the
original's (:func:`harness.assert_identical`).

Ranks are started with ``torch.multiprocessing``'s forkserver (fork is unsafe once a process
group exists), so the checkpointer is pickled to them: a class defined at module level in an
importable file. :func:`run_group` runs one function on every rank of a fresh group and ends
every process of it: a rank that does not finish within the time limit (a collective never
matched) fails the example naming the rank, a rank that crashes or raises is reported with
its error.

:class:`DistributedCheckpoint` is DCP's documented recipe, the reference.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import io
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.checkpointer import (
    RESUME_STEPS,
    CheckpointerError,
    CheckpointerHung,
    _Calls,
)
from harness.compare import assert_identical, find_difference
from harness.files import (
    DEFAULT_MEMORY_BYTES,
    _limit_address_space,
    _watching_torch_load,
    attack_written_files,
    damage_written_files,
    written_files,
)
from harness.report import Finding, Report, first_line
from harness.state import (
    TrainingState,
    global_rng_state,
    seed_global_rngs,
    set_global_rng_state,
    snapshot,
)
from harness.suite import Invariant, run_suite
from strategies.models import build_model
from strategies.optim import build_optimizer, build_scheduler
from strategies.training import TrainingCase, training_cases

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORLD_SIZES",
    "DISTRIBUTED_FAMILIES",
    "DISTRIBUTED_INVARIANTS",
    "DISTRIBUTED_OPTIMIZERS",
    "DistributedCheckpoint",
    "DistributedInvariant",
    "GroupFailed",
    "RankOutcome",
    "ShardedState",
    "check_distributed_checkpointer",
    "distributed_cases",
    "find_fully_shard",
    "fully_shard_available",
    "mesh_shape",
    "run_group",
]

#: The (saving, loading) world sizes checked by default: resharding up and down, an uneven
#: split (3), equal sizes (resume equivalence) and a 4-rank group.
DEFAULT_WORLD_SIZES: tuple[tuple[int, int], ...] = ((2, 3), (3, 1), (2, 2), (4, 2))
#: Seconds one process group may take from its start to every rank's end: starting the
#: ranks, building, training and the checkpointer's calls (a few seconds on two cores).
DEFAULT_TIMEOUT = 120.0
#: The largest world size: the ranks share the host's cores.
MAX_WORLD_SIZE = 8
#: Model families whose every parameter FSDP2 shards and whose training is deterministic
#: across ranks (no dropout, no batch statistics, no sparse gradients).
DISTRIBUTED_FAMILIES = ("linear", "activation", "layer_norm", "containers", "residual", "nested")
#: Optimizers whose per-parameter state is kept as DTensors beside the sharded parameters
#: and that DCP resumes (not SparseAdam, LBFGS or partly stateful SGD: docs/real-libraries.md).
DISTRIBUTED_OPTIMIZERS = ("Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam")
# Seeds: the original state, the fresh one loaded into, the RNG disturbance before load.
_ORIGINAL_SEED, _FRESH_SEED, _DISTURBING_SEED = 0, 1, 12345
# Seconds a written-files trial (a forked child starting a group) may take beyond the
# group's own time limit: the group is ended and reported first.
_TRIAL_SLACK = 30.0
# Hypothesis's phases that only make a failure smaller or explain it.
_SHRINKING = (Phase.shrink, Phase.explain)
# Rows of the largest parameter of a drawn model, at least: every rank of 2 holds a shard.
_SHARDED_ROWS = 2
# Seconds the other ranks are given to finish after one rank failed, before they are killed.
_GRACE = 2.0
# Modules the forkserver imports once, so that each rank starts in well under a second
# (an optimizer's constructor imports torch._dynamo: seconds in every fresh process).
_PRELOAD = [
    "torch",
    "torch._dynamo",
    "torch.distributed.checkpoint",
    "torch.distributed.checkpoint.state_dict",
    "torch.distributed.fsdp",
    "torch.distributed.tensor",
    __name__,
]


# --- Running a function on every rank of a process group ------------------------------------


@dataclass(frozen=True)
class RankOutcome:
    """What one rank of a group did.

    Attributes:
        rank: the rank.
        outcome: ``"returned"``, ``"raised"``, ``"crashed"`` (the process died without a
            result) or ``"hung"`` (still running at the time limit, then killed).
        value: what the function returned (``"returned"``).
        error: for ``"raised"``, the exception's first line and the place it was raised
            in; for ``"crashed"``, the exit code or signal.
        checkpointer_error: for ``"raised"``, whether the checkpointer's own ``save`` or
            ``load`` raised (not the harness's building, training or gathering).
        out_of_memory: for ``"raised"``, whether it was a ``MemoryError``.
        exit_code: for ``"crashed"``, the process's exit code (negative: the signal).
    """

    rank: int
    outcome: str
    value: Any = None
    error: str | None = None
    checkpointer_error: bool = False
    out_of_memory: bool = False
    exit_code: int | None = None


class GroupFailed(AssertionError):
    """A rank of a process group raised or crashed: the failure of the example it ran.

    ``outcomes`` holds every rank's :class:`RankOutcome`.
    """

    def __init__(self, message: str, outcomes: Sequence[RankOutcome]) -> None:
        super().__init__(message)
        self.outcomes = tuple(outcomes)


class GroupHung(CheckpointerHung):
    """A rank did not finish within the time limit; every process of the group was ended.
    Reported unshrunk (each smaller example would take the limit again)."""

    def __init__(self, message: str, outcomes: Sequence[RankOutcome]) -> None:
        super().__init__(message)
        self.outcomes = tuple(outcomes)


def _context() -> multiprocessing.context.BaseContext:
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    work: str,
    function: Callable[[int, int], Any],
    timeout: float,
    user_file: str | None,
    memory_bytes: int | None,
) -> None:
    """One rank: join the group through the parent's store, run ``function(rank,
    world_size)``, write the outcome to ``work/rank-N``, leave the group."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    # What a rank prints (DCP logs every refused file with its traceback, FSDP2 warns on
    # every call) goes to a log of its own, whose end a crash is reported with.
    log = os.open(os.path.join(work, f"rank-{rank}.log"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    warnings.simplefilter("ignore")
    limit = datetime.timedelta(seconds=timeout)
    outcome: tuple = ("crashed", None, "no outcome", False, False)
    try:
        if memory_bytes is not None:
            _limit_address_space(memory_bytes)
        if user_file is not None:
            from harness.cli import _import_user_file

            _import_user_file(Path(user_file))
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=limit)
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=world_size, timeout=limit
        )
        outcome = ("returned", function(rank, world_size), None, False, False)
    except BaseException as error:
        where = "".join(traceback.format_exception(error)[-3:]).strip().splitlines()
        message = str(error) if isinstance(error, CheckpointerError) else first_line(error)
        if not isinstance(error, CheckpointerError):
            message += f" ({where[-3].strip() if len(where) >= 3 else ''})"
        cause = error.error if isinstance(error, CheckpointerError) else error
        checkpointer = isinstance(error, CheckpointerError)
        outcome = ("raised", None, message, checkpointer, isinstance(cause, MemoryError))
    partial = os.path.join(work, f"rank-{rank}.partial")
    with open(partial, "wb") as stream:
        torch.save(outcome, stream)
    os.replace(partial, os.path.join(work, f"rank-{rank}"))
    if dist.is_initialized():
        if outcome[0] == "returned":
            # No rank leaves while another still runs collectives with it (a peer that left
            # ends them with "Connection closed by peer").
            dist.barrier()
        dist.destroy_process_group()


def _read_outcome(work: str, rank: int) -> tuple | None:
    path = os.path.join(work, f"rank-{rank}")
    if not os.path.exists(path):
        return None
    return torch.load(path, weights_only=False)


def _exit_description(work: str, rank: int, code: int | None) -> str:
    """How a rank that left no outcome ended, with the last line it printed."""
    if code is not None and code < 0:
        text = f"killed by {signal.Signals(-code).name}"
    else:
        text = f"exited with status {code} without a result"
    try:
        with open(os.path.join(work, f"rank-{rank}.log"), errors="replace") as stream:
            lines = [line.strip() for line in stream if line.strip()]
    except OSError:
        lines = []
    return text + (f" (its last output: {lines[-1][:200]})" if lines else "")


def run_group(
    world_size: int,
    function: Callable[[int, int], Any],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    user_file: str | None = None,
    memory_bytes: int | None = None,
) -> list[RankOutcome]:
    """Run ``function(rank, world_size)`` on every rank of a fresh gloo process group.

    Each rank is a process started by ``torch.multiprocessing``'s forkserver, with one CPU
    thread, joined to the group through a ``TCPStore`` the caller's process serves on a free
    port of 127.0.0.1. ``function`` must pickle (a module-level function, or a
    ``functools.partial`` of one); ``user_file`` is imported in each rank first (the file a
    pickled checkpointer's class is defined in). With ``memory_bytes``, each rank may map
    that many bytes of address space beyond what it maps at its start (a file that makes
    load allocate more raises ``MemoryError`` there). When every rank has finished, or one
    failed and the others had :data:`_GRACE` seconds more, or ``timeout`` seconds have
    passed, every process still running is killed and reaped, and the store is closed.

    Returns one :class:`RankOutcome` per rank, in rank order.
    """
    import torch.distributed as dist

    context = _context()
    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
    work = tempfile.mkdtemp(prefix="harness-group-")
    processes = [
        context.Process(
            target=_rank_main,
            args=(rank, world_size, store.port, work, function, timeout, user_file, memory_bytes),
            name=f"harness-rank-{rank}",
            daemon=True,
        )
        for rank in range(world_size)
    ]
    outcomes: dict[int, tuple] = {}
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        failed_at = None
        while time.monotonic() < deadline:
            for rank, process in enumerate(processes):
                if rank in outcomes:
                    continue
                found = _read_outcome(work, rank)
                if found is None and process.exitcode is not None:
                    found = _read_outcome(work, rank) or (
                        "crashed",
                        None,
                        _exit_description(work, rank, process.exitcode),
                        False,
                        False,
                        process.exitcode,
                    )
                if found is not None:
                    outcomes[rank] = found
                    if found[0] != "returned" and failed_at is None:
                        failed_at = time.monotonic()
                        deadline = min(deadline, failed_at + _GRACE)
            if len(outcomes) == world_size:
                break
            time.sleep(0.02)
    finally:
        for process in processes:
            if process.pid is None:  # never started: an earlier start raised
                continue
            if process.is_alive():
                process.join(1.0 if len(outcomes) == world_size else 0)
            if process.is_alive():
                process.kill()
            process.join(10.0)
        del store
        shutil.rmtree(work, ignore_errors=True)
    return [
        RankOutcome(rank, *outcomes[rank]) if rank in outcomes else RankOutcome(rank, "hung")
        for rank in range(world_size)
    ]


def _values(outcomes: Sequence[RankOutcome], what: str, timeout: float) -> list[Any]:
    """Each rank's value, or the failure: the ranks that raised or crashed, else those that
    hung."""
    world_size = len(outcomes)
    # The checkpointer's own errors first: the other ranks' errors often follow from them
    # (a peer that left the group).
    broken = sorted(
        (o for o in outcomes if o.outcome in ("raised", "crashed")),
        key=lambda o: not o.checkpointer_error,
    )
    if broken:
        lines = "; ".join(f"rank {o.rank} {o.outcome}: {o.error}" for o in broken)
        raise GroupFailed(f"{what} at world size {world_size}: {lines}", outcomes)
    hung = [o.rank for o in outcomes if o.outcome == "hung"]
    if hung:
        raise GroupHung(
            f"{what} at world size {world_size}: rank(s) {hung} did not finish within "
            f"{timeout:g} s (a collective never matched, or a call hangs); every process of "
            "the group was ended (raise the limit with timeout= or --timeout SECONDS)",
            outcomes,
        )
    return [o.value for o in outcomes]


# --- The sharded training state -------------------------------------------------------------


@dataclass
class ShardedState(TrainingState):
    """A :class:`~harness.state.TrainingState` on one rank of a process group: the model is
    sharded (its parameters and the optimizer's state are ``DTensor`` shards), and ``rank``
    and ``world_size`` say where the checkpointer is (as ``torch.distributed.get_rank()``
    and ``get_world_size()`` do)."""

    rank: int = 0
    world_size: int = 1


def find_fully_shard() -> Callable[..., Any] | None:
    """FSDP2's ``fully_shard`` where the installed torch has it (its public home, then its
    home before it was public), else None."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            return None
    return fully_shard


def fully_shard_available() -> bool:
    """Whether the installed torch has FSDP2's ``fully_shard`` and a CPU device mesh."""
    try:
        from torch.distributed.device_mesh import init_device_mesh  # noqa: F401
    except ImportError:
        return False
    return torch.distributed.is_available() and find_fully_shard() is not None


def mesh_shape(world_size: int) -> tuple[int, ...]:
    """The CPU device mesh a group of ``world_size`` ranks shards over: ``(2, world_size //
    2)`` (hybrid sharding: FSDP2 replicates over the first dimension and shards over the
    second) at an even world size of 4 or more, else ``(world_size,)`` (every rank a shard)."""
    if world_size >= 4 and world_size % 2 == 0:
        return (2, world_size // 2)
    return (world_size,)


def _shard_position(rank: int, world_size: int) -> tuple[int, int]:
    """(which shard, of how many) rank ``rank`` holds on :func:`mesh_shape`'s mesh: ranks
    are laid out row by row, so a rank's shard is its column."""
    shards = mesh_shape(world_size)[-1]
    return rank % shards, shards


def _sharded(case: TrainingCase, init_seed: int, rank: int, world_size: int, dtype=None):
    """The case's state built from ``init_seed`` (the same on every rank), its model in
    ``dtype`` where given, sharded over the CPU mesh of :func:`mesh_shape`, with its
    optimizer and scheduler built over the sharded parameters."""
    from torch.distributed.device_mesh import init_device_mesh

    built = case.build(init_seed)
    if dtype is not None:
        built.model.to(dtype)
    shape = mesh_shape(world_size)
    names = ("replicate", "shard")[-len(shape) :]
    mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
    find_fully_shard()(built.model, mesh=mesh)
    optimizer = build_optimizer(case.spec.optimizer, built.model)
    scheduler = build_scheduler(case.spec.scheduler, optimizer) if case.spec.scheduler else None
    return ShardedState(
        model=built.model,
        optimizer=optimizer,
        scheduler=scheduler,
        data=built.data,
        rank=rank,
        world_size=world_size,
    )


def _trained(case: TrainingCase, rank: int, world_size: int, dtype=None) -> ShardedState:
    state = _sharded(case, _ORIGINAL_SEED, rank, world_size, dtype)
    seed_global_rngs(_ORIGINAL_SEED)
    losses = [case.train_step(state) for _ in range(case.steps)]
    state.extra.update(epoch=case.steps, loss=losses[-1], train_loss=losses)
    return state


def _full(value: Any) -> Any:
    """``value`` with every DTensor in it gathered to its full tensor (a collective: every
    rank walks the same structure in the same order)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        # A copy of its own: the gathered tensor may be a view of a padded buffer.
        return value.full_tensor().clone()
    if isinstance(value, dict):
        return {key: _full(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_full(item) for item in value)
    return value


def _shards_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This rank's local shard of each sharded entry of the model's state_dict."""
    from torch.distributed.tensor import DTensor

    return {
        key: value.to_local().clone()
        for key, value in model.state_dict().items()
        if isinstance(value, DTensor)
    }


def _ranks_with_wrong_shards(saved: dict[str, Any], shards: Sequence[dict[str, Any]]) -> list[int]:
    """The ranks whose local shards of the model are not their rows of the saved tensors
    (FSDP2 gives the rank holding shard ``i`` of ``n`` (:func:`_shard_position`) the
    ``i``-th of ``torch.chunk(tensor, n)``, an empty shard past the last chunk)."""
    wrong = []
    for rank, local in enumerate(shards):
        index, count = _shard_position(rank, len(shards))
        for key, shard in local.items():
            chunks = torch.chunk(saved[key], count) if saved[key].dim() else ()
            expected = chunks[index] if index < len(chunks) else saved[key][:0]
            if find_difference(expected.contiguous(), shard.contiguous()) is not None:
                wrong.append(rank)
                break
    return wrong


def _gathered(state: TrainingState) -> dict[str, Any]:
    """The state's :func:`~harness.state.snapshot` with the shards gathered, and its extra
    entries: the same on every rank of a correctly restored state."""
    return {**_full(snapshot(state)), "extra": dict(state.extra)}


# --- What the ranks do ----------------------------------------------------------------------


def _checkpointer(payload: bytes) -> _Calls:
    return _Calls(pickle.loads(payload), None)


def _save_task(
    case: TrainingCase, payload: bytes, path: str, twin: bool, rank: int, world_size: int
) -> dict[str, Any]:
    """Train the original, gather it, save it, gather it again; with ``twin``, train both
    the saved state and a twin never saved :data:`RESUME_STEPS` more steps and gather both."""
    calls = _checkpointer(payload)
    original = _trained(case, rank, world_size)
    rng = global_rng_state()
    result = {"before": _gathered(original)}
    set_global_rng_state(rng)
    calls.save(original, path)
    result["after"] = _gathered(original)
    if twin:
        for _ in range(RESUME_STEPS):
            case.train_step(original)
        result["trained_on"] = _gathered(original)
        uninterrupted = _trained(case, rank, world_size)
        for _ in range(RESUME_STEPS):
            case.train_step(uninterrupted)
        result["uninterrupted"] = _gathered(uninterrupted)
    return result


def _load_task(
    case: TrainingCase,
    payload: bytes,
    path: str,
    resume: bool,
    dtype: torch.dtype | None,
    rank: int,
    world_size: int,
) -> dict[str, Any]:
    """Load into a fresh sharded state (its model in ``dtype`` where given) after disturbing
    the global RNGs, gather it; with ``resume``, train :data:`RESUME_STEPS` steps and gather
    again."""
    calls = _checkpointer(payload)
    fresh = _sharded(case, _FRESH_SEED, rank, world_size, dtype)
    seed_global_rngs(_DISTURBING_SEED)
    calls.load(path, fresh)
    result = {"loaded": _gathered(fresh), "shards": _shards_of(fresh.model)}
    if resume:
        for _ in range(RESUME_STEPS):
            case.train_step(fresh)
        result["resumed"] = _gathered(fresh)
    return result


def _trial_task(
    case: TrainingCase, payload: bytes, path: str, rank: int, world_size: int
) -> dict[str, Any]:
    """One trial of the written-files invariants: load and gather, with the global RNG
    states after load and, for each ``torch.load`` load made, whether it returned."""
    result: dict[str, Any] = {}

    def load() -> None:
        result.update(_load_task(case, payload, path, False, None, rank, world_size))

    result["torch_loads"] = _watching_torch_load(load)
    result["rng"] = global_rng_state()
    return result


# --- The invariants -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """How the checks run: the pickled checkpointer, where its class lives, the limit."""

    payload: bytes
    timeout: float
    user_file: str | None

    def group(self, world_size: int, function: Callable[..., Any], what: str) -> list[Any]:
        outcomes = run_group(world_size, function, timeout=self.timeout, user_file=self.user_file)
        return _values(outcomes, what, self.timeout)

    def save(self, case: TrainingCase, size: int, path: str, twin: bool = False) -> list[Any]:
        task = functools.partial(_save_task, case, self.payload, path, twin)
        return self.group(size, task, "training and save")

    def load(self, case, size: int, path: str, resume=False, dtype=None) -> list[RankOutcome]:
        task = functools.partial(_load_task, case, self.payload, path, resume, dtype)
        return run_group(size, task, timeout=self.timeout, user_file=self.user_file)


def _compared(expected: dict[str, Any], per_rank: Sequence[dict[str, Any]], key: str, name: str):
    for rank, value in enumerate(per_rank):
        assert_identical(expected, value[key], name=f"{name} on rank {rank} of {len(per_rank)}")


def _part_differs(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    return [
        part
        for part in expected
        if part not in actual or find_difference(expected[part], actual[part]) is not None
    ]


def state_restored(run: _Run, example) -> Iterator[str]:
    """Saved at one world size, loaded at another: the gathered model, optimizer, scheduler,
    learning rates, data position and extra entries are identical on every rank."""
    case, (saving, loading) = example
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint")
        saved = run.save(case, saving, path)[0]["before"]
        loaded = _values(run.load(case, loading, path), "load", run.timeout)
    for rank, value in enumerate(loaded):
        differing = _part_differs(saved, value["loaded"])
        if differing:
            where = f"saved at world size {saving}, loaded at {loading}"
            wrong = _ranks_with_wrong_shards(saved["model"], [v["shards"] for v in loaded])
            if wrong:
                where += f", the model shards of rank(s) {wrong} wrong"
            try:
                assert_identical(saved, value["loaded"], name=f"restored on rank {rank}")
            except AssertionError as failure:
                raise AssertionError(
                    f"{where}: {', '.join(differing)} differ\n{failure}"
                ) from failure
    yield f"world sizes {saving} -> {loading}"


def resume_equivalence(run: _Run, example) -> Iterator[str]:
    """At equal world sizes, training :data:`RESUME_STEPS` more steps after loading gives the
    gathered state of training them without interruption, bit for bit."""
    case, (saving, _) = example
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint")
        uninterrupted = run.save(case, saving, path, twin=True)[0]["uninterrupted"]
        resumed = _values(run.load(case, saving, path, resume=True), "load", run.timeout)
    _compared(uninterrupted, resumed, "resumed", f"after {RESUME_STEPS} steps")
    yield f"world size {saving}"


def save_changes_nothing(run: _Run, example) -> Iterator[str]:
    """On every rank, the gathered live state right after ``save`` is the one before it, and
    training on after the save follows the trajectory it follows without one."""
    case, (saving, _) = example
    with tempfile.TemporaryDirectory() as directory:
        results = run.save(case, saving, os.path.join(directory, "checkpoint"), twin=True)
    for rank, result in enumerate(results):
        assert_identical(result["before"], result["after"], name=f"after save on rank {rank}")
        assert_identical(
            result["uninterrupted"],
            result["trained_on"],
            name=f"{RESUME_STEPS} steps after save on rank {rank}",
        )
    yield f"world size {saving}"


def _other_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if dtype == torch.float32 else torch.float32


def _floating_dtypes(gathered: dict[str, Any]) -> dict[str, torch.dtype]:
    return {
        key: value.dtype
        for key, value in gathered["model"].items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    }


def dtype_mismatch_not_silent(run: _Run, example) -> Iterator[str | Finding]:
    """Loaded into a state whose parameters are of another floating dtype than the saved ones
    (bfloat16 for float32): ``load`` raises on some rank, or restores the saved values in the
    saved dtype; a load that casts them into the target's dtype without a word fails."""
    case, (saving, loading) = example
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint")
        saved = run.save(case, saving, path)[0]["before"]
        floating = _floating_dtypes(saved)
        source = next(iter(floating.values()), torch.float32)
        target = _other_dtype(source)
        outcomes = run.load(case, loading, path, dtype=target)
    refused = [o for o in outcomes if o.outcome == "raised" and o.checkpointer_error]
    if refused:
        yield f"a {target} target refused ({refused[0].error.splitlines()[0][:80]})"
        return
    loaded = _values(outcomes, f"load into a {target} target", run.timeout)[0]["loaded"]
    difference = find_difference(saved["model"], loaded["model"], name="model")
    if difference is None:
        yield "the saved dtype restored into a target of another dtype"
        return
    cast = {
        key: value.to(target) if key in floating else value for key, value in saved["model"].items()
    }
    if find_difference(cast, loaded["model"]) is None:
        raise AssertionError(
            f"saved in {source} and loaded into a {target} target at world size {loading}, "
            "load returned with the values silently cast to the target's dtype (no error): "
            "raise on a dtype mismatch, or restore the saved dtype\nlikely cause "
            "(silent_cast): the saved values are copied into the target's tensors, which keep "
            "their dtype; dcp.load does so (pytorch/pytorch#187138): compare the dtypes of "
            "dcp's metadata (storage_reader.read_metadata()) with the target's before loading"
        )
    raise AssertionError(
        f"loaded into a {target} target, the model differs from the saved one even cast to "
        f"{target}: {difference.headline}"
    )


def missing_rank_data_raises(run: _Run, example) -> Iterator[str]:
    """Saved at world size 2 or more, with each written file deleted in turn (a rank whose
    data is missing): ``load`` raises on some rank, and never returns a state partly loaded."""
    case, (saving, loading) = example
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint")
        saved = run.save(case, saving, path)[0]["before"]
        files = written_files(directory)
        partial = []
        for file in files:
            target = os.path.join(directory, file.path)
            kept = target + ".kept"
            os.replace(target, kept)
            try:
                outcomes = run.load(case, loading, path)
            finally:
                os.replace(kept, target)
            if any(o.outcome == "raised" and o.checkpointer_error for o in outcomes):
                continue
            loaded = _values(outcomes, f"load without {file.path}", run.timeout)
            if any(find_difference(saved, value["loaded"]) for value in loaded):
                partial.append(file.path)
        if partial:
            raise AssertionError(
                f"saved at world size {saving}, loaded at {loading} with a written file "
                f"missing, load returned a state partly loaded (no error): {partial}"
            )
    yield f"{len(files)} written file(s) deleted in turn"


def _use_parents_forkserver() -> None:
    """In a child forked from the process that started the forkserver (a written-files trial
    runs in one, :func:`harness.files.run_isolated`): start ranks through that forkserver.
    Its liveness check waits on it as on a child, and it is no child of this process."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        server.ensure_running = lambda: None


def _replay_torch_loads(records: Sequence[bool]) -> None:
    """Make in this process the ``torch.load`` calls the ranks made, each returning or
    raising as it did there, so that :func:`harness.files.attack_written_files`, which
    watches ``torch.load`` in its forked child, judges a memory attack on what the ranks'
    loads did."""
    valid = io.BytesIO()
    torch.save(torch.zeros(()), valid)
    for returned in records:
        data = valid.getvalue() if returned else b"not a torch file"
        try:
            torch.load(io.BytesIO(data), weights_only=True)
        except Exception:
            pass


def _group_load(run: _Run, case: TrainingCase, size: int, path: str) -> dict[str, Any]:
    """In the forked child of a written-files trial: load at ``size`` on a group of its own
    and return rank 0's result. What a rank did, the child does, so that the trial is judged
    on it: a crash ends the child the same way, a hang outlasts the trial's time limit, a
    ``MemoryError`` is raised again."""
    _use_parents_forkserver()
    outcomes = run_group(
        size,
        functools.partial(_trial_task, case, run.payload, path),
        timeout=run.timeout,
        memory_bytes=DEFAULT_MEMORY_BYTES,
    )
    for outcome in outcomes:
        if outcome.outcome == "crashed":
            code = outcome.exit_code or 1
            if code < 0:
                os.kill(os.getpid(), -code)
            os._exit(code)
        if outcome.outcome == "hung":
            time.sleep(_TRIAL_SLACK * 2)
        if outcome.out_of_memory:
            raise MemoryError(f"rank {outcome.rank}: {outcome.error}")
    values = _values(outcomes, "load", run.timeout)
    _replay_torch_loads([record for value in values for record in value["torch_loads"]])
    return values[0]


def written_files_run_nothing(run: _Run, example) -> Iterator[str]:
    """Every file the group's save wrote (``.metadata`` and every shard file), replaced in
    turn by every hostile file of its kind and loaded on a group of the loading size: no
    code runs, no rank crashes or hangs, no memory attack is accepted."""
    case, (saving, loading) = example
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint")
        run.save(case, saving, path)
        result = attack_written_files(
            directory,
            functools.partial(_group_load, run, case, loading, path),
            timeout=run.timeout + _TRIAL_SLACK,
        )
    yield f"{len(result.files)} written file(s), {len(result.trials)} hostile files tried"
    if result.harmful:
        lines = "\n".join(
            f"{t.file} ({t.kind}) replaced by {t.attack}: {t.detail}" for t in result.harmful
        )
        raise AssertionError(
            f"{len(result.harmful)} of {len(result.trials)} hostile files in place of a written "
            f"file got through load at world size {loading}:\n{lines}"
        )


def damaged_files_detected(run: _Run, example) -> Iterator[str | Finding]:
    """Every file the group's save wrote, truncated, emptied, bit-flipped or deleted in turn
    and loaded on a group of the loading size: load raises, or restores what the undamaged
    files restore; where the format itself cannot notice, a finding."""
    case, (saving, loading) = example

    def trial() -> str | None:
        result = _group_load(run, case, loading, path)
        if find_difference(expected["rng"], result["rng"]) is not None:
            return "the global RNG states differ from those the undamaged files restore"
        difference = find_difference(expected["loaded"], result["loaded"], name="restored")
        return None if difference is None else difference.headline

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint")
        run.save(case, saving, path)
        # What the undamaged files restore is the reference (whether that is the saved state
        # is state_restored's concern).
        task = functools.partial(_trial_task, case, run.payload, path)
        expected = run.group(loading, task, "load of the undamaged files")[0]
        result = damage_written_files(directory, trial, timeout=run.timeout + _TRIAL_SLACK)
    yield f"{len(result.files)} written file(s), {len(result.trials)} damaged versions tried"
    for damaged in result.silently_wrong:
        if damaged.format_noticed is not True:
            yield Finding(
                f"a {damaged.file.split('/')[-1]} file {damaged.damage} loads at another world "
                "size without an error, with other contents: the format does not notice"
            )
    blamed = [t for t in result.silently_wrong if t.format_noticed is True]
    broken = blamed + list(result.failures)
    if broken:
        lines = "\n".join(f"{t.file} {t.damage}: {t.outcome} {t.value or t.error}" for t in broken)
        raise AssertionError(
            f"{len(blamed)} damaged file(s) loaded silently wrong and {len(result.failures)} "
            f"crashed or hung load, of {len(result.trials)} tried:\n{lines}"
        )


@dataclass(frozen=True)
class DistributedInvariant:
    """A promise about a distributed checkpointer.

    Attributes:
        name: short identifier.
        description: one sentence stating the promise.
        check: ``check(run, (case, (saving, loading)))``, a generator of observations.
        pairs: which world-size pairs it is checked at: ``"all"``, ``"equal"`` (saving
            size = loading size) or ``"resharding"`` (saving size of 2 or more).
        costly: whether each example starts a group per trial (every written file, every
            attack or damage): left out unless asked for by name or with ``full=True``.
    """

    name: str
    description: str
    check: Callable[..., Iterator[str | Finding]]
    pairs: str = "all"
    costly: bool = False


DISTRIBUTED_INVARIANTS: tuple[DistributedInvariant, ...] = (
    DistributedInvariant(
        "state_restored",
        "Saved at one world size and loaded at another, the gathered model, optimizer, "
        "scheduler, learning rates, data position and extra entries are identical on every "
        "rank.",
        state_restored,
    ),
    DistributedInvariant(
        "resume_equivalence",
        f"At equal world sizes, training {RESUME_STEPS} more steps after loading gives the "
        "gathered state of training them without interruption, bit for bit.",
        resume_equivalence,
        "equal",
    ),
    DistributedInvariant(
        "save_changes_nothing",
        "On every rank the gathered live state right after save is the one before it, and "
        "training on after a save follows the trajectory it follows without one.",
        save_changes_nothing,
    ),
    DistributedInvariant(
        "dtype_mismatch_not_silent",
        "Loaded into a target of another floating dtype, load raises or restores the saved "
        "dtype; it never casts the saved values into the target's dtype without a word.",
        dtype_mismatch_not_silent,
    ),
    DistributedInvariant(
        "missing_rank_data_raises",
        "With any one written file of a save at world size 2 or more missing, load raises "
        "instead of returning a state partly loaded.",
        missing_rank_data_raises,
        "resharding",
        costly=True,
    ),
    DistributedInvariant(
        "written_files_run_nothing",
        "Every written file (.metadata and shards), replaced in turn by every hostile file of "
        "its kind and loaded on a group: no code runs, no rank crashes or hangs, no memory "
        "attack is accepted.",
        written_files_run_nothing,
        costly=True,
    ),
    DistributedInvariant(
        "damaged_files_detected",
        "Every written file truncated, emptied, bit-flipped or deleted in turn: load on a "
        "group raises or restores what the undamaged files restore.",
        damaged_files_detected,
        costly=True,
    ),
)


# --- The drawn cases ------------------------------------------------------------------------


def distributed_cases(
    families: Iterable[str] = DISTRIBUTED_FAMILIES,
    optimizers: Iterable[str] = DISTRIBUTED_OPTIMIZERS,
) -> st.SearchStrategy[TrainingCase]:
    """Training cases that shard: :func:`strategies.training_cases` narrowed to ``families``
    and ``optimizers`` (those the installed torch has), without a learnable output scale,
    without fused optimizer kernels and trained without a GradScaler (whose unscaling of
    DTensor gradients is not checked here). A case is plain data, built the
    same on every rank from the same seed; shrinks as the training cases do."""
    from harness.capabilities import probe

    chosen = [name for name in optimizers if name in probe().optimizers]

    def unscaled(case: TrainingCase) -> TrainingCase:
        # DTensor has no sharding rule for the fused optimizer kernels (aten._fused_adagrad_):
        # the fused flag is dropped, the foreach and for-loop kernels shard.
        optimizer = case.spec.optimizer
        flags = tuple(flag for flag in optimizer.flags if flag[0] != "fused")
        optimizer = dataclasses.replace(optimizer, flags=flags)
        return TrainingCase(dataclasses.replace(case.spec, optimizer=optimizer, scaler=False))

    # FSDP2 refuses a scalar parameter (the learnable scale of a model with nothing else to
    # train), so such cases are left out.
    cases = training_cases(tuple(families), tuple(chosen))
    return cases.filter(_shards).map(unscaled)


def _shards(case: TrainingCase) -> bool:
    """Whether FSDP2 shards the case's model, and over more than one rank: no learnable
    output scale (FSDP2 refuses a scalar parameter), and a parameter of at least
    :data:`_SHARDED_ROWS` rows (a one-row model would sit whole on rank 0)."""
    if case.spec.scaled_output:
        return False
    model = build_model(case.spec.model, 0).module
    return any(p.dim() and p.shape[0] >= _SHARDED_ROWS for p in model.parameters())


def _pairs(world_sizes: Any) -> tuple[tuple[int, int], ...]:
    message = (
        f"world_sizes={world_sizes!r} must be a non-empty sequence of (saving, loading) pairs "
        f"of world sizes from 1 to {MAX_WORLD_SIZE}, e.g. world_sizes=((2, 3), (3, 1))"
    )
    if isinstance(world_sizes, str) or not isinstance(world_sizes, Iterable):
        raise InvalidArgument(message)
    pairs = tuple(tuple(pair) if isinstance(pair, Iterable) else pair for pair in world_sizes)
    if not pairs or not all(
        isinstance(pair, tuple)
        and len(pair) == 2
        and all(
            isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_WORLD_SIZE
            for size in pair
        )
        for pair in pairs
    ):
        raise InvalidArgument(message)
    return pairs


def _kept(record: DistributedInvariant, pairs: tuple[tuple[int, int], ...]) -> tuple:
    if record.pairs == "equal":
        return tuple(pair for pair in pairs if pair[0] == pair[1])
    if record.pairs == "resharding":
        return tuple(pair for pair in pairs if pair[0] >= 2)
    return pairs


def _payload(checkpointer: Any) -> bytes:
    missing = [name for name in ("save", "load") if not callable(getattr(checkpointer, name, None))]
    if missing:
        raise InvalidArgument(
            f"{checkpointer!r} has no {' or '.join(missing)} method: a checkpointer needs "
            "save(state, path) and load(path, into, map_location=None)"
        )
    try:
        return pickle.dumps(checkpointer)
    except Exception as error:
        raise InvalidArgument(
            f"{checkpointer!r} cannot be pickled to the ranks ({first_line(error)}): define "
            "its class at module level in an importable file, with picklable attributes"
        ) from error


def check_distributed_checkpointer(
    checkpointer: Any,
    world_sizes: Sequence[tuple[int, int]] = DEFAULT_WORLD_SIZES,
    max_examples: int = 5,
    seed: int | None = None,
    *,
    invariants: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    shrink: bool = False,
    full: bool = False,
    reproduce: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
    user_file: str | None = None,
) -> Report:
    """Check a checkpointer on real process groups, saving at one world size and loading at
    another.

    ``save(state, path)`` and ``load(path, into, map_location=None)`` are called on every
    rank inside the initialized gloo group; ``state`` is a :class:`ShardedState`
    (``state.rank``, ``state.world_size``), its model sharded with FSDP2's ``fully_shard``.

    Args:
        checkpointer: the checkpointer; it is pickled to each rank, so its class must be
            defined at module level in an importable file.
        world_sizes: the (saving, loading) world sizes each example is drawn from.
        max_examples: examples per invariant.
        seed: seed of the draws (None: drawn, and recorded in ``report.seed``).
        invariants: names of :data:`DISTRIBUTED_INVARIANTS` to check (default: every one
            that is not costly, or every one with ``full=True``).
        timeout: seconds one process group may take (start, build, train, save or load)
            before its unfinished ranks are a hang, the failure of that example.
        shrink: whether to shrink a failing example (each try starts process groups).
        full: also check the costly invariants (a group per written file and per trial).
        reproduce: the command reported for rerunning (default: the Python call).
        progress: called with a line before and after each invariant, and while one runs.
        user_file: a file to import in each rank before the checkpointer is unpickled (the
            command line's ``FILE.py``).

    Returns:
        a :class:`~harness.report.Report`.

    Raises:
        InvalidArgument: a bad argument, a checkpointer without save or load or that does
            not pickle, or a torch without FSDP2's ``fully_shard``.
    """
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise InvalidArgument(f"max_examples={max_examples!r} must be a positive int")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgument(f"seed={seed!r} must be an int, or None for a random one")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidArgument(f"timeout={timeout!r} must be a positive number of seconds")
    pairs = _pairs(world_sizes)
    payload = _payload(checkpointer)
    if not fully_shard_available():
        raise InvalidArgument(
            "the installed torch has no torch.distributed with FSDP2's fully_shard and a CPU "
            "device mesh: check distributed checkpointers on a torch that has them"
        )
    known = [record.name for record in DISTRIBUTED_INVARIANTS]
    if invariants is not None:
        unknown = sorted(set(invariants) - set(known))
        if unknown:
            raise InvalidArgument(f"invariants names {unknown}; the invariants are {known}")
    chosen = [
        record
        for record in DISTRIBUTED_INVARIANTS
        if (record.name in invariants if invariants is not None else full or not record.costly)
        and _kept(record, pairs)
    ]
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    run_ = _Run(payload, float(timeout), user_file)
    cases = distributed_cases()
    checks = [
        Invariant(
            record.name,
            record.description,
            functools.partial(st.tuples, cases, st.sampled_from(_kept(record, pairs))),
            functools.partial(record.check, run_),
        )
        for record in chosen
    ]
    line = reproduce or (
        f"harness.check_distributed_checkpointer({type(checkpointer).__name__}(), "
        f"world_sizes={pairs!r}, max_examples={max_examples}, seed={seed}"
        + (f", timeout={timeout!r}" if timeout != DEFAULT_TIMEOUT else "")
        + ")"
    )
    return run_suite(
        checks,
        profile=f"check_distributed_checkpointer(max_examples={max_examples})",
        settings_=settings(
            max_examples=max_examples,
            derandomize=False,
            deadline=None,
            database=None,
            phases=Phase
            if shrink
            else [p for p in Phase if p not in (Phase.shrink, Phase.explain)],
        ),
        random_seed=seed,
        reproduce=lambda invariant: line,
        progress=progress,
    )


# --- The reference: DCP's documented recipe -------------------------------------------------


class _Application:
    """The ``Stateful`` application state of DCP's recipe: ``get_state_dict`` and
    ``set_state_dict`` for the model and the optimizer; the scheduler, the GradScaler, the
    data position,
    the global RNG states and the extra entries as ``io.BytesIO`` of ``torch.save`` (DCP
    loads in place into a state_dict of the keys it is given, and a fresh state does not
    know those parts' keys in advance)."""

    def __init__(self, state: TrainingState) -> None:
        self.state = state

    def _parts(self) -> dict[str, Any]:
        parts = {
            "scheduler": self.state.scheduler,
            "scaler": self.state.scaler,
            "data": self.state.data,
        }
        return {name: part for name, part in parts.items() if part is not None}

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optimizer = get_state_dict(self.state.model, self.state.optimizer)
        values = {name: part.state_dict() for name, part in self._parts().items()}
        values.update(rng=global_rng_state(), extra=dict(self.state.extra))
        return {"model": model, "optimizer": optimizer, **{k: _bytes(v) for k, v in values.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(
            self.state.model,
            self.state.optimizer,
            model_state_dict=state_dict["model"],
            optim_state_dict=state_dict["optimizer"],
        )
        self._load_parts(state_dict)

    def _load_parts(self, state_dict: dict[str, Any]) -> None:
        for name, part in self._parts().items():
            part.load_state_dict(_unbytes(state_dict[name]))
        set_global_rng_state(_unbytes(state_dict["rng"]))
        self.state.extra.update(_unbytes(state_dict["extra"]))


def _bytes(value: Any) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer


def _unbytes(buffer: io.BytesIO) -> Any:
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class DistributedCheckpoint:
    """torch.distributed.checkpoint's documented recipe, on every rank of the group:
    ``dcp.save({"app": state}, checkpoint_id=path)`` and ``dcp.load`` of the same, ``state``
    a ``Stateful`` whose ``state_dict``/``load_state_dict`` call
    ``torch.distributed.checkpoint.state_dict.get_state_dict``/``set_state_dict``. ``path``
    becomes a folder of ``.metadata`` and one ``__<rank>_0.distcp`` per saving rank; DCP
    reshards on load. DCP has no ``map_location``: it copies into the target's tensors."""

    def save(self, state: TrainingState, path: str) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save({"app": _Application(state)}, checkpoint_id=path)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.load({"app": _Application(into)}, checkpoint_id=path)


# --- The command line -----------------------------------------------------------------------
