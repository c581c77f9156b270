"""Whole-model pickles after refactorings, and the state_dict route beside them; bad
refactoring arguments are refused with a sentence naming what is expected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness import invariants
from strategies.refactorings import (
    REFACTORING_KINDS,
    ModelSource,
    RefactoringCase,
    refactoring_cases,
    render_source,
)

# What loading the whole-model pickle does after each refactoring, derived from how pickle
# restores an object (by module and class name, __dict__ restored, __init__ not called).
EXPECTED_OUTCOME = {
    "none": "loads and behaves the same",
    "change_init_signature": "loads and behaves the same",
    "add_attribute": "loads, fails at forward (AttributeError)",
    "change_forward": "loads and silently computes something else",
    "rename_attribute": "loads, fails at forward (AttributeError)",
    "rename_class": "fails at load (AttributeError)",
    "move_module": "fails at load (ModuleNotFoundError)",
    "delete_module": "fails at load (ModuleNotFoundError)",
}


@pytest.mark.parametrize("kind", REFACTORING_KINDS)
@settings(max_examples=5)
@given(data=st.data())
def test_whole_model_refactoring(kind, data):
    case = data.draw(refactoring_cases(refactorings=st.just(kind)))
    observed = list(invariants.whole_model_refactoring(case))
    assert f"whole-model pickle after {kind}: {EXPECTED_OUTCOME[kind]}" in observed
    if not case.keeps_parameter_names:
        assert f"state_dict after {kind}: strict load names missing/unexpected keys" in observed


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
