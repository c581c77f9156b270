"""The capability probe's weights_only facts: independent of what was allowlisted when
they were first asked."""

from __future__ import annotations

import codecs
import io
import pickle

import pytest
import torch

from harness import capabilities


@pytest.mark.skipif(
    not hasattr(torch.serialization, "add_safe_globals"), reason="no add_safe_globals"
)
def test_a_library_allowlisting_during_the_probe_changes_no_fact():
    expected = capabilities.weights_only_loadable_types.__wrapped__()
    before = set(torch.serialization.get_safe_globals())
    # accelerate's load adds codecs.encode (protocol 2 pickles bytes through it) while it runs
    with torch.serialization.safe_globals([codecs.encode]):
        assert capabilities.weights_only_loadable_types.__wrapped__() == expected
        assert codecs.encode in torch.serialization.get_safe_globals()  # put back
    assert set(torch.serialization.get_safe_globals()) == before  # (not their order)


def test_finding_25_empty_bytes_are_refused_where_other_bytes_load():
    # protocol 2 pickles b"" as a call of builtins.bytes, other bytes through _codecs.encode
    # (the allowlist gained _codecs.encode for pytorch/pytorch#133163, not builtins.bytes).
    def loads(value):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        try:
            return torch.load(buffer, weights_only=True) == value
        except pickle.UnpicklingError:
            return False

    assert loads(b"ab") and loads(bytearray())
    assert not loads(b"")
    assert capabilities.weights_only_loads_empty_bytes() is False
