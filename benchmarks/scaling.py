"""How the harness's cost per example grows with the model, beside torch's own save and load.

For each parameter count (``1e3`` to ``1e7``, and 256 MiB: 2**26 float32 parameters), the
round-trip workloads of :mod:`benchmarks.per_example` are measured on one fixed example of
that size: a model of one square ``Linear`` layer (``state_dict_round_trip``) and a bundle of
one state dict of as many parameters and an epoch (``bundle_round_trip``,
``cuda_checkpoint_on_cpu``). Each measurement runs in a forked child of its own
(:func:`harness.files.run_isolated`), the harness's side and the bare side apart, so that
each child's peak resident memory beyond what it held when it began (``VmHWM`` after
``/proc/self/clear_refs``, the example built first) is the memory that side needed.

Run ``python -m benchmarks.scaling [--workload NAME] [--largest N]``.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.per_example import Workload, bare_seconds, harness_round, sized_workload
from harness.files import run_isolated

__all__ = ["PARAMETER_COUNTS", "Point", "format_points", "measure", "measure_point"]

#: The parameter counts measured: 1e3 to 1e7, and 256 MiB of float32.
PARAMETER_COUNTS = (10**3, 10**4, 10**5, 10**6, 10**7, 2**26)
_NAMES = ("state_dict_round_trip", "bundle_round_trip", "cuda_checkpoint_on_cpu")
# A child may map this much beyond what it holds when forked: several copies of 256 MiB.
_MEMORY_BYTES = 16 * 2**30
_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Point:
    """One workload at one size: milliseconds per example and peak memory, each side.

    Attributes:
        workload: the invariant's name.
        parameters: float32 parameters in the example.
        examples: examples the harness checked (the bare side does the same count).
        harness_ms: the harness's time per example (Hypothesis's run included).
        bare_ms: torch's own work per example (what :mod:`benchmarks.per_example` calls bare).
        harness_peak: the harness side's peak resident bytes beyond its start.
        bare_peak: the bare side's.
    """

    workload: str
    parameters: int
    examples: int
    harness_ms: float
    bare_ms: float
    harness_peak: int
    bare_peak: int

    @property
    def ratio(self) -> float:
        """Harness time over bare time."""
        return self.harness_ms / self.bare_ms


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measured(work: Callable[[], None]) -> tuple[float, int]:
    """Seconds ``work`` took and its peak resident bytes beyond the start (in this process)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size
    start = _status("VmRSS")
    started = time.perf_counter()
    work()
    return time.perf_counter() - started, _status("VmHWM") - start


def _sized(name: str, parameters: int) -> Workload:
    """The fixed-example workload of ``name`` with about ``parameters`` float32 parameters
    (a square ``Linear`` layer for the model: the nearest square below)."""
    side = math.isqrt(parameters)
    return sized_workload(
        name, 4 * (side * side if name == "state_dict_round_trip" else parameters)
    )


def _harness_side(record: Workload, examples: int) -> tuple[float, int]:
    # A warm-up run first (the example built and cached, Hypothesis's first-run costs).
    harness_round(record, -1, 1)
    return _measured(lambda: harness_round(record, 0, examples))


def _bare_side(record: Workload, examples: int) -> tuple[float, int]:
    example = record.fixed()
    bare_seconds(record.bare, [example])  # the warm-up
    return _measured(lambda: bare_seconds(record.bare, [example] * examples))


def measure_point(name: str, parameters: int, examples: int) -> Point:
    """Measure ``name`` at ``parameters`` on ``examples`` examples, each side in a child."""
    record = _sized(name, parameters)
    sides = []
    for side in (_harness_side, _bare_side):
        isolated = run_isolated(
            lambda side=side: pickle.dumps(side(record, examples)),
            timeout=_TIMEOUT_S,
            memory_bytes=_MEMORY_BYTES,
        )
        if isolated.outcome != "returned":
            raise RuntimeError(f"{record.name}: the {side.__name__} child {isolated}")
        sides.append(pickle.loads(isolated.value))
    (harness_s, harness_peak), (bare_s, bare_peak) = sides
    return Point(
        name,
        parameters,
        examples,
        1000 * harness_s / examples,
        1000 * bare_s / examples,
        harness_peak,
        bare_peak,
    )


def _examples(parameters: int) -> int:
    """Examples per measurement: fewer as each takes longer."""
    return 20 if parameters <= 10**5 else 5 if parameters <= 10**6 else 2


def measure(
    names: Sequence[str] = _NAMES,
    counts: Sequence[int] = PARAMETER_COUNTS,
    progress: Callable[[Point], None] | None = None,
) -> list[Point]:
    """Every workload of ``names`` at every parameter count of ``counts``."""
    points = []
    for parameters in counts:
        for name in names:
            point = measure_point(name, parameters, _examples(parameters))
            points.append(point)
            if progress is not None:
                progress(point)
    return points


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f}"


def _size(size: int) -> str:
    return f"{size / 2**10:.0f} KiB" if size < 2**20 else f"{size / 2**20:.0f} MiB"


def format_points(points: Sequence[Point]) -> str:
    """The table: per workload and size, ms per example and peak MiB of each side."""
    header = [
        "workload",
        "parameters",
        "tensors",
        "harness ms/ex",
        "torch ms/ex",
        "x torch",
        "harness peak MiB",
        "torch peak MiB",
    ]
    body = [
        [
            point.workload,
            f"{point.parameters:.0e}" if point.parameters < 2**26 else "2**26",
            _size(4 * point.parameters),
            f"{point.harness_ms:.2f}",
            f"{point.bare_ms:.2f}",
            f"{point.ratio:.2f}",
            _mib(point.harness_peak),
            _mib(point.bare_peak),
        ]
        for point in points
    ]
    widths = [max(len(row[column]) for row in [header, *body]) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = ["-" * width for width in widths]
    return "\n".join([line(header), line(rule), *(line(row) for row in body)])


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table for every workload and parameter count (or those asked for)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    parser.add_argument("--workload", action="append", choices=_NAMES, help="repeatable")
    parser.add_argument(
        "--largest",
        type=int,
        default=PARAMETER_COUNTS[-1],
        help="the largest parameter count measured (default: 2**26, 256 MiB)",
    )
    arguments = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 torch thread")
    counts = [count for count in PARAMETER_COUNTS if count <= arguments.largest]

    def say(point: Point) -> None:
        print(f"  {point.workload} {point.parameters}: {point.ratio:.2f}x", flush=True)

    print(format_points(measure(arguments.workload or _NAMES, counts, say)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
