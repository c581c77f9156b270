"""The safety promises of ``torch.load(weights_only=True)``: it runs no code from a hostile
file and fails cleanly, without crashing, hanging or exhausting memory, on a malformed one.

Every load happens in a child process (:mod:`harness.sandbox`), several files per child, so a
crash is observed and attributed instead of ending the run. Sentinels and files live in a
temporary directory removed afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from harness.capabilities import probe
from harness.compare import find_difference
from harness.sandbox import LoadOutcome, LoadRequest, load_requests_in_child
from harness.suite import Invariant
from strategies.payloads import (
    HOSTILE_CLASSES,
    LEGACY_CARRIED_CLASSES,
    MEMORY_ATTACK_CLASSES,
    HostilePayload,
    hostile_files,
    hostile_payloads,
    valid_checkpoint_bytes,
)

# Renamed: load_malformed and malformed_files_fail_cleanly take a parameter named corruptions.
from strategies.payloads import corruptions as corruption_strategy

__all__ = [
    "CLEAN_REFUSALS",
    "KEPT_FILES_DIR",
    "LOAD_FAILURES",
    "MalformedLoad",
    "WrittenPayload",
    "attack_outcomes_table",
    "keep_failing_file",
    "load_malformed",
    "malformed_files_fail_cleanly",
    "safety_invariants",
    "unsafe_load_executes",
    "weights_only_runs_no_payload",
    "write_payloads",
]

# The exception types torch raises on purpose when it refuses a file; any other type escaping
# from torch.load is reported as a usability finding (the caller cannot tell "bad file" from
# "bug" by catching these two).
CLEAN_REFUSALS = frozenset({"UnpicklingError", "RuntimeError"})
# The sandbox outcomes that are failures whatever the file: the loader crashed, hung or ran
# away with memory.
LOAD_FAILURES = frozenset({"crashed", "timeout", "out_of_memory"})
# Where a file whose load crashed, hung or ran out of memory is kept (relative to the working
# directory), so that the failure can be reproduced after the temporary files are gone.
KEPT_FILES_DIR = os.path.join("reports", "kept")


def _mmap_modes() -> tuple[bool, ...]:
    """Without ``mmap``, and with it where this torch's ``torch.load`` has it."""
    return (False, True) if probe().load_mmap else (False,)


def _describe(outcome: LoadOutcome) -> str:
    return f"{outcome} after {outcome.seconds:.1f} s: {outcome.detail}"


def keep_failing_file(path: str, *, mmap: bool) -> str:
    """Copy ``path``, whose ``torch.load(weights_only=True)`` crashed, hung or ran out of
    memory, into :data:`KEPT_FILES_DIR` under its SHA-256; a one-line reproduction."""
    with open(path, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()[:16]
    os.makedirs(KEPT_FILES_DIR, exist_ok=True)
    kept = os.path.join(KEPT_FILES_DIR, f"{digest}.pt")
    shutil.copyfile(path, kept)
    options = "weights_only=True, mmap=True" if mmap else "weights_only=True"
    return f"python -c \"import torch; torch.load('{kept}', {options})\""


@dataclass(frozen=True)
class WrittenPayload:
    """A hostile file on disk: its payload, where it is, and the sentinel it creates if run."""

    payload: object  # strategies.payloads.HostilePayload
    path: str
    sentinel: str

    def request(self, *, weights_only: bool, mmap: bool = False) -> LoadRequest:
        """The sandbox request loading this file; alone in its child if it corrupts memory."""
        alone = self.payload.corrupts_memory
        return LoadRequest(self.path, weights_only=weights_only, mmap=mmap, alone=alone)

    @property
    def ran(self) -> bool:
        """Whether the payload's code ran: its sentinel exists."""
        return os.path.exists(self.sentinel)


def write_payloads(payloads: Sequence, directory: str) -> list[WrittenPayload]:
    """Write each :class:`strategies.payloads.HostilePayload` into ``directory``, under a name
    made of its position, attack class and carrier."""
    files = []
    for position, payload in enumerate(payloads):
        stem = f"{position}-{payload.attack}-{payload.carrier}"
        path = os.path.join(directory, f"{stem}.pt")
        sentinel = os.path.join(directory, f"{stem}.ran")
        payload.write(path, sentinel)
        files.append(WrittenPayload(payload, path, sentinel))
    return files


def weights_only_runs_no_payload(payloads: Sequence) -> Iterator[str]:
    """``torch.load(weights_only=True)`` refuses every hostile file with ``UnpicklingError`` or
    ``RuntimeError``, and the file's payload never runs (its sentinel never appears); where
    torch has ``mmap``, the same holds with ``mmap=True``.

    ``payloads`` are :class:`strategies.payloads.HostilePayload` values, loaded in the sandbox.
    Yields ``"<attack>: <outcome>"`` for each, then ``"<attack> (mmap): <outcome>"``. A memory
    attack that loads without crashing is torch's broken promise, reported as a
    ``"finding: ..."`` line rather than failing the run; a crash still fails it.
    """
    with tempfile.TemporaryDirectory(prefix="hostile-") as directory:
        files = write_payloads(payloads, directory)
        loads = [(mmap, file) for mmap in _mmap_modes() for file in files]
        outcomes = load_requests_in_child(
            [file.request(weights_only=True, mmap=mmap) for mmap, file in loads]
        )
        for (mmap, file), outcome in zip(loads, outcomes, strict=True):
            load = "weights_only=True, mmap=True" if mmap else "weights_only=True"
            attack = file.payload.name
            yield f"{attack}{' (mmap)' if mmap else ''}: {outcome}"
            assert not file.ran, (
                f"{load} ran the {attack} payload: its sentinel was created "
                f"(load {_describe(outcome)})"
            )
            if outcome.kind == "loaded" and file.payload.attack in MEMORY_ATTACK_CLASSES:
                yield f"finding: {load} loads the {attack} file: {file.payload.harm}"
                continue
            kept = ""
            if outcome.kind in LOAD_FAILURES:
                kept = f"; kept, reproduce with: {keep_failing_file(file.path, mmap=mmap)}"
            assert outcome.kind == "refused" and outcome.error_type in CLEAN_REFUSALS, (
                f"{load} on the {attack} file should be refused with "
                f"UnpicklingError or RuntimeError, but it {_describe(outcome)}{kept}"
            )


def unsafe_load_executes(payloads: Sequence) -> Iterator[str]:
    """With ``weights_only=False`` the hostile files are loaded after a benign checkpoint in one
    child; which payloads run is reported, not judged. The benign checkpoint must load, which
    shows the sandbox loads real files.

    Yields ``"<attack>: ran, <outcome>"`` or ``"<attack>: did not run, <outcome>"``.
    """
    with tempfile.TemporaryDirectory(prefix="hostile-") as directory:
        benign = os.path.join(directory, "benign.pt")
        torch.save({"epoch": 1, "model_state_dict": {"weight": torch.ones(2, 2)}}, benign)
        files = write_payloads(payloads, directory)
        requests = [LoadRequest(benign, weights_only=False)]
        requests += [file.request(weights_only=False) for file in files]
        control, *outcomes = load_requests_in_child(requests)
        assert control.kind == "loaded", (
            f"the sandbox failed to load a plain checkpoint with weights_only=False: "
            f"{_describe(control)}"
        )
        for file, outcome in zip(files, outcomes, strict=True):
            yield f"{file.payload.name}: {'ran' if file.ran else 'did not run'}, {outcome}"


def _original() -> object:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "valid.pt")
        with open(path, "wb") as file:
            file.write(valid_checkpoint_bytes())
        return torch.load(path, weights_only=True)


@dataclass(frozen=True)
class MalformedLoad:
    """How ``torch.load(weights_only=True)`` ended on one damaged checkpoint.

    Attributes:
        corruption: the :class:`strategies.payloads.Corruption` applied.
        mmap: whether it was loaded with ``mmap=True``.
        outcome: the sandbox's :class:`harness.sandbox.LoadOutcome`.
        difference: for a file that loaded, ``None`` if its content is identical to the
            undamaged checkpoint's, else where the first difference is (path and aspect). A
            shortened storage record that loads is a difference whatever the values read
            past its end (:attr:`strategies.payloads.Corruption.shortens_record`).
        reproduction: for a load that crashed, hung or ran out of memory, the line that
            loads the file kept by :func:`keep_failing_file`.
    """

    corruption: object
    mmap: bool
    outcome: LoadOutcome
    difference: str | None = None
    reproduction: str | None = None


def load_malformed(corruptions: Sequence) -> list[MalformedLoad]:
    """Apply each corruption to :func:`strategies.payloads.valid_checkpoint_bytes` and load
    the result with ``weights_only=True``, with and without ``mmap`` where torch has it, in
    the sandbox; compare what loads with the undamaged checkpoint."""
    valid = valid_checkpoint_bytes()
    loads = []
    with tempfile.TemporaryDirectory(prefix="malformed-") as directory:
        requests = []
        for position, corruption in enumerate(corruptions):
            path = os.path.join(directory, f"{position}-{corruption.kind}.pt")
            with open(path, "wb") as file:
                file.write(corruption.apply(valid))
            for mmap in _mmap_modes():
                saved = os.path.join(directory, f"{position}-mmap{int(mmap)}.loaded.pt")
                requests.append(LoadRequest(path, weights_only=True, mmap=mmap, save_to=saved))
                loads.append((corruption, mmap))
        original = None
        results = []
        outcomes = load_requests_in_child(requests)
        for (corruption, mmap), request, outcome in zip(loads, requests, outcomes, strict=True):
            difference = None
            if outcome.kind == "loaded" and corruption.shortens_record:
                difference = "a storage record is shorter than its declared size"
            elif outcome.kind == "loaded":
                original = _original() if original is None else original
                loaded = torch.load(request.save_to, weights_only=True)
                found = find_difference(original, loaded, name="checkpoint")
                difference = None if found is None else found.headline
            reproduction = None
            if outcome.kind in LOAD_FAILURES:
                reproduction = keep_failing_file(request.path, mmap=mmap)
            results.append(MalformedLoad(corruption, mmap, outcome, difference, reproduction))
    return results


def malformed_files_fail_cleanly(corruptions: Sequence) -> Iterator[str]:
    """``torch.load(weights_only=True)``, with and without ``mmap``, on a damaged checkpoint
    either raises a Python exception or loads; it never crashes, hangs or runs out of memory.

    ``corruptions`` are :class:`strategies.payloads.Corruption` values, loaded by
    :func:`load_malformed`. Yields ``"<kind>: <outcome>"``, and ``"finding: ..."`` when a
    damaged file loads with content other than the original's or is refused with an
    exception other than :data:`CLEAN_REFUSALS`.
    """
    for load in load_malformed(corruptions):
        kind, outcome = load.corruption.kind, load.outcome
        yield f"{kind}: {outcome}"
        where = f"{load.corruption} (mmap={load.mmap})"
        assert outcome.kind not in LOAD_FAILURES, (
            f"loading {where} {_describe(outcome)}; kept, reproduce with: {load.reproduction}"
        )
        if outcome.kind == "refused" and outcome.error_type not in CLEAN_REFUSALS:
            yield f"finding: {kind} escapes as a bare {outcome.error_type}"
        if load.difference is not None:
            yield f"finding: {kind} (mmap={load.mmap}) loads with different content: " + (
                load.difference
            )


def attack_outcomes_table() -> str:
    """A Markdown table: each hostile class (code-running, memory attack, allocation bomb),
    then each pickle-level class in the legacy format, loaded with ``weights_only=True`` and
    ``weights_only=False`` in the sandbox, and whether it ran."""
    payloads = [HostilePayload(attack) for attack in HOSTILE_CLASSES]
    payloads += [HostilePayload(attack, "legacy") for attack in LEGACY_CARRIED_CLASSES]
    rows = ["| attack | weights_only=True | weights_only=False |", "|---|---|---|"]
    columns = []
    for weights_only in (True, False):
        with tempfile.TemporaryDirectory(prefix="hostile-") as directory:
            files = write_payloads(payloads, directory)
            outcomes = load_requests_in_child(
                [file.request(weights_only=weights_only) for file in files]
            )
            columns.append(
                [
                    f"{outcome}, {'ran' if file.ran else 'did not run'}"
                    if file.payload.creates_sentinel
                    else str(outcome)
                    for file, outcome in zip(files, outcomes, strict=True)
                ]
            )
    for payload, safe, unsafe in zip(payloads, *columns, strict=True):
        rows.append(f"| {payload.name} | {safe} | {unsafe} |")
    return "\n".join(rows)


def _payload_lists(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(strategy, min_size=1, max_size=24, unique=True)


def _hostile_file_lists() -> st.SearchStrategy:
    return _payload_lists(hostile_files())


def _hostile_payload_lists() -> st.SearchStrategy:
    return _payload_lists(hostile_payloads())


def _corruption_lists() -> st.SearchStrategy:
    return st.lists(corruption_strategy(), min_size=1, max_size=8, unique=True)


def safety_invariants() -> list[Invariant]:
    """The three safety invariants, each loading its drawn files in child processes."""
    return [
        Invariant(
            "weights_only_runs_no_payload",
            "torch.load(weights_only=True) refuses every hostile file (code-running payloads "
            "and allocation bombs) with UnpicklingError or RuntimeError and runs none of them.",
            _hostile_file_lists,
            weights_only_runs_no_payload,
        ),
        Invariant(
            "unsafe_load_executes",
            "torch.load(weights_only=False) on hostile files: which payloads run is reported; "
            "a plain checkpoint loaded first in the same sandbox must load.",
            _hostile_payload_lists,
            unsafe_load_executes,
        ),
        Invariant(
            "malformed_files_fail_cleanly",
            "torch.load(weights_only=True), with and without mmap, on a truncated, bit-flipped "
            "or resized checkpoint raises or loads, and never crashes, hangs or runs out of "
            "memory; loads with changed content and unusual exception types are reported.",
            _corruption_lists,
            malformed_files_fail_cleanly,
        ),
    ]


if __name__ == "__main__":
    print(f"torch {torch.__version__}")
    print(attack_outcomes_table())
