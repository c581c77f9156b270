"""The harness's cost per example as ratios to the bare work, for the regression check.

Each benchmark runs the interleaved rounds of :mod:`benchmarks.per_example` for one workload
(one pytest-benchmark round is one round: the harness on drawn examples, then the bare work
on the same examples) and stores every round's ratio in ``extra_info["ratio"]``;
:func:`benchmarks.regression.figures` judges that ratio, not the time, so that a harness
that grows slower relative to torch fails ``python -m benchmarks.regression check`` as a
slower torch does. The injected ``HARNESS_BENCH_SLOWDOWN`` slows the harness side only.
"""

from __future__ import annotations

import itertools
import statistics

import pytest
import torch

from benchmarks.per_example import LARGE_WORKLOADS, WORKLOADS, measure_round

_ROUNDS = 5
_EXAMPLES = 10
_ALL = WORKLOADS + LARGE_WORKLOADS


@pytest.mark.parametrize("record", _ALL, ids=[w.name for w in _ALL])
def test_harness_ratio(benchmark, record):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the main job runs small examples; both sides alike
    try:
        seeds = itertools.count()
        ratios = []

        def one_round() -> None:
            ratios.append(measure_round(record, next(seeds), _EXAMPLES).ratio)

        rounds = 3 if record in LARGE_WORKLOADS else _ROUNDS  # seconds a round at 256 MiB
        benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    timed = ratios[1:]  # the warm-up round is not judged
    benchmark.extra_info["ratio"] = {
        "median": statistics.median(timed),
        "min": min(timed),
        "rounds": timed,
    }
    benchmark.extra_info["examples"] = record.examples or _EXAMPLES
