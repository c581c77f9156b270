"""Checkpointers written with real libraries, the way each library's documentation shows.

Each class saves and loads a :class:`harness.TrainingState` with one library's own API, and
does nothing to work around what the library does: ``tests/test_real_libraries.py`` runs
:func:`harness.check_checkpointer` on each and asserts the verdict per invariant, so that a
fix upstream or a regression shows as a failing test. Where a library has no place for a
part of the state (the extra entries, the global RNG state), the adapter puts it where the
library's documentation puts "whatever else you have", and says so.

- :class:`SafetensorsInference`: ``safetensors.torch.save_model``/``load_model``, the extra
  entries as JSON in the file's text metadata; one file, no pickle.
- :class:`SafetensorsResume`: the weights as above, the optimizer, scheduler, RNG state and
  extra entries in a ``torch.save`` file beside them, loaded with ``weights_only=True``.
- :class:`DistributedCheckpoint`: ``torch.distributed.checkpoint`` in one process,
  ``get_state_dict``/``set_state_dict`` inside a ``Stateful`` application state, ``dcp.save``
  and ``dcp.load`` to a folder at ``path``.
- :class:`FabricCheckpoint`: Lightning Fabric's ``fabric.save(path, state)`` and
  ``fabric.load(path, state)`` on the CPU, one device.
- :class:`AccelerateCheckpoint`: accelerate's ``Accelerator.save_state(dir)`` and
  ``load_state(dir)`` on the CPU, the model and optimizer prepared, the scheduler and the
  extra entries registered with ``register_for_checkpointing``.
- :class:`TorchScriptInference`: ``torch.jit.script``, ``torch.jit.save`` with the extra
  entries as an extra file, ``torch.jit.load``; the loaded ScriptModule is the model.

The module is plain Python, not a test module. Each library is imported where it is used,
so that the module imports without any of them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from harness import distributed
from harness.state import TrainingState, global_rng_state, set_global_rng_state

__all__ = [
    "AccelerateCheckpoint",
    "DistributedCheckpoint",
    "FabricCheckpoint",
    "SafetensorsInference",
    "SafetensorsResume",
    "TorchScriptInference",
]

_EXTRA_KEY = "extra.json"


def _parts(state: TrainingState) -> dict[str, Any]:
    """The parts of a training state besides the model and the optimizer that have a
    ``state_dict`` and a ``load_state_dict``, by name, those that are not None."""
    parts = {"scheduler": state.scheduler, "scaler": state.scaler, "data": state.data}
    return {name: part for name, part in parts.items() if part is not None}


def _state_dicts(state: TrainingState) -> dict[str, Any]:
    return {name: part.state_dict() for name, part in _parts(state).items()}


def _device(map_location: Any) -> str:
    """The one device ``map_location`` names, for libraries that take a device, not a
    mapping (safetensors, accelerate): ``"cpu"`` unless it is a string or a device."""
    if isinstance(map_location, str | torch.device):
        return str(map_location)
    return "cpu"


# ---------------------------------------------------------------------------------------
# safetensors


class SafetensorsInference:
    """``safetensors.torch.save_model`` at ``path``, ``load_model`` into the fresh model.

    ``save_model`` drops the duplicate names of tied weights and ``load_model`` ties them
    again (safetensors' "torch shared tensors" guide). The extra entries (model
    configuration, preprocessing statistics, class names) go into the file's text metadata
    as one JSON string; loading reads them with ``safe_open(...).metadata()`` and puts the
    model in eval mode.
    """

    def save(self, state: TrainingState, path: str) -> None:
        from safetensors.torch import save_model

        metadata = {"format": "pt", _EXTRA_KEY: json.dumps(state.extra)}
        save_model(state.model, path, metadata=metadata)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_model

        load_model(into.model, path, strict=True, device=_device(map_location))
        with safe_open(path, framework="pt") as handle:
            into.extra.update(json.loads(handle.metadata()[_EXTRA_KEY]))
        into.model.eval()


class SafetensorsResume:
    """The weights with ``save_model`` as ``<stem>.safetensors``, the rest with ``torch.save``
    at ``path``: the usual split of published training checkpoints.

    The torch file holds the ``state_dict()`` of the optimizer, the scheduler, the gradient
    scaler and the data stream, the global RNG states (torch's, Python's and numpy's, as
    :func:`harness.state.global_rng_state` gives them) and the extra entries, and is loaded
    with ``weights_only=True`` and ``map_location``; each part is restored with its
    ``load_state_dict``, as the documentation of each says.
    """

    @staticmethod
    def weights_path(path: str) -> str:
        stem, _ = os.path.splitext(path)
        return f"{stem}.safetensors"

    def save(self, state: TrainingState, path: str) -> None:
        from safetensors.torch import save_model

        save_model(state.model, self.weights_path(path), metadata={"format": "pt"})
        torch.save(
            {
                **_state_dicts(state),
                "optimizer": state.optimizer.state_dict(),
                "rng": global_rng_state(),
                "extra": dict(state.extra),
            },
            path,
        )

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        from safetensors.torch import load_model

        load_model(into.model, self.weights_path(path), device=_device(map_location))
        training = torch.load(path, map_location=map_location, weights_only=True)
        into.optimizer.load_state_dict(training["optimizer"])
        for name, part in _parts(into).items():
            part.load_state_dict(training[name])
        set_global_rng_state(training["rng"])
        into.extra.update(training["extra"])


# ---------------------------------------------------------------------------------------
# torch.distributed.checkpoint


# DCP's documented recipe is the harness's own reference (harness.DistributedCheckpoint):
# get_state_dict/set_state_dict in a Stateful, dcp.save/dcp.load to a folder. Without a
# process group DCP saves and loads in the calling process (and warns that it assumes so).
DistributedCheckpoint = distributed.DistributedCheckpoint


# ---------------------------------------------------------------------------------------
# Lightning Fabric


def _fabric() -> Any:
    from lightning_fabric import Fabric

    return Fabric(accelerator="cpu", devices=1)


class FabricCheckpoint:
    """``fabric.save(path, state)`` and ``fabric.load(path, state)`` with a state dictionary
    of the model, the optimizer, the other parts that have a ``state_dict`` (scheduler,
    gradient scaler, data stream) and "whatever metadata you have" (Fabric's checkpoint
    guide): here the extra entries and the global RNG states, which Fabric does not save by
    itself.

    ``fabric.load`` restores the objects with a ``state_dict`` in place and replaces the
    other entries of the dictionary with the saved values. It reads the file with
    ``torch.load`` at torch's default ``weights_only`` and maps every storage to the CPU.
    """

    def save(self, state: TrainingState, path: str) -> None:
        checkpoint = {"model": state.model, "optimizer": state.optimizer, **_parts(state)}
        checkpoint.update(extra=dict(state.extra), rng=global_rng_state())
        _fabric().save(path, checkpoint)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        checkpoint = {"model": into.model, "optimizer": into.optimizer, **_parts(into)}
        checkpoint.update(extra={}, rng=None)
        _fabric().load(path, checkpoint)
        into.extra.update(checkpoint["extra"])
        set_global_rng_state(checkpoint["rng"])


# ---------------------------------------------------------------------------------------
# accelerate


class _Entries:
    """The extra entries as an object with ``state_dict`` and ``load_state_dict``, which is
    what ``Accelerator.register_for_checkpointing`` takes."""

    def __init__(self, entries: dict[str, Any]) -> None:
        self.entries = entries

    def state_dict(self) -> dict[str, Any]:
        return dict(self.entries)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.entries.update(state_dict)


class AccelerateCheckpoint:
    """``Accelerator(cpu=True)``; ``prepare(model, optimizer)``; the scheduler, the gradient
    scaler, the data stream and the extra entries registered with
    ``register_for_checkpointing``; ``save_state(path)`` and ``load_state(path)``, ``path``
    being the folder (accelerate's checkpointing guide).

    accelerate writes ``model.safetensors``, ``optimizer.bin``, ``random_states_0.pkl``
    (Python's, numpy's and torch's RNG states and its step counter) and one
    ``custom_checkpoint_<i>.pkl`` per registered object. A fresh ``Accelerator`` is made for
    each call, as a new process would. It is made with ``device_placement=False``: in a
    training script ``prepare`` comes before the first step, and here it comes after them;
    with device placement, preparing an optimizer that already has state loads its own
    state_dict back into it, which casts that state (docs/real-libraries.md), so the save
    itself would change the live state. On the CPU nothing else differs.
    """

    @staticmethod
    def _accelerator(state: TrainingState) -> Any:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True, device_placement=False)
        accelerator.prepare(state.model, state.optimizer)
        accelerator.register_for_checkpointing(*_parts(state).values(), _Entries(state.extra))
        return accelerator

    def save(self, state: TrainingState, path: str) -> None:
        self._accelerator(state).save_state(path)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        self._accelerator(into).load_state(path, map_location=_device(map_location))


# ---------------------------------------------------------------------------------------
# TorchScript


class TorchScriptInference:
    """``torch.jit.save(torch.jit.script(model), path, _extra_files=...)`` and
    ``torch.jit.load(path, map_location=..., _extra_files=...)``.

    What TorchScript hands back is a ScriptModule, not the class the model was built
    from, so ``load`` puts it in ``into.model``: the harness then checks the scripted model's
    state and outputs against the original's. The extra entries travel as a JSON extra
    file in the archive.
    """

    def save(self, state: TrainingState, path: str) -> None:
        scripted = torch.jit.script(state.model)
        torch.jit.save(scripted, path, _extra_files={_EXTRA_KEY: json.dumps(state.extra)})

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        files = {_EXTRA_KEY: ""}
        into.model = torch.jit.load(path, map_location=map_location, _extra_files=files)
        into.model.eval()
        into.extra.update(json.loads(files[_EXTRA_KEY]))
