"""Reading corpora with the installed torch, and attacking its loader, into records.

:func:`read_corpus` loads every artifact of one writer's corpus in each load mode and
compares it with the manifest (the artifacts of a kind with a reader of its own, such as
safetensors or TorchScript files, through that reader, in a child process);
:func:`payload_records` writes every hostile payload of :mod:`strategies.payloads` with the
installed torch and loads it in a child process; :func:`malformed_records` does the same
with the damaged checkpoints of :data:`MALFORMED`.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from harness.capabilities import probe, torch_version
from harness.files import run_isolated
from harness.persistence import explain_error
from harness.safety import (
    CLEAN_REFUSALS,
    LOAD_FAILURES,
    MalformedLoad,
    WrittenPayload,
    load_malformed,
    write_payloads,
)
from harness.sandbox import LoadOutcome, load_requests_in_child
from matrix.corpus import MANIFEST, ArtifactKind, artifact_kind
from matrix.describe import describe, first_difference
from matrix.results import Record, error_type_named_in
from strategies.payloads import (
    CORRUPTION_KINDS,
    HOSTILE_CLASSES,
    LEGACY_CARRIED_CLASSES,
    Corruption,
    HostilePayload,
)

__all__ = [
    "MALFORMED",
    "PAYLOADS",
    "load_artifact",
    "malformed_records",
    "payload_records",
    "read_batch",
    "read_corpus",
]

# The kinds of the files this module builds.
_PAYLOAD = artifact_kind("payload")
_MALFORMED = artifact_kind("malformed")


def _is_refusal(error: BaseException, load_mode: str) -> bool:
    """Whether ``error`` is the weights_only unpickler refusing the file: an
    ``UnpicklingError`` (as every torch raises it, 1.13.1 included) of a load that ran with
    ``weights_only=True``, asked for or, in ``default`` mode, torch's default."""
    weights_only = load_mode == "weights_only" or (
        load_mode == "default" and probe().weights_only_default
    )
    return weights_only and isinstance(error, pickle.UnpicklingError)


def load_artifact(path: str, load_mode: str, map_location: Any = None) -> Any:
    """``torch.load`` of ``path`` as ``load_mode`` (one of
    :data:`matrix.results.CORPUS_LOAD_MODES`) says."""
    keywords: dict[str, Any] = {"map_location": map_location}
    if load_mode != "default":
        if not probe().load_weights_only:
            raise TypeError(f"torch {torch_version()}'s torch.load has no weights_only")
        keywords["weights_only"] = load_mode == "weights_only"
    return torch.load(path, **keywords)


def _read(entry: dict, path: str, load_mode: str) -> tuple[str, str, str]:
    """``(outcome, message, error_type)`` of loading one artifact, as its kind's record says:
    the description compared with the manifest's, then the kind's check."""
    kind = artifact_kind(entry["kind"])
    map_location = "cpu" if kind.tagged_as is not None else None
    try:
        loaded = load_artifact(path, load_mode, map_location)
    except Exception as error:  # noqa: BLE001 - how the load failed is the result
        outcome = "refused" if _is_refusal(error, load_mode) else "error"
        return outcome, explain_error(error), type(error).__name__
    difference = first_difference(entry["expected"], describe(loaded))
    if difference:
        return "differs", difference, ""
    if kind.check is not None:
        try:
            difference = kind.check.run(entry, loaded)
        except Exception as error:  # noqa: BLE001
            return "error", f"{kind.check.name}: {explain_error(error)}", type(error).__name__
        if difference:
            return "differs", difference, ""
    return "identical", "", ""


def _summary(records: list[Record]) -> str:
    counts = Counter(record.outcome for record in records)
    return ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))


# How long a kind's own reader may take on one corpus in its child process.
_BATCH_TIMEOUT_S = 120.0


def read_batch(
    kind: ArtifactKind, entries: list[dict], directory: str, progress: Callable[[str], None]
) -> list[tuple[dict, str, str, str]]:
    """The loads of the writable manifest entries ``entries`` of ``kind`` (a kind with a
    reader of its own) in the corpus ``directory``: ``(entry, load_mode, outcome, message)``
    per entry and load mode of ``kind``, from its reader, run in a forked child where the
    kind asks for it. A child that crashed, hung or ran out of memory is ``crashed`` for
    every entry and load mode, and an exception escaping the reader ``error`` for each (its
    class and first line); ValueError where the reader returned other loads than one per
    entry and load mode, or an outcome its kind cannot have."""
    expected = {(e["name"], m) for e in entries for m in kind.load_modes}
    if kind.read_isolated:
        ended = run_isolated(
            functools.partial(kind.read, entries, directory, lambda line: None),
            timeout=_BATCH_TIMEOUT_S,
        )
        if ended.outcome != "returned":
            outcome = "error" if ended.outcome == "raised" else "crashed"
            message = ended.error if outcome == "error" else f"{ended.outcome}: {ended.error}"
            return [(e, m, outcome, message) for e in entries for m in kind.load_modes]
        found = ended.value
    else:
        try:
            found = kind.read(entries, directory, progress)
        except Exception as error:  # noqa: BLE001 - a reader that failed is the result
            return [(e, m, "error", explain_error(error)) for e in entries for m in kind.load_modes]
    by_name = {entry["name"]: entry for entry in entries}
    got = [(by_name.get(entry["name"]), load_mode) for entry, load_mode, *_ in found]
    if len(got) != len(expected) or {(e["name"], m) for e, m in got if e} != expected:
        raise ValueError(
            f"{kind.name}: its reader returned {len(found)} loads, not one per entry and load "
            f"mode of {kind.load_modes} ({len(expected)})"
        )
    wrong = [outcome for *_, outcome, _ in found if outcome not in kind.outcomes]
    if wrong:
        raise ValueError(f"{kind.name}: its reader returned {wrong[0]!r}, not of {kind.outcomes}")
    return [(by_name[entry["name"]], *rest) for entry, *rest in found]


def read_corpus(directory: str, progress: Callable[[str], None] = print) -> list[Record]:
    """Records of loading every artifact of the corpus in ``directory``, in every load mode
    of its kind, with the installed torch: a ``torch.save`` file with :func:`load_artifact`
    in each of :data:`matrix.results.CORPUS_LOAD_MODES`, the artifacts of a kind with a
    reader of its own in one call of it (:func:`read_batch`)."""
    with open(os.path.join(directory, MANIFEST)) as handle:
        manifest = json.load(handle)
    writer, reader = manifest["writer"], torch_version()
    records = []
    batches: dict[str, list[dict]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for entry in manifest["artifacts"]:
            kind = artifact_kind(entry["kind"])
            if kind.read is not None and "unwritable" not in entry:
                batches.setdefault(kind.name, []).append(entry)
                continue
            for load_mode in kind.load_modes:
                if "unwritable" in entry:
                    # the manifest keeps only the writer's message, which names the class
                    message = entry["unwritable"]
                    outcome, error_type = "unwritable", error_type_named_in("unwritable", message)
                else:
                    path = os.path.join(directory, entry["file"])
                    outcome, message, error_type = _read(entry, path, load_mode)
                names = (writer, reader, entry["name"], entry["kind"], load_mode)
                records.append(Record(*names, outcome, message, error_type))
        for name, entries in batches.items():
            for entry, load_mode, outcome, message in read_batch(
                artifact_kind(name), entries, directory, progress
            ):
                names = (writer, reader, entry["name"], entry["kind"], load_mode)
                error_type = error_type_named_in(outcome, message)
                records.append(Record(*names, outcome, message, error_type))
    progress(f"  read {writer}'s corpus: {_summary(records)}")
    return records


# The kinds of LoadOutcome whose error_type names a Python exception (the others name a
# signal or nothing).
_RAISED_KINDS = ("refused", "out_of_memory")


def _payload_outcome(file: WrittenPayload, outcome: LoadOutcome) -> tuple[str, str, str]:
    """``(outcome, message, error_type)`` of loading one hostile file."""
    if file.ran:
        raised = outcome.error_type if outcome.kind in _RAISED_KINDS else ""
        return "executed", f"the payload ran ({outcome.kind}): {outcome.detail}"[:300], raised
    if outcome.kind in ("crashed", "timeout"):
        return "crashed", f"{outcome.kind} ({outcome.error_type}): {outcome.detail}"[:300], ""
    if outcome.kind == "loaded" and file.payload.creates_sentinel:
        return "differs", "loaded without running the payload", ""
    if outcome.kind == "loaded":
        return "differs", f"loaded: {file.payload.harm}", ""
    return "refused", outcome.detail[:300], outcome.error_type or ""


# Every hostile class in a zip checkpoint, then every pickle-level one in the legacy format;
# a record's artifact is the payload's name, its kind ``payload:<attack class>``.
PAYLOADS = tuple(HostilePayload(attack) for attack in HOSTILE_CLASSES) + tuple(
    HostilePayload(attack, "legacy") for attack in LEGACY_CARRIED_CLASSES
)


def payload_records(progress: Callable[[str], None] = print) -> list[Record]:
    """Records of loading every hostile file of :data:`PAYLOADS`, built with the installed
    torch, with ``weights_only=True`` (and ``mmap=True`` too where torch has it) and
    ``weights_only=False``, in child processes."""
    version = torch_version()
    records = []
    load_modes = ["weights_only", "unsafe"]
    if probe().load_mmap:
        load_modes.insert(1, "weights_only_mmap")
    for load_mode in load_modes:
        with tempfile.TemporaryDirectory(prefix="matrix-payloads-") as directory:
            files = []
            for payload in PAYLOADS:
                try:
                    files += write_payloads([payload], directory)
                except Exception as error:  # noqa: BLE001
                    names = (version, version, payload.name, _PAYLOAD.kind_of(payload.attack))
                    message, error_type = explain_error(error), type(error).__name__
                    records.append(Record(*names, load_mode, "unwritable", message, error_type))
            requests = [
                file.request(
                    weights_only=load_mode != "unsafe", mmap=load_mode == "weights_only_mmap"
                )
                for file in files
            ]
            for file, outcome in zip(files, load_requests_in_child(requests), strict=True):
                names = (version, version, file.payload.name, _PAYLOAD.kind_of(file.payload.attack))
                records.append(Record(*names, load_mode, *_payload_outcome(file, outcome)))
    broken = sorted(
        {
            r.artifact
            for r in records
            if r.load_mode.startswith("weights_only") and r.outcome in ("executed", "crashed")
        }
    )
    progress(
        f"  payloads: {len(records)} loads; executed or crashed under weights_only: "
        f"{broken or 'none'}"
    )
    return records


# The damaged checkpoints every reader builds from its own valid checkpoint: each kind of
# corruption at a few records, bytes or offsets, flipping one bit or a whole byte.
MALFORMED = tuple(
    dict.fromkeys(
        Corruption(kind, index, mask) if kind != "empty" else Corruption(kind)
        for kind in CORRUPTION_KINDS
        for index in (0, 1, 2, 3, 5, 8, 40, 100, 777)
        for mask in (1, 0x80)
    )
)


def _malformed_outcome(load: MalformedLoad) -> tuple[str, str, str]:
    """``(outcome, message, error_type)`` of loading one damaged file."""
    outcome = load.outcome
    if outcome.kind in LOAD_FAILURES:
        return "crashed", f"{outcome}: {outcome.detail}"[:300], ""
    if outcome.kind == "refused":
        clean = outcome.error_type in CLEAN_REFUSALS
        return ("refused" if clean else "error"), outcome.detail[:300], outcome.error_type or ""
    if load.difference is not None:
        return "differs", f"loaded with other content: {load.difference}"[:300], ""
    return "identical", "", ""


def malformed_records(progress: Callable[[str], None] = print) -> list[Record]:
    """Records of loading every damaged checkpoint of :data:`MALFORMED`, built from the
    installed torch's own valid checkpoint, with ``weights_only=True`` (and ``mmap=True`` too
    where torch has it) in child processes: ``refused`` is a clean refusal, ``error`` an
    exception other than ``UnpicklingError``/``RuntimeError``, ``differs`` a load with other
    content, ``crashed`` a crash, hang or runaway allocation."""
    version = torch_version()
    records = []
    for load in load_malformed(MALFORMED):
        corruption = load.corruption
        artifact = f"malformed/{corruption.kind}/{corruption.index}/{corruption.mask:#x}"
        load_mode = "weights_only_mmap" if load.mmap else "weights_only"
        names = (version, version, artifact, _MALFORMED.kind_of(corruption.kind), load_mode)
        records.append(Record(*names, *_malformed_outcome(load)))
    progress(f"  damaged files: {len(records)} loads: {_summary(records)}")
    return records
