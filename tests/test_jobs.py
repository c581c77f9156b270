"""Invariants checked in worker processes (``run_suite(jobs=N)``, ``check --jobs N``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.cli import main
from harness.suite import Invariant, default_jobs, run_suite
from tests.test_suite import at_most_five, two_ways

ROOT = Path(__file__).resolve().parents[1]
# No database: a failure saved by one run would be replayed first by the next.
SEEDED = settings(max_examples=15, database=None, deadline=None)


def observes(value: int):
    yield str(value)


HOLDS = Invariant("holds", "small integers are small", lambda: st.integers(0, 5), at_most_five)
BREAKS = Invariant("breaks", "all integers are small", lambda: st.integers(0, 100), at_most_five)
BREAKS_TWICE = Invariant("breaks_twice", "moderate", lambda: st.integers(-100, 100), two_ways)
DRAWS = Invariant("draws", "any integer", lambda: st.integers(), observes)


def without_times(report) -> dict:
    data = json.loads(report.to_json())
    for result in data["results"]:
        result.pop("seconds")
    return data


def test_workers_give_the_report_one_process_gives():
    invariants = [BREAKS, HOLDS, BREAKS_TWICE, DRAWS]
    runs = {}
    for jobs in (1, 2):
        lines: list[str] = []
        report = run_suite(
            invariants,
            profile="dev",
            settings_=SEEDED,
            random_seed=3,
            progress=lines.append,
            reproduce=lambda invariant: f"rerun {invariant.name}",
            jobs=jobs,
        )
        runs[jobs] = report, lines
    (one, serial), (two, lines) = runs[1], runs[2]
    assert without_times(two) == without_times(one)
    assert [r.name for r in two.results] == ["breaks", "holds", "breaks_twice", "draws"]
    assert len(two.results[2].failures) == 2 and two.results[3].observations  # real content
    assert two.results[0].failures[0].reproduction == "rerun breaks"

    def timeless(texts: list[str]) -> list[str]:
        return sorted(text.rpartition(", ")[0] if text.endswith("s") else text for text in texts)

    # Each invariant's start and end line comes whole, numbered as in one process.
    assert timeless(lines) == timeless(serial)
    assert lines.index("[1/4] breaks ...") < next(
        i for i, line in enumerate(lines) if line.startswith("[1/4] breaks: FAILED")
    )


def test_a_check_interrupted_in_a_worker_stops_the_run_with_a_partial_report():
    def interrupted(value: int):
        raise KeyboardInterrupt
        yield

    def slow(value: int):
        time.sleep(0.2)
        yield from ()

    stops = Invariant("stops", "d", lambda: st.integers(), interrupted)
    waits = Invariant("waits", "d", lambda: st.integers(), slow)
    started = time.monotonic()
    report = run_suite([waits, stops, HOLDS], profile="ci", jobs=2)
    assert time.monotonic() - started < 30  # the slow one was stopped, not waited for
    assert report.results == []  # "waits" needs 20 examples of 0.2 s: it cannot have ended
    assert report.interrupted == "waits" and report.not_run == ["waits", "stops", "holds"]
    assert report.headline().startswith("INTERRUPTED during waits: 0 of 3 invariants held")


def test_a_worker_that_dies_fails_its_invariant_and_the_rest_still_run():
    def dies(value: int):
        os._exit(3)
        yield

    report = run_suite(
        [Invariant("dies", "d", lambda: st.integers(), dies), HOLDS, BREAKS],
        profile="ci",
        jobs=2,
    )
    dead, holds, breaks = report.results
    assert not dead.passed and "ended before it reported a result" in dead.message
    assert holds.passed and not breaks.passed and breaks.minimal_example == "6"
    assert report.interrupted is None


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_must_be_a_positive_whole_number(jobs):
    with pytest.raises(InvalidArgument, match="jobs="):
        run_suite([HOLDS], profile="ci", jobs=jobs)


def test_default_jobs_is_the_cores_this_process_may_use():
    assert default_jobs() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "two"])
def test_cli_refuses_a_bad_jobs_value_in_one_line(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--jobs", value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--jobs" in error


def test_cli_jobs_two_writes_the_report_jobs_one_writes(tmp_path):
    names = ["bundle_round_trip", "cuda_checkpoint_on_cpu", "weights_only_refusal"]
    chosen = [argument for name in names for argument in ("--invariant", name)]
    reports = {}
    for jobs in ("1", "2"):
        out = tmp_path / jobs
        arguments = ["check", *chosen, "--profile", "dev", "--seed", "5", "--jobs", jobs]
        assert main([*arguments, "--out", str(out)]) == 0
        data = json.loads((out / "partial-report.json").read_text())
        for result in data["results"]:
            result.pop("seconds")
        reports[jobs] = data
    assert reports["1"] == reports["2"]
    assert [r["name"] for r in reports["2"]["results"]] == names
    assert all(r["examples"] == 10 for r in reports["2"]["results"])


def test_ctrl_c_during_a_run_in_workers_writes_the_partial_report_and_exits_130(tmp_path):
    # A process group of its own, as a terminal's: Ctrl-C reaches the parent and its workers.
    command = [sys.executable, "-m", "harness", "check", "--profile", "thorough", "--jobs", "2"]
    command += ["--invariant", "resume_equivalence", "--invariant", "training_checkpoint_restored"]
    command += ["--seed", "1", "--out", str(tmp_path)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # A shell that runs tests in the background may have the child ignore SIGINT.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("[2/2] training_checkpoint_restored ..."):
                break
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, "".join(lines) + rest
    data = json.loads((tmp_path / "partial-report.json").read_text())
    assert data["interrupted"] == "resume_equivalence"
    assert data["not_run"] == ["resume_equivalence", "training_checkpoint_restored"]
    assert "interrupted" in rest and data["headline"] in rest


_SEES_DYNAMO = """
import sys
from hypothesis import settings, strategies as st
from harness.suite import Invariant, run_suite

def sees(value):
    yield f"torch._dynamo imported: {'torch._dynamo' in sys.modules}"

invariants = [Invariant(name, "d", lambda: st.integers(0, 3), sees) for name in ("a", "b")]
few = settings(max_examples=2, database=None, deadline=None)
report = run_suite(invariants, profile="dev", settings_=few, random_seed=1, jobs=2)
print(sorted({text for result in report.results for text in result.observations}))
"""


def test_workers_inherit_the_modules_checks_import_lazily():
    # torch._dynamo comes with an optimizer's first step (1.4 s): imported before the fork,
    # the workers share it instead of each importing it again.
    ran = subprocess.run(
        [sys.executable, "-c", _SEES_DYNAMO],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "['torch._dynamo imported: True']"
