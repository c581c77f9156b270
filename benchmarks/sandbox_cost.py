"""What one sandboxed load costs, side by side in one run: the same file loaded in-process,
in a child of the warm sandbox (:func:`harness.sandbox.load_in_child`), and in a fresh
interpreter that imports torch first (what every sandboxed load cost before the sandbox
started warm), with a cold ``import torch`` alone for scale.

Run ``python -m benchmarks.sandbox_cost [--rounds N]``: per file size, the median of each
over interleaved rounds and its ratio to the in-process load.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import torch

from benchmarks.payloads import size_label, state_dict
from harness.sandbox import load_in_child

__all__ = ["WAYS", "measure"]


def _seconds(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _fresh_interpreter(path: str) -> None:
    code = f"import torch; torch.load({path!r}, weights_only=True)"
    subprocess.run([sys.executable, "-c", code], check=True)


def _cold_import() -> None:
    subprocess.run([sys.executable, "-c", "import torch"], check=True)


#: The ways of loading a file that are timed, by name.
WAYS: dict[str, Callable[[str], object]] = {
    "in-process torch.load": lambda path: torch.load(path, weights_only=True),
    "warm sandbox": lambda path: load_in_child(path, weights_only=True),
    "fresh interpreter + load": _fresh_interpreter,
    "cold import torch": lambda path: _cold_import(),
}


def measure(size: int, rounds: int) -> dict[str, float]:
    """The median seconds of each of :data:`WAYS` on a state dict of ``size`` bytes, over
    ``rounds`` interleaved rounds (after one untimed round)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "checkpoint.pt")
        torch.save(state_dict(size), path)
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        for index in range(rounds + 1):
            for name, way in WAYS.items():
                seconds = _seconds(functools.partial(way, path))
                if index:
                    times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default: 5)")
    arguments = parser.parse_args(argv)
    for size in (4 * 2**10, 16 * 2**20, 256 * 2**20):
        medians = measure(size, arguments.rounds)
        inline = medians["in-process torch.load"]
        print(f"{size_label(size)}:")
        for name, seconds in medians.items():
            print(f"  {name:26} {1000 * seconds:9.1f} ms  {seconds / inline:8.1f}x in-process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
