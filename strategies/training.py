"""Strategies for training states: a model, its optimizer and scheduler, trained a few steps.

:func:`training_cases` draws a :class:`TrainingSpec` (model spec, optimizer spec, scheduler
spec or None, number of steps) whose parts fit together by construction: the model has no
uninitialized lazy module, a model with sparse gradients gets an optimizer that accepts
them, Muon only a model with matrix parameters, and a model with nothing to train a
learnable output scale. All of that is read from the model spec; nothing is built while
drawing. A :class:`TrainingCase` builds a fresh :class:`harness.TrainingState` from its spec
with any init seed and trains it one deterministic step at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from hypothesis import assume, event
from hypothesis import strategies as st

from harness.capabilities import optimizer_constraints, probe
from harness.state import TrainingState
from strategies._arguments import check_names, collection_argument
from strategies.model_specs import ModelSpec, model_specs
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
    "ScaledOutput",
    "TrainingCase",
    "TrainingSpec",
    "optimizer_fits",
    "training_cases",
    "training_states",
]


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
    """

    model: ModelSpec
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec | None
    steps: int
    scaled_output: bool = False


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

    @functools.cached_property
    def _model(self) -> ModelCase:
        """The example input and loss (built once; they do not depend on the init seed)."""
        return build_model(self.spec.model, 0)

    def build(self, init_seed: int) -> TrainingState:
        """A fresh, untrained state: the model initialized from ``init_seed``."""
        model = build_model(self.spec.model, init_seed).module
        if self.spec.scaled_output:
            model = ScaledOutput(model)
        optimizer = build_optimizer(self.spec.optimizer, model)
        scheduler = build_scheduler(self.spec.scheduler, optimizer) if self.spec.scheduler else None
        return TrainingState(model=model, optimizer=optimizer, scheduler=scheduler)

    def train_step(self, state: TrainingState) -> float:
        """One training step on the example input; returns the loss before the step."""
        case = self._model
        state.model.train()
        losses = []

        def compute_loss() -> torch.Tensor:
            state.optimizer.zero_grad()
            loss = case.loss(state.model(*case.example_input))
            loss.backward()
            losses.append(loss.item())
            return loss

        optimizer_step(state.optimizer, self.spec.optimizer, compute_loss)
        if state.scheduler is not None:
            step_scheduler(state.scheduler, losses[0])
        return losses[0]


def _fits(optimizer: str, spec: ModelSpec, trains_matrix: bool) -> bool:
    constraints = optimizer_constraints(optimizer)
    if spec.has_sparse_gradients or constraints.sparse_gradients_only:
        return spec.has_sparse_gradients and constraints.sparse_gradients_only
    if constraints.matrix_parameters_only:
        return trains_matrix
    return True


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
    # LBFGS steps many times per step(); a scheduler on top adds nothing to check.
    scheduler = None
    if not optimizer.needs_closure and schedulers != ():
        scheduler = draw(st.none() | scheduler_specs(schedulers))
    steps = draw(st.integers(1, 3))
    event(f"training: {optimizer.name} + {scheduler.name if scheduler else 'no scheduler'}")
    return TrainingSpec(model_spec, optimizer, scheduler, steps, scaled_output=not ranks)


def training_cases(
    families: Iterable[str] | None = None,
    optimizers: Iterable[str] | None = None,
    schedulers: Iterable[str] | None = None,
) -> st.SearchStrategy[TrainingCase]:
    """Training cases: a model, an optimizer that fits it, maybe a scheduler, 1 to 3 steps.

    ``families``, ``optimizers`` and ``schedulers`` narrow the model families and the
    optimizer and scheduler classes drawn from (None: every one the installed torch has; an
    empty ``schedulers`` means no scheduler). Models come from
    :func:`~strategies.model_specs.model_specs` ``(families, allow_uninitialized=False)``.
    Shrinks toward the smallest model, SGD with one group, no scheduler and one step.
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
    case's number of steps, so optimizer and scheduler state is not trivial. Shrinks as the
    cases do."""
    return training_cases().map(_trained)


def _trained(case: TrainingCase) -> TrainingState:
    state = case.build(0)
    for _ in range(case.steps):
        case.train_step(state)
    return state
