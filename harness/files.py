"""Attacking and damaging every file a checkpointer writes.

A checkpointer may write one file or a folder of them (model weights, optimizer state, RNG
state, a JSON of metadata), some of them plain pickles. This module knows the kinds a
written file can be (:data:`FILE_KINDS`: one :class:`FileKind` record each, which tells a
file of its kind from its bytes and builds every hostile file of that kind), lists what a
save wrote (:func:`written_files`), and replaces one written file at a time:

- :func:`attack_written_files` puts each hostile file of the file's kind in its place and
  runs the user's load in a forked child (:func:`run_isolated`), judging each trial from the
  attack's record: a code payload that created its sentinel, a memory attack that was
  accepted, a bomb that exhausted memory, and any crash or hang are harm; a load that raises
  is a refusal.
- :func:`damage_written_files` damages each file in each way of :data:`DAMAGES` (truncated,
  emptied, one bit flipped, deleted) and runs the caller's trial, which loads and says how
  the result differs from the original; a load that succeeds with other content is
  *silently wrong*.

Every trial starts from the tree exactly as ``save`` wrote it (a pristine copy is taken
once), and the tree is left that way afterwards. Results are data: one record per trial.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import io
import json
import os
import pickle
import pickletools
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from hypothesis.errors import InvalidArgument

from harness.persistence import explain_error
from harness.sandbox import DEFAULT_MEMORY_BYTES, DEFAULT_TIMEOUT_S
from strategies.payloads import ATTACK_REGISTRY, Attack, attack

try:
    import resource
except ImportError:  # not a POSIX system
    resource = None

__all__ = [
    "DAMAGES",
    "FILE_KINDS",
    "ISOLATION_AVAILABLE",
    "OUTCOMES",
    "SAFETENSORS_ATTACKS",
    "AttackResult",
    "AttackTrial",
    "Damage",
    "DamageResult",
    "DamageTrial",
    "FileKind",
    "Isolated",
    "IsolationUnavailable",
    "WrittenFile",
    "attack_written_files",
    "damage_written_files",
    "file_kind",
    "kind_of",
    "run_isolated",
    "written_files",
]

# --- Running a function in a forked child ------------------------------------------------------

#: How a call in :func:`run_isolated` ended: ``function()`` returned or raised; the child
#: died without reporting (``crashed``: a signal or an exit status); it ran past the time
#: limit (``hung``, then killed); or it ran out of its address space (``out_of_memory``: a
#: ``MemoryError`` or an allocation torch refused).
OUTCOMES = ("returned", "raised", "crashed", "hung", "out_of_memory")
#: Whether :func:`run_isolated` works here: it needs ``os.fork``, ``resource`` and
#: ``/proc/self/status`` (Linux).
ISOLATION_AVAILABLE = (
    hasattr(os, "fork") and resource is not None and os.path.exists("/proc/self/status")
)
# The outcomes that are harm whatever the file: the loader took the process down or hung.
_FAILURES = frozenset({"crashed", "hung", "out_of_memory"})
# How long the parent waits on the pipe between checks of the time limit.
_SELECT_S = 1.0
# Exit status of a child that could not report (the report itself failed).
_UNREPORTED = 70
# The last bytes of a child's output kept in Isolated.output.
_OUTPUT_KEPT = 4096


class IsolationUnavailable(RuntimeError):
    """:func:`run_isolated` cannot run here (no ``os.fork`` or ``resource``: not Linux)."""


@dataclass(frozen=True)
class Isolated:
    """How one :func:`run_isolated` call ended.

    Attributes:
        outcome: one of :data:`OUTCOMES`.
        value: what ``function()`` returned (``returned`` only, else None).
        error_type: the exception's type name (``raised``, ``out_of_memory``).
        error: one line: the exception type and its reason
            (:func:`harness.persistence.explain_error`), or why the child ended.
        signal: the name of the signal that killed the child (``crashed``; ``SIGKILL`` for a
            ``hung`` child, killed by the parent).
        exit_status: the status of a child that exited without reporting (``crashed``).
        seconds: wall-clock time from the fork to the result.
        output: the last 4 KiB of what the child wrote to its stdout and stderr (which go
            to a file of their own, not to the caller's terminal); not compared.
    """

    outcome: str
    value: Any = None
    error_type: str | None = None
    error: str = ""
    signal: str | None = None
    exit_status: int | None = None
    seconds: float = 0.0
    output: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.outcome}: {self.error}" if self.error else self.outcome


def _mapped_bytes() -> int:
    """The address space this process maps now (VmSize), or 4 GiB when it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


def _ran_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    refused = "can't allocate memory" in text or "bad_alloc" in text
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and refused)


def _limit_address_space(memory_bytes: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _mapped_bytes() + memory_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def _report(function: Callable[[], Any]) -> bytes:
    """Run ``function`` and pickle how it ended as ``(outcome, value, error_type, error)``."""
    try:
        value = function()
    except BaseException as error:
        outcome = "out_of_memory" if _ran_out_of_memory(error) else "raised"
        return pickle.dumps((outcome, None, type(error).__name__, explain_error(error)))
    try:
        return pickle.dumps(("returned", value, None, ""))
    except Exception as error:
        why = f"the returned value could not be sent back: {explain_error(error)}"
        return pickle.dumps(("raised", None, type(error).__name__, why))


def _child(function: Callable[[], Any], write: int, output: int, memory_bytes: int) -> None:
    """The forked child: never returns."""
    status = _UNREPORTED
    try:
        # What the loaded code and torch print (a C++ log line, a logging traceback) is the
        # child's output, kept for its result, not the caller's terminal.
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        # Python's own streams too, where the caller had replaced them (pytest's capture).
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="replace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="replace")  # noqa: SIM115
        try:
            os.setpgid(0, 0)  # its own process group: the parent kills what it starts too
        except OSError:  # the parent did it first
            pass
        faulthandler.disable()  # a crash is the outcome, not a traceback on stderr
        # The parent's OpenMP worker threads do not exist in a forked child; a parallel
        # region would wait for them forever (measured: a matmul hangs without this).
        torch.set_num_threads(1)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _limit_address_space(memory_bytes)
        _write_all(write, _report(function))
        status = 0
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group (the child and what it started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exited(pid: int, deadline: float) -> bool:
    """Wait until the child has exited (left unreaped) or ``deadline``; whether it did."""
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _read_report(read: int, deadline: float) -> bytes | None:
    """Everything the child writes to the pipe until it closes it, or None at ``deadline``."""
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([read], [], [], min(remaining, _SELECT_S))
        if ready:
            chunk = os.read(read, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _check_callable(function: object, name: str) -> None:
    if not callable(function):
        raise InvalidArgument(f"{name}={function!r} must be a callable taking no arguments")


def _check_limits(timeout: object, memory_bytes: object) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidArgument(f"timeout={timeout!r} must be a positive number of seconds")
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) or memory_bytes <= 0:
        raise InvalidArgument(
            f"memory_bytes={memory_bytes!r} must be a positive int, e.g. memory_bytes=2**31"
        )


def run_isolated(
    function: Callable[[], Any],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> Isolated:
    """Run ``function()`` in a forked child and say how it ended (:class:`Isolated`).

    The child may map ``memory_bytes`` bytes of address space beyond what it maps right
    after the fork (``RLIMIT_AS``), writes no core file, runs torch on one thread, and is
    killed (with its process group) when it has not reported within ``timeout`` seconds.
    It sends back a small pickled result through a pipe: what ``function`` returned (which
    must pickle; else the outcome is ``raised``), or the exception's type and first line.
    What it writes to stdout and stderr goes to a temporary file, whose end is kept in
    ``Isolated.output``; a crash's ``error`` quotes its last line.
    The parent always reaps the child; an exception in the parent while it waits (Ctrl-C's
    ``KeyboardInterrupt`` included) kills the child first. Whatever ``function`` changes in
    the process (the state it loads into, memory it corrupts) dies with the child.

    Needs Linux (``os.fork`` and ``/proc``); elsewhere raises :class:`IsolationUnavailable`
    rather than running the function unprotected (:data:`ISOLATION_AVAILABLE` says which).
    """
    _check_callable(function, "function")
    _check_limits(timeout, memory_bytes)
    if not ISOLATION_AVAILABLE:
        raise IsolationUnavailable(
            "run_isolated needs os.fork, the resource module and /proc (Linux): run the "
            "checks that load hostile or damaged files on Linux"
        )
    sys.stdout.flush()  # else the child would write the parent's pending output again
    sys.stderr.flush()
    with tempfile.TemporaryFile(prefix="isolated-output-") as output:
        ended = _fork_and_wait(function, timeout, memory_bytes, output.fileno())
        output.seek(max(0, os.fstat(output.fileno()).st_size - _OUTPUT_KEPT))
        text = output.read().decode("utf-8", "replace")
    if ended.outcome == "crashed" and (last := _last_line(text)):
        # What a dying process says last (an abort's reason) is what the caller would
        # otherwise have seen on the terminal.
        ended = replace(ended, error=f"{ended.error}; it last wrote: {last}")
    return replace(ended, output=text)


def _last_line(text: str, limit: int = 200) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def _fork_and_wait(
    function: Callable[[], Any], timeout: float, memory_bytes: int, output: int
) -> Isolated:
    read, write = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(function, write, output, memory_bytes)
    os.close(write)
    reaped = False
    try:
        try:
            os.setpgid(pid, pid)
        except OSError:  # the child did it first, or already exited
            pass
        deadline = started + timeout
        data = _read_report(read, deadline)
        if data is None or not _exited(pid, deadline):
            _kill_group(pid)
            os.waitpid(pid, 0)
            reaped = True
            return Isolated(
                "hung",
                error=f"no result after {timeout:g} s; killed",
                signal="SIGKILL",
                seconds=time.monotonic() - started,
            )
        _kill_group(pid)  # whatever it started and left running; the pid is still held
        _, status = os.waitpid(pid, 0)
        reaped = True
        seconds = time.monotonic() - started
    finally:
        os.close(read)
        if not reaped:
            _kill_group(pid)
            os.waitpid(pid, 0)
    if data and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        outcome, value, error_type, error = pickle.loads(data)
        return Isolated(outcome, value, error_type, error, seconds=seconds)
    if os.WIFSIGNALED(status):
        name = _signal_name(os.WTERMSIG(status))
        return Isolated("crashed", error=f"killed by {name}", signal=name, seconds=seconds)
    code = os.WEXITSTATUS(status)
    return Isolated(
        "crashed", error=f"exited with status {code}", exit_status=code, seconds=seconds
    )


# --- Kinds of written files --------------------------------------------------------------------


def _head(path: str, size: int = 1 << 16) -> bytes:
    with open(path, "rb") as file:
        return file.read(size)


def _zip_members(path: str) -> list[str] | None:
    if not _head(path, 4) == b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _is_torchscript(path: str) -> bool:
    members = _zip_members(path) or []
    return any("/code/" in name or name.endswith("constants.pkl") for name in members)


def _is_torch_zip(path: str) -> bool:
    members = _zip_members(path) or []
    return any(name == "data.pkl" or name.endswith("/data.pkl") for name in members)


def _first_pickle(stream: io.BufferedIOBase) -> list[tuple[str, Any]] | None:
    """The opcodes (name, argument) of the pickle at the start of ``stream``, up to its STOP;
    None when it is not a pickle of protocol 2 or later (nothing is unpickled)."""
    operations = []
    try:
        for opcode, argument, _ in pickletools.genops(stream):
            if not operations and not (opcode.name == "PROTO" and 2 <= argument <= 5):
                return None
            operations.append((opcode.name, argument))
            if opcode.name == "STOP":
                return operations
    except (ValueError, struct.error, UnicodeDecodeError, OverflowError):
        return None
    return None


def _is_legacy_torch(path: str) -> bool:
    # The legacy format starts with a pickle of torch's magic number, in any protocol.
    with open(path, "rb") as file:
        operations = _first_pickle(io.BytesIO(file.read(64)))
    if operations is None:
        return False
    values = [argument for name, argument in operations if name not in ("PROTO", "FRAME")]
    return values == [torch.serialization.MAGIC_NUMBER, None]


def _is_plain_pickle(path: str) -> bool:
    with open(path, "rb") as file:
        return _first_pickle(file) is not None


# safetensors refuses headers above 100 MB; so does the detector.
_SAFETENSORS_MAX_HEADER = 100_000_000


def _safetensors_header(path: str) -> dict | None:
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return None
        (length,) = struct.unpack("<Q", prefix)
        if not 2 <= length <= min(size - 8, _SAFETENSORS_MAX_HEADER):
            return None
        text = file.read(length)
    if not text.startswith(b"{"):
        return None
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def _is_safetensors(path: str) -> bool:
    return _safetensors_header(path) is not None


def _safetensors_file(header: dict, data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    declared = len(text) if length is None else length
    return struct.pack("<Q", declared) + text + data


def _tensor(shape: list[int], start: int, end: int) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


def _safetensors_attack(name: str, group: str, description: str, harm: str, build) -> Attack:
    return Attack(name, group, description, harm, archive=lambda sentinel: build())


#: Hostile safetensors files, built by hand: what a loader that trusts the header is led
#: into. They run no code (safetensors holds none): a bomb is harm when loading exhausts
#: memory, a memory attack when it is accepted.
SAFETENSORS_ATTACKS: tuple[Attack, ...] = (
    _safetensors_attack(
        "safetensors_huge_header",
        "bomb",
        "a header length of 2**40 bytes in a file of a few dozen",
        "allocated the terabyte the header length declares",
        lambda: _safetensors_file({"weight": _tensor([2], 0, 8)}, bytes(8), length=2**40),
    ),
    _safetensors_attack(
        "safetensors_offsets_past_end",
        "memory",
        "a tensor of 2**18 float32 elements whose data offsets end 1 MiB past the end of "
        "the file's 16 bytes of data",
        "a tensor covers bytes past the end of the file",
        lambda: _safetensors_file({"weight": _tensor([2**18], 0, 2**20)}, bytes(16)),
    ),
    _safetensors_attack(
        "safetensors_overlapping_offsets",
        "memory",
        "two tensors whose data offsets overlap by 8 bytes",
        "two tensors share bytes the header gives to each alone",
        lambda: _safetensors_file(
            {"weight": _tensor([4], 0, 16), "bias": _tensor([4], 8, 24)}, bytes(24)
        ),
    ),
    _safetensors_attack(
        "safetensors_shape_past_offsets",
        "memory",
        "a tensor declared as 64 float32 elements (256 bytes) over data offsets of 16 bytes",
        "a tensor covers 240 bytes beyond its data offsets",
        lambda: _safetensors_file({"weight": _tensor([64], 0, 16)}, bytes(16)),
    ),
)


def _bare_pickle(record: Attack, sentinel: str) -> bytes:
    return record.pickle_stream(sentinel)


def _torch_read(path: str) -> Any:
    """``torch.load`` as a safe loader would call it, and without ``weights_only`` for files
    of objects it refuses (the checkpointer's own files, read in a forked child)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(path, map_location="cpu", weights_only=False)


def _safetensors_read(path: str) -> Any:
    from safetensors.torch import load_file  # an optional library, only for its own files

    return load_file(path)


def _pickle_read(path: str) -> Any:
    with open(path, "rb") as file:
        return pickle.load(file)


def _in_carrier(carrier: str) -> Callable[[Attack, str], bytes]:
    """The attack's own file (:meth:`strategies.payloads.Attack.checkpoint`) in ``carrier``."""
    return lambda record, sentinel: record.checkpoint(sentinel, carrier)


# The attack classes a TorchScript loader meets: the TorchScript archive, and the archives
# with zip tricks (a loader that reads the zip itself, or torch.load, meets them too).
_TORCHSCRIPT_ATTACKS = tuple(
    attack(name)
    for name in (
        "torchscript_archive",
        "zip_duplicate_member",
        "zip_header_mismatch",
        "zip_encrypted_flag",
    )
)


@dataclass(frozen=True)
class FileKind:
    """One kind of file a checkpointer writes, registered once in :data:`FILE_KINDS`.

    Attributes:
        name: e.g. ``"torch_zip"``.
        description: what files of this kind are and what writes them.
        detect: ``detect(path)``, whether the file at ``path`` is of this kind (from its
            bytes; it reads only what it needs and unpickles nothing).
        attacks: every attack class whose hostile file is written in this kind, in order;
            empty for a kind that is not attacked.
        build: ``build(record, sentinel)``, the bytes of the hostile file of this kind for an
            attack of :attr:`attacks`; None when there are none.
        read: ``read(path)``, the kind's own reader (what tells whether the format itself
            notices a damage: it raises on a file it cannot read); None for ``other``.
    """

    name: str
    description: str
    detect: Callable[[str], bool]
    attacks: tuple[Attack, ...] = ()
    build: Callable[[Attack, str], bytes] | None = None
    read: Callable[[str], Any] | None = None

    def hostile_file(self, record: Attack, sentinel: str) -> bytes:
        """The hostile file of this kind for ``record`` (one of :attr:`attacks`), whose code,
        if any is run, creates ``sentinel``; writes what the payload needs beside the
        sentinel first (:attr:`strategies.payloads.Attack.prepare`)."""
        if record not in self.attacks:
            raise InvalidArgument(
                f"{record.name!r} is not an attack of kind {self.name!r}; its attacks: "
                f"{[known.name for known in self.attacks]!r}"
            )
        if record.prepare is not None:
            record.prepare(sentinel)
        return self.build(record, sentinel)

    def hostile_files(self, sentinel: str) -> Iterator[tuple[str, bytes]]:
        """``(attack name, bytes)`` for every attack of this kind, in :attr:`attacks`
        order (see :meth:`hostile_file`); nothing for a kind that is not attacked."""
        for record in self.attacks:
            yield record.name, self.hostile_file(record, sentinel)


#: Every kind of written file, in the order :func:`kind_of` tries them (``other`` last:
#: anything the others do not claim).
FILE_KINDS: tuple[FileKind, ...] = (
    FileKind(
        "torchscript",
        "a `torch.jit.save` archive: a zip with `code/` and `constants.pkl` records",
        _is_torchscript,
        _TORCHSCRIPT_ATTACKS,
        _in_carrier("zip"),
        lambda path: torch.jit.load(path, map_location="cpu"),
    ),
    FileKind(
        "torch_zip",
        "a `torch.save` zip archive (the default format): a `data.pkl` record and one "
        "record per storage",
        _is_torch_zip,
        ATTACK_REGISTRY,
        _in_carrier("zip"),
        _torch_read,
    ),
    FileKind(
        "legacy_torch",
        "a `torch.save(..., _use_new_zipfile_serialization=False)` file: pickles starting "
        "with torch's magic number, then the raw storages",
        _is_legacy_torch,
        tuple(record for record in ATTACK_REGISTRY if "legacy" in record.carriers),
        _in_carrier("legacy"),
        _torch_read,
    ),
    FileKind(
        "safetensors",
        "a safetensors file: an 8-byte header length, a JSON header, the raw tensor data",
        _is_safetensors,
        SAFETENSORS_ATTACKS,
        _in_carrier("zip"),
        _safetensors_read,
    ),
    FileKind(
        "plain_pickle",
        "a pickle stream of protocol 2 to 5 (`pickle.dump`), read back with `pickle.load` "
        "or `torch.load`",
        _is_plain_pickle,
        tuple(r for r in ATTACK_REGISTRY if r.entry is not None and r.group == "code"),
        _bare_pickle,
        _pickle_read,
    ),
    FileKind(
        "other",
        "anything else (JSON, text, numpy, protocol 0 and 1 pickles): reported as not attacked",
        lambda path: True,
    ),
)

_KINDS = {kind.name: kind for kind in FILE_KINDS}


def file_kind(name: str) -> FileKind:
    """The record of the kind ``name`` (one of :data:`FILE_KINDS`)."""
    if name not in _KINDS:
        raise InvalidArgument(f"kind={name!r} must be one of {list(_KINDS)!r}")
    return _KINDS[name]


def kind_of(path: str | os.PathLike) -> FileKind:
    """The kind of the file at ``path``: the first of :data:`FILE_KINDS` that claims it."""
    path = os.fspath(path)
    return next(kind for kind in FILE_KINDS if kind.detect(path))


@dataclass(frozen=True)
class WrittenFile:
    """A regular file under the checkpoint's root.

    Attributes:
        path: its path relative to the root, with ``/`` separators.
        kind: the name of its :class:`FileKind`.
        size: its size in bytes.
    """

    path: str
    kind: str
    size: int


def _check_root(root: object) -> str:
    if not isinstance(root, str | os.PathLike) or not os.path.isdir(root):
        raise InvalidArgument(
            f"root={root!r} must be the directory holding what save wrote, e.g. the "
            "temporary directory the checkpoint path is in"
        )
    return os.path.abspath(os.fspath(root))


def written_files(root: str | os.PathLike) -> tuple[WrittenFile, ...]:
    """Every regular file under ``root`` (symbolic links are not followed), sorted by
    relative path, with its kind and size."""
    root = _check_root(root)
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                found.append(WrittenFile(relative, kind_of(path).name, os.path.getsize(path)))
    return tuple(sorted(found, key=lambda file: file.path))


# --- Trials on a tree restored before each one ----------------------------------------------


def _listing(root: str) -> dict[str, tuple]:
    """What is under ``root``: per relative path, its type, and for a file its size,
    modification time and inode (what changes when anything writes it)."""
    entries = {}
    for directory, subdirectories, names in os.walk(root):
        for name in subdirectories + names:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            status = os.lstat(path)
            if os.path.islink(path):
                entries[relative] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                entries[relative] = ("directory",)
            else:
                entries[relative] = ("file", status.st_size, status.st_mtime_ns, status.st_ino)
    return entries


class _Pristine:
    """A copy of ``root`` taken once; :meth:`restore` puts ``root`` back as it was."""

    def __init__(self, root: str, copy: str) -> None:
        self.root, self.copy = root, copy
        shutil.copytree(root, copy, symlinks=True)
        self.expected = _listing(root)

    def restore(self) -> None:
        now = _listing(self.root)
        if now == self.expected:
            return
        changed = [path for path, entry in self.expected.items() if now.get(path) != entry]
        files_only = set(now) <= set(self.expected) and all(
            self.expected[path][0] == "file" and now.get(path, ("file",))[0] == "file"
            for path in changed
        )
        if files_only:
            for path in changed:
                shutil.copy2(os.path.join(self.copy, path), os.path.join(self.root, path))
        else:
            for entry in os.scandir(self.root):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            shutil.copytree(self.copy, self.root, symlinks=True, dirs_exist_ok=True)
        self.expected = _listing(self.root)


def _work_directory(root: str) -> tempfile.TemporaryDirectory:
    """A temporary directory outside ``root``, for the pristine copy and the sentinels."""
    system = os.path.abspath(tempfile.gettempdir())
    inside = os.path.commonpath([system, root]) == root
    parent = os.path.dirname(root) if inside else None
    return tempfile.TemporaryDirectory(prefix="written-files-", dir=parent)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)


def _mark_unread(path: str) -> None:
    """Set the file's access time to the epoch: reading it moves the time on (also under
    ``relatime``, which updates an access time older than the modification time)."""
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns))


def _was_read(path: str) -> bool | None:
    try:
        return os.stat(path).st_atime_ns != 0
    except FileNotFoundError:  # the load deleted it
        return None


def _reads_tracked(path: str) -> bool:
    """Whether the file system under ``path`` (a regular file) records reads in the access
    time (not under ``noatime``)."""
    _mark_unread(path)
    with open(path, "rb") as file:
        file.read(1)
    tracked = os.stat(path).st_atime_ns != 0
    _mark_unread(path)
    return tracked


# --- Attacking every written file ------------------------------------------------------------


@dataclass(frozen=True)
class AttackTrial:
    """One written file replaced by one hostile file, and the load that followed.

    Attributes:
        file: the replaced file's path relative to the root.
        kind: its kind's name; the hostile file is of that kind.
        attack: the attack class's name.
        outcome: how the load ended, one of :data:`OUTCOMES`.
        harmed: whether the attack did harm (see :func:`attack_written_files`).
        detail: one line: what happened and why it is (not) harm.
        group: the attack's group: ``"code"``, ``"memory"`` or ``"bomb"``.
        ran: whether the payload's sentinel appeared (code attacks; False for the others).
        read: whether the load read the hostile file (its access time moved); None where
            the file system does not record it.
        seconds: wall-clock time of the load, fork included.
    """

    file: str
    kind: str
    attack: str
    outcome: str
    harmed: bool
    detail: str
    group: str = "code"
    ran: bool = False
    read: bool | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class AttackResult:
    """Every trial of :func:`attack_written_files`.

    Attributes:
        files: every written file, as :func:`written_files` lists it.
        trials: one per written file and hostile file of its kind, in that order.
        not_attacked: the written files of a kind with no hostile files (``other``).
    """

    files: tuple[WrittenFile, ...]
    trials: tuple[AttackTrial, ...]
    not_attacked: tuple[WrittenFile, ...]

    @property
    def harmful(self) -> tuple[AttackTrial, ...]:
        """The trials in which the attack did harm."""
        return tuple(trial for trial in self.trials if trial.harmed)

    @property
    def outcomes(self) -> dict[str, int]:
        """How many trials ended in each outcome (only those that occurred)."""
        return dict(Counter(trial.outcome for trial in self.trials))

    @property
    def trials_per_file(self) -> dict[str, int]:
        """How many trials each attacked file had."""
        return dict(Counter(trial.file for trial in self.trials))


def _judged(record: Attack, isolated: Isolated, ran: bool, read: bool | None) -> tuple[bool, str]:
    """Whether the attack did harm, and one line saying what happened."""
    outcome = isolated.outcome
    if record.group == "code" and ran:
        return True, f"load {record.harm}: its sentinel was created (load {isolated})"
    if outcome in ("crashed", "hung"):
        return True, f"load {isolated}"
    if record.group == "memory" and outcome == "returned":
        if read is False:
            return False, "load returned without reading the file"
        torch_loads = isolated.value or ()
        if torch_loads and not any(torch_loads):
            # Every torch.load in the child raised: torch refused the file, and the
            # checkpointer went on without it (damaged_files_detected's concern).
            return False, "torch.load refused the file; load went on without it"
        return True, f"load accepted the file: {record.harm}"
    if record.group == "bomb" and outcome == "out_of_memory":
        return True, f"load ran out of memory: it {record.harm} ({isolated.error})"
    if outcome == "raised":
        return False, f"refused: {isolated.error}"
    return False, str(isolated)


def _returning_nothing(function: Callable[[], Any]) -> None:
    function()  # what load returns (the state it loaded, perhaps) need not pickle


def _watching_torch_load(function: Callable[[], Any]) -> list[bool]:
    """In the forked child: call ``function()`` and say, for each ``torch.load`` it made
    (through ``torch.load`` or ``torch.serialization.load``, looked up at call time),
    whether it returned; what ``function`` returns is dropped."""
    returned: list[bool] = []
    real = torch.serialization.load

    def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            value = real(*args, **kwargs)
        except BaseException:
            returned.append(False)
            raise
        returned.append(True)
        return value

    torch.load = torch.serialization.load = watched
    function()
    return returned


def attack_written_files(
    root: str | os.PathLike,
    load: Callable[[], Any],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> AttackResult:
    """Replace each written file under ``root`` by each hostile file of its kind in turn and
    run ``load()`` in a forked child (:func:`run_isolated`) each time.

    ``root`` holds exactly what ``save`` wrote; ``load`` loads the checkpoint from its path
    inside ``root`` (what it returns is dropped in the child). Before each trial the tree is
    restored to what save wrote and one file is replaced; the sentinel a code payload would
    create lives outside ``root``. A trial is harm when:

    - a code attack's sentinel appears (whatever load did after);
    - load crashed the process or hung, whatever the attack;
    - a memory attack's load returned normally: it accepted a file whose storage records
      disagree with what it declares (unless the access time shows load never read it, or
      every ``torch.load`` it made raised: torch refused the file and load went on);
    - a bomb's load ran out of memory.

    A load that raises is a refusal, not harm. Files of kind ``other`` are listed in
    :attr:`AttackResult.not_attacked`. ``root`` is left as save wrote it.
    """
    root = _check_root(root)
    _check_callable(load, "load")
    _check_limits(timeout, memory_bytes)
    files = written_files(root)
    trials = []
    with _work_directory(root) as work:
        pristine = _Pristine(root, os.path.join(work, "pristine"))
        sentinels = os.path.join(work, "sentinels")
        os.mkdir(sentinels)
        tracked = bool(files) and _reads_tracked(os.path.join(root, files[0].path))
        try:
            for file in files:
                kind = file_kind(file.kind)
                path = os.path.join(root, file.path)
                for record in kind.attacks:
                    sentinel = os.path.join(sentinels, f"{len(trials)}-{record.name}.ran")
                    data = kind.hostile_file(record, sentinel)
                    pristine.restore()
                    _write(path, data)
                    if tracked:
                        _mark_unread(path)
                    isolated = run_isolated(
                        functools.partial(_watching_torch_load, load),
                        timeout=timeout,
                        memory_bytes=memory_bytes,
                    )
                    ran = os.path.exists(sentinel)
                    read = _was_read(path) if tracked else None
                    harmed, detail = _judged(record, isolated, ran, read)
                    trials.append(
                        AttackTrial(
                            file.path,
                            kind.name,
                            record.name,
                            isolated.outcome,
                            harmed,
                            detail,
                            record.group,
                            ran,
                            read,
                            isolated.seconds,
                        )
                    )
        finally:
            pristine.restore()
    not_attacked = tuple(file for file in files if not file_kind(file.kind).attacks)
    return AttackResult(files, tuple(trials), not_attacked)


# --- Damaging every written file ---------------------------------------------------------------


def _middle(start: int, end: int) -> int:
    return start + (end - start) // 2


def _zip_areas(data: bytes) -> dict[str, int]:
    """Offsets in the middle of ``data.pkl``'s content and of the first non-empty storage
    record's (torch's zip archives store records uncompressed)."""
    areas = {}
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError):
        return areas
    for info in infos:
        start = info.header_offset
        name_length, extra_length = struct.unpack("<HH", data[start + 26 : start + 30])
        content = start + 30 + name_length + extra_length
        if info.file_size == 0:
            continue
        where = _middle(content, content + info.file_size)
        if info.filename.endswith("data.pkl") and "header" not in areas:
            areas["header"] = where
        elif "/data/" in info.filename and "data" not in areas:
            areas["data"] = where
    return areas


def _legacy_areas(data: bytes) -> dict[str, int]:
    """The middle of the main pickle (the fourth) and of the raw storages after the fifth."""
    stream = io.BytesIO(data)
    ends = [0]
    for _ in range(5):
        if _first_pickle(stream) is None:
            return {}
        ends.append(stream.tell())
    areas = {"header": _middle(ends[3], ends[4])}
    if ends[5] < len(data):
        areas["data"] = _middle(ends[5], len(data))
    return areas


def _safetensors_areas(data: bytes) -> dict[str, int]:
    (length,) = struct.unpack("<Q", data[:8])
    areas = {"header": 8 + length // 2}
    if 8 + length < len(data):
        areas["data"] = _middle(8 + length, len(data))
    return areas


def _areas(data: bytes, kind: str) -> dict[str, int]:
    """Where a flipped bit lands: per area of the file (``header``: what describes the
    content, ``data``: the tensor bytes), an offset; two fixed fractions of the file where
    its kind has no such areas."""
    if kind in ("torch_zip", "torchscript"):
        areas = _zip_areas(data)
    elif kind == "legacy_torch":
        areas = _legacy_areas(data)
    elif kind == "safetensors":
        areas = _safetensors_areas(data)
    else:
        areas = {}
    return areas or {"first quarter": len(data) // 4, "third quarter": 3 * len(data) // 4}


def _flipped(data: bytes, kind: str) -> tuple[tuple[str, bytes | None], ...]:
    variants = []
    for area, offset in _areas(data, kind).items():
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        variants.append((f"bit 0 of byte {offset} ({area})", bytes(damaged)))
    return tuple(variants)


@dataclass(frozen=True)
class Damage:
    """One way of damaging a written file, registered once in :data:`DAMAGES`.

    Attributes:
        name: e.g. ``"truncated"``.
        description: what is done to the file.
        variants: ``variants(data, kind)``: for a file's bytes and its kind's name, each
            damaged version as ``(where, bytes)``, bytes None meaning the file is deleted;
            none where the damage would change nothing (an empty file emptied).
    """

    name: str
    description: str
    variants: Callable[[bytes, str], tuple[tuple[str, bytes | None], ...]]


#: Every way of damaging a written file. ``bit_flipped`` flips the lowest bit of one byte in
#: each area of the file. torch 2.13.0 does not check the CRC-32 of a zip record when it
#: reads one (measured with and without ``mmap``; Python's ``zipfile`` does check, and
#: refuses): a bit flipped in a storage record loads, with one tensor element changed; one
#: flipped in ``data.pkl`` mostly makes unpickling fail, but can load with the same or other
#: content, depending on the byte.
DAMAGES: tuple[Damage, ...] = (
    Damage(
        "truncated",
        "cut to half its size",
        lambda data, kind: (
            ((f"to {len(data) // 2} bytes", data[: len(data) // 2]),) if data else ()
        ),
    ),
    Damage(
        "emptied",
        "cut to 0 bytes",
        lambda data, kind: (("to 0 bytes", b""),) if data else (),
    ),
    Damage(
        "bit_flipped",
        "the lowest bit of one byte flipped, in the middle of each area (for zip archives "
        "the data.pkl record and the first storage record; for safetensors the JSON header "
        "and the data; elsewhere at a quarter and three quarters of the file)",
        lambda data, kind: _flipped(data, kind) if data else (),
    ),
    Damage(
        "deleted",
        "removed",
        lambda data, kind: (("removed", None),),
    ),
)


@dataclass(frozen=True)
class DamageTrial:
    """One written file damaged one way, and the trial that followed.

    Attributes:
        file: the damaged file's path relative to the root.
        damage: the :class:`Damage`'s name.
        outcome: how the trial ended, one of :data:`OUTCOMES`.
        value: what the trial returned: None when what loaded is identical to the
            original, else its description of the difference.
        where: which variant of the damage (e.g. ``"bit 0 of byte 812 (data)"``).
        error: one line: the exception or why the child ended (other outcomes).
        seconds: wall-clock time of the trial, fork included.
        format_noticed: for a silently wrong trial, whether the file kind's own reader
            (:attr:`FileKind.read`) refuses the damaged file: True means the checkpointer
            had an error to see and did not (a deleted file always counts as noticed);
            False that the format itself cannot tell (torch does not check the CRC-32 of
            zip records: a bit flipped in tensor data loads as another value); None where
            not asked (not silently wrong) or where the reader cannot tell (a kind without
            one, or a file it cannot read undamaged either).
    """

    file: str
    damage: str
    outcome: str
    value: Any = None
    where: str = ""
    error: str = ""
    seconds: float = 0.0
    format_noticed: bool | None = None

    @property
    def silently_wrong(self) -> bool:
        """The load succeeded and restored something other than what was saved."""
        return self.outcome == "returned" and self.value is not None


@dataclass(frozen=True)
class DamageResult:
    """Every trial of :func:`damage_written_files`.

    Attributes:
        files: every written file, as :func:`written_files` lists it.
        trials: one per written file, damage and variant, in that order.
    """

    files: tuple[WrittenFile, ...]
    trials: tuple[DamageTrial, ...]

    @property
    def silently_wrong(self) -> tuple[DamageTrial, ...]:
        """Trials whose load succeeded with other content than the original's."""
        return tuple(trial for trial in self.trials if trial.silently_wrong)

    @property
    def failures(self) -> tuple[DamageTrial, ...]:
        """Trials that crashed, hung or ran out of memory."""
        return tuple(trial for trial in self.trials if trial.outcome in _FAILURES)

    @property
    def refusals(self) -> tuple[DamageTrial, ...]:
        """Trials whose load raised: the damage was noticed."""
        return tuple(trial for trial in self.trials if trial.outcome == "raised")

    @property
    def unaffected(self) -> tuple[DamageTrial, ...]:
        """Trials whose load succeeded with content identical to the original's."""
        return tuple(
            trial for trial in self.trials if trial.outcome == "returned" and trial.value is None
        )


def _format_notices(
    file: WrittenFile,
    damaged: bytes | None,
    path: str,
    pristine: str,
    timeout: float,
    memory_bytes: int,
) -> bool | None:
    """Whether the kind's own reader refuses the damaged file now at ``path``: None where it
    cannot tell (no reader, or one that refuses the undamaged file too)."""
    if damaged is None:
        return True
    read = file_kind(file.kind).read
    if read is None:
        return None

    def refuses(where: str) -> bool:
        isolated = run_isolated(
            functools.partial(_returning_nothing, functools.partial(read, where)),
            timeout=timeout,
            memory_bytes=memory_bytes,
        )
        return isolated.outcome != "returned"

    if refuses(pristine):
        return None
    return refuses(path)


def damage_written_files(
    root: str | os.PathLike,
    trial: Callable[[], Any],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> DamageResult:
    """Damage each written file under ``root`` in each way of :data:`DAMAGES` in turn and run
    ``trial()`` in a forked child (:func:`run_isolated`) each time.

    ``root`` holds exactly what ``save`` wrote; ``trial`` loads the checkpoint from its path
    inside ``root``, compares what it loaded with the original and returns a small picklable
    verdict: None when identical, else a description of the difference. Before each trial
    the tree is restored to what save wrote and one file is damaged. A trial returning a
    verdict is *silently wrong* (:attr:`DamageResult.silently_wrong`); crashes, hangs and
    memory exhaustion are :attr:`DamageResult.failures`; a trial that raises is a refusal.
    ``root`` is left as save wrote it.
    """
    root = _check_root(root)
    _check_callable(trial, "trial")
    _check_limits(timeout, memory_bytes)
    files = written_files(root)
    trials = []
    with _work_directory(root) as work:
        pristine = _Pristine(root, os.path.join(work, "pristine"))
        try:
            for file in files:
                path = os.path.join(root, file.path)
                with open(os.path.join(pristine.copy, file.path), "rb") as original:
                    data = original.read()
                for damage in DAMAGES:
                    for where, damaged in damage.variants(data, file.kind):
                        pristine.restore()
                        if damaged is None:
                            os.unlink(path)
                        else:
                            _write(path, damaged)
                        isolated = run_isolated(trial, timeout=timeout, memory_bytes=memory_bytes)
                        noticed = None
                        if isolated.outcome == "returned" and isolated.value is not None:
                            noticed = _format_notices(
                                file,
                                damaged,
                                path,
                                os.path.join(pristine.copy, file.path),
                                timeout,
                                memory_bytes,
                            )
                        trials.append(
                            DamageTrial(
                                file.path,
                                damage.name,
                                isolated.outcome,
                                isolated.value,
                                where,
                                isolated.error,
                                isolated.seconds,
                                noticed,
                            )
                        )
        finally:
            pristine.restore()
    return DamageResult(files, tuple(trials))
