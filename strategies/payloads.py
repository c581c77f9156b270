"""Strategies for hostile checkpoints: files whose unpickling would run code.

Every payload's only effect, should a loader run it, is to create a sentinel file at a path
the caller chooses; nothing is destructive and nothing touches the network. A payload is
plain data (:class:`HostilePayload`, an attack class name) and writes a real torch zip
checkpoint that otherwise looks like a training checkpoint.
"""

from __future__ import annotations

import builtins
import os
import subprocess
from dataclasses import dataclass

import torch
from hypothesis import event
from hypothesis import strategies as st

__all__ = ["ATTACK_CLASSES", "HostilePayload", "hostile_payloads"]


class _Call:
    """Pickles as a call of ``function(*arguments)``: what a crafted ``__reduce__`` does."""

    def __init__(self, function, *arguments):
        self.function = function
        self.arguments = arguments

    def __reduce__(self):
        return self.function, self.arguments


def _creates(sentinel: str) -> str:
    return f"open({sentinel!r}, 'w').close()"


# Simplest first. Each entry builds the object whose unpickling creates the sentinel.
_ATTACKS = {
    "reduce_open": lambda sentinel: _Call(builtins.open, sentinel, "w"),
    "reduce_eval": lambda sentinel: _Call(builtins.eval, _creates(sentinel)),
    "reduce_exec": lambda sentinel: _Call(builtins.exec, _creates(sentinel)),
    "reduce_os_system": lambda sentinel: _Call(os.system, f"touch '{sentinel}'"),
    "reduce_subprocess": lambda sentinel: _Call(subprocess.call, ["touch", sentinel]),
}
ATTACK_CLASSES = tuple(_ATTACKS)


@dataclass(frozen=True)
class HostilePayload:
    """One attack class; :meth:`write` puts it inside a checkpoint."""

    attack: str

    def write(self, path: str | os.PathLike, sentinel: str | os.PathLike) -> None:
        """Write a torch checkpoint at ``path`` whose unpickling creates ``sentinel``."""
        payload = _ATTACKS[self.attack](os.fspath(sentinel))
        checkpoint = {
            "epoch": 1,
            "model_state_dict": {"weight": torch.zeros(2, 2)},
            "model_config": payload,
        }
        torch.save(checkpoint, path)


def hostile_payloads() -> st.SearchStrategy[HostilePayload]:
    """Hostile checkpoints, one attack class each, simplest (a ``__reduce__`` to ``open``) first."""
    return st.sampled_from(ATTACK_CLASSES).map(HostilePayload).map(_record)


def _record(payload: HostilePayload) -> HostilePayload:
    event(f"attack: {payload.attack}")
    return payload
