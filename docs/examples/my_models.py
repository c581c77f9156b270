"""A small CNN and a small transformer, described for ``harness.check_checkpointer``.

``CNN`` and ``TRANSFORMER`` are :class:`harness.UserModel` records: how to build the model,
the input it takes and its loss. ``OPTIMIZERS`` and ``SCHEDULERS`` are factories as a
training script writes them.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from harness.user_models import UserModel

VOCABULARY, CONTEXT = 32, 8


class SmallCNN(nn.Module):
    """Convolution, batch norm (running statistics are buffers), dropout, a linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(8 * 2 * 2, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


def _positions(context: int, width: int) -> torch.Tensor:
    """Sinusoidal position encodings, one row per position."""
    position = torch.arange(context, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
    table = torch.zeros(context, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class SmallTransformer(nn.Module):
    """A next-token model: embeddings tied to the output head, fixed position encodings (a
    buffer left out of the state_dict), two encoder layers with dropout, a final norm.
    Given targets, it returns the logits and the cross-entropy loss."""

    def __init__(self, width: int = 16, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, width)
        self.register_buffer("positions", _positions(CONTEXT, width), persistent=False)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.1, batch_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCABULARY, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        hidden = self.embed(tokens) + self.positions[: tokens.shape[1]]
        for layer in self.layers:
            hidden = layer(hidden)
        logits = self.head(self.norm(hidden))
        if targets is None:
            return logits
        return logits, nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def next_token_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two random sequences and their next tokens (called with the RNG seeded)."""
    tokens = torch.randint(0, VOCABULARY, (2, CONTEXT + 1))
    return tokens[:, :-1], tokens[:, 1:]


CNN = UserModel(SmallCNN, example_input=lambda: (torch.randn(4, 3, 8, 8),), name="SmallCNN")
TRANSFORMER = UserModel(
    functools.partial(SmallTransformer, width=16),
    example_input=next_token_batch,
    loss=lambda output: output[1],
)


def adamw_with_decay(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only: two parameter groups, by name."""
    matrices = [p for _, p in model.named_parameters() if p.dim() >= 2]
    others = [p for _, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3)


def warmup(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over four steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))


OPTIMIZERS = [functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9), adamw_with_decay]
SCHEDULERS = [None, functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1), warmup]
