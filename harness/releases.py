"""Torch version strings in release order, for the matrix and the benchmarks alike.

Imports only the standard library, so the matrix's driver and renderer stay free of torch.
"""

from __future__ import annotations

__all__ = ["version_key"]


def version_key(version: str) -> tuple[int, ...]:
    """``"2.10.0"`` as ``(2, 10, 0)``, so versions sort as releases do."""
    return tuple(int(part) for part in version.split("+")[0].split("."))
