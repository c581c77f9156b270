"""``python -m harness inspect PATH``: what a checkpoint file (or folder) is, without loading it.

:func:`inspect_checkpoint` reads a file's bytes and says its format (:data:`FILE_FORMATS`),
the torch version that wrote it where the file records one, its tensors (name, dtype, shape,
the device it was saved from, bytes, which share storage), the globals its pickles need, whether
``torch.load(weights_only=True)`` would load it on the installed torch (predicted from those
globals and checked by a real load in a forked child, :func:`harness.files.run_isolated`),
and which hostile-file classes of :mod:`strategies.payloads` and
:data:`harness.files.SAFETENSORS_ATTACKS` it matches (:data:`HOSTILE_SIGNS`).

Pickles are read by an unpickler whose every global is an inert stand-in that records its
arguments: nothing the file names is imported, and no code from the file runs. The result is
an :class:`Inspection` (data; ``to_json`` for the documented JSON of ``docs/formats.md``).
"""

from __future__ import annotations

import functools
import io
import json
import math
import mmap
import os
import pickle
import pickletools
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from harness.files import kind_of, run_isolated
from harness.pickle_scan import _python3_name, referenced_globals
from harness.sandbox import DEFAULT_MEMORY_BYTES

__all__ = [
    "FILE_FORMATS",
    "HOSTILE_SIGNS",
    "HostileSign",
    "Inspection",
    "NotACheckpoint",
    "TensorEntry",
    "WeightsOnly",
    "acceptable",
    "inspect_checkpoint",
]

#: Every format :func:`inspect_checkpoint` tells apart, with what it is.
FILE_FORMATS: dict[str, str] = {
    "torch-zip": "torch.save's zip archive (the default): data.pkl and one record per storage",
    "torch-legacy": "torch.save(_use_new_zipfile_serialization=False), or the tar archive "
    "torch wrote before 0.4",
    "torchscript": "a torch.jit.save archive (code/ and constants.pkl records)",
    "pt2": "a torch.export.save archive (archive_format 'pt2')",
    "safetensors": "a safetensors file: header length, JSON header, raw tensor data",
    "dcp": "a torch.distributed.checkpoint folder: a pickled .metadata and .distcp files",
    "pickle": "a plain pickle stream (pickle.dump)",
    "unknown": "none of these: not a checkpoint",
}

# Formats whose tensors are written by torch.save and read by torch.load.
_TORCH_LOAD_FORMATS = ("torch-zip", "torch-legacy")
_CHECK_TIMEOUT_S = 20.0
_TENSOR_BUILDERS = {
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_qtensor",
}
_WRAPPERS = {"torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"}
# Beyond this many bytes a declared storage is a bomb in a file of a few kilobytes.
_BOMB_BYTES = 2**30


class NotACheckpoint(Exception):
    """The path is not a checkpoint (missing, or no format of :data:`FILE_FORMATS`)."""


# --- reading a pickle without running it ------------------------------------------------------


class _Stand:
    """What an inert global returns: records the arguments, state and items given to it."""

    global_name = ""
    made: list[_Stand]  # every instance of the classes of one read, set by _read_pickle
    reached: set[str]  # what builtins.getattr stand-ins were asked for, set likewise

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stand:
        instance = object.__new__(cls)
        instance.args, instance.state, instance.items = args, None, []
        # NEWOBJ calls __new__ alone; REDUCE, INST and OBJ call the class (then __init__).
        instance.newobj, instance.built = True, False
        cls.made.append(instance)
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.newobj = args, False
        if self.global_name == "builtins.getattr" and len(args) == 2:
            owner = getattr(args[0], "global_name", type(args[0]).__name__)
            self.reached.add(f"{owner}.{args[1]}")

    def __call__(self, *args: Any, **kwargs: Any) -> _Stand:
        # What calling the result of a stand-in returns (getattr(...)(...)): another one.
        return type(self)(*args)

    def __setstate__(self, state: Any) -> None:
        self.state, self.built = state, True

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append((len(self.items), value))

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)


@dataclass
class _StoragePid:
    """A storage persistent id: ``('storage', type, key, location, numel, ...)``."""

    type_name: str
    key: str
    location: str
    numel: int


@dataclass
class _Read:
    """What reading one pickle found."""

    root: Any = None
    globals: set[str] = field(default_factory=set)
    storages: dict[str, _StoragePid] = field(default_factory=dict)  # the first id per key
    pids: list[_StoragePid] = field(default_factory=list)  # every storage id, in order
    reached: set[str] = field(default_factory=set)  # names looked up with builtins.getattr
    odd_persistent_ids: int = 0
    opcodes: Counter = field(default_factory=Counter)
    protocol: int = 0
    made: list[_Stand] = field(default_factory=list)
    error: str = ""


def _read_pickle(data: bytes) -> _Read:
    """Unpickle ``data`` with every global an inert :class:`_Stand` class; what it found."""
    read = _Read()
    try:
        for opcode, argument, _ in pickletools.genops(io.BytesIO(data)):
            read.opcodes[opcode.name] += 1
            if opcode.name == "PROTO":
                read.protocol = argument
            if opcode.name == "STOP":
                break
    except Exception as error:  # a damaged stream: what was read so far stands
        read.error = f"{type(error).__name__}: {error}"

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> type:
            # The names protocol 0-2 pickles use for Python 2 modules, mapped as pickle does.
            qualified = _python3_name(module, name) if read.protocol < 3 else f"{module}.{name}"
            read.globals.add(qualified)
            attributes = {"global_name": qualified, "made": read.made, "reached": read.reached}
            return type(name, (_Stand,), attributes)

        def persistent_load(self, pid: Any) -> Any:
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
                type_name = getattr(pid[1], "global_name", str(pid[1]))
                storage = _StoragePid(type_name, str(pid[2]), str(pid[3]), int(pid[4]))
                read.storages.setdefault(storage.key, storage)
                read.pids.append(storage)
                return storage
            read.odd_persistent_ids += 1
            return pid

    try:
        read.root = Unpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:
        read.error = read.error or f"{type(error).__name__}: {error}"
    return read


# --- what a file is ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """One tensor the file holds.

    Attributes:
        name: its path in the saved object (``model_state_dict.weight``).
        dtype: torch's name of its dtype (``float32``).
        shape: its shape.
        device: the device it was saved from (``cpu``, ``cuda:0``).
        bytes: the bytes its elements take.
        storage: the storage (or data range) it lies in; tensors sharing one share memory.
        shared: whether another tensor of the file shares that storage.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    device: str
    bytes: int
    storage: str
    shared: bool = False


@dataclass(frozen=True)
class WeightsOnly:
    """Whether ``torch.load(weights_only=True)`` loads the file on the installed torch.

    Attributes:
        applies: whether torch.load reads files of this format at all (for ``pt2``: the
            pickles inside the archive, which ``torch.export.load`` reads).
        predicted: from the globals alone: every one is in torch's weights-only allowlist.
        loaded: what a real load in a forked child did (True loaded, False refused); None
            where it does not apply.
        detail: the refusal's first line, or why nothing was checked.
    """

    applies: bool
    predicted: bool | None
    loaded: bool | None
    detail: str = ""


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_checkpoint` found in one file or folder.

    Attributes:
        path: the path inspected.
        format: one of :data:`FILE_FORMATS`.
        torch_version: the torch version recorded in the file, or None where it records none.
        format_version: the format's own version record, where it has one.
        tensors: every tensor found, in file order.
        globals: every ``module.name`` its pickles need, sorted.
        weights_only: see :class:`WeightsOnly`.
        hostile: the hostile classes it matches (names of :data:`HOSTILE_SIGNS`).
        notes: what could not be read, one line each.
    """

    path: str
    format: str
    torch_version: str | None
    format_version: str | None
    tensors: tuple[TensorEntry, ...]
    globals: tuple[str, ...]
    weights_only: WeightsOnly
    hostile: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The documented JSON object (``docs/formats.md``)."""
        return asdict(self)

    def table(self) -> str:
        """A human-readable summary: facts, then one line per tensor."""
        wo = self.weights_only
        if not wo.applies:
            verdict = f"does not apply ({wo.detail})"
        else:
            verdict = (
                f"predicted {'loads' if wo.predicted else 'refused'}, "
                f"checked {'loads' if wo.loaded else 'refused'}"
                + (f" ({wo.detail})" if wo.detail else "")
            )
        lines = [
            f"path:          {self.path}",
            f"format:        {self.format} ({FILE_FORMATS[self.format]})",
            f"torch version: {self.torch_version or 'not recorded'}",
            f"format record: {self.format_version or 'none'}",
            f"weights_only:  {verdict}",
            f"hostile:       {', '.join(self.hostile) or 'none matched'}",
            f"globals:       {', '.join(self.globals) or 'none'}",
        ]
        lines += [f"note:          {note}" for note in self.notes]
        lines.append(f"tensors:       {len(self.tensors)}")
        if self.tensors:
            rows = [("name", "dtype", "shape", "device", "bytes", "shared")]
            rows += [
                (
                    t.name,
                    t.dtype,
                    "x".join(map(str, t.shape)) or "()",
                    t.device,
                    str(t.bytes),
                    "yes" if t.shared else "",
                )
                for t in self.tensors
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            lines += [
                "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                for row in rows
            ]
        return "\n".join(line.rstrip() for line in lines)


@dataclass
class _Facts:
    """Everything read from a file, before it is judged."""

    format: str
    torch_version: str | None = None
    format_version: str | None = None
    pickles: list[_Read] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)  # storage key -> record bytes
    tensors: list[TensorEntry] = field(default_factory=list)
    extents: list[tuple[str, int, int]] = field(default_factory=list)  # storage, needed, has
    zip_anomalies: set[str] = field(default_factory=set)
    setstate_code: bool = False
    pt2_pickled_payloads: int = 0
    safetensors_anomalies: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def globals(self) -> set[str]:
        return set().union(*(read.globals for read in self.pickles)) if self.pickles else set()


# --- zip archives, read record by record as torch does -----------------------------------------


class _Records(dict):
    """A zip archive's records by name, the archive's top folder left out: their bytes,
    except those of stored records above :data:`_READ_LIMIT` (raw tensor data), which are
    left unread (``b""``); :attr:`sizes` has every record's size."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[str, int] = {}


# Stored records above this size hold raw tensor data: their size is enough.
_READ_LIMIT = 16 * 2**20


def _zip_records(data: bytes | mmap.mmap, facts: _Facts) -> _Records:
    """Each record by name (the last of duplicates, as torch reads), read from the local
    headers by the central directory's offsets; anomalies noted in ``facts``."""
    archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    records: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    names = Counter(info.filename for info in archive.infolist())
    if any(count > 1 for count in names.values()):
        facts.zip_anomalies.add("zip_duplicate_member")
    for info in archive.infolist():
        start = info.header_offset
        header = data[start : start + 30]
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            continue
        flags = struct.unpack("<H", header[6:8])[0]
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        local_name = data[start + 30 : start + 30 + name_length].decode("utf-8", "replace")
        if local_name != info.filename:
            facts.zip_anomalies.add("zip_header_mismatch")
        if flags & 0x1:
            facts.zip_anomalies.add("zip_encrypted_flag")
        begin = start + 30 + name_length + extra_length
        sizes[info.filename] = info.file_size
        stored = info.compress_type == zipfile.ZIP_STORED
        if stored and info.compress_size > _READ_LIMIT and data[begin : begin + 4] != b"PK\x03\x04":
            records[info.filename] = b""
            continue
        raw = data[begin : begin + info.compress_size]
        if info.compress_type == zipfile.ZIP_DEFLATED:
            raw = zlib.decompress(raw, -15)
        records[info.filename] = raw
    first = next(iter(records), "")
    prefix = first.split("/", 1)[0] + "/" if "/" in first else ""
    if not all(name.startswith(prefix) for name in records):
        prefix = ""
    stripped = _Records()
    for name, value in records.items():
        stripped[name[len(prefix) :]] = value
        stripped.sizes[name[len(prefix) :]] = sizes[name]
    return stripped


def _storage_dtype(type_name: str) -> torch.dtype | None:
    """The dtype a storage type global names (``torch.FloatStorage``), read from torch's own
    storage classes (only those: nothing else the file names is looked up)."""
    module, _, name = type_name.rpartition(".")
    if module != "torch" or not name.endswith("Storage"):
        return None
    if name == "UntypedStorage":
        return torch.uint8
    known = getattr(torch, name, None)
    if isinstance(known, type) and issubclass(known, torch.storage._LegacyStorage):
        with warnings.catch_warnings():  # TypedStorage is deprecated; its dtype is not
            warnings.simplefilter("ignore")
            return known.dtype
    return None


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _walk(value: Any, path: str, seen: set[int]) -> Iterator[tuple[str, _Stand]]:
    """Every tensor stand-in under ``value``, with its path (a tensor the pickle refers to
    twice, under both paths)."""
    if isinstance(value, _Stand) and value.global_name in _TENSOR_BUILDERS:
        yield path, value
        return
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, _Stand):
        if value.global_name in _WRAPPERS and value.args:
            yield from _walk(value.args[0], path, seen)
            return
        for key, item in value.items:
            yield from _walk(item, f"{path}.{key}" if path else str(key), seen)
        state = value.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]} if isinstance(state[0], dict) else state[1]
        if isinstance(state, dict):
            for key, item in state.items():
                yield from _walk(item, f"{path}.{key}" if path else str(key), seen)
        elif state is not None:
            yield from _walk(state, path, seen)
        for index, item in enumerate(value.args):
            yield from _walk(item, f"{path}[{index}]" if path else f"[{index}]", seen)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key), seen)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}.{index}" if path else str(index), seen)


def _tensors_of(read: _Read, facts: _Facts, prefix: str = "") -> None:
    """Add the tensors the pickle ``read`` builds to ``facts``."""
    for path, stand in _walk(read.root, prefix, set()):
        args = stand.args
        if len(args) >= 4 and isinstance(args[0], _Stand):
            args = (_storage_from_bytes(args[0], read), *args[1:])
        if len(args) < 4 or not isinstance(args[0], _StoragePid):
            continue
        storage, offset, shape, stride = args[0], args[1], args[2], args[3]
        if stand.global_name == "torch._utils._rebuild_tensor_v3" and len(args) > 6:
            dtype = None
        else:
            dtype = _storage_dtype(storage.type_name)
        shape = tuple(int(side) for side in shape) if isinstance(shape, tuple) else ()
        stride = tuple(int(step) for step in stride) if isinstance(stride, tuple) else ()
        elements = math.prod(shape)
        size = _element_size(dtype) if dtype is not None else 1
        facts.tensors.append(
            TensorEntry(
                path or "(root)",
                str(dtype).removeprefix("torch.") if dtype is not None else storage.type_name,
                shape,
                storage.location,
                elements * size,
                f"{prefix}storage {storage.key}",
            )
        )
        if elements:
            steps = zip(shape, stride, strict=False)
            needed = int(offset) + sum((side - 1) * step for side, step in steps) + 1
            facts.extents.append((storage.key, needed, storage.numel))
        if stand.items:
            facts.notes.append(f"the pickle sets items on the tensor {path or '(root)'}")
            facts.zip_anomalies.add("setitem_on_tensor")


def _storage_from_bytes(stand: _Stand, read: _Read) -> _StoragePid | None:
    """The storage ``torch.storage._load_from_bytes`` (how ``pickle.dump`` of a tensor
    carries its storage: a nested torch.save archive) would build, read from its bytes."""
    if stand.global_name != "torch.storage._load_from_bytes" or not stand.args:
        return None
    data = stand.args[0]
    if not isinstance(data, bytes):
        return None
    try:
        if data[:4] == b"PK\x03\x04":
            records = _zip_records(data, _Facts("torch-zip"))
            inner = _read_pickle(records.get("data.pkl", b""))
        else:
            inner = _read_pickle(_legacy_main_pickle(data))
    except Exception:  # not a torch.save of a storage: no tensor to list
        return None
    read.globals |= inner.globals
    if not isinstance(inner.root, _StoragePid):
        return None
    storage = inner.root
    storage.key = f"{id(stand)}/{storage.key}"
    return storage


def _shared(tensors: list[TensorEntry]) -> list[TensorEntry]:
    counts = Counter(tensor.storage for tensor in tensors)
    return [
        TensorEntry(**{**asdict(tensor), "shared": counts[tensor.storage] > 1})
        for tensor in tensors
    ]


def _read_torch_zip(records: _Records, facts: _Facts) -> None:
    version = records.get("version", b"").decode(errors="replace").strip()
    if version:
        facts.format_version = f"version {version}, .format_version " + records.get(
            ".format_version", b"-"
        ).decode(errors="replace")
    pickle_name = "data.pkl"
    if pickle_name not in records:
        facts.notes.append("no data.pkl record")
        return
    read = _read_pickle(records[pickle_name])
    facts.pickles.append(read)
    for key, storage in read.storages.items():
        size = records.sizes.get(f"data/{key}")
        if size is not None:
            dtype = _storage_dtype(storage.type_name)
            facts.records[key] = size // (_element_size(dtype) if dtype else 1)
    _tensors_of(read, facts)


def _read_torchscript(records: dict[str, bytes], facts: _Facts) -> None:
    facts.format_version = (
        records.get(".data/version", records.get("version", b"")).decode(errors="replace").strip()
    )
    producer = records.get("extra/producer_info.json") or records.get(".data/producer_info")
    if producer:
        facts.torch_version = producer.decode(errors="replace").strip()
    facts.setstate_code = any(
        name.startswith("code/") and b"__setstate__" in value for name, value in records.items()
    )
    for name in ("data.pkl", "constants.pkl"):
        if name in records:
            read = _read_pickle(records[name])
            facts.pickles.append(read)
            _tensors_of(read, facts, "" if name == "data.pkl" else "constants.")


def _read_pt2(records: dict[str, bytes], facts: _Facts) -> None:
    facts.format_version = records.get("archive_version", b"").decode(errors="replace").strip()
    for name, value in records.items():
        if name.startswith("models/") and name.endswith(".json"):
            try:
                program = json.loads(value)
            except (ValueError, UnicodeDecodeError):
                continue
            schema = program.get("schema_version") or {}
            if schema:
                facts.format_version += f" (schema {schema.get('major')}.{schema.get('minor')})"
            facts.torch_version = program.get("torch_version") or facts.torch_version
        if name.endswith("_config.json"):
            _read_pt2_config(name, value, records, facts)
        elif name.endswith(".pt") or "/weights/" in name or "/constants/" in name:
            if value[:4] == b"PK\x03\x04":
                inner = _Facts("torch-zip")
                inner_records = _zip_records(value, inner)
                _read_torch_zip(inner_records, inner)
                facts.pickles += inner.pickles
                facts.zip_anomalies |= inner.zip_anomalies


_PT2_DTYPES = {
    1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64,
    6: torch.float16, 7: torch.float32, 8: torch.float64, 9: torch.complex32,
    10: torch.complex64, 11: torch.complex128, 12: torch.bool, 13: torch.bfloat16,
}  # fmt: skip


def _read_pt2_config(name: str, value: bytes, records: dict[str, bytes], facts: _Facts) -> None:
    """The tensors a pt2 weights or constants config lists."""
    try:
        config = json.loads(value).get("config", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        return
    folder = name.rsplit("/", 1)[0]
    for fqn, entry in config.items():
        if entry.get("use_pickle"):
            facts.pt2_pickled_payloads += 1
        meta = entry.get("tensor_meta") or {}
        if not meta:
            continue
        dtype = _PT2_DTYPES.get(meta.get("dtype"))
        shape = tuple(side.get("as_int", 0) for side in meta.get("sizes", ()))
        device = meta.get("device") or {}
        where = device.get("type", "cpu") + (
            f":{device['index']}" if device.get("index") is not None else ""
        )
        size = _element_size(dtype) if dtype is not None else 1
        facts.tensors.append(
            TensorEntry(
                fqn,
                str(dtype).removeprefix("torch.") if dtype else str(meta.get("dtype")),
                shape,
                where,
                math.prod(shape) * size,
                f"{folder}/{entry.get('path_name')}",
            )
        )


def _legacy_main_pickle(data: bytes | mmap.mmap) -> bytes:
    """The legacy format's object pickle: after the magic number, protocol and system info,
    up to its end (the raw storages after it are not read)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    stream.seek(0)
    for _ in range(3):
        for _ in pickletools.genops(stream):
            pass
    start = stream.tell()
    for _ in pickletools.genops(stream):
        pass
    return data[start : stream.tell()]


def _read_legacy(data: bytes | mmap.mmap, facts: _Facts) -> None:
    read = _read_pickle(_legacy_main_pickle(data))
    facts.pickles.append(read)
    _tensors_of(read, facts)


def _read_tar(path: str, facts: _Facts) -> None:
    facts.format_version = "tar (before torch 0.4)"
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            if member.name == "pickle" and member.isfile():
                handle = archive.extractfile(member)
                if handle is not None:
                    facts.pickles.append(_read_pickle(handle.read()))
                facts.zip_anomalies.add("legacy_tar")


def _read_safetensors(data: bytes | mmap.mmap, facts: _Facts) -> None:
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        facts.safetensors_anomalies.add("safetensors_huge_header")
        facts.notes.append(f"the header declares {length} bytes; the file has {len(data)}")
        return
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__", None) or {}
    facts.torch_version = metadata.get("torch_version") or metadata.get("pytorch_version")
    facts.format_version = metadata.get("format")
    available = len(data) - 8 - length
    spans = []
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
             "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
             "BOOL": "bool", "U16": "uint16", "U32": "uint32", "U64": "uint64",
             "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
             "F8_E8M0": "float8_e8m0fnu"}  # fmt: skip
    for name, entry in header.items():
        start, end = (int(offset) for offset in entry["data_offsets"])
        dtype_name = names.get(entry["dtype"], entry["dtype"])
        dtype = getattr(torch, dtype_name, None)
        size = _element_size(dtype) if isinstance(dtype, torch.dtype) else 1
        shape = tuple(int(side) for side in entry["shape"])
        if math.prod(shape) * size != end - start:
            facts.safetensors_anomalies.add("safetensors_shape_past_offsets")
        if end > available:
            facts.safetensors_anomalies.add("safetensors_offsets_past_end")
        spans.append((start, end))
        facts.tensors.append(
            TensorEntry(name, dtype_name, shape, "cpu", end - start, f"bytes {start}-{end}")
        )
    spans.sort()
    if any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)):
        facts.safetensors_anomalies.add("safetensors_overlapping_offsets")
    # safetensors keeps no aliasing: a tensor's data range is its own unless they overlap.
    counts = Counter(span for span in spans)
    facts.tensors = [
        TensorEntry(**{**asdict(t), "shared": counts[_span(t)] > 1}) for t in facts.tensors
    ]


def _span(tensor: TensorEntry) -> tuple[int, int]:
    start, end = tensor.storage.removeprefix("bytes ").split("-")
    return int(start), int(end)


def _read_dcp(folder: str, facts: _Facts) -> None:
    with open(os.path.join(folder, ".metadata"), "rb") as file:
        read = _read_pickle(file.read())
    facts.pickles.append(read)
    root = read.root
    state = root.state if isinstance(root, _Stand) else None
    if isinstance(state, tuple) and len(state) == 2:
        state = state[1] if isinstance(state[1], dict) else state[0]
    tensors = state.get("state_dict_metadata", {}) if isinstance(state, dict) else {}
    for name, meta in getattr(tensors, "items", lambda: [])():
        fields = _stand_fields(meta)
        if "size" not in fields:
            continue
        size = fields["size"]
        shape = tuple(size.args[0]) if isinstance(size, _Stand) and size.args else ()
        properties = fields.get("properties")
        # TensorProperties pickles its fields as a tuple, dtype first (or as a dict).
        state = getattr(properties, "state", None)
        if isinstance(state, tuple) and state and not isinstance(state[0], dict | None):
            dtype_stand = state[0]
        else:
            dtype_stand = _stand_fields(properties).get("dtype")
        dtype_name = getattr(dtype_stand, "global_name", "unknown").removeprefix("torch.")
        dtype = getattr(torch, dtype_name, None)
        element = _element_size(dtype) if isinstance(dtype, torch.dtype) else 1
        facts.tensors.append(
            TensorEntry(
                str(name), dtype_name, shape, "cpu", math.prod(shape) * element, f"dcp {name}"
            )
        )


def _stand_fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, _Stand):
        return {}
    state = value.state
    if isinstance(state, tuple) and len(state) == 2:
        merged = {}
        for part in state:
            if isinstance(part, dict):
                merged.update(part)
        return merged
    return state if isinstance(state, dict) else {}


def _facts(path: str) -> _Facts:
    """Read what the file or folder at ``path`` is; raises :class:`NotACheckpoint`."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, ".metadata")):
            facts = _Facts("dcp")
            _read_dcp(path, facts)
            return facts
        raise NotACheckpoint(f"{path} is a folder without a .metadata file: not a DCP checkpoint")
    if not os.path.isfile(path):
        raise NotACheckpoint(f"{path} does not exist")
    with open(path, "rb") as file:
        if os.path.getsize(path) == 0:
            raise NotACheckpoint(f"{path} is empty: not a checkpoint")
        # Mapped, not read: only the records that describe the content are copied.
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _mapped_facts(path, data)


def _mapped_facts(path: str, data: mmap.mmap) -> _Facts:
    if data[:4] == b"PK\x03\x04":
        facts = _Facts("torch-zip")
        try:
            records = _zip_records(data, facts)
        except (zipfile.BadZipFile, ValueError, OSError) as error:
            raise NotACheckpoint(f"{path} is a damaged zip archive: {error}") from error
        if records.get("archive_format", b"").strip() == b"pt2":
            facts.format = "pt2"
            _read_pt2(records, facts)
        elif any(name.startswith("code/") for name in records) or "constants.pkl" in records:
            facts.format = "torchscript"
            _read_torchscript(records, facts)
        elif "data.pkl" in records:
            _read_torch_zip(records, facts)
        else:
            raise NotACheckpoint(f"{path} is a zip archive of no checkpoint format")
        return facts
    kind = kind_of(path).name
    if kind == "legacy_torch":
        facts = _Facts("torch-legacy")
        _read_legacy(data, facts)
    elif kind == "safetensors" or (len(data) > 9 and data[8:9] == b"{"):
        facts = _Facts("safetensors")
        try:
            _read_safetensors(data, facts)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise NotACheckpoint(f"{path} has an unreadable safetensors header: {error}") from error
    elif kind == "plain_pickle":
        facts = _Facts("pickle")
        read = _read_pickle(data[:])
        facts.pickles.append(read)
        _tensors_of(read, facts)
    elif tarfile.is_tarfile(path):
        facts = _Facts("torch-legacy")
        _read_tar(path, facts)
    else:
        raise NotACheckpoint(f"{path} is not a checkpoint: no format of {list(FILE_FORMATS)[:-1]}")
    return facts


# --- hostile classes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileSign:
    """What shows that a file is of one hostile class, registered once in
    :data:`HOSTILE_SIGNS`.

    Attributes:
        name: the hostile class (a name in :data:`strategies.payloads.HOSTILE_CLASSES` or of
            :data:`harness.files.SAFETENSORS_ATTACKS`).
        sign: what is looked for, in words.
        matches: ``matches(facts)``: whether the file shows it.
    """

    name: str
    sign: str
    matches: Callable[[_Facts], bool]


def _named(*names: str) -> Callable[[_Facts], bool]:
    return lambda facts: bool(facts.globals & set(names))


def _prefixed(prefix: str) -> Callable[[_Facts], bool]:
    return lambda facts: any(name.startswith(prefix) for name in facts.globals)


def _opcode(name: str) -> Callable[[_Facts], bool]:
    return lambda facts: any(read.opcodes[name] for read in facts.pickles)


def _stack_global_below_4(facts: _Facts) -> bool:
    return any(read.opcodes["STACK_GLOBAL"] and read.protocol < 4 for read in facts.pickles)


def _newobj_outside_torch(facts: _Facts) -> bool:
    # TorchScript's own classes (__torch__.) are the torchscript_archive sign's concern.
    allowed = _allowed_globals()
    return any(
        stand.newobj
        and stand.built
        and not stand.global_name.startswith(("torch.", "__torch__."))
        and stand.global_name not in allowed
        for read in facts.pickles
        for stand in read.made
    )


def _record_short(facts: _Facts) -> bool:
    return any(
        facts.records.get(pid.key, pid.numel) < pid.numel
        for read in facts.pickles
        for pid in read.pids
    )


def _storage_bomb(facts: _Facts) -> bool:
    for read in facts.pickles:
        for storage in read.pids:
            dtype = _storage_dtype(storage.type_name)
            size = _element_size(dtype) if dtype is not None else 1
            if storage.numel * size > _BOMB_BYTES:
                return True
    return False


def _shape_bomb(facts: _Facts) -> bool:
    return any(needed > has for _, needed, has in facts.extents)


def _allocating(facts: _Facts) -> bool:
    reached = set().union(*(read.reached for read in facts.pickles)) | facts.globals
    return any(
        name.startswith("torch.") and name.rsplit(".", 1)[-1] in ("zeros", "ones", "empty", "full")
        for name in reached
    )


def _numpy_object(facts: _Facts) -> bool:
    def objects(value: Any, seen: set[int]) -> bool:
        if id(value) in seen:
            return False
        seen.add(id(value))
        if isinstance(value, _Stand):
            if value.global_name.endswith("numpy.dtype") and value.args:
                first = value.args[0]
                if isinstance(first, str) and first.startswith("O"):
                    return True
            parts = [*value.args, value.state, *(item for _, item in value.items)]
            return any(objects(part, seen) for part in parts)
        if isinstance(value, dict):
            return any(objects(item, seen) for item in value.values())
        if isinstance(value, list | tuple):
            return any(objects(item, seen) for item in value)
        return False

    return any(objects(read.root, set()) for read in facts.pickles)


#: Every hostile class :func:`inspect_checkpoint` recognises, with its sign.
HOSTILE_SIGNS: tuple[HostileSign, ...] = (
    HostileSign("reduce_open", "the global builtins.open", _named("builtins.open", "io.open")),
    HostileSign("reduce_eval", "the global builtins.eval", _named("builtins.eval")),
    HostileSign("reduce_exec", "the global builtins.exec", _named("builtins.exec")),
    HostileSign(
        "reduce_os_system", "the global os.system", _named("os.system", "posix.system", "nt.system")
    ),
    HostileSign("reduce_subprocess", "a global of subprocess", _prefixed("subprocess.")),
    HostileSign("reduce_runpy_run_path", "a global of runpy", _prefixed("runpy.")),
    HostileSign(
        "reduce_import_module",
        "importlib.import_module or builtins.__import__",
        _named("importlib.import_module", "builtins.__import__"),
    ),
    HostileSign(
        "getattr_chain", "builtins.getattr or operator.getitem", _named("builtins.getattr")
    ),
    HostileSign(
        "stack_global",
        "the STACK_GLOBAL opcode in a stream below protocol 4",
        _stack_global_below_4,
    ),  # fmt: skip
    HostileSign("inst_os_system", "the INST opcode", _opcode("INST")),
    HostileSign("obj_exec", "the OBJ opcode", _opcode("OBJ")),
    HostileSign(
        "newobj_build_setstate",
        "NEWOBJ and BUILD on a class outside torch and its weights-only allowlist",
        _newobj_outside_torch,
    ),
    HostileSign(
        "persistent_id",
        "a persistent id that is not a storage",
        lambda facts: any(read.odd_persistent_ids for read in facts.pickles),
    ),
    HostileSign(
        "nested_torch_load",
        "torch.load or functools.partial",
        _named("torch.load", "torch.serialization.load", "functools.partial"),
    ),
    HostileSign("numpy_object_array", "a numpy dtype of objects ('O')", _numpy_object),
    HostileSign(
        "torchscript_archive",
        "a TorchScript archive whose code defines __setstate__ (run as it loads)",
        lambda facts: facts.setstate_code,
    ),
    HostileSign(
        "zip_duplicate_member",
        "two zip records of one name",
        lambda facts: "zip_duplicate_member" in facts.zip_anomalies,
    ),
    HostileSign(
        "zip_header_mismatch",
        "a local header naming another record than the central directory",
        lambda facts: "zip_header_mismatch" in facts.zip_anomalies,
    ),
    HostileSign(
        "zip_encrypted_flag",
        'a local header with the "encrypted" flag',
        lambda facts: "zip_encrypted_flag" in facts.zip_anomalies,
    ),
    HostileSign(
        "legacy_tar",
        "a tar archive with a pickle member",
        lambda facts: "legacy_tar" in facts.zip_anomalies,
    ),
    HostileSign(
        "setitem_on_tensor",
        "the pickle setting items on a tensor",
        lambda facts: "setitem_on_tensor" in facts.zip_anomalies,
    ),
    HostileSign(
        "storage_record_short",
        "a storage declaring more elements than its record holds",
        _record_short,
    ),
    HostileSign(
        "setitem_out_of_bounds",
        "both: items set on a tensor over a short storage record",
        lambda facts: "setitem_on_tensor" in facts.zip_anomalies and _record_short(facts),
    ),
    HostileSign(
        "zeros_bomb",
        "torch's zeros, ones, empty or full, named or looked up with getattr",
        _allocating,
    ),
    HostileSign(
        "storage_size_bomb", f"a storage declaring more than {_BOMB_BYTES} bytes", _storage_bomb
    ),
    HostileSign("tensor_shape_bomb", "a tensor reaching past the end of its storage", _shape_bomb),
    *(
        HostileSign(
            name,
            description,
            lambda facts, name=name: name in facts.safetensors_anomalies,
        )
        for name, description in (
            ("safetensors_huge_header", "a header length past the end of the file"),
            ("safetensors_offsets_past_end", "data offsets past the end of the data"),
            ("safetensors_overlapping_offsets", "two tensors' data offsets overlapping"),
            ("safetensors_shape_past_offsets", "a shape other than its data offsets hold"),
        )
    ),
)


# --- weights_only -------------------------------------------------------------------------------


@functools.cache
def _allowed_globals() -> frozenset[str]:
    """The globals ``torch.load(weights_only=True)`` accepts on the installed torch: its
    built-in allowlist and what the user added with ``add_safe_globals``."""
    from torch import _weights_only_unpickler

    names = set(_weights_only_unpickler._get_allowed_globals())
    for entry in torch.serialization.get_safe_globals():
        value = entry[0] if isinstance(entry, tuple) else entry
        names.add(f"{value.__module__}.{value.__qualname__}")
    return frozenset(names)


def _weights_only_load(path: str) -> None:
    torch.load(path, map_location="cpu", weights_only=True)


def _pt2_inner_load(path: str) -> None:
    """``torch.load(weights_only=True)`` of every pickled record inside a ``.pt2`` archive."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            if data[:4] == b"PK\x03\x04":
                torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _weights_only(path: str, facts: _Facts) -> WeightsOnly:
    if facts.format in ("safetensors", "dcp"):
        why = {
            "safetensors": "safetensors holds no pickle; its loader runs no code",
            "dcp": "DCP reads .metadata with pickle.load, not torch.load",
        }[facts.format]
        return WeightsOnly(False, None, None, why)
    if facts.format == "pickle":
        return WeightsOnly(True, False, _checked(path, _weights_only_load)[0], "not a torch file")
    unknown = sorted(facts.globals - _allowed_globals())
    predicted = not unknown and not any(
        read.opcodes["INST"] or read.opcodes["OBJ"] or read.odd_persistent_ids
        for read in facts.pickles
    )
    if facts.format == "torchscript":
        predicted = False  # torch.load hands TorchScript archives to torch.jit.load, refused
    if facts.format == "pt2":
        predicted = predicted and not facts.pt2_pickled_payloads
        loaded, detail = _checked(path, _pt2_inner_load)
        if facts.pt2_pickled_payloads:
            loaded, detail = False, "torch.export.load reads use_pickle weights unrestricted"
        return WeightsOnly(True, predicted, loaded, detail)
    loaded, detail = _checked(path, _weights_only_load)
    if unknown and not detail:
        detail = f"globals outside the allowlist: {', '.join(unknown)}"
    return WeightsOnly(True, predicted, loaded, detail)


def _checked(path: str, load: Callable[[str], None]) -> tuple[bool, str]:
    """Whether ``load(path)`` returns in a forked child, and the refusal's line if not. The
    child may map twice the file's size beyond the sandbox's default, and gets a second per
    50 MB, so that a large checkpoint is not mistaken for a bomb."""
    size = os.path.getsize(path)
    isolated = run_isolated(
        functools.partial(load, path),
        timeout=_CHECK_TIMEOUT_S + size / 50e6,
        memory_bytes=DEFAULT_MEMORY_BYTES + 2 * size,
    )
    if isolated.outcome == "returned":
        return True, ""
    return False, f"{isolated.outcome}: {isolated.error}"


def inspect_checkpoint(path: str | os.PathLike, *, check: bool = True) -> Inspection:
    """What the checkpoint at ``path`` (a file, or a DCP folder) is (:class:`Inspection`).

    Nothing in the file is run: its pickles are read with inert stand-ins for every global.
    With ``check`` (the default) the weights-only verdict is also checked by a real
    ``torch.load(weights_only=True)`` in a forked child. Raises :class:`NotACheckpoint` for
    a path that is no checkpoint of :data:`FILE_FORMATS`.
    """
    path = os.fspath(path)
    facts = _facts(path)
    if facts.format in _TORCH_LOAD_FORMATS and os.path.isfile(path):
        try:
            # The project's own reader of the pickle's globals, beside the stand-ins' record.
            facts.pickles[0].globals |= referenced_globals(path)
        except Exception as error:  # a damaged or hand-written archive
            facts.notes.append(f"pickle_scan could not read it: {type(error).__name__}")
    facts.tensors = _shared(facts.tensors) if facts.format != "safetensors" else facts.tensors
    errors = [read.error for read in facts.pickles if read.error]
    notes = facts.notes + [f"pickle read stopped: {error}" for error in errors[:1]]
    if check:
        weights_only = _weights_only(path, facts)
    else:
        weights_only = WeightsOnly(facts.format not in ("safetensors", "dcp"), None, None)
    return Inspection(
        path=path,
        format=facts.format,
        torch_version=facts.torch_version,
        format_version=facts.format_version or None,
        tensors=tuple(facts.tensors),
        globals=tuple(sorted(facts.globals)),
        weights_only=weights_only,
        hostile=tuple(sign.name for sign in HOSTILE_SIGNS if sign.matches(facts)),
        notes=tuple(dict.fromkeys(notes)),
    )


# --- the command -------------------------------------------------------------------------------


def acceptable(inspection: Inspection) -> bool:
    """Whether the inspected checkpoint is fit to load untrusted: ``weights_only=True`` loads
    it on the installed torch (predicted and checked) and it matches no hostile class (a
    DCP folder never is: its ``.metadata`` is read with ``pickle.load``)."""
    wo = inspection.weights_only
    if inspection.hostile:
        return False
    if inspection.format == "dcp":
        return False  # its .metadata is read with pickle.load
    return not wo.applies or bool(wo.loaded and wo.predicted)
