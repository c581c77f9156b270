"""Checking the arguments of the public strategy functions: one place, one wording."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from hypothesis.errors import InvalidArgument

__all__ = ["check_bool", "check_choice", "check_names", "check_type", "collection_argument"]


def check_type(
    value: object, expected: type | tuple[type, ...], *, name: str, example: str
) -> None:
    """``value`` is an instance of ``expected``; else :class:`InvalidArgument` saying so,
    with an example of what fits."""
    if not isinstance(value, expected):
        kinds = expected if isinstance(expected, tuple) else (expected,)
        names = " or ".join(kind.__name__ for kind in kinds)
        raise InvalidArgument(f"{name}={value!r} must be of type {names}, e.g. {name}={example}")


def check_bool(value: object, *, name: str) -> None:
    """``value`` is True or False."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r} must be True or False")


def check_choice(value: object, choices: Collection[object], *, name: str) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise InvalidArgument(f"{name}={value!r} must be one of {list(choices)!r}")


def collection_argument(
    argument: object, *, name: str, item_type: type, example: str
) -> tuple | None:
    """``argument`` as a tuple of ``item_type`` values, or None when it is None.

    A bare string (or a single item) is refused, since iterating it would be a mistake.
    """
    if argument is None:
        return None
    if isinstance(argument, str | bytes | item_type) or not isinstance(argument, Iterable):
        raise InvalidArgument(
            f"{name}={argument!r} must be None or a collection of {item_type.__name__} "
            f"values, e.g. {name}={example}"
        )
    values = tuple(argument)
    for value in values:
        if not isinstance(value, item_type):
            raise InvalidArgument(f"{name} holds {value!r}, which is not a {item_type.__name__}")
    return values


def check_names(
    chosen: tuple[str, ...], *, name: str, known: Collection[str], available: Collection[str]
) -> None:
    """Every chosen name is known and available on the installed torch, and there is one."""
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise InvalidArgument(f"{name} names {unknown!r}; the known names are {sorted(known)!r}")
    missing = sorted(set(chosen) - set(available))
    if missing:
        raise InvalidArgument(
            f"{name}={list(chosen)!r} names {missing!r}, which the installed torch does not "
            f"have; it has {sorted(available)!r}"
        )
    if not chosen:
        raise InvalidArgument(f"{name}=[] leaves nothing to draw; pass None for all of them")
