"""The corpus one torch version writes: every kind of artifact the harness knows, in files,
with a manifest of version-neutral expected values.

:func:`write_corpus` is deterministic: models, optimizers and schedulers are the simplest
examples of the project's strategies (Hypothesis's ``find`` with a derandomized search),
built from fixed seeds, so two runs of one torch version write the same manifest. An
artifact the installed torch cannot write is recorded as unwritable, with torch's reason.

``manifest.json`` holds, for each artifact: its ``name``, ``kind``, ``file``, ``expected``
(:func:`matrix.describe.describe` of what was saved), and where the reader rebuilds objects
to load the file into, a ``rebuild`` entry (plain specs) and ``restored`` (the description
of the state those objects must hold afterwards) or ``outputs`` (of the rebuilt model).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, find, settings

from harness.capabilities import DTYPE_NAMES, optimizer_constraints, probe, torch_version
from harness.devices import storages_tagged_as
from harness.persistence import explain_error
from matrix.describe import describe
from strategies.model_specs import available_families, model_specs
from strategies.models import build_model
from strategies.optim import optimizer_specs, scheduler_specs
from strategies.training import TrainingCase, TrainingSpec, optimizer_fits

__all__ = ["MANIFEST", "from_plain", "to_plain", "write_corpus"]

MANIFEST = "manifest.json"
_FIND = settings(
    database=None,
    derandomize=True,
    max_examples=500,
    # Hypothesis tries the simplest example first; it satisfies the conditions used here,
    # so nothing is left to shrink.
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
_TRAINING_STEPS = 3
_SEED = 20261123


# --- plain specs ------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """A spec (frozen dataclasses of the strategies, tuples, scalars) as JSON-able data."""
    if dataclasses.is_dataclass(value):
        kind = type(value)
        fields = {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"class": f"{kind.__module__}.{kind.__qualname__}", "fields": fields}
    if isinstance(value, tuple):
        return {"tuple": [to_plain(item) for item in value]}
    if isinstance(value, float):
        return {"float": value.hex()}
    if value is None or isinstance(value, bool | int | str):
        return value
    raise TypeError(f"a spec holds a {type(value).__name__}, which has no plain form")


def from_plain(plain: Any) -> Any:
    """The spec :func:`to_plain` described; only classes of ``strategies`` are built."""
    if isinstance(plain, dict) and "class" in plain:
        module_name, _, name = plain["class"].rpartition(".")
        if not module_name.startswith("strategies."):
            raise ValueError(f"a plain spec names {plain['class']}, outside strategies")
        kind = getattr(importlib.import_module(module_name), name)
        return kind(**{key: from_plain(item) for key, item in plain["fields"].items()})
    if isinstance(plain, dict) and "tuple" in plain:
        return tuple(from_plain(item) for item in plain["tuple"])
    if isinstance(plain, dict) and "float" in plain:
        return float.fromhex(plain["float"])
    return plain


# --- what the artifacts hold ----------------------------------------------------------


def _simplest(strategy, condition: Callable[[Any], bool] = lambda _: True):
    return find(strategy, condition, settings=_FIND)


def _bit_patterns(dtype: torch.dtype, count: int = 16) -> torch.Tensor:
    """``count`` elements of ``dtype`` from fixed bytes: NaNs, infinities and subnormals
    included for floating types; 0 and 1 only for bool."""
    size = torch.empty((), dtype=dtype).element_size()
    raw = (torch.arange(count * size, dtype=torch.int64) * 37 + 11) % 256
    if dtype == torch.bool:
        raw = raw % 2
    return raw.to(torch.uint8).view(dtype)


@functools.cache
def _model_spec(family: str):
    return _simplest(model_specs([family]), lambda spec: not spec.has_uninitialized_parameters)


def _state_dict(family: str) -> dict[str, Any]:
    case = build_model(_model_spec(family))
    return {"object": case.module.state_dict()}


def _outputs(family: str) -> dict[str, Any]:
    spec = _model_spec(family)
    case = build_model(spec)
    case.module.eval()
    with torch.no_grad():
        outputs = case.module(*case.example_input)
    return {
        "object": {"model_state_dict": case.module.state_dict(), "inputs": case.example_input},
        "rebuild": {"model": to_plain(spec)},
        "outputs": describe(outputs),
    }


def _trained(spec: TrainingSpec) -> dict[str, Any]:
    case = TrainingCase(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        state = case.build(0)
        losses = [case.train_step(state) for _ in range(spec.steps)]
        checkpoint = {
            "model_state_dict": state.model.state_dict(),
            "optimizer_state_dict": state.optimizer.state_dict(),
            "epoch": spec.steps,
            "loss": losses[-1],
            "rng_state": torch.get_rng_state(),
        }
    restored = {"optimizer": describe(state.optimizer.state_dict())}
    if state.scheduler is not None:
        checkpoint["scheduler_state_dict"] = state.scheduler.state_dict()
        restored["scheduler"] = describe(state.scheduler.state_dict())
    return {"object": checkpoint, "rebuild": {"training": to_plain(spec)}, "restored": restored}


def _training_spec(optimizer_name: str, scheduler_spec=None) -> TrainingSpec:
    if optimizer_constraints(optimizer_name).sparse_gradients_only:
        model = _simplest(model_specs(["embedding"]), lambda spec: spec.has_sparse_gradients)
    else:
        model = _model_spec("linear")
    if not optimizer_fits(optimizer_name, build_model(model).module, model):
        raise ValueError(f"{optimizer_name} cannot train the simplest model")
    optimizer = _simplest(optimizer_specs([optimizer_name]))
    return TrainingSpec(model, optimizer, scheduler_spec, _TRAINING_STEPS)


def _optimizer_checkpoint(name: str) -> dict[str, Any]:
    return _trained(_training_spec(name))


def _scheduler_checkpoint(name: str) -> dict[str, Any]:
    return _trained(_training_spec("SGD", _simplest(scheduler_specs([name]))))


def _training_checkpoint() -> dict[str, Any]:
    scheduler = _simplest(scheduler_specs(["StepLR"]))
    return _trained(_training_spec("Adam", scheduler))


def _inference_package() -> dict[str, Any]:
    case = build_model(_model_spec("linear"))
    package = {
        "model_state_dict": case.module.state_dict(),
        "config": {"family": "linear", "hidden": [4, 4], "activation": "relu"},
        "preprocessing": {
            "mean": torch.tensor([0.485, 0.456, 0.406]),
            "std": [0.229, 0.224, 0.225],
        },
        "class_names": ["cat", "dog", "bird"],
        "metadata": {"torch_version": torch_version(), "note": "matrix corpus"},
    }
    return {"object": package}


def _whole_model() -> dict[str, Any]:
    case = build_model(_model_spec("linear"))
    return {"object": case.module}


def _views() -> dict[str, Any]:
    base = torch.arange(48, dtype=torch.float32).reshape(4, 12)
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = OrderedDict()
    views["base"] = base
    views["transposed"] = base.t()
    views["strided_slice"] = base[:, 1::3]
    views["offset_view"] = base[1:3, 2:7]
    views["row"] = base[2]
    views["channels_last"] = image.contiguous(memory_format=torch.channels_last)
    views["expanded"] = torch.arange(3.0).expand(4, 3)
    views["alias"] = views["base"]
    return {"object": views}


def _sparse() -> dict[str, Any]:
    dense = torch.tensor([[0.0, 1.5, 0.0, -2.0], [0.0, 0.0, 3.25, 0.0], [4.0, 0.0, 0.0, 0.5]])
    indices = torch.tensor([[0, 1, 1], [2, 0, 2]])
    uncoalesced = torch.sparse_coo_tensor(indices, torch.tensor([3.0, 4.0, 5.0]), (2, 3))
    return {
        "object": {
            "coo": dense.to_sparse(),
            "uncoalesced": uncoalesced,
            "csr": dense.to_sparse_csr(),
        }
    }


def _quantized() -> dict[str, Any]:
    values = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)
    per_channel_scales = torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64)
    return {
        "object": {
            "per_tensor": torch.quantize_per_tensor(values, 0.01, 3, torch.qint8),
            "per_channel": torch.quantize_per_channel(
                values, per_channel_scales, torch.tensor([0, 1, 2]), 0, torch.quint8
            ),
        }
    }


def _cuda_tagged() -> dict[str, Any]:
    case = build_model(_model_spec("linear"))
    return {"object": {"model_state_dict": case.module.state_dict()}, "tagged_as": "cuda:0"}


def _legacy_format() -> dict[str, Any]:
    case = build_model(_model_spec("linear"))
    return {"object": case.module.state_dict(), "legacy_format": True}


def _dtype(name: str) -> dict[str, Any]:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise AttributeError(f"torch {torch_version()} has no dtype torch.{name}")
    return {"object": {"tensor": _bit_patterns(dtype)}}


def artifacts() -> Iterator[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """``(name, kind, build)`` for every artifact of the installed torch's corpus."""
    for family in available_families():
        yield f"state_dict/{family}", "state_dict", lambda f=family: _state_dict(f)
    for family in available_families():
        yield f"outputs/{family}", "outputs", lambda f=family: _outputs(f)
    capabilities = probe()
    for name in capabilities.optimizers:
        yield f"optimizer/{name}", f"optimizer:{name}", lambda n=name: _optimizer_checkpoint(n)
    for name in capabilities.schedulers:
        yield f"scheduler/{name}", f"scheduler:{name}", lambda n=name: _scheduler_checkpoint(n)
    for name in DTYPE_NAMES:
        yield f"dtype/{name}", f"dtype:{name}", lambda n=name: _dtype(n)
    yield "training_checkpoint", "training_checkpoint", _training_checkpoint
    yield "inference_package", "inference_package", _inference_package
    yield "whole_model", "whole_model", _whole_model
    yield "views", "views", _views
    yield "sparse", "sparse", _sparse
    yield "quantized", "quantized", _quantized
    yield "cuda_tagged", "cuda_tagged", _cuda_tagged
    yield "legacy_format", "legacy_format", _legacy_format


def _save(built: dict[str, Any], path: str) -> None:
    keywords = {"_use_new_zipfile_serialization": False} if built.get("legacy_format") else {}
    if "tagged_as" in built:
        with storages_tagged_as(built["tagged_as"]):
            torch.save(built["object"], path, **keywords)
    else:
        torch.save(built["object"], path, **keywords)


def write_corpus(directory: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Write every artifact into ``directory`` (created if needed) with its ``manifest.json``;
    return the manifest."""
    os.makedirs(directory, exist_ok=True)
    entries = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kind, build in artifacts():
            entry: dict[str, Any] = {"name": name, "kind": kind}
            file = name.replace("/", "--") + ".pt"
            try:
                built = build()
                _save(built, os.path.join(directory, file))
            except Exception as error:  # noqa: BLE001 - torch's reason is the result
                entry["unwritable"] = explain_error(error)
                progress(f"  {name}: unwritable ({entry['unwritable']})")
            else:
                entry["file"] = file
                entry["expected"] = describe(built["object"])
                for key in ("rebuild", "restored", "outputs", "tagged_as"):
                    if key in built:
                        entry[key] = built[key]
            entries.append(entry)
    manifest = {"writer": torch_version(), "artifacts": entries}
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return manifest
