"""Planted checkpointers: each correct but for the one defect a known hazard exposes.

:class:`HazardCheckpoint` is a correct checkpointer written as a sequence of small steps
(what goes into the file for the model, the optimizer, the scheduler and the RNG; how the
file is written and read; how each part is loaded back). Every other class here overrides
one step the way real checkpoint code gets it wrong, and :data:`PLANTED` says which hazard
of :data:`strategies.hazards.HAZARD_REGISTRY` exposes it and which invariant fails on it.
``tests/test_hazards.py`` checks that :func:`harness.check_checkpointer` catches each at
every seed, and that the random draws alone miss some of them.

Every checkpointer takes the purpose it is checked for: for ``"inference"`` the loaded
model is put in eval mode and no RNG state is kept.

The module is plain Python, not a test module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy
import torch

from harness.capabilities import OPTIMIZER_REGISTRY
from harness.state import TrainingState, global_rng_state, set_global_rng_state
from tests.correct_checkpointers import _on_device, _parameters

__all__ = ["PLANTED", "HazardCheckpoint", "Planted"]


class HazardCheckpoint:
    """A correct checkpointer: one torch file, loaded with ``weights_only=True``.

    The file holds the model's state_dict, the optimizer's (its saved state tensors put
    back after ``load_state_dict``, which casts them to the parameters' dtypes,
    pytorch/pytorch#43706), the scheduler's, those of the other parts of the state that
    have one (:attr:`parts`), the extra entries and (to resume) the global RNG states
    (torch's, Python's and numpy's).
    """

    #: Parts of a training state besides model, optimizer and scheduler that it saves
    #: (each has a state_dict).
    parts = ("scaler", "data")

    def __init__(self, purpose: str = "resume") -> None:
        self.purpose = purpose

    # What goes into the file.

    def model_state(self, model: torch.nn.Module) -> Any:
        return model.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> Any:
        return optimizer.state_dict()

    def scheduler_state(self, state: TrainingState) -> Any:
        return state.scheduler.state_dict()

    def rng_state(self) -> dict[str, Any] | None:
        return global_rng_state()

    def write(self, checkpoint: dict[str, Any], path: str) -> None:
        torch.save(checkpoint, path)

    # How it comes back.

    def read(self, path: str, map_location: Any) -> dict[str, Any]:
        return torch.load(path, map_location=map_location, weights_only=True)

    def load_model(self, model: torch.nn.Module, saved: Any) -> None:
        model.load_state_dict(saved)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        optimizer.load_state_dict(saved)
        parameters = _parameters(optimizer)
        for index, entries in saved["state"].items():
            parameter = parameters[index]
            for key, value in entries.items():
                optimizer.state[parameter][key] = _on_device(value, parameter.device)

    def load_scheduler(self, into: TrainingState, saved: Any) -> None:
        into.scheduler.load_state_dict(saved)

    def load_rng(self, saved: dict[str, Any] | None) -> None:
        if saved is not None:
            set_global_rng_state(saved)

    # The checkpointer.

    def save(self, state: TrainingState, path: str) -> None:
        checkpoint: dict[str, Any] = {
            "model": self.model_state(state.model),
            "extra": dict(state.extra),
        }
        if state.optimizer is not None:
            checkpoint["optimizer"] = self.optimizer_state(state.optimizer)
        if state.scheduler is not None:
            checkpoint["scheduler"] = self.scheduler_state(state)
        for part in self.parts:
            value = getattr(state, part, None)
            if value is not None:
                checkpoint[part] = value.state_dict()
        if self.purpose == "resume":
            checkpoint["rng"] = self.rng_state()
        self.write(checkpoint, path)

    def load(self, path: str, into: TrainingState, map_location: Any = None) -> None:
        checkpoint = self.read(path, map_location)
        into.extra.update(checkpoint["extra"])
        self.load_model(into.model, checkpoint["model"])
        # The scheduler before the optimizer: loading the optimizer's param groups last
        # leaves the learning rates as saved, whatever loading the scheduler did to them.
        if into.scheduler is not None:
            self.load_scheduler(into, checkpoint["scheduler"])
        if into.optimizer is not None:
            self.load_optimizer(into.optimizer, checkpoint["optimizer"])
        for part in self.parts:
            value = getattr(into, part, None)
            if value is not None:
                value.load_state_dict(checkpoint[part])
        self.load_rng(checkpoint.get("rng"))
        if self.purpose == "inference":
            into.model.eval()
        else:
            into.model.train()


# --- the model ---------------------------------------------------------------------------


class NoRngState(HazardCheckpoint):
    """Keeps no RNG state: dropout draws other masks after resuming."""

    def rng_state(self) -> None:
        return None


class TorchRngOnly(HazardCheckpoint):
    """Keeps torch's RNG state only: augmentations drawn from Python's ``random`` and
    numpy's global RNG differ after resuming."""

    def rng_state(self) -> torch.Tensor:
        return torch.get_rng_state()

    def load_rng(self, saved: torch.Tensor) -> None:
        torch.set_rng_state(saved.cpu())


class ParametersOnly(HazardCheckpoint):
    """Saves the model's parameters only, loaded with ``strict=False``: buffers are lost."""

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {name: parameter.detach() for name, parameter in model.named_parameters()}

    def load_model(self, model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(saved, strict=False)


class HandAssembledStateDict(HazardCheckpoint):
    """Assembles the state dict from ``named_parameters()`` and ``named_buffers()``, which
    include non-persistent buffers; ``load_state_dict`` refuses them as unexpected keys."""

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        tensors = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False)}
        tensors.update(model.named_buffers(remove_duplicate=False))
        return tensors


class SafetensorsWeights(HazardCheckpoint):
    """Writes the model's state_dict with ``safetensors.torch.save_file`` beside the torch
    file: it refuses tensors that share memory, as tied weights do."""

    def write(self, checkpoint: dict[str, Any], path: str) -> None:
        from safetensors.torch import save_file

        # contiguous(): safetensors refuses strided views (orthogonal's base is one).
        tensors = {name: t.contiguous() for name, t in checkpoint.pop("model").items()}
        save_file(tensors, f"{path}.safetensors")
        super().write(checkpoint, path)

    def read(self, path: str, map_location: Any) -> dict[str, Any]:
        from safetensors.torch import load_file

        return {**super().read(path, map_location), "model": load_file(f"{path}.safetensors")}


class WholeModelPickle(HazardCheckpoint):
    """Pickles the model object itself (read with ``weights_only=False``) and loads its
    state_dict into the fresh model: torch refuses to pickle parametrized modules."""

    def model_state(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def read(self, path: str, map_location: Any) -> dict[str, Any]:
        return torch.load(path, map_location=map_location, weights_only=False)

    def load_model(self, model: torch.nn.Module, saved: torch.nn.Module) -> None:
        model.load_state_dict(saved.state_dict())


class Float32Export(HazardCheckpoint):
    """Saves every floating-point tensor of the state_dict as float32, to halve the file of
    a double-precision model: float64 parameters come back rounded."""

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {
            name: tensor.float() if tensor.is_floating_point() else tensor
            for name, tensor in model.state_dict().items()
        }


class NumpyArchive(HazardCheckpoint):
    """Writes the model's tensors as a numpy ``.npz`` archive beside the torch file: numpy
    has no bfloat16."""

    def write(self, checkpoint: dict[str, Any], path: str) -> None:
        tensors = checkpoint.pop("model")
        numpy.savez(f"{path}.npz", **{name: t.detach().numpy() for name, t in tensors.items()})
        super().write(checkpoint, path)

    def read(self, path: str, map_location: Any) -> dict[str, Any]:
        with numpy.load(f"{path}.npz") as archive:
            tensors = {name: torch.from_numpy(archive[name]) for name in archive.files}
        return {**super().read(path, map_location), "model": tensors}


# --- the other parts of the state ------------------------------------------------------------


class NoScalerState(HazardCheckpoint):
    """Saves model, optimizer, scheduler and data position, as it did before training used
    mixed precision: the GradScaler's state is not kept."""

    parts = ("data",)


class NoDataPosition(HazardCheckpoint):
    """Saves everything but where the run is in its data: the epoch starts over."""

    parts = ("scaler",)


# --- the optimizer -----------------------------------------------------------------------


class PlainOptimizerLoad(HazardCheckpoint):
    """Calls ``optimizer.load_state_dict`` and nothing else: state kept in another dtype
    than its parameter's comes back cast (pytorch/pytorch#43706)."""

    def load_optimizer(self, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        optimizer.load_state_dict(saved)


class OptimizerOnceItHasState(HazardCheckpoint):
    """Saves the optimizer only once it has per-parameter state: SGD without momentum never
    has any, and its learning rates are lost."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> Any:
        return optimizer.state_dict() if optimizer.state else None

    def load_optimizer(self, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        if saved is not None:
            super().load_optimizer(optimizer, saved)


class OneLearningRate(HazardCheckpoint):
    """Re-applies one learning rate to every group after loading, as code that keeps
    ``scheduler.get_last_lr()[0]`` does: every group gets the first group's."""

    def load_optimizer(self, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        super().load_optimizer(optimizer, saved)
        learning_rate = saved["param_groups"][0]["lr"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate


class StateMovedToDevice(HazardCheckpoint):
    """Moves every optimizer state entry to its parameter's device with ``value.to(...)``
    after loading: SparseAdam's step count is a Python int, which has no ``to``."""

    def load_optimizer(self, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        super().load_optimizer(optimizer, saved)
        for parameter, entries in optimizer.state.items():
            for key, value in entries.items():
                entries[key] = value.to(parameter.device)


class SafetensorsOptimizerState(HazardCheckpoint):
    """Writes the optimizer's per-parameter state as a flat safetensors file of tensors
    (``<index>.<key>``; Python numbers as 0-d tensors, turned back into numbers on load):
    LBFGS's lists of history tensors cannot be flattened so."""

    def write(self, checkpoint: dict[str, Any], path: str) -> None:
        from safetensors.torch import save_file

        if "optimizer" in checkpoint:
            saved = checkpoint["optimizer"]
            tensors, numbers = {}, []
            for index, entries in saved["state"].items():
                for key, value in entries.items():
                    if not isinstance(value, torch.Tensor):
                        numbers.append(f"{index}.{key}")
                    tensors[f"{index}.{key}"] = torch.as_tensor(value)
            save_file(tensors, f"{path}.optimizer.safetensors")
            # safetensors sorts its keys: the order of the entries is kept beside them.
            checkpoint["optimizer"] = {
                "param_groups": saved["param_groups"],
                "order": list(tensors),
                "numbers": numbers,
            }
        super().write(checkpoint, path)

    def read(self, path: str, map_location: Any) -> dict[str, Any]:
        from safetensors.torch import load_file

        checkpoint = super().read(path, map_location)
        if "optimizer" in checkpoint:
            saved = checkpoint["optimizer"]
            tensors = load_file(f"{path}.optimizer.safetensors")
            state: dict[int, dict[str, Any]] = {}
            for name in saved["order"]:
                index, key = name.split(".", 1)
                value = tensors[name].item() if name in saved["numbers"] else tensors[name]
                state.setdefault(int(index), {})[key] = value
            checkpoint["optimizer"] = {"state": state, "param_groups": saved["param_groups"]}
        return checkpoint


class LearningRatesOnly(HazardCheckpoint):
    """Saves the optimizer's per-parameter state and each group's learning rate, taking the
    other group hyperparameters from the fresh optimizer: momentum that a scheduler cycles
    is lost."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> Any:
        return {
            "state": optimizer.state_dict()["state"],
            "learning_rates": [group["lr"] for group in optimizer.param_groups],
        }

    def load_optimizer(self, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        groups = optimizer.state_dict()["param_groups"]
        for group, learning_rate in zip(groups, saved["learning_rates"], strict=True):
            group["lr"] = learning_rate
        super().load_optimizer(optimizer, {"state": saved["state"], "param_groups": groups})


# --- the scheduler -----------------------------------------------------------------------


class JsonSchedulerState(HazardCheckpoint):
    """Writes the scheduler's state_dict as JSON beside the torch file: MultiStepLR's
    Counter of milestones comes back a dict with string keys."""

    def write(self, checkpoint: dict[str, Any], path: str) -> None:
        if "scheduler" in checkpoint:
            with open(f"{path}.scheduler.json", "w") as handle:
                json.dump(checkpoint.pop("scheduler"), handle)
        super().write(checkpoint, path)

    def read(self, path: str, map_location: Any) -> dict[str, Any]:
        checkpoint = super().read(path, map_location)
        try:
            with open(f"{path}.scheduler.json") as handle:
                checkpoint["scheduler"] = json.load(handle)
        except FileNotFoundError:  # saved without a scheduler
            pass
        return checkpoint


class ReplayedScheduler(HazardCheckpoint):
    """Saves no scheduler state and restores the scheduler by stepping the fresh one once
    per epoch trained (``extra["epoch"]``): ReduceLROnPlateau's steps need the metrics it
    was given."""

    def scheduler_state(self, state: TrainingState) -> None:
        return None

    def load_scheduler(self, into: TrainingState, saved: None) -> None:
        for _ in range(into.extra["epoch"]):
            into.scheduler.step()


class DictUpdatedScheduler(HazardCheckpoint):
    """Loads the scheduler's state_dict with ``scheduler.__dict__.update``, the way the base
    class does: composite schedulers get their children replaced by dicts."""

    def load_scheduler(self, into: TrainingState, saved: Any) -> None:
        into.scheduler.__dict__.update(saved)


class SchedulerCounters(HazardCheckpoint):
    """Saves only the scheduler's counters (``last_epoch``, ``_step_count``, ``_last_lr``)
    and sets them on the fresh scheduler, whose other attributes come from the config:
    ChainedScheduler keeps its counters in its children."""

    _COUNTERS = ("last_epoch", "_step_count", "_last_lr")

    def scheduler_state(self, state: TrainingState) -> dict[str, Any]:
        return {k: v for k, v in state.scheduler.state_dict().items() if k in self._COUNTERS}

    def load_scheduler(self, into: TrainingState, saved: dict[str, Any]) -> None:
        into.scheduler.load_state_dict({**into.scheduler.state_dict(), **saved})


# --- which hazard exposes which --------------------------------------------------------------


@dataclass(frozen=True)
class Planted:
    """A planted checkpointer, the hazard that exposes it and the invariant that fails.

    Attributes:
        checkpointer: the class; instances take the purpose.
        invariant: the checkpointer invariant that fails on the hazard's case.
    """

    checkpointer: type[HazardCheckpoint]
    invariant: str = "state_restored"


_CAST_HAZARDS = {
    f"{dtype}_{record.name.lower()}"
    for dtype in ("float64", "bfloat16")
    for record in OPTIMIZER_REGISTRY
}

#: Every hazard's planted checkpointer, by hazard name.
PLANTED: dict[str, Planted] = {
    "dropout": Planted(NoRngState, "resume_equivalence"),
    "batch_norm_running_statistics": Planted(ParametersOnly),
    "non_persistent_buffers": Planted(HandAssembledStateDict),
    "tied_parameters": Planted(SafetensorsWeights),
    "parametrizations": Planted(WholeModelPickle),
    "float64_parameters": Planted(Float32Export),
    "bfloat16_parameters": Planted(NumpyArchive),
    **{name: Planted(PlainOptimizerLoad) for name in sorted(_CAST_HAZARDS)},
    "sgd_without_momentum": Planted(OptimizerOnceItHasState),
    "param_groups": Planted(OneLearningRate),
    "sparse_embedding": Planted(StateMovedToDevice),
    "lbfgs_history": Planted(SafetensorsOptimizerState),
    "multi_step_lr": Planted(JsonSchedulerState),
    "reduce_lr_on_plateau": Planted(ReplayedScheduler),
    "sequential_lr": Planted(DictUpdatedScheduler),
    "chained_scheduler": Planted(SchedulerCounters),
    "one_cycle_lr": Planted(LearningRatesOnly),
    "cyclic_lr": Planted(LearningRatesOnly),
    "host_rng_augmentation": Planted(TorchRngOnly, "resume_equivalence"),
    "data_stream_position": Planted(NoDataPosition),
    "grad_scaler": Planted(NoScalerState),
}
