"""Reference checkpointers: the common practices for saving, written out so they pass.

:class:`TrainingCheckpoint` is the full training checkpoint (model, optimizer, scheduler,
gradient scaler, position in the data stream, epoch, loss and the other counters, and the
states of torch's, Python's and numpy's global RNGs); :class:`InferencePackage` is the lean
package for deployment (state_dict, model configuration, preprocessing statistics, class
names, metadata, and a JSON sidecar). Both load with ``weights_only=True`` and honour
``map_location``. They are what :func:`harness.check_checkpointer` is measured against, and
a starting point for your own.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import torch

from harness.state import TrainingState, global_rng_state, set_global_rng_state

__all__ = ["InferencePackage", "TrainingCheckpoint"]

_STATE_KEYS = (
    "model_state_dict",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "scaler_state_dict",
    "data_state_dict",
    "rng_state",
    "python_rng_state",
    "numpy_rng_state",
    "torch_version",
)


class TrainingCheckpoint:
    """A checkpoint to resume training from: everything training state holds.

    The file is a dictionary with ``model_state_dict``, ``optimizer_state_dict``,
    ``scheduler_state_dict`` (when there is a scheduler), ``scaler_state_dict`` (when there
    is a GradScaler), ``data_state_dict`` (the data stream's position, when there is one),
    the global RNG states of :func:`harness.state.global_rng_state` (torch's CPU
    ``rng_state``, ``python_rng_state``, ``numpy_rng_state``: tensors and ints, not numpy
    arrays, so the file loads with ``weights_only=True``), the torch version, and every entry
    of ``state.extra`` (epoch, loss, ...) at the top level.
    """

    def save(self, state: TrainingState, path: str) -> None:
        clashing = sorted(set(state.extra) & set(_STATE_KEYS))
        if clashing:
            raise ValueError(f"extra entries {clashing} clash with the checkpoint's own keys")
        checkpoint: dict[str, Any] = dict(state.extra)
        checkpoint["model_state_dict"] = state.model.state_dict()
        if state.optimizer is not None:
            checkpoint["optimizer_state_dict"] = state.optimizer.state_dict()
        if state.scheduler is not None:
            checkpoint["scheduler_state_dict"] = state.scheduler.state_dict()
        # Without the scaler's state a resumed run starts again from the initial loss scale
        # (huggingface/transformers#11663); without the data position it sees other batches
        # than the uninterrupted run would (huggingface/accelerate#2016).
        if state.scaler is not None:
            checkpoint["scaler_state_dict"] = state.scaler.state_dict()
        if state.data is not None:
            checkpoint["data_state_dict"] = state.data.state_dict()
        # Dropout, random augmentations and other random draws continue exactly only from
        # the same RNG states.
        rng = global_rng_state()
        checkpoint["rng_state"] = rng["torch"]
        checkpoint["python_rng_state"] = rng["python"]
        checkpoint["numpy_rng_state"] = rng["numpy"]
        checkpoint["torch_version"] = str(torch.__version__)
        torch.save(checkpoint, path)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        into.model.load_state_dict(checkpoint["model_state_dict"])
        if into.optimizer is not None:
            into.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
            _restore_saved_dtypes(into.optimizer, checkpoint["optimizer_state_dict"])
        if into.scheduler is not None:
            into.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        if into.scaler is not None:
            into.scaler.load_state_dict(checkpoint["scaler_state_dict"])
        if into.data is not None:
            into.data.load_state_dict(checkpoint["data_state_dict"])
        set_global_rng_state(
            {
                "torch": checkpoint["rng_state"],
                "python": checkpoint["python_rng_state"],
                "numpy": checkpoint["numpy_rng_state"],
            }
        )
        into.extra.update({k: v for k, v in checkpoint.items() if k not in _STATE_KEYS})
        into.model.train()


def _dtypes(value: Any) -> list[torch.dtype]:
    if isinstance(value, torch.Tensor):
        return [value.dtype]
    if isinstance(value, list | tuple):
        return [dtype for item in value for dtype in _dtypes(item)]
    return []


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _restore_saved_dtypes(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Undo ``Optimizer.load_state_dict``'s cast of state tensors to the parameter's dtype.

    It casts every floating-point state tensor but ``step`` to the dtype of its parameter,
    yet ASGD (``eta``, ``mu``), NAdam (``mu_product``) and LBFGS keep some state in float32
    whatever the parameters are: with float64 or bfloat16 parameters the cast changes the
    numbers, and training no longer resumes exactly. The saved dtypes are put back here.
    """
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in saved["state"].items():
        parameter = parameters[index]
        loaded = optimizer.state[parameter]
        for key, value in state.items():
            if _dtypes(value) != _dtypes(loaded.get(key)):
                loaded[key] = _to_device(value, parameter.device)


class InferencePackage:
    """A package to deploy a model for inference, plus a JSON metadata sidecar.

    The file holds ``model_state_dict`` and ``state.extra`` (model configuration,
    preprocessing statistics, class names, ...) under ``"extra"``, with ``metadata`` (torch
    version, time saved). The same metadata and the extra entries that JSON can hold are
    written beside it as ``<path>.json``, for people and tools that do not load torch.
    """

    def save(self, state: TrainingState, path: str) -> None:
        metadata = {
            "torch_version": str(torch.__version__),
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        package = {
            "model_state_dict": state.model.state_dict(),
            "extra": dict(state.extra),
            "metadata": metadata,
        }
        torch.save(package, path)
        sidecar = {"metadata": metadata, **_json_safe(state.extra)}
        with open(f"{path}.json", "w") as handle:
            json.dump(sidecar, handle, indent=2)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        package = torch.load(path, map_location=map_location, weights_only=True)
        into.model.load_state_dict(package["model_state_dict"])
        into.model.eval()
        into.extra.update(package["extra"])


def _json_safe(extra: dict[str, Any]) -> dict[str, Any]:
    safe = {}
    for key, value in extra.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        safe[key] = value
    return safe
