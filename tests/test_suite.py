"""The suite runner, the report it builds, and the command line around them."""

from __future__ import annotations

import json

import pytest
from hypothesis import strategies as st

from harness.cli import main
from harness.suite import Invariant, run_suite


def at_most_five(value: int):
    assert value <= 5, f"{value} is more than five"
    yield "even" if value % 2 == 0 else "odd"


HOLDS = Invariant("holds", "small integers are small", lambda: st.integers(0, 5), at_most_five)
BREAKS = Invariant("breaks", "all integers are small", lambda: st.integers(0, 100), at_most_five)


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


def test_report_renders_table_json_and_markdown(tmp_path):
    report = run_suite([HOLDS, BREAKS], profile="ci")
    table = report.table().splitlines()
    assert table[0].split() == ["invariant", "examples", "result", "time"]
    assert table[2].split()[:3] == ["holds", str(report.results[0].examples), "passed"]
    assert table[3].split()[2] == "FAILED"
    json_path, markdown_path = report.write(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["ok"] is False and [r["name"] for r in data["results"]] == ["holds", "breaks"]
    markdown = markdown_path.read_text()
    assert "| `breaks` |" in markdown and "Minimal example: `6`" in markdown


def test_ci_profile_runs_are_repeatable():
    first = run_suite([BREAKS, HOLDS], profile="ci")
    second = run_suite([BREAKS, HOLDS], profile="ci")
    assert [(r.examples, r.minimal_example, r.observations) for r in first.results] == [
        (r.examples, r.minimal_example, r.observations) for r in second.results
    ]


def test_cli_lists_invariants(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "state_dict_round_trip:" in out and "bundle_round_trip:" in out


def test_cli_rejects_unknown_invariant():
    with pytest.raises(SystemExit, match="unknown invariant.*nope.*known: state_dict_round_trip"):
        main(["check", "--invariant", "nope"])


def test_an_invariant_that_cannot_start_is_reported_and_the_rest_run():
    def broken_strategy():
        raise ImportError("no module named strategies.missing")

    broken = Invariant("broken", "cannot draw", broken_strategy, at_most_five)
    report = run_suite([broken, HOLDS], profile="ci")
    assert [r.passed for r in report.results] == [False, True]
    assert report.results[0].message == "ImportError: no module named strategies.missing"


def test_findings_are_listed_apart():
    def finds(value: int):
        yield "finding: torch drops the sign" if value == 0 else "ordinary"

    report = run_suite([Invariant("finds", "d", lambda: st.integers(0, 3), finds)], profile="ci")
    assert report.ok
    assert report.findings() == [("finds", "finding: torch drops the sign")]
