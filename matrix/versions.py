"""The torch versions of the matrix, what each one's environment needs, and which benchmarks
each one runs.

``tox.ini`` names one environment per version (``matrix-torch<version>``); a test checks
that it names exactly these.
"""

from __future__ import annotations

from harness.releases import version_key

__all__ = ["BENCHMARK_SELECTION", "VERSIONS", "check_versions", "needs_numpy_1", "tox_env"]

VERSIONS = (
    "1.13.1",
    "2.0.1",
    "2.1.2",
    "2.2.2",
    "2.3.1",
    "2.4.1",
    "2.5.1",
    "2.6.0",
    "2.7.1",
    "2.8.0",
    "2.9.1",
    "2.10.0",
    "2.11.0",
    "2.12.1",
    "2.13.0",
    "2.14.1",
    "2.15.0",
)

#: pytest ``-k`` expression: the benchmarks every torch version of the matrix runs
#: (``python -m matrix bench``), the ones :mod:`benchmarks.versions` compares.
BENCHMARK_SELECTION = "limit_memory_copy or torch_save_buffer or torch_load_buffer or many_tensors"


def needs_numpy_1(version: str) -> bool:
    """torch before 2.3 was built against numpy 1 and fails to import beside numpy 2."""
    return version_key(version) < (2, 3)


def tox_env(version: str) -> str:
    """The tox environment that installs ``version``."""
    return f"matrix-torch{version}"


def check_versions(names: list[str]) -> list[str]:
    """``names`` in matrix order; raises ValueError naming any that are not in the matrix."""
    unknown = [name for name in names if name not in VERSIONS]
    if unknown:
        raise ValueError(
            f"not in the matrix: {', '.join(unknown)}; choose from {', '.join(VERSIONS)}"
        )
    return [version for version in VERSIONS if version in names]
