"""The torch versions of the matrix, and what each one's environment needs.

``tox.ini`` names one environment per version (``matrix-torch<version>``); a test checks
that it names exactly these.
"""

from __future__ import annotations

__all__ = ["VERSIONS", "check_versions", "needs_numpy_1", "tox_env", "version_key"]

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


def version_key(version: str) -> tuple[int, ...]:
    """``"2.10.0"`` as ``(2, 10, 0)``, so versions sort as releases do."""
    return tuple(int(part) for part in version.split("+")[0].split("."))


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
