"""Strategies for small PyTorch models, each with an example input and a loss.

:func:`models` draws a :class:`~strategies.model_specs.ModelSpec` (see
:mod:`strategies.model_specs`) and builds it with :func:`build_model` into a
:class:`ModelCase`, each layer by its family's ``build``
(:data:`~strategies.model_specs.FAMILY_REGISTRY`). Building is deterministic: the same spec
and ``init_seed`` give bit-identical parameters, buffers and input, and the global RNG is left
as it was. Every floating-point parameter gets a seeded perturbation on top of its module's
default initialization, so no parameter holds a constant (the ones of a norm layer, PReLU's
0.25) that a freshly built instance would reproduce by chance.

The module classes the families build (:mod:`strategies._modules`) are public here, at module
level, so whole-model pickles of built models load wherever this module can be imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

from strategies._modules import (
    BufferHolder,
    CastBlock,
    ModuleDictBlock,
    ModuleListBlock,
    NestedBlock,
    ParameterDictAffine,
    ParameterListAffine,
    Residual,
    SeededLazy,
    SelfAttention,
    SelfBilinear,
    SequentialBody,
    TiedEmbeddingModel,
)
from strategies.model_specs import (
    FAMILIES,
    InputSpec,
    Layer,
    ModelSpec,
    available_families,
    layer_kind,
    model_specs,
)

__all__ = [
    "FAMILIES",
    "BufferHolder",
    "CastBlock",
    "InputSpec",
    "Layer",
    "ModelCase",
    "ModelSpec",
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
    "available_families",
    "build_model",
    "model_specs",
    "models",
]

# The example input depends on the spec only, never on init_seed.
_INPUT_SEED = 20240229
_PERTURBATION = 0.1


class _Builder:
    """Builds modules from layers, each by its family's ``build``, in the seeded RNG context
    of :func:`build_model`."""

    def body(self, layers: Iterable[Layer]) -> SequentialBody:
        return SequentialBody(self.layer(layer) for layer in layers)

    def layer(self, layer: Layer) -> nn.Module:
        return layer_kind(layer.kind).build(layer, self)


def _perturb(module: nn.Module) -> None:
    """Add seeded noise to every initialized floating-point parameter."""
    with torch.no_grad():
        for parameter in module.parameters():
            if isinstance(parameter, nn.parameter.UninitializedParameter):
                continue
            if parameter.is_floating_point():
                parameter.add_(torch.randn_like(parameter), alpha=_PERTURBATION)
        for submodule in module.modules():
            if isinstance(submodule, nn.Embedding) and submodule.padding_idx is not None:
                submodule.weight[submodule.padding_idx].zero_()


def _example_input(spec: InputSpec) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(_INPUT_SEED)
    if spec.kind == "tokens":
        return (torch.randint(0, spec.vocabulary, spec.shape, generator=generator),)
    return (torch.randn(spec.shape, generator=generator),)


def _loss(output) -> torch.Tensor:
    """Mean of squares of every floating-point tensor in ``output``, summed, in float32."""
    if isinstance(output, torch.Tensor):
        parts = [output] if output.is_floating_point() else []
    elif isinstance(output, tuple | list):
        parts = [_loss(item) for item in output if item is not None]
    else:
        raise TypeError(f"cannot take a loss of a {type(output).__name__}")
    if not parts:
        return torch.zeros(())
    return torch.stack([part.float().square().mean() for part in parts]).sum()


@dataclass(frozen=True, eq=False)
class ModelCase:
    """A built model with the input it takes.

    Attributes:
        spec: the spec the module was built from.
        module: the model, in train mode as built.
        example_input: positional arguments: ``module(*example_input)`` runs.
        init_seed: the seed the module's parameters and buffers were drawn with.
    """

    spec: ModelSpec
    module: nn.Module
    example_input: tuple
    init_seed: int = 0

    def __repr__(self) -> str:
        # The spec and seed say everything: the module and input are built from them.
        return f"build_model({self.spec!r}, init_seed={self.init_seed})"

    def loss(self, output) -> torch.Tensor:
        """A deterministic scalar float32 loss of ``output`` (a tensor, or a tuple holding
        tensors or None, as LSTM and attention return), differentiable in every parameter
        that produced it: the mean square of each floating-point tensor, summed."""
        return _loss(output)

    def rebuild(self, init_seed: int) -> ModelCase:
        """The same spec and example input, with a fresh module initialized from ``init_seed``."""
        fresh = build_model(self.spec, init_seed)
        return ModelCase(self.spec, fresh.module, self.example_input, init_seed)


def build_model(spec: ModelSpec, init_seed: int = 0) -> ModelCase:
    """Build ``spec`` into a :class:`ModelCase`, initialized from ``init_seed``.

    The same spec and seed give bit-identical parameters, buffers and example input; the
    example input depends on the spec only. The global RNG is left unchanged.
    """
    if not isinstance(spec, ModelSpec):
        raise InvalidArgument(f"spec={spec!r} must be a ModelSpec, e.g. drawn from model_specs()")
    if not isinstance(init_seed, int) or isinstance(init_seed, bool) or init_seed < 0:
        raise InvalidArgument(f"init_seed={init_seed!r} must be a non-negative int")
    with torch.random.fork_rng(devices=[]):
        # The CPU generator alone, the one fork_rng puts back: torch.manual_seed also seeds
        # every accelerator's generators (0.3-1.4 ms a call).
        torch.default_generator.manual_seed(init_seed)
        module = _Builder().body(spec.layers)
        _perturb(module)
    return ModelCase(spec, module, _example_input(spec.input), init_seed)


def models(
    families: Iterable[str] | None = None, *, allow_uninitialized: bool = True
) -> st.SearchStrategy[ModelCase]:
    """Built models (:class:`ModelCase`) from
    :func:`model_specs` ``(families, allow_uninitialized=allow_uninitialized)``.

    Each is built with ``init_seed=0``; use :meth:`ModelCase.rebuild` for another
    initialization. Shrinks as the spec does: toward one layer of the simplest family,
    with the smallest sizes.
    """
    return model_specs(families, allow_uninitialized=allow_uninitialized).map(build_model)
