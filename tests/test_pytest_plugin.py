"""The pytest plugin, seen from a user's project in a temporary folder: it changes nothing
unless asked (profiles, header, seed, reproduction lines, imports), does what it says when
asked, refuses unknown profiles in one line, and its fixtures work under ``@given``."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

# A property test that counts its real calls and writes them, with the settings it ran
# under, to observed.json in the project's folder.
COUNTING_TEST = """
import json
from hypothesis import given, settings, strategies as st

calls = []

@given(st.integers())
def test_property(value):
    calls.append(value)

def test_write_what_ran():
    current = settings.default
    observed = {
        "calls": len(calls),
        "profile": settings.get_current_profile_name(),
        "max_examples": current.max_examples,
        "derandomize": current.derandomize,
    }
    with open("observed.json", "w") as handle:
        json.dump(observed, handle)
"""

FAILING_PROPERTY = """
from hypothesis import given, strategies as st

@given(st.integers())
def test_small(value):
    assert value < 10
"""

UNRELATED_FAILURE = """
def test_arithmetic():
    assert 1 + 1 == 3
"""

USER_PROFILE = """
from hypothesis import settings

settings.register_profile({name!r}, max_examples={examples})
settings.load_profile({name!r})
"""

HARNESS = "torch-persistence-harness"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """The user's project starts with no harness variable (tests/conftest.py sets one for
    this project's own run) and outside CI (tox passes $CI on also as the variable below,
    which Hypothesis reads too: tox-dev/tox#3442)."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("__TOX_ENVIRONMENT_VARIABLE_ORIGINAL_CI", raising=False)
    monkeypatch.delenv("HARNESS_PROFILE", raising=False)


def observed(pytester, *args) -> dict:
    pytester.makepyfile(test_counting=COUNTING_TEST)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2)
    return {**json.loads((pytester.path / "observed.json").read_text()), "output": result}


def harness_lines(result) -> list[str]:
    """The header line, the reproduction section and its line (not pytest's plugin list)."""
    marks = (f"{HARNESS}:", f" {HARNESS} ", "reproduce with")
    lines = result.outlines + result.errlines
    return [line for line in lines if any(mark in line for mark in marks)]


# --- nothing changes unless asked -----------------------------------------------------------


def test_without_asking_hypothesis_defaults_run(pytester):
    ran = observed(pytester)
    assert ran["calls"] == 100 and ran["max_examples"] == 100, ran
    assert ran["profile"] == "default"
    assert harness_lines(ran["output"]) == []


@pytest.mark.parametrize("ci", [False, True], ids=["local", "CI"])
def test_a_users_own_profile_runs_all_its_examples(pytester, monkeypatch, ci):
    if ci:
        monkeypatch.setenv("CI", "true")
    pytester.makeconftest(USER_PROFILE.format(name="many", examples=200))
    ran = observed(pytester)
    assert ran["calls"] == 200 and ran["profile"] == "many", ran
    assert harness_lines(ran["output"]) == []


def test_hypothesis_ci_profile_is_left_alone(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    ran = observed(pytester)
    assert ran["profile"] == "ci" and ran["derandomize"], ran
    assert ran["calls"] == 100, "the harness's ci profile (20 examples) replaced Hypothesis's"
    assert harness_lines(ran["output"]) == []


def test_hypothesis_profile_option_keeps_naming_hypothesis_ci(pytester):
    ran = observed(pytester, "--hypothesis-profile=ci")
    assert ran["calls"] == 100 and ran["derandomize"], ran
    assert harness_lines(ran["output"]) == []


def test_a_users_profile_named_dev_wins_over_the_harness_dev(pytester):
    pytester.makeconftest(
        "from hypothesis import settings\nsettings.register_profile('dev', max_examples=7)\n"
    )
    ran = observed(pytester, "--hypothesis-profile=dev")
    assert ran["calls"] == 7, ran
    assert harness_lines(ran["output"]) == []


def test_unrelated_failures_carry_no_harness_line(pytester):
    pytester.makepyfile(test_unrelated=UNRELATED_FAILURE, test_property=FAILING_PROPERTY)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=2)
    assert harness_lines(result) == []
    assert "reproduce with" not in result.stdout.str()


PLUGIN_IMPORTS_NOTHING = """
import sys

def test_plugin_loaded_without_torch_or_hypothesis(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("torch_persistence_harness")
    assert "harness.pytest_plugin" in sys.modules
    assert "torch" not in sys.modules
    assert "hypothesis" not in sys.modules
"""


def test_loading_the_plugin_imports_neither_torch_nor_hypothesis(pytester):
    pytester.makepyfile(PLUGIN_IMPORTS_NOTHING)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_the_import_check_fails_when_a_profile_is_asked_for(pytester, monkeypatch):
    # The same check, in a run that asks: the header imports torch, and the check sees it.
    monkeypatch.setenv("HARNESS_PROFILE", "dev")
    pytester.makepyfile(PLUGIN_IMPORTS_NOTHING)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 'torch' not in *"])


# --- asking for a harness profile -----------------------------------------------------------


def test_environment_variable_loads_the_harness_profile(pytester, monkeypatch):
    monkeypatch.setenv("HARNESS_PROFILE", "thorough")
    ran = observed(pytester)
    assert ran["profile"] == "thorough" and ran["calls"] == 500, ran
    ran["output"].stdout.fnmatch_lines(
        ["torch-persistence-harness: torch *Hypothesis profile 'thorough' (from $HARNESS_PROFILE)*"]
    )


def test_environment_variable_ci_is_the_harness_ci_profile(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("HARNESS_PROFILE", "ci")
    ran = observed(pytester)
    assert ran["calls"] == 20 and ran["derandomize"], ran
    ran["output"].stdout.fnmatch_lines(
        ["*Hypothesis profile 'ci' (from $HARNESS_PROFILE), derandomized"]
    )


def test_option_naming_a_harness_profile_loads_it_with_a_printed_seed(pytester):
    ran = observed(pytester, "--hypothesis-profile=dev")
    assert ran["profile"] == "dev" and ran["calls"] == 10, ran
    ran["output"].stdout.fnmatch_lines(
        [
            "torch-persistence-harness: torch 2*, Hypothesis profile 'dev' "
            "(chosen with --hypothesis-profile), seed *"
        ]
    )


def test_option_overrides_environment(pytester, monkeypatch):
    monkeypatch.setenv("HARNESS_PROFILE", "thorough")
    ran = observed(pytester, "--hypothesis-profile=dev")
    assert ran["calls"] == 10, ran


def test_profiles_the_user_registered_from_the_harness_count_as_the_harness_s(pytester):
    pytester.makeconftest("from harness import profiles\n\nprofiles.register_profiles()\n")
    ran = observed(pytester, "--hypothesis-profile=ci")
    assert ran["calls"] == 20 and ran["derandomize"], ran
    ran["output"].stdout.fnmatch_lines(
        ["*Hypothesis profile 'ci' (chosen with --hypothesis-profile), derandomized"]
    )


@pytest.mark.parametrize(
    ("how", "source"),
    [("environment", "from $HARNESS_PROFILE"), ("option", "chosen with --hypothesis-profile")],
)
def test_unknown_profile_is_a_one_line_usage_error(pytester, monkeypatch, how, source):
    pytester.makepyfile("def test_nothing(): pass")
    if how == "environment":
        monkeypatch.setenv("HARNESS_PROFILE", "bogus")
        result = pytester.runpytest_subprocess()
    else:
        result = pytester.runpytest_subprocess("--hypothesis-profile=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = [line for line in result.outlines + result.errlines if line.strip()]
    assert output == [
        f"ERROR: unknown Hypothesis profile 'bogus' ({source}); use one of: dev, ci, thorough"
    ]


# --- the reproduction line ------------------------------------------------------------------


def reproduction_lines(result) -> list[str]:
    lines = [line.strip() for line in result.outlines]
    return [line for line in lines if "pytest 'test_" in line]


def test_a_failing_property_under_the_harness_profile_reproduces(pytester):
    pytester.makepyfile(test_small=FAILING_PROPERTY, test_unrelated=UNRELATED_FAILURE)
    result = pytester.runpytest_subprocess("--hypothesis-profile=dev")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*- torch-persistence-harness -*", "torch 2*; reproduce with:"])
    (command,) = reproduction_lines(result)  # the property's only, not the unrelated failure's
    assert command.startswith("pytest 'test_small.py::test_small' --hypothesis-profile=dev ")
    seed = command.split("--hypothesis-seed=")[1]
    again = pytester.runpytest_subprocess(
        "test_small.py", "--hypothesis-profile=dev", f"--hypothesis-seed={seed}"
    )
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*value=10*"])
    assert reproduction_lines(again) == [command]


def test_the_reproduction_line_asks_the_way_the_run_asked(pytester, monkeypatch):
    monkeypatch.setenv("HARNESS_PROFILE", "ci")
    pytester.makepyfile(test_small=FAILING_PROPERTY)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    assert reproduction_lines(result) == ["HARNESS_PROFILE=ci pytest 'test_small.py::test_small'"]


# --- options and fixtures -------------------------------------------------------------------


def test_help_lists_the_plugin_options(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines([f"{HARNESS}:", "*--harness-keep-checkpoints=DIR*"])


CHECKPOINTS_UNDER_GIVEN = """
import torch
from hypothesis import given, strategies as st

paths = []

@given(st.integers(0, 1000))
def test_save(checkpoint_paths, value):
    path = checkpoint_paths()
    assert path.name == "checkpoint.pt" and not any(path.parent.iterdir())
    torch.save({"value": torch.tensor(value)}, path)
    assert torch.load(path)["value"] == value
    paths.append(path)

def test_every_call_had_its_own_path():
    assert len(paths) == 100 and len(set(paths)) == 100
"""


def test_checkpoint_paths_gives_a_fresh_path_per_example_under_given(pytester):
    pytester.makepyfile(CHECKPOINTS_UNDER_GIVEN)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)


def test_checkpoint_path_under_given_is_what_the_health_check_refuses(pytester):
    pytester.makepyfile(
        """
        from hypothesis import given, strategies as st

        @given(st.integers())
        def test_save(checkpoint_path, value):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*uses a function-scoped fixture 'checkpoint_path'*"])


def test_checkpoint_paths_are_kept_when_asked(pytester, tmp_path):
    keep = tmp_path / "kept"
    pytester.makepyfile(CHECKPOINTS_UNDER_GIVEN)
    for _ in range(2):
        result = pytester.runpytest_subprocess(f"--harness-keep-checkpoints={keep}")
        result.assert_outcomes(passed=2)
    (test_folder,) = keep.iterdir()
    assert "test_save" in test_folder.name
    # The second run numbered its folders after the first run's.
    assert sorted(int(p.name) for p in test_folder.iterdir()) == list(range(1, 201))
    assert all((p / "checkpoint.pt").is_file() for p in test_folder.iterdir())


def test_checkpoint_path_is_kept_when_asked(pytester, tmp_path):
    keep = tmp_path / "kept"
    pytester.makepyfile(
        """
        import torch
        def test_save(checkpoint_path, torch_capabilities):
            torch.save({"v": torch.ones(1)}, checkpoint_path)
            assert torch_capabilities.version in str(torch.__version__)
        """
    )
    result = pytester.runpytest_subprocess(f"--harness-keep-checkpoints={keep}")
    result.assert_outcomes(passed=1)
    assert [p.name for p in keep.rglob("*.pt")] == ["checkpoint.pt"]


# --- check_checkpointer in a user's own tests -----------------------------------------------

USERS_CHECKPOINTERS = """
import json

import harness


class ForgetsExtra(harness.TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        super().load(path, into, map_location)
        into.extra.clear()


def test_reference(check_checkpointer):
    report = check_checkpointer(
        harness.TrainingCheckpoint(), max_examples=2, invariants=["state_restored"]
    )
    assert report.ok
    with open("seed.json", "w") as handle:
        json.dump(report.seed, handle)


def test_forgets(check_checkpointer):
    check_checkpointer(ForgetsExtra(), max_examples=2, invariants=["state_restored"])
"""


def _reproduction(result) -> str:
    (line,) = [line for line in result.outlines if line.startswith("Reproduce: ")]
    return line.removeprefix("Reproduce: `").removesuffix("`")


def _minimal(result) -> str:
    (line,) = [line for line in result.outlines if line.startswith("Minimal example: ")]
    return line


def test_check_checkpointer_fixture_fails_the_test_with_the_report(pytester):
    pytester.makepyfile(test_users=USERS_CHECKPOINTERS)
    result = pytester.runpytest_subprocess("--hypothesis-seed=5")
    result.assert_outcomes(passed=1, failed=1)
    assert json.loads((pytester.path / "seed.json").read_text()) == 5
    result.stdout.fnmatch_lines(["*likely cause (extra_not_restored)*"])
    assert _reproduction(result) == "pytest 'test_users.py::test_forgets' --hypothesis-seed=5"
    assert "Traceback" not in result.stdout.str()


def test_check_checkpointer_fixture_reruns_with_the_seed_it_names(pytester):
    pytester.makepyfile(test_users=USERS_CHECKPOINTERS)
    first = pytester.runpytest_subprocess("test_users.py::test_forgets")
    first.assert_outcomes(failed=1)
    command = _reproduction(first)
    assert command.startswith("pytest 'test_users.py::test_forgets' --hypothesis-seed=")
    seed = command.split("=")[-1]
    again = pytester.runpytest_subprocess(
        "test_users.py::test_forgets", f"--hypothesis-seed={seed}"
    )
    again.assert_outcomes(failed=1)
    assert _reproduction(again) == command and _minimal(again) == _minimal(first)


USERS_MODELS = """
import functools

import torch

import harness
from harness.user_models import UserModel

MODEL = UserModel(
    lambda: torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)),
    example_input=(torch.randn(5, 3),),
    name="LinearNorm",
)
SGD = functools.partial(torch.optim.SGD, lr=0.1)


class ForgetsBuffers(harness.TrainingCheckpoint):
    def load(self, path, into, map_location=None):
        buffers = {name: b.clone() for name, b in into.model.named_buffers()}
        super().load(path, into, map_location)
        for name, buffer in into.model.named_buffers():
            buffer.data.copy_(buffers[name])


def test_reference(check_checkpointer):
    check_checkpointer(
        harness.TrainingCheckpoint(), models=MODEL, optimizers=SGD, max_examples=3,
        invariants=["resume_equivalence"],
    )


def test_forgets(check_checkpointer):
    check_checkpointer(
        ForgetsBuffers(), models=MODEL, optimizers=SGD, max_examples=3,
        invariants=["state_restored"],
    )
"""


def test_check_checkpointer_fixture_on_the_users_own_model(pytester):
    pytester.makepyfile(test_models=USERS_MODELS)
    result = pytester.runpytest_subprocess("--hypothesis-seed=0")
    result.assert_outcomes(passed=1, failed=1)
    assert _minimal(result).startswith("Minimal example: `UserTrainingCase(model=LinearNorm, ")
    result.stdout.fnmatch_lines(["*running_mean*", "*likely cause (model_not_restored)*"])
