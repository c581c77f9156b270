"""A run's figures as a table: throughput, fraction of the machine's limit, format overhead.

Reads benchmarks in pytest-benchmark's JSON shape (``{"name", "stats": {"median"},
"extra_info"}``). The ``extra_info`` keys the benchmarks set:

- ``bytes``: the tensor bytes saved or loaded.
- ``limit``: which limit the figure is compared with (``"memory copy"``, ``"file write"``,
  ``"file read"``); a limit benchmark sets ``measures`` to its own limit instead.
- ``file_bytes``: the bytes written, for the format overhead.
- ``ratio``: for the harness's own cost (``benchmarks/test_harness_ratios.py``), its time
  over the bare work on the same examples: ``{"median", "min", "rounds"}``.

Run ``python -m benchmarks.report [RUN ...]`` (default: the newest stored run of the installed
torch) to print the table of stored runs, several combined by the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.capabilities import torch_version

__all__ = [
    "MIB",
    "Row",
    "bar",
    "format_table",
    "load_benchmarks",
    "median_over_runs",
    "newest_run",
    "resolve_run",
    "rows",
    "storage_directory",
]

MIB = 2**20
_BAR_WIDTH = 20


def storage_directory(version: str | None = None) -> Path:
    """Where runs of torch ``version`` (default: the installed one) are stored."""
    return Path(".benchmarks") / f"torch-{version or torch_version()}"


def newest_run(directory: Path) -> Path:
    """The most recently written run JSON under ``directory``."""
    runs = sorted(directory.rglob("*.json"), key=lambda path: path.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(
            f"no stored benchmark run under {directory}: run "
            "`pytest benchmarks --benchmark-autosave` first"
        )
    return runs[-1]


def resolve_run(run: str | None, directory: Path | None = None) -> Path:
    """A run's JSON: ``run`` as a path, else the newest stored file whose name ends with
    ``_<run>.json``, else (``run`` is None) the newest stored run."""
    directory = directory or storage_directory()
    if run is None:
        return newest_run(directory)
    if Path(run).is_file():
        return Path(run)
    matches = sorted(directory.rglob(f"*_{run}.json"), key=lambda path: path.stat().st_mtime)
    if not matches:
        raise FileNotFoundError(
            f"no run {run!r}: neither a file nor a run saved with --benchmark-save={run} "
            f"under {directory}"
        )
    return matches[-1]


def load_benchmarks(path: Path) -> list[dict]:
    """The benchmarks of one pytest-benchmark JSON file."""
    return json.loads(Path(path).read_text())["benchmarks"]


class Row:
    """One benchmark's figures, with its limit looked up in the same run."""

    def __init__(self, benchmark: dict, limits: dict):
        info = benchmark.get("extra_info", {})
        self.name: str = benchmark["name"]
        self.median: float = benchmark["stats"]["median"]
        self.bytes: int | None = info.get("bytes")
        self.is_limit: bool = "measures" in info
        limit = limits.get((info.get("limit"), self.bytes))
        self.limit_name: str | None = info.get("limit") if limit else None
        self.fraction_of_limit: float | None = limit / self.median if limit else None
        file_bytes = info.get("file_bytes")
        self.overhead: float | None = (
            file_bytes / self.bytes - 1 if file_bytes is not None and self.bytes else None
        )
        ratio = info.get("ratio")
        self.times_bare: float | None = ratio["median"] if ratio else None

    @property
    def throughput(self) -> float | None:
        """MiB/s of tensor bytes."""
        return self.bytes / self.median / MIB if self.bytes else None


def rows(benchmarks: Iterable[dict]) -> list[Row]:
    """A :class:`Row` per benchmark, in the order given."""
    benchmarks = list(benchmarks)
    limits = {}
    for benchmark in benchmarks:
        info = benchmark.get("extra_info", {})
        if "measures" in info:
            limits[(info["measures"], info.get("bytes"))] = benchmark["stats"]["median"]
    return [Row(benchmark, limits) for benchmark in benchmarks]


def median_over_runs(runs: Sequence[Sequence[dict]]) -> list[dict]:
    """The benchmarks of the first run, each with the median over ``runs`` of its median
    time; a benchmark missing from any run is left out."""
    by_name = [{benchmark["name"]: benchmark for benchmark in run} for run in runs]
    combined = []
    for benchmark in runs[0]:
        if all(benchmark["name"] in run for run in by_name):
            median = statistics.median(run[benchmark["name"]]["stats"]["median"] for run in by_name)
            combined.append({**benchmark, "stats": {**benchmark["stats"], "median": median}})
    return combined


def bar(fraction: float, width: int = _BAR_WIDTH) -> str:
    """``fraction`` of the limit as a bar of ``width`` characters; ``>`` marks beyond 100%."""
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    return "#" * filled + "." * (width - filled) + (">" if fraction > 1 else " ")


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _cells(row: Row) -> list[str]:
    if row.is_limit:
        versus = "the limit"
    elif row.fraction_of_limit is not None:
        versus = f"{row.fraction_of_limit:6.1%} {bar(row.fraction_of_limit)} {row.limit_name}"
    elif row.times_bare is not None:
        versus = f"{row.times_bare:.2f}x the bare work on the same examples"
    else:
        versus = ""
    return [
        row.name,
        _time(row.median),
        f"{row.throughput:.0f}" if row.throughput is not None else "",
        versus,
        f"{row.overhead:+.2%}" if row.overhead is not None else "",
    ]


def format_table(benchmarks: Iterable[dict]) -> str:
    """The table: per benchmark its median, MiB/s, fraction of the limit (with a bar) or
    multiple of the bare operation, and the file's size over the raw tensor bytes."""
    header = ["benchmark", "median", "MiB/s", "vs the machine's limit", "file/raw - 1"]
    body = [_cells(row) for row in rows(benchmarks)]
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(5)]

    def line(cells: Sequence[str]) -> str:
        aligned = [
            cell.ljust(width) if column in (0, 3) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(aligned).rstrip()

    rule = ["-" * width for width in widths]
    return "\n".join([line(header), line(rule), *(line(cells) for cells in body)])


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of a stored run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument(
        "runs",
        nargs="*",
        help="runs (JSON paths or names given to --benchmark-save), combined by the median "
        "of each benchmark (default: the newest run under .benchmarks/torch-<version>)",
    )
    arguments = parser.parse_args(argv)
    paths = [resolve_run(run) for run in arguments.runs] or [resolve_run(None)]
    for path in paths:
        print(path)
    print()
    print(format_table(median_over_runs([load_benchmarks(path) for path in paths])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
