"""A package's public names, each imported from its module on first use (PEP 562).

``harness`` and ``strategies`` both export names this way, so that importing either package
imports neither torch nor Hypothesis. This module sits below both: it imports only the
standard library, and not even :mod:`typing`, whose import would cost more than the rest of
``import strategies``.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing is what this module avoids.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["lazy_attributes"]


def lazy_attributes(
    namespace: dict[str, object], modules: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose ``globals()`` is ``namespace``.

    ``modules`` maps each public name to the module that defines it. Looking up one of them
    imports that module and stores the value in ``namespace``, so later lookups do not come
    back here; any other name raises :class:`AttributeError`. ``__dir__`` lists the names
    already in the package and those of its ``__all__``.

    Use it as ``__getattr__, __dir__ = lazy_attributes(globals(), _MODULES)``.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> object:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
