"""Running invariants as Hypothesis properties and collecting a :class:`~harness.report.Report`.

An :class:`Invariant` pairs a strategy with a check. :func:`run_invariant` runs the check on
examples drawn under the active Hypothesis profile and returns what happened: how many
examples were tried (and, apart, how many calls went into shrinking), every distinct failure
with its own shrunk example, the observations and findings the check reported, and the
warnings raised meanwhile (captured, not printed). Nothing a check raises stops the run: any
exception, ``BaseException`` included, is a failure of that invariant, except
``KeyboardInterrupt``, on which :func:`run_suite` stops and returns the partial report,
marked interrupted. The CLI, :func:`harness.check_checkpointer` and the tests all go through
here.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import importlib
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import example, given, seed, settings
from hypothesis.errors import Flaky, InvalidArgument
from hypothesis.statistics import collector
from hypothesis.strategies import SearchStrategy

from harness.capabilities import torch_version
from harness.report import Failure, Finding, InvariantResult, Report, strip_ansi

__all__ = [
    "PROGRESS_INTERVAL",
    "Invariant",
    "Unshrinkable",
    "default_jobs",
    "run_invariant",
    "run_suite",
    "scratch_directory",
]

#: Seconds between two "still running" progress lines while one invariant runs.
PROGRESS_INTERVAL = 10.0

# The phases of a Hypothesis run whose calls are shrinking a failure, not searching for one.
_SHRINK_PHASES = ("shrink-phase", "explain-phase")


@dataclass(frozen=True)
class Invariant:
    """A named promise checked on every example a strategy draws.

    Attributes:
        name: short identifier, e.g. ``"state_dict_round_trip"``.
        description: one sentence stating the promise.
        examples: a function returning the strategy of examples (called once per run, so
            that strategies are built after the capability probe).
        check: raises ``AssertionError`` when the promise is broken for an example; may
            return (or yield) observations to report, which are counted, not judged:
            strings (e.g. "saving twice gives identical bytes"; those starting with
            ``"finding: "`` are findings) or :class:`~harness.report.Finding` objects.
        explicit: a function returning examples checked first, on every run whatever the
            seed and budget (Hypothesis's explicit examples: never shrunk, not counted in
            ``max_examples``); by default none.
    """

    name: str
    description: str
    examples: Callable[[], SearchStrategy]
    check: Callable[[Any], Iterable[str | Finding] | None]
    explicit: Callable[[], Sequence[Any]] = tuple


class Unshrinkable(BaseException):
    """A failure a check raises when every further try would cost too much (a call that ran
    into its time limit): it ends the invariant's search at once, unshrunk, and is reported
    with the example it was raised on; the run goes on with the next invariant.

    A ``BaseException``, so that Hypothesis lets it through instead of shrinking it.
    """


class EscapedBaseException(Exception):
    """A ``BaseException`` that is not an ``Exception`` (``SystemExit``, ``GeneratorExit``,
    a class of one's own), raised by a check.

    Hypothesis lets such exceptions end the whole run; carried in this wrapper they are a
    failure of the invariant like any other, shrunk and reported.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


def _first_lines(error: BaseException, limit: int = 20) -> str:
    if isinstance(error, EscapedBaseException):
        error = error.original
    text = strip_ansi(f"{type(error).__name__}: {error}")
    lines = text.splitlines()
    return "\n".join(lines[:limit] + (["..."] if len(lines) > limit else []))


def _warning_key(message: warnings.WarningMessage) -> str:
    text = str(message.message).strip().splitlines()
    return strip_ansi(f"{message.category.__name__}: {text[0] if text else ''}")


def _searched(statistics: dict[str, Any]) -> int:
    """Test cases the check ran on to the end or to a failure, outside shrinking."""
    return sum(
        1
        for phase, stats in statistics.items()
        if phase.endswith("-phase") and phase not in _SHRINK_PHASES
        for case in stats.get("test-cases", ())
        if case.get("status") in ("valid", "interesting")
    )


# The folder of the invariant running now (see scratch_directory), None outside a run.
_run_folder: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "harness_suite_run_folder", default=None
)


def _empty(folder: str) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


@contextlib.contextmanager
def scratch_directory() -> Iterator[str]:
    """An empty folder for the files of one example, emptied when the block ends.

    While :func:`run_invariant` runs, this is the run's own folder, made once for the run and
    removed after it: removing a file costs a tenth of a millisecond here, a folder of its own
    for every example one to four (its ``mkdir`` and ``rmdir`` under disk contention).
    Outside a run, and in a block nested in another, a new temporary folder. A file that
    is still mapped (a load with ``mmap=True``) stays readable after it is removed.
    """
    folder = _run_folder.get()
    if folder is None:
        with tempfile.TemporaryDirectory() as directory:
            yield directory
        return
    token = _run_folder.set(None)  # a block nested in this one gets a folder of its own
    try:
        yield folder
    finally:
        _run_folder.reset(token)
        _empty(folder)


@contextlib.contextmanager
def _own_folder() -> Iterator[None]:
    with tempfile.TemporaryDirectory() as folder:
        token = _run_folder.set(folder)
        try:
            yield
        finally:
            _run_folder.reset(token)


class _Heartbeat:
    """Calls ``say`` every ``interval`` seconds, from a thread, until stopped."""

    def __init__(self, interval: float, say: Callable[[float], None]) -> None:
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(interval, say), daemon=True)

    def _run(self, interval: float, say: Callable[[float], None]) -> None:
        while not self._stop.wait(interval):
            say(time.perf_counter() - self._started)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def run_invariant(
    invariant: Invariant,
    *,
    settings_: settings | None = None,
    random_seed: int | None = None,
    reproduction: str | None = None,
    progress: Callable[[str], None] | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
) -> InvariantResult:
    """Check ``invariant`` on examples drawn under ``settings_`` (default: the active ones).

    Every distinct failure Hypothesis finds is reported with its own message and minimal
    example. ``examples`` in the result counts the examples tried while searching (at most
    ``max_examples`` for a passing run), ``shrinking`` the further calls made to shrink and
    replay failures; both come from Hypothesis's own per-phase statistics. Warnings raised
    meanwhile are counted, not printed (filters that ignore a warning or turn it into an
    error still apply).

    Args:
        invariant: what to check.
        settings_: the Hypothesis settings to draw examples under.
        random_seed: seed for a profile that is not derandomized, so that the run can be
            repeated exactly.
        reproduction: the command line reported for rerunning this check.
        progress: called (from another thread) every ``progress_interval`` seconds with a
            line saying how far the invariant got.
        progress_interval: seconds between two progress lines.

    Raises:
        KeyboardInterrupt: the run was interrupted; nothing else escapes.
    """
    calls = 0
    failing_calls = 0
    explicit: tuple[Any, ...] = ()
    explicit_calls = 0
    observations: Counter[str] = Counter()
    upstream: dict[str, str] = {}
    statistics: dict[str, Any] = {}

    def check(example):
        nonlocal calls, failing_calls, explicit_calls
        calls += 1
        explicit_calls += any(example is chosen for chosen in explicit)
        try:
            # list(): a check may be a generator that yields observations as it goes.
            seen = list(invariant.check(example) or ())
        except KeyboardInterrupt:
            raise
        except (Exception, Unshrinkable) as error:
            failing_calls += 1
            _remember_example(error, example)
            raise
        except BaseException as error:
            failing_calls += 1
            wrapped = EscapedBaseException(error)
            _remember_example(wrapped, example)
            raise wrapped from error
        texts = set()
        for item in seen:
            if isinstance(item, Finding):
                text = strip_ansi(item.observation)
                if item.upstream:
                    upstream[text] = item.upstream
            else:
                text = strip_ansi(str(item))
            texts.add(text)
        observations.update(texts)

    def say(elapsed: float) -> None:
        state = ", a failure found and being shrunk" if failing_calls else ""
        progress(
            f"    {invariant.name}: still running, {calls} examples so far{state}, {elapsed:.0f}s"
        )

    started = time.perf_counter()
    failure: BaseException | None = None
    with warnings.catch_warnings(record=True) as captured:
        # Appended: whatever the filters do not ignore or turn into errors is counted each time.
        warnings.filterwarnings("always", append=True)
        heartbeat = _Heartbeat(progress_interval, say) if progress else contextlib.nullcontext()
        with heartbeat, _own_folder():
            try:
                test = given(invariant.examples())(check)
                explicit = tuple(invariant.explicit())
                for chosen in reversed(explicit):
                    test = example(chosen)(test)
                property_ = settings(settings_ or settings.default, report_multiple_bugs=True)(test)
                if random_seed is not None:
                    property_ = seed(random_seed)(property_)
                with collector.with_value(statistics.update):
                    property_()
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # the invariant failed; report it, go on with the next
                failure = error
    seconds = time.perf_counter() - started
    searched = calls - explicit_calls
    examples = min(searched, _searched(statistics)) if statistics else searched
    failures = _failures(failure, reproduction) if failure is not None else []
    return InvariantResult(
        name=invariant.name,
        description=invariant.description,
        examples=examples,
        passed=failure is None,
        seconds=seconds,
        failures=failures,
        shrinking=calls - explicit_calls - examples,
        observations=dict(observations),
        upstream=upstream,
        warnings=dict(Counter(_warning_key(message) for message in captured)),
        explicit=len(explicit),
    )


# The attribute of an exception raised by a check that holds the example it was raised on:
# Hypothesis replays every minimal failing example last and reports what those raised.
_EXAMPLE = "_harness_example"


def _remember_example(error: BaseException, example: Any) -> None:
    try:
        text = repr(example)
    except Exception as failure:  # a repr that fails must not hide the check's failure
        text = f"<example whose repr raised {type(failure).__name__}>"
    with contextlib.suppress(AttributeError, TypeError):
        setattr(error, _EXAMPLE, text)


def _failures(error: BaseException, reproduction: str | None) -> list[Failure]:
    """One :class:`Failure` per distinct error Hypothesis reported in ``error``."""

    def example_of(exception: BaseException) -> str | None:
        return getattr(exception, _EXAMPLE, None)

    if isinstance(error, Flaky) and isinstance(error, BaseExceptionGroup):
        # The failure did not happen again on replay: say so, and show what failed first.
        inner = error.exceptions[0]
        message = f"{_first_lines(error, limit=5)}\n{_first_lines(inner)}"
        return [Failure(message, example_of(inner), reproduction)]
    if isinstance(error, BaseExceptionGroup) and example_of(error) is None:
        # Hypothesis's own group of several distinct failures (a group the check raised
        # itself is one failure), each replayed on its minimal example.
        return [
            Failure(_first_lines(inner), example_of(inner), reproduction)
            for inner in error.exceptions
        ]
    return [Failure(_first_lines(error), example_of(error), reproduction)]


def run_suite(
    invariants: Sequence[Invariant],
    *,
    profile: str,
    settings_: settings | None = None,
    random_seed: int | None = None,
    reproduce: Callable[[Invariant], str] | None = None,
    progress: Callable[[str], None] | None = None,
    excluded: Sequence[str] = (),
    profile_reason: str | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
    jobs: int = 1,
    worker_start: Callable[[], None] | None = None,
) -> Report:
    """Run each invariant under a Hypothesis profile and return the report.

    The examples are drawn under ``settings_``, or else the registered profile ``profile``;
    the global Hypothesis settings are left as they are. ``random_seed`` fixes the draws of
    a randomized profile; without one a seed is drawn, and either way it is recorded in
    ``Report.seed`` (None for a derandomized profile). ``progress`` is called with a line
    before and after each invariant, and every ``progress_interval`` seconds while one
    runs (from another thread). ``excluded`` (what the caller left out) and
    ``profile_reason`` (why this profile) are recorded in the report.

    ``jobs`` above 1 runs the invariants in that many worker processes (forked from this
    one, each with one torch thread; at most one per invariant), each invariant whole in
    one worker with the same settings and seed, so the report is the one a serial run gives
    but for the times; ``worker_start`` is called in each worker before its first
    invariant. Where processes cannot be forked the invariants run here, one after another.

    A ``KeyboardInterrupt`` stops the run: the report then holds the invariants that
    finished, ``interrupted`` names the one that was running (with workers: the first in
    order that had not finished) and ``not_run`` lists it and the rest that had not
    finished.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InvalidArgument(f"jobs={jobs!r} must be a whole number of processes, at least 1")
    settings_ = settings_ or settings.get_profile(profile)
    if settings_.derandomize:
        random_seed = None
    elif random_seed is None:
        random_seed = random.SystemRandom().randrange(2**32)
    report = Report(
        torch_version=torch_version(),
        profile=profile,
        results=[],
        profile_reason=profile_reason,
        seed=random_seed,
        excluded=list(excluded),
    )
    say = progress or (lambda line: None)

    def run_one(invariant: Invariant, progress_: Callable[[str], None] | None) -> InvariantResult:
        return run_invariant(
            invariant,
            settings_=settings_,
            random_seed=random_seed,
            reproduction=reproduce(invariant) if reproduce else None,
            progress=progress_,
            progress_interval=progress_interval,
        )

    if jobs > 1 and len(invariants) > 1 and _can_fork():
        _import_shared_modules()
        _run_in_workers(invariants, min(jobs, len(invariants)), run_one, say, report, worker_start)
        return report
    for position, invariant in enumerate(invariants, start=1):
        prefix = f"[{position}/{len(invariants)}]"
        say(f"{prefix} {invariant.name} ...")
        try:
            result = run_one(invariant, progress)
        except KeyboardInterrupt:
            report.interrupted = invariant.name
            report.not_run = [later.name for later in invariants[position - 1 :]]
            say(f"{prefix} {invariant.name}: interrupted")
            return report
        say(_finished_line(prefix, result))
        report.results.append(result)
    return report


def _finished_line(prefix: str, result: InvariantResult) -> str:
    return (
        f"{prefix} {result.name}: {result.verdict}, {result.examples} examples"
        + (f" and {result.explicit} known hazards" if result.explicit else "")
        + f", {result.seconds:.1f}s"
    )


def default_jobs() -> int:
    """How many worker processes ``--jobs`` means by default: the cores this process may
    run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Modules that checks import lazily and that each worker would otherwise import again:
# torch._dynamo (1.4 s here) comes with the first optimizer step, export or ONNX export.
_SHARED_MODULES = ("torch._dynamo",)


def _import_shared_modules() -> None:
    """Import :data:`_SHARED_MODULES` here, once, before the workers are forked from this
    process: in one process the first check that needs them pays for them once; in workers
    each would."""
    for name in _SHARED_MODULES:
        with contextlib.suppress(ImportError):  # torch before 2.0 has no torch._dynamo
            importlib.import_module(name)


def _can_fork() -> bool:
    # The workers are forked, so that they inherit the invariants (closures, strategies
    # built from the user's arguments) without pickling them.
    return _FORK in multiprocessing.get_all_start_methods()


_FORK = "fork"
# What a worker tells the parent: (kind, position, payload).
_STARTED, _PROGRESS, _FINISHED, _FAILED, _INTERRUPTED = range(5)
# Seconds between two looks at whether the workers are still alive.
_POLL_S = 0.5
# Seconds a stopped worker has to end before it is stopped harder.
_GRACE_S = 3.0
# Seconds a worker has to end on its own after its last invariant (stopping its sandbox).
_END_S = 30.0


def _worker(
    connection: Any,
    invariants: Sequence[Invariant],
    run_one: Callable[[Invariant, Callable[[str], None] | None], InvariantResult],
    start: Callable[[], None] | None,
) -> None:
    """Run the invariants whose positions come on ``connection`` until a None, telling the
    parent on it when each starts, its progress lines and its result.

    One pipe per worker, no queue shared between them: a worker stopped while it writes
    leaves no lock held that the others would wait for.
    """
    import torch

    # Each worker has a core of its own: a second intra-op thread only adds wake-ups.
    torch.set_num_threads(1)
    # The parent stops the workers on Ctrl-C; SIGTERM interrupts a check as Ctrl-C would.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopped = threading.Event()

    def interrupt(signum: int, frame: Any) -> None:
        stopped.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    sending = threading.Lock()  # the heartbeat's thread sends too

    def send(kind: int, position: int, payload: Any = None) -> None:
        with sending:
            connection.send((kind, position, payload))

    position = None
    try:
        if start is not None:
            start()
        while (position := connection.recv()) is not None:
            send(_STARTED, position)

            def forward(line: str, position: int = position) -> None:
                send(_PROGRESS, position, line)

            try:
                result = run_one(invariants[position], forward)
            except Exception as error:  # outside any check (run_invariant lets nothing else out)
                result = error
            if stopped.is_set():
                # Stopped, but the interruption surfaced as something else (Hypothesis may
                # turn it into an error of its own): no result of an interrupted run counts.
                raise KeyboardInterrupt
            if isinstance(result, Exception):
                send(_FAILED, position, _first_lines(result))
            else:
                send(_FINISHED, position, result)
    except KeyboardInterrupt:
        if position is not None:  # a check was interrupted: the run stops, as in one process
            with contextlib.suppress(OSError):
                send(_INTERRUPTED, position)
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        _stop_sandbox()
        connection.close()


def _stop_sandbox() -> None:
    """Stop this worker's sandbox server, if it started one: a forked worker ends without
    the interpreter's ``atexit`` hooks, one of which does that."""
    from harness import sandbox

    sandbox.stop()


def _run_in_workers(
    invariants: Sequence[Invariant],
    jobs: int,
    run_one: Callable[[Invariant, Callable[[str], None] | None], InvariantResult],
    say: Callable[[str], None],
    report: Report,
    start: Callable[[], None] | None,
) -> None:
    """Run ``invariants`` in ``jobs`` forked worker processes, each invariant whole in one
    worker (the next one goes to the first worker that is free), and put the results in
    ``report`` in the order of ``invariants``."""
    context = multiprocessing.get_context(_FORK)
    total = len(invariants)
    waiting = collections.deque(range(total))
    workers, current = {}, {}  # by the parent's end of each worker's pipe
    results: dict[int, InvariantResult] = {}
    started: dict[int, float] = {}

    def prefix(position: int) -> str:
        return f"[{position + 1}/{total}]"

    def dispatch(connection: Any) -> None:
        current[connection] = waiting.popleft() if waiting else None
        with contextlib.suppress(OSError):  # a worker that died: its end of the pipe says so
            connection.send(current[connection])

    def lost(connection: Any) -> None:
        """The worker of ``connection`` ended: what it was checking failed."""
        position = current.pop(connection)
        workers.pop(connection).join()
        if position is None or position in results:
            return
        if position not in started:  # it died before it began this one: another worker will
            waiting.appendleft(position)
            return
        results[position] = _lost(invariants[position], started[position])
        say(_finished_line(prefix(position), results[position]))

    try:
        for _ in range(jobs):
            mine, theirs = context.Pipe()
            worker = context.Process(target=_worker, args=(theirs, invariants, run_one, start))
            worker.start()
            theirs.close()
            workers[mine] = worker
            dispatch(mine)
        while workers:
            for connection in multiprocessing.connection.wait(list(workers), timeout=_POLL_S):
                try:
                    kind, position, payload = connection.recv()
                except (EOFError, OSError):
                    lost(connection)
                    continue
                invariant = invariants[position]
                if kind == _STARTED:
                    started[position] = time.perf_counter()
                    say(f"{prefix(position)} {invariant.name} ...")
                elif kind == _PROGRESS:
                    say(payload)
                elif kind == _INTERRUPTED:
                    raise KeyboardInterrupt
                else:
                    results[position] = (
                        payload if kind == _FINISHED else _lost(invariant, None, payload)
                    )
                    say(_finished_line(prefix(position), results[position]))
                    dispatch(connection)
        for position in waiting:  # every worker ended early: these were never checked
            results[position] = _lost(invariants[position], None)
    except KeyboardInterrupt:
        _stop(list(workers.values()))
        _collect_finished(list(workers), results)
        first = min(set(range(total)) - set(results))
        report.interrupted = invariants[first].name
        report.not_run = [invariants[p].name for p in range(total) if p not in results]
        for position in sorted(p for p in current.values() if p is not None and p not in results):
            say(f"{prefix(position)} {invariants[position].name}: interrupted")
    finally:
        for worker in workers.values():  # each ends after its last invariant
            worker.join(timeout=_END_S)
        _stop(list(workers.values()))
        for connection in workers:
            connection.close()
    report.results.extend(results[position] for position in sorted(results))


def _stop(workers: Sequence[Any]) -> None:
    """Stop the workers that still run: SIGTERM (a check stops as on Ctrl-C), once more
    after a grace period (a ``KeyboardInterrupt`` raised in a garbage collector's callback
    is ignored), then SIGKILL."""
    process = multiprocessing.process.BaseProcess
    for stop in (process.terminate, process.terminate, process.kill):
        running = [worker for worker in workers if worker.is_alive()]
        if not running:
            break
        for worker in running:
            stop(worker)
        deadline = time.monotonic() + _GRACE_S
        for worker in running:
            worker.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        worker.join()


def _collect_finished(connections: Sequence[Any], results: dict[int, InvariantResult]) -> None:
    """Add to ``results`` what the stopped workers reported before they ended."""
    for connection in connections:
        while True:
            try:
                if not connection.poll():
                    break
                kind, position, payload = connection.recv()
            except (EOFError, OSError):
                break
            if kind == _FINISHED:
                results[position] = payload


def _lost(invariant: Invariant, started: float | None, error: str | None = None) -> InvariantResult:
    """The result of an invariant whose worker ended before it reported one."""
    seconds = time.perf_counter() - started if started is not None else 0.0
    message = error or "the worker process checking it ended before it reported a result"
    return InvariantResult(
        name=invariant.name,
        description=invariant.description,
        examples=0,
        passed=False,
        seconds=seconds,
        failures=[Failure(message)],
    )
