"""Hostile payloads and corruptions refuse, when they are made, what they could not write."""

from __future__ import annotations

import pytest
from hypothesis.errors import InvalidArgument

from strategies.payloads import Corruption, HostilePayload


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("no_such_attack",), "attack='no_such_attack' must be one of .*'reduce_open'"),
        (("reduce_open", "tar"), "carrier='tar' must be one of \\['zip', 'legacy'\\]"),
        (("torchscript_archive", "legacy"), "'torchscript_archive' has no legacy carrier"),
    ],
)
def test_payloads_that_cannot_be_written_are_refused(arguments, message):
    with pytest.raises(InvalidArgument, match=message):
        HostilePayload(*arguments)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("no_such_kind",), "kind='no_such_kind' must be one of .*'empty'"),
        (("junk", -1), "index=-1 must be an int of 0 or more"),
        (("junk", 1.5), "index=1.5 must be of type int"),
        (("flip_storage", 0, 256), "mask=256 must be an int from 0 to 255"),
        (("flip_storage", 0, True), "mask=True must be an int from 0 to 255"),
    ],
)
def test_corruptions_that_cannot_be_applied_are_refused(arguments, message):
    with pytest.raises(InvalidArgument, match=message):
        Corruption(*arguments)
