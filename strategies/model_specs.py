"""Plain descriptions of small PyTorch models, and strategies that draw them.

A :class:`ModelSpec` is the input a model takes and the tuple of :class:`Layer` it applies in
order. Every layer records all it needs to be built (input sizes included), so a spec is
plain, hashable data that prints readably in a failure report and can be pasted into
``@example``. The strategies thread the shape of the data through the draw: each layer is
chosen among those that accept the current shape and yields the next one, so every drawn
spec builds a model that runs, without filtering. :mod:`strategies.models` builds modules.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from hypothesis import event
from hypothesis import strategies as st

from harness.capabilities import probe, weight_parametrizations
from strategies._arguments import check_bool, check_names, collection_argument

__all__ = [
    "FAMILIES",
    "InputSpec",
    "Layer",
    "ModelSpec",
    "available_families",
    "model_specs",
]

#: Every family name, simplest first: the order in which the strategies prefer them.
FAMILIES = (
    "linear",
    "activation",
    "dropout",
    "layer_norm",
    "batch_norm",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose",
    "pooling",
    "group_norm",
    "instance_norm",
    "bilinear",
    "embedding",
    "embedding_bag",
    "rnn",
    "gru",
    "lstm",
    "multihead_attention",
    "transformer_encoder_layer",
    "buffers",
    "frozen",
    "parametrization",
    "lazy",
    "mixed_dtype",
    "containers",
    "residual",
    "nested",
    "tied",
)

# Layer kinds that only reshape the data between families; they belong to no family.
_GLUE = ("flatten",)

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
_RECURRENT = ("rnn", "gru", "lstm")
_WRAPPING = ("containers", "residual", "nested", "tied")


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
        return frozenset(layer.kind for layer in self.walk() if layer.kind not in _GLUE)

    @property
    def has_sparse_gradients(self) -> bool:
        """Whether an Embedding or EmbeddingBag with ``sparse=True`` is present."""
        return any(
            layer.kind in ("embedding", "embedding_bag") and layer.option("sparse")
            for layer in self.walk()
        )

    @property
    def has_dropout(self) -> bool:
        """Whether a train-mode forward draws random numbers (a dropout with ``p > 0``)."""
        return any(
            layer.kind in ("dropout", "transformer_encoder_layer", *_RECURRENT)
            and layer.option("dropout") > 0
            for layer in self.walk()
        )

    @property
    def whole_model_picklable(self) -> bool:
        """Whether ``torch.save(module)`` works: PyTorch refuses to pickle parametrized modules
        and supports them only through ``state_dict()``."""
        return "parametrization" not in self.families

    @property
    def has_uninitialized_parameters(self) -> bool:
        """Whether a lazy module is left uninitialized until the first forward."""
        return any(
            layer.kind == "lazy" and not layer.option("initialized") for layer in self.walk()
        )

    @property
    def trainable_parameter_ranks(self) -> frozenset[int]:
        """The numbers of dimensions of the trainable parameters of the built model (a lazy
        module's as they are once it is initialized); empty when nothing is trainable."""
        return frozenset(rank for layer in self.walk() for rank in _trainable_ranks(layer))

    @property
    def dtypes(self) -> frozenset[torch.dtype]:
        """The floating-point dtypes of the parameters and buffers: float32, plus the dtype
        of every ``mixed_dtype`` block (which casts its input to it and its output back)."""
        mixed = (layer.option("dtype") for layer in self.walk() if layer.kind == "mixed_dtype")
        return frozenset({torch.float32, *(getattr(torch, name) for name in mixed)})


def _trainable_ranks(layer: Layer) -> tuple[int, ...]:
    """The numbers of dimensions of the trainable parameters ``layer`` itself holds (those
    of its children not included), as :mod:`strategies.models` builds it."""
    kind, options = layer.kind, dict(layer.options)
    bias = (1,) if options.get("bias") else ()
    if kind in ("linear", "parametrization", "mixed_dtype", "rnn", "gru", "lstm"):
        return (2, *bias)
    if kind in ("conv1d", "conv2d", "conv3d"):
        return (int(kind[4]) + 2, *bias)
    if kind == "conv_transpose":
        return (options["dims"] + 2, *bias)
    if kind == "bilinear":
        return (3, *bias)
    if kind in ("embedding", "embedding_bag"):
        return (2,)
    if kind == "tied":
        return (2, 1) if options["head_bias"] else (2,)
    if kind == "multihead_attention":
        return (2, *bias, *((3,) if options["add_bias_kv"] else ()))
    if kind == "transformer_encoder_layer":
        return (2, 1)
    if kind == "lazy":
        # LazyLinear and LazyConv{1,2,3}d, each with a bias.
        return (options["dims"] + 2 if options["dims"] else 2, 1)
    if kind == "activation":
        return (1,) if options["name"] == "prelu" else ()
    if kind == "layer_norm":
        return (1,) if options["elementwise_affine"] else ()
    if kind in ("batch_norm", "group_norm", "instance_norm"):
        return (1,) if options["affine"] else ()
    if kind == "frozen":
        return () if options["frozen"] == "all" else (1,)
    if kind == "containers":
        return (1,) if options["container"].startswith("parameter") else ()
    # dropout, pooling, buffers, residual, nested, flatten: no parameter of their own.
    return ()


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


# Whether a family accepts data ``s``.
_APPLIES = {
    "linear": lambda s: s.kind in ("vector", "sequence"),
    "activation": lambda s: s.kind != "tokens",
    "dropout": lambda s: s.kind != "tokens",
    "layer_norm": lambda s: s.kind != "tokens",
    "batch_norm": lambda s: (s.kind == "vector" or s.grid) and _values_per_channel(s) > 1,
    "conv1d": lambda s: s.kind == "signal",
    "conv2d": lambda s: s.kind == "image",
    "conv3d": lambda s: s.kind == "volume",
    "conv_transpose": lambda s: s.grid,
    "pooling": lambda s: s.grid,
    "group_norm": lambda s: (
        (s.kind == "vector" or s.grid) and s.shape[1] * math.prod(s.spatial) > 1
    ),
    "instance_norm": lambda s: s.grid and math.prod(s.spatial) > 1,
    "bilinear": lambda s: s.kind == "vector",
    "embedding": lambda s: s.kind == "tokens",
    "embedding_bag": lambda s: s.kind == "tokens",
    "rnn": lambda s: s.kind == "sequence",
    "gru": lambda s: s.kind == "sequence",
    "lstm": lambda s: s.kind == "sequence",
    "multihead_attention": lambda s: s.kind == "sequence",
    "transformer_encoder_layer": lambda s: s.kind == "sequence",
    "buffers": lambda s: s.kind != "tokens",
    "frozen": lambda s: s.kind in ("vector", "sequence"),
    "parametrization": lambda s: (
        s.kind in ("vector", "sequence") and bool(weight_parametrizations())
    ),
    "lazy": lambda s: s.kind in ("vector", "sequence") or s.grid,
    "mixed_dtype": lambda s: s.kind != "tokens" and bool(_mixed_dtypes()),
    "containers": lambda s: s.kind != "tokens",
    "residual": lambda s: s.kind != "tokens",
    "nested": lambda s: s.kind != "tokens",
    "tied": lambda s: s.kind == "tokens",
}


def available_families() -> tuple[str, ...]:
    """The families the installed torch can build, simplest first."""
    return tuple(
        name
        for name in FAMILIES
        if any(_APPLIES[name](_largest_input(kind)) for kind in _INPUT_KINDS)
    )


def _largest_input(kind: str) -> _Stream:
    if kind == "tokens":
        return _Stream(kind, (_MAX_BATCH, _MAX_SIDE), _MAX_SIDE)
    rank = {"vector": 0, "sequence": 1}.get(kind, _GRID_DIMS.get(kind, 0))
    return _Stream(kind, (_MAX_BATCH, _MAX_SIDE, *[_MAX_SIDE] * rank))


@dataclass(frozen=True)
class _Context:
    """What every layer draw needs besides the data.

    Attributes:
        families: the families allowed.
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


def _candidates(s: _Stream, context: _Context, first: bool) -> list[str]:
    kinds = [
        name
        for name in context.families
        if _APPLIES[name](s) and not (name in _WRAPPING and context.depth >= _MAX_DEPTH)
    ]
    flattenable = (s.kind == "sequence" or s.grid) and math.prod(s.shape[1:]) <= _MAX_FLATTENED
    vector = _Stream("vector", (s.shape[0], math.prod(s.shape[1:])))
    if (
        not first
        and not context.preserve
        and flattenable
        and any(_APPLIES[name](vector) for name in context.families)
    ):
        kinds.append("flatten")
    return kinds


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


def _convolutions(family: str):
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
            family,
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


def _recurrents(family: str):
    @st.composite
    def draw_recurrent(draw, s: _Stream, context: _Context):
        features = s.shape[-1]
        if context.preserve:
            hidden, layers, bidirectional, projection = features, 1, False, 0
        else:
            hidden = draw(_sides())
            layers = draw(st.integers(1, 2))
            bidirectional = draw(st.booleans())
            projection = draw(st.integers(0, hidden - 1)) if family == "lstm" else 0
        options = {
            "input_size": features,
            "hidden_size": hidden,
            "num_layers": layers,
            "bidirectional": bidirectional,
            "bias": draw(st.booleans()),
            "dropout": draw(st.sampled_from((0.0, 0.5))) if layers > 1 else 0.0,
        }
        if family == "lstm":
            options["proj_size"] = projection
        if family == "rnn":
            options["nonlinearity"] = draw(st.sampled_from(("tanh", "relu")))
        out = (projection or hidden) * (2 if bidirectional else 1)
        return _layer(family, **options), s.with_last(out)

    return draw_recurrent


@st.composite
def _attentions(draw, s: _Stream, context: _Context):
    dim = s.shape[-1]
    layer = _layer(
        "multihead_attention",
        embed_dim=dim,
        num_heads=draw(st.sampled_from(_divisors(dim))),
        bias=draw(st.booleans()),
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


_DRAWS = {
    "linear": _linears,
    "activation": _activations,
    "dropout": _dropouts,
    "layer_norm": _layer_norms,
    "batch_norm": _batch_norms,
    "conv1d": _convolutions("conv1d"),
    "conv2d": _convolutions("conv2d"),
    "conv3d": _convolutions("conv3d"),
    "conv_transpose": _transposed_convolutions,
    "pooling": _poolings,
    "group_norm": _group_norms,
    "instance_norm": _instance_norms,
    "bilinear": _bilinears,
    "embedding": _embeddings,
    "embedding_bag": _embedding_bags,
    "rnn": _recurrents("rnn"),
    "gru": _recurrents("gru"),
    "lstm": _recurrents("lstm"),
    "multihead_attention": _attentions,
    "transformer_encoder_layer": _encoder_layers,
    "buffers": _buffer_holders,
    "frozen": _frozen_linears,
    "parametrization": _parametrized_linears,
    "lazy": _lazies,
    "mixed_dtype": _mixed_dtype_blocks,
    "containers": _container_blocks,
    "residual": _residual_blocks,
    "nested": _nested_blocks,
    "tied": _tied_models,
    "flatten": _flattens,
}


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
        layer, s = draw(_DRAWS[draw(st.sampled_from(kinds))](s, context))
        layers.append(layer)
    return tuple(layers), s


@st.composite
def _inputs(draw, kind: str, first: str) -> _Stream:
    """Input data of ``kind`` that the family ``first`` accepts."""
    batch = draw(st.integers(2 if first == "batch_norm" else 1, _MAX_BATCH))
    if kind == "tokens":
        vocabulary = draw(_sides())
        return _Stream(kind, (batch, draw(_sides())), vocabulary)
    # A group norm needs more than one value per group, hence two channels.
    channels = draw(_sides(2 if first == "group_norm" else 1))
    if kind == "vector":
        return _Stream(kind, (batch, channels))
    if kind == "sequence":
        return _Stream(kind, (batch, draw(_sides()), channels))
    spatial = [
        draw(_sides(2 if first == "instance_norm" and i == 0 else 1))
        for i in range(_GRID_DIMS[kind])
    ]
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
    first = draw(st.sampled_from(families))
    kind = draw(st.sampled_from([k for k in _INPUT_KINDS if _APPLIES[first](_largest_input(k))]))
    source = draw(_inputs(kind, first))
    layer, s = draw(_DRAWS[first](source, context))
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
