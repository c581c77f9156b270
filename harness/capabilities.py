"""What the installed torch supports: the one place the project asks.

Every module that depends on the torch version asks :func:`probe` instead of comparing
version strings. Each answer is found by looking for the thing itself (a dtype, a class,
a keyword argument) or by trying it once on a tiny input, so the same code runs on every
torch from 1.13.1 on.
"""

from __future__ import annotations

import functools
import inspect
import io
import warnings
from dataclasses import dataclass

import torch

__all__ = ["Capabilities", "probe", "torch_version", "weights_only_loadable_types"]

# Dtypes in the order strategies should prefer them: simplest first, so a failure
# shrinks toward float32. Names that the installed torch lacks are skipped.
_DTYPE_NAMES = (
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
    cuda_available: bool

    @property
    def float8_dtypes(self) -> tuple[torch.dtype, ...]:
        """The float8 dtypes among :attr:`dtypes`."""
        return tuple(d for d in self.dtypes if str(d).startswith("torch.float8"))

    def accepts(self, function, keyword: str) -> bool:
        """Whether ``function`` (a callable or class) takes the keyword argument ``keyword``."""
        return _accepts(function, keyword)


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
        for name in _DTYPE_NAMES
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
        cuda_available=torch.cuda.is_available(),
    )


def _weights_only_samples() -> tuple[object, ...]:
    """One small value of each type a checkpoint might hold that pickles without a class."""
    import collections

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


def _round_trips_weights_only(value: object) -> bool:
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
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
        type(value) for value in _weights_only_samples() if _round_trips_weights_only(value)
    )
