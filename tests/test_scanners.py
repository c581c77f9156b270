"""The scanner comparison: verdicts of picklescan and fickling beside weights_only=True."""

from __future__ import annotations

import os

import pytest
import torch

from harness.scanners import fickling_flags, picklescan_flags, scanner_comparison_table
from strategies.payloads import HOSTILE_CLASSES, HostilePayload

pytest.importorskip("picklescan")
pytest.importorskip("fickling")


def test_a_plain_checkpoint_is_flagged_by_neither(tmp_path):
    path = os.fspath(tmp_path / "plain.pt")
    torch.save({"weight": torch.ones(2), "epoch": 3}, path)
    assert picklescan_flags(path) is False
    assert fickling_flags(path) is False


def test_an_exec_payload_is_flagged_by_both(tmp_path):
    path = os.fspath(tmp_path / "exec.pt")
    HostilePayload("reduce_exec").write(path, tmp_path / "ran")
    assert picklescan_flags(path) is True
    assert fickling_flags(path) is True
    assert not (tmp_path / "ran").exists()  # scanning runs nothing


def test_the_table_has_a_row_per_hostile_file_and_weights_only_refuses_each():
    rows = scanner_comparison_table().splitlines()[2:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == list(HOSTILE_CLASSES)
    assert all("refused" in row and "ran" not in row.split(" | ")[-1] for row in rows)
