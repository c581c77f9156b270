"""The pytest plugin: profile choice, the reproduction line, options and fixtures."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

PROPERTY_TEST = """
from hypothesis import given, strategies as st

@given(st.integers())
def test_small(value):
    assert value < 10
"""


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("HARNESS_PROFILE", raising=False)


def test_header_names_torch_and_default_profile(pytester, clean_env):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(
        ["torch-persistence-harness: torch *Hypothesis profile 'dev'*seed*"]
    )


def test_ci_environment_selects_ci_profile(pytester, clean_env, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*Hypothesis profile 'ci' (because $CI is set), derandomized*"])


def test_environment_variable_selects_profile(pytester, clean_env, monkeypatch):
    monkeypatch.setenv("HARNESS_PROFILE", "thorough")
    pytester.makepyfile(
        """
        from hypothesis import settings
        def test_profile():
            assert settings.default.max_examples == 500
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*profile 'thorough' (from $HARNESS_PROFILE)*"])


def test_option_overrides_environment(pytester, clean_env, monkeypatch):
    monkeypatch.setenv("HARNESS_PROFILE", "thorough")
    pytester.makepyfile(
        """
        from hypothesis import settings
        def test_profile():
            assert settings.default.derandomize
            assert settings.default.database is None
        """
    )
    result = pytester.runpytest_subprocess("--hypothesis-profile=ci")
    result.assert_outcomes(passed=1)


def test_unknown_profile_is_a_clear_error(pytester, clean_env, monkeypatch):
    monkeypatch.setenv("HARNESS_PROFILE", "fast")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret != 0
    result.stderr.fnmatch_lines(
        ["*unknown Hypothesis profile 'fast'*use one of: dev, ci, thorough*"]
    )


def test_failure_prints_a_reproduction_line_that_reproduces(pytester, clean_env):
    pytester.makepyfile(PROPERTY_TEST)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    lines = [line.strip() for line in result.stdout.lines]
    reproduce = [line for line in lines if line.startswith("pytest 'test_")]
    assert len(reproduce) == 1, result.stdout.str()
    command = reproduce[0]
    assert "--hypothesis-profile=dev --hypothesis-seed=" in command
    seed = command.split("--hypothesis-seed=")[1]
    # Running the printed command again fails the same way, on the same shrunk example.
    again = pytester.runpytest_subprocess(
        "test_failure_prints_a_reproduction_line_that_reproduces.py", f"--hypothesis-seed={seed}"
    )
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*value=10*"])


def test_help_lists_the_plugin_options(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["torch-persistence-harness:", "*--harness-keep-checkpoints=DIR*"])


def test_checkpoint_path_is_kept_when_asked(pytester, clean_env, tmp_path):
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
