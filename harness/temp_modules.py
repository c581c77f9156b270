"""Python modules written to a temporary directory, imported, then changed under the importer.

A whole-model pickle refers to its class by module and name; checking what happens when that
code is refactored needs a real module that can be rewritten, renamed or deleted between
``torch.save`` and ``torch.load``. :func:`temporary_module` is the one way the harness
writes such a module.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

__all__ = ["TemporaryModule", "temporary_module"]

_serial = itertools.count()


class TemporaryModule:
    """A module importable under :attr:`name` while its :func:`temporary_module` is open."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.py"

    def load(self) -> ModuleType:
        """Import the module as its file is now (forgetting any earlier import)."""
        self._forget()
        return importlib.import_module(self.name)

    def rewrite(self, source: str) -> None:
        """Replace the module's source; the next import sees the new code."""
        self.path.write_text(source)
        self._forget()

    def rename(self, new_name: str) -> None:
        """Move the module to ``new_name``: the old import path no longer exists."""
        old_path = self.path
        self._forget()
        self.name = new_name
        old_path.rename(self.path)

    def delete(self) -> None:
        """Delete the module's file: importing it fails from now on."""
        self.path.unlink()
        self._forget()

    def _forget(self) -> None:
        sys.modules.pop(self.name, None)
        # Bytecode is cached by source mtime and size: a rewrite within the same second that
        # keeps the size (e.g. renaming "layers" to "blocks") would import the old code.
        Path(importlib.util.cache_from_source(str(self.path))).unlink(missing_ok=True)
        importlib.invalidate_caches()


@contextlib.contextmanager
def temporary_module(source: str, prefix: str = "harness_generated") -> Iterator[TemporaryModule]:
    """Write ``source`` as a uniquely named module on ``sys.path``; remove all trace on exit."""
    with tempfile.TemporaryDirectory() as directory:
        module = TemporaryModule(Path(directory), f"{prefix}_{next(_serial)}")
        module.path.write_text(source)
        sys.path.insert(0, directory)
        try:
            yield module
        finally:
            sys.path.remove(directory)
            module._forget()
