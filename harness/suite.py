"""Running invariants as Hypothesis properties and collecting a :class:`~harness.report.Report`.

An :class:`Invariant` pairs a strategy with a check. :func:`run_invariant` runs the check on
examples drawn under the active Hypothesis profile, counts them, keeps the shrunk failing
example and the observations the check reports, and never lets one invariant's failure stop
the others. The CLI, :func:`harness.check_checkpointer` and the tests all go through here.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, seed, settings
from hypothesis.strategies import SearchStrategy

from harness.capabilities import torch_version
from harness.report import InvariantResult, Report

__all__ = ["Invariant", "run_invariant", "run_suite"]


@dataclass(frozen=True)
class Invariant:
    """A named promise checked on every example a strategy draws.

    Attributes:
        name: short identifier, e.g. ``"state_dict_round_trip"``.
        description: one sentence stating the promise.
        examples: a function returning the strategy of examples (called once per run, so
            that strategies are built after the capability probe).
        check: raises ``AssertionError`` when the promise is broken for an example; may
            return observations to report (strings, e.g. "saving twice gives identical
            bytes"), which are counted, not judged.
    """

    name: str
    description: str
    examples: Callable[[], SearchStrategy]
    check: Callable[[Any], Iterable[str] | None]


def _first_lines(error: BaseException, limit: int = 20) -> str:
    text = f"{type(error).__name__}: {error}"
    lines = text.splitlines()
    return "\n".join(lines[:limit] + (["..."] if len(lines) > limit else []))


def run_invariant(
    invariant: Invariant,
    *,
    settings_: settings | None = None,
    random_seed: int | None = None,
    reproduction: str | None = None,
) -> InvariantResult:
    """Check ``invariant`` on examples drawn under ``settings_`` (default: the active ones).

    Args:
        invariant: what to check.
        settings_: the Hypothesis settings to draw examples under.
        random_seed: seed for a profile that is not derandomized, so that the run can be
            repeated exactly.
        reproduction: the command line reported for rerunning this check.
    """
    examples = 0
    observations: Counter[str] = Counter()
    last_failure: list[str] = []

    def check(example):
        nonlocal examples
        examples += 1
        try:
            # list(): a check may be a generator that yields observations as it goes.
            seen = list(invariant.check(example) or ())
        except BaseException:
            last_failure[:] = [repr(example)]
            raise
        observations.update(set(seen))

    started = time.perf_counter()
    failure: Exception | None = None
    try:
        # One failure, shrunk, per invariant: the report shows the first promise broken.
        property_ = settings(settings_ or settings.default, report_multiple_bugs=False)(
            given(invariant.examples())(check)
        )
        if random_seed is not None:
            property_ = seed(random_seed)(property_)
        property_()
    except Exception as error:  # the invariant failed; report it and go on with the next
        failure = error
    return InvariantResult(
        name=invariant.name,
        description=invariant.description,
        examples=examples,
        passed=failure is None,
        seconds=time.perf_counter() - started,
        message=_first_lines(failure) if failure else None,
        minimal_example=last_failure[0] if failure and last_failure else None,
        reproduction=reproduction if failure else None,
        observations=dict(observations),
    )


def run_suite(
    invariants: Sequence[Invariant],
    *,
    profile: str,
    settings_: settings | None = None,
    random_seed: int | None = None,
    reproduce: Callable[[Invariant], str] | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Report:
    """Run each invariant under a Hypothesis profile and return the report.

    The examples are drawn under ``settings_``, or else the registered profile ``profile``;
    the global Hypothesis settings are left as they are. ``random_seed`` fixes the draws of
    a randomized profile. ``progress`` is called with a line before and after each invariant.
    """
    settings_ = settings_ or settings.get_profile(profile)
    if settings_.derandomize:
        random_seed = None
    results = []
    for position, invariant in enumerate(invariants, start=1):
        progress(f"[{position}/{len(invariants)}] {invariant.name} ...")
        result = run_invariant(
            invariant,
            settings_=settings_,
            random_seed=random_seed,
            reproduction=reproduce(invariant) if reproduce else None,
        )
        verdict = "passed" if result.passed else "FAILED"
        progress(
            f"[{position}/{len(invariants)}] {invariant.name}: {verdict}, "
            f"{result.examples} examples, {result.seconds:.1f}s"
        )
        results.append(result)
    return Report(torch_version=torch_version(), profile=profile, results=results)
