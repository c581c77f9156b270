"""Loading untrusted files in a child process, so that a crash, a hang or a memory bomb is
observed and named instead of taking the harness down.

:func:`load_requests_in_child` runs ``torch.load`` on several files in one fresh Python
process (importing torch costs seconds, so loads are batched) under an address-space limit,
with a wall-clock limit per file. The child reports each file before it loads it, so a crash
is pinned on the file being loaded; the files after it are loaded in a new child. A child that
dies after its last load (a corrupted heap often crashes only at exit) has its files loaded
again one per child, to find the one that kills it; a request marked ``alone`` (a file known
to corrupt memory, whose damage could crash the next load) gets a child of its own from the
start. Each load ends as a :class:`LoadOutcome`; the parent judges nothing else (sentinels
are the caller's).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from harness.persistence import explain_error

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_TIMEOUT_S",
    "LoadOutcome",
    "LoadRequest",
    "SandboxError",
    "load_in_child",
    "load_many_in_child",
    "load_requests_in_child",
]

# Address space a load may use beyond what the child holds once torch is imported.
DEFAULT_MEMORY_BYTES = 2 * 1024**3
DEFAULT_TIMEOUT_S = 30.0
# Importing torch in the child is not counted against a file's timeout, but has its own.
_STARTUP_TIMEOUT_S = 180.0
_POLL_S = 0.02
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run with ``python -c``: a fresh interpreter with only torch (and what payloads import).
# The limit is set after importing torch, from the address space the import left mapped.
_CHILD = r"""
import json, os, resource, sys, time, warnings
job = json.load(open(sys.argv[1]))
sys.path.insert(0, job["root"])
import torch
warnings.simplefilter("ignore")
progress = open(job["progress"], "a", buffering=1)
def mapped():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3
limit = mapped() + job["memory_bytes"]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
progress.write(json.dumps({"ready": limit}) + "\n")
for index, request in job["requests"]:
    progress.write(json.dumps({"start": index}) + "\n")
    started = time.perf_counter()
    report = {"done": index, "kind": "loaded", "error_type": None, "message": ""}
    try:
        keywords = {"weights_only": request["weights_only"]}
        if request["mmap"]:
            keywords["mmap"] = True
        loaded = torch.load(request["path"], map_location="cpu", **keywords)
        if request["save_to"]:
            torch.save(loaded, request["save_to"])
        del loaded
    except BaseException as error:
        text = str(error)
        report["error_type"] = type(error).__name__
        report["message"] = text[:20000]
        alloc = "can't allocate memory" in text or "bad_alloc" in text
        if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and alloc):
            report["kind"] = "out_of_memory"
        else:
            report["kind"] = "refused"
    report["seconds"] = time.perf_counter() - started
    progress.write(json.dumps(report) + "\n")
"""


class SandboxError(RuntimeError):
    """The sandbox itself failed (the child could not start or import torch)."""


@dataclass(frozen=True)
class LoadRequest:
    """One ``torch.load`` call for the child.

    Attributes:
        path: the file to load.
        weights_only: passed to ``torch.load``.
        mmap: load with ``mmap=True``.
        save_to: where the child saves what it loaded with ``torch.save`` (for comparing it
            in the parent), or ``None``.
        alone: load it in a child of its own, so that memory it corrupts harms no other load
            and a crash at the child's exit is pinned on it.
    """

    path: str
    weights_only: bool
    mmap: bool = False
    save_to: str | None = None
    alone: bool = False


@dataclass(frozen=True)
class LoadOutcome:
    """How one load in the child ended.

    Attributes:
        path: the file loaded.
        kind: ``"loaded"``, ``"refused"`` (a Python exception), ``"crashed"`` (the child died,
            e.g. by a signal), ``"timeout"`` or ``"out_of_memory"`` (``MemoryError`` or an
            allocation refused under the address-space limit).
        error_type: the exception's type name (refused, out_of_memory), the signal's name
            (crashed, e.g. ``"SIGSEGV"``), else ``None``.
        detail: one line: :func:`harness.persistence.explain_error`'s for an exception, the
            exit status or the last line the child wrote to stderr for a crash.
        seconds: wall-clock time of the load.
    """

    path: str
    kind: str
    error_type: str | None = None
    detail: str = ""
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind} ({self.error_type})" if self.error_type else self.kind


def _explained(error_type: str, message: str) -> str:
    # explain_error reads only the type's name and the message: rebuild an exception of that
    # name rather than repeating its parsing here.
    return explain_error(type(error_type, (Exception,), {})(message))


def _read_progress(path: str) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file.read().splitlines() if line.endswith("}")]


def _last_stderr_line(path: str) -> str:
    with open(path, errors="replace") as file:
        lines = [line.strip() for line in file.read().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _signal_name(code: int) -> str | None:
    return signal.Signals(-code).name if code < 0 else None


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _run_child(
    pending: list[tuple[int, LoadRequest]],
    directory: str,
    *,
    timeout_s: float,
    memory_bytes: int,
) -> tuple[dict[int, LoadOutcome], tuple[str, str] | None]:
    """Load ``pending`` in one child until all are done or the child dies; the outcomes of
    the files it got to, by index, and, when a signal killed the child after its last load,
    the signal's name and the last line of its stderr (else ``None``)."""
    job_path = os.path.join(directory, "job.json")
    progress_path = os.path.join(directory, "progress.jsonl")
    stderr_path = os.path.join(directory, "stderr.txt")
    open(progress_path, "w").close()
    job = {
        "root": _PROJECT_ROOT,
        "memory_bytes": memory_bytes,
        "progress": progress_path,
        "requests": [
            [
                index,
                {
                    "path": r.path,
                    "weights_only": r.weights_only,
                    "mmap": r.mmap,
                    "save_to": r.save_to,
                },
            ]
            for index, r in pending
        ],
    }
    with open(job_path, "w") as file:
        json.dump(job, file)
    paths = dict((index, request.path) for index, request in pending)
    outcomes: dict[int, LoadOutcome] = {}
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, job_path],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            cwd=directory,
            start_new_session=True,
        )
    launched = time.monotonic()
    current: int | None = None
    current_since = launched
    ready = False
    while True:
        exited = process.poll() is not None
        for report in _read_progress(progress_path):
            if "ready" in report:
                ready = True
            elif "start" in report and report["start"] not in outcomes:
                if current != report["start"]:
                    current, current_since = report["start"], time.monotonic()
            elif "done" in report and report["done"] not in outcomes:
                index = report["done"]
                error_type = report["error_type"]
                outcomes[index] = LoadOutcome(
                    path=paths[index],
                    kind=report["kind"],
                    error_type=error_type,
                    detail=_explained(error_type, report["message"]) if error_type else "",
                    seconds=report["seconds"],
                )
                if current == index:
                    current = None
        if len(outcomes) == len(pending):
            name = _signal_name(process.wait())
            return outcomes, (name, _last_stderr_line(stderr_path)) if name else None
        now = time.monotonic()
        if current is not None and now - current_since > timeout_s:
            _kill(process)
            outcomes[current] = LoadOutcome(
                paths[current],
                "timeout",
                detail=f"no result after {timeout_s:g} s",
                seconds=now - current_since,
            )
            return outcomes, None
        if current is None and not ready and now - launched > _STARTUP_TIMEOUT_S:
            _kill(process)
            raise SandboxError(f"the child did not import torch in {_STARTUP_TIMEOUT_S:g} s")
        if exited:
            if current is None:
                raise SandboxError(
                    f"the child exited with status {process.returncode} before loading: "
                    f"{_last_stderr_line(stderr_path)}"
                )
            code = process.returncode
            name = _signal_name(code)
            why = f"killed by {name}" if name else f"exited with status {code}"
            outcomes[current] = LoadOutcome(
                paths[current],
                "crashed",
                error_type=name,
                detail=f"{why}; stderr: {_last_stderr_line(stderr_path)}",
                seconds=now - current_since,
            )
            return outcomes, None
        time.sleep(_POLL_S)


def load_requests_in_child(
    requests: Sequence[LoadRequest],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> list[LoadOutcome]:
    """Run each request in a fresh child process, in order, and say how each ended.

    One child loads the files one after another; when it crashes or a load runs past
    ``timeout_s`` seconds, that file gets the outcome and the files after it go to a new
    child. A child killed by a signal after its last load has its files loaded again, one
    per child; a file whose own child dies so is ``crashed`` although ``torch.load``
    returned. Requests marked ``alone`` always get a child of their own. The child may map
    ``memory_bytes`` bytes of address space beyond what importing torch took. Raises
    :class:`SandboxError` when a child cannot even import torch.
    """
    pending = list(enumerate(requests))
    alone = {index for index, request in pending if request.alone}
    outcomes: dict[int, LoadOutcome] = {}
    with tempfile.TemporaryDirectory(prefix="sandbox-") as directory:
        while pending:
            if pending[0][0] in alone:
                batch = pending[:1]
            else:
                batch = list(itertools.takewhile(lambda item: item[0] not in alone, pending))
            done, death = _run_child(
                batch, directory, timeout_s=timeout_s, memory_bytes=memory_bytes
            )
            if death is not None and len(batch) > 1:
                alone.update(index for index, _ in batch)
                continue
            if death is not None:
                (index, request), (name, stderr) = batch[0], death
                first = done[index]
                detail = f"{first.kind}, then the child was killed by {name}; stderr: {stderr}"
                done[index] = LoadOutcome(request.path, "crashed", name, detail, first.seconds)
            outcomes.update(done)
            pending = [(index, request) for index, request in pending if index not in outcomes]
    return [outcomes[index] for index in range(len(requests))]


def load_many_in_child(
    paths: Sequence[str | os.PathLike],
    *,
    weights_only: bool,
    mmap: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> list[LoadOutcome]:
    """``torch.load`` each of ``paths`` with the same options, batched in as few child
    processes as crashes allow; see :func:`load_requests_in_child`."""
    requests = [LoadRequest(os.fspath(path), weights_only, mmap) for path in paths]
    return load_requests_in_child(requests, timeout_s=timeout_s, memory_bytes=memory_bytes)


def load_in_child(
    path: str | os.PathLike,
    *,
    weights_only: bool,
    mmap: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> LoadOutcome:
    """``torch.load(path)`` in a fresh child process; see :func:`load_requests_in_child`."""
    return load_many_in_child(
        [path],
        weights_only=weights_only,
        mmap=mmap,
        timeout_s=timeout_s,
        memory_bytes=memory_bytes,
    )[0]
