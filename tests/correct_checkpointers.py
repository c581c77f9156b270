"""Correct checkpointers, written the ways people write them, for the false-alarm proof.

Each class here restores everything a :class:`harness.TrainingState` holds exactly, so
:func:`harness.check_checkpointer` must find nothing wrong with any of them: a failure
reported for one of these is either a defect of the class (fix it here) or a false alarm of
the harness. They differ from :class:`harness.TrainingCheckpoint` and from each other in
layout (one file or several, nested or flat), in serialization (``torch.save`` to a path or
to memory, pickle protocol 2, memory-mapped loading, safetensors, JSON) and in how they
undo the one thing torch's own API loses on the way back: ``Optimizer.load_state_dict``
casts every floating-point state tensor but ``step`` to its parameter's dtype
(pytorch/pytorch#43706), which changes state that an optimizer keeps in float32 beside
float64 or bfloat16 parameters (ASGD's ``eta`` and ``mu``, NAdam's ``mu_product``, LBFGS's
flat buffers). Each class puts the saved dtypes back in its own way.

Training checkpointers also restore the gradient scaler and the position in the data
stream where the state has them, and the global RNG states (torch's CPU generator, Python's
``random``, numpy's global ``RandomState``), so that dropout and random augmentations draw
the same numbers after resuming as they would have without the interruption. Each keeps
numpy's state in a form ``weights_only=True`` loads (no numpy array), its own way.

The module is plain Python, not a test module: ``tests/test_no_false_alarms.py`` checks
every class in :data:`RESUME_CHECKPOINTERS` and :data:`INFERENCE_CHECKPOINTERS`.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy
import torch

from harness.state import TrainingState

__all__ = [
    "INFERENCE_CHECKPOINTERS",
    "RESUME_CHECKPOINTERS",
    "DeploymentBundle",
    "FileSetCheckpointer",
    "InMemoryBytesCheckpointer",
    "NestedProtocol2Checkpointer",
    "SafetensorsWeightsCheckpointer",
]


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's parameters in the order its state_dict numbers them."""
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


def _on_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (also inside lists and tuples) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(_on_device(item, device) for item in value)
    return value


# ---------------------------------------------------------------------------------------
# (a) A folder-style file set: one file per component, as trainer frameworks lay them out.


class FileSetCheckpointer:
    """One file per component, the layout of trainer frameworks' checkpoint folders.

    ``path`` holds the model's state_dict; beside it ``<stem>.optimizer.pt``,
    ``<stem>.scheduler.pt``, ``<stem>.scaler.pt``, ``<stem>.data.pt`` (the data stream's
    position), ``<stem>.trainer_state.pt`` (the extra entries) and ``<stem>.rng_state.pt``
    (the torch CPU, Python and numpy RNG states; numpy's in its dict form, the key as a list
    of ints). Every file is loaded with ``weights_only=True``; the RNG file without
    ``map_location``, as such code usually does, since RNG states are CPU tensors wherever
    the run was.

    The optimizer is restored with ``load_state_dict``, and then every state entry is
    replaced by the one in the file (moved to its parameter's device): the file, not the
    dtype cast, says what the state is.
    """

    @staticmethod
    def _files(path: str) -> dict[str, str]:
        stem, _ = os.path.splitext(path)
        names = ("optimizer", "scheduler", "scaler", "data", "trainer_state", "rng_state")
        return {"model": path, **{name: f"{stem}.{name}.pt" for name in names}}

    def save(self, state: TrainingState, path: str) -> None:
        files = self._files(path)
        torch.save(state.model.state_dict(), files["model"])
        if state.optimizer is not None:
            torch.save(state.optimizer.state_dict(), files["optimizer"])
        if state.scheduler is not None:
            torch.save(state.scheduler.state_dict(), files["scheduler"])
        if state.scaler is not None:
            torch.save(state.scaler.state_dict(), files["scaler"])
        if state.data is not None:
            torch.save(state.data.state_dict(), files["data"])
        torch.save(dict(state.extra), files["trainer_state"])
        numpy_state = numpy.random.get_state(legacy=False)
        numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
        rng = {
            "torch_cpu": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": numpy_state,
        }
        torch.save(rng, files["rng_state"])

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        files = self._files(path)
        weights = torch.load(files["model"], map_location=map_location, weights_only=True)
        into.model.load_state_dict(weights)
        if into.optimizer is not None:
            saved = torch.load(files["optimizer"], map_location=map_location, weights_only=True)
            into.optimizer.load_state_dict(saved)
            parameters = _parameters(into.optimizer)
            for index, entries in saved["state"].items():
                parameter = parameters[index]
                restored = into.optimizer.state[parameter]
                for key, value in entries.items():
                    restored[key] = _on_device(value, parameter.device)
        if into.scheduler is not None:
            saved = torch.load(files["scheduler"], map_location=map_location, weights_only=True)
            into.scheduler.load_state_dict(saved)
        if into.scaler is not None:
            into.scaler.load_state_dict(torch.load(files["scaler"], weights_only=True))
        if into.data is not None:
            saved = torch.load(files["data"], map_location=map_location, weights_only=True)
            into.data.load_state_dict(saved)
        into.extra.update(torch.load(files["trainer_state"], weights_only=True))
        rng = torch.load(files["rng_state"], weights_only=True)
        torch.set_rng_state(rng["torch_cpu"])
        random.setstate(rng["python"])
        numpy_state = rng["numpy"]
        numpy_state["state"]["key"] = numpy.array(numpy_state["state"]["key"], dtype=numpy.uint32)
        numpy.random.set_state(numpy_state)


# ---------------------------------------------------------------------------------------
# (b) One file of nested dictionaries, pickle protocol 2, memory-mapped on load.

_LOAD_TAKES_MMAP = "mmap" in inspect.signature(torch.load).parameters


def _walk_tensors(saved: Any, loaded: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs of tensors at the same place in ``saved`` and ``loaded`` (lists, tuples)."""
    if isinstance(saved, torch.Tensor) and isinstance(loaded, torch.Tensor):
        yield saved, loaded
    elif isinstance(saved, list | tuple) and isinstance(loaded, list | tuple):
        for left, right in zip(saved, loaded, strict=False):
            yield from _walk_tensors(left, right)


class NestedProtocol2Checkpointer:
    """A single file of nested dictionaries, written with ``pickle_protocol=2``.

    The layout groups the components the way hand-written research code does::

        {"format": 1,
         "model": {"state_dict": ...},
         "training": {"optimizer": ..., "scheduler": ... or None,
                      "scaler": ... or None, "data": ... or None},
         "random": {"torch": <CPU RNG state>, "python": (version, [ints], gauss),
                    "numpy": ("MT19937", <key as int64 tensor>, pos, has_gauss, gauss)},
         "meta": {"extra": {...}, "torch": "<version>"}}

    It is loaded with ``weights_only=True`` and, where the installed torch has it,
    ``mmap=True``, so tensors are read from the file as they are used. After
    ``Optimizer.load_state_dict`` every state tensor whose dtype the cast changed is put
    back from the file, tensor by tensor (inside lists too).
    """

    def save(self, state: TrainingState, path: str) -> None:
        checkpoint = {
            "format": 1,
            "model": {"state_dict": state.model.state_dict()},
            "training": {
                "optimizer": None if state.optimizer is None else state.optimizer.state_dict(),
                "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
                "scaler": None if state.scaler is None else state.scaler.state_dict(),
                "data": None if state.data is None else state.data.state_dict(),
            },
            "random": {
                "torch": torch.get_rng_state(),
                "python": self._python_rng(),
                "numpy": self._numpy_rng(),
            },
            "meta": {"extra": dict(state.extra), "torch": str(torch.__version__)},
        }
        torch.save(checkpoint, path, pickle_protocol=2)

    @staticmethod
    def _python_rng() -> tuple[int, list[int], float | None]:
        version, internal, gauss = random.getstate()
        return version, list(internal), gauss

    @staticmethod
    def _numpy_rng() -> tuple[str, torch.Tensor, int, int, float]:
        name, key, pos, has_gauss, gauss = numpy.random.get_state(legacy=True)
        return name, torch.tensor(key.astype(numpy.int64)), int(pos), int(has_gauss), float(gauss)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        options: dict[str, Any] = {"map_location": map_location, "weights_only": True}
        if _LOAD_TAKES_MMAP:
            options["mmap"] = True
        checkpoint = torch.load(path, **options)
        if checkpoint.get("format") != 1:
            raise ValueError(f"{path}: not a format-1 checkpoint")
        into.model.load_state_dict(checkpoint["model"]["state_dict"])
        training = checkpoint["training"]
        if into.optimizer is not None:
            self._load_optimizer(into.optimizer, training["optimizer"])
        if into.scheduler is not None:
            into.scheduler.load_state_dict(training["scheduler"])
        if into.scaler is not None:
            into.scaler.load_state_dict(training["scaler"])
        if into.data is not None:
            into.data.load_state_dict(training["data"])
        saved_random = checkpoint["random"]
        torch.set_rng_state(saved_random["torch"].cpu())
        version, internal, gauss = saved_random["python"]
        random.setstate((version, tuple(internal), gauss))
        name, key, *rest = saved_random["numpy"]
        numpy.random.set_state((name, key.cpu().numpy().astype(numpy.uint32), *rest))
        into.extra.update(checkpoint["meta"]["extra"])

    @staticmethod
    def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        optimizer.load_state_dict(saved)
        parameters = _parameters(optimizer)
        for index, entries in saved["state"].items():
            parameter = parameters[index]
            restored = optimizer.state[parameter]
            for key, value in entries.items():
                pairs = list(_walk_tensors(value, restored.get(key)))
                if any(left.dtype != right.dtype for left, right in pairs):
                    restored[key] = _on_device(value, parameter.device)


# ---------------------------------------------------------------------------------------
# (c) Serialized in memory, bytes written (atomically) and read by the checkpointer itself.


class InMemoryBytesCheckpointer:
    """``torch.save`` into an ``io.BytesIO``; the bytes are written by the checkpointer.

    The layout is that of a Lightning-style checkpoint: ``state_dict``,
    ``optimizer_states`` and ``lr_schedulers`` as lists, ``native_amp_scaling_state`` (the
    GradScaler's, when there is one), ``data_loader_state`` (the data stream's position),
    ``rng_states`` (torch, Python, and numpy's with the key as raw bytes), and the extra
    entries under ``user_state``. The bytes go to a temporary file beside ``path`` that is
    flushed, synced and renamed over ``path``, so a crash never leaves half a checkpoint;
    loading reads the whole file and gives ``torch.load`` an ``io.BytesIO`` of it.

    The optimizer's saved dtypes are put back by a ``load_state_dict`` post-hook, which a
    pre-hook hands the incoming state_dict.
    """

    def save(self, state: TrainingState, path: str) -> None:
        checkpoint = {
            "state_dict": state.model.state_dict(),
            "optimizer_states": [] if state.optimizer is None else [state.optimizer.state_dict()],
            "lr_schedulers": [] if state.scheduler is None else [state.scheduler.state_dict()],
            "rng_states": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "numpy": _numpy_rng_as_bytes(),
            },
            "user_state": dict(state.extra),
        }
        if state.scaler is not None:
            checkpoint["native_amp_scaling_state"] = state.scaler.state_dict()
        if state.data is not None:
            checkpoint["data_loader_state"] = state.data.state_dict()
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        temporary = f"{path}.partial"
        with open(temporary, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        with open(path, "rb") as handle:
            data = handle.read()
        checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        into.model.load_state_dict(checkpoint["state_dict"])
        if into.optimizer is not None:
            (saved,) = checkpoint["optimizer_states"]
            self._load_optimizer(into.optimizer, saved)
        if into.scheduler is not None:
            (saved,) = checkpoint["lr_schedulers"]
            into.scheduler.load_state_dict(saved)
        if into.scaler is not None:
            into.scaler.load_state_dict(checkpoint["native_amp_scaling_state"])
        if into.data is not None:
            into.data.load_state_dict(checkpoint["data_loader_state"])
        rng_states = checkpoint["rng_states"]
        torch.set_rng_state(rng_states["torch"].cpu())
        random.setstate(rng_states["python"])
        _set_numpy_rng_from_bytes(rng_states["numpy"])
        into.extra.update(checkpoint["user_state"])

    @staticmethod
    def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        incoming: list[dict[str, Any]] = []

        def remember(optimizer, state_dict):
            incoming.append(state_dict)

        def keep_saved_dtypes(optimizer):
            (state_dict,) = incoming
            parameters = _parameters(optimizer)
            for index, entries in state_dict["state"].items():
                parameter = parameters[index]
                for key, value in entries.items():
                    loaded = optimizer.state[parameter][key]
                    if _dtypes(loaded) != _dtypes(value):
                        optimizer.state[parameter][key] = _on_device(value, parameter.device)

        handles = [
            optimizer.register_load_state_dict_pre_hook(remember),
            optimizer.register_load_state_dict_post_hook(keep_saved_dtypes),
        ]
        try:
            optimizer.load_state_dict(saved)
        finally:
            for handle in handles:
                handle.remove()


def _numpy_rng_as_bytes() -> dict[str, Any]:
    """numpy's global RNG state with its key as the bytes of the uint32 array."""
    name, key, pos, has_gauss, gauss = numpy.random.get_state(legacy=True)
    return {"name": name, "key": key.astype("<u4").tobytes(), "rest": (pos, has_gauss, gauss)}


def _set_numpy_rng_from_bytes(saved: dict[str, Any]) -> None:
    key = numpy.frombuffer(saved["key"], dtype="<u4").astype(numpy.uint32)
    numpy.random.set_state((saved["name"], key, *saved["rest"]))


def _dtypes(value: Any) -> tuple[torch.dtype, ...]:
    if isinstance(value, torch.Tensor):
        return (value.dtype,)
    if isinstance(value, list | tuple):
        return tuple(dtype for item in value for dtype in _dtypes(item))
    return ()


# ---------------------------------------------------------------------------------------
# (d) Model weights in safetensors, the training state in a torch file beside them.


def _safetensors_device(map_location: Any) -> str:
    """The device safetensors should load onto for ``map_location``.

    safetensors files record no device: weights are loaded where ``map_location`` says when
    it names one device (a string or ``torch.device``), on the CPU otherwise.
    """
    if isinstance(map_location, str | torch.device):
        return str(map_location)
    return "cpu"


class SafetensorsWeightsCheckpointer:
    """Model weights as ``<stem>.safetensors``, the rest with ``torch.save`` at ``path``.

    The common split of published checkpoints: weights in safetensors (no pickle at all;
    ``safetensors.torch.save_model`` drops the duplicate names of tied weights and
    ``load_model`` ties them again), optimizer, scheduler, scaler, data position, torch's
    RNG state and extra entries in a ``weights_only`` torch file, and the Python and numpy
    RNG states in a JSON file ``<stem>.host_rng.json`` (plain numbers, as tools without
    torch read them). The optimizer's state is not passed through
    ``Optimizer.load_state_dict`` at all: the param groups are loaded with an empty state,
    and each parameter's saved state is put in place as it was saved.

    Needs the ``safetensors`` package.
    """

    @staticmethod
    def weights_path(path: str) -> str:
        stem, _ = os.path.splitext(path)
        return f"{stem}.safetensors"

    @staticmethod
    def host_rng_path(path: str) -> str:
        stem, _ = os.path.splitext(path)
        return f"{stem}.host_rng.json"

    def save(self, state: TrainingState, path: str) -> None:
        from safetensors.torch import save_model

        save_model(
            state.model,
            self.weights_path(path),
            metadata={"format": "pt"},
            force_contiguous=True,
        )
        training = {
            "optimizer": None if state.optimizer is None else state.optimizer.state_dict(),
            "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
            "scaler": None if state.scaler is None else state.scaler.state_dict(),
            "data": None if state.data is None else state.data.state_dict(),
            "cpu_rng_state": torch.get_rng_state(),
            "extra": dict(state.extra),
        }
        torch.save(training, path)
        version, internal, gauss = random.getstate()
        name, key, pos, has_gauss, cached = numpy.random.get_state(legacy=True)
        host_rng = {
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
            "numpy": {
                "bit_generator": name,
                "key": key.tolist(),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
        }
        with open(self.host_rng_path(path), "w", encoding="utf-8") as handle:
            json.dump(host_rng, handle)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        from safetensors.torch import load_model

        training = torch.load(path, map_location=map_location, weights_only=True)
        load_model(into.model, self.weights_path(path), device=_safetensors_device(map_location))
        if into.optimizer is not None:
            saved = training["optimizer"]
            into.optimizer.load_state_dict({"state": {}, "param_groups": saved["param_groups"]})
            parameters = _parameters(into.optimizer)
            for index, entries in saved["state"].items():
                parameter = parameters[index]
                into.optimizer.state[parameter] = {
                    key: _on_device(value, parameter.device) for key, value in entries.items()
                }
        if into.scheduler is not None:
            into.scheduler.load_state_dict(training["scheduler"])
        if into.scaler is not None:
            into.scaler.load_state_dict(training["scaler"])
        if into.data is not None:
            into.data.load_state_dict(training["data"])
        torch.set_rng_state(training["cpu_rng_state"].cpu())
        with open(self.host_rng_path(path), encoding="utf-8") as handle:
            host_rng = json.load(handle)
        python = host_rng["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
        generator = host_rng["numpy"]
        numpy.random.set_state(
            (
                generator["bit_generator"],
                numpy.array(generator["key"], dtype=numpy.uint32),
                generator["pos"],
                generator["has_gauss"],
                generator["cached_gaussian"],
            )
        )
        into.extra.update(training["extra"])


# ---------------------------------------------------------------------------------------
# (e) For inference: weights and a JSON configuration, loaded in eval mode.


class DeploymentBundle:
    """What a serving stack ships: the state_dict at ``path`` and ``<path>.config.json``.

    The JSON file holds the extra entries (model configuration, preprocessing statistics,
    class names), which must be JSON data (numbers, strings, lists, string-keyed dicts),
    so that tools without torch can read them. Loading takes the weights with
    ``weights_only=True`` and strict key matching, puts the model in eval mode and turns
    off gradients of its parameters, as a model that only predicts needs none.
    """

    def save(self, state: TrainingState, path: str) -> None:
        torch.save(state.model.state_dict(), path)
        with open(f"{path}.config.json", "w", encoding="utf-8") as handle:
            json.dump(state.extra, handle, indent=2, sort_keys=False)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        weights = torch.load(path, map_location=map_location, weights_only=True)
        into.model.load_state_dict(weights, strict=True)
        into.model.eval()
        into.model.requires_grad_(False)
        with open(f"{path}.config.json", encoding="utf-8") as handle:
            into.extra.update(json.load(handle))


#: The training checkpointers, checked with ``purpose="resume"``.
RESUME_CHECKPOINTERS = (
    FileSetCheckpointer,
    NestedProtocol2Checkpointer,
    InMemoryBytesCheckpointer,
    SafetensorsWeightsCheckpointer,
)

#: The inference checkpointers, checked with ``purpose="inference"``.
INFERENCE_CHECKPOINTERS = (DeploymentBundle,)
