"""Hostile payloads and corruptions refuse, when they are made, what they could not write;
every attack class is registered once and writes a file in each of its carriers."""

from __future__ import annotations

import tarfile

import pytest
from hypothesis.errors import InvalidArgument

from strategies.payloads import (
    ATTACK_GROUPS,
    ATTACK_REGISTRY,
    HOSTILE_CLASSES,
    Corruption,
    HostilePayload,
    attack,
)


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


def test_each_attack_class_is_registered_once_in_its_group():
    names = [record.name for record in ATTACK_REGISTRY]
    assert len(set(names)) == len(names) and tuple(names) == HOSTILE_CLASSES
    groups = [record.group for record in ATTACK_REGISTRY]
    assert groups == sorted(groups, key=ATTACK_GROUPS.index), "groups are contiguous, in order"
    for record in ATTACK_REGISTRY:
        assert attack(record.name) is record and record.description and record.harm
        assert record.creates_sentinel == (record.group == "code")
        assert not record.corrupts_memory or record.group == "memory"
    with pytest.raises(InvalidArgument, match="attack='no_such_attack' must be one of"):
        attack("no_such_attack")


@pytest.mark.parametrize(
    "payload",
    [HostilePayload(r.name, carrier) for r in ATTACK_REGISTRY for carrier in r.carriers],
    ids=lambda payload: payload.name,
)
def test_every_class_writes_a_file_in_each_of_its_carriers(payload, tmp_path):
    path, sentinel = tmp_path / "payload.pt", tmp_path / "sentinel"
    payload.write(path, sentinel)
    # Only the legacy carrier (a stream of pickles) and the pre-0.4 tar archive are not zip
    # archives; writing never runs the payload.
    zipped = payload.carrier == "zip" and payload.attack != "legacy_tar"
    assert (path.read_bytes()[:4] == b"PK\x03\x04") == zipped
    assert tarfile.is_tarfile(path) == (payload.attack == "legacy_tar")
    assert not sentinel.exists()
