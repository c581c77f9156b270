"""The suite runner and the report it builds."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st

from harness.cli import main
from harness.report import SCHEMA_VERSION, Finding, ReportedFinding, strip_ansi
from harness.suite import Invariant, run_invariant, run_suite

REPORT_FORMAT = Path(__file__).resolve().parents[1] / "docs" / "report-format.md"


def at_most_five(value: int):
    assert value <= 5, f"{value} is more than five"
    yield "even" if value % 2 == 0 else "odd"


def two_ways(value: int):
    """Fails one way above 50 and another way below -50."""
    if value > 50:
        raise OverflowError(f"{value} is too big")
    assert value >= -50, f"{value} is too small"
    yield from ()


HOLDS = Invariant("holds", "small integers are small", lambda: st.integers(0, 5), at_most_five)
BREAKS = Invariant("breaks", "all integers are small", lambda: st.integers(0, 100), at_most_five)
BREAKS_TWICE = Invariant(
    "breaks_twice", "integers are moderate", lambda: st.integers(-100, 100), two_ways
)


def observes_value(value: int):
    yield str(value)


# Passes on any integer and observes each one it is checked on: which values were drawn.
DRAWS = Invariant("draws", "any integer", lambda: st.integers(), observes_value)
FEW = settings(max_examples=20, database=None, deadline=None, derandomize=True)


def test_report_counts_examples_and_keeps_the_shrunk_failure():
    lines = []
    report = run_suite(
        [BREAKS, HOLDS],
        profile="ci",
        reproduce=lambda inv: f"rerun {inv.name}",
        progress=lines.append,
    )
    breaks, holds = report.results
    assert not report.ok and report.failures == [breaks]
    assert not breaks.passed and breaks.minimal_example == "6"
    assert "6 is more than five" in breaks.message
    assert breaks.reproduction == "rerun breaks"
    assert holds.passed and holds.examples >= 6  # all of 0..5 fit in the ci budget
    assert set(holds.observations) == {"even", "odd"}
    assert sum(holds.observations.values()) == holds.examples
    assert lines[0] == "[1/2] breaks ..." and lines[-1].startswith("[2/2] holds: passed")


def test_every_distinct_failure_is_reported_with_its_own_minimal_example():
    result = run_invariant(BREAKS_TWICE, settings_=FEW, reproduction="rerun")
    assert not result.passed
    # (pytest's assertion rewriting adds lines after the first)
    found = {f.minimal_example: f.message.splitlines()[0] for f in result.failures}
    assert found == {
        "51": "OverflowError: 51 is too big",
        "-51": "AssertionError: -51 is too small",
    }
    assert all(failure.reproduction == "rerun" for failure in result.failures)
    # The first failure stays available as before.
    first = result.failures[0]
    assert (result.message, result.minimal_example) == (first.message, first.minimal_example)
    assert result.verdict == "FAILED (2 distinct)"


def test_examples_exclude_shrinking_and_never_exceed_max_examples():
    budget = settings(FEW, max_examples=7)
    passing = run_invariant(
        Invariant("wide", "d", lambda: st.integers(), lambda value: iter(())), settings_=budget
    )
    assert passing.passed and passing.examples == 7 and passing.shrinking == 0
    calls = []

    def counted(value: int):
        calls.append(value)
        return at_most_five(value)

    failing = run_invariant(
        Invariant("counted", "d", lambda: st.integers(0, 100), counted), settings_=budget
    )
    assert not failing.passed and failing.minimal_example == "6"
    assert failing.shrinking > 0 and failing.examples + failing.shrinking == len(calls)


def test_an_escaping_base_exception_is_a_failure_of_the_invariant():
    def exits(value: int):
        if value > 3:
            raise SystemExit(f"exit on {value}")
        yield from ()

    class Custom(BaseException):
        pass

    def raises_custom(value: int):
        raise Custom("not an Exception")

    report = run_suite(
        [
            Invariant("exits", "d", lambda: st.integers(0, 10), exits),
            Invariant("custom", "d", lambda: st.integers(0, 10), raises_custom),
            HOLDS,
        ],
        profile="ci",
    )
    exited, custom, holds = report.results
    assert exited.message == "SystemExit: exit on 4" and exited.minimal_example == "4"
    assert custom.message == "Custom: not an Exception" and custom.minimal_example == "0"
    assert holds.passed and report.interrupted is None


def test_keyboard_interrupt_stops_the_run_and_keeps_a_partial_report(tmp_path):
    def interrupted(value: int):
        raise KeyboardInterrupt
        yield

    stops = Invariant("stops", "d", lambda: st.integers(), interrupted)
    lines = []
    report = run_suite([HOLDS, stops, BREAKS], profile="ci", progress=lines.append)
    assert [r.name for r in report.results] == ["holds"]
    assert report.interrupted == "stops" and report.not_run == ["stops", "breaks"]
    assert not report.ok
    assert report.headline() == (
        "INTERRUPTED during stops: 1 of 3 invariants held, 0 failed, 2 not run; 0 torch findings"
    )
    assert lines[-1] == "[2/3] stops: interrupted"
    data = json.loads(report.to_json())
    assert data["interrupted"] == "stops" and data["ok"] is False


def test_progress_lines_come_while_a_long_invariant_runs():
    def slow(value: int):
        time.sleep(0.15)
        yield from ()

    lines = []
    report = run_suite(
        [Invariant("slow", "d", lambda: st.integers(0, 3), slow)],
        profile="ci",
        settings_=settings(FEW, max_examples=4),
        progress=lines.append,
        progress_interval=0.1,
    )
    assert report.ok
    running = [line for line in lines if "still running" in line]
    assert running and re.fullmatch(
        r"    slow: still running, \d+ examples so far, \d+s", running[0]
    )


def drawn(report) -> dict[str, int]:
    """The values the first invariant of ``report`` was checked on (DRAWS observes them)."""
    return report.results[0].observations


def test_seed_is_drawn_recorded_and_reused():
    randomized = run_suite([DRAWS], profile="dev")
    assert isinstance(randomized.seed, int)
    again = run_suite([DRAWS], profile="dev", random_seed=randomized.seed)
    other = run_suite([DRAWS], profile="dev", random_seed=randomized.seed + 1)
    assert again.seed == randomized.seed
    # the recorded seed is the one the run drew with: reused, it draws the same values
    assert drawn(again) == drawn(randomized)
    assert drawn(other) != drawn(randomized)
    assert run_suite([BREAKS], profile="ci", random_seed=3).seed is None  # derandomized


def test_warnings_are_captured_and_counted_not_printed(capsys):
    def warns(value: int):
        warnings.warn("\x1b[1mcareful\x1b[0m\nsecond line", UserWarning, stacklevel=1)
        if value == 0:
            warnings.warn("zero seen", RuntimeWarning, stacklevel=1)
        yield from ()

    result = run_invariant(Invariant("warns", "d", lambda: st.integers(0, 3), warns), settings_=FEW)
    assert result.passed
    assert result.warnings == {
        "UserWarning: careful": result.examples,
        "RuntimeWarning: zero seen": 1,
    }
    captured = capsys.readouterr()
    assert "careful" not in captured.out + captured.err


def test_ansi_escapes_never_reach_the_report(tmp_path):
    def bold(value: int):
        if value >= 3:
            raise ValueError(f"\x1b[1m{value} is\x1b[0m too big")
        yield "\x1b[31mred\x1b[0m observation"

    report = run_suite([Invariant("bold", "d", lambda: st.integers(0, 5), bold)], profile="ci")
    result = report.results[0]
    assert result.message == "ValueError: 3 is too big"
    assert set(result.observations) == {"red observation"}
    json_path, markdown_path = report.write(tmp_path)
    for text in (json_path.read_text(), markdown_path.read_text(), report.table()):
        assert "\x1b" not in text and "\\u001b" not in text
    assert strip_ansi("\x1b]8;;https://x\x1b\\link\x1b]8;;\x1b\\ \x1b[1;31mbold\x1b[0m") == (
        "link bold"
    )


def test_headline_comes_first_in_the_markdown():
    def finds(value: int):
        yield "finding: torch drops the sign"

    finding = Invariant("finds", "d", lambda: st.integers(0, 3), finds)
    report = run_suite([HOLDS, BREAKS, finding], profile="ci")
    assert report.headline() == "2 of 3 invariants held, 1 FAILED; 1 torch finding"
    lines = report.to_markdown().splitlines()
    assert lines[0] == "# Persistence check report"
    assert lines[2] == f"**{report.headline()}**."


def test_report_renders_table_json_and_markdown(tmp_path):
    report = run_suite([HOLDS, BREAKS], profile="ci", excluded=["dropout", "LBFGS"])
    table = report.table().splitlines()
    assert table[0].split() == ["invariant", "examples", "shrinking", "result", "time"]
    assert table[2].split()[:4] == ["holds", str(report.results[0].examples), "0", "passed"]
    assert table[3].split()[3] == "FAILED"
    json_path, markdown_path = report.write(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["ok"] is False and [r["name"] for r in data["results"]] == ["holds", "breaks"]
    assert data["excluded"] == ["dropout", "LBFGS"] and data["seed"] is None
    assert data["results"][1]["failures"][0]["minimal_example"] == "6"
    markdown = markdown_path.read_text()
    assert "| `breaks` |" in markdown and "Minimal example: `6`" in markdown
    assert "excluded: dropout, LBFGS" in markdown


def test_ci_profile_runs_are_repeatable():
    first = run_suite([DRAWS, BREAKS, HOLDS], profile="ci")
    second = run_suite([DRAWS, BREAKS, HOLDS], profile="ci")
    assert len(drawn(first)) > 1  # wide draws: two runs agree only if they draw alike
    assert [(r.examples, r.minimal_example, r.observations) for r in first.results] == [
        (r.examples, r.minimal_example, r.observations) for r in second.results
    ]


def test_cli_lists_every_invariant(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  state_dict_round_trip: " in out and "  bundle_round_trip: " in out
    assert "  state_restored [resume, inference]: " in out
    assert "  resume_equivalence [resume]: " in out


def test_an_invariant_that_cannot_start_is_reported_and_the_rest_run():
    def broken_strategy():
        raise ImportError("no module named strategies.missing")

    broken = Invariant("broken", "cannot draw", broken_strategy, at_most_five)
    report = run_suite([broken, HOLDS], profile="ci")
    assert [r.passed for r in report.results] == [False, True]
    assert report.results[0].message == "ImportError: no module named strategies.missing"
    assert report.results[0].minimal_example is None and report.results[0].examples == 0


def test_findings_are_listed_apart_with_their_upstream_issue():
    def finds(value: int):
        yield "finding: torch drops the sign" if value == 0 else "ordinary"
        if value == 1:
            yield Finding("torch casts the state", upstream="pytorch/pytorch#75224")

    report = run_suite([Invariant("finds", "d", lambda: st.integers(0, 3), finds)], profile="ci")
    assert report.ok
    assert report.findings() == [
        ReportedFinding("finds", "torch casts the state", 1, "pytorch/pytorch#75224"),
        ReportedFinding("finds", "torch drops the sign", 1, None),
    ]
    assert json.loads(report.to_json())["findings"][0] == {
        "invariant": "finds",
        "text": "torch casts the state",
        "count": 1,
        "upstream": "pytorch/pytorch#75224",
    }


def _key_paths(value, prefix: str = "") -> set[str]:
    """Every key of a report's JSON as ``results[].failures[].message``; the entries of
    text -> count maps (observations, warnings) are data, not keys."""
    if isinstance(value, list):
        return set().union(*(_key_paths(item, f"{prefix}[]") for item in value))
    if not isinstance(value, dict):
        return set()
    paths = set()
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        if key not in ("observations", "warnings"):
            paths |= _key_paths(item, path)
    return paths


def test_every_report_field_is_documented_and_every_documented_field_exists(tmp_path):
    def warns_and_finds(value: int):
        warnings.warn("careful", UserWarning, stacklevel=1)
        yield Finding("torch casts the state", upstream="pytorch/pytorch#75224")

    report = run_suite(
        [
            HOLDS,
            BREAKS_TWICE,
            Invariant("finds", "d", lambda: st.integers(0, 3), warns_and_finds),
        ],
        profile="dev",
        profile_reason="chosen with --profile",
        reproduce=lambda invariant: f"rerun {invariant.name}",
        excluded=["dropout"],
    )
    json_path, _ = report.write(tmp_path)
    actual = _key_paths(json.loads(json_path.read_text()))
    documented = set(re.findall(r"^\| `([a-z_\[\].]+)` \|", REPORT_FORMAT.read_text(), re.M))
    assert actual - documented == set(), "fields missing from docs/report-format.md"
    assert documented - actual == set(), "docs/report-format.md documents fields no report has"


def test_explicit_examples_run_first_on_every_run_and_are_counted_apart():
    seen = []

    def check(value):
        seen.append(value)

    invariant = Invariant("i", "d", lambda: st.integers(0, 10), check, explicit=lambda: (-7, -3))
    result = run_invariant(invariant, settings_=settings(max_examples=5, database=None))
    assert seen[:2] == [-7, -3] and len(seen) == 7
    assert (result.examples, result.explicit, result.shrinking) == (5, 2, 0)


def test_a_failing_explicit_example_fails_the_invariant_whatever_the_seed():
    def check(value):
        assert value != -7, "minus seven"

    invariant = Invariant("i", "d", lambda: st.integers(0, 10), check, explicit=lambda: (-7,))
    for chosen in (0, 1):
        result = run_invariant(
            invariant, settings_=settings(max_examples=5, database=None), random_seed=chosen
        )
        assert not result.passed and "minus seven" in result.failures[0].message
        assert result.failures[0].minimal_example == "-7"
