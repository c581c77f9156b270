"""The training state a checkpoint saves and restores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["TrainingState"]


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
