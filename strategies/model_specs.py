"""Plain descriptions of small PyTorch models, the families of layers they are made of, and
strategies that draw them.

A :class:`ModelSpec` is the input a model takes and the tuple of :class:`Layer` it applies in
order. Every layer records all it needs to be built (input sizes included), so a spec is
plain, hashable data that prints readably in a failure report and can be pasted into
``@example``. The strategies thread the shape of the data through the draw: each layer is
chosen among those that accept the current shape and yields the next one, so every drawn
spec builds a model that runs, without filtering. :mod:`strategies.models` builds modules.

Everything known about a family of layers is one :class:`Family` record in
:data:`FAMILY_REGISTRY`: what data it accepts, how a layer is drawn and built, and what the
built layer holds (trainable parameter ranks, dropout, sparse gradients, ...). The table of
families in ``docs/catalog.md`` is generated from it (``python -m harness.catalog``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

from harness.capabilities import (
    multihead_attention_without_bias_runs,
    probe,
    weight_parametrizations,
)
from strategies._arguments import check_bool, check_names, collection_argument
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

__all__ = [
    "Builder",
    "FAMILIES",
    "FAMILY_REGISTRY",
    "Family",
    "InputSpec",
    "Layer",
    "ModelSpec",
    "available_families",
    "family",
    "layer_kind",
    "model_specs",
]

# Input kinds, simplest first, and the rank of the data each stands for.
#   vector (N, F); sequence (N, L, F), batch first; signal (N, C, L); image (N, C, H, W);
#   volume (N, C, D, H, W); tokens (N, L) of int64 indices below the vocabulary size.
_INPUT_KINDS = ("vector", "sequence", "signal", "image", "volume", "tokens")
_GRID_DIMS = {"signal": 1, "image": 2, "volume": 3}

_MAX_SIDE = 4  # features, channels, lengths, vocabulary
_MAX_BATCH = 2
_MAX_GROWN_SIDE = 6  # what a transposed convolution may grow a side to
_MAX_FLATTENED = 16  # features per sample that flattening may produce
_MAX_LAYERS = 4  # per body
_MAX_DEPTH = 2  # nesting of residual blocks, containers, nested modules, tied bodies
_ACTIVATIONS = (
    "relu",
    "tanh",
    "sigmoid",
    "leaky_relu",
    "elu",
    "gelu",
    "silu",
    "softplus",
    "prelu",
)


@dataclass(frozen=True)
class Layer:
    """One layer of a model: its family (``kind``), its options and the layers it holds.

    Attributes:
        kind: a name from :data:`FAMILIES`, or ``"flatten"`` (reshaping that is no family).
        options: ``(name, value)`` pairs with everything needed to build the layer.
        children: the layers a wrapping layer (residual, containers, nested, tied) holds.
    """

    kind: str
    options: tuple[tuple[str, Hashable], ...] = ()
    children: tuple[Layer, ...] = ()

    def option(self, name: str) -> Any:
        """The value of option ``name``."""
        return dict(self.options)[name]

    def walk(self) -> Iterator[Layer]:
        """This layer, then every layer it holds, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class InputSpec:
    """The input of a model.

    Attributes:
        kind: ``"vector"``, ``"sequence"``, ``"signal"``, ``"image"``, ``"volume"`` or
            ``"tokens"``.
        shape: the shape of the one input tensor, batch first.
        vocabulary: for ``"tokens"``, the number of distinct indices; 0 otherwise.
    """

    kind: str
    shape: tuple[int, ...]
    vocabulary: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """A model: its input and the layers applied to it in order.

    Every fact below is read from the spec through the :class:`Family` record of each layer;
    nothing is built.

    Attributes:
        input: the input the model takes.
        layers: the top-level layers, applied in order.
    """

    input: InputSpec
    layers: tuple[Layer, ...]

    def walk(self) -> Iterator[Layer]:
        """Every layer, nested ones included, depth first."""
        for layer in self.layers:
            yield from layer.walk()

    @property
    def families(self) -> frozenset[str]:
        """The names of the families present."""
        return frozenset(layer.kind for layer in self.walk() if layer.kind != _FLATTEN.name)

    @property
    def has_sparse_gradients(self) -> bool:
        """Whether a layer with sparse gradients (``nn.Embedding(sparse=True)``, ...) is
        present (:attr:`Family.sparse_gradients`)."""
        return any(
            layer_kind(layer.kind).sparse_gradients and layer.option("sparse")
            for layer in self.walk()
        )

    @property
    def has_dropout(self) -> bool:
        """Whether a train-mode forward draws random numbers (a dropout with ``p > 0``,
        :attr:`Family.has_dropout`)."""
        return any(
            layer_kind(layer.kind).has_dropout and layer.option("dropout") > 0
            for layer in self.walk()
        )

    @property
    def whole_model_picklable(self) -> bool:
        """Whether ``torch.save(module)`` works: PyTorch refuses to pickle parametrized modules
        and supports them only through ``state_dict()``."""
        return all(layer_kind(layer.kind).whole_model_picklable for layer in self.walk())

    @property
    def has_uninitialized_parameters(self) -> bool:
        """Whether a lazy module is left uninitialized until the first forward."""
        return any(
            layer_kind(layer.kind).lazy and not layer.option("initialized") for layer in self.walk()
        )

    @property
    def trainable_parameter_ranks(self) -> frozenset[int]:
        """The numbers of dimensions of the trainable parameters of the built model (a lazy
        module's as they are once it is initialized); empty when nothing is trainable."""
        return frozenset(
            rank
            for layer in self.walk()
            for rank in layer_kind(layer.kind).trainable_ranks(dict(layer.options))
        )

    @property
    def dtypes(self) -> frozenset[torch.dtype]:
        """The floating-point dtypes of the parameters and buffers: float32, plus the dtype
        of every layer whose family casts (``mixed_dtype``: it casts its input to that dtype
        and its output back)."""
        cast = (layer.option("dtype") for layer in self.walk() if layer_kind(layer.kind).casts)
        return frozenset({torch.float32, *(getattr(torch, name) for name in cast)})


@dataclass(frozen=True)
class _Stream:
    """The data between two layers: its kind, shape and (for tokens) vocabulary size."""

    kind: str
    shape: tuple[int, ...]
    vocabulary: int = 0

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[2:] if self.kind in _GRID_DIMS else ()

    @property
    def grid(self) -> bool:
        return self.kind in _GRID_DIMS

    def with_last(self, size: int) -> _Stream:
        return _Stream(self.kind, (*self.shape[:-1], size))


@dataclass(frozen=True)
class _Context:
    """What every layer draw needs besides the data.

    Attributes:
        families: the names of the families allowed.
        allow_uninitialized: whether a lazy module may be left uninitialized.
        depth: how deeply the layer is nested in wrapping layers.
        preserve: whether the layer must keep the shape of the data (in the body of a
            residual block or a tied model).
    """

    families: tuple[str, ...]
    allow_uninitialized: bool = True
    depth: int = 0
    preserve: bool = False

    def deeper(self, *, preserve: bool) -> _Context:
        """The context of the body of a wrapping layer."""
        return replace(self, depth=self.depth + 1, preserve=preserve)


class Builder(Protocol):
    """What a family's ``build`` is given to build the layers a wrapping layer holds."""

    def body(self, layers: Iterable[Layer]) -> SequentialBody:
        """The layers, built and applied in order."""
        ...

    def layer(self, layer: Layer) -> nn.Module:
        """One layer, built."""
        ...


def _always() -> bool:
    return True


def _no_parameters(options: Mapping[str, Any]) -> tuple[int, ...]:
    return ()


@dataclass(frozen=True)
class Family:
    """Everything the project knows about one family of layers, registered once in
    :data:`FAMILY_REGISTRY`.

    Attributes:
        name: the family's name: the ``kind`` of its layers.
        builds: what the built layer is, in a few words (for the catalog).
        accepts: whether a layer of the family can take data of this shape (the stream
            between two layers: its kind, shape and vocabulary).
        draw: a strategy for one layer of the family taking this data, in this draw
            context: ``(layer, the data after it)``.
        build: the module of a layer, given a :class:`Builder` for the layers it holds; run
            in :func:`strategies.models.build_model`'s seeded RNG context.
        trainable_ranks: from the layer's options, the numbers of dimensions of the trainable
            parameters the built layer holds itself (its children's not included).
        available: whether the installed torch has what the family needs.
        needs: what that is, in words; empty when the family needs nothing.
        wraps: whether the layer holds a body of other layers (nested at most
            ``_MAX_DEPTH`` deep).
        has_dropout: whether a ``dropout`` option above 0 makes a train-mode forward draw
            random numbers.
        sparse_gradients: whether a true ``sparse`` option gives the layer sparse gradients.
        lazy: whether a false ``initialized`` option leaves the layer's parameters
            uninitialized until the first forward.
        casts: whether the layer holds its parameters in the dtype its ``dtype`` option names.
        whole_model_picklable: whether ``torch.save(module)`` can pickle the built layer.
        min_batch, min_channels, min_first_side: the smallest input a model whose first
            layer is of this family is drawn with (batch size, channels or features, first
            spatial side).
    """

    name: str
    builds: str
    accepts: Callable[[_Stream], bool]
    draw: Callable[[_Stream, _Context], st.SearchStrategy[tuple[Layer, _Stream]]]
    build: Callable[[Layer, Builder], nn.Module]
    trainable_ranks: Callable[[Mapping[str, Any]], tuple[int, ...]] = _no_parameters
    available: Callable[[], bool] = _always
    needs: str = ""
    wraps: bool = False
    has_dropout: bool = False
    sparse_gradients: bool = False
    lazy: bool = False
    casts: bool = False
    whole_model_picklable: bool = True
    min_batch: int = 1
    min_channels: int = 1
    min_first_side: int = 1

    def applies(self, s: _Stream) -> bool:
        """Whether the installed torch can build the family and it accepts data ``s``."""
        return self.available() and self.accepts(s)

    def input_kinds(self) -> tuple[str, ...]:
        """The input kinds a model may start with a layer of this family."""
        return tuple(kind for kind in _INPUT_KINDS if self.accepts(_largest_input(kind)))


def _layer(kind: str, children: tuple[Layer, ...] = (), **options: Hashable) -> Layer:
    return Layer(kind, tuple(options.items()), children)


def _sides(low: int = 1, high: int = _MAX_SIDE) -> st.SearchStrategy[int]:
    return st.integers(low, high)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _mixed_dtypes() -> tuple[str, ...]:
    supported = {str(d).removeprefix("torch.") for d in probe().dtypes}
    return tuple(name for name in ("float64", "bfloat16") if name in supported)


def _values_per_channel(s: _Stream) -> int:
    return s.shape[0] * math.prod(s.spatial)


def _largest_input(kind: str) -> _Stream:
    if kind == "tokens":
        return _Stream(kind, (_MAX_BATCH, _MAX_SIDE), _MAX_SIDE)
    rank = {"vector": 0, "sequence": 1}.get(kind, _GRID_DIMS.get(kind, 0))
    return _Stream(kind, (_MAX_BATCH, _MAX_SIDE, *[_MAX_SIDE] * rank))


# --- how each family's layers are drawn -----------------------------------------------------


@st.composite
def _linears(draw, s: _Stream, context: _Context):
    out = s.shape[-1] if context.preserve else draw(_sides())
    layer = _layer("linear", in_features=s.shape[-1], out_features=out, bias=draw(st.booleans()))
    return layer, s.with_last(out)


@st.composite
def _activations(draw, s: _Stream, context: _Context):
    name = draw(st.sampled_from(_ACTIVATIONS))
    parameters = draw(st.sampled_from((1, s.shape[1]))) if name == "prelu" else 0
    return _layer("activation", name=name, num_parameters=parameters), s


@st.composite
def _dropouts(draw, s: _Stream, context: _Context):
    return _layer("dropout", dropout=draw(st.sampled_from((0.0, 0.5)))), s


@st.composite
def _layer_norms(draw, s: _Stream, context: _Context):
    layer = _layer(
        "layer_norm", normalized_shape=s.shape[-1], elementwise_affine=draw(st.booleans())
    )
    return layer, s


@st.composite
def _batch_norms(draw, s: _Stream, context: _Context):
    layer = _layer(
        "batch_norm",
        dims=max(1, len(s.spatial)),
        num_features=s.shape[1],
        affine=draw(st.booleans()),
        momentum=draw(st.sampled_from((0.1, None))),
    )
    return layer, s


def _convolutions(kind: str):
    @st.composite
    def draw_convolution(draw, s: _Stream, context: _Context):
        channels = s.shape[1]
        if context.preserve:
            out, kernel, stride = channels, draw(st.sampled_from((1, 3))), 1
            padding = kernel // 2
        else:
            out = draw(_sides())
            padding = draw(st.integers(0, 1))
            kernel = draw(st.integers(1, min(3, min(s.spatial) + 2 * padding)))
            stride = draw(st.integers(1, 2))
        common = [d for d in _divisors(channels) if out % d == 0]
        modes = ("zeros", "reflect", "circular") if 0 < padding < min(s.spatial) else ("zeros",)
        layer = _layer(
            kind,
            in_channels=channels,
            out_channels=out,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            groups=draw(st.sampled_from(common)),
            bias=draw(st.booleans()),
            padding_mode=draw(st.sampled_from(modes)),
        )
        spatial = tuple((side + 2 * padding - kernel) // stride + 1 for side in s.spatial)
        return layer, _Stream(s.kind, (s.shape[0], out, *spatial))

    return draw_convolution


@st.composite
def _transposed_convolutions(draw, s: _Stream, context: _Context):
    largest = max(s.spatial)
    if context.preserve:
        out, kernel, stride = s.shape[1], 1, 1
    else:
        out = draw(_sides())
        fitting = [
            (k, t) for k in (1, 2) for t in (1, 2) if (largest - 1) * t + k <= _MAX_GROWN_SIDE
        ]
        kernel, stride = draw(st.sampled_from(fitting))
    layer = _layer(
        "conv_transpose",
        dims=len(s.spatial),
        in_channels=s.shape[1],
        out_channels=out,
        kernel_size=kernel,
        stride=stride,
        bias=draw(st.booleans()),
    )
    spatial = tuple((side - 1) * stride + kernel for side in s.spatial)
    return layer, _Stream(s.kind, (s.shape[0], out, *spatial))


@st.composite
def _poolings(draw, s: _Stream, context: _Context):
    smallest = min(s.spatial)
    if context.preserve:
        operation, size = draw(st.sampled_from(("max", "avg"))), 1
    else:
        operation = draw(st.sampled_from(("max", "avg", "adaptive_avg", "adaptive_max")))
        high = smallest if operation.startswith("adaptive") else min(2, smallest)
        size = draw(_sides(1, high))
    layer = _layer("pooling", dims=len(s.spatial), operation=operation, size=size)
    if operation.startswith("adaptive"):
        spatial = (size,) * len(s.spatial)
    else:
        spatial = tuple(side // size for side in s.spatial)
    return layer, _Stream(s.kind, (s.shape[0], s.shape[1], *spatial))


@st.composite
def _group_norms(draw, s: _Stream, context: _Context):
    channels = s.shape[1]
    layer = _layer(
        "group_norm",
        # A group needs more than one value in train mode.
        num_groups=draw(
            st.sampled_from(
                [g for g in _divisors(channels) if channels // g * math.prod(s.spatial) > 1]
            )
        ),
        num_channels=channels,
        affine=draw(st.booleans()),
    )
    return layer, s


@st.composite
def _instance_norms(draw, s: _Stream, context: _Context):
    layer = _layer(
        "instance_norm",
        dims=len(s.spatial),
        num_features=s.shape[1],
        affine=draw(st.booleans()),
    )
    return layer, s


@st.composite
def _bilinears(draw, s: _Stream, context: _Context):
    out = s.shape[-1] if context.preserve else draw(_sides())
    layer = _layer("bilinear", in_features=s.shape[-1], out_features=out, bias=draw(st.booleans()))
    return layer, s.with_last(out)


@st.composite
def _embeddings(draw, s: _Stream, context: _Context):
    dim = draw(_sides())
    layer = _layer(
        "embedding",
        num_embeddings=s.vocabulary,
        embedding_dim=dim,
        # A padding row in a one-row table would leave no trainable row.
        padding_idx=draw(st.sampled_from((None, 0) if s.vocabulary > 1 else (None,))),
        sparse=draw(st.booleans()),
    )
    return layer, _Stream("sequence", (*s.shape, dim))


@st.composite
def _embedding_bags(draw, s: _Stream, context: _Context):
    dim = draw(_sides())
    mode = draw(st.sampled_from(("mean", "sum", "max")))
    layer = _layer(
        "embedding_bag",
        num_embeddings=s.vocabulary,
        embedding_dim=dim,
        mode=mode,
        # PyTorch has no sparse gradient for mode="max".
        sparse=mode != "max" and draw(st.booleans()),
    )
    return layer, _Stream("vector", (s.shape[0], dim))


def _recurrents(kind: str):
    @st.composite
    def draw_recurrent(draw, s: _Stream, context: _Context):
        features = s.shape[-1]
        if context.preserve:
            hidden, layers, bidirectional, projection = features, 1, False, 0
        else:
            hidden = draw(_sides())
            layers = draw(st.integers(1, 2))
            bidirectional = draw(st.booleans())
            projection = draw(st.integers(0, hidden - 1)) if kind == "lstm" else 0
        options = {
            "input_size": features,
            "hidden_size": hidden,
            "num_layers": layers,
            "bidirectional": bidirectional,
            "bias": draw(st.booleans()),
            "dropout": draw(st.sampled_from((0.0, 0.5))) if layers > 1 else 0.0,
        }
        if kind == "lstm":
            options["proj_size"] = projection
        if kind == "rnn":
            options["nonlinearity"] = draw(st.sampled_from(("tanh", "relu")))
        out = (projection or hidden) * (2 if bidirectional else 1)
        return _layer(kind, **options), s.with_last(out)

    return draw_recurrent


@st.composite
def _attentions(draw, s: _Stream, context: _Context):
    dim = s.shape[-1]
    layer = _layer(
        "multihead_attention",
        embed_dim=dim,
        num_heads=draw(st.sampled_from(_divisors(dim))),
        # Without a bias, the eval forward of 1.13.1 and 2.0.1 fails (finding 18).
        bias=draw(st.booleans()) if multihead_attention_without_bias_runs() else True,
        add_bias_kv=draw(st.booleans()),
        add_zero_attn=draw(st.booleans()),
        need_weights=draw(st.booleans()),
    )
    return layer, s


@st.composite
def _encoder_layers(draw, s: _Stream, context: _Context):
    dim = s.shape[-1]
    layer = _layer(
        "transformer_encoder_layer",
        d_model=dim,
        nhead=draw(st.sampled_from(_divisors(dim))),
        dim_feedforward=draw(_sides()),
        dropout=draw(st.sampled_from((0.0, 0.1))),
        activation=draw(st.sampled_from(("relu", "gelu"))),
        norm_first=draw(st.booleans()),
    )
    return layer, s


@st.composite
def _buffer_holders(draw, s: _Stream, context: _Context):
    layer = _layer("buffers", features=s.shape[-1], persistent_scale=draw(st.booleans()))
    return layer, s


@st.composite
def _frozen_linears(draw, s: _Stream, context: _Context):
    out = s.shape[-1] if context.preserve else draw(_sides())
    bias = draw(st.booleans())
    layer = _layer(
        "frozen",
        in_features=s.shape[-1],
        out_features=out,
        bias=bias,
        frozen=draw(st.sampled_from(("all", "weight"))) if bias else "all",
    )
    return layer, s.with_last(out)


@st.composite
def _parametrized_linears(draw, s: _Stream, context: _Context):
    out = s.shape[-1] if context.preserve else draw(_sides())
    layer = _layer(
        "parametrization",
        in_features=s.shape[-1],
        out_features=out,
        bias=draw(st.booleans()),
        parametrization=draw(st.sampled_from(weight_parametrizations())),
    )
    return layer, s.with_last(out)


@st.composite
def _lazies(draw, s: _Stream, context: _Context):
    dims = len(s.spatial)
    incoming = s.shape[1] if s.grid else s.shape[-1]
    out = incoming if context.preserve else draw(_sides())
    initialized = draw(st.booleans()) if context.allow_uninitialized else True
    layer = _layer(
        "lazy", dims=dims, in_features=incoming, out_features=out, initialized=initialized
    )
    if s.grid:
        return layer, _Stream(s.kind, (s.shape[0], out, *s.spatial))
    return layer, s.with_last(out)


@st.composite
def _mixed_dtype_blocks(draw, s: _Stream, context: _Context):
    out = s.shape[-1] if context.preserve else draw(_sides())
    layer = _layer(
        "mixed_dtype",
        dtype=draw(st.sampled_from(_mixed_dtypes())),
        in_features=s.shape[-1],
        out_features=out,
        bias=draw(st.booleans()),
    )
    return layer, s.with_last(out)


@st.composite
def _container_blocks(draw, s: _Stream, context: _Context):
    container = draw(
        st.sampled_from(("parameter_list", "parameter_dict", "module_list", "module_dict"))
    )
    if container.startswith("parameter"):
        return _layer("containers", container=container, features=s.shape[-1]), s
    children, out = _bodies(draw, s, context.deeper(preserve=context.preserve))
    return _layer("containers", children, container=container, features=0), out


@st.composite
def _residual_blocks(draw, s: _Stream, context: _Context):
    children, _ = _bodies(draw, s, context.deeper(preserve=True))
    return _layer("residual", children), s


@st.composite
def _nested_blocks(draw, s: _Stream, context: _Context):
    children, out = _bodies(draw, s, context.deeper(preserve=context.preserve))
    return _layer("nested", children), out


@st.composite
def _tied_models(draw, s: _Stream, context: _Context):
    dim = draw(_sides())
    embedded = _Stream("sequence", (*s.shape, dim))
    children, _ = _bodies(draw, embedded, context.deeper(preserve=True))
    layer = _layer(
        "tied",
        children,
        num_embeddings=s.vocabulary,
        embedding_dim=dim,
        head_bias=draw(st.booleans()),
    )
    return layer, _Stream("sequence", (*s.shape, s.vocabulary))


def _flattens(s: _Stream, context: _Context):
    return st.just((_layer("flatten"), _Stream("vector", (s.shape[0], math.prod(s.shape[1:])))))


# --- how each family's layers are built -----------------------------------------------------


def _option_kwargs(layer: Layer, *names: str) -> dict:
    return {name: layer.option(name) for name in names}


def _linear(layer: Layer, builder: Builder | None = None) -> nn.Linear:
    return nn.Linear(**_option_kwargs(layer, "in_features", "out_features", "bias"))


_ACTIVATION_CLASSES = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


def _activation(layer: Layer, builder: Builder) -> nn.Module:
    name = layer.option("name")
    if name == "prelu":
        return nn.PReLU(layer.option("num_parameters"))
    return _ACTIVATION_CLASSES[name]()


def _convolution(dims: int) -> Callable[[Layer, Builder], nn.Module]:
    def build(layer: Layer, builder: Builder) -> nn.Module:
        names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups")
        module = getattr(nn, f"Conv{dims}d")
        return module(**_option_kwargs(layer, *names, "bias", "padding_mode"))

    return build


def _transposed_convolution(layer: Layer, builder: Builder) -> nn.Module:
    names = ("in_channels", "out_channels", "kernel_size", "stride", "bias")
    return getattr(nn, f"ConvTranspose{layer.option('dims')}d")(**_option_kwargs(layer, *names))


def _pooling(layer: Layer, builder: Builder) -> nn.Module:
    names = {"max": "MaxPool", "avg": "AvgPool", "adaptive_avg": "AdaptiveAvgPool"}
    names["adaptive_max"] = "AdaptiveMaxPool"
    pool = getattr(nn, f"{names[layer.option('operation')]}{layer.option('dims')}d")
    return pool(layer.option("size"))


def _recurrent(module: type[nn.Module]) -> Callable[[Layer, Builder], nn.Module]:
    def build(layer: Layer, builder: Builder) -> nn.Module:
        kwargs = dict(layer.options)
        if not kwargs.get("proj_size", 1):
            del kwargs["proj_size"]
        return module(batch_first=True, **kwargs)

    return build


def _parametrized(layer: Layer, builder: Builder) -> nn.Module:
    from torch.nn.utils import parametrizations

    name = layer.option("parametrization")
    if name not in weight_parametrizations():
        raise InvalidArgument(f"torch.nn.utils.parametrizations has no {name} here")
    return getattr(parametrizations, name)(_linear(layer))


def _frozen(layer: Layer, builder: Builder) -> nn.Module:
    module = _linear(layer)
    frozen = module.parameters() if layer.option("frozen") == "all" else [module.weight]
    for parameter in frozen:
        parameter.requires_grad_(False)
    return module


def _lazy(layer: Layer, builder: Builder) -> nn.Module:
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


def _mixed_dtype(layer: Layer, builder: Builder) -> nn.Module:
    dtype = getattr(torch, layer.option("dtype"))
    return CastBlock(_linear(layer).to(dtype), dtype)


def _container(layer: Layer, builder: Builder) -> nn.Module:
    container = layer.option("container")
    if container == "parameter_list":
        return ParameterListAffine(layer.option("features"))
    if container == "parameter_dict":
        return ParameterDictAffine(layer.option("features"))
    children = [builder.layer(child) for child in layer.children]
    return ModuleListBlock(children) if container == "module_list" else ModuleDictBlock(children)


def _tied(layer: Layer, builder: Builder) -> nn.Module:
    return TiedEmbeddingModel(
        nn.Embedding(layer.option("num_embeddings"), layer.option("embedding_dim")),
        builder.body(layer.children),
        layer.option("head_bias"),
    )


def _bias(options: Mapping[str, Any]) -> tuple[int, ...]:
    return (1,) if options.get("bias") else ()


# --- the registry -----------------------------------------------------------------------------

# Each record says in one place what a family accepts, how it is drawn and built, and what its
# layers hold. The order is the strategies' preference, simplest first: a failure shrinks
# toward the first family that reproduces it.
FAMILY_REGISTRY: tuple[Family, ...] = (
    Family(
        "linear",
        builds="nn.Linear",
        accepts=lambda s: s.kind in ("vector", "sequence"),
        draw=_linears,
        build=_linear,
        trainable_ranks=lambda o: (2, *_bias(o)),
    ),
    Family(
        "activation",
        builds="an activation: ReLU, Tanh, Sigmoid, LeakyReLU, ELU, GELU, SiLU, Softplus or "
        "PReLU (one weight or one per channel)",
        accepts=lambda s: s.kind != "tokens",
        draw=_activations,
        build=_activation,
        trainable_ranks=lambda o: (1,) if o["name"] == "prelu" else (),
    ),
    Family(
        "dropout",
        builds="nn.Dropout with p 0 or 0.5",
        accepts=lambda s: s.kind != "tokens",
        draw=_dropouts,
        build=lambda layer, builder: nn.Dropout(layer.option("dropout")),
        has_dropout=True,
    ),
    Family(
        "layer_norm",
        builds="nn.LayerNorm over the last dimension, affine or not",
        accepts=lambda s: s.kind != "tokens",
        draw=_layer_norms,
        build=lambda layer, builder: nn.LayerNorm(
            **_option_kwargs(layer, "normalized_shape", "elementwise_affine")
        ),
        trainable_ranks=lambda o: (1,) if o["elementwise_affine"] else (),
    ),
    Family(
        "batch_norm",
        builds="nn.BatchNorm1d, 2d or 3d, affine or not, momentum 0.1 or None",
        accepts=lambda s: (s.kind == "vector" or s.grid) and _values_per_channel(s) > 1,
        draw=_batch_norms,
        build=lambda layer, builder: getattr(nn, f"BatchNorm{layer.option('dims')}d")(
            **_option_kwargs(layer, "num_features", "affine", "momentum")
        ),
        trainable_ranks=lambda o: (1,) if o["affine"] else (),
        # Train mode needs more than one value per channel.
        min_batch=2,
    ),
    *(
        Family(
            f"conv{dims}d",
            builds=f"nn.Conv{dims}d: padding, stride, groups, padding modes",
            accepts=lambda s, kind=kind: s.kind == kind,
            draw=_convolutions(f"conv{dims}d"),
            build=_convolution(dims),
            trainable_ranks=lambda o, dims=dims: (dims + 2, *_bias(o)),
        )
        for dims, kind in ((1, "signal"), (2, "image"), (3, "volume"))
    ),
    Family(
        "conv_transpose",
        builds="nn.ConvTranspose1d, 2d or 3d",
        accepts=lambda s: s.grid,
        draw=_transposed_convolutions,
        build=_transposed_convolution,
        trainable_ranks=lambda o: (o["dims"] + 2, *_bias(o)),
    ),
    Family(
        "pooling",
        builds="max, average, adaptive max or adaptive average pooling, 1d to 3d",
        accepts=lambda s: s.grid,
        draw=_poolings,
        build=_pooling,
    ),
    Family(
        "group_norm",
        builds="nn.GroupNorm, affine or not",
        accepts=lambda s: (s.kind == "vector" or s.grid) and s.shape[1] * math.prod(s.spatial) > 1,
        draw=_group_norms,
        build=lambda layer, builder: nn.GroupNorm(
            **_option_kwargs(layer, "num_groups", "num_channels", "affine")
        ),
        trainable_ranks=lambda o: (1,) if o["affine"] else (),
        # A group needs more than one value per group, hence two channels.
        min_channels=2,
    ),
    Family(
        "instance_norm",
        builds="nn.InstanceNorm1d, 2d or 3d with running statistics, affine or not",
        accepts=lambda s: s.grid and math.prod(s.spatial) > 1,
        draw=_instance_norms,
        build=lambda layer, builder: getattr(nn, f"InstanceNorm{layer.option('dims')}d")(
            **_option_kwargs(layer, "num_features", "affine"), track_running_stats=True
        ),
        trainable_ranks=lambda o: (1,) if o["affine"] else (),
        # Instance statistics need more than one value per channel.
        min_first_side=2,
    ),
    Family(
        "bilinear",
        builds="nn.Bilinear of the input with itself",
        accepts=lambda s: s.kind == "vector",
        draw=_bilinears,
        build=lambda layer, builder: SelfBilinear(
            nn.Bilinear(
                layer.option("in_features"),
                layer.option("in_features"),
                layer.option("out_features"),
                bias=layer.option("bias"),
            )
        ),
        trainable_ranks=lambda o: (3, *_bias(o)),
    ),
    Family(
        "embedding",
        builds="nn.Embedding, with or without padding_idx, dense or sparse gradients",
        accepts=lambda s: s.kind == "tokens",
        draw=_embeddings,
        build=lambda layer, builder: nn.Embedding(**dict(layer.options)),
        trainable_ranks=lambda o: (2,),
        sparse_gradients=True,
    ),
    Family(
        "embedding_bag",
        builds="nn.EmbeddingBag (mean, sum or max), dense or sparse gradients",
        accepts=lambda s: s.kind == "tokens",
        draw=_embedding_bags,
        build=lambda layer, builder: nn.EmbeddingBag(**dict(layer.options)),
        trainable_ranks=lambda o: (2,),
        sparse_gradients=True,
    ),
    *(
        Family(
            name,
            builds=f"{module}: batch first, 1 or 2 layers, bidirectional or not{extra}",
            accepts=lambda s: s.kind == "sequence",
            draw=_recurrents(name),
            build=_recurrent(getattr(nn, module.removeprefix("nn."))),
            trainable_ranks=lambda o: (2, *_bias(o)),
            has_dropout=True,
        )
        for name, module, extra in (
            ("rnn", "nn.RNN", ", tanh or relu"),
            ("gru", "nn.GRU", ""),
            ("lstm", "nn.LSTM", ", with or without projections"),
        )
    ),
    Family(
        "multihead_attention",
        builds="nn.MultiheadAttention as self-attention, with bias_kv and zero_attn or not",
        accepts=lambda s: s.kind == "sequence",
        draw=_attentions,
        build=lambda layer, builder: SelfAttention(
            nn.MultiheadAttention(
                batch_first=True,
                **_option_kwargs(
                    layer, "embed_dim", "num_heads", "bias", "add_bias_kv", "add_zero_attn"
                ),
            ),
            layer.option("need_weights"),
        ),
        trainable_ranks=lambda o: (2, *_bias(o), *((3,) if o["add_bias_kv"] else ())),
    ),
    Family(
        "transformer_encoder_layer",
        builds="nn.TransformerEncoderLayer, batch first, norm first or not",
        accepts=lambda s: s.kind == "sequence",
        draw=_encoder_layers,
        build=lambda layer, builder: nn.TransformerEncoderLayer(
            batch_first=True, **dict(layer.options)
        ),
        trainable_ranks=lambda o: (2, 1),
        has_dropout=True,
    ),
    Family(
        "buffers",
        builds="a module of buffers: persistent and not, and a count of train-mode calls",
        accepts=lambda s: s.kind != "tokens",
        draw=_buffer_holders,
        build=lambda layer, builder: BufferHolder(
            layer.option("features"), layer.option("persistent_scale")
        ),
    ),
    Family(
        "frozen",
        builds="nn.Linear with every parameter, or the weight only, frozen",
        accepts=lambda s: s.kind in ("vector", "sequence"),
        draw=_frozen_linears,
        build=_frozen,
        trainable_ranks=lambda o: () if o["frozen"] == "all" else (1,),
    ),
    Family(
        "parametrization",
        builds="nn.Linear with weight_norm, spectral_norm or orthogonal on its weight",
        accepts=lambda s: s.kind in ("vector", "sequence"),
        draw=_parametrized_linears,
        build=_parametrized,
        trainable_ranks=lambda o: (2, *_bias(o)),
        available=lambda: bool(weight_parametrizations()),
        needs="a parametrization in torch.nn.utils.parametrizations",
        # PyTorch refuses to pickle parametrized modules: only their state_dict is saved.
        whole_model_picklable=False,
    ),
    Family(
        "lazy",
        builds="nn.LazyLinear or nn.LazyConv1d, 2d or 3d, initialized or not",
        accepts=lambda s: s.kind in ("vector", "sequence") or s.grid,
        draw=_lazies,
        build=_lazy,
        # LazyLinear and LazyConv{1,2,3}d, each with a bias.
        trainable_ranks=lambda o: (o["dims"] + 2 if o["dims"] else 2, 1),
        lazy=True,
    ),
    Family(
        "mixed_dtype",
        builds="nn.Linear in float64 or bfloat16 in a float32 model, casting in and out",
        accepts=lambda s: s.kind != "tokens",
        draw=_mixed_dtype_blocks,
        build=_mixed_dtype,
        trainable_ranks=lambda o: (2, *_bias(o)),
        available=lambda: bool(_mixed_dtypes()),
        needs="float64 or bfloat16 tensors that save and load",
        casts=True,
    ),
    Family(
        "containers",
        builds="nn.ParameterList or nn.ParameterDict of an affine map, or nn.ModuleList or "
        "nn.ModuleDict of a body",
        accepts=lambda s: s.kind != "tokens",
        draw=_container_blocks,
        build=_container,
        trainable_ranks=lambda o: (1,) if o["container"].startswith("parameter") else (),
        wraps=True,
    ),
    Family(
        "residual",
        builds="x + body(x), with a body that keeps the shape",
        accepts=lambda s: s.kind != "tokens",
        draw=_residual_blocks,
        build=lambda layer, builder: Residual(builder.body(layer.children)),
        wraps=True,
    ),
    Family(
        "nested",
        builds="a custom module holding a custom module of a body",
        accepts=lambda s: s.kind != "tokens",
        draw=_nested_blocks,
        build=lambda layer, builder: NestedBlock(builder.body(layer.children)),
        wraps=True,
    ),
    Family(
        "tied",
        builds="embedding, body and an output head whose weight is the embedding's",
        accepts=lambda s: s.kind == "tokens",
        draw=_tied_models,
        build=_tied,
        trainable_ranks=lambda o: (2, 1) if o["head_bias"] else (2,),
        wraps=True,
    ),
)

#: Every family name, simplest first: the order in which the strategies prefer them.
FAMILIES: tuple[str, ...] = tuple(record.name for record in FAMILY_REGISTRY)

# Flattening reshapes the data between two families so that one taking vectors can follow;
# it belongs to no family and is never drawn first (see _candidates).
_FLATTEN = Family(
    "flatten",
    builds="nn.Flatten(1)",
    accepts=lambda s: s.kind == "sequence" or s.grid,
    draw=_flattens,
    build=lambda layer, builder: nn.Flatten(1),
)

_KINDS: dict[str, Family] = {record.name: record for record in (*FAMILY_REGISTRY, _FLATTEN)}


def family(name: str) -> Family:
    """The record of family ``name`` (a name in :data:`FAMILIES`)."""
    record = _KINDS.get(name)
    if record is None or record is _FLATTEN:
        raise InvalidArgument(f"{name!r} is no family; the families are {list(FAMILIES)!r}")
    return record


def layer_kind(kind: str) -> Family:
    """The record that draws and builds layers of ``kind``: a family, or ``"flatten"``."""
    record = _KINDS.get(kind)
    if record is None:
        raise InvalidArgument(
            f"a layer of kind {kind!r} has no family; the kinds are {sorted(_KINDS)!r}"
        )
    return record


def available_families() -> tuple[str, ...]:
    """The families the installed torch can build, simplest first."""
    return tuple(
        record.name
        for record in FAMILY_REGISTRY
        if any(record.applies(_largest_input(kind)) for kind in _INPUT_KINDS)
    )


# --- drawing a model ---------------------------------------------------------------------------


def _candidates(s: _Stream, context: _Context, first: bool) -> list[str]:
    kinds = [
        name
        for name in context.families
        if family(name).applies(s) and not (family(name).wraps and context.depth >= _MAX_DEPTH)
    ]
    flattenable = (s.kind == "sequence" or s.grid) and math.prod(s.shape[1:]) <= _MAX_FLATTENED
    vector = _Stream("vector", (s.shape[0], math.prod(s.shape[1:])))
    if (
        not first
        and not context.preserve
        and flattenable
        and any(family(name).applies(vector) for name in context.families)
    ):
        kinds.append(_FLATTEN.name)
    return kinds


def _bodies(
    draw, s: _Stream, context: _Context, started: bool = False
) -> tuple[tuple[Layer, ...], _Stream]:
    """Draw up to ``_MAX_LAYERS`` layers, threading the data ``s`` through them.

    ``started`` says a layer already precedes the body, so it may begin by flattening.
    """
    layers: list[Layer] = []
    while len(layers) < _MAX_LAYERS:
        if not draw(st.booleans()):
            break
        kinds = _candidates(s, context, first=not (layers or started))
        if not kinds:
            break
        layer, s = draw(layer_kind(draw(st.sampled_from(kinds))).draw(s, context))
        layers.append(layer)
    return tuple(layers), s


@st.composite
def _inputs(draw, kind: str, first: Family) -> _Stream:
    """Input data of ``kind`` that the family ``first`` accepts."""
    batch = draw(st.integers(first.min_batch, _MAX_BATCH))
    if kind == "tokens":
        vocabulary = draw(_sides())
        return _Stream(kind, (batch, draw(_sides())), vocabulary)
    channels = draw(_sides(first.min_channels))
    if kind == "vector":
        return _Stream(kind, (batch, channels))
    if kind == "sequence":
        return _Stream(kind, (batch, draw(_sides()), channels))
    spatial = [draw(_sides(first.min_first_side if i == 0 else 1)) for i in range(_GRID_DIMS[kind])]
    return _Stream(kind, (batch, channels, *spatial))


def _check_families(families: Iterable[str] | None) -> tuple[str, ...]:
    available = available_families()
    chosen = collection_argument(
        families, name="families", item_type=str, example="['linear', 'conv2d']"
    )
    if chosen is None:
        return available
    check_names(chosen, name="families", known=FAMILIES, available=available)
    return tuple(name for name in FAMILIES if name in chosen)


@st.composite
def _model_specs(draw, families: tuple[str, ...], allow_uninitialized: bool) -> ModelSpec:
    context = _Context(families, allow_uninitialized)
    first = family(draw(st.sampled_from(families)))
    kind = draw(st.sampled_from([k for k in _INPUT_KINDS if first.applies(_largest_input(k))]))
    source = draw(_inputs(kind, first))
    layer, s = draw(first.draw(source, context))
    rest, _ = _bodies(draw, s, context, started=True)
    spec = ModelSpec(InputSpec(kind, source.shape, source.vocabulary), (layer, *rest))
    for name in sorted(spec.families):
        event(f"family: {name}")
    return spec


def model_specs(
    families: Iterable[str] | None = None, *, allow_uninitialized: bool = True
) -> st.SearchStrategy[ModelSpec]:
    """Specs of small models built only from the given families (every available one if None).

    Each spec holds at least one layer, and every layer belongs to one of ``families``
    (``"flatten"`` may join them to reach a family that takes vectors). The input kind and
    the first family are drawn first, then the shape, then each further layer among those
    that accept the current shape. A ``lazy`` layer is drawn initialized or not; with
    ``allow_uninitialized=False`` it is always initialized, so that every parameter of the
    built model has its shape before the first forward (what an optimizer or a
    ``load_state_dict`` into a fresh model needs).

    Shrinks toward a single layer of the simplest family (in the order of
    :data:`FAMILIES`), a vector input, batch size 1, sides of 1, default options, and no
    nesting.
    """
    check_bool(allow_uninitialized, name="allow_uninitialized")
    return _model_specs(_check_families(families), allow_uninitialized)
