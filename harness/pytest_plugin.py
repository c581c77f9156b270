"""pytest plugin of torch-persistence-harness, registered through the ``pytest11`` entry point.

Only hooks, options and fixtures live here; the logic is in the harness's ordinary modules.
What it adds to any project that installs the harness:

- the Hypothesis profiles ``dev``, ``ci`` and ``thorough`` (see :mod:`harness.profiles`),
  one of them loaded for every run, and a header line saying which and why;
- a fixed, printed Hypothesis seed for randomized profiles, so every failure comes with a
  reproduction line;
- fixtures ``torch_capabilities`` and ``checkpoint_path``, and the option
  ``--harness-keep-checkpoints``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from harness import profiles
from harness.capabilities import probe

# Profiles must exist before Hypothesis's own plugin loads --hypothesis-profile.
profiles.register_profiles()

_STASH_PROFILE = pytest.StashKey[tuple[str, str, int | None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("torch-persistence-harness")
    group.addoption(
        "--harness-keep-checkpoints",
        metavar="DIR",
        default=None,
        help="write the checkpoint_path fixture's files under DIR/<test name>/ and keep them, "
        "to inspect what a failing example saved (default: a temporary directory that "
        "pytest cleans up). The Hypothesis profile is chosen with --hypothesis-profile or "
        f"${profiles.ENVIRONMENT_VARIABLE} (dev, ci, thorough; ci when $CI is set).",
    )


# tryfirst: Hypothesis's own plugin then applies --hypothesis-verbosity on top of this profile.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import core, settings

    name, reason = profiles.choose_profile(config.getoption("--hypothesis-profile", None))
    settings.load_profile(name)
    seed = None
    if not settings.default.derandomize:
        seed = config.getoption("--hypothesis-seed", None)
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        core.global_force_seed = int(seed)
    config.stash[_STASH_PROFILE] = (name, reason, seed)


def _reproduction(config: pytest.Config, nodeid: str) -> str:
    name, _, seed = config.stash[_STASH_PROFILE]
    seed_option = f" --hypothesis-seed={seed}" if seed is not None else ""
    return f"pytest '{nodeid}' --hypothesis-profile={name}{seed_option}"


def pytest_report_header(config: pytest.Config) -> list[str]:
    name, reason, seed = config.stash[_STASH_PROFILE]
    seed_text = f", seed {seed}" if seed is not None else ", derandomized"
    caps = probe()
    return [
        f"torch-persistence-harness: torch {caps.version}"
        f" (CUDA {'available' if caps.cuda_available else 'not available'}),"
        f" Hypothesis profile '{name}' ({reason}){seed_text}"
    ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        line = _reproduction(item.config, item.nodeid)
        report.sections.append(
            ("torch-persistence-harness", f"torch {probe().version}; reproduce with:\n  {line}")
        )


@pytest.fixture(scope="session")
def torch_capabilities():
    """What the installed torch supports (:class:`harness.capabilities.Capabilities`)."""
    return probe()


@pytest.fixture
def checkpoint_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A path to save a checkpoint to, in a fresh directory for this test.

    With ``--harness-keep-checkpoints DIR`` the directory is ``DIR/<test name>`` and is kept.
    """
    keep = request.config.getoption("--harness-keep-checkpoints")
    if keep is None:
        return tmp_path / "checkpoint.pt"
    directory = Path(keep) / re.sub(r"[^\w.-]+", "_", request.node.nodeid)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / "checkpoint.pt"
