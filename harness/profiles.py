"""Hypothesis settings profiles of the harness: ``dev``, ``ci`` and ``thorough``.

``dev`` gives fast feedback, ``ci`` is derandomized and bounded so the whole suite fits in
CI's time, ``thorough`` draws many examples for nightly runs. :data:`PROFILES` holds them as
``hypothesis.settings`` objects, built on Hypothesis's ``default`` profile.

Importing this module imports nothing but the standard library: Hypothesis is imported when
a profile is first built (reading :data:`PROFILES`, :func:`register_profiles`,
:func:`load_profile`, :func:`is_registered_elsewhere`), so the pytest plugin can import it
in every test run for free.

:func:`choose_profile` is the command line's rule (an explicit name, else
``$HARNESS_PROFILE``, else ``ci`` when ``$CI`` is set, else ``dev``). The pytest plugin
uses only its first two steps: it loads a profile only when one is asked for.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypothesis import settings

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "NAMES",
    "PROFILES",
    "choose_profile",
    "is_registered_elsewhere",
    "load_profile",
    "register_profiles",
]

ENVIRONMENT_VARIABLE = "HARNESS_PROFILE"

# What each profile changes; every profile also has no deadline and prints the blob that
# reproduces a failure.
_CHANGES: dict[str, dict[str, Any]] = {
    "dev": {"max_examples": 10},
    "ci": {"max_examples": 20, "derandomize": True, "database": None},
    "thorough": {"max_examples": 500},
}
_COMMON: dict[str, Any] = {"deadline": None, "print_blob": True}

#: The harness's profile names, in the order they are listed to users.
NAMES: tuple[str, ...] = tuple(_CHANGES)

#: The harness's profiles as ``hypothesis.settings`` objects, by name (built on first use by
#: the module ``__getattr__`` below, importing Hypothesis then).
PROFILES: dict[str, settings]

# The settings object this module registered under each name, to tell the harness's
# profiles from others registered under the same name.
_registered: dict[str, settings] = {}


@functools.cache
def _profiles() -> dict[str, settings]:
    from hypothesis import settings

    # Built on Hypothesis's "default" profile, not on whatever profile is loaded (Hypothesis
    # loads its own "ci" profile when it detects CI, tox included).
    base = settings.get_profile("default")
    return {name: settings(base, **_COMMON, **changes) for name, changes in _CHANGES.items()}


def __getattr__(name: str) -> Any:
    # PROFILES is built on first use, so that importing this module does not import Hypothesis.
    if name == "PROFILES":
        return _profiles()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_profiles(names: Iterable[str] = NAMES) -> None:
    """Register the harness's profiles ``names`` (all three by default) with Hypothesis.

    Each is registered under its own name, replacing a profile of that name registered
    before: registering ``ci`` replaces Hypothesis's built-in ``ci`` profile (and, when
    that one is loaded, takes effect at once).
    """
    from hypothesis import settings

    for name in names:
        settings.register_profile(name, _profiles()[name])
        _registered[name] = settings.get_profile(name)


def load_profile(name: str) -> None:
    """Register the harness's profile ``name`` and make it Hypothesis's active profile."""
    from hypothesis import settings

    register_profiles([name])
    settings.load_profile(name)


def is_registered_elsewhere(name: str) -> bool:
    """Whether Hypothesis has a profile called ``name`` that is not the harness's: one of
    Hypothesis's own (``default``, ``ci``) or one registered by the user."""
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    try:
        registered = settings.get_profile(name)
    except InvalidArgument:
        return False
    return registered is not _registered.get(name)


def choose_profile(
    explicit: str | None = None, *, option: str = "--hypothesis-profile"
) -> tuple[str, str]:
    """Return ``(profile name, why it was chosen)`` and check that the name is the harness's.

    The name is, in order: ``explicit`` (given with the command-line option ``option``,
    which the reason names), ``$HARNESS_PROFILE``, ``ci`` when ``$CI`` is set, else
    ``dev``. Raises ``ValueError`` saying where the name came from and which names exist
    when it is not one of :data:`NAMES`.
    """
    if explicit:
        name, reason = explicit, f"chosen with {option}"
    elif os.environ.get(ENVIRONMENT_VARIABLE):
        name, reason = os.environ[ENVIRONMENT_VARIABLE], f"from ${ENVIRONMENT_VARIABLE}"
    elif os.environ.get("CI"):
        name, reason = "ci", "because $CI is set"
    else:
        name, reason = "dev", "the default outside CI"
    if name not in NAMES:
        known = ", ".join(NAMES)
        raise ValueError(f"unknown Hypothesis profile {name!r} ({reason}); use one of: {known}")
    return name, reason
