"""The harness's cost per example against the bare work on the same drawn examples.

For each :class:`Workload` (a main-job invariant, and the checkpointer invariants as the
main job runs them on :class:`harness.recipes.TrainingCheckpoint`), one *round* runs the
invariant through :func:`harness.suite.run_invariant` on ``examples`` examples drawn from one
seed, as the main job does (Hypothesis's generation, the known hazards and the checks
included), recording every example the check was called with; then it runs the bare work on
exactly those examples: what torch does for the promise without the harness (the save and
the load with the drawn options, the fresh instance and its ``load_state_dict`` and forward,
the training steps before and after the checkpoint), in one folder for the round. The ratio
of the two times is the round's figure; rounds of all workloads are interleaved, so that a
machine busier at one moment slows both sides of a ratio alike. The round trips are also
measured on one fixed example of 4 KiB and (``--large``) of 256 MiB, checked in every round
(no generation there): what the checks cost as the checkpoint grows.

Each round also times the *floor*: :func:`harness.suite.run_invariant` on as many examples
of one drawn integer and a check that does nothing, what every example costs under
Hypothesis before any check; ``least`` (every torch call the promise names, plus the floor,
over the bare work) is the lowest ratio a check of that promise run by Hypothesis can reach,
and ``x least`` the harness's time over that least: what its own generation, comparing and
bookkeeping add.

Run ``python -m benchmarks.per_example [--rounds N] [--examples N] [--seed S]`` for the
table; ``benchmarks/test_harness_ratios.py`` runs the same rounds under pytest-benchmark so
that ``python -m benchmarks.regression check`` judges the ratios with the other figures.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import pickle
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from benchmarks.operations import under_test
from benchmarks.payloads import size_label, state_dict, tensor_bytes
from harness import profiles
from harness.checkpointer import RESUME_STEPS
from harness.devices import CPU_MAP_LOCATIONS, storages_tagged_as
from harness.persistence import DEFAULT_OPTIONS, UnsupportedOptions, load, round_trip, save
from harness.recipes import TrainingCheckpoint
from harness.state import seed_global_rngs
from harness.suite import Invariant, run_invariant
from strategies.models import InputSpec, Layer, ModelSpec, build_model

__all__ = [
    "LARGE_WORKLOADS",
    "WORKLOADS",
    "Round",
    "Summary",
    "Workload",
    "format_rounds",
    "harness_round",
    "measure_round",
    "bare_seconds",
    "floor_seconds",
    "run_rounds",
    "sized_workload",
    "summarize",
    "workload",
]


def _state_dict_bare(example: tuple[Any, Any], directory: str) -> None:
    case, options = example
    state = case.module.state_dict()
    loaded = round_trip(state, options, directory)
    fresh = case.rebuild(1).module
    fresh.load_state_dict(loaded, strict=True)
    for module in (case.module, fresh):
        module.eval()
        with torch.no_grad():
            module(*case.example_input)


def _bundle_bare(example: tuple[dict, Any], directory: str) -> None:
    bundle, options = example
    round_trip(bundle, options, directory)


def _bundle_promised(example: tuple[dict, Any], directory: str) -> None:
    bundle, options = example
    round_trip(bundle, options, directory)
    if not options.to_buffer:  # the second save of "saving twice writes the same bytes"
        (first,) = os.listdir(directory)
        os.replace(os.path.join(directory, first), os.path.join(directory, f"{first}.first"))
        save(bundle, options, directory)


def _cuda_bare(bundle: dict, directory: str) -> None:
    with storages_tagged_as("cuda:0"):
        source = save(bundle, DEFAULT_OPTIONS, directory)
    load(source, map_location="cpu")


def _cuda_promised(bundle: dict, directory: str) -> None:
    with storages_tagged_as("cuda:0"):
        source = save(bundle, DEFAULT_OPTIONS, directory)
    for _, map_location in CPU_MAP_LOCATIONS:
        load(source, map_location=map_location)
    if tensor_bytes(bundle):
        try:
            load(source)  # refused on a CPU-only host, after reading the first storage
        except RuntimeError:
            pass


def _checkpointed(case: Any, directory: str) -> Any:
    """Train, save with the reference checkpointer, load into a fresh state: the work a
    training run does around one checkpoint."""
    checkpointer = TrainingCheckpoint()
    original = case.build(0)
    seed_global_rngs(0)
    for _ in range(case.steps):
        case.train_step(original)
    path = os.path.join(directory, "checkpoint.pt")
    checkpointer.save(original, path)
    fresh = case.build(1)
    checkpointer.load(path, fresh)
    return fresh


def _restored_bare(case: Any, directory: str) -> None:
    _checkpointed(case, directory)


def _resumed_bare(case: Any, directory: str) -> None:
    fresh = _checkpointed(case, directory)
    for _ in range(RESUME_STEPS):
        case.train_step(fresh)


@dataclass(frozen=True)
class Workload:
    """One invariant and the bare work its examples stand for.

    Attributes:
        name: the workload's name: the invariant's, with the size of a fixed example.
        invariant: the invariant's name in :data:`harness.invariants.INVARIANTS`.
        bare: ``bare(example, directory)``: torch's own work for one drawn example, files
            written under ``directory``.
        bare_work: what ``bare`` does, in words.
        fixed: ``fixed()`` builds one example of a given size checked in every round instead
            of drawn ones (no generation, no known hazards), or None: the invariant's own
            strategy and hazards.
        examples: examples per round for a fixed example, or None: the round's number.
        promised: ``promised(example, directory)``: every torch call the promise itself
            names, where that is more than ``bare`` (the other ``map_location`` spellings,
            the second save of an observation), or None: ``bare`` is all of them.
    """

    name: str
    invariant: str
    bare: Callable[[Any, str], None]
    bare_work: str
    fixed: Callable[[], Any] | None = None
    examples: int | None = None
    promised: Callable[[Any, str], None] | None = None


@functools.cache
def _linear_case(size: int) -> Any:
    """A model of one square float32 ``Linear`` layer without bias, ``size`` bytes in all."""
    side = math.isqrt(size // 4)
    spec = ModelSpec(
        InputSpec("vector", (4, side)),
        (Layer("linear", (("in_features", side), ("out_features", side), ("bias", False))),),
    )
    return build_model(spec)


def _fixed_model(size: int) -> Callable[[], Any]:
    return lambda: (_linear_case(size), DEFAULT_OPTIONS)


def _fixed_bundle(size: int) -> Callable[[], dict]:
    return functools.cache(lambda: {"model_state_dict": state_dict(size), "epoch": 3})


def _fixed_bundle_with_options(size: int) -> Callable[[], Any]:
    bundle = _fixed_bundle(size)
    return lambda: (bundle(), DEFAULT_OPTIONS)


_STATE_DICT_BARE = (
    "state_dict(), save and load with the drawn options, a fresh instance, "
    "load_state_dict(strict=True), an eval forward of both"
)
_BUNDLE_BARE = "save and load with the drawn options"
_CUDA_BARE = "save with storages tagged cuda:0, load with map_location='cpu'"
_SMALL, _LARGE = 4 * 2**10, 256 * 2**20


# The round trips measured on fixed examples: the bare work, in words, the example of a size,
# and the promise's torch calls.
_FIXED: dict[str, tuple[Callable[[Any, str], None], str, Callable[[int], Any], Any]] = {
    "state_dict_round_trip": (_state_dict_bare, _STATE_DICT_BARE, _fixed_model, None),
    "bundle_round_trip": (_bundle_bare, _BUNDLE_BARE, _fixed_bundle_with_options, _bundle_promised),
    "cuda_checkpoint_on_cpu": (_cuda_bare, _CUDA_BARE, _fixed_bundle, _cuda_promised),
}


def sized_workload(name: str, size: int) -> Workload:
    """The round trip ``name`` (``state_dict_round_trip``, ``bundle_round_trip`` or
    ``cuda_checkpoint_on_cpu``) on one fixed example of ``size`` tensor bytes: a square
    ``Linear`` model, or a bundle of one state dict and an epoch."""
    bare, work, fixed, promised = _FIXED[name]
    examples = None if size < 2**20 else 2
    label = size_label(size)
    return Workload(f"{name}[{label}]", name, bare, work, fixed(size), examples, promised)


#: The workloads, registered once: the round trips of the main job and the checkpointer
#: invariants (``state_restored`` is ``training_checkpoint_restored`` in the main job) on
#: drawn examples, and the round trips on one fixed example of 4 KiB.
WORKLOADS: tuple[Workload, ...] = (
    Workload("state_dict_round_trip", "state_dict_round_trip", _state_dict_bare, _STATE_DICT_BARE),
    Workload(
        "bundle_round_trip",
        "bundle_round_trip",
        _bundle_bare,
        _BUNDLE_BARE,
        promised=_bundle_promised,
    ),
    Workload(
        "cuda_checkpoint_on_cpu",
        "cuda_checkpoint_on_cpu",
        _cuda_bare,
        _CUDA_BARE,
        promised=_cuda_promised,
    ),
    Workload(
        "training_checkpoint_restored",
        "training_checkpoint_restored",
        _restored_bare,
        "build, train the drawn steps, TrainingCheckpoint.save, a fresh state, "
        "TrainingCheckpoint.load",
    ),
    Workload(
        "resume_equivalence",
        "resume_equivalence",
        _resumed_bare,
        f"as training_checkpoint_restored, then {RESUME_STEPS} training steps",
    ),
    *(sized_workload(name, _SMALL) for name in _FIXED),
)

#: The same round trips on one fixed example of 256 MiB (two examples a round, seconds
#: each): run with ``--large``.
LARGE_WORKLOADS: tuple[Workload, ...] = tuple(sized_workload(name, _LARGE) for name in _FIXED)


def workload(name: str) -> Workload:
    """The :class:`Workload` named ``name``; ``KeyError`` listing the names otherwise."""
    for record in WORKLOADS + LARGE_WORKLOADS:
        if record.name == name:
            return record
    names = [w.name for w in WORKLOADS + LARGE_WORKLOADS]
    raise KeyError(f"no workload {name!r}; the workloads: {names}")


@dataclass(frozen=True)
class Round:
    """One round of one workload: the harness on ``examples`` drawn examples, then the bare
    work on the same examples."""

    workload: str
    seed: int
    examples: int
    harness_seconds: float
    bare_seconds: float
    promised_seconds: float | None = None
    floor_seconds: float = 0.0

    @property
    def ratio(self) -> float:
        """Harness time over bare time: 1.5 is half again the bare work."""
        return self.harness_seconds / self.bare_seconds

    @property
    def promise_ratio(self) -> float:
        """Harness time over the time of every torch call the promise names (the bare
        work where that is all of them)."""
        return self.harness_seconds / (self.promised_seconds or self.bare_seconds)

    @property
    def least_seconds(self) -> float:
        """Every torch call the promise names plus the floor: the least a check of the
        promise run by Hypothesis can take."""
        return (self.promised_seconds or self.bare_seconds) + self.floor_seconds

    @property
    def least_ratio(self) -> float:
        """The lowest ratio a check of the promise under Hypothesis could reach:
        :attr:`least_seconds` over the bare work."""
        return self.least_seconds / self.bare_seconds

    @property
    def over_least(self) -> float:
        """Harness time over :attr:`least_seconds`: what the harness's own generation,
        comparing and bookkeeping add to the least."""
        return self.harness_seconds / self.least_seconds


def _invariant(name: str) -> Invariant:
    from harness.invariants import INVARIANTS

    for invariant in INVARIANTS:
        if invariant.name == name:
            return invariant
    raise KeyError(name)


def _settings(examples: int) -> settings:
    profiles.register_profiles()
    return settings(
        settings.get_profile("dev"),
        max_examples=examples,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@under_test
def _harness(invariant: Invariant, settings_: settings, seed: int) -> None:
    result = run_invariant(invariant, settings_=settings_, random_seed=seed)
    if not result.passed:
        raise AssertionError(f"{invariant.name} failed at seed {seed}: {result.failures}")


def harness_round(record: Workload, seed: int, examples: int) -> list[Any]:
    """Run the invariant of ``record`` on ``examples`` examples drawn from ``seed`` (or on
    its fixed example), as the main job does; return every example the check was called
    with (the known hazards too)."""
    invariant = _invariant(record.invariant)
    drawn: list[Any] = []

    def recording(example: Any) -> Any:
        drawn.append(example)
        return invariant.check(example)

    strategy, explicit = invariant.examples, invariant.explicit
    if record.fixed is not None:
        example = record.fixed()
        # Distinct draws, so that Hypothesis checks the one example as often as asked.
        strategy, explicit = (lambda: st.integers(0, 2**16).map(lambda _: example)), tuple
    recorded = Invariant(invariant.name, invariant.description, strategy, recording, explicit)
    _harness(recorded, _settings(examples), seed)
    return drawn


def measure_round(record: Workload, seed: int, examples: int) -> Round:
    """Time the invariant of ``record`` on ``examples`` examples drawn from ``seed``, then
    its bare work on every example the check was called with (the known hazards too)."""
    if record.fixed is not None:
        examples = record.examples or examples
    started = time.perf_counter()
    drawn = harness_round(record, seed, examples)
    harness_seconds = time.perf_counter() - started
    bare = bare_seconds(record.bare, drawn)
    promised = bare_seconds(record.promised, drawn) if record.promised else None
    floor = floor_seconds(seed, len(drawn))
    return Round(record.name, seed, len(drawn), harness_seconds, bare, promised, floor)


def _nothing(_: int) -> None:
    return None


_FLOOR = Invariant("floor", "nothing is checked", lambda: st.integers(0, 2**16), _nothing)


def floor_seconds(seed: int, examples: int) -> float:
    """Seconds :func:`harness.suite.run_invariant` takes on ``examples`` examples of one
    drawn integer with a check that does nothing: Hypothesis's and the harness's own cost
    of an example, before any check."""
    started = time.perf_counter()
    _harness(_FLOOR, _settings(examples), seed)
    return time.perf_counter() - started


def bare_seconds(work: Callable[[Any, str], None], examples: Sequence[Any]) -> float:
    """Seconds ``work`` takes on every example, in one folder, emptied after each example
    as the harness empties its own."""
    with tempfile.TemporaryDirectory(prefix="bare-") as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the harness counts warnings; nothing prints them
        started = time.perf_counter()
        for example in examples:
            try:
                work(example, directory)
            except (UnsupportedOptions, pickle.UnpicklingError):
                pass  # options torch refuses, a lazy module's state: the harness stops too
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
        return time.perf_counter() - started


def run_rounds(
    workloads: Sequence[Workload] = WORKLOADS,
    *,
    rounds: int = 5,
    examples: int = 10,
    seed: int = 0,
    progress: Callable[[Round], None] | None = None,
) -> list[Round]:
    """``rounds`` rounds of every workload, interleaved (round 1 of each, then round 2...),
    round ``r`` drawing from seed ``seed + r``, after one untimed warm-up round each."""
    for record in workloads:
        measure_round(record, seed - 1, min(examples, 2))
    results = []
    for index in range(rounds):
        for record in workloads:
            result = measure_round(record, seed + index, examples)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


@dataclass(frozen=True)
class Summary:
    """The rounds of one workload: the median, lowest and highest ratio."""

    workload: str
    rounds: int
    examples: int
    median: float
    low: float
    high: float
    harness_ms: float
    bare_ms: float
    promise_median: float
    floor_ms: float
    least_median: float
    over_least_median: float


def summarize(rounds: Sequence[Round]) -> list[Summary]:
    """One :class:`Summary` per workload, in the order the rounds name them; per-example
    times are medians over the rounds."""
    names = list(dict.fromkeys(r.workload for r in rounds))
    summaries = []
    for name in names:
        mine = [r for r in rounds if r.workload == name]
        ratios = [r.ratio for r in mine]
        summaries.append(
            Summary(
                name,
                len(mine),
                sum(r.examples for r in mine),
                statistics.median(ratios),
                min(ratios),
                max(ratios),
                statistics.median(1000 * r.harness_seconds / r.examples for r in mine),
                statistics.median(1000 * r.bare_seconds / r.examples for r in mine),
                statistics.median(r.promise_ratio for r in mine),
                statistics.median(1000 * r.floor_seconds / r.examples for r in mine),
                statistics.median(r.least_ratio for r in mine),
                statistics.median(r.over_least for r in mine),
            )
        )
    return summaries


def format_rounds(rounds: Sequence[Round]) -> str:
    """The table: per workload the median ratio and its range over the rounds, the harness's
    and the bare work's milliseconds per example, the median ratio to every torch call the
    promise names (``x promise``: the bare ratio where the bare work is all of them), the
    floor's milliseconds per example, the medians of ``least`` (:attr:`Round.least_ratio`)
    and of the harness over it (``x least``, :attr:`Round.over_least`), and every round's
    ratio."""
    header = [
        "workload",
        "x bare (median)",
        "range",
        "harness ms/ex",
        "bare ms/ex",
        "x promise",
        "floor ms/ex",
        "least",
        "x least",
        "per round",
    ]
    body = []
    for summary in summarize(rounds):
        per_round = " ".join(f"{r.ratio:.2f}" for r in rounds if r.workload == summary.workload)
        body.append(
            [
                summary.workload,
                f"{summary.median:.2f}",
                f"{summary.low:.2f}-{summary.high:.2f}",
                f"{summary.harness_ms:.2f}",
                f"{summary.bare_ms:.2f}",
                f"{summary.promise_median:.2f}",
                f"{summary.floor_ms:.2f}",
                f"{summary.least_median:.2f}",
                f"{summary.over_least_median:.2f}",
                per_round,
            ]
        )
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if column in (0, len(header) - 1) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = ["-" * width for width in widths]
    return "\n".join([line(header), line(rule), *(line(cells) for cells in body)])


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-example ratios of every workload (or those named)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.per_example", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per workload (default: 5)")
    parser.add_argument(
        "--examples", type=int, default=10, help="examples per round (default: 10, as dev)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first round (default: 0)")
    parser.add_argument(
        "--workload",
        action="append",
        choices=[w.name for w in WORKLOADS + LARGE_WORKLOADS],
        help="only this workload (repeatable; default: all but the 256 MiB ones)",
    )
    parser.add_argument(
        "--large", action="store_true", help="also the 256 MiB examples (default: off)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, for both sides (default: 1; two threads on examples "
        "this small add wake-up delays of up to 0.2 s at random)",
    )
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    if arguments.rounds < 1 or arguments.examples < 1:
        parser.error("--rounds and --examples must be at least 1")
    default = WORKLOADS + LARGE_WORKLOADS if arguments.large else WORKLOADS
    chosen = [workload(name) for name in arguments.workload or [w.name for w in default]]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), "
        f"{arguments.rounds} rounds x {arguments.examples} examples, seeds "
        f"{arguments.seed}..{arguments.seed + arguments.rounds - 1}"
    )

    def say(result: Round) -> None:
        print(f"  {result.workload} seed {result.seed}: {result.ratio:.2f}x", flush=True)

    results = run_rounds(
        chosen,
        rounds=arguments.rounds,
        examples=arguments.examples,
        seed=arguments.seed,
        progress=say,
    )
    print(format_rounds(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
