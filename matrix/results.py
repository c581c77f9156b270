"""The matrix's results: one :class:`Record` per (writer, reader, artifact, load mode).

``matrix/results.json`` is a list of records as JSON objects with the fields of
:class:`Record`; ``error_type`` is left out where it is ``None`` (records written before it
existed), so such records read and write back unchanged. Other tools read it: keep the
format, and add fields only as optional ones.

This module, like :mod:`matrix.render`, runs without torch (the matrix's merge job has
none): what it knows of the artifact kinds is :data:`KIND_FACTS`, read from
``matrix/kinds.json``, which ``python -m matrix kinds`` writes from the records of
:data:`matrix.corpus.ARTIFACT_KINDS`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, fields

from harness.releases import version_key

__all__ = [
    "BUILT_BY_READER",
    "CORPUS_LOAD_MODES",
    "KINDS",
    "KIND_FACTS",
    "KIND_TABLE",
    "LOAD_MODES",
    "OUTCOMES",
    "RAISING_OUTCOMES",
    "KindFacts",
    "Record",
    "error_type_named_in",
    "kind_facts",
    "merge",
    "read_records",
    "write_records",
]

# Every torch.save artifact of a corpus is read in each of these; payloads also with
# weights_only_mmap; a kind with its own reader in the load modes its record names
# (LOAD_MODES, below, holds them all).
CORPUS_LOAD_MODES = ("weights_only", "default", "unsafe")
OUTCOMES = ("identical", "differs", "refused", "error", "crashed", "executed", "unwritable")
# The outcomes whose records always name an exception class: something raised.
RAISING_OUTCOMES = ("refused", "error", "unwritable")


@dataclass(frozen=True)
class KindFacts:
    """What the tools that run without torch know of an artifact kind: the part of its
    :class:`matrix.corpus.ArtifactKind` record they use.

    Attributes:
        name: the kind, or for a named kind the prefix of ``<name>:<item>``.
        named: what the item of a named kind names (``class``, ``dtype``, ...); empty for
            a plain kind.
        panel: the panel of the grid it is drawn in.
        outcomes: what a load of it can end as, of :data:`OUTCOMES`.
        refusal_promised: a refusal under ``weights_only=True`` is the promise kept.
        built_by_reader: each reader builds its files with its own torch (no corpus).
        check: the name of the reader's check after the description; empty if none. The
            message of an exception the check raised starts with ``<check>: ``.
        load_modes: what its records' ``load_mode`` can be.
    """

    name: str
    named: str
    panel: str
    outcomes: tuple[str, ...]
    refusal_promised: bool
    built_by_reader: bool
    check: str
    load_modes: tuple[str, ...]

    @property
    def spelled(self) -> str:
        """The kind as people read it: ``views``, ``optimizer:<class>``."""
        return f"{self.name}:<{self.named}>" if self.named else self.name


#: Where the facts of every kind are kept, generated from matrix.corpus.ARTIFACT_KINDS.
KIND_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kinds.json")


def _read_kind_table() -> tuple[KindFacts, ...]:
    with open(KIND_TABLE) as handle:
        return tuple(
            KindFacts(
                **{
                    **item,
                    "outcomes": tuple(item["outcomes"]),
                    "load_modes": tuple(item["load_modes"]),
                }
            )
            for item in json.load(handle)
        )


#: The facts of every artifact kind, in the order a corpus is written.
KIND_FACTS = _read_kind_table()
_FACTS_BY_NAME = {facts.name: facts for facts in KIND_FACTS}
#: Every load mode of a record: the three of torch.load, weights_only_mmap, and those of the
#: kinds with readers of their own (``load_file``, ``jit_load``, ...).
LOAD_MODES = tuple(
    dict.fromkeys(
        (*CORPUS_LOAD_MODES, "weights_only_mmap", *(m for f in KIND_FACTS for m in f.load_modes))
    )
)
# Plain kinds, and the prefixes of kinds that name a class, a dtype or an attack.
KINDS = tuple(facts.name for facts in KIND_FACTS if not facts.named)
_KIND_PREFIXES = tuple(facts.name for facts in KIND_FACTS if facts.named)
# Kinds whose files each reader builds with its own torch and loads (writer == reader): the
# hostile payloads and the damaged checkpoints; they are no corpus.
BUILT_BY_READER = tuple(f"{facts.name}:" for facts in KIND_FACTS if facts.built_by_reader)
# Where an environment installed its packages: the part of a message that says nothing about
# torch and differs between machines.
_SITE_PACKAGES = re.compile(r"/[^\s'\"]*/site-packages/")
# A temporary folder a reader built its files in: named at random on every run.
_TEMPORARY = re.compile(rf"{re.escape(tempfile.gettempdir())}/[^/\s'\"]+/")
_ITEM = re.compile(r"[A-Za-z0-9_]+")
_CLASS_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# The further checks of a corpus artifact (matrix.reader): an exception one of them raises is
# recorded as "<check>: <class>: <reason>".
_FURTHER_CHECKS = tuple(dict.fromkeys(facts.check for facts in KIND_FACTS if facts.check))
# How messages name the exception class (matrix.reader, harness.persistence.explain_error):
# "<class>: <reason>" for a load, a write or a check that raised (after the check's name), and
# "the payload ran (<how the load ended>): <class>: <reason>" for a payload that ran and whose
# load then raised.
_NAMED_ERROR = re.compile(rf"^(?:(?:{'|'.join(_FURTHER_CHECKS)}): )?({_CLASS_NAME}): ")
_NAMED_ERROR_AFTER_PAYLOAD = re.compile(
    rf"^the payload ran \((?:refused|out_of_memory)\): ({_CLASS_NAME}): "
)


def kind_facts(kind: str) -> KindFacts:
    """The facts of a record's ``kind``: a plain kind (``views``) or ``<prefix>:<item>``
    (``optimizer:Adam``); ValueError for any other."""
    name, colon, item = kind.partition(":")
    facts = _FACTS_BY_NAME.get(name)
    if facts is None or bool(colon) != bool(facts.named) or (colon and not _ITEM.fullmatch(item)):
        raise ValueError(
            f"kind {kind!r} is not one of {KINDS} nor <prefix>:<name> with a prefix "
            f"from {_KIND_PREFIXES}"
        )
    return facts


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
        kind: a kind of :data:`KIND_FACTS`: one of :data:`KINDS`, or ``<prefix>:<item>``
            (``dtype:<name>``, ``optimizer:<class>``, ``scheduler:<class>``,
            ``payload:<attack class>``, ``malformed:<corruption kind>``).
        load_mode: ``weights_only``, ``default`` (a plain ``torch.load(path)``), ``unsafe``
            (``weights_only=False``) or, for payloads and damaged files on a torch that has
            ``mmap``, ``weights_only_mmap`` (``weights_only=True, mmap=True``); for a kind
            with a reader of its own, one of its record's load modes (``load_file``,
            ``jit_load``, ``export_load``, ...): one of :data:`LOAD_MODES`.
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
        kind_facts(self.kind)  # ValueError for a kind outside the vocabulary
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
