"""Hypothesis settings profiles: ``dev``, ``ci`` and ``thorough``.

``dev`` gives fast feedback, ``ci`` is derandomized and bounded so the whole suite fits in
CI's time, ``thorough`` draws many examples for nightly runs. A profile is chosen by, in
order: pytest's ``--hypothesis-profile`` option, the ``HARNESS_PROFILE`` environment
variable, ``ci`` when the ``CI`` environment variable is set, else ``dev``.
"""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis.errors import InvalidArgument

__all__ = ["ENVIRONMENT_VARIABLE", "PROFILES", "choose_profile", "register_profiles"]

ENVIRONMENT_VARIABLE = "HARNESS_PROFILE"

# Built on Hypothesis's "default" profile, not on whatever profile is loaded at import
# (Hypothesis loads its own "ci" profile when it detects CI, tox included).
_BASE = settings.get_profile("default")

PROFILES: dict[str, settings] = {
    "dev": settings(_BASE, max_examples=10, deadline=None, print_blob=True),
    "ci": settings(
        _BASE,
        max_examples=20,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
    ),
    "thorough": settings(_BASE, max_examples=500, deadline=None, print_blob=True),
}


def register_profiles() -> None:
    """Register the three profiles with Hypothesis (overriding Hypothesis's own ``ci``)."""
    for name, profile in PROFILES.items():
        settings.register_profile(name, profile)


def choose_profile(explicit: str | None = None) -> tuple[str, str]:
    """Return ``(profile name, why it was chosen)`` and check that the name exists."""
    if explicit:
        name, reason = explicit, "chosen with --hypothesis-profile"
    elif os.environ.get(ENVIRONMENT_VARIABLE):
        name, reason = os.environ[ENVIRONMENT_VARIABLE], f"from ${ENVIRONMENT_VARIABLE}"
    elif os.environ.get("CI"):
        name, reason = "ci", "because $CI is set"
    else:
        name, reason = "dev", "the default outside CI"
    try:
        settings.get_profile(name)
    except InvalidArgument:
        known = ", ".join(PROFILES)
        message = f"unknown Hypothesis profile {name!r} ({reason}); use one of: {known}"
        raise ValueError(message) from None
    return name, reason
