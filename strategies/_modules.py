"""The ``nn.Module`` classes the model families build where torch has none that fits.

Each is public as ``strategies.models.<name>``: that is the name a whole-model pickle of a
built model records (and the matrix's committed corpora hold), so the classes say so
themselves (see the end of this module) and :mod:`strategies.models` re-exports them. A
family that needs a module class of its own adds it here and to :data:`__all__`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = [
    "BufferHolder",
    "CastBlock",
    "ModuleDictBlock",
    "ModuleListBlock",
    "NestedBlock",
    "ParameterDictAffine",
    "ParameterListAffine",
    "Residual",
    "SeededLazy",
    "SelfAttention",
    "SelfBilinear",
    "SequentialBody",
    "TiedEmbeddingModel",
]


def _first(output):
    """The main output of a layer that returns a tuple (RNNs, attention)."""
    return output[0] if isinstance(output, tuple) else output


class SequentialBody(nn.Module):
    """Layers applied in order; a tuple output passes its first item on to the next layer."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(_first(x) if index else x)
        return x


class Residual(nn.Module):
    """``x + body(x)``, with a body that keeps the shape of ``x``."""

    def __init__(self, body: SequentialBody) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + _first(self.body(x))


class NestedBlock(nn.Module):
    """A custom module holding another custom module."""

    def __init__(self, inner: SequentialBody) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return _first(self.inner(x))


class ModuleListBlock(nn.Module):
    """Children held in an ``nn.ModuleList``, applied in order."""

    def __init__(self, children: Iterable[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(children)

    def forward(self, x):
        for step in self.steps:
            x = _first(step(x))
        return x


class ModuleDictBlock(nn.Module):
    """Children held in an ``nn.ModuleDict``, applied in insertion order."""

    def __init__(self, children: Iterable[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleDict({f"step{i}": child for i, child in enumerate(children)})

    def forward(self, x):
        for step in self.steps.values():
            x = _first(step(x))
        return x


class ParameterListAffine(nn.Module):
    """``x * scale + shift`` over the last dimension, the two held in an ``nn.ParameterList``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.affine = nn.ParameterList(
            [nn.Parameter(torch.ones(features)), nn.Parameter(torch.zeros(features))]
        )

    def forward(self, x):
        return x * self.affine[0] + self.affine[1]


class ParameterDictAffine(nn.Module):
    """``x * scale + shift`` over the last dimension, the two held in an ``nn.ParameterDict``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.affine = nn.ParameterDict(
            {
                "scale": nn.Parameter(torch.ones(features)),
                "shift": nn.Parameter(torch.zeros(features)),
            }
        )

    def forward(self, x):
        return x * self.affine["scale"] + self.affine["shift"]


class BufferHolder(nn.Module):
    """``x * scale + shift`` from buffers, counting train-mode calls in a buffer.

    ``shift`` and ``calls`` are persistent (in the state_dict); ``scale`` is persistent only
    if ``persistent_scale``. A non-persistent ``scale`` is what every instance computes the
    same way (evenly spaced values), as a state_dict cannot restore it; a persistent one is
    random.
    """

    def __init__(self, features: int, persistent_scale: bool) -> None:
        super().__init__()
        self.register_buffer("shift", torch.randn(features))
        scale = torch.randn(features) if persistent_scale else torch.linspace(0.5, 1.5, features)
        self.register_buffer("scale", scale, persistent=persistent_scale)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        if self.training:
            self.calls += 1
        return x * self.scale + self.shift


class SelfBilinear(nn.Module):
    """``nn.Bilinear`` applied to the input paired with itself."""

    def __init__(self, bilinear: nn.Bilinear) -> None:
        super().__init__()
        self.bilinear = bilinear

    def forward(self, x):
        return self.bilinear(x, x)


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` with query, key and value all the input; returns its tuple."""

    def __init__(self, attention: nn.MultiheadAttention, need_weights: bool) -> None:
        super().__init__()
        self.attention = attention
        self.need_weights = need_weights

    def forward(self, x):
        return self.attention(x, x, x, need_weights=self.need_weights)


class TiedEmbeddingModel(nn.Module):
    """Embedding, body, then an output head whose weight *is* the embedding's weight."""

    def __init__(self, embedding: nn.Embedding, body: SequentialBody, head_bias: bool) -> None:
        super().__init__()
        self.embedding = embedding
        self.body = body
        self.head = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=head_bias)
        self.head.weight = self.embedding.weight

    def forward(self, x):
        return self.head(_first(self.body(self.embedding(x))))


class CastBlock(nn.Module):
    """A submodule of another dtype: casts the input to ``dtype`` and the output back."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, x):
        return self.inner(x.to(self.dtype)).to(x.dtype)


class SeededLazy(nn.Module):
    """An uninitialized lazy module whose first forward initializes it from ``seed``.

    The global RNG is left as it was, so initialization is reproducible.
    """

    def __init__(self, inner: nn.Module, seed: int) -> None:
        super().__init__()
        self.inner = inner
        self.seed = seed

    def forward(self, x):
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.inner.parameters()):
            with torch.random.fork_rng(devices=[]):
                # The CPU generator alone: torch.manual_seed also seeds every accelerator's.
                torch.default_generator.manual_seed(self.seed)
                return self.inner(x)
        return self.inner(x)


# Pickles find a class by its __module__ and name: keep the public module's name, under which
# every whole-model pickle of a built model has named these classes.
for _name in __all__:
    globals()[_name].__module__ = "strategies.models"
del _name
