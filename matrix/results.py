"""The matrix's results: one :class:`Record` per (writer, reader, artifact, load mode).

``matrix/results.json`` is a list of records as JSON objects with exactly the fields of
:class:`Record`. Other tools read it: keep the format.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass, fields

from matrix.versions import version_key

__all__ = [
    "BUILT_BY_READER",
    "CORPUS_LOAD_MODES",
    "KINDS",
    "LOAD_MODES",
    "OUTCOMES",
    "Record",
    "merge",
    "read_records",
    "write_records",
]

# Every corpus artifact is read in each of these; payloads also with weights_only_mmap.
CORPUS_LOAD_MODES = ("weights_only", "default", "unsafe")
LOAD_MODES = CORPUS_LOAD_MODES + ("weights_only_mmap",)
OUTCOMES = ("identical", "differs", "refused", "error", "crashed", "executed", "unwritable")
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
    """

    writer: str
    reader: str
    artifact: str
    kind: str
    load_mode: str
    outcome: str
    message: str = ""

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

    @property
    def key(self) -> tuple:
        """What identifies the record: writer, reader, artifact, load mode."""
        return (self.writer, self.reader, self.artifact, self.load_mode)

    def sort_key(self) -> tuple:
        return (version_key(self.writer), version_key(self.reader), self.artifact, self.load_mode)


def read_records(path: str) -> list[Record]:
    """The records of a results file; ValueError naming the first bad one."""
    with open(path) as handle:
        raw = json.load(handle)
    names = {field.name for field in fields(Record)}
    records = []
    for index, item in enumerate(raw):
        if set(item) != names:
            raise ValueError(
                f"{path}: record {index} has fields {sorted(item)}, not {sorted(names)}"
            )
        records.append(Record(**item))
    return records


def write_records(records: list[Record], path: str) -> None:
    """Write ``records`` sorted by writer, reader, artifact and load mode, one per line."""
    ordered = sorted(records, key=Record.sort_key)
    lines = ",\n".join("  " + json.dumps(asdict(record)) for record in ordered)
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
