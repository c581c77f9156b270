"""The sandbox names every way a load can end; the safety invariants hold on this torch."""

from __future__ import annotations

import atexit
import ctypes
import io
import os
import pickletools
import sys
import tarfile
import time
import zipfile

import pytest
import torch
from hypothesis import settings
from hypothesis.errors import InvalidArgument

from harness import safety, sandbox
from harness.capabilities import probe
from harness.invariants import INVARIANTS
from harness.safety import (
    malformed_files_fail_cleanly,
    safety_invariants,
    unsafe_load_executes,
    weights_only_runs_no_payload,
)
from harness.sandbox import LoadOutcome, LoadRequest, load_in_child, load_requests_in_child
from harness.suite import run_invariant
from strategies.payloads import (
    ATTACK_CLASSES,
    CORRUPTION_KINDS,
    HOSTILE_CLASSES,
    LEGACY_CARRIED_CLASSES,
    MEMORY_ATTACK_CLASSES,
    Corruption,
    HostilePayload,
    PickledCall,
    valid_checkpoint_bytes,
)

FEW = settings(max_examples=2, derandomize=True, database=None, deadline=None)


def test_sandbox_names_each_outcome_and_goes_on_after_a_crash(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.ones(2)}, good)
    segfault = tmp_path / "segfault.pt"
    torch.save({"x": PickledCall(ctypes.string_at, 0)}, segfault)
    sleeps = tmp_path / "sleeps.pt"
    torch.save({"x": PickledCall(time.sleep, 60)}, sleeps)
    hostile = tmp_path / "hostile.pt"
    HostilePayload("reduce_open").write(hostile, tmp_path / "ran")
    bomb = tmp_path / "bomb.pt"
    HostilePayload("zeros_bomb").write(bomb, tmp_path / "unused")
    requests = [
        LoadRequest(str(good), weights_only=True),
        LoadRequest(str(hostile), weights_only=True),
        LoadRequest(str(bomb), weights_only=False),
        LoadRequest(str(segfault), weights_only=False),
        LoadRequest(str(good), weights_only=False),
        LoadRequest(str(sleeps), weights_only=False),
        LoadRequest(str(good), weights_only=True),
    ]
    outcomes = load_requests_in_child(requests, timeout_s=2)
    assert [o.kind for o in outcomes] == [
        "loaded",
        "refused",
        "out_of_memory",
        "crashed",
        "loaded",
        "timeout",
        "loaded",
    ]
    assert outcomes[1].error_type == "UnpicklingError"
    assert outcomes[1].detail.startswith("UnpicklingError: WeightsUnpickler error:")
    assert outcomes[3].error_type == "SIGSEGV"
    assert str(outcomes[3]) == "crashed (SIGSEGV)"
    assert [o.path for o in outcomes] == [r.path for r in requests]
    assert not (tmp_path / "ran").exists()


def test_a_child_dying_after_its_last_load_is_pinned_on_the_file_that_killed_it(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.ones(2)}, good)
    aborts_at_exit = tmp_path / "aborts-at-exit.pt"
    torch.save({"x": PickledCall(atexit.register, os.abort)}, aborts_at_exit)
    requests = [
        LoadRequest(str(good), weights_only=False),
        LoadRequest(str(aborts_at_exit), weights_only=False),
        LoadRequest(str(good), weights_only=False),
        LoadRequest(str(aborts_at_exit), weights_only=False, alone=True),
        LoadRequest(str(good), weights_only=False),
    ]
    outcomes = load_requests_in_child(requests)
    assert [str(o) for o in outcomes] == [
        "loaded",
        "crashed (SIGABRT)",
        "loaded",
        "crashed (SIGABRT)",
        "loaded",
    ]
    assert outcomes[1].detail.startswith("loaded, then the child was killed by SIGABRT")


def test_each_load_has_a_child_of_its_own(tmp_path):
    # A file that breaks the process it is loaded in (here: a recursion limit no unpickler
    # can work under) harms no later load.
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.ones(2)}, good)
    breaks = tmp_path / "breaks.pt"
    torch.save({"x": PickledCall(sys.setrecursionlimit, 8)}, breaks)
    requests = [
        LoadRequest(str(breaks), weights_only=False),
        LoadRequest(str(good), weights_only=False),
        LoadRequest(str(good), weights_only=True),
    ]
    outcomes = load_requests_in_child(requests)
    assert [str(o) for o in outcomes] == ["refused (RecursionError)", "loaded", "loaded"]


def test_a_load_past_its_time_limit_in_a_child_ending_whole_is_a_timeout(tmp_path):
    sleeps = tmp_path / "sleeps.pt"
    torch.save({"x": PickledCall(time.sleep, 60)}, sleeps)
    started = time.monotonic()
    (outcome,) = load_requests_in_child(
        [LoadRequest(str(sleeps), weights_only=False, alone=True)], timeout_s=1
    )
    assert (outcome.kind, outcome.detail) == ("timeout", "no result after 1 s")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("alone", [False, True], ids=["forked", "whole_shutdown"])
def test_a_child_that_hangs_at_exit_runs_out_of_time_after_its_load(tmp_path, alone):
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.ones(2)}, good)
    hangs_at_exit = tmp_path / "hangs-at-exit.pt"
    torch.save({"x": PickledCall(atexit.register, time.sleep, 60)}, hangs_at_exit)
    requests = [
        LoadRequest(str(hangs_at_exit), weights_only=False, alone=alone),
        LoadRequest(str(good), weights_only=True),
    ]
    started = time.monotonic()
    first, second = load_requests_in_child(requests, timeout_s=1)
    assert first.kind == "timeout"
    assert first.detail == "loaded, then the child did not end within 1 s"
    assert second.kind == "loaded"
    assert time.monotonic() - started < 30


def test_a_server_started_ahead_serves_the_loads_and_is_started_once(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.ones(2)}, good)
    sandbox.start()
    server = sandbox._server.process.pid
    sandbox.start()
    assert load_in_child(good, weights_only=True).kind == "loaded"
    assert sandbox._server.process.pid == server


def test_load_in_child_refuses_a_missing_file(tmp_path):
    outcome = load_in_child(tmp_path / "missing.pt", weights_only=True)
    assert (outcome.kind, outcome.error_type) == ("refused", "FileNotFoundError")


def test_every_attack_is_live_without_weights_only_and_blocked_with_it():
    payloads = [HostilePayload(attack) for attack in ATTACK_CLASSES]
    ran = list(unsafe_load_executes(payloads))
    assert [line.split(":")[0] for line in ran] == list(ATTACK_CLASSES)
    assert all(line.split(": ", 1)[1].startswith("ran,") for line in ran), ran
    everything = [HostilePayload(attack) for attack in HOSTILE_CLASSES]
    lines = list(weights_only_runs_no_payload(everything))
    findings = [line for line in lines if line.startswith("finding: ")]
    outcomes = [line for line in lines if not line.startswith("finding: ")]
    with_mmap = [line for line in outcomes if " (mmap): " in line]
    assert len(outcomes) - len(with_mmap) == len(everything)
    assert "torchscript_archive: refused (RuntimeError)" in outcomes
    if probe().load_mmap:
        assert len(with_mmap) == len(everything)
        assert "torchscript_archive (mmap): refused (RuntimeError)" in outcomes
    # Every load that did not refuse is a memory attack, reported as a finding.
    loaded = [line.split(":")[0] for line in outcomes if line.endswith(": loaded")]
    assert len(findings) == len(loaded)
    assert all(name.split(" ")[0] in MEMORY_ATTACK_CLASSES for name in loaded)


def test_every_pickle_level_attack_is_live_and_blocked_in_the_legacy_format_too(tmp_path):
    payloads = [HostilePayload(attack, "legacy") for attack in LEGACY_CARRIED_CLASSES]
    ran = list(unsafe_load_executes(payloads))
    assert [line.split(":")[0] for line in ran] == [payload.name for payload in payloads]
    assert payloads[0].name == "reduce_open (legacy format)"
    assert all(line.split(": ", 1)[1].startswith("ran,") for line in ran), ran
    refused = list(weights_only_runs_no_payload(payloads))
    assert not [line for line in refused if line.startswith("finding: ")]
    payloads[0].write(tmp_path / "legacy.pt", tmp_path / "ran")
    assert not zipfile.is_zipfile(tmp_path / "legacy.pt")
    assert (tmp_path / "legacy.pt").read_bytes()[:2] == b"\x80\x02"  # the magic number pickle
    with pytest.raises(InvalidArgument, match="has no legacy carrier"):
        HostilePayload("torchscript_archive", "legacy")


def test_malformed_files_of_every_kind_fail_cleanly():
    corruptions = [Corruption(kind, index=3, mask=0x80) for kind in CORRUPTION_KINDS]
    seen = list(malformed_files_fail_cleanly(corruptions))
    assert {line.split(":")[0] for line in seen} >= set(CORRUPTION_KINDS)


@pytest.mark.parametrize("invariant", safety_invariants(), ids=lambda i: i.name)
def test_safety_invariants_pass_as_properties(invariant):
    result = run_invariant(invariant, settings_=FEW)
    assert result.passed, result.message
    assert result.examples == FEW.max_examples
    assert result.observations


def test_safety_invariants_are_in_the_suite():
    names = {invariant.name for invariant in INVARIANTS}
    assert {i.name for i in safety_invariants()} <= names


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_corruptions_change_the_file(kind):
    valid = valid_checkpoint_bytes()
    for index in (0, 1, 17, 4095):
        assert Corruption(kind, index, 0x80).apply(valid) != valid


def test_truncating_at_records_cuts_at_every_record_boundary():
    valid = valid_checkpoint_bytes()
    lengths = {len(Corruption("truncate_at_record", index).apply(valid)) for index in range(64)}
    starts = {info.header_offset for info in zipfile.ZipFile(io.BytesIO(valid)).infolist()}
    assert starts <= lengths


@pytest.mark.parametrize("attack", HOSTILE_CLASSES)
def test_payloads_are_checkpoints_in_their_carrier_and_write_no_sentinel(attack, tmp_path):
    path = tmp_path / "checkpoint.pt"
    sentinel = tmp_path / "ran"
    HostilePayload(attack).write(path, sentinel)
    if attack == "legacy_tar":
        assert tarfile.is_tarfile(path)
        assert tarfile.open(path).getnames() == ["sys_info", "storages", "tensors", "pickle"]
    else:
        assert zipfile.is_zipfile(path)
    assert not os.path.exists(sentinel)
    assert HostilePayload(attack).creates_sentinel == (attack in ATTACK_CLASSES)


def _storage_record_and_declared_bytes(path) -> tuple[int, int]:
    """The size of storage record 0 and the most bytes the pickle declares for a storage
    (the largest integer in it, as float32 elements)."""
    archive = zipfile.ZipFile(path)
    (record,) = [info for info in archive.infolist() if info.filename.endswith("/data/0")]
    pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    integers = [a for _, a, _ in pickletools.genops(pickled) if type(a) is int]
    return record.file_size, max(integers) * 4


def test_memory_attacks_are_what_they_say(tmp_path):
    expected = {"storage_record_short": (4, 256), "setitem_out_of_bounds": (4, 2**46)}
    for attack, sizes in expected.items():
        path = tmp_path / f"{attack}.pt"
        HostilePayload(attack).write(path, tmp_path / "unused")
        assert _storage_record_and_declared_bytes(path) == sizes
    # Without the storage trick, plain pickle runs the SETITEM on the tensor.
    path = tmp_path / "setitem_on_tensor.pt"
    HostilePayload("setitem_on_tensor").write(path, tmp_path / "unused")
    loaded = torch.load(path, weights_only=False)
    assert loaded["model_state_dict"]["weight"].tolist() == [7.0, 0.0, 0.0, 0.0]
    assert [HostilePayload(a).corrupts_memory for a in MEMORY_ATTACK_CLASSES] == [
        False,
        False,
        True,
    ]


def test_a_memory_attack_that_loads_is_a_finding_and_one_that_crashes_fails(monkeypatch):
    def sandbox_reporting(kind, error_type=None):
        return lambda requests: [LoadOutcome(r.path, kind, error_type) for r in requests]

    payloads = [HostilePayload("setitem_on_tensor")]
    monkeypatch.setattr(safety, "load_requests_in_child", sandbox_reporting("loaded"))
    lines = list(safety.weights_only_runs_no_payload(payloads))
    assert lines[1] == (
        "finding: weights_only=True loads the setitem_on_tensor file: "
        + HostilePayload("setitem_on_tensor").harm
    )
    monkeypatch.setattr(safety, "load_requests_in_child", sandbox_reporting("crashed", "SIGSEGV"))
    with pytest.raises(AssertionError, match="should be refused.*but it crashed"):
        list(safety.weights_only_runs_no_payload(payloads))


def test_a_file_that_crashes_the_loader_is_kept_with_a_reproduction(monkeypatch, tmp_path):
    def sandbox_crashing(requests):
        return [LoadOutcome(request.path, "crashed", "SIGSEGV") for request in requests]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(safety, "load_requests_in_child", sandbox_crashing)
    with pytest.raises(AssertionError, match="kept, reproduce with: python -c") as failure:
        list(malformed_files_fail_cleanly([Corruption("junk", 1, 1)]))
    (kept,) = os.listdir(tmp_path / safety.KEPT_FILES_DIR)
    assert f"torch.load('{os.path.join(safety.KEPT_FILES_DIR, kept)}', weights_only=True)" in str(
        failure.value
    )
    junk = Corruption("junk", 1, 1).apply(valid_checkpoint_bytes())
    assert (tmp_path / safety.KEPT_FILES_DIR / kept).read_bytes() == junk


def test_payloads_written_one_at_a_time_into_one_folder_keep_apart(tmp_path):
    zipped, legacy = HostilePayload("reduce_open"), HostilePayload("reduce_open", "legacy")
    (first,) = safety.write_payloads([zipped], str(tmp_path))
    (second,) = safety.write_payloads([legacy], str(tmp_path))
    assert first.path != second.path
    assert zipfile.is_zipfile(first.path) and not zipfile.is_zipfile(second.path)
