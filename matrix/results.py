"""The matrix's results: one :class:`Record` per (writer, reader, artifact, load mode).

``matrix/results.json`` is a list of records as JSON objects with the fields of
:class:`Record`; ``error_type`` is left out where it is ``None`` (records written before it
existed), so such records read and write back unchanged. Other tools read it: keep the
format, and add fields only as optional ones.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass, fields

from harness.releases import version_key

__all__ = [
    "BUILT_BY_READER",
    "CORPUS_LOAD_MODES",
    "KINDS",
    "LOAD_MODES",
    "OUTCOMES",
    "RAISING_OUTCOMES",
    "Record",
    "error_type_named_in",
    "merge",
    "read_records",
    "write_records",
]

# Every corpus artifact is read in each of these; payloads also with weights_only_mmap.
CORPUS_LOAD_MODES = ("weights_only", "default", "unsafe")
LOAD_MODES = CORPUS_LOAD_MODES + ("weights_only_mmap",)
OUTCOMES = ("identical", "differs", "refused", "error", "crashed", "executed", "unwritable")
# The outcomes whose records always name an exception class: something raised.
RAISING_OUTCOMES = ("refused", "error", "unwritable")
# Plain kinds, and the prefixes of kinds that name a class, a dtype or an attack.
KINDS = (
    "state_dict",
    "outputs",
    "training_checkpoint",
    "inference_package",
    "whole_model",
    "views",
    "sparse",
    "quantized",
    "cuda_tagged",
    "legacy_format",
)
_KIND_PREFIXES = ("dtype", "optimizer", "scheduler", "payload", "malformed")
# Kinds whose files each reader builds with its own torch and loads (writer == reader): the
# hostile payloads and the damaged checkpoints; they are no corpus.
BUILT_BY_READER = ("payload:", "malformed:")
# Where an environment installed its packages: the part of a message that says nothing about
# torch and differs between machines.
_SITE_PACKAGES = re.compile(r"/[^\s'\"]*/site-packages/")
# A temporary folder a reader built its files in: named at random on every run.
_TEMPORARY = re.compile(rf"{re.escape(tempfile.gettempdir())}/[^/\s'\"]+/")
_NAMED_KIND = re.compile(rf"^({'|'.join(_KIND_PREFIXES)}):[A-Za-z0-9_]+$")
_CLASS_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# The further checks of a corpus artifact (matrix.reader): an exception one of them raises is
# recorded as "<check>: <class>: <reason>".
_FURTHER_CHECKS = ("outputs", "restored")
# How messages name the exception class (matrix.reader, harness.persistence.explain_error):
# "<class>: <reason>" for a load, a write or a check that raised (after the check's name), and
# "the payload ran (<how the load ended>): <class>: <reason>" for a payload that ran and whose
# load then raised.
_NAMED_ERROR = re.compile(rf"^(?:(?:{'|'.join(_FURTHER_CHECKS)}): )?({_CLASS_NAME}): ")
_NAMED_ERROR_AFTER_PAYLOAD = re.compile(
    rf"^the payload ran \((?:refused|out_of_memory)\): ({_CLASS_NAME}): "
)


def error_type_named_in(outcome: str, message: str) -> str:
    """The exception class a record's ``message`` names for its ``outcome``, as the reader
    writes messages; empty where nothing raised (``identical``, ``differs``, ``crashed``, a
    payload that ran and loaded) or the message names no class.

    Records written before :attr:`Record.error_type` existed hold the class only in their
    message: this reads it back. The reader records exactly this for every record it writes.
    """
    if outcome in RAISING_OUTCOMES:
        found = _NAMED_ERROR.match(message)
    elif outcome == "executed":
        found = _NAMED_ERROR_AFTER_PAYLOAD.match(message)
    else:
        found = None
    return found.group(1) if found else ""


@dataclass(frozen=True)
class Record:
    """One load of one artifact.

    Attributes:
        writer: the torch version that wrote the file, as ``torch.__version__`` prints it
            without the local part; for payloads and damaged files, the version that built
            them.
        reader: the torch version that loaded it.
        artifact: the artifact's own name, e.g. ``state_dict/conv2d``.
        kind: one of :data:`KINDS`, or ``dtype:<name>``, ``optimizer:<class>``,
            ``scheduler:<class>``, ``payload:<attack class>``, ``malformed:<corruption kind>``.
        load_mode: ``weights_only``, ``default`` (a plain ``torch.load(path)``), ``unsafe``
            (``weights_only=False``) or, for payloads and damaged files on a torch that has
            ``mmap``, ``weights_only_mmap`` (``weights_only=True, mmap=True``).
        outcome: one of :data:`OUTCOMES`.
        message: the first line of the error or the first difference; empty if none. The
            folder of an environment's packages is written ``<site-packages>``, a temporary
            folder ``<tmp>``.
        error_type: the name of the class of the exception that ended the load, the write
            (``unwritable``) or a further check (``error``): set for every ``refused``,
            ``error`` and ``unwritable`` record, and for an ``executed`` one whose load then
            raised; empty for the others (a crash, a hang or a runaway allocation is the
            outcome ``crashed`` itself). ``None`` where the record was written before this
            field existed: :attr:`error_class` then reads the class from the message.
    """

    writer: str
    reader: str
    artifact: str
    kind: str
    load_mode: str
    outcome: str
    message: str = ""
    error_type: str | None = None

    def __post_init__(self) -> None:
        message = _SITE_PACKAGES.sub("<site-packages>/", self.message)
        object.__setattr__(self, "message", _TEMPORARY.sub("<tmp>/", message))
        if self.load_mode not in LOAD_MODES:
            raise ValueError(f"load_mode {self.load_mode!r} is not one of {LOAD_MODES}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {OUTCOMES}")
        if self.kind not in KINDS and not _NAMED_KIND.match(self.kind):
            raise ValueError(
                f"kind {self.kind!r} is not one of {KINDS} nor <prefix>:<name> with a prefix "
                f"from {_KIND_PREFIXES}"
            )
        if self.error_type is not None and not re.fullmatch(f"({_CLASS_NAME})?", self.error_type):
            raise ValueError(f"error_type {self.error_type!r} is not a class name")

    @property
    def error_class(self) -> str:
        """The name of the exception class that ended the load, write or check, empty where
        none did: :attr:`error_type`, or in a record written before that field existed, the
        class its message names (:func:`error_type_named_in`)."""
        if self.error_type is not None:
            return self.error_type
        return error_type_named_in(self.outcome, self.message)

    @property
    def key(self) -> tuple:
        """What identifies the record: writer, reader, artifact, load mode."""
        return (self.writer, self.reader, self.artifact, self.load_mode)

    def sort_key(self) -> tuple:
        return (version_key(self.writer), version_key(self.reader), self.artifact, self.load_mode)


# Fields a record may leave out, each with the default it then reads as.
_OPTIONAL_FIELDS = ("error_type",)


def read_records(path: str) -> list[Record]:
    """The records of a results file; ValueError naming the first bad one. A record without
    ``error_type`` (written before that field existed) reads with ``error_type=None``."""
    with open(path) as handle:
        raw = json.load(handle)
    names = {field.name for field in fields(Record)}
    required = names - set(_OPTIONAL_FIELDS)
    records = []
    for index, item in enumerate(raw):
        if not required <= set(item) <= names:
            raise ValueError(
                f"{path}: record {index} has fields {sorted(item)}, not {sorted(required)} "
                f"and optionally {list(_OPTIONAL_FIELDS)}"
            )
        records.append(Record(**item))
    return records


def _as_json(record: Record) -> dict:
    """``record``'s fields, without the optional ones it has not set."""
    return {
        name: value
        for name, value in asdict(record).items()
        if not (name in _OPTIONAL_FIELDS and value is None)
    }


def write_records(records: list[Record], path: str) -> None:
    """Write ``records`` sorted by writer, reader, artifact and load mode, one per line;
    an ``error_type`` of ``None`` is left out, so an old file reads and writes back the same."""
    ordered = sorted(records, key=Record.sort_key)
    lines = ",\n".join("  " + json.dumps(_as_json(record)) for record in ordered)
    with open(path, "w") as handle:
        handle.write(f"[\n{lines}\n]\n" if ordered else "[]\n")


def merge(parts: list[list[Record]]) -> list[Record]:
    """All records of ``parts``; ValueError if two parts hold the same key differently."""
    merged: dict[tuple, Record] = {}
    for records in parts:
        for record in records:
            known = merged.setdefault(record.key, record)
            if known != record:
                raise ValueError(
                    f"two results for {record.key}: {known.outcome} and {record.outcome}"
                )
    return sorted(merged.values(), key=Record.sort_key)
