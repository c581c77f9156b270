"""No false alarms: correct checkpoint code passes ``check_checkpointer``.

A false alarm, a correct checkpointer reported as failing, is the worst defect the harness
can have: it teaches users to ignore its reports. This module checks the correct
checkpointers of ``tests/correct_checkpointers.py`` (several layouts and serializations)
and both reference recipes (``harness.TrainingCheckpoint`` for ``purpose="resume"``,
``harness.InferencePackage`` for ``purpose="inference"``) at several seeds, and asserts
that every invariant holds for every one of them. There is one test per checkpointer, seed
and invariant; the report of one checkpointer at one seed is computed once and shared by
its invariants' tests.

The budget comes from the environment, so that CI runs a small slice and a person can run
the full proof:

- ``HARNESS_FALSE_ALARM_EXAMPLES``: examples per invariant (default 10);
- ``HARNESS_FALSE_ALARM_SEEDS``: seeds, comma-separated, ranges allowed (default ``0,1``);
- ``HARNESS_FALSE_ALARM_RESULTS``: optionally, a file to append each report to, one JSON
  line per checkpointer and seed (each invariant's result, examples and seconds).

The full proof (200 examples, seeds 0 to 4; see docs/false-alarms.md for its results)::

    nice -n 10 env HARNESS_FALSE_ALARM_EXAMPLES=200 HARNESS_FALSE_ALARM_SEEDS=0-4 \\
        .tox/tests/bin/python -m pytest tests/test_no_false_alarms.py -q -p no:cacheprovider

A failure message gives every distinct failure of the invariant: its message, its minimal
example and the line that reproduces it, then the report's table. A failure here is either
a defect of the correct checkpointer (fix it there) or a false alarm of the harness (fix
the harness); docs/false-alarms.md records what each past one was. The safetensors
checkpointer is skipped where ``safetensors`` is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import time
from dataclasses import dataclass

import pytest

import harness
from harness.checkpointer import checkpointer_invariants
from strategies.hazards import HAZARD_REGISTRY
from tests import correct_checkpointers

pytestmark = pytest.mark.filterwarnings(
    # Some hostile payloads are TorchScript archives; torch.load says so before refusing.
    "ignore:'torch.load' received a zip file that looks like a TorchScript archive"
)

EXAMPLES_VARIABLE = "HARNESS_FALSE_ALARM_EXAMPLES"
SEEDS_VARIABLE = "HARNESS_FALSE_ALARM_SEEDS"
RESULTS_VARIABLE = "HARNESS_FALSE_ALARM_RESULTS"
DEFAULT_EXAMPLES = 10
DEFAULT_SEEDS = "0,1"


def _examples() -> int:
    text = os.environ.get(EXAMPLES_VARIABLE, str(DEFAULT_EXAMPLES))
    try:
        examples = int(text)
    except ValueError:
        examples = 0
    if examples < 1:
        raise ValueError(f"${EXAMPLES_VARIABLE}={text!r}: give a positive number of examples")
    return examples


def _seeds() -> tuple[int, ...]:
    """The seeds of ``$HARNESS_FALSE_ALARM_SEEDS``: e.g. ``0,1``, ``0-4`` or ``0-2,7``."""
    text = os.environ.get(SEEDS_VARIABLE, DEFAULT_SEEDS)
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            seeds += range(int(first), int(last or first) + 1)
    except ValueError:
        seeds = []
    if not seeds:
        raise ValueError(f"${SEEDS_VARIABLE}={text!r}: give seeds like 0,1 or 0-4")
    return tuple(dict.fromkeys(seeds))


EXAMPLES = _examples()
SEEDS = _seeds()


@dataclass(frozen=True)
class Case:
    """A checkpointer class checked for one purpose."""

    name: str
    make: type
    purpose: str
    needs: str | None = None  # a package it imports

    @property
    def missing(self) -> str | None:
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.name} needs {self.needs}, which is not installed"
        return None


_NEEDS = {correct_checkpointers.SafetensorsWeightsCheckpointer: "safetensors"}
CASES = (
    *(
        Case(c.__name__, c, "resume", _NEEDS.get(c))
        for c in correct_checkpointers.RESUME_CHECKPOINTERS
    ),
    *(
        Case(c.__name__, c, "inference", _NEEDS.get(c))
        for c in correct_checkpointers.INFERENCE_CHECKPOINTERS
    ),
    Case("TrainingCheckpoint", harness.TrainingCheckpoint, "resume"),
    Case("InferencePackage", harness.InferencePackage, "inference"),
)
_BY_NAME = {case.name: case for case in CASES}


@functools.cache
def report_of(name: str, seed: int, examples: int) -> harness.Report:
    """The report of ``check_checkpointer`` on checkpointer ``name`` (computed once)."""
    case = _BY_NAME[name]
    started = time.perf_counter()
    # The known hazards are the same cases at every seed: checked at the first seed only.
    hazards = () if seed == SEEDS[0] else [hazard.name for hazard in HAZARD_REGISTRY]
    report = harness.check_checkpointer(
        case.make(), purpose=case.purpose, max_examples=examples, seed=seed, exclude=hazards
    )
    results = os.environ.get(RESULTS_VARIABLE)
    if results:
        line = {
            "checkpointer": name,
            "purpose": case.purpose,
            "seed": seed,
            "max_examples": examples,
            "seconds": round(time.perf_counter() - started, 2),
            "torch": report.torch_version,
            "invariants": [
                {
                    "name": r.name,
                    "passed": r.passed,
                    "examples": r.examples,
                    "seconds": round(r.seconds, 2),
                    "failures": [
                        {"message": f.message, "minimal_example": f.minimal_example}
                        for f in r.failures
                    ],
                }
                for r in report.results
            ],
        }
        with open(results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
    return report


def describe_failures(report: harness.Report, only: str | None = None) -> str:
    """Each failing invariant (or just ``only``) with every distinct failure it had: the
    message, the minimal example and the reproduction line."""
    parts = []
    for result in report.failures:
        if only is not None and result.name != only:
            continue
        for number, failure in enumerate(result.failures, start=1):
            parts.append(
                f"{result.name} FAILED ({number} of {len(result.failures)} distinct, "
                f"{result.examples} examples):\n"
                f"{failure.message}\n"
                f"minimal example: {failure.minimal_example}\n"
                f"reproduce: {failure.reproduction}"
            )
    return "\n\n".join(parts)


def _parameters():
    for case in CASES:
        names = [i.name for i in checkpointer_invariants(case.make(), case.purpose)]
        for seed in SEEDS:
            for invariant in names:
                marks = [pytest.mark.skip(reason=case.missing)] if case.missing else []
                yield pytest.param(
                    case.name,
                    seed,
                    invariant,
                    marks=marks,
                    id=f"{case.name}-seed{seed}-{invariant}",
                )


@pytest.mark.parametrize(("checkpointer", "seed", "invariant"), list(_parameters()))
def test_correct_checkpointer_passes(checkpointer: str, seed: int, invariant: str):
    report = report_of(checkpointer, seed, EXAMPLES)
    (result,) = [r for r in report.results if r.name == invariant]
    if result.passed:
        assert result.examples >= 1, f"{invariant} tried no example"
        return
    purpose = _BY_NAME[checkpointer].purpose
    pytest.fail(
        f"false alarm? the correct checkpointer {checkpointer} (purpose={purpose!r}, "
        f"seed={seed}, {EXAMPLES} examples) fails {invariant}:\n\n"
        + describe_failures(report, only=invariant)
        + "\n\nreport:\n"
        + report.table(),
        pytrace=False,
    )
