"""Strategies for the save and load options users pass to ``torch.save``/``torch.load``."""

from __future__ import annotations

import pickle

from hypothesis import event
from hypothesis import strategies as st

from harness.capabilities import probe
from harness.persistence import SaveOptions

__all__ = ["save_options"]


@st.composite
def _save_options(draw: st.DrawFn) -> SaveOptions:
    protocol = draw(st.integers(2, pickle.HIGHEST_PROTOCOL))
    legacy_format = draw(st.booleans())
    to_buffer = draw(st.booleans())
    # mmap needs a file in the zip format, and a torch.load that has the keyword.
    mmap = (
        draw(st.booleans()) if probe().load_mmap and not to_buffer and not legacy_format else False
    )
    options = SaveOptions(protocol, legacy_format, to_buffer, mmap)
    event(f"save options: {options}")
    return options


def save_options() -> st.SearchStrategy[SaveOptions]:
    """Combinations of ``torch.save``/``torch.load`` options valid for the installed torch.

    Draws the pickle protocol (2 to the highest Python has), the legacy or zip format, a
    file or an in-memory buffer, and ``mmap=True`` where torch has it and the target is a
    zip-format file. Shrinks toward torch's defaults: protocol 2, zip format, a file, no mmap.
    """
    return _save_options()
