"""Your own models, optimizers and schedulers as the cases :func:`harness.check_checkpointer`
checks a checkpointer on.

A model is described by one record, :class:`UserModel`: how to build it, the input it takes
and, optionally, its loss. Optimizers and schedulers are plain callables, as you write them
for training: ``functools.partial(torch.optim.AdamW, lr=1e-3)``, ``lambda model:
torch.optim.AdamW(model.parameters())``, ``functools.partial(StepLR, step_size=2)``.
:func:`user_cases` turns them into a Hypothesis strategy of cases with the interface the
checkpointer's invariants read, the one of the generated cases
(:class:`strategies.training.TrainingCase` for ``purpose="resume"``,
:class:`strategies.models.ModelCase` for ``"inference"``):

- :class:`UserTrainingCase`: ``build(init_seed)`` a fresh :class:`~harness.state.TrainingState`,
  ``train_step(state)``, ``steps``, ``has_dropout``, ``spec``;
- :class:`UserModelCase`: ``module``, ``rebuild(init_seed)``, ``example_input``, ``loss``,
  ``spec``.

What you leave out is drawn as the harness draws its own cases: your model with every
optimizer class of the installed torch that fits it (and a scheduler or none), or your
optimizer on the harness's generated models. Everything you pass is checked when
:func:`user_cases` is called (a model given as a record is built and run once), and a
mistake is an :class:`~hypothesis.errors.InvalidArgument` naming it and the place in your
file.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import random
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy
import torch
from hypothesis import assume, event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

from harness.capabilities import optimizer_constraints, probe
from harness.report import first_line
from harness.state import TrainingState, global_rng_state, seed_global_rngs, set_global_rng_state
from strategies.model_specs import ModelSpec, model_specs
from strategies.models import ModelCase, _loss, build_model
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
from strategies.training import ScaledOutput

__all__ = [
    "UserModel",
    "UserModelCase",
    "UserTrainingCase",
    "UserTrainingSpec",
    "default_loss",
    "describe_callable",
    "user_cases",
]

# harness.checkpointer.PURPOSES (that module imports this one).
_PURPOSES = ("resume", "inference")
# The seed an example_input callable is called under, whatever the init seed.
_INPUT_SEED = 20240229
# The original of an inference case is trained this many SGD steps of this learning rate, so
# that its parameters and buffers hold values that a freshly built model does not have.
_INFERENCE_TRAINING_STEPS, _INFERENCE_LEARNING_RATE = 1, 0.01


# --- Naming the user's callables -----------------------------------------------------------


def _defined_at(function: Any) -> str | None:
    """``file.py:line`` where ``function`` (or its class) is defined, if Python knows."""
    target = inspect.unwrap(function) if callable(function) else function
    try:
        filename = inspect.getsourcefile(target)
        _, line = inspect.getsourcelines(target)
    except (OSError, TypeError):
        return None
    return f"{os.path.basename(filename)}:{line}" if filename else None


def describe_callable(function: Any) -> str:
    """A short readable name of a model, optimizer or scheduler factory, as minimal examples
    show it: ``SmallCNN``, ``AdamW(lr=0.001)`` for a ``functools.partial``, ``make_model``,
    ``lambda at train.py:12`` for a lambda or a function defined inside another."""
    if isinstance(function, functools.partial):
        arguments = [repr(value) for value in function.args]
        arguments += [f"{key}={value!r}" for key, value in function.keywords.items()]
        return f"{describe_callable(function.func)}({', '.join(arguments)})"
    name = getattr(function, "__name__", None)
    if name is None:
        return type(function).__name__
    qualified = getattr(function, "__qualname__", name)
    if name == "<lambda>" or "<locals>" in qualified:
        where = _defined_at(function)
        shown = "lambda" if name == "<lambda>" else name
        return f"{shown} at {where}" if where else shown
    return qualified


def _raised(what: str, error: BaseException, function: Any) -> InvalidArgument:
    """An InvalidArgument saying that ``what`` raised ``error``, at the innermost line of the
    file ``function`` is defined in (else where ``function`` is defined)."""
    try:
        source = inspect.getsourcefile(inspect.unwrap(function))
    except TypeError:
        source = None
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == source]
    if frames:
        where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
    else:
        where = _defined_at(function)
    located = f" (at {where})" if where else ""
    return InvalidArgument(f"{what} raised {first_line(error)}{located}")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's, Python's and numpy's global RNGs seeded with ``seed``, and
    set them back as they were after it."""
    before = global_rng_state()
    seed_global_rngs(seed)
    try:
        yield
    finally:
        set_global_rng_state(before)


def _check_callable(value: Any, name: str, example: str) -> None:
    if not callable(value):
        raise InvalidArgument(f"{name}={value!r} is not callable; pass e.g. {name}={example}")


# --- Models -------------------------------------------------------------------------------


def _takes_seed(build: Callable[..., Any]) -> bool:
    """Whether ``build`` has one required positional parameter (the seed) rather than none;
    InvalidArgument when it requires more."""
    try:
        parameters = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called without arguments
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.default is p.empty and p.kind is not p.VAR_POSITIONAL]
    required = [p for p in required if p.kind is not p.VAR_KEYWORD]
    if not required:
        return False
    if len(required) == 1 and required[0].kind in positional:
        return True
    names = ", ".join(p.name for p in required)
    raise InvalidArgument(
        f"UserModel build={describe_callable(build)} requires the arguments {names}; build "
        "is called with the seed or with nothing: bind the others first, e.g. "
        "functools.partial(MyModel, config) or lambda: MyModel(config)"
    )


def _tensors(output: Any) -> list[torch.Tensor]:
    """The tensors in a model's output: a tensor, or tuples, lists and mappings of them
    (None entries skipped)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if output is None:
        return []
    if isinstance(output, Mapping):
        return [tensor for value in output.values() for tensor in _tensors(value)]
    if isinstance(output, tuple | list):
        return [tensor for value in output for tensor in _tensors(value)]
    raise TypeError(
        f"the default loss takes tensors, or tuples, lists and dicts of them, not a "
        f"{type(output).__name__}: give UserModel(..., loss=a function of the output)"
    )


def default_loss(output: Any) -> torch.Tensor:
    """The loss of a :class:`UserModel` without one: the mean of the squares of each
    floating-point tensor in ``output`` (a tensor, or tuples, lists and dicts holding
    tensors), summed, in float32."""
    return _loss(tuple(_tensors(output)))


def _host_rng_state() -> tuple:
    """Python's ``random`` and numpy's global RNG state, comparable with ``==``."""
    name, key, position, has_gauss, gaussian = numpy.random.get_state(legacy=True)
    return random.getstate(), (name, key.tobytes(), position, has_gauss, gaussian)


@dataclass(frozen=True)
class _Facts:
    """What one build and forward of a user's model showed."""

    has_dropout: bool
    uses_host_rng: bool
    sparse_gradients: bool
    trains_matrix: bool
    trainable: bool
    differentiable: bool


@dataclass(frozen=True, eq=False)
class UserModel:
    """Your model, as :func:`harness.check_checkpointer` builds and trains it.

    Attributes:
        build: returns a new module at every call: a class (``SmallCNN``), a
            ``functools.partial(MyTransformer, config)`` or a function. The harness calls
            ``torch.manual_seed(seed)`` (and seeds Python's ``random`` and numpy's global RNG
            with it) and then ``build(seed)`` when ``build`` has one
            required positional parameter, ``build()`` when it has none; the original state
            and the fresh state it is loaded into get different seeds, so that their
            parameters differ. The global RNG is left as it was.
        example_input: the positional arguments of the forward, ``module(*example_input)``:
            a tuple, or a function returning one (called with the RNG seeded, so it may draw
            random tensors; the same input is used for every step and both states).
        loss: a function of the module's output returning a scalar tensor to minimize
            (default: :func:`default_loss`, the mean square of each floating-point tensor in
            the output, summed).
        name: how minimal examples name the model (default: from ``build``, e.g.
            ``SmallCNN`` or ``MyTransformer(config)``).
    """

    build: Callable[..., nn.Module]
    example_input: tuple | Callable[[], tuple]
    loss: Callable[[Any], torch.Tensor] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _check_callable(self.build, "build", "SmallCNN or lambda: MyModel(config)")
        if not isinstance(self.example_input, tuple) and not callable(self.example_input):
            raise InvalidArgument(
                f"example_input={self.example_input!r} must be a tuple of the forward's "
                "positional arguments, e.g. example_input=(torch.randn(4, 3, 8, 8),), or a "
                "function returning one"
            )
        if self.loss is not None:
            _check_callable(self.loss, "loss", "lambda output: output.square().mean()")
        if self.name is not None and not isinstance(self.name, str):
            raise InvalidArgument(f"name={self.name!r} must be a string, or None")
        _takes_seed(self.build)

    @property
    def label(self) -> str:
        """The name minimal examples show."""
        return self.name or describe_callable(self.build)

    def __repr__(self) -> str:
        return f"UserModel({self.label!r})"

    def module(self, init_seed: int) -> nn.Module:
        """A new module from ``build``, with ``torch.manual_seed(init_seed)`` (and Python's and
        numpy's global RNGs seeded) before it; the
        global RNG is left as it was."""
        call = f"build({init_seed})" if _takes_seed(self.build) else "build()"
        with _seeded(init_seed):
            try:
                module = self.build(init_seed) if _takes_seed(self.build) else self.build()
            except Exception as error:
                raise _raised(f"UserModel {self.label!r}: {call}", error, self.build) from error
        if not isinstance(module, nn.Module):
            raise InvalidArgument(
                f"UserModel {self.label!r}: {call} returned a value of type "
                f"{type(module).__name__}, not a torch.nn.Module; build must return a new "
                "module at every call"
            )
        return module

    @functools.cached_property
    def inputs(self) -> tuple:
        """The example input (called once, under a fixed seed, when it is a function)."""
        if isinstance(self.example_input, tuple):
            return self.example_input
        with _seeded(_INPUT_SEED):
            try:
                inputs = self.example_input()
            except Exception as error:
                what = f"UserModel {self.label!r}: example_input()"
                raise _raised(what, error, self.example_input) from error
        if not isinstance(inputs, tuple):
            raise InvalidArgument(
                f"UserModel {self.label!r}: example_input() returned a value of type "
                f"{type(inputs).__name__}, not a tuple of the forward's positional arguments "
                "(for one tensor x: return (x,))"
            )
        return inputs

    def loss_of(self, output: Any) -> torch.Tensor:
        """The loss of ``output``: ``loss(output)``, or :func:`default_loss`."""
        return (self.loss or default_loss)(output)

    @functools.cached_property
    def _facts(self) -> _Facts:
        """Build with seed 0 and run one train-mode forward and loss, checking each step."""
        module = self.module(0)
        inputs = self.inputs
        with _seeded(0):
            module.train()
            before, host_before = torch.get_rng_state(), _host_rng_state()
            try:
                output = module(*inputs)
            except Exception as error:
                what = f"UserModel {self.label!r}: module(*example_input)"
                raise _raised(what, error, type(module)) from error
            draws = not torch.equal(before, torch.get_rng_state())
            draws_on_host = _host_rng_state() != host_before
            try:
                loss = self.loss_of(output)
            except Exception as error:
                what = f"UserModel {self.label!r}: the loss of the output"
                raise _raised(what, error, self.loss or default_loss) from error
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise InvalidArgument(
                f"UserModel {self.label!r}: the loss must be a tensor with one element, not "
                + (
                    f"one of shape {tuple(loss.shape)}"
                    if isinstance(loss, torch.Tensor)
                    else repr(loss)
                )
            )
        trainable = [p for p in module.parameters() if p.requires_grad]
        sparse = any(
            isinstance(m, nn.Embedding | nn.EmbeddingBag)
            and m.sparse
            and any(p.requires_grad for p in m.parameters(recurse=False))
            for m in module.modules()
        )
        return _Facts(
            has_dropout=draws,
            uses_host_rng=draws_on_host,
            sparse_gradients=sparse,
            trains_matrix=any(p.dim() == 2 for p in trainable),
            trainable=bool(trainable),
            differentiable=loss.requires_grad,
        )

    @property
    def has_dropout(self) -> bool:
        """Whether a train-mode forward draws random numbers (dropout, or anything else that
        uses the global RNG), as measured on a build."""
        return self._facts.has_dropout

    @property
    def uses_host_rng(self) -> bool:
        """Whether a train-mode forward draws from Python's ``random`` or numpy's global
        RNG, as measured on a build."""
        return self._facts.uses_host_rng

    def check(self, purpose: str) -> UserModel:
        """This model, once it is built and run for ``purpose``; InvalidArgument otherwise."""
        facts = self._facts
        if purpose == "resume" and not (facts.trainable and facts.differentiable):
            missing = "no trainable parameter" if not facts.trainable else "no gradient"
            raise InvalidArgument(
                f"UserModel {self.label!r}: the loss of its output has {missing}, and a "
                "resume check trains the model: give it a parameter with requires_grad=True "
                "and a loss of the floating-point output (loss=...)"
            )
        return self


def _check_models(item: Any, purpose: str) -> UserModel:
    if isinstance(item, UserModel):
        return item.check(purpose)
    if callable(item):
        raise InvalidArgument(
            f"models holds {describe_callable(item)}, a callable: the harness needs an input "
            "to run it, so wrap it: harness.UserModel(build=..., example_input=(x,))"
        )
    raise InvalidArgument(
        f"models holds {item!r}, which is no harness.UserModel and no Hypothesis strategy of them"
    )


# --- Optimizers and schedulers --------------------------------------------------------------


def _is_optimizer_class(function: Any) -> bool:
    while isinstance(function, functools.partial):
        function = function.func
    return isinstance(function, type) and issubclass(function, torch.optim.Optimizer)


def _build_optimizer(factory: Callable[..., Any], model: nn.Module) -> torch.optim.Optimizer:
    """``factory(model.parameters())`` for a torch.optim class or a functools.partial of one,
    ``factory(model)`` for any other callable."""
    by_class = _is_optimizer_class(factory)
    what = f"optimizer {describe_callable(factory)}, called with " + (
        "model.parameters()," if by_class else "the model,"
    )
    try:
        optimizer = factory(model.parameters() if by_class else model)
    except Exception as error:
        advice = (
            ""
            if by_class
            else "; a function is given the model: lambda model: "
            "torch.optim.AdamW(model.parameters())"
        )
        raise InvalidArgument(f"{_raised(what, error, factory)}{advice}") from error
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InvalidArgument(
            f"{what} returned a value of type {type(optimizer).__name__}, not a "
            "torch.optim.Optimizer"
        )
    return optimizer


def _build_scheduler(factory: Callable[..., Any], optimizer: torch.optim.Optimizer) -> Any:
    """``factory(optimizer)``, checked to be a scheduler."""
    what = f"scheduler {describe_callable(factory)}, called with the optimizer,"
    try:
        scheduler = factory(optimizer)
    except Exception as error:
        raise _raised(what, error, factory) from error
    if not all(callable(getattr(scheduler, name, None)) for name in ("step", "state_dict")):
        raise InvalidArgument(
            f"{what} returned a value of type {type(scheduler).__name__}, which has no step "
            "and state_dict methods"
        )
    return scheduler


def _optimizer_fits(name: str, model: UserModel) -> bool:
    """Whether the generated optimizer class ``name`` can train the user's model (its
    :class:`~harness.capabilities.OptimizerConstraints`)."""
    constraints = optimizer_constraints(name)
    facts = model._facts
    if facts.sparse_gradients or constraints.sparse_gradients_only:
        return facts.sparse_gradients and constraints.sparse_gradients_only
    return facts.trains_matrix or not constraints.matrix_parameters_only


# --- The cases ------------------------------------------------------------------------------


def _label(part: Any) -> str:
    if isinstance(part, UserModel):
        return part.label
    if isinstance(part, ModelSpec | OptimizerSpec | SchedulerSpec) or part is None:
        return repr(part)
    return describe_callable(part)


@dataclass(frozen=True, eq=False)
class UserTrainingSpec:
    """What a :class:`UserTrainingCase` is built from: yours or the harness's, each part.

    Attributes:
        model: a :class:`UserModel`, or a generated :class:`~strategies.model_specs.ModelSpec`.
        optimizer: your optimizer factory, or a generated
            :class:`~strategies.optim.OptimizerSpec`.
        scheduler: your scheduler factory, a generated
            :class:`~strategies.optim.SchedulerSpec`, or None.
        steps: how many steps a state is trained before it is checkpointed.
        scaled_output: whether a generated model with nothing to train is wrapped in
            :class:`~strategies.training.ScaledOutput`.
    """

    model: UserModel | ModelSpec
    optimizer: Callable[..., torch.optim.Optimizer] | OptimizerSpec
    scheduler: Callable[[torch.optim.Optimizer], Any] | SchedulerSpec | None
    steps: int
    scaled_output: bool = False

    def __repr__(self) -> str:
        parts = (
            f"model={_label(self.model)}, optimizer={_label(self.optimizer)}, "
            f"scheduler={_label(self.scheduler)}, steps={self.steps}"
        )
        return f"{type(self).__name__}({parts})"


@dataclass(frozen=True, eq=False)
class UserTrainingCase:
    """A training case with your model, optimizer or scheduler: the interface of
    :class:`strategies.training.TrainingCase`."""

    spec: UserTrainingSpec

    def __repr__(self) -> str:
        return repr(self.spec).replace(type(self.spec).__name__, type(self).__name__, 1)

    @property
    def steps(self) -> int:
        """How many steps a state is trained before it is checkpointed."""
        return self.spec.steps

    @property
    def has_dropout(self) -> bool:
        """Whether a training step draws random numbers."""
        return self.spec.model.has_dropout

    @property
    def uses_host_rng(self) -> bool:
        """Whether a training step draws from Python's ``random`` or numpy's global RNG."""
        model = self.spec.model
        return isinstance(model, UserModel) and model.uses_host_rng

    @functools.cached_property
    def _generated(self) -> ModelCase | None:
        """The generated model's example input and loss (None for a user's model)."""
        model = self.spec.model
        return build_model(model, 0) if isinstance(model, ModelSpec) else None

    def _module(self, init_seed: int) -> nn.Module:
        model = self.spec.model
        if isinstance(model, UserModel):
            return model.module(init_seed)
        module = build_model(model, init_seed).module
        return ScaledOutput(module) if self.spec.scaled_output else module

    def build(self, init_seed: int) -> TrainingState:
        """A fresh, untrained state: the model built from ``init_seed``, its optimizer and
        scheduler."""
        model = self._module(init_seed)
        spec = self.spec
        if isinstance(spec.optimizer, OptimizerSpec):
            optimizer = build_optimizer(spec.optimizer, model)
        else:
            optimizer = _build_optimizer(spec.optimizer, model)
        if spec.scheduler is None:
            scheduler = None
        elif isinstance(spec.scheduler, SchedulerSpec):
            scheduler = build_scheduler(spec.scheduler, optimizer)
        else:
            scheduler = _build_scheduler(spec.scheduler, optimizer)
        return TrainingState(model=model, optimizer=optimizer, scheduler=scheduler)

    def train_step(self, state: TrainingState) -> float:
        """One training step on the example input; returns the loss before the step."""
        generated = self._generated
        inputs = generated.example_input if generated else self.spec.model.inputs
        loss_of = generated.loss if generated else self.spec.model.loss_of
        optimizer = self.spec.optimizer
        if not isinstance(optimizer, OptimizerSpec):
            # A closure where the optimizer class needs one (LBFGS), by its name.
            optimizer = OptimizerSpec(type(state.optimizer).__name__)
        state.model.train()
        losses = []

        def compute_loss() -> torch.Tensor:
            state.optimizer.zero_grad()
            loss = loss_of(state.model(*inputs))
            loss.backward()
            losses.append(loss.item())
            return loss

        optimizer_step(state.optimizer, optimizer, compute_loss)
        if state.scheduler is not None:
            step_scheduler(state.scheduler, losses[0])
        return losses[0]


@dataclass(frozen=True, eq=False)
class UserModelCase:
    """An inference case with your model: the interface of
    :class:`strategies.models.ModelCase`.

    The original (``init_seed`` 0, as drawn) is built and then trained one SGD step (learning
    rate 0.01) on the example input, so that batch-norm statistics and the parameters a
    build sets to constants hold values no fresh build has; :meth:`rebuild` gives an
    untrained one from another seed.
    """

    spec: UserModel
    init_seed: int = 0
    trained: bool = True

    def __repr__(self) -> str:
        return f"UserModelCase(model={self.spec.label}, init_seed={self.init_seed})"

    @property
    def example_input(self) -> tuple:
        """Positional arguments: ``module(*example_input)`` runs."""
        return self.spec.inputs

    def loss(self, output: Any) -> torch.Tensor:
        """The model's loss of ``output``."""
        return self.spec.loss_of(output)

    @functools.cached_property
    def module(self) -> nn.Module:
        """The model, in train mode (built once per case)."""
        module = self.spec.module(self.init_seed)
        module.train()
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not self.trained or not trainable:
            return module
        optimizer = torch.optim.SGD(trainable, lr=_INFERENCE_LEARNING_RATE)
        with _seeded(self.init_seed):
            for _ in range(_INFERENCE_TRAINING_STEPS):
                optimizer.zero_grad()
                loss = self.loss(module(*self.example_input))
                if loss.requires_grad:
                    loss.backward()
                    optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return module

    def rebuild(self, init_seed: int) -> UserModelCase:
        """The same model and input, built untrained from ``init_seed``."""
        return UserModelCase(self.spec, init_seed, trained=False)


# --- The strategy ---------------------------------------------------------------------------


def _items(value: Any, name: str) -> tuple | None:
    """``value`` as a tuple of items: None stays None, a sequence (not a string) gives its
    items, anything else is one item."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        raise InvalidArgument(f"{name}={value!r} must be objects, not a string")
    if isinstance(value, Sequence):
        return tuple(value)
    return (value,)


def _drawn(items: tuple, check: Callable[[Any], Any]) -> st.SearchStrategy:
    """One of ``items``, strategies drawn from, each value passed through ``check``."""
    parts = [
        item.map(check) if isinstance(item, st.SearchStrategy) else st.just(check(item))
        for item in items
    ]
    return st.one_of(parts)


def _checked_factory(kind: str, example: str) -> Callable[[Any], Any]:
    def check(item: Any) -> Any:
        if item is None and kind == "schedulers":
            return None
        _check_callable(item, kind, example)
        return item

    return check


@st.composite
def _training_specs(
    draw: st.DrawFn,
    models: st.SearchStrategy,
    optimizers: st.SearchStrategy | None,
    schedulers: st.SearchStrategy | None,
    optimizer_names: tuple[str, ...] | None,
    scheduler_names: tuple[str, ...] | None,
) -> UserTrainingSpec:
    model = draw(models)
    scaled = isinstance(model, ModelSpec) and not model.trainable_parameter_ranks
    if optimizers is not None:
        optimizer = draw(optimizers)
    else:
        names = [n for n in optimizer_names or probe().optimizers if _optimizer_fits(n, model)]
        assume(names)
        optimizer = draw(optimizer_specs(names=names))
    if schedulers is not None:
        scheduler = draw(schedulers)
    elif scheduler_names == ():
        scheduler = None
    else:
        scheduler = draw(st.none() | scheduler_specs(scheduler_names))
        # As the generated cases: no scheduler on LBFGS, which steps many times per step().
        # Drawn all the same, so that an LBFGS case is no shorter a draw to shrink towards.
        if isinstance(optimizer, OptimizerSpec) and optimizer.needs_closure:
            scheduler = None
    steps = draw(st.integers(1, 3))
    event(f"user case: {_label(model)} + {_label(optimizer)} + {_label(scheduler)}")
    return UserTrainingSpec(model, optimizer, scheduler, steps, scaled_output=scaled)


def _concrete(items: tuple | None) -> list:
    return [item for item in items or () if not isinstance(item, st.SearchStrategy)]


def _check_factories(models: list[UserModel], optimizers: list[Any], schedulers: list[Any]) -> None:
    """Build each optimizer given as a callable once, on the first model given as a record
    (else on a linear layer), and each scheduler on the first of those optimizers (else on
    SGD); InvalidArgument for the first that cannot be built."""
    module = models[0].module(0) if models else nn.Linear(3, 2)
    built = [_build_optimizer(factory, module) for factory in optimizers]
    optimizer = built[0] if built else torch.optim.SGD(module.parameters(), lr=0.1)
    for factory in schedulers:
        if factory is not None:
            _build_scheduler(factory, optimizer)


def user_cases(
    purpose: str,
    models: Any = None,
    optimizers: Any = None,
    schedulers: Any = None,
    *,
    families: Sequence[str] | None = None,
    optimizer_names: Sequence[str] | None = None,
    scheduler_names: Sequence[str] | None = None,
) -> st.SearchStrategy[UserTrainingCase] | st.SearchStrategy[UserModelCase]:
    """Cases for ``purpose`` (``"resume"`` or ``"inference"``) with your models, optimizers
    and schedulers.

    Args:
        purpose: ``"resume"`` draws :class:`UserTrainingCase`, ``"inference"``
            :class:`UserModelCase` (which needs ``models`` and takes no optimizer or
            scheduler).
        models: a :class:`UserModel`, a Hypothesis strategy of them, or a sequence of
            either; None: the harness's generated models (those without sparse gradients
            when ``optimizers`` are yours).
        optimizers: a callable returning a ``torch.optim.Optimizer`` (a torch.optim class
            or a ``functools.partial`` of one is given ``model.parameters()``, any other
            callable the model), a strategy of them, or a sequence of either; None: every
            optimizer class of the installed torch that fits the model, with drawn
            hyperparameters.
        schedulers: a callable taking the optimizer and returning a scheduler, a strategy
            of them, or a sequence of either, which may hold None for no scheduler (``[]``
            means no scheduler at all); None: a generated scheduler or none.
        families, optimizer_names, scheduler_names: narrow the generated models,
            optimizers and schedulers (the names ``check_checkpointer``'s ``exclude`` leaves).

    Returns:
        a strategy that shrinks toward the first model, optimizer and scheduler given (and
        for generated parts as the harness's own cases shrink) and one training step.

    Raises:
        InvalidArgument: for an unknown purpose, something that is not a model, optimizer
            or scheduler, a model given as a record that cannot be built, run or trained,
            or an optimizer or scheduler that cannot be built on it.
    """
    if purpose not in _PURPOSES:
        raise InvalidArgument(f"purpose must be one of {_PURPOSES}, not {purpose!r}")
    model_items = _items(models, "models")
    optimizer_items = _items(optimizers, "optimizers")
    scheduler_items = _items(schedulers, "schedulers")
    if model_items == () or optimizer_items == ():
        raise InvalidArgument(
            "models=[] and optimizers=[] leave nothing to draw; pass None for the harness's"
        )
    if purpose == "inference":
        if optimizer_items is not None or scheduler_items is not None:
            raise InvalidArgument(
                "optimizers and schedulers apply to purpose='resume' only: an inference "
                "check restores the model alone"
            )
        if model_items is None:
            raise InvalidArgument("user_cases(purpose='inference') needs models=...")
    check_model = functools.partial(_check_models, purpose=purpose)
    check_optimizer = _checked_factory(
        "optimizers", "functools.partial(torch.optim.AdamW, lr=1e-3)"
    )
    check_scheduler = _checked_factory("schedulers", "functools.partial(StepLR, step_size=2)")
    models_given = [check_model(item) for item in _concrete(model_items)]
    if purpose == "inference":
        return _drawn(model_items, check_model).map(UserModelCase)
    optimizers_given = [check_optimizer(item) for item in _concrete(optimizer_items)]
    schedulers_given = [check_scheduler(item) for item in _concrete(scheduler_items)]
    if optimizer_items is None:
        for model in models_given:
            if not any(_optimizer_fits(n, model) for n in optimizer_names or probe().optimizers):
                raise InvalidArgument(f"no optimizer class of the installed torch fits {model!r}")
    _check_factories(models_given, optimizers_given, schedulers_given)
    if model_items is not None:
        model_strategy = _drawn(model_items, check_model)
    else:
        model_strategy = model_specs(families, allow_uninitialized=False)
        if optimizer_items is not None:
            # Few optimizers take sparse gradients; the generated ones that do are chosen
            # for such models, which yours may not be.
            model_strategy = model_strategy.filter(lambda spec: not spec.has_sparse_gradients)
    optimizer_strategy = scheduler_strategy = None
    if optimizer_items is not None:
        optimizer_strategy = _drawn(optimizer_items, check_optimizer)
    if scheduler_items is not None:
        scheduler_strategy = (
            _drawn(scheduler_items, check_scheduler) if scheduler_items else st.none()
        )
    return _training_specs(
        model_strategy,
        optimizer_strategy,
        scheduler_strategy,
        tuple(optimizer_names) if optimizer_names is not None else None,
        tuple(scheduler_names) if scheduler_names is not None else None,
    ).map(UserTrainingCase)
