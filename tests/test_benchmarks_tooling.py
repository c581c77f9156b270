"""The benchmarks' own logic: payload sizes, the report's ratios, the regression verdicts.

Fast and timing-free: every figure here is made up, none is measured.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import operations, per_example, regression, report
from benchmarks.payloads import size_label, state_dict, tensor_bytes


def _benchmark(name: str, median: float, **info) -> dict:
    return {"name": name, "stats": {"median": median, "min": median}, "extra_info": info}


MIB = 2**20
RUN = [
    _benchmark("copy", 0.01, bytes=16 * MIB, measures="memory copy"),
    _benchmark("write", 0.05, bytes=16 * MIB, measures="file write"),
    _benchmark("save_buffer", 0.02, bytes=16 * MIB, limit="memory copy", file_bytes=17 * MIB),
    _benchmark("save_file", 0.1, bytes=16 * MIB, limit="file write", file_bytes=16 * MIB),
    _benchmark("harness", 0.9, ratio={"median": 4.0, "min": 3.0, "rounds": [3.0, 4.0, 5.0]}),
]


def test_size_labels_are_binary_units():
    assert [size_label(n) for n in (4096, 256 * 2**10, 16 * MIB, 2**30, 1000)] == [
        "4KiB",
        "256KiB",
        "16MiB",
        "1GiB",
        "1000B",
    ]


def test_state_dict_has_the_requested_bytes_in_equal_tensors():
    payload = state_dict(64 * 2**10, tensors=16)
    assert len(payload) == 16
    assert {tensor.numel() for tensor in payload.values()} == {1024}
    assert tensor_bytes(payload) == 64 * 2**10


def test_state_dict_refuses_a_size_it_cannot_split():
    with pytest.raises(ValueError, match="not a multiple"):
        state_dict(100, tensors=3)


def test_tensor_bytes_counts_a_shared_storage_once():
    weight = torch.zeros(10)
    assert tensor_bytes({"a": weight, "b": [weight, weight[2:]], "c": 3}) == 40


def test_rows_give_throughput_fraction_of_limit_overhead_and_harness_multiple():
    rows = {row.name: row for row in report.rows(RUN)}
    assert rows["save_buffer"].throughput == pytest.approx(800)
    assert rows["save_buffer"].fraction_of_limit == pytest.approx(0.5)
    assert rows["save_buffer"].overhead == pytest.approx(1 / 16)
    assert rows["save_file"].fraction_of_limit == pytest.approx(0.5)
    assert rows["copy"].is_limit and rows["copy"].fraction_of_limit is None
    assert rows["harness"].times_bare == 4.0 and rows["harness"].fraction_of_limit is None


def test_median_over_runs_combines_each_benchmark_and_keeps_its_info():
    slower = [dict(b, stats={"median": b["stats"]["median"] * 3}) for b in RUN]
    combined = report.median_over_runs([RUN, slower, RUN[:2]])
    assert [b["name"] for b in combined] == ["copy", "write"]
    assert combined[0]["stats"]["median"] == 0.01
    assert combined[1]["extra_info"] == RUN[1]["extra_info"]


def test_a_limit_of_other_bytes_is_not_used():
    other = [_benchmark("copy", 0.01, bytes=MIB, measures="memory copy"), RUN[2]]
    assert report.rows(other)[1].fraction_of_limit is None


def test_table_shows_every_benchmark_with_its_figures():
    table = report.format_table(RUN)
    lines = table.splitlines()
    assert len(lines) == 2 + len(RUN)
    assert (
        "50.0%" in table
        and "4.00x the bare work on the same examples" in table
        and "+6.25%" in table
    )


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, "." * 20 + " "), (0.5, "#" * 10 + "." * 10 + " "), (3.0, "#" * 20 + ">")],
)
def test_bar(fraction, expected):
    assert report.bar(fraction) == expected


def test_figures_leave_out_the_limits_and_can_normalize():
    assert regression.figures(RUN) == {"save_buffer": 0.02, "save_file": 0.1, "harness": 4.0}
    normalized = regression.figures(RUN, normalize=True)
    assert normalized["save_buffer"] == pytest.approx(2)
    assert normalized["save_file"] == pytest.approx(2)
    assert normalized["harness"] == 4.0


def test_figures_take_the_statistic_asked_for():
    run = [{"name": "a", "stats": {"median": 2.0, "min": 1.0}, "extra_info": {}}]
    assert regression.figures(run, statistic="min") == {"a": 1.0}
    assert regression.figures(RUN, statistic="min")["harness"] == 3.0
    with pytest.raises(ValueError, match="expected one of"):
        regression.figures(run, statistic="mean")


def test_combine_takes_the_median_of_each_benchmark_over_the_runs():
    runs = [{"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 1.0}, {"a": 2.0}]
    assert regression.combine(runs) == {"a": 2.0}
    assert regression.combine(runs[:2]) == {"a": 2.0, "b": 3.0}


def _scaled(figures: dict[str, float], **factors: float) -> dict[str, float]:
    return {name: value * factors.get(name, 1.0) for name, value in figures.items()}


BASE = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}


def test_noise_within_the_thresholds_passes():
    current = _scaled(BASE, a=1.2, b=0.9, c=1.05)
    verdict = regression.judge(
        regression.compare(BASE, current), threshold=0.3, suite_threshold=0.1
    )
    assert not verdict.failed
    assert "passed" in regression.format_verdict(verdict)


def test_one_benchmark_over_the_threshold_fails():
    current = _scaled(BASE, c=1.5)
    verdict = regression.judge(
        regression.compare(BASE, current), threshold=0.3, suite_threshold=0.2
    )
    assert [c.name for c in verdict.regressions] == ["c"]
    assert not verdict.suite_regressed
    assert "REGRESSION" in regression.format_verdict(verdict)


def test_a_uniform_slowdown_below_the_per_benchmark_threshold_fails_the_suite():
    current = _scaled(BASE, a=1.25, b=1.25, c=1.25, d=1.25)
    verdict = regression.judge(
        regression.compare(BASE, current), threshold=0.35, suite_threshold=0.1
    )
    assert not verdict.regressions
    assert verdict.suite_ratio == pytest.approx(1.25)
    assert verdict.failed
    assert "geometric mean over the suite threshold" in regression.format_verdict(verdict)


def test_compare_uses_only_benchmarks_in_both_runs():
    comparisons = regression.compare({"a": 1.0, "gone": 1.0}, {"a": 2.0, "new": 1.0})
    assert [(c.name, c.ratio) for c in comparisons] == [("a", 2.0)]
    with pytest.raises(ValueError, match="nothing to compare"):
        regression.judge([])


def test_spreads_and_suite_spread():
    runs = [BASE, _scaled(BASE, a=1.1), _scaled(BASE, a=0.9, b=1.2)]
    spreads = regression.spreads(runs)
    assert spreads["a"] == pytest.approx(1.1 / 0.9 - 1)
    assert spreads["b"] == pytest.approx(0.2)
    assert spreads["c"] == 0
    assert regression.suite_spread(runs) == pytest.approx(1.1**0.25 - 1)
    assert "suite spread" in regression.format_calibration(runs)


def test_check_command_exits_1_on_a_regression(tmp_path, capsys):
    baseline, slower = tmp_path / "base.json", tmp_path / "slow.json"
    baseline.write_text(json.dumps({"benchmarks": RUN}))
    slowed = [
        dict(b, stats={statistic: value * 1.25 for statistic, value in b["stats"].items()})
        for b in RUN
    ]
    slower.write_text(json.dumps({"benchmarks": slowed}))
    assert regression.main(["check", str(baseline), "--run", str(baseline)]) == 0
    assert regression.main(["check", str(baseline), str(baseline), "--run", str(slower)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_a_harness_grown_slower_relative_to_torch_fails_the_check(tmp_path, capsys):
    # Its times unchanged (torch as slow as before), its ratio to the bare work up by half.
    baseline, slower = tmp_path / "base.json", tmp_path / "slow.json"
    baseline.write_text(json.dumps({"benchmarks": RUN}))
    ratio = {"median": 6.0, "min": 4.5, "rounds": [4.5, 6.0, 7.5]}
    slowed = [dict(b, extra_info={"ratio": ratio}) if b["name"] == "harness" else b for b in RUN]
    slower.write_text(json.dumps({"benchmarks": slowed}))
    arguments = ["check", str(baseline), "--run", str(slower), "--suite-threshold", "0.1"]
    assert regression.main(arguments) == 1
    assert "harness" in capsys.readouterr().out


def _round(workload: str, harness: float, bare: float) -> per_example.Round:
    return per_example.Round(workload, 0, 10, harness, bare)


def test_rounds_summarize_per_workload_in_order():
    rounds = [_round("b", 3, 1), _round("a", 2, 1), _round("b", 5, 1), _round("b", 4, 2)]
    (b, a) = per_example.summarize(rounds)
    assert (b.workload, b.rounds, b.examples, b.median, b.low, b.high) == ("b", 3, 30, 3, 2, 5)
    assert (b.harness_ms, b.bare_ms) == (400, 100)
    assert (a.workload, a.median) == ("a", 2)
    table = per_example.format_rounds(rounds)
    assert table.splitlines()[2].split()[-3:] == ["3.00", "5.00", "2.00"]


def test_least_is_every_promised_call_and_the_floor_over_the_bare_work():
    plain = per_example.Round("a", 0, 10, harness_seconds=9, bare_seconds=2, floor_seconds=1)
    assert plain.least_ratio == 1.5  # the bare work is all the promise names
    promised = per_example.Round("b", 0, 10, 9, 2, promised_seconds=3, floor_seconds=1)
    assert (promised.least_ratio, promised.promise_ratio) == (2.0, 3.0)
    assert (promised.least_seconds, promised.over_least) == (4, 2.25)
    (summary,) = per_example.summarize([promised])
    assert (summary.floor_ms, summary.least_median, summary.over_least_median) == (100, 2.0, 2.25)


def test_a_round_runs_the_bare_work_on_the_examples_the_harness_drew():
    record = per_example.workload("bundle_round_trip")
    calls = []
    bare = per_example.Workload(
        record.name, record.invariant, lambda example, directory: calls.append(example), "records"
    )
    result = per_example.measure_round(bare, seed=3, examples=3)
    assert result.examples == len(calls) == 3
    assert all(isinstance(bundle, dict) for bundle, _ in calls)
    assert result.harness_seconds > 0 and result.bare_seconds > 0 and result.floor_seconds > 0
    again = per_example.measure_round(record, seed=3, examples=3)
    assert again.examples == 3 and again.ratio > 0
    with pytest.raises(KeyError, match="the workloads"):
        per_example.workload("nothing")


def test_fixed_workloads_check_one_example_of_their_size_in_every_round():
    model, _ = per_example.workload("state_dict_round_trip[4KiB]").fixed()
    assert tensor_bytes(model.module.state_dict()) == 4 * 2**10
    bundle = per_example.workload("cuda_checkpoint_on_cpu[4KiB]").fixed()
    assert tensor_bytes(bundle) == 4 * 2**10
    assert [w.name for w in per_example.LARGE_WORKLOADS] == [
        "state_dict_round_trip[256MiB]",
        "bundle_round_trip[256MiB]",
        "cuda_checkpoint_on_cpu[256MiB]",
    ]
    result = per_example.measure_round(
        per_example.workload("bundle_round_trip[4KiB]"), seed=0, examples=3
    )
    assert result.examples == 3 and result.ratio > 0


def test_resolve_run_finds_a_saved_name(tmp_path):
    machine = tmp_path / "Linux-CPython-3.11-64bit"
    machine.mkdir()
    (machine / "0001_baseline.json").write_text("{}")
    assert report.resolve_run("baseline", tmp_path).name == "0001_baseline.json"
    with pytest.raises(FileNotFoundError, match="--benchmark-save=other"):
        report.resolve_run("other", tmp_path)


def test_under_test_is_the_function_itself_without_a_slowdown(monkeypatch):
    def save():
        return 1

    monkeypatch.setattr(operations, "SLOWDOWN", 0.0)
    assert operations.under_test(save) is save


def test_under_test_adds_the_slowdown(monkeypatch):
    monkeypatch.setattr(operations, "SLOWDOWN", 0.5)
    calls = []
    slowed = operations.under_test(lambda: calls.append(1) or "result")
    assert slowed() == "result" and calls == [1]


def test_a_bad_slowdown_value_says_what_is_expected(monkeypatch):
    monkeypatch.setenv(operations.SLOWDOWN_VARIABLE, "fast")
    with pytest.raises(ValueError, match="expected a fraction"):
        operations._slowdown_from_environment()


def _version_run(copy: float, save: float) -> dict:
    size = 256 * MIB
    return {
        "benchmarks": [
            _benchmark("test_limit_memory_copy[256MiB]", copy, bytes=size, measures="memory copy"),
            _benchmark("test_torch_save_buffer[256MiB]", save, bytes=size, limit="memory copy"),
        ]
    }


def test_versions_table_gives_each_version_its_fraction_of_the_memory_copy(tmp_path):
    from benchmarks.versions import fractions_by_version, markdown_table, plot

    (tmp_path / "2.10.0.json").write_text(json.dumps(_version_run(0.1, 0.4)))
    (tmp_path / "2.9.1.json").write_text(json.dumps(_version_run(0.2, 0.4)))
    figures = fractions_by_version(tmp_path)
    assert list(figures) == ["2.9.1", "2.10.0"]  # release order, not text order
    assert figures["2.9.1"]["save 256MiB"] == pytest.approx((0.5, 640.0))
    assert figures["2.10.0"]["save 256MiB"] == pytest.approx((0.25, 640.0))
    assert "load 4096 small tensors" not in figures["2.9.1"]
    table = markdown_table(figures)
    assert "| 2.9.1 | 50.0% (640) |" in table and "| 2.10.0 | 25.0% (640) |" in table
    plot(figures, tmp_path / "versions.png")
    assert (tmp_path / "versions.png").read_bytes()[:4] == b"\x89PNG"


def test_promise_ratio_falls_back_to_the_bare_ratio():
    assert per_example.Round("w", 0, 10, 4.0, 2.0).promise_ratio == 2.0
    assert per_example.Round("w", 0, 10, 4.0, 2.0, 4.0).promise_ratio == 1.0


def test_scaling_measures_both_sides():
    from benchmarks import scaling

    (point,) = scaling.measure(["bundle_round_trip"], [1000])
    assert point.examples == 20 and point.harness_ms > 0 and point.bare_ms > 0
