"""Tests of the cross-version matrix: the version-neutral descriptions, plain specs, the
results format, the rendering, and, with the installed torch, every committed corpus read
again and compared with the committed results."""

from __future__ import annotations

import collections
import configparser
import functools
import glob
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.capabilities import probe, torch_version
from harness.releases import version_key
from matrix.corpus import (
    ARTIFACT_KINDS,
    MANIFEST,
    artifact_kind,
    artifacts,
    from_plain,
    generated_kind_files,
    to_plain,
    write_corpus,
)
from matrix.describe import describe, first_difference
from matrix.driver import Step
from matrix.reader import MALFORMED, PAYLOADS, malformed_records, payload_records, read_corpus
from matrix.render import PANELS, READER_PANELS, panel_of, render, shown_outcome
from matrix.results import (
    BUILT_BY_READER,
    KIND_FACTS,
    OUTCOMES,
    RAISING_OUTCOMES,
    Record,
    error_type_named_in,
    kind_facts,
    merge,
    read_records,
    write_records,
)
from matrix.versions import VERSIONS, check_versions, needs_numpy_1, tox_env
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


def test_records_without_error_type_read_and_write_back_unchanged(tmp_path):
    old = tmp_path / "old.json"
    fields = '"writer": "2.6.0", "reader": "2.6.0", "artifact": "views", "kind": "views"'
    old.write_text(
        f'[\n  {{{fields}, "load_mode": "weights_only", "outcome": "refused", '
        '"message": "UnpicklingError: WeightsUnpickler error: x"}\n]\n'
    )
    (record,) = read_records(str(old))
    assert record.error_type is None and record.error_class == "UnpicklingError"
    write_records([record], str(tmp_path / "again.json"))
    assert (tmp_path / "again.json").read_text() == old.read_text()
    new = Record(
        "2.6.0", "2.6.0", "views", "views", "default", "error", "KeyError: 'x'", "KeyError"
    )
    write_records([record, new], str(tmp_path / "both.json"))
    assert read_records(str(tmp_path / "both.json")) == [new, record]  # default sorts first
    with pytest.raises(ValueError, match="error_type"):
        Record("2.6.0", "2.6.0", "views", "views", "default", "error", "x", "not a class")


@pytest.mark.parametrize(
    "outcome, message, named",
    [
        (
            "refused",
            "UnpicklingError: WeightsUnpickler error: Unsupported operand 71",
            "UnpicklingError",
        ),
        ("error", "EOFError: ", "EOFError"),
        ("error", "outputs: TypeError: argument 'qkv_bias' must be Tensor", "TypeError"),
        ("error", "restored: ValueError: no optimizer 'Adafactor'", "ValueError"),
        ("error", "error: unpack requires a buffer of 4 bytes", "error"),
        ("unwritable", "KeyError: 'dtype torch.complex32 is not recognized'", "KeyError"),
        (
            "executed",
            "the payload ran (refused): AssertionError: Unknown typename",
            "AssertionError",
        ),
        ("executed", "the payload ran (loaded): ", ""),
        ("executed", "the payload ran (crashed): killed by SIGSEGV; stderr: ", ""),
        ("crashed", "crashed (SIGSEGV): killed by SIGSEGV; stderr: ", ""),
        ("crashed", "out_of_memory (MemoryError): MemoryError: ", ""),
        ("differs", "restored optimizer differs: ['state'][0]['step']: expected a int", ""),
        ("identical", "", ""),
    ],
)
def test_the_exception_class_is_read_from_each_form_of_message(outcome, message, named):
    assert error_type_named_in(outcome, message) == named
    assert (
        Record("2.6.0", "2.6.0", "views", "views", "default", outcome, message).error_class == named
    )


def test_verdicts_compare_outcomes_and_exception_classes_not_messages():
    def load(outcome, message="", error_type=None, artifact="views"):
        return Record("2.6.0", "2.13.0", artifact, "views", "default", outcome, message, error_type)

    recorded = [
        load("refused", "UnpicklingError: Unsupported operand 71"),
        load("identical", artifact="a"),
    ]
    reworded = [
        load("refused", "UnpicklingError: unsupported opcode BINFLOAT", "UnpicklingError"),
        load("identical", artifact="a"),
    ]
    assert_same_verdicts(reworded, recorded)
    for changed in (
        [load("error", "RuntimeError: Unsupported operand 71", "RuntimeError"), recorded[1]],
        [load("refused", "RuntimeError: Unsupported operand 71", "RuntimeError"), recorded[1]],
        [recorded[0], load("differs", "['x']: missing", "", artifact="a")],
        [recorded[0]],
        [*recorded, load("identical", artifact="b")],
    ):
        with pytest.raises(AssertionError, match="1 of 2 loads end otherwise"):
            assert_same_verdicts(changed, recorded)


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


# --- artifact kinds ---------------------------------------------------------------------


def test_the_files_generated_from_the_kind_records_are_committed_up_to_date():
    stale = [
        os.path.relpath(path, ROOT)
        for path, text in generated_kind_files().items()
        if open(path).read() != text
    ]
    assert not stale, f"stale: {', '.join(stale)}; run python -m matrix kinds"
    assert KIND_FACTS == tuple(kind.facts for kind in ARTIFACT_KINDS)


def test_each_kind_has_one_record_a_panel_and_outcomes_of_the_vocabulary():
    names = [kind.name for kind in ARTIFACT_KINDS]
    assert len(set(names)) == len(names)
    for kind in ARTIFACT_KINDS:
        assert set(kind.outcomes) <= set(OUTCOMES), kind.name
        panels = READER_PANELS if kind.built_by_reader else PANELS
        assert kind.panel in panels, kind.name
    assert {kind.name + ":" for kind in ARTIFACT_KINDS if kind.built_by_reader} == set(
        BUILT_BY_READER
    )


def test_the_corpus_writes_every_kind_it_has_a_writer_for_and_only_those():
    written = list(artifacts())
    assert {artifact.record for artifact in written} == {
        kind for kind in ARTIFACT_KINDS if kind.build is not None
    }
    # the other corpus kinds write their artifacts themselves, in one call per corpus
    assert all(
        kind.write is not None
        for kind in ARTIFACT_KINDS
        if not kind.built_by_reader and not kind.build
    )
    for artifact in written:
        assert artifact_kind(artifact.kind) is artifact.record
        assert kind_facts(artifact.kind) == artifact.record.facts
        assert artifact.name.split("/")[0] == artifact.record.name
    with pytest.raises(ValueError, match="kind"):
        kind_facts("views:x")
    with pytest.raises(ValueError, match="kind"):
        kind_facts("optimizer")


def test_every_committed_record_ends_in_an_outcome_its_kind_can_have():
    wrong = collections.Counter(
        (r.kind.split(":")[0], r.outcome)
        for r in _committed_records()
        if r.outcome not in kind_facts(r.kind).outcomes
    )
    assert not wrong, wrong


def test_merge_and_render_run_without_torch_or_hypothesis(tmp_path):
    """The matrix's merge job installs neither: results, render and the command line read
    what they know of the kinds from matrix/kinds.json."""
    records = tmp_path / "results.json"
    write_records(
        [
            Record("2.5.1", "2.6.0", "views", "views", "weights_only", "identical"),
            Record("2.6.0", "2.5.1", "whole_model", "whole_model", "weights_only", "refused"),
        ],
        str(records),
    )
    code = "\n".join(
        [
            "import sys",
            "sys.modules['torch'] = sys.modules['hypothesis'] = None  # importing either fails",
            "import matrix.__main__, matrix.render",
            "from matrix.results import read_records",
            f"records = read_records({str(records)!r})",
            "print(matrix.render.panel_of('optimizer:Adam'),",
            "      [matrix.render.shown_outcome(r) for r in records])",
        ]
    )
    environment = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "training ['identical', 'refused as promised']\n"


def test_a_refusal_is_an_unpickling_error_of_a_load_with_weights_only(tmp_path):
    """Outcomes are decided from the exception's type and the load mode, not its message:
    a file that is no pickle at all raises UnpicklingError in every mode, which is a refusal
    only where the load ran with weights_only=True (in default mode: where torch defaults to
    it)."""
    (tmp_path / "views.pt").write_bytes(b"not a pickle")
    entry = {"name": "views", "kind": "views", "file": "views.pt", "expected": describe(None)}
    manifest = {"writer": torch_version(), "artifacts": [entry]}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    records = read_corpus(str(tmp_path), progress=lambda line: None)
    default = "refused" if probe().weights_only_default else "error"
    expected = {"weights_only": "refused", "default": default, "unsafe": "error"}
    assert {r.load_mode: r.outcome for r in records} == expected
    assert {r.error_type for r in records} == {"UnpicklingError"}


def test_the_driver_says_what_a_step_wrote_from_its_files_not_its_log():
    manifest = json.loads(open(CORPORA[0]).read())
    version = manifest["writer"]
    unwritable = sum("unwritable" in entry for entry in manifest["artifacts"])
    said = Step("write", version, [["write"]]).written()
    assert said == f"corpus of {len(manifest['artifacts'])} artifacts ({unwritable} unwritable)"


# --- the committed corpora, read by the installed torch -------------------------------------


def test_writing_the_corpus_twice_gives_the_same_manifest(tmp_path):
    first = write_corpus(str(tmp_path / "first"), progress=lambda line: None)
    second = write_corpus(str(tmp_path / "second"), progress=lambda line: None)
    assert first_difference(first, second) is None
    assert first["writer"] == torch_version()
    # On the default torch only dtypes it (or safetensors) lacks are unwritable.
    unwritable = [e for e in first["artifacts"] if "unwritable" in e]
    assert all(e["kind"].startswith(("dtype:", "safetensors:dtype_")) for e in unwritable), (
        unwritable
    )


def test_every_torch_version_has_a_committed_corpus_and_results():
    committed = [os.path.basename(os.path.dirname(path)) for path in CORPORA]
    assert committed == list(VERSIONS)
    records = _committed_records()
    assert {r.writer for r in records} == set(VERSIONS)
    assert {r.reader for r in records} == set(VERSIONS)


@functools.cache
def _committed_records() -> tuple[Record, ...]:
    return tuple(read_records(RESULTS))


def _committed_loads(writer: str, built_by_reader: bool = False) -> list[Record]:
    """The committed records of the corpus of ``writer`` read by the installed torch, or
    (``built_by_reader``) of the payloads and damaged files it built."""
    return [
        r
        for r in _committed_records()
        if r.writer == writer
        and r.reader == torch_version()
        and r.kind.startswith(BUILT_BY_READER) == built_by_reader
    ]


def _verdict(record: Record) -> tuple[str, str]:
    """What a test compares: the outcome, and the exception class where one was raised."""
    return record.outcome, record.error_class


def _shown(record: Record | None) -> str:
    if record is None:
        return "no record"
    raised = f" ({record.error_class})" if record.error_class else ""
    return f"{record.outcome}{raised}: {record.message!r}"


def assert_same_verdicts(actual: list[Record], expected: list[Record]) -> None:
    """Every load of ``expected`` is in ``actual`` with the same outcome and, where it
    raised, the same exception class, and ``actual`` has no other load. Messages are for
    people: torch rewords its errors between releases, and so may the reader; each
    difference is shown with both messages."""
    recorded = {(r.artifact, r.load_mode): r for r in expected}
    now = {(r.artifact, r.load_mode): r for r in actual}
    changed = []
    for key in sorted(recorded.keys() | now.keys()):
        before, after = recorded.get(key), now.get(key)
        if before is None or after is None or _verdict(before) != _verdict(after):
            changed.append(f"{key[0]} [{key[1]}]: recorded {_shown(before)}, now {_shown(after)}")
    assert not changed, f"{len(changed)} of {len(recorded)} loads end otherwise:\n" + "\n".join(
        changed
    )


def assert_error_types_recorded(records: list[Record]) -> None:
    """The reader records every exception class as data, and it is the one its message
    names: what is derived from the messages of older records is what it records now."""
    wrong = [
        f"{r.artifact} [{r.load_mode}]: error_type {r.error_type!r}, message {r.message!r}"
        for r in records
        if r.error_type is None or r.error_type != error_type_named_in(r.outcome, r.message)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "manifest", CORPORA, ids=lambda path: os.path.basename(os.path.dirname(path))
)
def test_committed_corpus_reads_as_the_matrix_recorded(manifest):
    """Every committed corpus, read by the installed torch, gives the outcomes (and the
    exception classes) the matrix committed for this torch version as reader."""
    writer = os.path.basename(os.path.dirname(manifest))
    expected = _committed_loads(writer)
    if not expected:
        pytest.skip(f"the committed results have no reader {torch_version()}")
    records = read_corpus(os.path.dirname(manifest), progress=lambda line: None)
    assert_error_types_recorded(records)
    assert_same_verdicts(records, expected)


def test_payloads_and_damaged_files_end_as_the_matrix_recorded():
    """The hostile and damaged files the installed torch builds and loads end as the matrix
    committed for this torch version: the same outcomes and exception classes."""
    expected = _committed_loads(torch_version(), built_by_reader=True)
    if not expected:
        pytest.skip(f"the committed results have no reader {torch_version()}")
    records = payload_records(progress=lambda line: None)
    records += malformed_records(progress=lambda line: None)
    assert_error_types_recorded(records)
    assert_same_verdicts(records, expected)
    assert {r.kind for r in records if r.kind.startswith("malformed:")} == {
        f"malformed:{corruption.kind}" for corruption in MALFORMED
    }


def test_every_committed_record_names_its_exception_class_exactly_when_one_was_raised():
    """Records written before ``error_type`` existed name the class in their message: it is
    found for every outcome that raised and for no outcome that cannot have; records that
    hold it as data agree with their message."""
    records = _committed_records()
    named = {(r.outcome, bool(r.error_class)) for r in records}
    assert {(outcome, True) for outcome in RAISING_OUTCOMES} <= named
    assert not {(outcome, False) for outcome in RAISING_OUTCOMES} & named
    assert {outcome for outcome, found in named if found} <= {*RAISING_OUTCOMES, "executed"}
    disagreeing = [
        r
        for r in records
        if r.error_type is not None and r.error_type != error_type_named_in(r.outcome, r.message)
    ]
    assert not disagreeing
    classes = {r.error_class for r in records}
    assert {"UnpicklingError", "RuntimeError", "EOFError", "TypeError", "ValueError"} <= classes


def test_reader_built_artifacts_are_named_apart_from_corpus_artifacts():
    """A payload's or damaged file's artifact name never equals a corpus artifact's: records
    are keyed by (writer, reader, artifact, load mode), and a reader is the writer of both."""
    corpus = {r.artifact for r in _committed_records() if not r.kind.startswith(BUILT_BY_READER)}
    built = {payload.name for payload in PAYLOADS}
    built |= {f"malformed/{c.kind}/{c.index}/{c.mask:#x}" for c in MALFORMED}
    assert corpus and not corpus & built
