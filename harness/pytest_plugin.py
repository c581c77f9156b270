"""pytest plugin of torch-persistence-harness, registered through the ``pytest11`` entry point.

Only hooks, options and fixtures live here; the logic is in the harness's ordinary modules.
Every project that installs the harness loads this plugin, so it changes nothing in a test
run unless asked: loading it imports neither torch nor Hypothesis and probes nothing, no
profile is registered or loaded, no header line or seed is printed, no failure is touched.

**Asking for a harness profile** (``dev``, ``ci``, ``thorough``; see :mod:`harness.profiles`):

- ``HARNESS_PROFILE=NAME``, the harness's own variable, always means the harness's profile
  ``NAME``: it is registered under that name and loaded for the run (Hypothesis's
  ``--hypothesis-verbosity`` still applies on top).
- ``--hypothesis-profile NAME`` is Hypothesis's own option, so a name that is already
  registered when pytest configures keeps the meaning it has without the harness:
  Hypothesis's built-in ``default`` and ``ci`` profiles and any profile the user's
  conftest registers are loaded by Hypothesis as usual, and the harness stays out. Only a
  harness profile name that nothing else registered (``dev``, ``thorough``), or one the
  user registered with :func:`harness.profiles.register_profiles`, selects the harness's
  profile. The option wins over ``HARNESS_PROFILE``; a name registered nowhere is a
  one-line usage error, as is a ``HARNESS_PROFILE`` that names no harness profile.

The built-in ``ci`` profile: Hypothesis registers it itself and loads it automatically on
CI machines, with its default of 100 examples. Replacing it whenever the harness is
installed would silently cut every user's CI runs to the harness's 20 examples, so the
harness never touches it unless asked through its own variable: ``--hypothesis-profile ci``
is Hypothesis's ``ci``, ``HARNESS_PROFILE=ci`` the harness's.

**When the harness's profile is in use** (asked for as above), the run gets a header line
naming torch's version (torch is imported then, not before), the profile, why it was chosen
and the seed; a profile that is not derandomized gets a fixed seed (``--hypothesis-seed``,
else a random one) so that the run can be repeated. The reproduction section is added to a
failure only when the harness's profile is in use *and* the failing test is a Hypothesis
test (``@given``): those are the failures that the profile and the printed seed reproduce.
Any other failure, and every failure in a run that did not ask, is reported as it would be
without the harness.

**Fixtures** (none imports anything before it runs): ``torch_capabilities``, what the
installed torch supports (torch is imported and probed then); ``checkpoint_paths``, a
factory giving a fresh path in a fresh directory per call, for ``@given`` tests (it is
session-scoped, so Hypothesis's function-scoped-fixture health check passes);
``checkpoint_path``, one path per test, for tests without ``@given``.
``--harness-keep-checkpoints DIR`` keeps what both write under ``DIR/<test name>/``.
``check_checkpointer``: :func:`harness.check_checkpointer` inside a test of yours (on your
own models, optimizers and schedulers with ``models=``, ``optimizers=``, ``schedulers=``),
failing the test with the report and the pytest command that reruns it with the same seed.

**Your checkpointer across torch versions** (``docs/your-code-across-versions.md``), only
when asked: with ``--harness-write-corpus DIR``, every ``check_checkpointer`` call also saves
the fixed cases of ``python -m matrix run --checkpointer`` (and one per ``UserModel`` of its
``models=``) with the checkpointer it is given (:func:`matrix.user_code.write_call_corpus`)
into ``DIR/<torch version>/<test>/<n>/``, ``n`` counting the calls in the test; with
``--harness-read-corpus DIR``, it loads every torch version's corpus of that call under
``DIR`` with the checkpointer (:func:`matrix.user_code.read_call_corpora`), writes the
records beside this torch's corpus as ``results.json``, and fails the test with one line per
load that is not identical. At the
end of the run, ``DIR/results.json`` and ``DIR/grid.md`` (and ``grid.png`` where matplotlib is
installed) merge every reader's records (:func:`matrix.user_code.merge_user_records`). Given
together, each call writes, then reads.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import profiles

_PROFILE_OPTION = "--hypothesis-profile"
_SEED_OPTION = "--hypothesis-seed"
_KEEP_OPTION = "--harness-keep-checkpoints"
_WRITE_OPTION = "--harness-write-corpus"
_READ_OPTION = "--harness-read-corpus"


@dataclass(frozen=True)
class _ProfileInUse:
    """The harness's profile a run asked for, and how to ask for it again."""

    name: str
    reason: str
    seed: int | str | None
    by_option: bool

    def reproduction(self, nodeid: str) -> str:
        seed = f" {_SEED_OPTION}={self.seed}" if self.seed is not None else ""
        if self.by_option:
            return f"pytest '{nodeid}' {_PROFILE_OPTION}={self.name}{seed}"
        return f"{profiles.ENVIRONMENT_VARIABLE}={self.name} pytest '{nodeid}'{seed}"


@dataclass(frozen=True)
class _Corpus:
    """Where a run asked ``check_checkpointer`` to write its corpus and to read corpora
    (absolute; None for not asked)."""

    write: Path | None
    read: Path | None


_PROFILE_IN_USE = pytest.StashKey[_ProfileInUse]()
_CURRENT_TEST = pytest.StashKey[str]()
_CORPUS = pytest.StashKey[_Corpus]()
_MERGED = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("torch-persistence-harness")
    group.addoption(
        _KEEP_OPTION,
        metavar="DIR",
        default=None,
        help="write the files of the checkpoint_path and checkpoint_paths fixtures under "
        "DIR/<test name>/ and keep them, to inspect what a failing example saved (default: "
        "temporary directories that pytest cleans up). The harness's Hypothesis profiles "
        f"({', '.join(profiles.NAMES)}) are used only when asked for, with "
        f"${profiles.ENVIRONMENT_VARIABLE}=NAME or {_PROFILE_OPTION}=NAME (default: none, "
        "Hypothesis's own settings).",
    )
    group.addoption(
        _WRITE_OPTION,
        metavar="DIR",
        default=None,
        help="in every check_checkpointer call, also save the fixed cases of python -m matrix "
        "run --checkpointer with the checkpointer into DIR/<torch version>/<test>/<n>/, for "
        f"{_READ_OPTION} under other torch versions (default: no corpus).",
    )
    group.addoption(
        _READ_OPTION,
        metavar="DIR",
        default=None,
        help="in every check_checkpointer call, also load every torch version's corpus of "
        "that call under DIR with the checkpointer and fail the test on a load that is not "
        "identical; DIR/results.json and DIR/grid.md merge every reader's loads (default: "
        "none read).",
    )


def _asked_profile(config: pytest.Config) -> tuple[str, str, bool] | None:
    """The harness profile this run asks for, ``(name, reason, by option)``, or None."""
    explicit = config.getoption(_PROFILE_OPTION, None)
    if explicit is None and not os.environ.get(profiles.ENVIRONMENT_VARIABLE):
        return None
    if explicit is not None and profiles.is_registered_elsewhere(explicit):
        return None  # Hypothesis's or the user's profile: Hypothesis loads it
    try:
        name, reason = profiles.choose_profile(explicit)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    return name, reason, explicit is not None


def _corpus_root(config: pytest.Config, option: str) -> Path | None:
    """The folder ``option`` names, absolute (the folder to write is created); a one-line
    usage error where it cannot serve."""
    value = config.getoption(option)
    if value is None:
        return None
    root = Path(value).absolute()
    if root.exists() and not root.is_dir():
        raise pytest.UsageError(f"{option} {value}: not a folder; give a folder")
    if option == _READ_OPTION and not root.is_dir():
        raise pytest.UsageError(
            f"{option} {value}: no such folder; write a corpus there first with "
            f"{_WRITE_OPTION} {value} (under each torch version)"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise pytest.UsageError(f"{option} {value}: cannot create it ({error.strerror})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"{option} {value}: not writable; give a folder of yours")
    return root


def _configure_corpus(config: pytest.Config) -> None:
    write, read = _corpus_root(config, _WRITE_OPTION), _corpus_root(config, _READ_OPTION)
    if write is None and read is None:
        return
    from matrix.user_code import MANIFEST

    if read is not None and read != write and not any(read.glob(f"*/*/*/{MANIFEST}")):
        raise pytest.UsageError(
            f"{_READ_OPTION} {config.getoption(_READ_OPTION)}: no corpus there; write one "
            f"first with {_WRITE_OPTION} under each torch version"
        )
    config.stash[_CORPUS] = _Corpus(write, read)


# tryfirst: before Hypothesis's own plugin, which loads --hypothesis-profile (registered by
# then) and applies --hypothesis-verbosity on top of the loaded profile.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _configure_corpus(config)
    asked = _asked_profile(config)
    if asked is None:
        return
    from hypothesis import core, settings

    name, reason, by_option = asked
    profiles.load_profile(name)
    seed = None
    if not settings.default.derandomize:
        seed = config.getoption(_SEED_OPTION, None)
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        try:  # as Hypothesis's own plugin reads --hypothesis-seed: an integer if it is one
            seed = int(seed)
        except ValueError:
            pass
        core.global_force_seed = seed
    config.stash[_PROFILE_IN_USE] = _ProfileInUse(name, reason, seed, by_option)


def _torch_version() -> str:
    from harness.capabilities import torch_version

    return torch_version()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    in_use = config.stash.get(_PROFILE_IN_USE, None)
    if in_use is None:
        return None
    seed = f", seed {in_use.seed}" if in_use.seed is not None else ", derandomized"
    return [
        f"torch-persistence-harness: torch {_torch_version()},"
        f" Hypothesis profile '{in_use.name}' ({in_use.reason}){seed}"
    ]


def _is_hypothesis_test(item: pytest.Item) -> bool:
    from hypothesis import is_hypothesis_test

    return is_hypothesis_test(getattr(item, "obj", None))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    in_use = item.config.stash.get(_PROFILE_IN_USE, None)
    if in_use is None or call.when != "call":
        return
    report = outcome.get_result()
    if report.failed and _is_hypothesis_test(item):
        report.sections.append(
            (
                "torch-persistence-harness",
                f"torch {_torch_version()}; reproduce with:\n  {in_use.reproduction(item.nodeid)}",
            )
        )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # The test checkpoint_paths (session-scoped) names its directories after.
    item.config.stash[_CURRENT_TEST] = item.nodeid


def _directory_name(nodeid: str) -> str:
    return re.sub(r"[^\w.-]+", "_", nodeid)


@pytest.fixture(scope="session")
def torch_capabilities():
    """What the installed torch supports (:class:`harness.capabilities.Capabilities`)."""
    from harness.capabilities import probe

    return probe()


@pytest.fixture
def checkpoint_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A path to save a checkpoint to, in a fresh directory for this test.

    One path per test: under ``@given`` every example would share it (and Hypothesis's
    health check refuses function-scoped fixtures there), so use ``checkpoint_paths``.
    With ``--harness-keep-checkpoints DIR`` the directory is ``DIR/<test name>`` and is kept.
    """
    keep = request.config.getoption(_KEEP_OPTION)
    if keep is None:
        return tmp_path / "checkpoint.pt"
    directory = Path(keep) / _directory_name(request.node.nodeid)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / "checkpoint.pt"


@pytest.fixture(scope="session")
def checkpoint_paths(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """A factory of checkpoint paths: ``checkpoint_paths(name="checkpoint.pt")`` returns
    ``<a new empty directory>/<name>``, a different one at every call, so every example of a
    ``@given`` test saves to its own file.

    The directories are temporary and named after the running test. With
    ``--harness-keep-checkpoints DIR`` they are ``DIR/<test name>/<n>/`` and are kept, ``n``
    counting the calls (continuing after folders an earlier run left): the highest is the
    last call, e.g. the example Hypothesis shrank a failure to.
    """
    config = request.config
    keep = config.getoption(_KEEP_OPTION)
    calls: Counter[str] = Counter()

    def checkpoint_paths(name: str = "checkpoint.pt") -> Path:
        test = _directory_name(config.stash.get(_CURRENT_TEST, "session"))
        if keep is None:
            # pytest's own limit for tmp_path's folder names.
            return tmp_path_factory.mktemp(test[:30], numbered=True) / name
        while True:
            calls[test] += 1
            directory = Path(keep) / test / str(calls[test])
            try:
                directory.mkdir(parents=True)
            except FileExistsError:
                continue
            return directory / name

    return checkpoint_paths


def _seed_and_rerun(config: pytest.Config, nodeid: str, seed: int | None) -> tuple[int, str]:
    """The seed of a ``check_checkpointer`` call and the pytest command that repeats it: the
    given one; else ``--hypothesis-seed``; else, with the harness's profile in use, its seed
    (0 when it is derandomized); else a random one."""
    in_use = config.stash.get(_PROFILE_IN_USE, None)
    if seed is not None:
        return seed, in_use.reproduction(nodeid) if in_use else f"pytest '{nodeid}'"
    if in_use is not None:
        chosen = in_use.seed if in_use.seed is not None else 0
        if not isinstance(chosen, int):
            raise pytest.UsageError(f"{_SEED_OPTION}={chosen} must be an integer here")
        return chosen, in_use.reproduction(nodeid)
    option = config.getoption(_SEED_OPTION, None)
    try:
        chosen = int(option) if option is not None else random.SystemRandom().randrange(2**32)
    except ValueError:
        raise pytest.UsageError(
            f"{_SEED_OPTION}={option} must be an integer for check_checkpointer"
        ) from None
    return chosen, f"pytest '{nodeid}' {_SEED_OPTION}={chosen}"


@pytest.fixture
def check_checkpointer(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """:func:`harness.check_checkpointer` for this test: ``check_checkpointer(checkpointer,
    purpose="resume", **options)`` takes the same arguments (``models=``, ``optimizers=``,
    ``schedulers=`` for your own), returns the :class:`~harness.report.Report`, and fails the
    test with the report when an invariant does not hold.

    The seed is ``seed=`` when given, else ``--hypothesis-seed``, else the harness's profile's
    when one is in use (0 for the derandomized ``ci``), else a random one; every failure names
    the pytest command that reruns the test with it. ``max_examples`` is yours, else the
    harness's profile's when one is in use, else ``check_checkpointer``'s default.

    With ``--harness-write-corpus DIR`` each call also saves its corpus under
    ``DIR/<torch version>/<test>/<n>/`` (``n``: the call's number in the test); with
    ``--harness-read-corpus DIR`` it loads every torch version's corpus of the call and fails
    the test, after the report, with one line per load that is not identical.
    """
    config, nodeid = request.config, request.node.nodeid
    corpus = config.stash.get(_CORPUS, None)
    calls = 0

    def check(checkpointer: Any, purpose: str = "resume", **options: Any):
        from hypothesis import settings

        from harness.checkpointer import check_checkpointer as run

        nonlocal calls
        seed, rerun = _seed_and_rerun(config, nodeid, options.pop("seed", None))
        if "max_examples" not in options and config.stash.get(_PROFILE_IN_USE, None):
            options["max_examples"] = settings.default.max_examples
        report = run(checkpointer, purpose, seed=seed, reproduce=rerun, **options)
        failures = [] if report.ok else [report.to_markdown()]
        if corpus is not None:
            calls += 1
            models = options.get("models")
            failures += _across_versions(corpus, nodeid, calls, checkpointer, purpose, models)
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)
        return report

    return check


def _across_versions(
    corpus: _Corpus, nodeid: str, call: int, checkpointer: Any, purpose: str, models: Any
) -> list[str]:
    """Write this call's corpus, then read every torch version's, as ``corpus`` asks; the
    failure to report (one line per load that was not identical), if any. The corpus has a
    case of each :class:`~harness.user_models.UserModel` of the call's ``models`` (a
    strategy of them cannot be listed: it adds none)."""
    from harness.capabilities import torch_version
    from harness.user_models import UserModel
    from matrix.user_code import call_folder, read_call_corpora, write_call_corpus

    given = list(models) if isinstance(models, list | tuple) else [models]
    own = [model for model in given if isinstance(model, UserModel)]
    test = _directory_name(nodeid)
    if corpus.write is not None:
        write_call_corpus(checkpointer, purpose, str(corpus.write), test, call, own)
    if corpus.read is None:
        return []
    label = nodeid if call == 1 else f"{nodeid} (call {call})"
    records = read_call_corpora(checkpointer, str(corpus.read), test, call, label, own)
    if not records:
        return [
            f"{_READ_OPTION} {corpus.read}: no corpus of check_checkpointer call {call} of this "
            f"test (<torch version>/{test}/{call}/ there); write it with {_WRITE_OPTION} "
            "under each torch version"
        ]
    failed = [record for record in records if record.outcome != "identical"]
    if not failed:
        return []
    lines = [
        f"{len(failed)} of {len(records)} loads of this checkpointer's corpus under "
        f"{corpus.read} are not identical (writer -> reader case: outcome (message)):"
    ]
    for record in failed:
        line = f"  {record.writer} -> {record.reader} {record.artifact}: {record.outcome}"
        lines.append(f"{line} ({record.message})" if record.message else line)
    results = call_folder(str(corpus.read), torch_version(), test, call)
    lines.append(f"Records: {os.path.join(results, 'results.json')}")
    lines.append(f"Reproduce: `pytest '{nodeid}' {_READ_OPTION} {corpus.read}`")
    return ["\n".join(lines)]


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    corpus = config.stash.get(_CORPUS, None)
    # Under pytest-xdist only the controller merges, once every worker has written.
    if corpus is None or corpus.read is None or hasattr(config, "workerinput"):
        return
    from harness.releases import version_key
    from matrix.user_code import merge_user_records

    try:
        records = merge_user_records(str(corpus.read))
    except ValueError as error:
        config.stash[_MERGED] = f"{_READ_OPTION}: the records were not merged: {error}"
        return
    counts = Counter(record.outcome for record in records)
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
    versions = sorted({r.writer for r in records} | {r.reader for r in records}, key=version_key)
    config.stash[_MERGED] = (
        f"{len(records)} loads ({summary or 'none'}) across torch {', '.join(versions) or '-'}: "
        f"{corpus.read / 'results.json'}, {corpus.read / 'grid.md'}"
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    merged = config.stash.get(_MERGED, None)
    if merged is not None:
        terminalreporter.write_sep("-", "torch-persistence-harness")
        terminalreporter.write_line(merged)
