"""The capability probe's weights_only facts do not depend on what was allowlisted when
they were first asked."""

from __future__ import annotations

import codecs

import pytest
import torch

from harness import capabilities


@pytest.mark.skipif(
    not hasattr(torch.serialization, "add_safe_globals"), reason="no add_safe_globals"
)
def test_a_library_allowlisting_during_the_probe_changes_no_fact():
    expected = capabilities.weights_only_loadable_types.__wrapped__()
    before = torch.serialization.get_safe_globals()
    # accelerate's load adds codecs.encode (protocol 2 pickles bytes through it) while it runs
    with torch.serialization.safe_globals([codecs.encode]):
        assert capabilities.weights_only_loadable_types.__wrapped__() == expected
        assert codecs.encode in torch.serialization.get_safe_globals()  # put back
    assert torch.serialization.get_safe_globals() == before
