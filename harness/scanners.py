"""Pickle scanners beside ``weights_only=True``: which hostile files each defence catches.

picklescan and fickling read a checkpoint without loading it and say whether it looks
dangerous. :func:`scanner_comparison_table` writes every hostile file of
:mod:`strategies.payloads` and puts each scanner's verdict beside what
``torch.load(weights_only=True)`` does with it in the sandbox. Both scanners are optional
(``pip install torch-persistence-harness[scanners]``); a missing one is reported as such.
Run ``python -m harness.scanners`` for the table.
"""

from __future__ import annotations

import functools
import os
import tempfile

import torch

from harness.safety import write_payloads
from harness.sandbox import load_requests_in_child
from strategies.payloads import HOSTILE_CLASSES, HostilePayload

__all__ = ["fickling_flags", "picklescan_flags", "scanner_comparison_table"]


def picklescan_flags(path: str) -> bool | None:
    """Whether picklescan reports a dangerous global in the file; None if not installed."""
    try:
        from picklescan.scanner import scan_file_path
    except ImportError:
        return None
    result = scan_file_path(path)
    return bool(result.infected_files or result.scan_err)


def _fickling_severity(path: str) -> int:
    import fickling

    results = fickling.scan_zip_archive(path, graceful=True)
    return max(result.severity.value for result in results.values())


@functools.cache
def _benign_fickling_severity() -> int:
    # fickling rates any torch checkpoint "likely unsafe" (it calls torch's rebuild
    # functions), so a file counts as flagged only when rated above a plain state_dict.
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "benign.pt")
        torch.save({"weight": torch.zeros(2, 2)}, path)
        return _fickling_severity(path)


def fickling_flags(path: str) -> bool | None:
    """Whether fickling rates the file worse than a plain checkpoint; None if not installed."""
    try:
        import fickling  # noqa: F401
    except ImportError:
        return None
    return _fickling_severity(path) > _benign_fickling_severity()


def _verdict(flagged: bool | None) -> str:
    return "not installed" if flagged is None else ("flagged" if flagged else "**missed**")


def scanner_comparison_table() -> str:
    """A Markdown table: each hostile file, picklescan's and fickling's verdicts, and what
    ``weights_only=True`` does with it (loads run in the sandbox)."""
    payloads = [HostilePayload(attack) for attack in HOSTILE_CLASSES]
    rows = ["| attack | picklescan | fickling | weights_only=True |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="hostile-") as directory:
        files = write_payloads(payloads, directory)
        outcomes = load_requests_in_child([file.request(weights_only=True) for file in files])
        for file, outcome in zip(files, outcomes, strict=True):
            ran = ", ran" if file.ran else ""
            rows.append(
                f"| {file.payload.attack} | {_verdict(picklescan_flags(file.path))} | "
                f"{_verdict(fickling_flags(file.path))} | {outcome}{ran} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    print(scanner_comparison_table())
