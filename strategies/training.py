"""Strategies for training states: a model, its optimizer and scheduler, trained a few steps.

:func:`training_cases` draws a :class:`TrainingSpec` (model spec, optimizer spec, scheduler
spec or None, number of steps, and how a step trains: with a gradient scaler, on batches
from a data stream, with a random augmentation) whose parts fit together by construction:
the model has no uninitialized lazy module, a model with sparse gradients gets an optimizer
that accepts them, Muon only a model with matrix parameters, a model with nothing to train
a learnable output scale, and a ``torch.amp.GradScaler`` only an optimizer it can step
(no closure, no sparse gradients) on a torch where it runs on CPU. All of that is read from
the model spec; nothing is built while drawing. A :class:`TrainingCase` builds a fresh
:class:`harness.TrainingState` from its spec with any init seed and trains it one
deterministic step at a time.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy
import torch
from hypothesis import assume, event
from hypothesis import strategies as st

from harness.capabilities import grad_scaler_on_cpu, optimizer_constraints, probe
from harness.state import (
    DataStream,
    TrainingState,
    global_rng_state,
    seed_global_rngs,
    set_global_rng_state,
)
from strategies._arguments import check_names, collection_argument
from strategies.model_specs import InputSpec, ModelSpec, model_specs
from strategies.models import ModelCase, build_model
from strategies.optim import (
    OptimizerSpec,
    SchedulerSpec,
    build_optimizer,
    build_scheduler,
    optimizer_specs,
    optimizer_step,
    scheduler_specs,
    step_scheduler,
)

__all__ = [
    "DATA_BATCHES",
    "ScaledOutput",
    "TrainingCase",
    "TrainingSpec",
    "optimizer_fits",
    "training_cases",
    "training_states",
]

#: Batches in one epoch of a case's data stream: no more than the steps before and after a
#: checkpoint together (4 to 6), so that a resumed run reaches the end of an epoch, and goes
#: on into the next from 2 steps before the checkpoint on.
DATA_BATCHES = 4
# The data stream's batches depend on the spec only, never on init_seed.
_DATA_SEED = 20261201
# Where a training step with a GradScaler starts, and how often its scale doubles: within
# the steps of a check, so that the scale a resumed run needs is not the initial one.
_SCALER_INIT_SCALE = 2.0**8
_SCALER_GROWTH_INTERVAL = 2


@dataclass(frozen=True)
class TrainingSpec:
    """Plain data from which a training state is built and trained.

    Attributes:
        model: the model.
        optimizer: the optimizer, over the model's trainable parameters.
        scheduler: the learning-rate scheduler driving the optimizer, or None.
        steps: how many steps a state is trained before it is checkpointed.
        scaled_output: whether the model is wrapped in :class:`ScaledOutput`. A model with
            nothing to train (pooling, frozen layers, norms without affine) gets a learnable
            output scale, so that every drawn model can be a training case.
        scaler: whether a step trains with a ``torch.amp.GradScaler`` (``TrainingState.scaler``):
            the loss is scaled before ``backward``, ``scaler.step(optimizer)`` unscales the
            gradients and steps, and ``scaler.update()`` adjusts the scale (which doubles
            every 2 steps from 256).
        data: whether a step's input is the next batch of the state's data stream
            (``TrainingState.data``, a :class:`~harness.state.DataStream` over
            :data:`DATA_BATCHES` batches shaped like the example input) instead of the
            example input, so that the batches differ from step to step.
        host_rng: whether a step augments its input with Python's ``random`` and numpy's
            global RNG: a float input is scaled by ``random.uniform(0.5, 1.5)`` and noise
            from ``numpy.random.standard_normal`` is added; in a token input, the token at
            a position ``random.randrange`` picks is replaced by one
            ``numpy.random.randint`` draws.
    """

    model: ModelSpec
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec | None
    steps: int
    scaled_output: bool = False
    scaler: bool = field(default=False, metadata={"optional": True})
    data: bool = field(default=False, metadata={"optional": True})
    host_rng: bool = field(default=False, metadata={"optional": True})


class ScaledOutput(torch.nn.Module):
    """A model whose (first) output is multiplied by one learnable scalar."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, *inputs):
        output = self.model(*inputs)
        if isinstance(output, tuple):
            return (output[0] * self.scale, *output[1:])
        return output * self.scale


@dataclass(frozen=True)
class TrainingCase:
    """A training spec, and what is needed to build and train states from it."""

    spec: TrainingSpec

    @property
    def steps(self) -> int:
        """How many steps a state is trained before it is checkpointed."""
        return self.spec.steps

    @property
    def has_dropout(self) -> bool:
        """Whether a training step draws random numbers (see :attr:`ModelSpec.has_dropout`)."""
        return self.spec.model.has_dropout

    @property
    def uses_host_rng(self) -> bool:
        """Whether a training step draws from Python's ``random`` and numpy's global RNG
        (:attr:`TrainingSpec.host_rng`), so that resuming needs their states restored."""
        return self.spec.host_rng

    @functools.cached_property
    def _model(self) -> ModelCase:
        """The example input and loss (built once; they do not depend on the init seed)."""
        return build_model(self.spec.model, 0)

    @functools.cached_property
    def _dataset(self) -> torch.Tensor:
        """The batches of the data stream (drawn once; they do not depend on the init seed)."""
        return _dataset(self.spec.model.input)

    def build(self, init_seed: int) -> TrainingState:
        """A fresh, untrained state: the model initialized from ``init_seed``, with a
        GradScaler and a data stream (its order drawn from ``init_seed``) where the spec
        trains with them."""
        model = build_model(self.spec.model, init_seed).module
        if self.spec.scaled_output:
            model = ScaledOutput(model)
        optimizer = build_optimizer(self.spec.optimizer, model)
        scheduler = build_scheduler(self.spec.scheduler, optimizer) if self.spec.scheduler else None
        scaler = None
        if self.spec.scaler:
            scaler = torch.amp.GradScaler(
                "cpu", init_scale=_SCALER_INIT_SCALE, growth_interval=_SCALER_GROWTH_INTERVAL
            )
        data = DataStream(self._dataset, init_seed) if self.spec.data else None
        return TrainingState(
            model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, data=data
        )

    def train_step(self, state: TrainingState) -> float:
        """One training step (on the example input, or the next batch of the state's data
        stream, augmented where the spec says so); returns the loss before the step."""
        case = self._model
        state.model.train()
        first, *others = case.example_input
        if self.spec.data:
            first = _part(state, "data").next_batch()
        if self.spec.host_rng:
            first = _augmented(first, self.spec.model.input)
        inputs = (first, *others)
        scaler = _part(state, "scaler") if self.spec.scaler else None
        losses = []

        def compute_loss() -> torch.Tensor:
            state.optimizer.zero_grad()
            loss = case.loss(state.model(*inputs))
            (loss if scaler is None else scaler.scale(loss)).backward()
            losses.append(loss.item())
            return loss

        if scaler is None:
            optimizer_step(state.optimizer, self.spec.optimizer, compute_loss)
        else:  # never a closure optimizer (see _scaler_fits)
            compute_loss()
            scaler.step(state.optimizer)
            scaler.update()
        if state.scheduler is not None:
            step_scheduler(state.scheduler, losses[0])
        return losses[0]


def _part(state: TrainingState, name: str):
    """``state.scaler`` or ``state.data``, which the case trains with."""
    part = getattr(state, name)
    if part is None:
        raise ValueError(f"the case trains with a {name}, and this state's {name} is None")
    return part


def _dataset(spec: InputSpec) -> torch.Tensor:
    """:data:`DATA_BATCHES` batches shaped like the input ``spec`` describes: token indices
    below its vocabulary, or standard normal values."""
    generator = torch.Generator().manual_seed(_DATA_SEED)
    shape = (DATA_BATCHES, *spec.shape)
    if spec.kind == "tokens":
        return torch.randint(0, spec.vocabulary, shape, generator=generator)
    return torch.randn(shape, generator=generator)


def _augmented(batch: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """``batch`` randomly augmented with Python's ``random`` and numpy's global RNG (see
    :attr:`TrainingSpec.host_rng`)."""
    if spec.kind == "tokens":
        tokens = batch.flatten().clone()
        tokens[random.randrange(tokens.numel())] = int(numpy.random.randint(spec.vocabulary))
        return tokens.view_as(batch)
    noise = torch.from_numpy(numpy.random.standard_normal(tuple(batch.shape)))
    return batch * random.uniform(0.5, 1.5) + 0.1 * noise.to(batch.dtype)


def _fits(optimizer: str, spec: ModelSpec, trains_matrix: bool) -> bool:
    constraints = optimizer_constraints(optimizer)
    if spec.has_sparse_gradients or constraints.sparse_gradients_only:
        return spec.has_sparse_gradients and constraints.sparse_gradients_only
    if constraints.matrix_parameters_only:
        return trains_matrix
    return True


def _scaler_fits(optimizer: OptimizerSpec, spec: ModelSpec) -> bool:
    """Whether a GradScaler can train ``spec`` with ``optimizer``: it runs on CPU here, and
    ``scaler.step`` takes no closure (LBFGS), and the model has neither sparse gradients nor
    float16 parameters (whose gradients ``unscale_`` refuses)."""
    constraints = optimizer_constraints(optimizer.name)
    return (
        grad_scaler_on_cpu()
        and not constraints.needs_closure
        and not constraints.sparse_gradients_only
        and not spec.has_sparse_gradients
        and torch.float16 not in spec.dtypes
    )


def optimizer_fits(optimizer: str, model: torch.nn.Module, spec: ModelSpec) -> bool:
    """Whether the optimizer class named ``optimizer`` can train ``model`` (built from
    ``spec``), as its :class:`~harness.capabilities.OptimizerConstraints` say: a model with
    sparse gradients only by an optimizer for sparse gradients (SparseAdam), which trains
    nothing else; one that trains only 2-d parameters (Muon) only a model with a trainable
    2-d parameter."""
    trains_matrix = any(p.dim() == 2 for p in model.parameters() if p.requires_grad)
    return _fits(optimizer, spec, trains_matrix)


@st.composite
def _training_specs(
    draw: st.DrawFn,
    specs: st.SearchStrategy[ModelSpec],
    optimizers: tuple[str, ...] | None,
    schedulers: tuple[str, ...] | None,
) -> TrainingSpec:
    model_spec = draw(specs)
    ranks = model_spec.trainable_parameter_ranks
    names = [
        name for name in (optimizers or probe().optimizers) if _fits(name, model_spec, 2 in ranks)
    ]
    # Every model fits some optimizer of the installed torch, but maybe none of those chosen
    # (optimizers=["SparseAdam"] fits only sparse embeddings).
    assume(names)
    optimizer = draw(optimizer_specs(names=names))
    # Whatever the optimizer, a case draws a scheduler and whether to train with a
    # GradScaler, and drops what does not fit: a case of LBFGS takes as many choices as one
    # of SGD, so that Hypothesis shrinks toward SGD. (LBFGS steps many times per step(); a
    # scheduler on top adds nothing to check.)
    scheduler = draw(st.none() | scheduler_specs(schedulers)) if schedulers != () else None
    if optimizer.needs_closure:
        scheduler = None
    steps = draw(st.integers(1, 3))
    scaler = draw(st.booleans()) and _scaler_fits(optimizer, model_spec)
    data = draw(st.booleans())
    host_rng = draw(st.booleans())
    event(f"training: {optimizer.name} + {scheduler.name if scheduler else 'no scheduler'}")
    for name, drawn in (("GradScaler", scaler), ("data stream", data), ("host RNG", host_rng)):
        if drawn:
            event(f"training: {name}")
    return TrainingSpec(
        model_spec,
        optimizer,
        scheduler,
        steps,
        scaled_output=not ranks,
        scaler=scaler,
        data=data,
        host_rng=host_rng,
    )


def training_cases(
    families: Iterable[str] | None = None,
    optimizers: Iterable[str] | None = None,
    schedulers: Iterable[str] | None = None,
) -> st.SearchStrategy[TrainingCase]:
    """Training cases: a model, an optimizer that fits it, maybe a scheduler, 1 to 3 steps,
    each flag of how a step trains (GradScaler where it fits, data stream, host RNG) drawn
    True or False.

    ``families``, ``optimizers`` and ``schedulers`` narrow the model families and the
    optimizer and scheduler classes drawn from (None: every one the installed torch has; an
    empty ``schedulers`` means no scheduler). Models come from
    :func:`~strategies.model_specs.model_specs` ``(families, allow_uninitialized=False)``.
    Shrinks toward the smallest model, SGD with one group, no scheduler, one step, and
    training without a GradScaler, on the example input, without augmentation.
    """

    def names(value: Iterable[str] | None, name: str, available) -> tuple[str, ...] | None:
        chosen = collection_argument(value, name=name, item_type=str, example="['Adam']")
        if chosen or (chosen is not None and name == "optimizers"):
            check_names(chosen, name=name, known=available, available=available)
        return chosen

    return _training_specs(
        model_specs(families, allow_uninitialized=False),
        names(optimizers, "optimizers", probe().optimizers),
        names(schedulers, "schedulers", probe().schedulers),
    ).map(TrainingCase)


def training_states() -> st.SearchStrategy[TrainingState]:
    """States of :func:`training_cases`, built with ``init_seed=0`` and trained for their
    case's number of steps, so optimizer and scheduler state is not trivial; the global RNGs
    (dropout, augmentation) are seeded with 0 for the training and left as they were. Shrinks
    as the cases do."""
    return training_cases().map(_trained)


def _trained(case: TrainingCase) -> TrainingState:
    state = case.build(0)
    before = global_rng_state()
    seed_global_rngs(0)
    try:
        for _ in range(case.steps):
            case.train_step(state)
    finally:
        set_global_rng_state(before)
    return state
