"""Strategies for small PyTorch models, each with an example input and a loss.

:func:`models` draws a :class:`~strategies.model_specs.ModelSpec` (see
:mod:`strategies.model_specs`) and builds it with :func:`build_model` into a
:class:`ModelCase`. Building is deterministic: the same spec and ``init_seed`` give
bit-identical parameters, buffers and input, and the global RNG is left as it was. Every
floating-point parameter gets a seeded perturbation on top of its module's default
initialization, so no parameter holds a constant (the ones of a norm layer, PReLU's 0.25)
that a freshly built instance would reproduce by chance.

The module classes defined here live at module level, so whole-model pickles of built
models load wherever this module can be imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

from harness.capabilities import weight_parametrizations
from strategies.model_specs import (
    FAMILIES,
    InputSpec,
    Layer,
    ModelSpec,
    available_families,
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
                torch.manual_seed(self.seed)
                return self.inner(x)
        return self.inner(x)


def _option_kwargs(layer: Layer, *names: str) -> dict:
    return {name: layer.option(name) for name in names}


def _linear(layer: Layer) -> nn.Linear:
    return nn.Linear(**_option_kwargs(layer, "in_features", "out_features", "bias"))


def _activation(layer: Layer) -> nn.Module:
    name = layer.option("name")
    if name == "prelu":
        return nn.PReLU(layer.option("num_parameters"))
    classes = {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "softplus": nn.Softplus,
    }
    return classes[name]()


def _convolution(layer: Layer) -> nn.Module:
    dims = int(layer.kind[4])
    names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups")
    return getattr(nn, f"Conv{dims}d")(**_option_kwargs(layer, *names, "bias", "padding_mode"))


def _transposed_convolution(layer: Layer) -> nn.Module:
    names = ("in_channels", "out_channels", "kernel_size", "stride", "bias")
    return getattr(nn, f"ConvTranspose{layer.option('dims')}d")(**_option_kwargs(layer, *names))


def _pooling(layer: Layer) -> nn.Module:
    names = {"max": "MaxPool", "avg": "AvgPool", "adaptive_avg": "AdaptiveAvgPool"}
    names["adaptive_max"] = "AdaptiveMaxPool"
    pool = getattr(nn, f"{names[layer.option('operation')]}{layer.option('dims')}d")
    return pool(layer.option("size"))


def _recurrent(layer: Layer) -> nn.Module:
    kwargs = dict(layer.options)
    if not kwargs.get("proj_size", 1):
        del kwargs["proj_size"]
    return {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[layer.kind](batch_first=True, **kwargs)


def _parametrized(layer: Layer) -> nn.Module:
    from torch.nn.utils import parametrizations

    name = layer.option("parametrization")
    if name not in weight_parametrizations():
        raise InvalidArgument(f"torch.nn.utils.parametrizations has no {name} here")
    return getattr(parametrizations, name)(_linear(layer))


def _frozen(layer: Layer) -> nn.Module:
    module = _linear(layer)
    frozen = module.parameters() if layer.option("frozen") == "all" else [module.weight]
    for parameter in frozen:
        parameter.requires_grad_(False)
    return module


class _Builder:
    """Builds modules from layers, in the seeded RNG context of :func:`build_model`."""

    def body(self, layers: Iterable[Layer]) -> SequentialBody:
        return SequentialBody(self.layer(layer) for layer in layers)

    def layer(self, layer: Layer) -> nn.Module:
        builders = {
            "linear": _linear,
            "activation": _activation,
            "dropout": lambda spec: nn.Dropout(spec.option("dropout")),
            "layer_norm": lambda spec: nn.LayerNorm(
                **_option_kwargs(spec, "normalized_shape", "elementwise_affine")
            ),
            "batch_norm": lambda spec: getattr(nn, f"BatchNorm{spec.option('dims')}d")(
                **_option_kwargs(spec, "num_features", "affine", "momentum")
            ),
            "conv1d": _convolution,
            "conv2d": _convolution,
            "conv3d": _convolution,
            "conv_transpose": _transposed_convolution,
            "pooling": _pooling,
            "group_norm": lambda spec: nn.GroupNorm(
                **_option_kwargs(spec, "num_groups", "num_channels", "affine")
            ),
            "instance_norm": lambda spec: getattr(nn, f"InstanceNorm{spec.option('dims')}d")(
                **_option_kwargs(spec, "num_features", "affine"), track_running_stats=True
            ),
            "bilinear": lambda spec: SelfBilinear(
                nn.Bilinear(
                    spec.option("in_features"),
                    spec.option("in_features"),
                    spec.option("out_features"),
                    bias=spec.option("bias"),
                )
            ),
            "embedding": lambda spec: nn.Embedding(**dict(spec.options)),
            "embedding_bag": lambda spec: nn.EmbeddingBag(**dict(spec.options)),
            "rnn": _recurrent,
            "gru": _recurrent,
            "lstm": _recurrent,
            "multihead_attention": lambda spec: SelfAttention(
                nn.MultiheadAttention(
                    batch_first=True,
                    **_option_kwargs(
                        spec, "embed_dim", "num_heads", "bias", "add_bias_kv", "add_zero_attn"
                    ),
                ),
                spec.option("need_weights"),
            ),
            "transformer_encoder_layer": lambda spec: nn.TransformerEncoderLayer(
                batch_first=True, **dict(spec.options)
            ),
            "buffers": lambda spec: BufferHolder(
                spec.option("features"), spec.option("persistent_scale")
            ),
            "frozen": _frozen,
            "parametrization": _parametrized,
            "lazy": self._lazy,
            "mixed_dtype": lambda spec: CastBlock(
                _linear(spec).to(getattr(torch, spec.option("dtype"))),
                getattr(torch, spec.option("dtype")),
            ),
            "containers": self._container,
            "residual": lambda spec: Residual(self.body(spec.children)),
            "nested": lambda spec: NestedBlock(self.body(spec.children)),
            "tied": lambda spec: TiedEmbeddingModel(
                nn.Embedding(spec.option("num_embeddings"), spec.option("embedding_dim")),
                self.body(spec.children),
                spec.option("head_bias"),
            ),
            "flatten": lambda spec: nn.Flatten(1),
        }
        return builders[layer.kind](layer)

    def _container(self, layer: Layer) -> nn.Module:
        container = layer.option("container")
        if container == "parameter_list":
            return ParameterListAffine(layer.option("features"))
        if container == "parameter_dict":
            return ParameterDictAffine(layer.option("features"))
        children = [self.layer(child) for child in layer.children]
        return (
            ModuleListBlock(children) if container == "module_list" else ModuleDictBlock(children)
        )

    def _lazy(self, layer: Layer) -> nn.Module:
        dims, incoming = layer.option("dims"), layer.option("in_features")
        if dims:
            module = getattr(nn, f"LazyConv{dims}d")(layer.option("out_features"), 1)
        else:
            module = nn.LazyLinear(layer.option("out_features"))
        if layer.option("initialized"):
            with torch.no_grad():
                module(torch.zeros(1, incoming, *[1] * dims))
            return module
        return SeededLazy(module, int(torch.randint(0, 2**31 - 1, ())))


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
        torch.manual_seed(init_seed)
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
