"""Loading untrusted files in a child process, so that a crash, a hang or a memory bomb is
observed and named instead of taking the harness down.

:func:`load_requests_in_child` runs each ``torch.load`` in a child process of its own, under
an address-space limit and a wall-clock limit. The children are forked from a small server
process, started once per harness process, that has imported torch and nothing of the
harness (importing torch costs a second or more; a fork of a process that has done it costs
milliseconds). The server keeps one child forked ahead, waiting for its request, so the fork
is paid while the previous load runs. Each child loads one file and ends: it reports how the
load ended, then collects garbage and runs the ``atexit`` hooks, as an interpreter does when
it exits (a corrupted heap often crashes only then), and dies; a child killed by a signal
after its report is ``crashed`` although ``torch.load`` returned. A request marked ``alone``
(a file known to corrupt memory) ends its child with the interpreter's whole shutdown
(module teardown and the C++ destructors included), as a fresh interpreter would; the next
loads go on while it shuts down, and how it ended is collected at the end of the batch. The
server watches each child's time limit itself and reports how the child ended; the caller
judges everything else (sentinels are the caller's). Each load ends as a :class:`LoadOutcome`.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    "start",
    "stop",
]

# Address space a load may use beyond what the child maps when it is forked.
DEFAULT_MEMORY_BYTES = 2 * 1024**3
DEFAULT_TIMEOUT_S = 30.0
# Importing torch in the server is not counted against a file's timeout, but has its own.
_STARTUP_TIMEOUT_S = 180.0
# How long beyond a load's own time limit the server may take to answer (the whole shutdown
# of an ``alone`` child, killing and reaping a child that ran out of time) before the server
# itself counts as broken.
_ANSWER_GRACE_S = 120.0
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The server, run with ``python -c``: a fresh interpreter with only torch (and what payloads
# import). It reads one request per line on stdin and answers one line on stdout. Its
# objects are frozen out of the garbage collector's reach after the import, so that a
# child's collection walks only what its load made.
_SERVER = r"""
import atexit, ctypes, gc, json, os, resource, select, signal, sys, time, warnings, weakref
sys.path.insert(0, sys.argv[1])
libc = ctypes.CDLL(None)
import torch
warnings.simplefilter("ignore")
torch.set_num_threads(1)
protocol_in, protocol_out = os.fdopen(0, "r"), os.fdopen(os.dup(1), "w", buffering=1)
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 1)
# One save and the loads a request may ask for, so that what torch sets up on first use
# (its unpicklers' tables, lazy imports) is done once here, not in every child.
torch.save({"weight": torch.ones(2)}, "warm-up.pt")
for options in ({"weights_only": True}, {"weights_only": False}, {"mmap": True}):
    try:
        torch.load("warm-up.pt", map_location="cpu", **options)
    except Exception:
        pass
os.unlink("warm-up.pt")
# torch's own finalizers run at exit (unregistering its operator libraries: 60 ms a child);
# a child runs only those its load made, unless it shuts down whole.
torch_finalizers = [f for f in list(weakref.finalize._registry) if f.atexit]
for finalizer in torch_finalizers:
    finalizer.atexit = False
gc.freeze()

def mapped():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3

def run(requests, reports, server_fds, server):
    # The forked child: wait for its request, load, report, end as an interpreter ends.
    os.setpgid(0, 0)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: it dies with the server
    if os.getppid() != server:
        os._exit(0)
    for fd in server_fds:
        os.dup2(null, fd)  # not closed: the file objects that own them close them at exit
    line = os.fdopen(requests, "r").readline()
    if not line:
        os._exit(0)
    request = json.loads(line)
    log = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(request["cwd"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = mapped() + request["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = os.fdopen(reports, "w", buffering=1)
    out.write(json.dumps({"start": True}) + "\n")
    started = time.perf_counter()
    report = {"kind": "loaded", "error_type": None, "message": ""}
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
    out.write(json.dumps(report) + "\n")
    if request["alone"]:
        for finalizer in torch_finalizers:
            finalizer.atexit = True
        gc.unfreeze()
        raise SystemExit(0)  # the whole shutdown of an interpreter
    gc.collect()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

# The server's descriptors for its children (report pipes, pidfds): a new child closes them.
held = set()
# Children marked alone that have reported and are still shutting down, oldest first.
pending = []

def spawn():
    # A child forked ahead: (pid, the pipe its request goes to, the pipe its report comes on).
    request_read, request_write = os.pipe()
    report_read, report_write = os.pipe()
    sys.stderr.flush()
    server = os.getpid()
    pid = os.fork()
    if pid == 0:
        inherited = [request_write, report_read, *held]
        run(request_read, report_write, [0, protocol_out.fileno(), *inherited], server)
    os.close(request_read)
    os.close(report_write)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    os.set_blocking(report_read, False)
    return pid, request_write, report_read

def lines_of(child):
    text = b"".join(child["chunks"]).decode(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

def has_started(child):
    return any("start" in line for line in lines_of(child))

def has_reported(child):
    return any("kind" in line for line in lines_of(child))

def never(child):
    return False

def drain(child):
    # What the child has written so far; ``eof`` once it closed its end.
    while not child["eof"]:
        try:
            chunk = os.read(child["read"], 1 << 16)
        except BlockingIOError:
            return
        if chunk:
            child["chunks"].append(chunk)
        else:
            child["eof"] = True

def wait_for(child, condition, deadline):
    # Until ``condition(child)`` holds, the child has exited (left unreaped) or ``deadline``
    # passes; whether it has exited.
    while True:
        drain(child)
        if os.waitid(os.P_PID, child["pid"], os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if condition(child):
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        watched = [] if child["eof"] else [child["read"]]
        if child["pidfd"] is None:
            select.select(watched, [], [], min(remaining, 0.002))
        else:
            select.select(watched + [child["pidfd"]], [], [], remaining)

def finish(child):
    # Wait for the child to end until its deadline, kill its group, reap it; how it ended.
    timed_out = not wait_for(child, never, child["deadline"])
    try:
        os.killpg(child["pid"], signal.SIGKILL)  # the child if it ran out of time; what it started
    except (ProcessLookupError, PermissionError):
        pass
    _, status = os.waitpid(child["pid"], 0)
    drain(child)  # what it wrote last
    for fd in (child["read"], child["pidfd"]):
        if fd is not None:
            held.discard(fd)
            os.close(fd)
    reports = [line for line in lines_of(child) if "kind" in line]
    signalled = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return {
        "started": has_started(child),
        "report": reports[0] if reports else None,
        "signal": None if timed_out else signalled,
        "exit_status": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "timeout": timed_out,
        "seconds": time.monotonic() - child["started"],
    }

def answer(request, forked):
    pid, request_write, report_read = forked
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    child = {"pid": pid, "pidfd": pidfd, "read": report_read, "chunks": [], "eof": False}
    held.update(fd for fd in (report_read, pidfd) if fd is not None)
    dispatched = time.monotonic()
    os.write(request_write, (json.dumps(request) + "\n").encode())
    os.close(request_write)
    spare = spawn()
    # The time limit runs from the child's start line, as the load begins.
    wait_for(child, has_started, dispatched + request["timeout_s"] + 60)
    child["started"] = time.monotonic()
    child["deadline"] = child["started"] + (request["timeout_s"] if has_started(child) else 0)
    if request["alone"]:
        # Its whole shutdown takes long: the next loads go on meanwhile, and how it ended is
        # collected at the end of the batch (still within its own time limit).
        if not wait_for(child, has_reported, child["deadline"]) and has_reported(child):
            pending.append(child)
            return spare, {"pending": True}
    return spare, finish(child)

forked = spawn()
protocol_out.write(json.dumps({"ready": True}) + "\n")
for line in protocol_in:
    request = json.loads(line)
    if "collect" in request:
        reply = {"finished": [finish(child) for child in pending]}
        pending.clear()
    else:
        forked, reply = answer(request, forked)
    protocol_out.write(json.dumps(reply) + "\n")
"""


class SandboxError(RuntimeError):
    """The sandbox itself failed (the server could not start or import torch, or a child
    died before it began to load)."""


@dataclass(frozen=True)
class LoadRequest:
    """One ``torch.load`` call for the child.

    Attributes:
        path: the file to load.
        weights_only: passed to ``torch.load``.
        mmap: load with ``mmap=True``.
        save_to: where the child saves what it loaded with ``torch.save`` (for comparing it
            in the parent), or ``None``.
        alone: the file may corrupt memory: its child ends with the interpreter's whole
            shutdown, so that a crash the damage causes at exit is pinned on it.
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


def _last_stderr_line(path: str) -> str:
    try:
        with open(path, errors="replace") as file:
            lines = [line.strip() for line in file.read().splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Server:
    """The server process of this harness process: started on first use, stopped at exit."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="sandbox-")
        #: The folder of this run's loads.
        self.directory = os.path.join(self._directory.name, "loads")
        os.mkdir(self.directory)
        self._stderr = os.path.join(self._directory.name, "server-stderr.txt")
        with open(self._stderr, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _SERVER, _PROJECT_ROOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=self._directory.name,
                start_new_session=True,
            )
        self.owner = os.getpid()
        self._lines = b""
        self._started = time.monotonic()
        self._ready = False

    def _wait_until_ready(self) -> None:
        """Wait for the server's ready line (it has imported torch), once."""
        if not self._ready:
            try:
                self._reply(self._started + _STARTUP_TIMEOUT_S, "import torch")
            except BaseException:
                self.stop()
                raise
            self._ready = True

    def _reply(self, deadline: float, doing: str) -> dict[str, Any]:
        """The server's next line, or SandboxError once ``deadline`` passes or it dies."""
        out = self.process.stdout.fileno()
        while b"\n" not in self._lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise SandboxError(f"the sandbox server did not {doing} in time")
            ready, _, _ = select.select([out], [], [], remaining)
            if ready:
                chunk = os.read(out, 1 << 16)
                if not chunk:
                    status = self.process.wait()
                    self.stop()
                    raise SandboxError(
                        f"the sandbox server exited with status {status} before it could "
                        f"{doing}: {_last_stderr_line(self._stderr)}"
                    )
                self._lines += chunk
        line, self._lines = self._lines.split(b"\n", 1)
        return json.loads(line)

    def load(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the server's account of how its child ended, or
        ``{"pending": True}`` for an ``alone`` child that has reported and is shutting down
        (see :meth:`collect`)."""
        return self._ask(request, request["timeout_s"])

    def collect(self, timeout_s: float) -> list[dict[str, Any]]:
        """How each pending child ended, in the order they were sent; each has ``timeout_s``
        from the start of its load to end."""
        return self._ask({"collect": True}, timeout_s)["finished"]

    def _ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self._wait_until_ready()
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError as error:
            self.stop()
            raise SandboxError(f"the sandbox server is gone: {error}") from error
        deadline = time.monotonic() + timeout_s + _ANSWER_GRACE_S
        try:
            return self._reply(deadline, "answer")
        except KeyboardInterrupt:
            self.stop()  # the child it was watching dies with it
            raise

    @property
    def alive(self) -> bool:
        """Whether the server runs and belongs to this process (not a forked copy's)."""
        return self.owner == os.getpid() and self.process.poll() is None

    def stop(self) -> None:
        """Kill the server and its children; remove its folder."""
        if self.owner == os.getpid():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self._directory.cleanup()


_server: _Server | None = None
_server_lock = threading.Lock()


def start() -> None:
    """Start this process's sandbox server now, without waiting for it to import torch, so
    that its start-up overlaps other work; the first load waits for it. Does nothing when it
    runs already. Loading starts the server anyway: calling this only saves time."""
    with _server_lock:
        _running_server()


def _running_server() -> _Server:
    global _server
    if _server is None or not _server.alive:
        if _server is not None and _server.owner == os.getpid():
            _server.stop()
        _server = _Server()
    return _server


@atexit.register
def stop() -> None:
    """Stop this process's sandbox server, if it runs (at exit, or before a fork whose
    children must start their own)."""
    if _server is not None:
        _server.stop()


def _outcome(request: LoadRequest, reply: dict[str, Any], stderr: str, timeout_s: float):
    """The :class:`LoadOutcome` of the server's account of one child."""
    report = reply["report"]
    seconds = reply["seconds"]
    if reply["timeout"]:
        detail = f"no result after {timeout_s:g} s"
        if report is not None:
            detail = f"{report['kind']}, then the child did not end within {timeout_s:g} s"
        return LoadOutcome(request.path, "timeout", detail=detail, seconds=seconds)
    if report is None:
        if not reply["started"]:
            raise SandboxError(f"the child exited before loading: {_last_stderr_line(stderr)}")
        if reply["signal"] is not None:
            name = _signal_name(reply["signal"])
            why = f"killed by {name}"
        else:
            name, why = None, f"exited with status {reply['exit_status']}"
        detail = f"{why}; stderr: {_last_stderr_line(stderr)}"
        return LoadOutcome(request.path, "crashed", name, detail, seconds)
    if reply["signal"] is not None:
        name = _signal_name(reply["signal"])
        detail = (
            f"{report['kind']}, then the child was killed by {name}; stderr: "
            f"{_last_stderr_line(stderr)}"
        )
        return LoadOutcome(request.path, "crashed", name, detail, report["seconds"])
    error_type = report["error_type"]
    return LoadOutcome(
        path=request.path,
        kind=report["kind"],
        error_type=error_type,
        detail=_explained(error_type, report["message"]) if error_type else "",
        seconds=report["seconds"],
    )


def load_requests_in_child(
    requests: Sequence[LoadRequest],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> list[LoadOutcome]:
    """Run each request in a child process of its own, in order, and say how each ended.

    Each child is forked from the sandbox server (a process that has imported torch, started
    on the first call and kept until this process exits). It may map ``memory_bytes`` bytes
    of address space beyond what it maps when forked, writes no core file, and is killed
    with its process group when its load runs past ``timeout_s`` seconds (``timeout``) or
    when it ends (whatever it started). After its load the child collects garbage and runs
    the ``atexit`` hooks; one killed by a signal then is ``crashed`` although
    ``torch.load`` returned. Requests marked ``alone`` end with the interpreter's whole
    shutdown, which overlaps the loads after them. Raises :class:`SandboxError` when the
    server cannot import torch or a child dies before it begins to load.
    """
    outcomes: list[LoadOutcome | None] = []
    pending: list[tuple[int, str]] = []  # alone loads whose child is still shutting down
    with _server_lock:
        server = _running_server()
        for index, request in enumerate(requests):
            # One folder per run: each load's working directory; stderr truncated per load,
            # one file each for the children that end while later loads run.
            name = f"stderr-{index}.txt" if request.alone else "stderr.txt"
            stderr = os.path.join(server.directory, name)
            message = {
                "path": request.path,
                "weights_only": request.weights_only,
                "mmap": request.mmap,
                "save_to": request.save_to,
                "alone": request.alone,
                "timeout_s": timeout_s,
                "memory_bytes": memory_bytes,
                "cwd": server.directory,
                "stderr": stderr,
            }
            reply = server.load(message)
            if reply.get("pending"):
                pending.append((index, stderr))
                outcomes.append(None)
            else:
                outcomes.append(_outcome(request, reply, stderr, timeout_s))
        if pending:
            for (index, stderr), reply in zip(pending, server.collect(timeout_s), strict=True):
                outcomes[index] = _outcome(requests[index], reply, stderr, timeout_s)
    return outcomes


def load_many_in_child(
    paths: Sequence[str | os.PathLike],
    *,
    weights_only: bool,
    mmap: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> list[LoadOutcome]:
    """``torch.load`` each of ``paths`` with the same options, each in a child of its own;
    see :func:`load_requests_in_child`."""
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
    """``torch.load(path)`` in a child process; see :func:`load_requests_in_child`."""
    return load_many_in_child(
        [path],
        weights_only=weights_only,
        mmap=mmap,
        timeout_s=timeout_s,
        memory_bytes=memory_bytes,
    )[0]
