"""Tests of the matrix's kinds with readers of their own (the ``write``/``read`` hook of
:class:`matrix.corpus.ArtifactKind`): safetensors, TorchScript and torch.export files written
by the installed torch and read back, damaged files and manifests, a reader that crashes,
the kinds' facts and panels.

``MATRIX_OLDEST_PYTHON=.tox/oldest/bin/python`` (a Python with torch 1.13.1 and this
project importable) also runs the cross-version test: 1.13.1 writes, the installed torch
reads, and the other way round.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import warnings

import pytest

from harness.capabilities import DTYPE_NAMES, torch_version
from matrix.corpus import ARTIFACT_KINDS, MANIFEST, ArtifactKind, artifact_kind
from matrix.formats import EXPORT_FAMILIES, SAFETENSORS_FAMILIES, TORCHSCRIPT_ARTIFACTS
from matrix.reader import read_batch, read_corpus
from matrix.render import PANELS, render
from matrix.results import KIND_FACTS, LOAD_MODES, Record, kind_facts, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMAT_KINDS = ("safetensors", "torchscript", "export")
LOAD_MODE = {"safetensors": "load_file", "torchscript": "jit_load", "export": "export_load"}


def _write(directory: str) -> dict:
    """A corpus of the format kinds alone, written by the installed torch."""
    os.makedirs(directory, exist_ok=True)
    entries = []
    with warnings.catch_warnings():  # as write_corpus: torch's deprecations say nothing here
        warnings.simplefilter("ignore")
        for name in FORMAT_KINDS:
            entries += artifact_kind(name).write(directory, lambda line: None)
    manifest = {"writer": torch_version(), "artifacts": entries}
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("formats") / "corpus")
    _write(directory)
    return directory


def _damaged(corpus: str, tmp_path, change) -> list[Record]:
    """The records of a copy of ``corpus`` after ``change(directory, manifest)``."""
    directory = str(tmp_path / "damaged")
    shutil.copytree(corpus, directory)
    with open(os.path.join(directory, MANIFEST)) as handle:
        manifest = json.load(handle)
    change(directory, manifest)
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        json.dump(manifest, handle)
    return read_corpus(directory, progress=lambda line: None)


def _entry(manifest: dict, name: str) -> dict:
    return next(entry for entry in manifest["artifacts"] if entry["name"] == name)


def _by_artifact(records: list[Record]) -> dict[str, Record]:
    return {record.artifact: record for record in records}


# --- written and read back by the installed torch ---------------------------------------------


def test_every_format_artifact_reads_back_identical_with_its_own_loader(corpus):
    with open(os.path.join(corpus, MANIFEST)) as handle:
        entries = json.load(handle)["artifacts"]
    names = [entry["name"] for entry in entries]
    assert names == [
        *(f"safetensors/{family}" for family in SAFETENSORS_FAMILIES),
        *(f"safetensors/dtype_{name}" for name in DTYPE_NAMES),
        *(f"torchscript/{how}_{family}" for how, family in TORCHSCRIPT_ARTIFACTS),
        *(f"export/{family}" for family in EXPORT_FAMILIES),
    ]
    records = read_corpus(corpus, progress=lambda line: None)
    assert len(records) == len(entries)  # one load mode each
    for record in records:
        kind = record.kind.split(":")[0]
        assert record.load_mode == LOAD_MODE[kind], record
        assert record.writer == record.reader == torch_version()
        if record.outcome == "unwritable":
            # only a dtype torch or safetensors lacks; the reason names the exception class
            assert record.artifact.startswith("safetensors/dtype_"), record
            assert record.error_type and record.message.startswith(record.error_type + ": ")
        else:
            assert (record.outcome, record.message) == ("identical", ""), record
    written = {r.artifact for r in records if r.outcome == "identical"}
    assert {"safetensors/dtype_float32", "safetensors/dtype_bfloat16"} <= written
    assert {"torchscript/script_lstm", "torchscript/trace_embedding", "export/conv2d"} <= written


def test_the_manifest_keeps_inputs_and_outputs_and_no_file_is_left_by_a_failed_save(corpus):
    with open(os.path.join(corpus, MANIFEST)) as handle:
        manifest = json.load(handle)
    script = _entry(manifest, "torchscript/script_linear")
    assert script["file"] == "torchscript--script_linear.pt"
    (plain_input,) = script["inputs"]
    assert plain_input["dtype"] == "float32" and bytes.fromhex(plain_input["hex"])
    exported = _entry(manifest, "export/linear")
    assert set(exported["expected"]) == set(exported["inputs"]) == {"example", "second"}
    assert exported["inputs"]["example"] != exported["inputs"]["second"]
    assert exported["expected"]["example"] != exported["expected"]["second"]
    files = {entry["file"] for entry in manifest["artifacts"] if "file" in entry}
    assert set(os.listdir(corpus)) == files | {MANIFEST}


def test_writing_the_format_kinds_twice_gives_the_same_manifest(tmp_path):
    first, second = _write(str(tmp_path / "first")), _write(str(tmp_path / "second"))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


# --- damaged files and manifests --------------------------------------------------------------


def _flip_last_byte(directory: str, file: str) -> None:
    path = os.path.join(directory, file)
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0x01  # safetensors: the last byte of the last tensor's data
    open(path, "wb").write(bytes(data))


def test_a_flipped_tensor_byte_and_a_damaged_header_are_found(corpus, tmp_path):
    def change(directory, manifest):
        _flip_last_byte(directory, _entry(manifest, "safetensors/linear")["file"])
        with open(
            os.path.join(directory, _entry(manifest, "safetensors/conv2d")["file"]), "r+b"
        ) as f:
            f.write(b"\xff" * 8)  # the header's length
        _entry(manifest, "safetensors/embedding")["metadata"]["artifact"] = "other"

    found = _by_artifact(_damaged(corpus, tmp_path, change))
    flipped = found["safetensors/linear"]
    assert flipped.outcome == "differs" and ".storage.sha256" in flipped.message
    assert found["safetensors/conv2d"].outcome == "error"
    assert found["safetensors/conv2d"].error_type  # the loader's exception class
    assert found["safetensors/embedding"].outcome == "differs"
    assert found["safetensors/embedding"].message.startswith("metadata: expected")
    assert found["safetensors/dtype_float32"].outcome == "identical"


def test_changed_outputs_inputs_and_a_truncated_archive_are_found(corpus, tmp_path):
    def change(directory, manifest):
        expected = _entry(manifest, "torchscript/script_linear")["expected"]
        expected[1]["storage"]["sha256"] = "0" * 64
        second = _entry(manifest, "export/linear")["inputs"]["second"][0]
        second["hex"] = _entry(manifest, "export/linear")["inputs"]["example"][0]["hex"]
        path = os.path.join(directory, _entry(manifest, "export/conv2d")["file"])
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)

    found = _by_artifact(_damaged(corpus, tmp_path, change))
    assert found["torchscript/script_linear"].outcome == "differs"
    assert found["torchscript/script_linear"].message.startswith("outputs differ: ")
    assert found["export/linear"].outcome == "differs"
    assert found["export/linear"].message.startswith("outputs on the second input differ")
    assert found["export/conv2d"].outcome == "error" and found["export/conv2d"].error_type
    assert found["torchscript/script_conv2d"].outcome == "identical"


# --- the hook: a reader that crashes, raises or miscounts -------------------------------------


def _kind(read, **options) -> ArtifactKind:
    return ArtifactKind(
        "safetensors",
        holds="a test kind",
        panel="safetensors",
        named="artifact",
        write=lambda directory, progress: [],
        read=read,
        load_modes=("load_file",),
        outcomes=("identical", "error", "crashed"),
        reads="a test reader",
        **options,
    )


ENTRIES = [{"name": "safetensors/a", "kind": "safetensors:a", "file": "a", "expected": None}]


def _crash(entries, directory, progress):
    os.kill(os.getpid(), signal.SIGSEGV)


def _raise(entries, directory, progress):
    raise KeyError("no such tensor")


def test_a_reader_that_kills_its_process_is_recorded_crashed_and_the_reader_lives_on():
    (loaded,) = read_batch(_kind(_crash), ENTRIES, "/nonexistent", lambda line: None)
    entry, load_mode, outcome, message = loaded
    assert (entry, load_mode, outcome) == (ENTRIES[0], "load_file", "crashed")
    assert "SIGSEGV" in message


def test_a_reader_that_raises_is_recorded_error_with_the_class_isolated_or_not():
    for isolated in (True, False):
        (loaded,) = read_batch(
            _kind(_raise, read_isolated=isolated), ENTRIES, "/nonexistent", lambda line: None
        )
        assert loaded[2:] == ("error", "KeyError: 'no such tensor'"), isolated


def test_a_reader_returning_other_loads_or_outcomes_is_a_bug():
    twice = _kind(lambda entries, d, p: [(entries[0], "load_file", "identical", "")] * 2)
    with pytest.raises(ValueError, match="not one per entry and load mode"):
        read_batch(twice, ENTRIES, "/nonexistent", lambda line: None)
    odd = _kind(lambda entries, d, p: [(entries[0], "load_file", "executed", "")])
    with pytest.raises(ValueError, match="'executed', not of"):
        read_batch(odd, ENTRIES, "/nonexistent", lambda line: None)


def test_a_kind_record_with_half_a_hook_is_refused():
    with pytest.raises(ValueError, match="write and read together"):
        ArtifactKind("x", holds="", panel="export", named="artifact", reads="r", read=_raise)
    with pytest.raises(ValueError, match="can end crashed"):
        dataclasses.replace(_kind(_raise), outcomes=("identical", "error"))


# --- facts, records and the grid --------------------------------------------------------------


def test_the_format_kinds_are_in_kinds_json_with_their_load_modes_and_panels():
    facts = {f.name: f for f in KIND_FACTS}
    for name in FORMAT_KINDS:
        assert facts[name].load_modes == (LOAD_MODE[name],)
        assert facts[name].panel == name and name in PANELS
        assert facts[name].spelled == f"{name}:<artifact>" and not facts[name].built_by_reader
        assert "crashed" in facts[name].outcomes and LOAD_MODE[name] in LOAD_MODES
    assert kind_facts("torchscript:script_lstm") == artifact_kind("torchscript").facts
    assert [kind.facts for kind in ARTIFACT_KINDS] == list(KIND_FACTS)
    with pytest.raises(ValueError, match="load_mode"):
        Record("2.13.0", "2.13.0", "export/linear", "export:linear", "world_size_9", "identical")


def test_the_grid_draws_a_panel_per_format_from_its_own_load_mode(tmp_path):
    records = [
        Record("2.5.1", "2.13.0", "export/linear", "export:linear", "export_load", "identical"),
        Record(
            "2.13.0",
            "2.5.1",
            "export/linear",
            "export:linear",
            "export_load",
            "error",
            "SerializeError: version 9 is newer",
            "SerializeError",
        ),
        Record(
            "2.5.1", "2.13.0", "safetensors/linear", "safetensors:linear", "load_file", "identical"
        ),
        Record("2.5.1", "2.13.0", "views", "views", "weights_only", "identical"),
    ]
    markdown, _ = render(records, str(tmp_path))
    text = open(markdown).read()
    export = text.split("## export")[1].split("## ")[0]
    assert "| **2.5.1** |  | ✓ |" in export and "| **2.13.0** | E1 |  |" in export
    assert "| **2.5.1** |  | ✓ |" in text.split("## safetensors")[1].split("## ")[0]
    assert "| export/linear (export_load) | error | 1 | 2.13.0 | 2.5.1 | SerializeError" in text


# --- across torch versions (opt-in) ------------------------------------------------------------

OLDEST = os.environ.get("MATRIX_OLDEST_PYTHON", "")
_WRITE = "\n".join(
    [
        "import json, os, sys",
        "from harness.capabilities import torch_version",
        "from matrix.corpus import MANIFEST, artifact_kind",
        "os.makedirs(sys.argv[1])",
        f"kinds = [artifact_kind(name) for name in {FORMAT_KINDS!r}]",
        "entries = [e for kind in kinds for e in kind.write(sys.argv[1], lambda line: None)]",
        "manifest = {'writer': torch_version(), 'artifacts': entries}",
        "json.dump(manifest, open(os.path.join(sys.argv[1], MANIFEST), 'w'))",
    ]
)
_READ = "\n".join(
    [
        "import sys, json, dataclasses",
        "from matrix.reader import read_corpus",
        "records = read_corpus(sys.argv[1], progress=lambda line: None)",
        "print(json.dumps([dataclasses.asdict(r) for r in records]))",
    ]
)


def _in_oldest(code: str, directory: str) -> str:
    environment = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [OLDEST, "-c", code, directory],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(not OLDEST, reason="set MATRIX_OLDEST_PYTHON to a Python with torch 1.13.1")
def test_the_formats_across_torch_1_13_1_and_the_installed_torch(corpus, tmp_path):
    old = str(tmp_path / "old")
    _in_oldest(_WRITE, old)
    found = _by_artifact(read_corpus(old, progress=lambda line: None))
    assert {r.writer for r in found.values()} == {"1.13.1"}
    for family in EXPORT_FAMILIES:
        assert found[f"export/{family}"].outcome == "unwritable"
        assert (
            found[f"export/{family}"].message == "AttributeError: torch 1.13.1 has no torch.export"
        )
    # An archive computes with the reader's kernels: its outputs match the writer's eager
    # outputs exactly where the eager model rebuilt by the reader matches them (outputs/<family>
    # in the committed results: the LSTM's differ between 1.13.1 and 2.13.0).
    eager = {
        r.artifact: r.outcome
        for r in read_records(os.path.join(ROOT, "matrix", "results.json"))
        if (r.writer, r.reader, r.load_mode) == ("1.13.1", torch_version(), "weights_only")
    }
    if not eager:
        pytest.skip(f"the committed results have no reader {torch_version()}")
    for how, family in TORCHSCRIPT_ARTIFACTS:
        assert found[f"torchscript/{how}_{family}"].outcome == eager[f"outputs/{family}"], family
    assert found["safetensors/linear"].outcome == "identical"

    seen = json.loads(_in_oldest(_READ, corpus))
    by_artifact = {r["artifact"]: r for r in seen}
    assert {r["reader"] for r in seen} == {"1.13.1"}
    assert by_artifact["export/linear"]["outcome"] == "error"
    assert by_artifact["export/linear"]["message"] == (
        "AttributeError: torch 1.13.1 has no torch.export"
    )
    assert by_artifact["safetensors/dtype_uint16"]["outcome"] == "error"
    assert by_artifact["safetensors/linear"]["outcome"] == "identical"
    assert by_artifact["torchscript/script_linear"]["outcome"] == "identical"
