"""What the installed torch supports: the one place the project asks.

Every module that depends on the torch version asks :func:`probe` instead of comparing
version strings. Each answer is found by looking for the thing itself (a dtype, a class,
a keyword argument) or by trying it once on a tiny input, so the same code runs on every
torch from 1.13.1 on.

What does not depend on the version is recorded here too, once: what each optimizer class
requires of its parameters and of ``step`` (:data:`OPTIMIZER_REGISTRY`), read by the
strategies, by the probe of optimizer flags and by the matrix's corpus.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = [
    "DTYPE_NAMES",
    "OPTIMIZER_FLAGS",
    "OPTIMIZER_REGISTRY",
    "Capabilities",
    "OptimizerConstraints",
    "cyclic_lr_cycles_betas",
    "cyclic_lr_state_pickles",
    "grad_scaler_on_cpu",
    "multihead_attention_without_bias_runs",
    "optimizer_constraints",
    "optimizer_flags_that_run",
    "optimizer_param_names",
    "optimizer_state_cast",
    "probe",
    "sgd_state_without_momentum",
    "tensor_storage",
    "torch_version",
    "weight_parametrizations",
    "weights_only_loadable_dtypes",
    "weights_only_loadable_types",
    "weights_only_loads_counter",
    "weights_only_loads_empty_bytes",
    "weights_only_samples",
]

# Every dtype name the harness knows, in the order strategies should prefer them: simplest
# first, so a failure shrinks toward float32. probe() skips names the installed torch lacks;
# the matrix's corpus writes one file per name.
DTYPE_NAMES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "complex64",
    "complex128",
    "complex32",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
)


def tensor_storage(tensor: torch.Tensor):
    """The storage under ``tensor``, untyped where torch has untyped storages (2.0 on)."""
    if hasattr(tensor, "untyped_storage"):
        return tensor.untyped_storage()
    return tensor.storage()  # torch 1.13: a TypedStorage, with the same nbytes/data_ptr


def torch_version() -> str:
    """The installed torch version as ``torch.__version__`` prints it, without the local part."""
    return torch.__version__.split("+")[0]


def _accepts(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _saves_and_loads(dtype: torch.dtype) -> bool:
    """Whether a small CPU tensor of ``dtype`` can be created, saved and loaded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "ComplexHalf support is experimental"
            tensor = torch.zeros(3, dtype=dtype)
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            buffer.seek(0)
            loaded = torch.load(buffer)
        return loaded.dtype == dtype
    except Exception:  # any failure means "not usable here"
        return False


def _subclasses_in(namespace, base: type) -> dict[str, type]:
    found = {}
    for name in sorted(dir(namespace)):
        value = getattr(namespace, name)
        if (
            isinstance(value, type)
            and issubclass(value, base)
            and value is not base
            and not name.startswith("_")
        ):
            found[name] = value
    return found


def _scheduler_classes() -> dict[str, type]:
    from torch.optim import lr_scheduler, swa_utils

    base = getattr(lr_scheduler, "LRScheduler", None) or lr_scheduler._LRScheduler
    classes = _subclasses_in(lr_scheduler, base)
    # ReduceLROnPlateau did not derive from the base class before torch 2.2.
    classes["ReduceLROnPlateau"] = lr_scheduler.ReduceLROnPlateau
    # Deprecated alias of the base class in newer versions, not a scheduler.
    classes.pop("_LRScheduler", None)
    classes["SWALR"] = swa_utils.SWALR
    return dict(sorted(classes.items()))


@dataclass(frozen=True)
class Capabilities:
    """Facts about the installed torch, found by probing it.

    Attributes:
        version: ``torch.__version__`` without the local part, e.g. ``"2.13.0"``.
        dtypes: every dtype a CPU tensor can have and survive ``torch.save``/``torch.load``,
            simplest first.
        optimizers: ``torch.optim`` optimizer classes by name.
        schedulers: ``torch.optim.lr_scheduler`` scheduler classes by name.
        load_weights_only: ``torch.load`` accepts ``weights_only``.
        weights_only_default: ``torch.load`` defaults to ``weights_only=True``.
        load_mmap: ``torch.load`` accepts ``mmap``.
        add_safe_globals: ``torch.serialization.add_safe_globals`` exists.
        safe_globals_context: ``torch.serialization.safe_globals`` (a context manager) exists.
        get_unsafe_globals: ``torch.serialization.get_unsafe_globals_in_checkpoint`` exists.
        chained_scheduler_optimizer: ``ChainedScheduler`` takes an ``optimizer`` argument
            (it derives the optimizer from its schedulers where it does not).
        cuda_available: a CUDA device can be used.
    """

    version: str
    dtypes: tuple[torch.dtype, ...]
    optimizers: dict[str, type]
    schedulers: dict[str, type]
    load_weights_only: bool
    weights_only_default: bool
    load_mmap: bool
    add_safe_globals: bool
    safe_globals_context: bool
    get_unsafe_globals: bool
    chained_scheduler_optimizer: bool
    cuda_available: bool


def _weights_only_default() -> bool:
    if not _accepts(torch.load, "weights_only"):
        return False
    default = inspect.signature(torch.load).parameters["weights_only"].default
    # torch >= 2.6 uses None meaning "True unless an environment variable says otherwise".
    if default is None:
        return bool(getattr(torch.serialization, "_default_to_weights_only", lambda _: True)(None))
    return bool(default)


@functools.cache
def probe() -> Capabilities:
    """Probe the installed torch once and return what it supports."""
    dtypes = tuple(
        getattr(torch, name)
        for name in DTYPE_NAMES
        if isinstance(getattr(torch, name, None), torch.dtype)
        and _saves_and_loads(getattr(torch, name))
    )
    serialization = torch.serialization
    return Capabilities(
        version=torch_version(),
        dtypes=dtypes,
        optimizers=_subclasses_in(torch.optim, torch.optim.Optimizer),
        schedulers=_scheduler_classes(),
        load_weights_only=_accepts(torch.load, "weights_only"),
        weights_only_default=_weights_only_default(),
        load_mmap=_accepts(torch.load, "mmap"),
        add_safe_globals=hasattr(serialization, "add_safe_globals"),
        safe_globals_context=hasattr(serialization, "safe_globals"),
        get_unsafe_globals=hasattr(serialization, "get_unsafe_globals_in_checkpoint"),
        chained_scheduler_optimizer=_accepts(
            torch.optim.lr_scheduler.ChainedScheduler, "optimizer"
        ),
        cuda_available=torch.cuda.is_available(),
    )


def weights_only_samples() -> tuple[object, ...]:
    """One small value of each type a checkpoint might hold that pickles without a class.

    The candidates :func:`weights_only_loadable_types` tries; a check that wants one value
    of each type ``torch.load(weights_only=True)`` reads keeps those whose type it lists.
    """
    return (
        {"a": 1},
        collections.OrderedDict(a=1),
        [1],
        (1,),
        1,
        1.5,
        True,
        "a",
        None,
        torch.zeros(2),
        {1, 2},
        frozenset({1}),
        1 + 2j,
        b"ab",
        bytearray(b"ab"),
        torch.Size([2, 3]),
        torch.float32,
        torch.device("cpu"),
        torch.strided,
        slice(1, 2),
        range(3),
    )


@contextlib.contextmanager
def _only_torchs_allowlist() -> Iterator[None]:
    """Within this context ``torch.load(weights_only=True)`` allows only its built-in list:
    the globals added with ``add_safe_globals`` (by torch's own modules, a library or the
    user; accelerate adds ``codecs.encode`` and numpy's during its loads) are set aside and
    put back after, so a probe fact is the same whenever it is first asked."""
    serialization = torch.serialization
    if not hasattr(serialization, "get_safe_globals"):
        yield
        return
    added = serialization.get_safe_globals()
    serialization.clear_safe_globals()
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        if added:
            serialization.add_safe_globals(added)


def _round_trips_weights_only(value: object) -> bool:
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        with _only_torchs_allowlist():
            loaded = torch.load(buffer, weights_only=True)
    except Exception:  # any refusal means "not loadable with weights_only=True"
        return False
    if isinstance(value, torch.Tensor):
        return type(loaded) is type(value)
    return type(loaded) is type(value) and loaded == value


@functools.cache
def weights_only_loadable_types() -> frozenset[type]:
    """Types whose values ``torch.load(weights_only=True)`` gives back, found by trying each.

    Empty where ``torch.load`` has no ``weights_only`` keyword.
    """
    if not probe().load_weights_only:
        return frozenset()
    return frozenset(
        type(value) for value in weights_only_samples() if _round_trips_weights_only(value)
    )


@functools.cache
def weights_only_loadable_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes of ``probe().dtypes`` that ``torch.load(weights_only=True)`` gives back as
    objects (not as a tensor's dtype), found by trying each; 1.13.1 refuses
    ``torch.bfloat16``, ``torch.bool`` and ``torch.uint8``. Empty where ``torch.load`` has
    no ``weights_only`` keyword."""
    if not probe().load_weights_only:
        return ()
    return tuple(dtype for dtype in probe().dtypes if _round_trips_weights_only(dtype))


@functools.cache
def weights_only_loads_empty_bytes() -> bool:
    """Whether ``torch.load(weights_only=True)`` gives back ``b""`` saved by ``torch.save``:
    protocol 2 pickles empty bytes as a call of ``builtins.bytes``, which 2.13.0's allowlist
    lacks, while other bytes go through the allowed ``_codecs.encode``
    (docs/findings.md, finding 25)."""
    return probe().load_weights_only and _round_trips_weights_only(b"")


@functools.cache
def weights_only_loads_counter() -> bool:
    """Whether ``torch.load(weights_only=True)`` gives back a ``collections.Counter``, as
    ``MultiStepLR`` keeps its milestones (refused up to 2.3.1)."""
    return probe().load_weights_only and _round_trips_weights_only(collections.Counter(a=1))


@functools.cache
def multihead_attention_without_bias_runs() -> bool:
    """Whether ``nn.MultiheadAttention(bias=False)`` runs an eval-mode self-attention forward
    under ``torch.no_grad()``; the fast path of 1.13.1 and 2.0.1 raises ``TypeError``
    (``qkv_bias`` must be a Tensor, not None)."""
    # Two heads: the fast path skips an odd number of heads.
    attention = torch.nn.MultiheadAttention(2, 2, bias=False, batch_first=True).eval()
    x = torch.ones(1, 1, 2)
    try:
        with torch.no_grad():
            attention(x, x, x)
    except TypeError:
        return False
    return True


@functools.cache
def cyclic_lr_state_pickles() -> bool:
    """Whether ``torch.save`` accepts a ``CyclicLR`` state_dict (on 1.13.1 it holds a
    ``WeakMethod``, which cannot be pickled)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        torch.optim.SGD([parameter], lr=0.1), base_lr=0.01, max_lr=0.1
    )
    try:
        torch.save(scheduler.state_dict(), io.BytesIO())
    except TypeError:
        return False
    return True


@functools.cache
def grad_scaler_on_cpu() -> bool:
    """Whether ``torch.amp.GradScaler("cpu")`` trains a CPU parameter: it scales a loss,
    unscales the gradient for ``scaler.step(optimizer)``, which steps, and ``update`` grows
    the scale. False where ``torch.amp`` has no ``GradScaler`` (before 2.3; the older
    ``torch.cuda.amp.GradScaler`` disables itself without CUDA) or where any of it fails."""
    scaler_class = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if scaler_class is None:
        return False
    parameter = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scaler = scaler_class("cpu", init_scale=4.0, growth_interval=1)
            scaler.scale(parameter.sum()).backward()
            scaler.step(optimizer)
            scaler.update()
    except Exception:  # any failure means "no GradScaler on CPU here"
        return False
    # The gradient of the sum is 1 once unscaled: one step of 0.5 leaves 0.5 everywhere.
    stepped = torch.equal(parameter.detach(), torch.full((2,), 0.5))
    return scaler.is_enabled() and stepped and scaler.get_scale() == 8.0


@functools.cache
def sgd_state_without_momentum() -> dict[str, object]:
    """The per-parameter state one step of ``SGD`` without momentum leaves: empty on
    2.13.0, ``{"momentum_buffer": None}`` on 1.13.1."""
    parameter = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    parameter.grad = torch.ones(2)
    optimizer.step()
    return dict(optimizer.state_dict()["state"].get(0, {}))


@dataclass(frozen=True)
class OptimizerConstraints:
    """What one optimizer class of ``torch.optim`` requires, and keeps, whatever the torch
    version; one record per class in :data:`OPTIMIZER_REGISTRY`.

    Attributes:
        name: the class's name in ``torch.optim``.
        sparse_gradients_only: it trains only parameters with sparse gradients
            (``nn.Embedding(sparse=True)``), and it is the only kind of optimizer the
            strategies give a model that has them (SGD and Adagrad accept sparse gradients
            too, but not with weight decay and other options the strategies draw).
        matrix_parameters_only: it trains only 2-d parameters.
        needs_closure: ``step`` must be given a closure that re-evaluates the loss.
        single_group: it takes one parameter group only.
        stateless_without: the hyperparameter without which (at 0) a step leaves no
            per-parameter state; empty where every step leaves some.
        own_dtype_state: the entries of its per-parameter state whose dtype can differ
            from their parameter's (kept in float32, or in the dtype of all the group's
            gradients concatenated), which ``Optimizer.load_state_dict`` casts to the
            parameter's dtype all the same (pytorch/pytorch#43706).
    """

    name: str
    sparse_gradients_only: bool = False
    matrix_parameters_only: bool = False
    needs_closure: bool = False
    single_group: bool = False
    stateless_without: str = ""
    own_dtype_state: tuple[str, ...] = ()


#: Every optimizer class the project knows, in the order the strategies prefer them,
#: simplest first, so a failure shrinks toward SGD. Classes a torch version lacks are
#: skipped; classes of a newer torch that are not here follow by name, unconstrained.
OPTIMIZER_REGISTRY: tuple[OptimizerConstraints, ...] = (
    OptimizerConstraints("SGD", stateless_without="momentum"),
    OptimizerConstraints("Adam"),
    OptimizerConstraints("AdamW"),
    OptimizerConstraints("Adagrad"),
    OptimizerConstraints("RMSprop"),
    OptimizerConstraints("Adadelta"),
    OptimizerConstraints("Adamax"),
    OptimizerConstraints("NAdam", own_dtype_state=("mu_product",)),
    OptimizerConstraints("RAdam"),
    OptimizerConstraints("ASGD", own_dtype_state=("eta", "mu")),
    OptimizerConstraints("Rprop"),
    OptimizerConstraints("Adafactor"),
    OptimizerConstraints("Muon", matrix_parameters_only=True),
    OptimizerConstraints(
        "LBFGS",
        needs_closure=True,
        single_group=True,
        # Kept on the group's first parameter, over all the group's parameters.
        own_dtype_state=("H_diag", "al", "d", "old_dirs", "old_stps", "prev_flat_grad", "ro"),
    ),
    OptimizerConstraints("SparseAdam", sparse_gradients_only=True),
)

_OPTIMIZER = {record.name: record for record in OPTIMIZER_REGISTRY}


def optimizer_constraints(name: str) -> OptimizerConstraints:
    """The record of the optimizer class ``name``; for a class :data:`OPTIMIZER_REGISTRY`
    does not know (a newer torch's), a record without constraints."""
    return _OPTIMIZER.get(name) or OptimizerConstraints(name)


#: Boolean constructor keywords of optimizers that select an implementation or a behaviour;
#: some exist on a torch version but refuse CPU tensors (capturable, fused) or leaf
#: parameters (differentiable), so each is tried once (:func:`optimizer_flags_that_run`).
OPTIMIZER_FLAGS = (
    "maximize",
    "foreach",
    "fused",
    "capturable",
    "differentiable",
    "decoupled_weight_decay",
)


def _steps_with_flag(optimizer_class: type, flag: str, sparse: bool) -> bool:
    """Whether ``optimizer_class(..., flag=True)`` takes two steps on a tiny CPU parameter
    (with a sparse gradient where ``sparse``)."""
    parameter = torch.nn.Parameter(torch.ones(2, 2))

    def closure() -> torch.Tensor:
        gradient = torch.full((2, 2), 0.5)
        parameter.grad = gradient.to_sparse() if sparse else gradient
        return torch.tensor(1.0)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = optimizer_class([parameter], **{flag: True})
            for _ in range(2):
                closure()
                optimizer.step(closure)
        return bool(torch.isfinite(parameter).all())
    except Exception:  # any failure means "this flag does not run here"
        return False


@functools.cache
def optimizer_flags_that_run(name: str) -> frozenset[str]:
    """Flags of optimizer ``name`` (a key of ``probe().optimizers``) that work on CPU.

    A flag counts when the constructor accepts it and an optimizer built with it set to
    ``True`` takes two steps on a small CPU ``nn.Parameter``. Candidates: maximize, foreach,
    fused, capturable, differentiable, decoupled_weight_decay.
    """
    optimizer_class = probe().optimizers[name]
    sparse = optimizer_constraints(name).sparse_gradients_only
    return frozenset(
        flag
        for flag in OPTIMIZER_FLAGS
        if _accepts(optimizer_class, flag) and _steps_with_flag(optimizer_class, flag, sparse)
    )


@functools.cache
def optimizer_param_names() -> bool:
    """Whether optimizers take ``(name, parameter)`` pairs and keep ``param_names`` in groups."""
    parameter = torch.nn.Parameter(torch.ones(2))
    try:
        optimizer = torch.optim.SGD([{"params": [("w", parameter)]}], lr=0.1)
    except Exception:  # older torch: "optimizer can only optimize Tensors"
        return False
    group = optimizer.state_dict()["param_groups"][0]
    return group.get("param_names") == ["w"] and optimizer.param_groups[0]["params"][0] is parameter


def _dtypes_of(value: object) -> list[torch.dtype]:
    """The dtypes of the tensors in an optimizer state entry (a tensor, or a list of them)."""
    if isinstance(value, torch.Tensor):
        return [value.dtype]
    if isinstance(value, list | tuple):
        return [dtype for item in value for dtype in _dtypes_of(item)]
    return []


def _cast_keys(optimizer_class: type, dtypes: tuple[torch.dtype, ...]) -> tuple[str, ...]:
    """The state entries whose dtype ``load_state_dict`` changes, after two steps of an
    optimizer (default hyperparameters) over one 2x2 parameter of each of ``dtypes``, in
    one group; empty where it changes none or the optimizer cannot train them."""
    parameters = [
        torch.nn.Parameter(torch.full((2, 2), 0.5 + index, dtype=dtype))
        for index, dtype in enumerate(dtypes)
    ]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = sum((p.float() * (i + 1)).square().sum() for i, p in enumerate(parameters))
        loss.backward()
        return loss

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = optimizer_class(parameters)
            for _ in range(2):
                closure()
                optimizer.step(closure)
            saved = optimizer.state_dict()
            restored = optimizer_class(parameters)
            restored.load_state_dict(saved)
    except Exception:  # e.g. SparseAdam, which trains only sparse gradients
        return ()
    loaded = restored.state_dict()["state"]
    return tuple(
        sorted(
            key
            for index, entries in saved["state"].items()
            for key, value in entries.items()
            if _dtypes_of(value) != _dtypes_of(loaded.get(index, {}).get(key))
        )
    )


# Parameters of the dtype alone, then before and after a float32 one: LBFGS keeps its flat
# buffers on the group's first parameter in the dtype of all its gradients concatenated.
_ARRANGEMENTS = (("{}",), ("{}", "float32"), ("float32", "{}"))


@functools.cache
def optimizer_state_cast(optimizer: str, dtype: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Whether ``Optimizer.load_state_dict`` changes the dtype of state that the optimizer
    class ``optimizer`` keeps beside parameters of ``dtype`` (``"float64"`` or
    ``"bfloat16"``), found by trying it (pytorch/pytorch#43706).

    Returns ``(arrangement, keys)``: the dtypes of the parameters, in order, with which the
    cast shows (the dtype alone, or before or after a float32 parameter, tried in that
    order) and the state entries it changes there; ``((), ())`` where it changes none, or
    the installed torch lacks the class or the dtype. The probe's answer for each class of
    :data:`OPTIMIZER_REGISTRY` is its record's ``own_dtype_state`` (tests check the two
    agree).
    """
    optimizer_class = probe().optimizers.get(optimizer)
    if optimizer_class is None or getattr(torch, dtype, None) not in probe().dtypes:
        return (), ()
    for pattern in _ARRANGEMENTS:
        arrangement = tuple(name.format(dtype) for name in pattern)
        keys = _cast_keys(optimizer_class, tuple(getattr(torch, name) for name in arrangement))
        if keys:
            return arrangement, keys
    return (), ()


@functools.cache
def weight_parametrizations() -> tuple[str, ...]:
    """Which of ``weight_norm``, ``spectral_norm`` and ``orthogonal`` the installed
    ``torch.nn.utils.parametrizations`` provides, in that order (1.13 lacks ``weight_norm``)."""
    try:
        from torch.nn.utils import parametrizations
    except ImportError:
        return ()
    names = ("weight_norm", "spectral_norm", "orthogonal")
    return tuple(name for name in names if callable(getattr(parametrizations, name, None)))


@functools.cache
def cyclic_lr_cycles_betas() -> bool:
    """Whether ``CyclicLR(cycle_momentum=True)`` accepts an optimizer with ``betas`` (Adam)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    try:
        torch.optim.lr_scheduler.CyclicLR(
            torch.optim.Adam([parameter]), base_lr=0.001, max_lr=0.01, cycle_momentum=True
        )
    except ValueError:
        return False
    return True
