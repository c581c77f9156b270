"""Tests of the cross-version matrix: the version-neutral descriptions, plain specs, the
results format, the rendering, and, with the installed torch, every committed corpus read
again and compared with the committed results."""

from __future__ import annotations

import collections
import configparser
import glob
import json
import os
import tempfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.capabilities import torch_version
from matrix.corpus import MANIFEST, from_plain, to_plain, write_corpus
from matrix.describe import describe, first_difference
from matrix.reader import MALFORMED, PAYLOADS, malformed_records, payload_records, read_corpus
from matrix.render import PANELS, READER_PANELS, panel_of, render, shown_outcome
from matrix.results import BUILT_BY_READER, Record, merge, read_records, write_records
from matrix.versions import VERSIONS, check_versions, needs_numpy_1, tox_env, version_key
from strategies.model_specs import model_specs
from strategies.optim import optimizer_specs, scheduler_specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = sorted(
    glob.glob(os.path.join(ROOT, "matrix", "corpus", "*", MANIFEST)),
    key=lambda path: version_key(os.path.basename(os.path.dirname(path))),
)
RESULTS = os.path.join(ROOT, "matrix", "results.json")


# --- versions and tox ---------------------------------------------------------------------


def test_tox_has_one_matrix_environment_per_version():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(ROOT, "tox.ini"))
    section = next(name for name in parser.sections() if name.startswith("testenv:matrix-torch{"))
    named = section.removeprefix("testenv:matrix-torch{").removesuffix("}").split(",")
    assert named == list(VERSIONS)
    deps = parser[section]["deps"]
    for version in VERSIONS:
        assert f"torch{version}: torch=={version}" in deps
    old = ",".join(v for v in VERSIONS if needs_numpy_1(v))
    assert f"torch{{{old}}}: numpy<2" in deps
    assert tox_env("2.6.0") == "matrix-torch2.6.0"


def test_versions_sort_as_releases_and_unknown_ones_are_named():
    assert version_key("2.10.0") > version_key("2.9.1") > version_key("1.13.1")
    assert check_versions(["2.6.0", "1.13.1"]) == ["1.13.1", "2.6.0"]
    with pytest.raises(ValueError, match="not in the matrix: 2.99.0"):
        check_versions(["2.99.0"])


# --- descriptions -------------------------------------------------------------------------


def _checkpoint():
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return collections.OrderedDict(
        weight=weight, row=weight[1], bias=torch.ones(4), lr=0.1, steps=[1, 2], name="model"
    )


def _changed(change):
    checkpoint = _checkpoint()
    change(checkpoint)
    return checkpoint


@pytest.mark.parametrize(
    "change, where",
    [
        (lambda c: c["bias"].__setitem__(0, 2.0), "['bias'].storage.sha256"),
        (lambda c: c.__setitem__("row", c["weight"][1].clone()), "['row'].storage"),
        (lambda c: c.__setitem__("weight", c["weight"].double()), "['weight'].dtype"),
        (lambda c: c.__setitem__("weight", c["weight"].t().contiguous().t()), "['weight'].stride"),
        (lambda c: c.__setitem__("lr", 0.1 + 1e-17 + 2**-56), "['lr']"),
        (lambda c: c.__setitem__("steps", (1, 2)), "['steps']: expected a list, got a tuple"),
        (lambda c: c.move_to_end("weight"), "same keys in another order"),
        (lambda c: c.pop("name"), "['name']: missing"),
        (lambda c: c.__setitem__("extra", 1), "['extra']: unexpected"),
        (lambda c: c["bias"].requires_grad_(), "['bias'].requires_grad"),
    ],
)
def test_first_difference_names_each_single_change(change, where):
    difference = first_difference(describe(_checkpoint()), describe(_changed(change)))
    assert difference is not None and where in difference


def test_descriptions_of_equal_values_are_equal_and_json():
    first, second = describe(_checkpoint()), describe(_checkpoint())
    assert first_difference(first, second) is None
    assert json.loads(json.dumps(first)) == first
    assert describe(collections.OrderedDict()) != describe({})


def test_sparse_and_quantized_are_described_by_their_parts():
    dense = torch.tensor([[0.0, 1.5], [2.0, 0.0]])
    assert first_difference(describe(dense.to_sparse()), describe(dense.to_sparse())) is None
    other = torch.tensor([[0.0, 1.5], [2.5, 0.0]])
    assert "values" in first_difference(describe(dense.to_sparse()), describe(other.to_sparse()))
    q1 = torch.quantize_per_tensor(dense, 0.1, 0, torch.qint8)
    q2 = torch.quantize_per_tensor(dense, 0.2, 0, torch.qint8)
    assert ".scale" in first_difference(describe(q1), describe(q2))


# --- plain specs ----------------------------------------------------------------------------


@given(st.one_of(model_specs(), optimizer_specs(), scheduler_specs()))
def test_specs_survive_their_plain_json_form(spec):
    assert from_plain(json.loads(json.dumps(to_plain(spec)))) == spec


def test_plain_form_builds_only_strategies_classes():
    with pytest.raises(ValueError, match="outside strategies"):
        from_plain({"class": "os.system", "fields": {}})


# --- results format -----------------------------------------------------------------------


def test_records_refuse_words_outside_the_vocabulary():
    Record(
        "2.5.1", "2.6.0", "dtype/float8_e4m3fn", "dtype:float8_e4m3fn", "weights_only", "identical"
    )
    with pytest.raises(ValueError, match="outcome"):
        Record("2.5.1", "2.6.0", "views", "views", "weights_only", "fine")
    with pytest.raises(ValueError, match="load_mode"):
        Record("2.5.1", "2.6.0", "views", "views", "mmap", "identical")
    with pytest.raises(ValueError, match="kind"):
        Record("2.5.1", "2.6.0", "views", "tensors", "weights_only", "identical")


def test_records_round_trip_sorted_and_conflicts_are_refused(tmp_path):
    a = Record("2.10.0", "2.9.1", "views", "views", "weights_only", "identical")
    b = Record("2.9.1", "2.10.0", "views", "views", "default", "refused", "UnpicklingError: x")
    path = str(tmp_path / "results.json")
    write_records([a, b], path)
    assert read_records(path) == [b, a]
    assert merge([[a], [a, b]]) == [b, a]
    with pytest.raises(ValueError, match="two results"):
        merge([[a], [Record("2.10.0", "2.9.1", "views", "views", "weights_only", "differs")]])


def test_record_messages_name_no_machine_folder():
    folder = "/home/a/.tox/e/lib/python3.11/site-packages"
    message = f"Can't get attribute 'x' on <module 'torch._utils' from '{folder}/torch/_utils.py'>"
    record = Record("1.13.1", "2.6.0", "sparse", "sparse", "unsafe", "error", message)
    assert record.message.endswith("from '<site-packages>/torch/_utils.py'>")
    assert Record(**{**record.__dict__}) == record  # normalizing twice changes nothing
    temporary = os.path.join(tempfile.gettempdir(), "malformed-x1_y2", "3-empty.pt")
    record = Record("2.6.0", "2.6.0", "m", "malformed:empty", "weights_only", "error", temporary)
    assert record.message == "<tmp>/3-empty.pt"


def test_render_draws_every_panel(tmp_path):
    records = [
        Record("2.5.1", "2.6.0", "views", "views", "weights_only", "identical"),
        Record("2.6.0", "2.5.1", "whole_model", "whole_model", "weights_only", "refused", "E: x"),
        Record("2.6.0", "2.5.1", "quantized", "quantized", "weights_only", "refused", "E: y"),
        Record(
            "2.5.1",
            "2.5.1",
            "torchscript_archive",
            "payload:torchscript_archive",
            "weights_only",
            "executed",
        ),
        Record(
            "2.6.0",
            "2.6.0",
            "malformed/empty/0/0x1",
            "malformed:empty",
            "weights_only_mmap",
            "error",
            "EOFError: ",
        ),
    ]
    markdown, picture = render(records, str(tmp_path))
    text = open(markdown).read()
    for panel in [*PANELS, *READER_PANELS]:
        assert f"## {panel}" in text
    assert "loaded with weights_only=True, mmap=True\n\n| kind of damage \\ torch | 2.6.0 |" in text
    assert "| empty (mmap) | error | 1 | 2.6.0 | 2.6.0 | EOFError:  |" in text
    # a weights_only refusal of a whole-model pickle keeps the promise; of quantized, not
    packages = text.split("## packages")[1].split("## ")[0]
    tensors = text.split("## tensors")[1].split("## ")[0]
    assert "| **2.6.0** | r1 |  |" in packages and "| **2.6.0** | R1 |  |" in tensors
    assert "☠1" in text
    assert "| quantized | refused | 1 | 2.6.0 | 2.5.1 | E: y |" in text
    assert "whole_model | refused" not in text
    assert open(picture, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert panel_of("scheduler:StepLR") == "training" and panel_of("dtype:bool") == "tensors"
    assert shown_outcome(records[1]) == "refused as promised"
    assert shown_outcome(records[2]) == "refused"


# --- the committed corpora, read by the installed torch -------------------------------------


def test_writing_the_corpus_twice_gives_the_same_manifest(tmp_path):
    first = write_corpus(str(tmp_path / "first"), progress=lambda line: None)
    second = write_corpus(str(tmp_path / "second"), progress=lambda line: None)
    assert first_difference(first, second) is None
    assert first["writer"] == torch_version()
    # On the default torch only dtypes it lacks are unwritable.
    unwritable = [e for e in first["artifacts"] if "unwritable" in e]
    assert all(e["kind"].startswith("dtype:") for e in unwritable), unwritable


def test_every_torch_version_has_a_committed_corpus_and_results():
    committed = [os.path.basename(os.path.dirname(path)) for path in CORPORA]
    assert committed == list(VERSIONS)
    records = read_records(RESULTS)
    assert {r.writer for r in records} == set(VERSIONS)
    assert {r.reader for r in records} == set(VERSIONS)


def _committed_outcomes(writer: str, built_by_reader: bool = False) -> dict[tuple, tuple]:
    """The committed outcomes of the corpus of ``writer`` read by the installed torch, or
    (``built_by_reader``) of the payloads and damaged files it built."""
    return {
        (r.artifact, r.load_mode): (r.outcome, r.message)
        for r in read_records(RESULTS)
        if r.writer == writer
        and r.reader == torch_version()
        and r.kind.startswith(BUILT_BY_READER) == built_by_reader
    }


@pytest.mark.parametrize(
    "manifest", CORPORA, ids=lambda path: os.path.basename(os.path.dirname(path))
)
def test_committed_corpus_reads_as_the_matrix_recorded(manifest):
    """Every committed corpus, read by the installed torch, gives the outcomes the matrix
    committed for this torch version as reader."""
    writer = os.path.basename(os.path.dirname(manifest))
    expected = _committed_outcomes(writer)
    if not expected:
        pytest.skip(f"the committed results have no reader {torch_version()}")
    records = read_corpus(os.path.dirname(manifest), progress=lambda line: None)
    actual = {(r.artifact, r.load_mode): (r.outcome, r.message) for r in records}
    assert actual == expected


def test_payloads_and_damaged_files_end_as_the_matrix_recorded():
    """The hostile and damaged files the installed torch builds and loads end exactly as the
    matrix committed for this torch version."""
    expected = _committed_outcomes(torch_version(), built_by_reader=True)
    if not expected:
        pytest.skip(f"the committed results have no reader {torch_version()}")
    records = payload_records(progress=lambda line: None)
    records += malformed_records(progress=lambda line: None)
    actual = {(r.artifact, r.load_mode): (r.outcome, r.message) for r in records}
    assert actual == expected
    assert {r.kind for r in records if r.kind.startswith("malformed:")} == {
        f"malformed:{corruption.kind}" for corruption in MALFORMED
    }


def test_reader_built_artifacts_are_named_apart_from_corpus_artifacts():
    """A payload's or damaged file's artifact name never equals a corpus artifact's: records
    are keyed by (writer, reader, artifact, load mode), and a reader is the writer of both."""
    corpus = {r.artifact for r in read_records(RESULTS) if not r.kind.startswith(BUILT_BY_READER)}
    built = {payload.name for payload in PAYLOADS}
    built |= {f"malformed/{c.kind}/{c.index}/{c.mask:#x}" for c in MALFORMED}
    assert corpus and not corpus & built
