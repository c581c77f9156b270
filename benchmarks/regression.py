"""Regression tracking: compare a run with a stored baseline and fail on a slowdown.

Only operations under test are judged; the limits measure the machine and are left out. Per
benchmark, the figure is the median time of the run over the median of the baseline (above 1:
slower); for the harness's own cost (``benchmarks/test_harness_ratios.py``) the figure is its
ratio to the bare work on the same examples, so a harness grown slower relative to torch
fails like a slower torch. A run fails when

- one benchmark is slower than ``1 + threshold`` times its baseline, or
- the geometric mean over all judged benchmarks is above ``1 + suite_threshold``: a slowdown
  spread over many operations, each within the noise, still shows in the mean.

With ``normalize``, every figure that has a limit is first divided by the median of that limit
in the same run, so that a machine slower as a whole during one run (a noisy neighbour) cancels.
``calibrate`` measures the noise from repeated clean runs, from which the default thresholds
were chosen (docs/benchmarks.md).

Run ``python -m benchmarks.regression check BASELINE [RUN]`` and
``python -m benchmarks.regression calibrate RUN RUN RUN ...``; a run is a JSON path or the name
given to ``--benchmark-save`` (looked up under ``.benchmarks/torch-<version>``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from benchmarks.report import load_benchmarks, resolve_run

__all__ = [
    "DEFAULT_SUITE_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "Comparison",
    "Verdict",
    "STATISTICS",
    "combine",
    "compare",
    "format_calibration",
    "format_verdict",
    "geometric_mean",
    "judge",
    "figures",
    "spreads",
    "suite_spread",
]

#: The statistics of a benchmark's times that can be compared.
STATISTICS = ("median", "min")
#: Per-benchmark threshold: fail when a benchmark is more than this fraction slower.
DEFAULT_THRESHOLD = 10.0
#: Suite threshold: fail when the geometric mean is more than this fraction slower.
DEFAULT_SUITE_THRESHOLD = 0.15


def figures(
    benchmarks: Iterable[dict], *, statistic: str = "median", normalize: bool = False
) -> dict[str, float]:
    """The ``statistic`` (``"median"`` or ``"min"``) of each operation under test's times, by
    name; with ``normalize``, divided by the same statistic of its limit in the same run where
    it has one. A benchmark of the harness's cost (``extra_info["ratio"]``) gives that
    statistic of its per-round ratios to the bare work instead: already relative to torch,
    it is never normalized."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: expected one of {STATISTICS}")
    benchmarks = list(benchmarks)
    limits = {
        (benchmark["extra_info"]["measures"], benchmark["extra_info"].get("bytes")): benchmark[
            "stats"
        ][statistic]
        for benchmark in benchmarks
        if "measures" in benchmark.get("extra_info", {})
    }
    result = {}
    for benchmark in benchmarks:
        info = benchmark.get("extra_info", {})
        if "measures" in info:
            continue
        if "ratio" in info:  # the harness over the bare work, measured in the same rounds
            result[benchmark["name"]] = info["ratio"][statistic]
            continue
        value = benchmark["stats"][statistic]
        limit = limits.get((info.get("limit"), info.get("bytes")))
        result[benchmark["name"]] = value / limit if normalize and limit else value
    return result


@dataclass(frozen=True)
class Comparison:
    """One benchmark in the baseline and in the run."""

    name: str
    baseline: float
    current: float

    @property
    def ratio(self) -> float:
        """Run over baseline: 1.25 is 25% slower."""
        return self.current / self.baseline


def combine(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """One baseline from several runs: per benchmark present in all of them, the median of its
    figures, so that one unlucky baseline run cannot hide or fake a regression."""
    names = [name for name in runs[0] if all(name in run for run in runs[1:])]
    return {name: statistics.median(run[name] for run in runs) for name in names}


def compare(baseline: Mapping[str, float], current: Mapping[str, float]) -> list[Comparison]:
    """A :class:`Comparison` for every benchmark present in both, in the run's order."""
    return [
        Comparison(name, baseline[name], value)
        for name, value in current.items()
        if name in baseline
    ]


def geometric_mean(values: Iterable[float]) -> float:
    """The geometric mean of positive ``values``."""
    values = list(values)
    if not values:
        raise ValueError("the geometric mean of no values is undefined")
    return math.exp(sum(math.log(value) for value in values) / len(values))


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`judge`."""

    comparisons: tuple[Comparison, ...]
    threshold: float
    suite_threshold: float
    suite_ratio: float

    @property
    def regressions(self) -> tuple[Comparison, ...]:
        """The benchmarks slower than ``1 + threshold``."""
        return tuple(c for c in self.comparisons if c.ratio > 1 + self.threshold)

    @property
    def suite_regressed(self) -> bool:
        """Whether the geometric mean is slower than ``1 + suite_threshold``."""
        return self.suite_ratio > 1 + self.suite_threshold

    @property
    def failed(self) -> bool:
        """Whether the run is a regression."""
        return bool(self.regressions) or self.suite_regressed


def judge(
    comparisons: Sequence[Comparison],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    suite_threshold: float = DEFAULT_SUITE_THRESHOLD,
) -> Verdict:
    """Judge the comparisons against both thresholds."""
    if not comparisons:
        raise ValueError("no benchmark is in both runs: nothing to compare")
    return Verdict(
        tuple(comparisons),
        threshold,
        suite_threshold,
        geometric_mean(c.ratio for c in comparisons),
    )


def spreads(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per benchmark present in every run, the spread of its median: largest over smallest,
    minus 1 (0.08: the slowest clean run was 8% slower than the fastest)."""
    names = [name for name in runs[0] if all(name in run for run in runs[1:])]
    return {
        name: max(run[name] for run in runs) / min(run[name] for run in runs) - 1 for name in names
    }


def suite_spread(runs: Sequence[Mapping[str, float]]) -> float:
    """The largest geometric-mean ratio between any two of the runs, minus 1."""
    if len(runs) < 2:
        raise ValueError("the spread needs at least two runs")
    return max(
        geometric_mean(c.ratio for c in compare(first, second)) - 1
        for first, second in itertools.permutations(runs, 2)
    )


def format_verdict(verdict: Verdict, *, show: int = 10) -> str:
    """The slowest ``show`` benchmarks, the geometric mean and the outcome, as text."""
    slowest = sorted(verdict.comparisons, key=lambda c: c.ratio, reverse=True)[:show]
    width = max(len(c.name) for c in slowest)
    lines = [f"{'benchmark'.ljust(width)}  run/baseline"]
    for comparison in slowest:
        mark = "  REGRESSION" if comparison in verdict.regressions else ""
        lines.append(f"{comparison.name.ljust(width)}  {comparison.ratio:12.3f}{mark}")
    lines.append(
        f"geometric mean over {len(verdict.comparisons)} benchmarks: "
        f"{verdict.suite_ratio:.3f} (fails above {1 + verdict.suite_threshold:.2f}); "
        f"per benchmark fails above {1 + verdict.threshold:.2f}"
    )
    if verdict.failed:
        reasons = [f"{len(verdict.regressions)} benchmark(s) over the threshold"] * bool(
            verdict.regressions
        ) + ["the geometric mean over the suite threshold"] * verdict.suite_regressed
        lines.append("FAILED: " + " and ".join(reasons))
    else:
        lines.append("passed: no regression")
    return "\n".join(lines)


def format_calibration(runs: Sequence[Mapping[str, float]], *, show: int = 10) -> str:
    """The noise of repeated clean runs: the noisiest benchmarks, quantiles of the spread,
    and the suite spread."""
    per_benchmark = spreads(runs)
    ordered = sorted(per_benchmark.items(), key=lambda item: item[1], reverse=True)
    values = sorted(per_benchmark.values())
    width = max(len(name) for name, _ in ordered[:show])
    lines = [f"{'benchmark'.ljust(width)}  spread of the median over {len(runs)} runs"]
    lines += [f"{name.ljust(width)}  {value:8.1%}" for name, value in ordered[:show]]
    median_spread = values[len(values) // 2]
    lines.append(
        f"per-benchmark spread: median {median_spread:.1%}, max {values[-1]:.1%} "
        f"over {len(values)} benchmarks"
    )
    lines.append(f"suite spread (geometric mean, worst pair of runs): {suite_spread(runs):.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``check``: exit 1 on a regression; ``calibrate``: print the noise of clean runs."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.regression",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compare a run with a baseline")
    check.add_argument(
        "baseline",
        nargs="+",
        help="the baseline: one or more runs (paths or saved names), combined by median",
    )
    check.add_argument("--run", help="the run to judge (default: the newest stored)")
    check.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"per-benchmark slowdown that fails (default: {DEFAULT_THRESHOLD})",
    )
    check.add_argument(
        "--suite-threshold",
        type=float,
        default=DEFAULT_SUITE_THRESHOLD,
        help=f"geometric-mean slowdown that fails (default: {DEFAULT_SUITE_THRESHOLD})",
    )
    calibrate = commands.add_parser("calibrate", help="the noise of repeated clean runs")
    calibrate.add_argument("runs", nargs="+", help="two or more clean runs (paths or names)")
    for command in (check, calibrate):
        command.add_argument(
            "--normalize",
            action="store_true",
            help="divide each figure by its limit in the same run (default: off)",
        )
        command.add_argument(
            "--statistic",
            choices=STATISTICS,
            default="min",
            help="which statistic of each benchmark's times to compare (default: min, the "
            "least disturbed by other processes)",
        )
    arguments = parser.parse_args(argv)

    def figures_of(run: str | None) -> dict[str, float]:
        path = resolve_run(run)
        print(f"run: {path}")
        return figures(
            load_benchmarks(path), statistic=arguments.statistic, normalize=arguments.normalize
        )

    if arguments.command == "calibrate":
        runs = [figures_of(run) for run in arguments.runs]
        print(format_calibration(runs))
        return 0
    baseline = combine([figures_of(run) for run in arguments.baseline])
    current = figures_of(arguments.run)
    verdict = judge(
        compare(baseline, current),
        threshold=arguments.threshold,
        suite_threshold=arguments.suite_threshold,
    )
    print(format_verdict(verdict))
    return 1 if verdict.failed else 0


if __name__ == "__main__":
    sys.exit(main())
