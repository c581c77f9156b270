"""The training state a checkpoint saves and restores."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["TrainingState", "snapshot"]


@dataclass
class TrainingState:
    """Everything a training checkpoint is expected to carry.

    Attributes:
        model: the module being trained.
        optimizer: its optimizer, or None (an inference package has none).
        scheduler: the learning-rate scheduler, or None.
        extra: plain data saved beside them: epoch, loss, model config, preprocessing
            statistics, class names, and so on.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def snapshot(state: TrainingState) -> dict[str, Any]:
    """Everything a restored state must agree on, copied so later training cannot change it:
    the model's, optimizer's and scheduler's ``state_dict()`` and the learning rates."""
    taken: dict[str, Any] = {"model": state.model.state_dict()}
    if state.optimizer is not None:
        taken["optimizer"] = state.optimizer.state_dict()
        taken["learning_rates"] = [group["lr"] for group in state.optimizer.param_groups]
    if state.scheduler is not None:
        taken["scheduler"] = state.scheduler.state_dict()
    return copy.deepcopy(taken)
