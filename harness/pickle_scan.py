"""Reading which globals a checkpoint's pickle refers to, without unpickling it.

The harness uses this as its own, independent answer to "what would loading this file
import?", to check torch's ``weights_only`` loader and its
``get_unsafe_globals_in_checkpoint`` against it.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickletools
import zipfile

__all__ = ["checkpoint_pickle", "referenced_globals"]

_STRING_PUSHES = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_MEMO_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}
_MEMO_GETS = {"BINGET", "LONG_BINGET", "GET"}


def checkpoint_pickle(source: str | os.PathLike | bytes) -> bytes:
    """The pickle that holds a checkpoint's object.

    In the zip format that is the ``data.pkl`` record; in the legacy format, the fourth
    pickle of the file (after the magic number, the protocol version and system info).
    """
    if isinstance(source, bytes):
        data = source
    else:
        with open(source, "rb") as handle:
            data = handle.read()
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                if name.endswith("data.pkl"):
                    return archive.read(name)
        raise ValueError("zip archive without a data.pkl record: not a torch checkpoint")
    stream = io.BytesIO(data)
    for _ in range(3):
        for _ in pickletools.genops(stream):
            pass
    return data[stream.tell() :]


def _python3_name(module: str, name: str) -> str:
    """The name unpickling really imports: Python 2 names are mapped as pickle does."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def referenced_globals(source: str | os.PathLike | bytes) -> set[str]:
    """Every ``module.name`` global that the checkpoint's pickle refers to.

    Follows ``GLOBAL`` and ``INST`` (name in the opcode) and ``STACK_GLOBAL`` (module and
    name pushed as strings before it, possibly through the memo). For a legacy-format file
    only the first pickle (the one holding the object) is read.
    """
    found: set[str] = set()
    memo: dict[int, str | None] = {}
    recent_strings: list[str | None] = []
    for opcode, argument, _ in pickletools.genops(checkpoint_pickle(source)):
        name = opcode.name
        value: str | None = None
        if name in ("GLOBAL", "INST"):
            module, _, attribute = argument.partition(" ")
            found.add(_python3_name(module, attribute))
        elif name == "STACK_GLOBAL":
            found.add(_python3_name(recent_strings[-2], recent_strings[-1]))
        elif name in _STRING_PUSHES:
            value = argument if isinstance(argument, str) else argument.decode("latin-1")
        elif name in _MEMO_GETS:
            value = memo.get(argument)
        if name in _MEMO_PUTS:
            memo[argument] = recent_strings[-1] if recent_strings else None
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = recent_strings[-1] if recent_strings else None
            continue
        recent_strings = (recent_strings + [value])[-2:]
    return found
