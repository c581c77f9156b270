"""Whole-model pickles after refactorings, and the state_dict route beside them, as each
refactoring's record says; bad refactoring arguments are refused with a sentence naming what
is expected."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness import invariants
from strategies.refactorings import (
    REFACTORING_KINDS,
    REFACTORING_REGISTRY,
    ModelSource,
    RefactoringCase,
    refactoring,
    refactoring_cases,
    render_source,
)


@pytest.mark.parametrize("kind", REFACTORING_KINDS)
@settings(max_examples=5)
@given(data=st.data())
def test_whole_model_refactoring(kind, data):
    case = data.draw(refactoring_cases(refactorings=st.just(kind)))
    observed = list(invariants.whole_model_refactoring(case))
    assert f"whole-model pickle after {kind}: {refactoring(kind).pickle_outcome}" in observed
    if not case.keeps_parameter_names:
        assert f"state_dict after {kind}: strict load names missing/unexpected keys" in observed


def test_each_refactoring_is_registered_once_and_none_changes_nothing():
    assert tuple(record.name for record in REFACTORING_REGISTRY) == REFACTORING_KINDS
    assert len(set(REFACTORING_KINDS)) == len(REFACTORING_KINDS)
    assert [record.name for record in REFACTORING_REGISTRY if not record.changes_code] == ["none"]
    assert all(refactoring(record.name) is record for record in REFACTORING_REGISTRY)


@pytest.mark.parametrize("record", REFACTORING_REGISTRY, ids=lambda record: record.name)
def test_each_refactoring_renders_what_its_record_says(record):
    model = ModelSource((2, 3, 1), "tanh")

    def build(refactoring: str, class_name: str) -> torch.nn.Module:
        namespace: dict = {}
        exec(compile(render_source(model, refactoring), "<model>", "exec"), namespace)
        return namespace[class_name]()

    original, refactored = build("none", "Net"), build(record.name, record.class_name)
    assert isinstance(getattr(refactored, record.attribute), torch.nn.ModuleList)
    names_kept = list(refactored.state_dict()) == list(original.state_dict())
    assert names_kept == record.keeps_parameter_names
    # The same weights, matched by position: forward computes the same function or not.
    values = original.state_dict().values()
    refactored.load_state_dict(dict(zip(refactored.state_dict(), values, strict=True)))
    x = torch.linspace(-1.0, 1.0, 6).reshape(3, 2)
    assert torch.equal(original(x), refactored(x)) == record.keeps_forward


def test_catches_a_loader_that_accepts_whole_model_pickles(monkeypatch):
    real = invariants.load
    monkeypatch.setattr(
        invariants, "load", lambda source, *a, **k: real(source, weights_only=False)
    )
    case = RefactoringCase(ModelSource((2, 2), "relu"), "none")
    with pytest.raises(AssertionError, match="weights_only=True loaded a whole-model pickle"):
        list(invariants.whole_model_refactoring(case))


def test_refactorings_must_be_a_strategy():
    with pytest.raises(InvalidArgument, match="refactorings='rename_class' must be of type Sear"):
        refactoring_cases("rename_class")


def test_a_drawn_refactoring_that_is_no_kind_is_refused_with_the_kinds():
    @settings(max_examples=1, database=None)
    @given(refactoring_cases(st.just("rename_module")))
    def draw(case):
        raise AssertionError(f"drew {case!r}")

    with pytest.raises(
        InvalidArgument, match="refactoring='rename_module' must be one of .*'none'"
    ):
        draw()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModelSource((2,), "relu"), "two or more positive ints"),
        (lambda: ModelSource((2, 0), "relu"), "two or more positive ints"),
        (lambda: ModelSource([2, 2], "relu"), "sizes=\\[2, 2\\] must be of type tuple"),
        (lambda: ModelSource((2, 2), "gelu"), "activation='gelu' must be one of"),
        (lambda: RefactoringCase((2, 2), "none"), "model=\\(2, 2\\) must be of type ModelSource"),
        (lambda: RefactoringCase(ModelSource((2, 2), "relu"), "rename"), "refactoring='rename'"),
        (lambda: render_source(ModelSource((2, 2), "relu"), "rename"), "refactoring='rename'"),
    ],
)
def test_model_sources_and_cases_refuse_what_cannot_be_rendered(make, message):
    with pytest.raises(InvalidArgument, match=message):
        make()
