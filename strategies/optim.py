"""Strategies for optimizers and learning-rate schedulers.

Each object is built from a drawn plain-data spec: :class:`OptimizerSpec` names an optimizer
class of the installed torch, the hyperparameters of each parameter group and the
implementation flags (foreach, fused, maximize, ...); :class:`SchedulerSpec` names a
scheduler class and its arguments, with child specs for ``SequentialLR`` and
``ChainedScheduler``. Which classes and flags exist, and which flags run on CPU, comes from
:mod:`harness.capabilities`, so the same strategies run on every torch from 1.13.1 on; so does
what each optimizer class requires (sparse gradients, a closure, 2-d parameters, one group:
:data:`harness.capabilities.OPTIMIZER_REGISTRY`, whose order is the order drawn). What is
drawn for each optimizer, its learning rates and hyperparameters, is one entry of
``_CHOICES`` here. Everything about a scheduler class (what is drawn for it, how it is built
and stepped, what it requires and what its state holds) is one :class:`Scheduler` record of
:data:`SCHEDULER_REGISTRY`, here.

Every choice is ordered simplest first, so a failure shrinks toward ``SGD`` with one
parameter group and no flags, and toward ``StepLR``. Hypothesis orders examples by how many
choices they took before it compares the choices, so every optimizer class draws its groups
and its implementation as SGD does (one choice even where there is only one), and takes at
least as many choices as SGD: otherwise a class with fewer hyperparameters or flags (LBFGS)
would be the simplest example.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.capabilities import (
    OPTIMIZER_REGISTRY,
    OptimizerConstraints,
    cyclic_lr_cycles_betas,
    cyclic_lr_state_pickles,
    optimizer_constraints,
    optimizer_flags_that_run,
    optimizer_param_names,
    probe,
)
from strategies._arguments import check_names, check_type, collection_argument

__all__ = [
    "SCHEDULER_REGISTRY",
    "STEPS_AT_LEAST",
    "ConstantFactor",
    "ExponentialFactor",
    "Option",
    "OptimizerSpec",
    "Scheduler",
    "SchedulerSpec",
    "WarmupFactor",
    "build_optimizer",
    "build_scheduler",
    "drawn_hyperparameters",
    "optimizer_specs",
    "optimizer_step",
    "scheduler_record",
    "scheduler_specs",
    "step_scheduler",
]

Options = tuple[tuple[str, Any], ...]


class Option(NamedTuple):
    """What the strategies draw for one constructor argument.

    Attributes:
        name: the keyword.
        choices: its values, simplest first.
        when: a condition on the values drawn before it, or None; where it fails, the
            keyword takes its first choice without a draw.
    """

    name: str
    choices: tuple[Any, ...]
    when: Callable[[dict[str, Any]], bool] | None = None


# ----------------------------------------------------------------------------------------
# Optimizers


@dataclass(frozen=True)
class OptimizerSpec:
    """A plain description of an optimizer, from which :func:`build_optimizer` builds it.

    Attributes:
        name: the optimizer class, a key of ``probe().optimizers``.
        groups: the hyperparameters of each parameter group, as ``(name, value)`` pairs;
            every group spells out every hyperparameter it sets, and groups differ at least
            in their learning rate.
        flags: constructor keywords shared by all groups, as ``(name, value)`` pairs, e.g.
            ``(("foreach", True), ("maximize", True))``; empty for the defaults.
        param_names: whether parameters are given as ``(name, tensor)`` pairs, so that the
            param groups carry ``param_names``.
    """

    name: str
    groups: tuple[Options, ...] = ((),)
    flags: Options = ()
    param_names: bool = False

    @property
    def constraints(self) -> OptimizerConstraints:
        """What the optimizer class requires, from
        :func:`harness.capabilities.optimizer_constraints`."""
        return optimizer_constraints(self.name)

    @property
    def needs_sparse_gradients(self) -> bool:
        """Only parameters with sparse gradients (``nn.Embedding(sparse=True)``) can be trained."""
        return self.constraints.sparse_gradients_only

    @property
    def needs_closure(self) -> bool:
        """``step`` must be given a closure that re-evaluates the loss."""
        return self.constraints.needs_closure

    @property
    def needs_matrix_params(self) -> bool:
        """Only 2-d parameters can be trained."""
        return self.constraints.matrix_parameters_only

    @property
    def keeps_state(self) -> bool:
        """Whether a step leaves per-parameter state (SGD without momentum keeps none)."""
        needed = self.constraints.stateless_without
        if needed:
            return any(dict(group).get(needed, 0) != 0 for group in self.groups)
        return True


def _always(name: str, *choices: Any) -> Option:
    return Option(name, choices)


_BETAS = _always("betas", (0.9, 0.999), (0.8, 0.99))
_EPS = _always("eps", 1e-8, 1e-6)
_WEIGHT_DECAY = _always("weight_decay", 0.0, 0.01)

_DEFAULT_LEARNING_RATES = (0.01, 0.1, 0.001)


@dataclass(frozen=True)
class _Choices:
    """What the strategies draw for one optimizer class.

    Attributes:
        hyperparameters: the per-group hyperparameters besides the learning rate.
        learning_rates: the learning rates each group draws from; groups never share one.
    """

    hyperparameters: tuple[Option, ...]
    learning_rates: tuple[float, ...] = _DEFAULT_LEARNING_RATES


# A class without an entry is drawn with fractions of its default learning rate and no
# other hyperparameter.
_CHOICES: dict[str, _Choices] = {
    "SGD": _Choices(
        (
            _always("momentum", 0.0, 0.9),
            Option("nesterov", (False, True), lambda g: g["momentum"] > 0),
            Option("dampening", (0.0, 0.1), lambda g: g["momentum"] > 0 and not g["nesterov"]),
            _WEIGHT_DECAY,
        )
    ),
    "Adam": _Choices((_BETAS, _EPS, _WEIGHT_DECAY, _always("amsgrad", False, True))),
    "AdamW": _Choices(
        (_BETAS, _EPS, _always("weight_decay", 0.01, 0.0), _always("amsgrad", False, True))
    ),
    "Adagrad": _Choices(
        (
            _always("lr_decay", 0.0, 0.01),
            _WEIGHT_DECAY,
            _always("initial_accumulator_value", 0.0, 0.1),
            _always("eps", 1e-10, 1e-6),
        )
    ),
    "RMSprop": _Choices(
        (
            _always("alpha", 0.99, 0.9),
            _EPS,
            _WEIGHT_DECAY,
            _always("momentum", 0.0, 0.9),
            _always("centered", False, True),
        )
    ),
    "Adadelta": _Choices(
        (_always("rho", 0.9, 0.95), _always("eps", 1e-6, 1e-4), _WEIGHT_DECAY),
        learning_rates=(1.0, 0.5, 0.1),
    ),
    "Adamax": _Choices((_BETAS, _EPS, _WEIGHT_DECAY)),
    "NAdam": _Choices((_BETAS, _EPS, _WEIGHT_DECAY, _always("momentum_decay", 0.004, 0.01))),
    "RAdam": _Choices((_BETAS, _EPS, _WEIGHT_DECAY)),
    "ASGD": _Choices(
        (
            _always("lambd", 1e-4, 1e-3),
            _always("alpha", 0.75, 0.5),
            _always("t0", 1e6, 1.0),
            _WEIGHT_DECAY,
        )
    ),
    "Rprop": _Choices(
        (
            _always("etas", (0.5, 1.2), (0.4, 1.3)),
            _always("step_sizes", (1e-6, 50.0), (1e-5, 10.0)),
        )
    ),
    "Adafactor": _Choices(
        (
            _always("beta2_decay", -0.8, -0.5),
            _always("eps", (None, 1e-3), (1e-30, 1e-3)),
            _always("d", 1.0, 2.0),
            _WEIGHT_DECAY,
        )
    ),
    "Muon": _Choices(
        (
            _always("weight_decay", 0.1, 0.0),
            _always("momentum", 0.95, 0.9),
            _always("nesterov", True, False),
            _always("ns_steps", 5, 3),
            _always("adjust_lr_fn", None, "original", "match_rms_adamw"),
        ),
        learning_rates=(0.001, 0.01, 0.02),
    ),
    "LBFGS": _Choices(
        (
            _always("max_iter", 20, 5),
            _always("history_size", 100, 5),
            _always("line_search_fn", None, "strong_wolfe"),
        ),
        learning_rates=(1.0, 0.5),
    ),
    "SparseAdam": _Choices((_BETAS, _EPS)),
}


def drawn_hyperparameters(name: str) -> tuple[tuple[str, tuple[Any, ...], bool], ...] | None:
    """What :func:`optimizer_specs` draws for each parameter group of the optimizer class
    ``name``: ``(hyperparameter, choices simplest first, whether it is drawn only where the
    values drawn before it allow)``, the learning rate first; None for a class drawn with
    fractions of its default learning rate only."""
    choices = _CHOICES.get(name)
    if choices is None:
        return None
    return (
        ("lr", choices.learning_rates, False),
        *((option, values, when is not None) for option, values, when in choices.hyperparameters),
    )


#: Optimizers in the order :func:`optimizer_specs` prefers them; others follow by name.
_OPTIMIZER_ORDER = tuple(record.name for record in OPTIMIZER_REGISTRY)

_MAX_GROUPS = 3


def _check_class_names(
    names: object, available: dict[str, type], kind: str
) -> tuple[str, ...] | None:
    chosen = collection_argument(names, name="names", item_type=str, example="['SGD']")
    if chosen is not None:
        check_names(chosen, name=f"names ({kind} classes)", known=available, available=available)
    return chosen


def _ordered(available: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    available = set(available)
    known = [name for name in preferred if name in available]
    return known + sorted(available - set(known))


def _default_learning_rates(optimizer_class: type) -> tuple[Any, ...]:
    try:
        default = inspect.signature(optimizer_class).parameters["lr"].default
    except (KeyError, TypeError, ValueError):
        return ()
    if isinstance(default, float | int) and not isinstance(default, bool):
        return (float(default), float(default) / 2, float(default) / 10)
    return ()


def _draw_options(draw: st.DrawFn, options: tuple[Option, ...]) -> Options:
    values: dict[str, Any] = {}
    for name, choices, condition in options:
        if condition is None or condition(values):
            values[name] = draw(st.sampled_from(choices))
        else:
            values[name] = choices[0]
    return tuple(values.items())


@st.composite
def _group_options(
    draw: st.DrawFn, learning_rates: tuple[Any, ...], options: tuple[Option, ...]
) -> Options:
    return (("lr", draw(st.sampled_from(learning_rates))), *_draw_options(draw, options))


@st.composite
def _groups(draw: st.DrawFn, name: str) -> tuple[Options, ...]:
    optimizer_class = probe().optimizers[name]
    choices = _CHOICES.get(name)
    if choices is None:
        learning_rates, options = _default_learning_rates(optimizer_class), ()
    else:
        learning_rates, options = choices.learning_rates, choices.hyperparameters
    if not learning_rates:
        return ((),)
    group = _group_options(learning_rates, options)
    groups = draw(
        st.lists(
            group,
            min_size=1,
            max_size=min(_MAX_GROUPS, len(learning_rates)),
            unique_by=lambda g: g[0],
        )
    )
    # A class that takes one group draws its groups as the others do (a list of one needs
    # fewer choices than a list that may grow, and would make it simpler than SGD).
    return tuple(groups[:1] if optimizer_constraints(name).single_group else groups)


def _one_of(draw: st.DrawFn, choices: tuple[Any, ...] | list[Any]) -> Any:
    """One of ``choices``, simplest first, drawn as one choice even where there is only one
    (``st.sampled_from`` draws none then), so that every class takes as many choices here."""
    return choices[draw(st.integers(0, len(choices) - 1))]


@st.composite
def _flags(draw: st.DrawFn, name: str) -> Options:
    runs = optimizer_flags_that_run(name)
    implementations: list[Options] = [()]
    if "foreach" in runs:
        implementations += [(("foreach", False),), (("foreach", True),)]
    if "fused" in runs:
        implementations.append((("fused", True),))
    flags = dict(_one_of(draw, implementations))
    for flag in ("maximize", "decoupled_weight_decay", "capturable", "differentiable"):
        if flag == "differentiable" and "fused" in flags:
            continue
        if flag in runs and draw(st.booleans()):
            flags[flag] = True
    return tuple(sorted(flags.items()))


@st.composite
def _optimizer_specs(draw: st.DrawFn, names: tuple[str, ...]) -> OptimizerSpec:
    name = draw(st.sampled_from(names))
    groups = draw(_groups(name))
    flags = draw(_flags(name))
    param_names = optimizer_param_names() and draw(st.booleans())
    event(f"optimizer: {name}")
    event(f"optimizer groups: {len(groups)}")
    for flag, value in flags:
        event(f"optimizer flag: {flag}={value}")
    if param_names:
        event("optimizer: param_names")
    return OptimizerSpec(name=name, groups=groups, flags=flags, param_names=param_names)


def optimizer_specs(names: Iterable[str] | None = None) -> st.SearchStrategy[OptimizerSpec]:
    """Specs of optimizers of the installed torch that train dense parameters.

    By default every class in ``probe().optimizers`` except ``SparseAdam``, which trains
    only sparse gradients (``nn.Embedding(sparse=True)``) and so fits no dense model; ask
    for it by name. ``names`` narrows the choice to those optimizer classes, sparse ones
    included (pick names that fit the model, e.g. with
    :func:`strategies.training.optimizer_fits`). Each spec has one to three
    parameter groups (``LBFGS``: one) with different learning rates and class-specific
    hyperparameters (SGD momentum, nesterov and dampening; Adam/AdamW amsgrad; RMSprop
    centered and momentum; weight decay; ...), flags that run on CPU here (foreach, fused,
    maximize, decoupled_weight_decay, and capturable or differentiable where they run on
    CPU leaf parameters), and ``param_names`` where optimizers support it.

    Shrinks toward ``SGD``, fewer groups, each hyperparameter's default and no flags.
    """
    available = probe().optimizers
    chosen = _check_class_names(names, available, "optimizer")
    if chosen is None:
        chosen = [name for name in available if not OptimizerSpec(name).needs_sparse_gradients]
    return _optimizer_specs(tuple(_ordered(chosen, _OPTIMIZER_ORDER)))


def _is_sparse_module(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Embedding | torch.nn.EmbeddingBag) and module.sparse


def _trainable_parameters(spec: OptimizerSpec, module: torch.nn.Module):
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if spec.needs_sparse_gradients:
        sparse = {
            id(p)
            for submodule in module.modules()
            if _is_sparse_module(submodule)
            for p in submodule.parameters(recurse=False)
        }
        named = [(name, p) for name, p in named if id(p) in sparse]
        if not named:
            raise InvalidArgument(
                f"{spec.name} trains only parameters with sparse gradients, and the module "
                f"has no trainable nn.Embedding(sparse=True) or nn.EmbeddingBag(sparse=True)"
            )
    if spec.needs_matrix_params:
        named = [(name, p) for name, p in named if p.dim() == 2]
        if not named:
            raise InvalidArgument(
                f"{spec.name} trains only 2-d parameters, and the module has no trainable "
                f"2-d parameter (give it e.g. an nn.Linear)"
            )
    if not named:
        raise InvalidArgument(
            f"the module has no trainable parameter for {spec.name} to optimize; give it one "
            f"with requires_grad=True"
        )
    return named


def build_optimizer(spec: OptimizerSpec, module: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer ``spec`` describes over the trainable parameters of ``module``.

    Parameters are taken in ``module.named_parameters()`` order (for ``SparseAdam`` only
    those of sparse embeddings, for ``Muon`` only 2-d ones) and split into contiguous,
    non-empty runs, one per group of ``spec``. When the module has fewer parameters than
    ``spec`` has groups, only the first groups are used, one parameter each.

    Raises :class:`~hypothesis.errors.InvalidArgument` when ``spec`` is not an
    :class:`OptimizerSpec` or ``module`` not an ``nn.Module``, when the installed torch lacks
    the class or ``param_names``, and when the module has no parameter the optimizer can
    train.
    """
    check_type(spec, OptimizerSpec, name="spec", example="OptimizerSpec('SGD')")
    check_type(module, torch.nn.Module, name="module", example="torch.nn.Linear(2, 2)")
    optimizer_class = probe().optimizers.get(spec.name)
    if optimizer_class is None:
        raise InvalidArgument(
            f"the installed torch has no optimizer {spec.name!r}; it has "
            f"{sorted(probe().optimizers)!r}"
        )
    if spec.param_names and not optimizer_param_names():
        raise InvalidArgument(
            "the installed torch does not keep param_names in optimizer param groups; "
            "use a spec with param_names=False"
        )
    named = _trainable_parameters(spec, module)
    count = min(len(spec.groups), len(named))
    members: list[list[tuple[str, torch.Tensor]]] = [[] for _ in range(count)]
    for index, pair in enumerate(named):
        members[index * count // len(named)].append(pair)
    groups = []
    for options, pairs in zip(spec.groups, members, strict=False):
        params = pairs if spec.param_names else [p for _, p in pairs]
        groups.append({"params": params, **dict(options)})
    return optimizer_class(groups, **dict(spec.flags))


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    spec: OptimizerSpec,
    compute_loss: Callable[[], torch.Tensor],
) -> None:
    """Take one optimizer step.

    ``compute_loss()`` must zero the gradients, run the forward and backward passes and
    return the loss. It is passed to ``step`` as the closure where the optimizer needs one
    (``LBFGS``) and called once before a plain ``step()`` otherwise.
    """
    if spec.needs_closure:
        optimizer.step(compute_loss)
    else:
        compute_loss()
        optimizer.step()


# ----------------------------------------------------------------------------------------
# Learning-rate schedulers


@dataclass(frozen=True)
class ConstantFactor:
    """A learning-rate factor that is ``value`` at every step."""

    value: float

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class ExponentialFactor:
    """A learning-rate factor of ``rate ** step``."""

    rate: float

    def __call__(self, step: int) -> float:
        return self.rate**step


@dataclass(frozen=True)
class WarmupFactor:
    """A learning-rate factor rising linearly from ``1 / steps`` to 1 over ``steps`` steps."""

    steps: int

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.steps)


@dataclass(frozen=True)
class SchedulerSpec:
    """A plain description of a scheduler, from which :func:`build_scheduler` builds it.

    Attributes:
        name: the scheduler class, a key of ``probe().schedulers``.
        options: constructor arguments besides the optimizer, as ``(name, value)`` pairs.
            ``LambdaLR`` and ``MultiplicativeLR`` hold ``lr_lambda`` as a factor object
            (:class:`ConstantFactor`, ...) or a tuple of them, one per group, repeated
            over the groups; being objects of module-level classes, their attributes go
            into the scheduler's ``state_dict``. ``cycle_momentum`` of ``CyclicLR`` and
            ``OneCycleLR`` applies only where the optimizer has momentum.
        children: for ``SequentialLR`` and ``ChainedScheduler``, the schedulers they hold.
    """

    name: str
    options: Options = ()
    children: tuple[SchedulerSpec, ...] = ()


def _construct(
    scheduler_class: type,
    optimizer: torch.optim.Optimizer,
    children: list[Any],
    arguments: dict[str, Any],
) -> Any:
    return scheduler_class(optimizer, **arguments)


def _construct_sequential(
    scheduler_class: type,
    optimizer: torch.optim.Optimizer,
    children: list[Any],
    arguments: dict[str, Any],
) -> Any:
    return scheduler_class(optimizer, children, **arguments)


def _construct_chained(
    scheduler_class: type,
    optimizer: torch.optim.Optimizer,
    children: list[Any],
    arguments: dict[str, Any],
) -> Any:
    if probe().chained_scheduler_optimizer:
        return scheduler_class(children, optimizer=optimizer, **arguments)
    return scheduler_class(children, **arguments)  # it takes the optimizer of its children


def _state_saves() -> bool:
    return True


@dataclass(frozen=True)
class Scheduler:
    """Everything the project knows about one learning-rate scheduler class, registered once
    in :data:`SCHEDULER_REGISTRY`: how :func:`scheduler_specs` draws its arguments, how
    :func:`build_scheduler` builds it and :func:`step_scheduler` steps it, what it requires
    and what its state holds.

    Attributes:
        name: the class's name, a key of ``probe().schedulers`` (``torch.optim.lr_scheduler``,
            and ``torch.optim.swa_utils`` for ``SWALR``).
        options: what is drawn for its constructor arguments besides the optimizer and its
            children, each choice simplest first.
        children: the fewest and the most schedulers it holds, drawn from the
            ``chainable`` records and built first on the same optimizer; ``(0, 0)`` for none.
        milestone_gaps: for a class that hands over from one child to the next at
            ``milestones`` (``SequentialLR``), the fewest and the most steps between two
            milestones; ``(0, 0)`` for none.
        chainable: a scheduler that holds children may hold it: it steps without a metric
            and composes with the others.
        needs_metric: ``step`` must be given the metric (``ReduceLROnPlateau``).
        cycles_momentum: with ``cycle_momentum=True`` it sets each param group's momentum
            (or betas) as well as its learning rate, and refuses an optimizer without;
            :func:`build_scheduler` turns the option off where some group has neither a
            non-zero ``momentum`` nor ``betas`` that the installed torch cycles.
        step_limit: the option that bounds how often it can be stepped (``OneCycleLR``'s
            ``total_steps``: ``step`` raises ``ValueError`` past it); every choice of it is
            at least :data:`STEPS_AT_LEAST`.
        construct: how the class is called, from the class, the optimizer, the children
            built and the other arguments.
        state_saves: whether ``torch.save`` accepts its ``state_dict`` on the installed
            torch, from :mod:`harness.capabilities`.
        state: what its ``state_dict`` holds that ``torch.save`` or
            ``torch.load(weights_only=True)`` refuses on some torch, in words (with the
            finding of docs/findings.md); empty when nothing.
    """

    name: str
    options: tuple[Option, ...] = ()
    children: tuple[int, int] = (0, 0)
    milestone_gaps: tuple[int, int] = (0, 0)
    chainable: bool = False
    needs_metric: bool = False
    cycles_momentum: bool = False
    step_limit: str = ""
    construct: Callable[[type, torch.optim.Optimizer, list[Any], dict[str, Any]], Any] = _construct
    state_saves: Callable[[], bool] = _state_saves
    state: str = ""


#: How many times a drawn scheduler can at least be stepped: the choices of a record's
#: ``step_limit`` option leave room for any short resume scenario.
STEPS_AT_LEAST = 64

#: Every scheduler class the project knows, in the order the strategies prefer them,
#: simplest first, so a failure shrinks toward StepLR. Classes a torch version lacks are
#: skipped; classes of a newer torch that are not here follow by name, drawn without
#: arguments.
SCHEDULER_REGISTRY: tuple[Scheduler, ...] = (
    Scheduler(
        "StepLR",
        (_always("step_size", 1, 2, 3), _always("gamma", 0.1, 0.5)),
        chainable=True,
    ),
    Scheduler("ExponentialLR", (_always("gamma", 0.9, 0.5),), chainable=True),
    Scheduler(
        "MultiStepLR",
        (_always("milestones", (1,), (1, 2), (2, 4)), _always("gamma", 0.1, 0.5)),
        chainable=True,
        state="its milestones are a `collections.Counter`, which `weights_only=True` refuses "
        "up to 2.3.1 (finding 9; probed: `weights_only_loads_counter`)",
    ),
    Scheduler(
        "ConstantLR",
        (_always("factor", 1 / 3, 0.5), _always("total_iters", 5, 2)),
        chainable=True,
    ),
    Scheduler(
        "LinearLR",
        (
            _always("start_factor", 1 / 3, 0.5),
            _always("end_factor", 1.0, 0.5),
            _always("total_iters", 5, 2),
        ),
        chainable=True,
    ),
    Scheduler(
        "LambdaLR",
        (
            _always(
                "lr_lambda",
                ConstantFactor(1.0),
                ExponentialFactor(0.9),
                WarmupFactor(4),
                (ExponentialFactor(0.9), WarmupFactor(4)),
            ),
        ),
        chainable=True,
    ),
    Scheduler(
        "MultiplicativeLR",
        (
            _always(
                "lr_lambda",
                ConstantFactor(0.9),
                ExponentialFactor(0.99),
                (ConstantFactor(0.9), ConstantFactor(0.5)),
            ),
        ),
        chainable=True,
    ),
    Scheduler(
        "PolynomialLR",
        (_always("total_iters", 5, 2), _always("power", 1.0, 2.0)),
        chainable=True,
    ),
    Scheduler(
        "CosineAnnealingLR",
        (_always("T_max", 10, 3), _always("eta_min", 0.0, 1e-4)),
        chainable=True,
    ),
    Scheduler(
        "CosineAnnealingWarmRestarts",
        (_always("T_0", 10, 2), _always("T_mult", 1, 2), _always("eta_min", 0.0, 1e-4)),
    ),
    Scheduler(
        "ReduceLROnPlateau",
        (
            _always("mode", "min", "max"),
            _always("factor", 0.1, 0.5),
            _always("patience", 10, 0, 1),
            _always("threshold", 1e-4, 0.1),
            _always("threshold_mode", "rel", "abs"),
            _always("cooldown", 0, 1),
            _always("min_lr", 0.0, 1e-5),
        ),
        needs_metric=True,
    ),
    Scheduler(
        "CyclicLR",
        (
            _always("base_lr", 0.001, 0.01),
            _always("max_lr", 0.1, 0.05),
            _always("step_size_up", 4, 2),
            _always("step_size_down", None, 3),
            _always("mode", "triangular", "triangular2", "exp_range"),
            Option("gamma", (1.0, 0.9), lambda o: o["mode"] == "exp_range"),
            _always("cycle_momentum", False, True),
        ),
        cycles_momentum=True,
        state_saves=cyclic_lr_state_pickles,
        state="it holds a `WeakMethod` on 1.13.1, which `torch.save` refuses (finding 19; "
        "probed: `cyclic_lr_state_pickles`)",
    ),
    Scheduler(
        "OneCycleLR",
        (
            _always("max_lr", 0.1, 0.01),
            _always("total_steps", STEPS_AT_LEAST, 100),
            _always("pct_start", 0.3, 0.1),
            _always("anneal_strategy", "cos", "linear"),
            _always("div_factor", 25.0, 10.0),
            _always("final_div_factor", 1e4, 100.0),
            _always("three_phase", False, True),
            _always("cycle_momentum", False, True),
        ),
        cycles_momentum=True,
        step_limit="total_steps",
        state="its `anneal_func` is a bound method up to 2.3.1, which `weights_only=True` "
        "refuses (finding 13)",
    ),
    Scheduler(
        "SWALR",
        (
            _always("swa_lr", 0.05, 0.01),
            _always("anneal_epochs", 10, 2),
            _always("anneal_strategy", "cos", "linear"),
        ),
        state="its `anneal_func` is a bound method up to 2.9.1, which `weights_only=True` "
        "refuses (finding 13)",
    ),
    Scheduler(
        "SequentialLR",
        children=(2, 3),
        milestone_gaps=(1, 3),
        construct=_construct_sequential,
    ),
    Scheduler("ChainedScheduler", children=(1, 3), construct=_construct_chained),
)

_SCHEDULER = {record.name: record for record in SCHEDULER_REGISTRY}


def scheduler_record(name: str) -> Scheduler:
    """The record of the scheduler class ``name``; for a class :data:`SCHEDULER_REGISTRY`
    does not know (a newer torch's), a record that draws no arguments."""
    return _SCHEDULER.get(name) or Scheduler(name)


#: Schedulers in the order :func:`scheduler_specs` prefers them; others follow by name.
_SCHEDULER_ORDER = tuple(record.name for record in SCHEDULER_REGISTRY)


@st.composite
def _leaf_scheduler_specs(draw: st.DrawFn, name: str) -> SchedulerSpec:
    options = _draw_options(draw, scheduler_record(name).options)
    return SchedulerSpec(name=name, options=options)


@st.composite
def _scheduler_specs(draw: st.DrawFn, names: tuple[str, ...]) -> SchedulerSpec:
    name = draw(st.sampled_from(names))
    event(f"scheduler: {name}")
    record = scheduler_record(name)
    fewest, most = record.children
    if not most:
        return draw(_leaf_scheduler_specs(name))
    chainable = [r.name for r in SCHEDULER_REGISTRY if r.chainable and r.name in probe().schedulers]
    child_names = draw(st.lists(st.sampled_from(chainable), min_size=fewest, max_size=most))
    children = tuple(draw(_leaf_scheduler_specs(n)) for n in child_names)
    for child in children:
        event(f"scheduler: {name} holding {child.name}")
    options: Options = ()
    if record.milestone_gaps[1]:
        gaps = draw(
            st.lists(
                st.integers(*record.milestone_gaps),
                min_size=len(children) - 1,
                max_size=len(children) - 1,
            )
        )
        milestones = tuple(sum(gaps[: i + 1]) for i in range(len(gaps)))
        options = (("milestones", milestones),)
    return SchedulerSpec(name=name, options=options, children=children)


def scheduler_specs(names: Iterable[str] | None = None) -> st.SearchStrategy[SchedulerSpec]:
    """Specs of learning-rate schedulers of the installed torch (``probe().schedulers``).

    ``names`` narrows the choice to those scheduler classes. Covers every scheduler,
    including ``ReduceLROnPlateau``, ``CyclicLR``, ``OneCycleLR`` (with ``total_steps`` of
    at least :data:`STEPS_AT_LEAST`, so it can be stepped that often), ``SWALR``, and
    ``SequentialLR`` and ``ChainedScheduler`` holding one to three simple schedulers.
    ``LambdaLR`` and ``MultiplicativeLR`` get factor objects whose attributes their
    ``state_dict`` keeps. What is drawn for each class is its record's in
    :data:`SCHEDULER_REGISTRY`.

    Shrinks toward ``StepLR`` with its simplest arguments and toward fewer children.
    """
    available = probe().schedulers
    chosen = _check_class_names(names, available, "scheduler")
    ordered = _ordered(chosen if chosen is not None else available, _SCHEDULER_ORDER)
    return _scheduler_specs(tuple(ordered))


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a scheduler can cycle this optimizer's momentum (or betas, where torch allows)."""
    cycles_betas = cyclic_lr_cycles_betas()
    return all(
        ("betas" in group and cycles_betas) or group.get("momentum", 0) != 0
        for group in optimizer.param_groups
    )


_FACTOR_TYPES = (ConstantFactor, ExponentialFactor, WarmupFactor)


def _argument(value: Any, groups: int) -> Any:
    """An option's value as the constructor takes it: a factor object copied (a tuple of
    them, one per group, repeated over the groups), another tuple as a list."""
    if isinstance(value, _FACTOR_TYPES):
        return dataclasses.replace(value)
    if isinstance(value, tuple) and value and all(isinstance(v, _FACTOR_TYPES) for v in value):
        return [dataclasses.replace(value[i % len(value)]) for i in range(groups)]
    if isinstance(value, tuple):
        return list(value)
    return value


def _arguments(
    record: Scheduler, spec: SchedulerSpec, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    groups = len(optimizer.param_groups)
    arguments = {name: _argument(value, groups) for name, value in spec.options}
    if record.cycles_momentum and arguments.get("cycle_momentum") and not _has_momentum(optimizer):
        arguments["cycle_momentum"] = False
    return arguments


def build_scheduler(spec: SchedulerSpec, optimizer: torch.optim.Optimizer) -> Any:
    """Build the scheduler ``spec`` describes, driving ``optimizer``, as its record in
    :data:`SCHEDULER_REGISTRY` says.

    Children of ``SequentialLR`` and ``ChainedScheduler`` are built first, in order, on the
    same optimizer. ``cycle_momentum`` (of ``CyclicLR`` and ``OneCycleLR``) is turned off
    where some param group of ``optimizer`` has neither ``betas`` nor a non-zero
    ``momentum``. Raises :class:`~hypothesis.errors.InvalidArgument` when ``spec`` is not a
    :class:`SchedulerSpec` or ``optimizer`` not a ``torch.optim.Optimizer``, when the
    installed torch lacks the class, and when ``spec`` gives children to a class that holds
    none.
    """
    check_type(spec, SchedulerSpec, name="spec", example="SchedulerSpec('StepLR')")
    check_type(
        optimizer,
        torch.optim.Optimizer,
        name="optimizer",
        example="build_optimizer(OptimizerSpec('SGD'), module)",
    )
    scheduler_class = probe().schedulers.get(spec.name)
    if scheduler_class is None:
        raise InvalidArgument(
            f"the installed torch has no scheduler {spec.name!r}; it has "
            f"{sorted(probe().schedulers)!r}"
        )
    record = scheduler_record(spec.name)
    if spec.children and not record.children[1]:
        holders = [r.name for r in SCHEDULER_REGISTRY if r.children[1]]
        raise InvalidArgument(
            f"{spec.name} holds no child schedulers; give children only to one of {holders!r}"
        )
    arguments = _arguments(record, spec, optimizer)
    children = [build_scheduler(child, optimizer) for child in spec.children]
    return record.construct(scheduler_class, optimizer, children, arguments)


@functools.cache
def _metric_classes() -> tuple[type, ...]:
    """The scheduler classes of the installed torch whose ``step`` takes the metric."""
    available = probe().schedulers
    return tuple(
        available[r.name] for r in SCHEDULER_REGISTRY if r.needs_metric and r.name in available
    )


def step_scheduler(scheduler: Any, metric: float) -> None:
    """Step ``scheduler`` once: one whose record ``needs_metric`` (``ReduceLROnPlateau``, or
    a subclass) is given ``metric``, others nothing."""
    if isinstance(scheduler, _metric_classes()):
        scheduler.step(metric)
    else:
        scheduler.step()
