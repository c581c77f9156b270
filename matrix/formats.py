"""The persistence formats besides ``torch.save`` in the cross-version matrix: safetensors,
TorchScript and ``torch.export``, each an artifact kind with its own batch writer and reader
(the ``write``/``read`` hook of :class:`matrix.corpus.ArtifactKind`).

Each writer writes a handful of files into the corpus folder and returns their manifest
entries; each reader loads them with the format's own loader and compares with the
manifest, one record per file in the format's one load mode:

- ``safetensors:<artifact>``: ``safetensors.torch.save_file`` of the contiguous
  ``state_dict`` of the simplest model of a few families (``<family>``) and of a tensor of
  each dtype of :data:`harness.capabilities.DTYPE_NAMES` from fixed bytes (``dtype_<name>``;
  unwritable where torch or safetensors lacks it), with metadata; read with ``load_file``
  (load mode ``load_file``): every tensor's description (by value: safetensors promises no
  storage layout nor key order) and the metadata must be the writer's.
- ``torchscript:<artifact>``: ``torch.jit.script`` (``script_<family>``) or ``torch.jit.trace``
  (``trace_<family>``) of the eval-mode model, ``torch.jit.save``; read with ``torch.jit.load``
  (load mode ``jit_load``): its eval outputs on the saved example input must be the ones the
  archive gave in the writer before it was saved, bit for bit (the entry also says whether
  those were the eager module's: ``eager_differs``).
- ``export:<artifact>``: ``torch.export.export`` of the eval-mode model on its example input
  and ``torch.export.save``; read with ``torch.export.load(...).module()`` (load mode
  ``export_load``): its outputs on the example input and on a second input
  (:func:`harness.formats.second_input`) must be the ones the program gave in the writer
  before it was saved, bit for bit (``eager_differs_on``: the inputs on which those were not
  the eager module's: an exported kernel of its own, not a loss of persistence).

A writer whose torch or safetensors lacks the format records each artifact ``unwritable``
with the reason (``AttributeError: torch 2.0.1 has no torch.export``); a reader lacking it
records ``error`` with the reason. Inputs are kept in the manifest as plain bytes, so a
reader needs nothing from the writer's environment.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from harness.capabilities import DTYPE_NAMES, torch_version
from harness.compare import computed
from harness.formats import second_input
from harness.persistence import explain_error
from matrix.describe import describe, first_difference
from strategies.models import build_model

__all__ = [
    "EXPORT_FAMILIES",
    "SAFETENSORS_FAMILIES",
    "TORCHSCRIPT_ARTIFACTS",
    "read_export",
    "read_safetensors",
    "read_torchscript",
    "write_export",
    "write_safetensors",
    "write_torchscript",
]

#: The families whose simplest model's state_dict is saved with safetensors.
SAFETENSORS_FAMILIES = ("linear", "conv2d", "embedding")
#: How (``script`` or ``trace``) and which family's simplest model is saved as TorchScript.
TORCHSCRIPT_ARTIFACTS = (("script", "linear"), ("script", "conv2d"), ("script", "lstm"))
TORCHSCRIPT_ARTIFACTS += (("trace", "embedding"),)
#: The families whose simplest model is exported with torch.export.
EXPORT_FAMILIES = ("linear", "conv2d", "lstm")

# (entry, load mode, outcome, message): what a batch reader returns per entry.
Loaded = tuple[dict[str, Any], str, str, str]
Progress = Callable[[str], None]


# --- shared -------------------------------------------------------------------------------


def _model(family: str):
    """The eval-mode simplest model of ``family`` (the corpus's), as a ModelCase."""
    # matrix.corpus imports this module to register its kinds: import it when called
    from matrix.corpus import simplest_model_spec

    case = build_model(simplest_model_spec(family))
    case.module.eval()
    return case


def _eval_outputs(module: Any, inputs: tuple) -> Any:
    """The description of ``module(*inputs)`` without gradients, each tensor in a storage of
    its own (:func:`harness.compare.computed`)."""
    with torch.no_grad():
        return describe(computed(module(*inputs)))


def _plain_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    """A small tensor as JSON: its dtype, shape and bytes in hex."""
    flat = tensor.detach().contiguous().reshape(-1)
    return {
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "hex": flat.view(torch.uint8).numpy().tobytes().hex(),
    }


def _from_plain_tensor(plain: dict[str, Any]) -> torch.Tensor:
    data = torch.tensor(list(bytes.fromhex(plain["hex"])), dtype=torch.uint8)
    return data.view(getattr(torch, plain["dtype"])).reshape(plain["shape"])


def _inputs(plain: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
    return tuple(_from_plain_tensor(item) for item in plain)


def _write_each(
    kind: str,
    suffix: str,
    items: Iterable[tuple[str, Callable[[str], dict[str, Any]]]],
    directory: str,
    progress: Progress,
) -> list[dict[str, Any]]:
    """One manifest entry per ``(item, write)``: ``write(path)`` writes the file
    ``<kind>--<item><suffix>`` at ``path`` in ``directory`` and returns the entry's other
    keys; where it raises, the entry is unwritable with the reason."""
    entries = []
    for item, write in items:
        entry: dict[str, Any] = {"name": f"{kind}/{item}", "kind": f"{kind}:{item}"}
        file = f"{kind}--{item}{suffix}"
        path = os.path.join(directory, file)
        try:
            entry.update(write(path))
        except Exception as error:  # noqa: BLE001 - the writer's reason is the result
            if os.path.exists(path):  # what a failed save left
                os.remove(path)
            entry["unwritable"] = explain_error(error)
            progress(f"  {entry['name']}: unwritable ({entry['unwritable']})")
        else:
            entry["file"] = file
        entries.append(entry)
    return entries


def _read_each(
    entries: list[dict[str, Any]],
    directory: str,
    load_mode: str,
    read: Callable[[dict[str, Any], str], str | None],
) -> list[Loaded]:
    """``(entry, load_mode, outcome, message)`` per entry: ``read(entry, path)`` loads the
    file and returns the first difference (None: identical); an exception is ``error``."""
    found = []
    for entry in entries:
        try:
            difference = read(entry, os.path.join(directory, entry["file"]))
        except Exception as error:  # noqa: BLE001 - how the load failed is the result
            found.append((entry, load_mode, "error", explain_error(error)))
            continue
        outcome = "differs" if difference else "identical"
        found.append((entry, load_mode, outcome, difference or ""))
    return found


# --- safetensors --------------------------------------------------------------------------


def _safetensors():
    """``safetensors.torch`` (ModuleNotFoundError where it is not installed)."""
    return importlib.import_module("safetensors.torch")


def _by_value(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` in key order, each in a storage of its own."""
    return {key: computed(tensors[key]) for key in sorted(tensors)}


def _saved_with_safetensors(tensors: Callable[[], dict[str, torch.Tensor]], what: str):
    def write(path: str) -> dict[str, Any]:
        saved = tensors()
        metadata = {"artifact": what, "writer": torch_version()}
        _safetensors().save_file(saved, path, metadata=metadata)
        return {"expected": describe(_by_value(saved)), "metadata": metadata}

    return write


def _state_dict_tensors(family: str) -> dict[str, torch.Tensor]:
    state = _model(family).module.state_dict()
    return {key: tensor.contiguous() for key, tensor in state.items()}


def _dtype_tensors(name: str) -> dict[str, torch.Tensor]:
    from matrix.corpus import dtype_tensor  # matrix.corpus imports this module

    return {"tensor": dtype_tensor(name)}


def write_safetensors(directory: str, progress: Progress = print) -> list[dict[str, Any]]:
    """Write the safetensors files of the corpus into ``directory``; their manifest entries."""
    items = [
        (family, _saved_with_safetensors(lambda f=family: _state_dict_tensors(f), family))
        for family in SAFETENSORS_FAMILIES
    ]
    items += [
        (f"dtype_{name}", _saved_with_safetensors(lambda n=name: _dtype_tensors(n), name))
        for name in DTYPE_NAMES
    ]
    return _write_each("safetensors", ".safetensors", items, directory, progress)


def _read_safetensors_file(entry: dict[str, Any], path: str) -> str | None:
    safetensors = _safetensors()
    difference = first_difference(
        entry["expected"], describe(_by_value(safetensors.load_file(path)))
    )
    if difference:
        return difference
    with importlib.import_module("safetensors").safe_open(path, "pt") as opened:
        metadata = opened.metadata() or {}
    if metadata != entry["metadata"]:
        return f"metadata: expected {entry['metadata']!r}, got {metadata!r}"
    return None


def read_safetensors(
    entries: list[dict[str, Any]], directory: str, progress: Progress = print
) -> list[Loaded]:
    """Load each safetensors file of ``entries`` with ``load_file``; compare its tensors and
    metadata with the manifest's."""
    return _read_each(entries, directory, "load_file", _read_safetensors_file)


# --- TorchScript --------------------------------------------------------------------------


def _saved_as_torchscript(how: str, family: str):
    def write(path: str) -> dict[str, Any]:
        case = _model(family)
        inputs = case.example_input
        with torch.no_grad():
            if how == "script":
                archive = torch.jit.script(case.module)
            else:
                archive = torch.jit.trace(case.module, inputs, check_trace=False)
        # What must come back is what the archive gave before it was saved (and whether
        # that is the eager module's).
        expected = _eval_outputs(archive, inputs)
        torch.jit.save(archive, path)
        return {
            "expected": expected,
            "inputs": [_plain_tensor(t) for t in inputs],
            "eager_differs": _eval_outputs(case.module, inputs) != expected,
        }

    return write


def write_torchscript(directory: str, progress: Progress = print) -> list[dict[str, Any]]:
    """Write the TorchScript archives of the corpus into ``directory``; their manifest
    entries (with the example inputs, the archive's eval outputs before it was saved, and
    whether those are not the eager module's)."""
    items = [
        (f"{how}_{family}", _saved_as_torchscript(how, family))
        for how, family in TORCHSCRIPT_ARTIFACTS
    ]
    return _write_each("torchscript", ".pt", items, directory, progress)


def _read_torchscript_file(entry: dict[str, Any], path: str) -> str | None:
    loaded = torch.jit.load(path, map_location="cpu")
    loaded.eval()
    difference = first_difference(
        entry["expected"], _eval_outputs(loaded, _inputs(entry["inputs"]))
    )
    return f"outputs differ: {difference}" if difference else None


def read_torchscript(
    entries: list[dict[str, Any]], directory: str, progress: Progress = print
) -> list[Loaded]:
    """Load each TorchScript archive of ``entries`` with ``torch.jit.load``; compare its eval
    outputs on the saved input with the writer's, bit for bit."""
    return _read_each(entries, directory, "jit_load", _read_torchscript_file)


# --- torch.export -------------------------------------------------------------------------


def _torch_export():
    """``torch.export``, with ``export``, ``save`` and ``load``; AttributeError naming what
    the installed torch lacks."""
    try:
        module = importlib.import_module("torch.export")
    except ImportError:
        raise AttributeError(f"torch {torch_version()} has no torch.export") from None
    for name in ("export", "save", "load"):
        if not hasattr(module, name):
            raise AttributeError(f"torch {torch_version()} has no torch.export.{name}")
    return module


def _exported(family: str):
    def write(path: str) -> dict[str, Any]:
        export = _torch_export()
        case = _model(family)
        inputs = {"example": case.example_input, "second": second_input(case)}
        with torch.no_grad():
            program = export.export(case.module, case.example_input)
        # What must come back is what the program gave before it was saved; where that is
        # not the eager module's (an exported kernel of its own), the entry says so.
        expected = {name: _eval_outputs(program.module(), given) for name, given in inputs.items()}
        export.save(program, path)
        plain = {name: [_plain_tensor(t) for t in given] for name, given in inputs.items()}
        eager = [
            name
            for name, given in inputs.items()
            if _eval_outputs(case.module, given) != expected[name]
        ]
        return {"expected": expected, "inputs": plain, "eager_differs_on": eager}

    return write


def write_export(directory: str, progress: Progress = print) -> list[dict[str, Any]]:
    """Write the ``torch.export`` archives of the corpus into ``directory``; their manifest
    entries (with the inputs, the program's eval outputs on each before it was saved, and
    the inputs on which those are not the eager module's)."""
    items = [(family, _exported(family)) for family in EXPORT_FAMILIES]
    return _write_each("export", ".pt2", items, directory, progress)


def _read_export_file(entry: dict[str, Any], path: str) -> str | None:
    module = _torch_export().load(path).module()
    for name, expected in entry["expected"].items():
        difference = first_difference(
            expected, _eval_outputs(module, _inputs(entry["inputs"][name]))
        )
        if difference:
            return f"outputs on the {name} input differ: {difference}"
    return None


def read_export(
    entries: list[dict[str, Any]], directory: str, progress: Progress = print
) -> list[Loaded]:
    """Load each ``.pt2`` archive of ``entries`` with ``torch.export.load``; compare the
    program's outputs on the example and the second input with the writer's, bit for bit."""
    return _read_each(entries, directory, "export_load", _read_export_file)
