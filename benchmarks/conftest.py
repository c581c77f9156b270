"""pytest hooks of the benchmarks: runs stored per torch version, torch facts in the machine
info, and the table of :mod:`benchmarks.report` at the end of the run."""

from __future__ import annotations

import pytest
import torch

from benchmarks.operations import SLOWDOWN, SLOWDOWN_VARIABLE
from benchmarks.report import format_table, storage_directory

# pytest-benchmark's default for --benchmark-storage.
_DEFAULT_STORAGE = "file://./.benchmarks"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Store runs under ``.benchmarks/torch-<version>`` unless ``--benchmark-storage`` is
    given, so that ``--benchmark-compare`` and the baseline never mix torch versions.

    Runs before pytest-benchmark's own ``pytest_configure`` (``trylast``) opens the storage.
    """
    if config.getoption("benchmark_storage", None) == _DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://./{storage_directory().as_posix()}"


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Record the torch version and threads, safetensors' version and any injected slowdown."""
    machine_info["torch_version"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    try:
        import safetensors
    except ImportError:
        machine_info["safetensors_version"] = None
    else:
        machine_info["safetensors_version"] = safetensors.__version__
    machine_info[SLOWDOWN_VARIABLE.lower()] = SLOWDOWN


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """Print each benchmark's throughput and fraction of the machine's limit."""
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [
        benchmark.as_dict(include_data=False)
        for benchmark in getattr(session, "benchmarks", [])
        if benchmark.stats is not None
    ]
    if not benchmarks:
        return
    terminalreporter.section("save/load throughput against the machine's limit")
    if SLOWDOWN:
        terminalreporter.line(f"{SLOWDOWN_VARIABLE}={SLOWDOWN}: operations under test slowed")
    terminalreporter.line(format_table(benchmarks))
