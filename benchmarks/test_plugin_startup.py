"""Start-up cost of the harness's pytest plugin, which every project that installs the
harness loads: ``pytest --co -q`` on a small project with the plugin and without it
(``-p no:torch_persistence_harness``), in the same run, one of each per round so that the
machine's drift falls on both alike. Target: at most 1.2 times the start-up without it.

The benchmark's figure is the run with the plugin; ``extra_info`` holds the median without
it and the ratio of the medians, which is also printed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

PLUGIN = "torch_persistence_harness"
TARGET_RATIO = 1.2
ROUNDS = 20

# A user's small project: a few plain test modules, nothing of torch or Hypothesis.
_MODULE = """
import pytest

@pytest.mark.parametrize("value", range(5))
def test_value(value):
    assert value >= 0

def test_text():
    assert "a" in "abc"
"""


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    # A run that asks for nothing: no harness profile, no extra options.
    for name in ("HARNESS_PROFILE", "PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        environment.pop(name, None)
    return environment


def _pytest(project: Path, *args: str) -> tuple[float, str]:
    """Seconds ``pytest args`` took in ``project``, and what it printed."""
    command = [sys.executable, "-m", "pytest", *args]
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=project, env=_environment(), capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    return seconds, result.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small project, with both runs checked and warmed once (bytecode, file cache)."""
    root = tmp_path_factory.mktemp("startup_project")
    (root / "pytest.ini").write_text("[pytest]\n")
    for index in range(4):
        (root / f"test_module_{index}.py").write_text(_MODULE)
    with_plugin = _pytest(root, "--help")[1]
    without = _pytest(root, "--help", "-p", f"no:{PLUGIN}")[1]
    assert "--harness-keep-checkpoints" in with_plugin, "the plugin is not installed here"
    assert "--harness-keep-checkpoints" not in without
    _pytest(root, "--co", "-q")
    _pytest(root, "--co", "-q", "-p", f"no:{PLUGIN}")
    return root


def test_collect_only_startup_with_the_plugin(benchmark, project, capsys):
    without: list[float] = []
    with_plugin: list[float] = []

    def collect_without_plugin() -> None:
        without.append(_pytest(project, "--co", "-q", "-p", f"no:{PLUGIN}")[0])

    def collect_with_plugin() -> None:
        with_plugin.append(_pytest(project, "--co", "-q")[0])

    # setup runs before every timed round and is not timed itself: one of each per round.
    benchmark.pedantic(
        collect_with_plugin, setup=collect_without_plugin, rounds=ROUNDS, iterations=1
    )
    ratio = statistics.median(with_plugin) / statistics.median(without)
    benchmark.extra_info.update(
        {
            "without_plugin_median": statistics.median(without),
            "with_plugin_median": statistics.median(with_plugin),
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
        }
    )
    with capsys.disabled():
        print(
            f"\npytest --co -q start-up: {statistics.median(with_plugin):.3f} s with the plugin, "
            f"{statistics.median(without):.3f} s without (medians of {len(without)} rounds): "
            f"{ratio:.2f}x (target <= {TARGET_RATIO}x)"
        )
    assert ratio <= TARGET_RATIO
