"""Known hazards: the cases real checkpoint code gets wrong, checked on every run.

Random draws reach a rare combination only by chance: NAdam, ASGD or LBFGS with float64 or
bfloat16 parameters, say, may not be drawn once in a hundred examples. Each case known to
break real checkpoint code is therefore one :class:`Hazard` record in
:data:`HAZARD_REGISTRY`: what checkpoint code gets wrong there, the purposes it applies to,
how its case is built (from specs, valid by construction) and whether the installed torch
has what it needs. :func:`hazard_cases` gives the cases of the available hazards for a
purpose, after the caller's exclusions, for the checkpointer invariants to check first on
every run, whatever the seed and budget.

Which optimizers keep state whose dtype ``Optimizer.load_state_dict`` changes is not
written down here but probed (:func:`harness.capabilities.optimizer_state_cast`): every
class of :data:`harness.capabilities.OPTIMIZER_REGISTRY` has a ``float64_<class>`` and a
``bfloat16_<class>`` record, available where the probe finds the cast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hypothesis.errors import InvalidArgument

from harness.capabilities import (
    OPTIMIZER_REGISTRY,
    cyclic_lr_state_pickles,
    grad_scaler_on_cpu,
    optimizer_state_cast,
    probe,
    sgd_state_without_momentum,
    weight_parametrizations,
    weights_only_loads_counter,
)
from strategies._arguments import check_choice, collection_argument
from strategies.model_specs import FAMILIES, InputSpec, Layer, ModelSpec, available_families
from strategies.models import ModelCase, build_model
from strategies.optim import OptimizerSpec, SchedulerSpec
from strategies.training import TrainingCase, TrainingSpec

__all__ = [
    "HAZARD_REGISTRY",
    "PURPOSES",
    "Hazard",
    "hazard",
    "hazard_cases",
]

#: What a hazard's case is checked for: resuming training, or loading for inference.
PURPOSES = ("resume", "inference")

#: The dtypes whose parameters make torch cast optimizer state kept in another dtype.
_CAST_DTYPES = ("float64", "bfloat16")


@dataclass(frozen=True)
class Hazard:
    """A case known to break real checkpoint code, registered once in :data:`HAZARD_REGISTRY`.

    Attributes:
        name: short identifier, e.g. ``"dropout"`` or ``"bfloat16_nadam"``; a name
            ``exclude=`` accepts.
        defect: one sentence: what checkpoint code gets wrong on this case.
        purposes: the purposes (of :data:`PURPOSES`) the case is checked for.
        build: builds the case for a purpose: a :class:`~strategies.training.TrainingCase`
            for ``"resume"``, a :class:`~strategies.models.ModelCase` for ``"inference"``.
        available: whether the installed torch has what the case needs (read from
            :mod:`harness.capabilities`); ``build`` is called only where it does.
        needs: what ``available`` asks of the installed torch besides the model families,
            optimizer and scheduler classes the case is built from, in words; empty when
            nothing else.
    """

    name: str
    defect: str
    purposes: tuple[str, ...]
    build: Callable[[str], TrainingCase | ModelCase]
    available: Callable[[], bool]
    needs: str = ""

    def case(self, purpose: str) -> TrainingCase | ModelCase:
        """The explicit case for ``purpose``, built afresh (a ModelCase holds a module,
        which a check may change).

        Raises:
            InvalidArgument: the hazard does not apply to ``purpose``, or the installed
                torch lacks what it needs.
        """
        check_choice(purpose, self.purposes, name="purpose")
        if not self.available():
            raise InvalidArgument(
                f"hazard {self.name!r} is not available on the installed torch "
                f"{probe().version}; check hazard.available() first"
            )
        return self.build(purpose)


# --- specs the cases are built from --------------------------------------------------------


def _options(**options: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(options.items())


def _layer(kind: str, children: tuple[Layer, ...] = (), **options: Any) -> Layer:
    return Layer(kind, _options(**options), children)


# Two samples of two features: the smallest input BatchNorm trains on.
_VECTOR = InputSpec("vector", (2, 2))
_FEATURES = 2


def _linear() -> Layer:
    return _layer("linear", in_features=_FEATURES, out_features=_FEATURES, bias=True)


def _mixed(dtype: str) -> Layer:
    return _layer(
        "mixed_dtype", dtype=dtype, in_features=_FEATURES, out_features=_FEATURES, bias=True
    )


def _vector_model(*layers: Layer) -> ModelSpec:
    return ModelSpec(_VECTOR, layers)


_LINEAR_MODEL = _vector_model(_linear())

# SGD with momentum: per-parameter state, no other dtype, the cheapest step.
_SGD_MOMENTUM = OptimizerSpec("SGD", ((("lr", 0.1), ("momentum", 0.9)),))


def _training(
    model: ModelSpec,
    optimizer: OptimizerSpec = _SGD_MOMENTUM,
    scheduler: SchedulerSpec | None = None,
    steps: int = 2,
    **how: bool,
) -> TrainingCase:
    # A model with nothing to train gets a learnable output scale, as the strategies do.
    scaled = not model.trainable_parameter_ranks
    return TrainingCase(
        TrainingSpec(model, optimizer, scheduler, steps, scaled_output=scaled, **how)
    )


def _model_case(model: ModelSpec) -> Callable[[str], TrainingCase | ModelCase]:
    """A build function: ``model`` trained with SGD with momentum to resume, as it is built
    for inference."""

    def build(purpose: str) -> TrainingCase | ModelCase:
        return build_model(model) if purpose == "inference" else _training(model)

    return build


def _resume_case(
    model: ModelSpec,
    optimizer: OptimizerSpec = _SGD_MOMENTUM,
    scheduler: SchedulerSpec | None = None,
    steps: int = 2,
    **how: bool,
) -> Callable[[str], TrainingCase]:
    """A build function: ``model`` trained ``steps`` steps, ``how`` the
    :class:`~strategies.training.TrainingSpec` flags (``scaler``, ``data``) to set."""
    return lambda purpose: _training(model, optimizer, scheduler, steps, **how)


def _scheduled(scheduler: SchedulerSpec, steps: int = 3) -> Callable[[str], TrainingCase]:
    return _resume_case(_LINEAR_MODEL, _SGD_MOMENTUM, scheduler, steps)


# --- what the installed torch has ----------------------------------------------------------


def _has(
    families: Iterable[str] = (), optimizers: Iterable[str] = (), schedulers: Iterable[str] = ()
) -> Callable[[], bool]:
    def available() -> bool:
        caps = probe()
        return (
            set(families) <= set(available_families())
            and set(optimizers) <= set(caps.optimizers)
            and set(schedulers) <= set(caps.schedulers)
        )

    return available


def _both(*checks: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: all(check() for check in checks)


def _has_dtype(name: str) -> Callable[[], bool]:
    return lambda: any(str(dtype) == f"torch.{name}" for dtype in probe().dtypes)


# LBFGS with fewer iterations per step and a shorter history than its defaults (20, 100):
# the history lists are kept all the same, at a quarter of the cost of a step.
_LBFGS = OptimizerSpec("LBFGS", ((("lr", 1.0), ("max_iter", 5), ("history_size", 5)),))


def _cast_case(optimizer: str, dtype: str) -> Callable[[str], TrainingCase]:
    def build(purpose: str) -> TrainingCase:
        arrangement, _ = optimizer_state_cast(optimizer, dtype)
        layers = tuple(_linear() if name == "float32" else _mixed(name) for name in arrangement)
        spec = _LBFGS if optimizer == _LBFGS.name else OptimizerSpec(optimizer)
        return _training(_vector_model(*layers), spec)

    return build


def _cast_hazard(optimizer: str, dtype: str) -> Hazard:
    return Hazard(
        f"{dtype}_{optimizer.lower()}",
        f"Optimizer.load_state_dict casts every floating-point state tensor but step to its "
        f"parameter's dtype (pytorch/pytorch#43706): state the optimizer keeps in another "
        f"dtype beside {dtype} parameters comes back changed unless the saved tensors are "
        f"put back after loading.",
        ("resume",),
        _cast_case(optimizer, dtype),
        lambda: bool(optimizer_state_cast(optimizer, dtype)[1]),
        f"load_state_dict changing the dtype of state the optimizer keeps beside {dtype} "
        "parameters (probed: optimizer_state_cast)",
    )


def _parametrized_model(purpose: str) -> TrainingCase | ModelCase:
    layers = tuple(
        _layer(
            "parametrization",
            in_features=_FEATURES,
            out_features=_FEATURES,
            bias=True,
            parametrization=name,
        )
        for name in weight_parametrizations()
    )
    return _model_case(_vector_model(*layers))(purpose)


def _constant_then_exponential() -> SchedulerSpec:
    return SchedulerSpec(
        "SequentialLR",
        _options(milestones=(2,)),
        (
            SchedulerSpec("ConstantLR", _options(factor=0.5, total_iters=2)),
            SchedulerSpec("ExponentialLR", _options(gamma=0.9)),
        ),
    )


_CYCLIC = SchedulerSpec(
    "CyclicLR",
    _options(
        base_lr=0.01,
        max_lr=0.1,
        step_size_up=2,
        step_size_down=None,
        mode="triangular",
        gamma=1.0,
        cycle_momentum=True,
    ),
)

_ONE_CYCLE = SchedulerSpec(
    "OneCycleLR",
    _options(
        max_lr=0.1,
        total_steps=64,
        pct_start=0.3,
        anneal_strategy="cos",
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=False,
        cycle_momentum=True,
    ),
)

_PLATEAU = SchedulerSpec(
    "ReduceLROnPlateau",
    # mode="max" on a falling loss: every step is a bad one, and patience=0 reduces at once.
    _options(
        mode="max",
        factor=0.5,
        patience=0,
        threshold=1e-4,
        threshold_mode="rel",
        cooldown=0,
        min_lr=0.0,
    ),
)


#: Every known hazard, in the order their cases are checked.
HAZARD_REGISTRY: tuple[Hazard, ...] = (
    Hazard(
        "dropout",
        "Dropout draws its masks from the global RNG: a load that does not restore the RNG "
        "state of save time (torch.set_rng_state) resumes with other masks than training "
        "on without the interruption.",
        ("resume",),
        _model_case(_vector_model(_linear(), _layer("dropout", dropout=0.5))),
        _has(families=("linear", "dropout")),
    ),
    Hazard(
        "batch_norm_running_statistics",
        "BatchNorm's running mean, variance and num_batches_tracked are buffers, not "
        "parameters: a checkpoint of model.parameters() (loaded with strict=False) loses "
        "them, and momentum=None averages over num_batches_tracked.",
        ("resume",),
        _model_case(
            _vector_model(
                _linear(),
                _layer("batch_norm", dims=1, num_features=_FEATURES, affine=True, momentum=None),
            )
        ),
        _has(families=("linear", "batch_norm")),
    ),
    Hazard(
        "non_persistent_buffers",
        "A non-persistent buffer is not in state_dict(): a state dict assembled by hand "
        "from named_parameters() and named_buffers() holds it, and load_state_dict "
        "(strict=True) refuses it as an unexpected key.",
        PURPOSES,
        _model_case(
            _vector_model(_layer("buffers", features=_FEATURES, persistent_scale=False), _linear())
        ),
        _has(families=("buffers", "linear")),
    ),
    Hazard(
        "tied_parameters",
        "A tied output head shares its weight with the embedding: safetensors' save_file "
        "refuses tensors that share memory, and a loader that does not keep the two one "
        "tensor unties them.",
        PURPOSES,
        _model_case(
            ModelSpec(
                InputSpec("tokens", (2, 3), vocabulary=4),
                (_layer("tied", num_embeddings=4, embedding_dim=_FEATURES, head_bias=True),),
            )
        ),
        _has(families=("tied",)),
    ),
    Hazard(
        "parametrizations",
        "torch.save refuses to pickle a parametrized module (weight_norm, spectral_norm, "
        "orthogonal): only its state_dict, with the original tensors under "
        "parametrizations.weight, can be saved, so whole-model checkpoints fail on it.",
        PURPOSES,
        _parametrized_model,
        _has(families=("parametrization",)),
    ),
    Hazard(
        "float64_parameters",
        "A state_dict cast to float32 to save space (model.float(), v.float()) rounds "
        "float64 parameters, and load_state_dict copies the rounded values back.",
        ("inference",),
        _model_case(_vector_model(_mixed("float64"))),
        _both(_has(families=("mixed_dtype",)), _has_dtype("float64")),
        "float64 tensors that save and load",
    ),
    Hazard(
        "bfloat16_parameters",
        "numpy has no bfloat16: a checkpoint written through numpy (tensor.numpy(), "
        "numpy.savez) fails on bfloat16 parameters.",
        ("inference",),
        _model_case(_vector_model(_mixed("bfloat16"))),
        _both(_has(families=("mixed_dtype",)), _has_dtype("bfloat16")),
        "bfloat16 tensors that save and load",
    ),
    *(_cast_hazard(record.name, dtype) for dtype in _CAST_DTYPES for record in OPTIMIZER_REGISTRY),
    Hazard(
        "sgd_without_momentum",
        "SGD without momentum keeps no per-parameter state: code that saves the optimizer "
        "only once it has state (if optimizer.state: ...) drops its param_groups, and with "
        "them the learning rates a scheduler set.",
        ("resume",),
        _resume_case(
            _LINEAR_MODEL,
            OptimizerSpec("SGD", ((("lr", 0.1), ("momentum", 0.0)),)),
            SchedulerSpec("StepLR", _options(step_size=1, gamma=0.5)),
        ),
        _both(
            _has(families=("linear",), optimizers=("SGD",), schedulers=("StepLR",)),
            lambda: sgd_state_without_momentum() == {},
        ),
        "SGD without momentum keeping no per-parameter state (sgd_state_without_momentum)",
    ),
    Hazard(
        "param_groups",
        "Parameter groups with different learning rates: a checkpoint that keeps one "
        "learning rate (lr = scheduler.get_last_lr()[0]) and sets it on every group after "
        "loading gives every group the first one's.",
        ("resume",),
        _resume_case(
            _vector_model(_linear(), _linear()),
            OptimizerSpec(
                "Adam",
                (
                    (("lr", 0.01), ("betas", (0.9, 0.999))),
                    (("lr", 0.1), ("betas", (0.9, 0.999))),
                    (("lr", 0.001), ("betas", (0.8, 0.99))),
                ),
            ),
        ),
        _has(families=("linear",), optimizers=("Adam",)),
    ),
    Hazard(
        "sparse_embedding",
        "SparseAdam, the optimizer of sparse embeddings, keeps its step count as a Python "
        "int: code that moves every optimizer state entry with value.to(device) fails on "
        "it.",
        ("resume",),
        _resume_case(
            ModelSpec(
                InputSpec("tokens", (2, 3), vocabulary=4),
                (
                    _layer(
                        "embedding",
                        num_embeddings=4,
                        embedding_dim=_FEATURES,
                        padding_idx=None,
                        sparse=True,
                    ),
                ),
            ),
            OptimizerSpec("SparseAdam"),
        ),
        _has(families=("embedding",), optimizers=("SparseAdam",)),
    ),
    Hazard(
        "lbfgs_history",
        "LBFGS keeps lists of history tensors (old_dirs, old_stps, ro, and al, which starts "
        "as a list of None) and Python numbers (n_iter, t, prev_loss) in its state: a flat "
        "mapping of tensors, as safetensors stores, cannot hold them.",
        ("resume",),
        _resume_case(_LINEAR_MODEL, _LBFGS),
        _has(families=("linear",), optimizers=("LBFGS",)),
    ),
    Hazard(
        "multi_step_lr",
        "MultiStepLR keeps its milestones in a collections.Counter: written as JSON they "
        "come back a dict with string keys, and the learning rate never decays again.",
        ("resume",),
        _scheduled(SchedulerSpec("MultiStepLR", _options(milestones=(1, 2), gamma=0.5))),
        _both(
            _has(families=("linear",), optimizers=("SGD",), schedulers=("MultiStepLR",)),
            weights_only_loads_counter,
        ),
        "torch.load(weights_only=True) reading a Counter back (weights_only_loads_counter)",
    ),
    Hazard(
        "reduce_lr_on_plateau",
        "ReduceLROnPlateau's state (best, num_bad_epochs, cooldown_counter) follows the "
        "metrics it was given: a scheduler restored by replaying its steps "
        "(scheduler.step() once per epoch trained) cannot be.",
        ("resume",),
        _scheduled(_PLATEAU),
        _has(families=("linear",), optimizers=("SGD",), schedulers=("ReduceLROnPlateau",)),
    ),
    Hazard(
        "sequential_lr",
        "SequentialLR keeps its children's states as dicts inside its own: loaded the way "
        "the base class loads, scheduler.__dict__.update(saved), the child schedulers are "
        "replaced by dicts.",
        ("resume",),
        _scheduled(_constant_then_exponential()),
        _has(
            families=("linear",),
            optimizers=("SGD",),
            schedulers=("SequentialLR", "ConstantLR", "ExponentialLR"),
        ),
    ),
    Hazard(
        "chained_scheduler",
        "ChainedScheduler has no step count of its own (last_epoch, _step_count): its "
        "children keep them, so restoring a scheduler's counters instead of its state_dict "
        "restores none of its schedule.",
        ("resume",),
        _scheduled(
            SchedulerSpec(
                "ChainedScheduler",
                children=(
                    SchedulerSpec("StepLR", _options(step_size=1, gamma=0.5)),
                    SchedulerSpec("ExponentialLR", _options(gamma=0.9)),
                ),
            )
        ),
        _has(
            families=("linear",),
            optimizers=("SGD",),
            schedulers=("ChainedScheduler", "StepLR", "ExponentialLR"),
        ),
    ),
    Hazard(
        "one_cycle_lr",
        "OneCycleLR(cycle_momentum=True) sets each param group's momentum as well as its "
        "learning rate at every step: restoring the per-parameter state and the learning "
        "rates only leaves the momentum the fresh optimizer was built with.",
        ("resume",),
        _scheduled(_ONE_CYCLE),
        _has(families=("linear",), optimizers=("SGD",), schedulers=("OneCycleLR",)),
    ),
    Hazard(
        "cyclic_lr",
        "CyclicLR(cycle_momentum=True) cycles each param group's momentum against its "
        "learning rate: restoring the per-parameter state and the learning rates only "
        "leaves the momentum the fresh optimizer was built with.",
        ("resume",),
        _scheduled(_CYCLIC),
        _both(
            _has(families=("linear",), optimizers=("SGD",), schedulers=("CyclicLR",)),
            cyclic_lr_state_pickles,
        ),
        "a CyclicLR state_dict that torch.save can pickle (cyclic_lr_state_pickles)",
    ),
    Hazard(
        "host_rng_augmentation",
        "A step that augments its input with Python's random and numpy's global RNG "
        "resumes exactly only if those generators are restored too: a checkpoint that keeps "
        "torch.get_rng_state() alone resumes with other augmentations.",
        ("resume",),
        _resume_case(_LINEAR_MODEL, host_rng=True),
        _has(families=("linear",), optimizers=("SGD",)),
    ),
    Hazard(
        "data_stream_position",
        "Where a run is in its data (the epoch, the position in its shuffled order, the "
        "generator of the next order) is training state: a checkpoint without the data "
        "stream's state_dict starts the epoch over and resumes on other batches.",
        ("resume",),
        # Three steps of a four-batch epoch: resuming crosses into the next epoch.
        _resume_case(_LINEAR_MODEL, steps=3, data=True),
        _has(families=("linear",), optimizers=("SGD",)),
    ),
    Hazard(
        "grad_scaler",
        "A GradScaler's scale and growth tracker change as training goes (the scale doubles "
        "after growth_interval steps without inf or NaN): a checkpoint without "
        "scaler.state_dict() resumes from the initial scale.",
        ("resume",),
        # The case's scaler starts at 2**8 and doubles every 2 steps.
        _resume_case(_LINEAR_MODEL, steps=3, scaler=True),
        _both(_has(families=("linear",), optimizers=("SGD",)), grad_scaler_on_cpu),
        "torch.amp.GradScaler training on CPU (grad_scaler_on_cpu)",
    ),
)

_BY_NAME = {record.name: record for record in HAZARD_REGISTRY}


def hazard(name: str) -> Hazard:
    """The record of hazard ``name`` (a name in :data:`HAZARD_REGISTRY`)."""
    record = _BY_NAME.get(name)
    if record is None:
        raise InvalidArgument(f"{name!r} is no hazard; the hazards are {sorted(_BY_NAME)!r}")
    return record


def _scheduler_names(spec: SchedulerSpec | None) -> tuple[str, ...]:
    if spec is None:
        return ()
    return (spec.name, *(name for child in spec.children for name in _scheduler_names(child)))


def _fits(
    case: TrainingCase | ModelCase,
    families: tuple[str, ...] | None,
    optimizers: tuple[str, ...] | None,
    schedulers: tuple[str, ...] | None,
) -> bool:
    """Whether every family, optimizer and scheduler class of ``case`` is among those given
    (None: any)."""
    if isinstance(case, ModelCase):
        return families is None or case.spec.families <= set(families)
    spec = case.spec
    return (
        (families is None or spec.model.families <= set(families))
        and (optimizers is None or spec.optimizer.name in optimizers)
        and (schedulers is None or set(_scheduler_names(spec.scheduler)) <= set(schedulers))
    )


def _names(value: object, name: str, known: Iterable[str], example: str) -> tuple[str, ...] | None:
    chosen = collection_argument(value, name=name, item_type=str, example=example)
    if chosen is not None:
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise InvalidArgument(
                f"{name} names {unknown!r}; the known names are {sorted(known)!r}"
            )
    return chosen


def hazard_cases(
    purpose: str,
    families: Iterable[str] | None = None,
    optimizers: Iterable[str] | None = None,
    schedulers: Iterable[str] | None = None,
    exclude: Iterable[str] = frozenset(),
) -> tuple[TrainingCase | ModelCase, ...]:
    """The explicit cases of the available hazards for ``purpose``, in registry order.

    ``"resume"`` gives :class:`~strategies.training.TrainingCase` objects, ``"inference"``
    :class:`~strategies.models.ModelCase` objects (built afresh at every call). A case is
    left out when one of its model families, its optimizer class or one of its scheduler
    classes (children included) is not in ``families``, ``optimizers`` or ``schedulers``
    (None: every one; an empty ``schedulers`` leaves out every case with a scheduler), or
    when its hazard's name is in ``exclude``.

    Raises:
        InvalidArgument: an unknown purpose, a name that is no model family, optimizer or
            scheduler class of the installed torch, or an ``exclude`` name that is no hazard.
    """
    check_choice(purpose, PURPOSES, name="purpose")
    caps = probe()
    families = _names(families, "families", FAMILIES, "['linear']")
    optimizers = _names(optimizers, "optimizers", caps.optimizers, "['SGD']")
    schedulers = _names(schedulers, "schedulers", caps.schedulers, "['StepLR']")
    excluded = _names(exclude, "exclude", _BY_NAME, "['lbfgs_history', 'bfloat16_nadam']") or ()
    cases = []
    for record in HAZARD_REGISTRY:
        if purpose not in record.purposes or record.name in excluded or not record.available():
            continue
        case = record.build(purpose)
        if _fits(case, families, optimizers, schedulers):
            cases.append(case)
    return tuple(cases)
