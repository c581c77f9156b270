"""The benchmarks across torch versions: one table and one picture from the runs that the
matrix's environments stored as ``matrix/bench/<version>.json``.

Each environment of the matrix runs the selection of the benchmarks named by
``matrix.versions.BENCHMARK_SELECTION`` (``python -m matrix bench``, or ``python -m matrix run
--bench``): ``torch.save``/``torch.load`` to and from memory
at every size, and many small tensors against one, with a memory copy of the same bytes
measured in the same run. Versions are compared by the fraction of that copy's speed each
operation reaches, which cancels most of the machine's drift between runs; MiB/s are shown
too.

Run ``python -m benchmarks.versions`` to print the table and draw the picture.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from benchmarks.payloads import SIZES
from benchmarks.report import MIB, load_benchmarks, rows
from harness.releases import version_key

__all__ = ["fractions_by_version", "markdown_table", "plot"]

_LARGEST = f"{SIZES[-1] // MIB}MiB"
#: The series of the table and the picture: a benchmark name (its size in brackets).
SERIES = {
    f"save {_LARGEST}": f"test_torch_save_buffer[{_LARGEST}]",
    f"load {_LARGEST}, weights_only": f"test_torch_load_buffer[weights_only-{_LARGEST}]",
    f"load {_LARGEST}, full unpickler": f"test_torch_load_buffer[full_unpickler-{_LARGEST}]",
    "save 4096 small tensors": "test_many_tensors_save_buffer",
    "load 4096 small tensors": "test_many_tensors_load_buffer",
}


def fractions_by_version(directory: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """For each version with a run in ``directory``: series name -> (fraction of the memory
    copy, MiB/s). A series the run lacks is left out."""
    found = {}
    for path in sorted(directory.glob("*.json"), key=lambda p: version_key(p.stem)):
        by_name = {row.name: row for row in rows(load_benchmarks(path))}
        figures = {}
        for series, name in SERIES.items():
            row = by_name.get(name)
            if row is not None and row.fraction_of_limit is not None:
                figures[series] = (row.fraction_of_limit, row.throughput)
        found[path.stem] = figures
    return found


def markdown_table(figures: dict[str, dict[str, tuple[float, float]]]) -> str:
    """One row per version, one column per series: fraction of the memory copy (MiB/s)."""
    header = "| torch | " + " | ".join(SERIES) + " |"
    lines = [header, "|---" * (len(SERIES) + 1) + "|"]
    for version, series in figures.items():
        cells = [
            f"{series[name][0]:.1%} ({series[name][1]:.0f})" if name in series else ""
            for name in SERIES
        ]
        lines.append(f"| {version} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(figures: dict[str, dict[str, tuple[float, float]]], path: Path) -> None:
    """Fraction of the memory copy by torch version, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = list(figures)
    figure, axis = plt.subplots(figsize=(12, 5.5))
    for name in SERIES:
        points = [(i, figures[v][name][0]) for i, v in enumerate(versions) if name in figures[v]]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=name)
    axis.set_xticks(range(len(versions)), versions, rotation=45)
    axis.set_yscale("log")
    axis.set_ylabel("speed as a fraction of a memory copy of the same bytes")
    axis.set_xlabel("torch version")
    axis.set_title("torch.save / torch.load to and from memory by torch version (higher: faster)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versions", description=__doc__)
    parser.add_argument("--runs", default="matrix/bench", help="folder of <version>.json runs")
    parser.add_argument("--picture", default="docs/benchmarks-by-version.png")
    arguments = parser.parse_args(argv)
    figures = fractions_by_version(Path(arguments.runs))
    if not figures:
        parser.error(f"no runs in {arguments.runs}: run `python -m matrix run --bench` first")
    print(markdown_table(figures))
    plot(figures, Path(arguments.picture))
    print(f"\nwrote {arguments.picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
