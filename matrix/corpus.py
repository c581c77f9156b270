"""Every kind of artifact the matrix knows, one :class:`ArtifactKind` record each in
:data:`ARTIFACT_KINDS`, and the corpus one torch version writes from them: files, with a
manifest of version-neutral expected values.

A record holds everything about its kind: what the file holds, how it is written (``build``,
once or for each item of ``each``), how the reader checks it beyond comparing descriptions
(``check``), its panel of the grid, and the outcomes a load of it can have. The artifacts
written, the reader's checks, :data:`matrix.results.KINDS`, :func:`matrix.render.panel_of`,
``matrix/kinds.json`` (what the torch-free tools need) and the table of kinds in
``matrix/README.md`` follow from the records (``python -m matrix kinds`` writes the last two).

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

import copy
import dataclasses
import functools
import importlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from hypothesis import HealthCheck, Phase, find, settings

from harness.capabilities import DTYPE_NAMES, optimizer_constraints, probe, torch_version
from harness.compare import short_repr
from harness.devices import storages_tagged_as
from harness.persistence import explain_error
from matrix.dcp import LOAD_MODES as DCP_LOAD_MODES
from matrix.dcp import read_dcp, write_dcp
from matrix.describe import describe, first_difference
from matrix.formats import (
    read_export,
    read_safetensors,
    read_torchscript,
    write_export,
    write_safetensors,
    write_torchscript,
)
from matrix.results import CORPUS_LOAD_MODES, KIND_TABLE, OUTCOMES, KindFacts
from strategies.model_specs import available_families, model_specs
from strategies.models import build_model
from strategies.optim import optimizer_specs, scheduler_specs
from strategies.training import TrainingCase, TrainingSpec, optimizer_fits

__all__ = [
    "ARTIFACT_KINDS",
    "CORPUS_OUTCOMES",
    "MANIFEST",
    "Artifact",
    "ArtifactKind",
    "Check",
    "artifact_kind",
    "artifacts",
    "dtype_tensor",
    "from_plain",
    "generated_kind_files",
    "kind_table",
    "kinds_markdown",
    "simplest_model_spec",
    "to_plain",
    "write_corpus",
]

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
# The seed of the objects the reader rebuilds to load an artifact into.
_REBUILD_SEED = 1


# --- plain specs ------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """A spec (frozen dataclasses of the strategies, tuples, scalars) as JSON-able data.

    A field marked ``metadata={"optional": True}`` is left out at its default, so that a
    field added to a spec leaves the committed manifests as they were."""
    if dataclasses.is_dataclass(value):
        kind = type(value)
        fields = {
            f.name: to_plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.metadata.get("optional") and getattr(value, f.name) == f.default)
        }
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
def simplest_model_spec(family: str):
    """The simplest model spec of ``family`` (Hypothesis's minimal example) without lazy
    modules: what a corpus holds of that family, the same on every run of one torch."""
    return _simplest(model_specs([family]), lambda spec: not spec.has_uninitialized_parameters)


def _state_dict(family: str) -> dict[str, Any]:
    case = build_model(simplest_model_spec(family))
    return {"object": case.module.state_dict()}


def _outputs(family: str) -> dict[str, Any]:
    spec = simplest_model_spec(family)
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
        model = simplest_model_spec("linear")
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
    case = build_model(simplest_model_spec("linear"))
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
    case = build_model(simplest_model_spec("linear"))
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
    case = build_model(simplest_model_spec("linear"))
    return {"object": {"model_state_dict": case.module.state_dict()}}


def _legacy_format() -> dict[str, Any]:
    case = build_model(simplest_model_spec("linear"))
    return {"object": case.module.state_dict()}


def dtype_tensor(name: str) -> torch.Tensor:
    """A tensor of ``torch.<name>`` from fixed bytes (NaNs, infinities and subnormals for
    floating types); AttributeError naming the installed torch where it has no such dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise AttributeError(f"torch {torch_version()} has no dtype torch.{name}")
    return _bit_patterns(dtype)


def _dtype(name: str) -> dict[str, Any]:
    return {"object": {"tensor": dtype_tensor(name)}}


# --- how the reader checks an artifact beyond its description ---------------------------


def _restricted(restored: Any, saved: Any) -> Any:
    """``restored`` with only the entries the saved state had, in the saved order, at every
    level: a torch loading an older state adds its own defaults (``foreach``,
    ``differentiable``, a scheduler's ``verbose``, ...) and orders keys its own way, which
    changes nothing restored. An entry the saved state had and ``restored`` lacks stays
    missing, so the comparison names it."""
    if isinstance(restored, dict) and isinstance(saved, dict):
        kept = copy.copy(restored)  # of the same type: dict, OrderedDict, Counter, ...
        kept.clear()
        kept.update({k: _restricted(restored[k], saved[k]) for k in saved if k in restored})
        return kept
    if isinstance(restored, list | tuple) and isinstance(saved, list | tuple):
        if len(restored) == len(saved):
            return type(restored)(_restricted(r, s) for r, s in zip(restored, saved, strict=True))
    return restored


def _check_restored(entry: dict[str, Any], loaded: Any) -> str | None:
    """Load a training checkpoint into objects rebuilt from its specs; where the restored
    optimizer or scheduler state differs from the saved one, say so."""
    state = TrainingCase(from_plain(entry["rebuild"]["training"])).build(_REBUILD_SEED)
    state.model.load_state_dict(loaded["model_state_dict"])
    # load_state_dict may pop entries of the dict it is given (CyclicLR does): keep a copy
    saved = copy.deepcopy(loaded)
    state.optimizer.load_state_dict(loaded["optimizer_state_dict"])
    restored = {"optimizer": (state.optimizer, saved["optimizer_state_dict"])}
    if "scheduler" in entry["restored"]:
        state.scheduler.load_state_dict(loaded["scheduler_state_dict"])
        restored["scheduler"] = (state.scheduler, saved["scheduler_state_dict"])
    for part, (restored_object, saved) in restored.items():
        actual = describe(_restricted(restored_object.state_dict(), saved))
        difference = first_difference(entry["restored"][part], actual)
        if difference:
            return f"restored {part} differs: {difference}"
    return None


def _check_outputs(entry: dict[str, Any], loaded: Any) -> str | None:
    """Load the state_dict strictly into a model rebuilt from its spec; compare its outputs
    in eval mode on the saved inputs with the writer's."""
    module = build_model(from_plain(entry["rebuild"]["model"]), _REBUILD_SEED).module
    module.load_state_dict(loaded["model_state_dict"], strict=True)
    module.eval()
    with torch.no_grad():
        outputs = module(*loaded["inputs"])
    difference = first_difference(entry["outputs"], describe(outputs))
    return f"outputs differ: {difference}" if difference else None


@dataclasses.dataclass(frozen=True)
class Check:
    """What the reader does with a loaded artifact after comparing its description.

    Attributes:
        name: the manifest entry it compares with (written by the kind's ``build``); the
            message of an exception it raises starts with ``<name>: ``.
        does: what it does, in a few words (the table of kinds in matrix/README.md).
        run: a function of the manifest entry and what loaded: the first difference, or
            None.
    """

    name: str
    does: str
    run: Callable[[dict[str, Any], Any], str | None]


_OUTPUTS = Check(
    "outputs",
    "loaded strictly into the model rebuilt from its spec, whose outputs in eval mode must "
    "be the writer's bit for bit",
    _check_outputs,
)
_RESTORED = Check(
    "restored",
    "loaded into the optimizer and scheduler rebuilt from their specs, whose `state_dict()` "
    "must then be the saved one",
    _check_restored,
)


# --- the artifact kinds -------------------------------------------------------------------

#: What a load of a corpus file can end as.
CORPUS_OUTCOMES = ("identical", "differs", "refused", "error", "unwritable")
# What a load of a file of another format (its own loader, in a child process) can end as.
_FORMAT_OUTCOMES = ("identical", "differs", "error", "crashed", "unwritable")


@dataclasses.dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact of the matrix: everything about it.

    Attributes:
        name: the kind as records name it; for a kind with ``named``, the prefix of
            ``<name>:<item>``.
        holds: what its files hold, in a few words.
        panel: the panel of the grid it is drawn in: one of :data:`matrix.render.PANELS`, or
            of :data:`matrix.render.READER_PANELS` for a kind each reader builds.
        build: how one artifact is written: a function (of the item, with ``each``)
            returning ``{"object": <what torch.save saves>}`` and the manifest entries its
            ``check`` reads (``rebuild``, ``outputs``, ``restored``). None for a kind each
            reader builds itself with its own torch (``reads`` names how).
        each: the items one artifact each is written for (model families, optimizer
            classes, dtypes), named ``<name>/<item>``; None for one artifact named ``<name>``.
        named: what the item of a ``<name>:<item>`` kind names; empty for a plain kind (its
            records have kind ``<name>`` whatever the item).
        check: what the reader does after comparing the description; None: nothing.
        tagged_as: the device its storages are saved as; the reader loads it with
            ``map_location="cpu"``.
        legacy_format: saved in torch's legacy format instead of the zip format.
        refusal_promised: a refusal under ``weights_only=True`` is the promise kept (drawn
            as "refused as promised"), not a loss.
        outcomes: what a load of it can end as, of :data:`matrix.results.OUTCOMES`.
        reads: for a kind each reader builds, the function of :mod:`matrix.reader` that
            builds and loads its files, and how; for a kind with ``read``, how it loads and
            judges them.
        write: for a kind that is not one ``torch.save`` file per artifact, its batch
            writer, called once per corpus: ``write(directory, progress)`` writes its files
            (or folders) into the corpus folder and returns their manifest entries, each
            ``{"name": "<name>/<item>", "kind": "<name>:<item>", "file"`` or ``"folder"``
            (relative to the corpus folder), ``"expected", ...}`` or ``{"name", "kind",
            "unwritable": "<class>: <reason>"}``, in a deterministic order.
        read: its batch reader, with ``write``: ``read(entries, directory, progress)`` of
            the kind's writable manifest entries of one corpus returns ``(entry, load_mode,
            outcome, message)`` for each entry and each of ``load_modes``; the message of a
            ``refused`` or ``error`` starts with the exception's class and ``": "``
            (:func:`harness.persistence.explain_error`).
        load_modes: what its records' ``load_mode`` can be.
        read_isolated: the reader runs ``read`` in a forked child
            (:func:`harness.files.run_isolated`), so that a load that kills the interpreter
            is recorded ``crashed`` (for every entry and load mode of that call); False for a
            ``read`` that runs its loads in processes of its own.
    """

    name: str
    holds: str
    panel: str
    build: Callable[..., dict[str, Any]] | None = None
    each: Callable[[], Iterable[str]] | None = None
    named: str = ""
    check: Check | None = None
    tagged_as: str | None = None
    legacy_format: bool = False
    refusal_promised: bool = False
    outcomes: tuple[str, ...] = CORPUS_OUTCOMES
    reads: str = ""
    write: Callable[[str, Callable[[str], None]], list[dict[str, Any]]] | None = None
    read: (
        Callable[
            [list[dict[str, Any]], str, Callable[[str], None]],
            list[tuple[dict[str, Any], str, str, str]],
        ]
        | None
    ) = None
    load_modes: tuple[str, ...] = CORPUS_LOAD_MODES
    read_isolated: bool = True

    def __post_init__(self) -> None:
        if not set(self.outcomes) <= set(OUTCOMES):
            raise ValueError(f"{self.name}: outcomes {self.outcomes} not all of {OUTCOMES}")
        if self.build is None and self.write is None and not (self.named and self.reads):
            raise ValueError(f"{self.name}: a kind each reader builds needs named and reads")
        if (self.write is None) != (self.read is None) or (self.write and self.build):
            raise ValueError(f"{self.name}: give write and read together, and no build")
        if self.write is not None and not (self.named and self.reads):
            raise ValueError(f"{self.name}: a kind with write and read needs named and reads")
        if self.read_isolated and self.read is not None and "crashed" not in self.outcomes:
            raise ValueError(f"{self.name}: a read in a forked child can end crashed")

    @property
    def built_by_reader(self) -> bool:
        """Each reader builds its files with its own torch: they are in no corpus."""
        return self.build is None and self.write is None

    def kind_of(self, item: str) -> str:
        """The kind a record of the artifact for ``item`` has."""
        return f"{self.name}:{item}" if self.named else self.name

    @property
    def facts(self) -> KindFacts:
        """What the tools that run without torch know of it (``matrix/kinds.json``)."""
        return KindFacts(
            name=self.name,
            named=self.named,
            panel=self.panel,
            outcomes=self.outcomes,
            refusal_promised=self.refusal_promised,
            built_by_reader=self.built_by_reader,
            check=self.check.name if self.check else "",
            load_modes=self.load_modes,
        )

    @property
    def how_read(self) -> str:
        """How the reader loads and judges it, in a sentence."""
        if self.built_by_reader or self.read is not None:
            return self.reads
        located = ' with `map_location="cpu"`' if self.tagged_as else ""
        then = f"; {self.check.does}" if self.check else ""
        return f"loaded in each load mode{located}, its description compared{then}"


#: Every artifact kind, in the order a corpus is written.
ARTIFACT_KINDS = (
    ArtifactKind(
        "state_dict",
        holds="the `state_dict` of the simplest model of each available family",
        panel="models",
        build=_state_dict,
        each=available_families,
    ),
    ArtifactKind(
        "outputs",
        holds="that `state_dict`, the example inputs, and (in the manifest) the outputs",
        panel="models",
        build=_outputs,
        each=available_families,
        check=_OUTPUTS,
    ),
    ArtifactKind(
        "optimizer",
        holds=f"a training checkpoint after {_TRAINING_STEPS} steps with each optimizer class",
        panel="training",
        build=_optimizer_checkpoint,
        each=lambda: probe().optimizers,
        named="class",
        check=_RESTORED,
    ),
    ArtifactKind(
        "scheduler",
        holds=f"a training checkpoint after {_TRAINING_STEPS} steps of SGD with each "
        "scheduler class",
        panel="training",
        build=_scheduler_checkpoint,
        each=lambda: probe().schedulers,
        named="class",
        check=_RESTORED,
    ),
    ArtifactKind(
        "dtype",
        holds="a tensor of each dtype from fixed bytes (NaNs, infinities, subnormals)",
        panel="tensors",
        build=_dtype,
        each=lambda: DTYPE_NAMES,
        named="dtype",
    ),
    ArtifactKind(
        "training_checkpoint",
        holds="model, Adam and StepLR states, epoch, loss and RNG state",
        panel="training",
        build=_training_checkpoint,
        check=_RESTORED,
    ),
    ArtifactKind(
        "inference_package",
        holds="a `state_dict` with model config, preprocessing, class names and metadata",
        panel="packages",
        build=_inference_package,
    ),
    ArtifactKind(
        "whole_model",
        holds="a whole model, `torch.save(model)`",
        panel="packages",
        build=_whole_model,
        refusal_promised=True,
    ),
    ArtifactKind(
        "views",
        holds="tensors sharing one storage: transposed, strided, offset, channels-last, "
        "expanded, an alias",
        panel="tensors",
        build=_views,
    ),
    ArtifactKind(
        "sparse",
        holds="sparse COO (coalesced or not) and CSR tensors",
        panel="tensors",
        build=_sparse,
    ),
    ArtifactKind(
        "quantized",
        holds="per-tensor and per-channel quantized tensors",
        panel="tensors",
        build=_quantized,
    ),
    ArtifactKind(
        "cuda_tagged",
        holds="a `state_dict` whose storages are saved as `cuda:0`",
        panel="packages",
        build=_cuda_tagged,
        tagged_as="cuda:0",
    ),
    ArtifactKind(
        "legacy_format",
        holds="a `state_dict` in the legacy format",
        panel="packages",
        build=_legacy_format,
        legacy_format=True,
    ),
    ArtifactKind(
        "safetensors",
        holds="`safetensors.torch.save_file` of the contiguous `state_dict` of the simplest "
        "model of a few families, and of a tensor of each dtype from fixed bytes, with "
        "metadata",
        panel="safetensors",
        named="artifact",
        write=write_safetensors,
        read=read_safetensors,
        load_modes=("load_file",),
        outcomes=_FORMAT_OUTCOMES,
        reads="`load_file` in a child process (load mode `load_file`): each tensor's "
        "description, by value, and the metadata compared",
    ),
    ArtifactKind(
        "torchscript",
        holds="`torch.jit.save` of `torch.jit.script` (or `trace`) of the eval-mode simplest "
        "model of a few families; (in the manifest) its example input and eager outputs",
        panel="torchscript",
        named="artifact",
        write=write_torchscript,
        read=read_torchscript,
        load_modes=("jit_load",),
        outcomes=_FORMAT_OUTCOMES,
        reads="`torch.jit.load` in a child process (load mode `jit_load`): its eval outputs on "
        "the saved input must be the writer's eager outputs bit for bit",
    ),
    ArtifactKind(
        "export",
        holds="`torch.export.save` of `torch.export.export` of the eval-mode simplest model of "
        "a few families; (in the manifest) the example and a second input and the eager "
        "outputs on each",
        panel="export",
        named="artifact",
        write=write_export,
        read=read_export,
        load_modes=("export_load",),
        outcomes=_FORMAT_OUTCOMES,
        reads="`torch.export.load(...).module()` in a child process (load mode `export_load`): "
        "its outputs on both inputs must be the writer's eager outputs bit for bit",
    ),
    ArtifactKind(
        "dcp",
        holds="`torch.distributed.checkpoint` checkpoints written by 2 gloo ranks: a "
        "`state_dict` of `Shard(0)` DTensors, and a sharded model with its Adam state after "
        "a few steps (`dcp.ITEMS`)",
        panel="distributed",
        named="artifact",
        write=write_dcp,
        read=read_dcp,
        load_modes=DCP_LOAD_MODES,
        outcomes=("identical", "differs", "error", "crashed", "unwritable"),
        reads="`dcp.read_dcp`: loaded by one process group of each world size (load modes "
        "`world_size_1`, `world_size_3`: resharded, uneven shards) into a fresh state, gathered "
        "and its description compared",
        read_isolated=False,
    ),
    ArtifactKind(
        "payload",
        holds="a hostile file of each attack class, in a zip checkpoint, and of each "
        "pickle-level one in the legacy format too",
        panel="payloads",
        named="attack class",
        refusal_promised=True,
        outcomes=("executed", "refused", "crashed", "differs", "unwritable"),
        load_modes=("weights_only", "weights_only_mmap", "unsafe"),
        reads="`reader.payload_records`: built by each torch, loaded in a child process with "
        "`weights_only=True` (and `mmap=True` where torch has it) and `weights_only=False`",
    ),
    ArtifactKind(
        "malformed",
        holds="the reader's own valid checkpoint, damaged by each `reader.MALFORMED` corruption",
        panel="malformed",
        named="corruption kind",
        refusal_promised=True,
        outcomes=("identical", "differs", "refused", "error", "crashed"),
        load_modes=("weights_only", "weights_only_mmap"),
        reads="`reader.malformed_records`: built by each torch, loaded in a child process "
        "with `weights_only=True`, with and without `mmap=True`, and compared with the "
        "undamaged file",
    ),
)
_BY_NAME = {kind.name: kind for kind in ARTIFACT_KINDS}


def artifact_kind(kind: str) -> ArtifactKind:
    """The record of a kind: a record's or manifest entry's (``views``, ``optimizer:Adam``),
    or the name of a record (``optimizer``)."""
    name, colon, _ = kind.partition(":")
    record = _BY_NAME.get(name)
    if record is None or (colon and not record.named):
        raise ValueError(f"kind {kind!r} is none of {[k.facts.spelled for k in ARTIFACT_KINDS]}")
    return record


class Artifact(NamedTuple):
    """One artifact of a corpus: its name (and file), its record's kind, its kind's record,
    and how it is built."""

    name: str
    kind: str
    record: ArtifactKind
    build: Callable[[], dict[str, Any]]


def _artifacts_of(record: ArtifactKind) -> Iterator[Artifact]:
    if record.each is None:
        yield Artifact(record.name, record.name, record, record.build)
        return
    for item in record.each():
        build = functools.partial(record.build, item)
        yield Artifact(f"{record.name}/{item}", record.kind_of(item), record, build)


def artifacts() -> Iterator[Artifact]:
    """Every artifact of the installed torch's corpus that is one ``torch.save`` file, kind by
    kind (a kind with its own ``write`` writes its artifacts itself)."""
    for record in ARTIFACT_KINDS:
        if record.build is not None:
            yield from _artifacts_of(record)


def _save(artifact: Artifact, saved: Any, path: str) -> None:
    record = artifact.record
    keywords = {"_use_new_zipfile_serialization": False} if record.legacy_format else {}
    if record.tagged_as is not None:
        with storages_tagged_as(record.tagged_as):
            torch.save(saved, path, **keywords)
    else:
        torch.save(saved, path, **keywords)


def _written(artifact: Artifact, directory: str, progress: Callable[[str], None]) -> dict:
    """Save one artifact into ``directory``; its manifest entry."""
    entry: dict[str, Any] = {"name": artifact.name, "kind": artifact.kind}
    file = artifact.name.replace("/", "--") + ".pt"
    try:
        built = artifact.build()
        _save(artifact, built["object"], os.path.join(directory, file))
    except Exception as error:  # noqa: BLE001 - torch's reason is the result
        entry["unwritable"] = explain_error(error)
        progress(f"  {artifact.name}: unwritable ({entry['unwritable']})")
    else:
        entry["file"] = file
        entry["expected"] = describe(built["object"])
        entry.update({key: value for key, value in built.items() if key != "object"})
        if artifact.record.tagged_as is not None:
            entry["tagged_as"] = artifact.record.tagged_as
    return entry


_LOCATIONS = ("file", "folder", "unwritable")


def _batch_entries(record: ArtifactKind, directory: str, progress: Callable[[str], None]) -> list:
    """The manifest entries ``record.write`` wrote; ValueError for one that is not an entry
    of the kind with exactly one of a file, a folder or the reason it is unwritable."""
    entries = record.write(directory, progress)
    for entry in entries:
        kind = entry.get("kind", "")
        if not (
            isinstance(entry.get("name"), str)
            and kind.startswith(f"{record.name}:")
            and artifact_kind(kind) is record
            and sum(key in entry for key in _LOCATIONS) == 1
            and ("unwritable" in entry or "expected" in entry)
        ):
            raise ValueError(
                f"{record.name}: its writer wrote the manifest entry {short_repr(entry, 200)}: "
                f"one needs a name, a kind {record.name}:<item>, one of {_LOCATIONS} and, "
                "unless unwritable, expected"
            )
    return entries


def write_corpus(directory: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Write every artifact into ``directory`` (created if needed) with its ``manifest.json``;
    return the manifest. A kind with its own ``write`` writes its artifacts in one call, in
    its place among the kinds."""
    os.makedirs(directory, exist_ok=True)
    entries = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for record in ARTIFACT_KINDS:
            if record.write is not None:
                entries += _batch_entries(record, directory, progress)
            elif record.build is not None:
                entries += [_written(a, directory, progress) for a in _artifacts_of(record)]
    manifest = {"writer": torch_version(), "artifacts": entries}
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return manifest


# --- what is generated from the records ---------------------------------------------------


def kind_table() -> str:
    """The text of ``matrix/kinds.json``: the facts of every kind, for the tools that run
    without torch (:mod:`matrix.results`, :mod:`matrix.render`)."""
    lines = ",\n".join(" " + json.dumps(dataclasses.asdict(k.facts)) for k in ARTIFACT_KINDS)
    return f"[\n{lines}\n]\n"


def kinds_markdown() -> str:
    """The table of artifact kinds in ``matrix/README.md``."""
    lines = [
        "| kind | what a file holds | how the reader loads and judges it | panel | outcomes |",
        "|---|---|---|---|---|",
    ]
    for kind in ARTIFACT_KINDS:
        outcomes = ", ".join(f"`{outcome}`" for outcome in kind.outcomes)
        lines.append(
            f"| `{kind.facts.spelled}` | {kind.holds} | {kind.how_read} | {kind.panel} "
            f"| {outcomes} |"
        )
    return "\n".join(lines) + "\n"


_README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
_TABLE_STARTS = "<!-- kinds: written by `python -m matrix kinds`; do not edit -->\n"
_TABLE_ENDS = "<!-- end of kinds -->\n"


def generated_kind_files() -> dict[str, str]:
    """What ``python -m matrix kinds`` writes: path -> text. ``matrix/kinds.json``, and
    ``matrix/README.md`` with the table between its markers written again."""
    with open(_README) as handle:
        readme = handle.read()
    before, starts, rest = readme.partition(_TABLE_STARTS)
    _, ends, after = rest.partition(_TABLE_ENDS)
    if not (starts and ends):
        raise ValueError(f"{_README} has no {_TABLE_STARTS.strip()} ... {_TABLE_ENDS.strip()}")
    table = f"{before}{_TABLE_STARTS}{kinds_markdown()}{_TABLE_ENDS}{after}"
    return {KIND_TABLE: kind_table(), _README: table}
