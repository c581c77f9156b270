"""``python -m harness inspect`` (harness.inspect): every kind of file the project can write
is identified with its tensors, globals and weights-only verdict, every hostile class of
strategies.payloads (and every hostile safetensors header) is matched, and the exit codes.

Expected values come from torch and the libraries themselves (the saved state_dict's
tensors, torch's own get_unsafe_globals_in_checkpoint, a real torch.load), never from the
inspector.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from harness import cli
from harness.files import SAFETENSORS_ATTACKS
from harness.inspect import (
    FILE_FORMATS,
    HOSTILE_SIGNS,
    NotACheckpoint,
    inspect_checkpoint,
)
from strategies.payloads import HOSTILE_CLASSES, LEGACY_CARRIED_CLASSES, HostilePayload

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    return model.eval()


def _expected(state: dict) -> dict[str, tuple[str, tuple[int, ...], int]]:
    return {
        name: (str(t.dtype).removeprefix("torch."), tuple(t.shape), t.numel() * t.element_size())
        for name, t in state.items()
    }


def _found(inspection) -> dict[str, tuple[str, tuple[int, ...], int]]:
    return {t.name: (t.dtype, t.shape, t.bytes) for t in inspection.tensors}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, str]:
    """One file (or folder) of every kind the project can write."""
    directory = tmp_path_factory.mktemp("written")
    model = _model()
    state = model.state_dict()
    paths = {name: str(directory / name) for name in ("zip.pt", "legacy.pt", "whole.pt")}
    torch.save(state, paths["zip.pt"])
    torch.save(state, paths["legacy.pt"], _use_new_zipfile_serialization=False)
    torch.save(model, paths["whole.pt"])
    paths["script.pt"] = str(directory / "script.pt")
    torch.jit.save(torch.jit.script(model), paths["script.pt"])
    paths["model.pt2"] = str(directory / "model.pt2")
    program = torch.export.export(model, (torch.zeros(2, 3),))
    torch.export.save(program, paths["model.pt2"])
    paths["plain.pkl"] = str(directory / "plain.pkl")
    with open(paths["plain.pkl"], "wb") as file:
        pickle.dump({"weight": state["0.weight"]}, file)
    try:
        from safetensors.torch import save_file
    except ImportError:
        pass
    else:
        paths["model.safetensors"] = str(directory / "model.safetensors")
        save_file(dict(state), paths["model.safetensors"], metadata={"format": "pt"})
    import torch.distributed.checkpoint as dcp

    paths["dcp"] = str(directory / "dcp")
    dcp.save({"model": state}, checkpoint_id=paths["dcp"])
    return paths


@pytest.mark.parametrize(
    "name, expected_format",
    [
        ("zip.pt", "torch-zip"),
        ("legacy.pt", "torch-legacy"),
        ("whole.pt", "torch-zip"),
        ("script.pt", "torchscript"),
        ("model.pt2", "pt2"),
        ("plain.pkl", "pickle"),
        ("model.safetensors", "safetensors"),
        ("dcp", "dcp"),
    ],
)
def test_every_kind_the_project_writes_is_identified(written, name, expected_format) -> None:
    if name not in written:
        pytest.skip("safetensors is not installed")
    inspection = inspect_checkpoint(written[name], check=False)
    assert inspection.format == expected_format
    assert expected_format in FILE_FORMATS
    assert inspection.hostile == () or name == "whole.pt", inspection.hostile


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt", "model.safetensors", "model.pt2"])
def test_the_tensors_of_a_state_dict_are_listed(written, name) -> None:
    if name not in written:
        pytest.skip("safetensors is not installed")
    state = _model().state_dict()
    expected = _expected(state)
    found = _found(inspect_checkpoint(written[name], check=False))
    assert found == expected


def test_the_tensors_of_a_dcp_checkpoint_are_listed(written) -> None:
    state = _model().state_dict()
    expected = {
        f"model.{name}": (dtype, shape) for name, (dtype, shape, _) in _expected(state).items()
    }
    found = {
        name: (dtype, shape)
        for name, (dtype, shape, _) in _found(
            inspect_checkpoint(written["dcp"], check=False)
        ).items()
    }
    assert found == expected


def test_tied_tensors_are_shown_sharing_storage(tmp_path) -> None:
    weight = torch.randn(4, 3)
    path = str(tmp_path / "tied.pt")
    torch.save({"embedding": weight, "head": weight, "other": torch.zeros(2)}, path)
    tensors = {t.name: t for t in inspect_checkpoint(path, check=False).tensors}
    assert tensors["embedding"].shared and tensors["head"].shared
    assert tensors["embedding"].storage == tensors["head"].storage
    assert not tensors["other"].shared


def test_the_saved_device_is_the_storage_location(tmp_path) -> None:
    from harness.devices import storages_tagged_as

    path = str(tmp_path / "cuda.pt")
    with storages_tagged_as("cuda:0"):
        torch.save({"weight": torch.ones(2)}, path)
    (tensor,) = inspect_checkpoint(path, check=False).tensors
    assert tensor.device == "cuda:0"


def test_weights_only_is_predicted_and_checked_like_torch(written) -> None:
    state_file = inspect_checkpoint(written["zip.pt"])
    assert state_file.weights_only.predicted and state_file.weights_only.loaded
    whole = inspect_checkpoint(written["whole.pt"])
    assert not whole.weights_only.predicted and not whole.weights_only.loaded
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(written["whole.pt"]))
    assert unsafe and unsafe <= set(whole.globals)
    script = inspect_checkpoint(written["script.pt"])
    assert script.weights_only.loaded is False
    with pytest.raises(RuntimeError):
        torch.load(written["script.pt"], weights_only=True)
    assert not inspect_checkpoint(written["dcp"]).weights_only.applies


def test_the_torch_version_a_pt2_archive_records(written) -> None:
    assert inspect_checkpoint(written["model.pt2"], check=False).torch_version == torch.__version__
    assert inspect_checkpoint(written["zip.pt"], check=False).torch_version is None


def _hostile_files(directory) -> list[tuple[str, str]]:
    files = []
    cases = [(name, "zip") for name in HOSTILE_CLASSES]
    cases += [(name, "legacy") for name in LEGACY_CARRIED_CLASSES]
    for name, carrier in cases:
        path = os.path.join(directory, f"{name}-{carrier}.pt")
        HostilePayload(name, carrier).write(path, os.path.join(directory, f"{name}.ran"))
        files.append((name, path))
    for record in SAFETENSORS_ATTACKS:
        path = os.path.join(directory, f"{record.name}.safetensors")
        with open(path, "wb") as file:
            file.write(record.archive(""))
        files.append((record.name, path))
    return files


def test_every_hostile_class_is_matched_and_nothing_runs(tmp_path) -> None:
    files = _hostile_files(str(tmp_path))
    assert {sign.name for sign in HOSTILE_SIGNS} == {name for name, _ in files}
    for name, path in files:
        inspection = inspect_checkpoint(path, check=False)
        assert name in inspection.hostile, (name, inspection.hostile, inspection.notes)
    assert not list(tmp_path.glob("*.ran")), "reading a hostile file ran its payload"


def test_a_hostile_file_is_refused_by_the_real_load_too(tmp_path) -> None:
    path = str(tmp_path / "hostile.pt")
    HostilePayload("reduce_os_system").write(path, str(tmp_path / "ran"))
    inspection = inspect_checkpoint(path)
    assert inspection.weights_only.predicted is False and inspection.weights_only.loaded is False
    assert "os.system" in inspection.globals or "posix.system" in inspection.globals
    assert not (tmp_path / "ran").exists()


def _run(*argv: str) -> int:
    return cli.main(["inspect", *argv])


def test_json_output(written, capsys) -> None:
    assert _run(written["zip.pt"], "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["format"] == "torch-zip"
    assert set(document) == {
        "path", "format", "torch_version", "format_version", "tensors", "globals",
        "weights_only", "hostile", "notes",
    }  # fmt: skip
    assert set(document["weights_only"]) == {"applies", "predicted", "loaded", "detail"}
    assert {"name", "dtype", "shape", "device", "bytes", "storage", "shared"} == set(
        document["tensors"][0]
    )


def test_the_table_names_every_tensor(written, capsys) -> None:
    assert _run(written["zip.pt"]) == 0
    out = capsys.readouterr().out
    assert "format:        torch-zip" in out
    for name in _model().state_dict():
        assert name in out


def test_require_weights_only_exit_codes(written, tmp_path, capsys) -> None:
    assert _run(written["zip.pt"], "--require-weights-only") == 0
    assert _run(written["whole.pt"], "--require-weights-only") == 1
    assert _run(written["script.pt"], "--require-weights-only") == 1
    hostile = str(tmp_path / "hostile.pt")
    HostilePayload("reduce_eval").write(hostile, str(tmp_path / "ran"))
    assert _run(hostile, "--require-weights-only") == 1
    assert _run(hostile) == 0
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    capsys.readouterr()
    assert _run(str(text)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not a checkpoint" in error
    assert _run(str(tmp_path / "missing.pt")) == 2


def test_a_path_that_is_no_checkpoint_raises(tmp_path) -> None:
    with pytest.raises(NotACheckpoint):
        inspect_checkpoint(tmp_path)  # a folder without .metadata


@pytest.mark.parametrize("legacy", [False, True])
def test_a_large_tensor_is_listed_without_reading_its_data(tmp_path, legacy) -> None:
    big = torch.zeros(5 * 2**20)  # 20 MiB of float32: a record above the read limit
    path = str(tmp_path / "big.pt")
    torch.save(
        {"big": big, "small": torch.ones(3)}, path, _use_new_zipfile_serialization=not legacy
    )
    inspection = inspect_checkpoint(path)
    tensors = {t.name: (t.dtype, t.shape, t.bytes) for t in inspection.tensors}
    assert tensors == {"big": ("float32", (5 * 2**20,), 20 * 2**20), "small": ("float32", (3,), 12)}
    assert inspection.hostile == ()
    assert inspection.weights_only.loaded
