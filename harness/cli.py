"""The command line: ``python -m harness`` (also installed as ``torch-persistence-harness``).

Exit status: 0 when every invariant held, 1 when one failed, 2 for a usage error or a
checkpointer that could not be imported or built (one line on stderr saying what to do;
``--traceback`` adds the traceback), 130 when interrupted (Ctrl-C; the partial report is
still printed and written).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import random
import shlex
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from harness import profiles
from harness.report import first_line

__all__ = ["UsageError", "load_objects", "main"]

PROG = "python -m harness"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# The name a run restricted with --invariant writes its report under, beside the full one.
PARTIAL_STEM = "partial-report"


class UsageError(Exception):
    """A mistake in what the user asked for: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version_line() -> str:
    """This package's version and torch's, read from the installed metadata."""

    def installed(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    harness_version = installed("torch-persistence-harness") or "(not installed)"
    torch_version = installed("torch")
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    return f"torch-persistence-harness {harness_version}, torch {torch_version}"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        print(_version_line())
        parser.exit()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _argument(text: str) -> str:
    """``text`` when it is ``KEY=VALUE`` with ``KEY`` a Python name."""
    key, separator, _ = text.partition("=")
    if not separator or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a Python name, got {text!r}")
    return text


def _keyword_arguments(texts: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` texts as keyword arguments; each value is a Python literal when it is
    one (``3``, ``0.5``, ``True``, ``None``, ``'a'``, ``[1, 2]``), else the string itself."""
    arguments = {}
    for text in texts:
        key, _, raw = text.partition("=")
        try:
            arguments[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            arguments[key] = raw
    return arguments


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Property-based checks of PyTorch save/load promises on the installed torch.",
        epilog="Exit status: 0 every invariant held, 1 an invariant failed, 2 usage error or "
        "a checkpointer that cannot be imported or built, 130 interrupted.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the versions and exit")
    traceback_help = "on an error, also print its traceback"
    parser.add_argument("--traceback", action="store_true", help=traceback_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def traceback_option(command: argparse.ArgumentParser) -> None:
        # SUPPRESS: not given after the command, the value before it stands.
        command.add_argument(
            "--traceback", action="store_true", default=argparse.SUPPRESS, help=traceback_help
        )

    check = commands.add_parser(
        "check",
        help="check every persistence invariant and write a report",
        description="Check the persistence invariants on random models, optimizers and "
        "checkpoints; print a per-invariant table and write report.json and report.md. "
        f"A run restricted with --invariant writes {PARTIAL_STEM}.json and "
        f"{PARTIAL_STEM}.md instead, so that the full report stays.",
    )
    check.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help=f"Hypothesis profile: {', '.join(profiles.NAMES)} (default: "
        f"${profiles.ENVIRONMENT_VARIABLE}, else ci when $CI is set, else dev)",
    )
    check.add_argument(
        "--invariant",
        action="append",
        metavar="NAME",
        help="check only this invariant (repeatable; default: all; see 'list')",
    )
    check.add_argument(
        "--seed", type=int, default=None, help="seed for a randomized profile (default: random)"
    )
    check.add_argument(
        "--out",
        default="reports",
        help="directory for the report files (default: reports)",
    )
    check.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="check in N worker processes, each invariant whole in one of them: the same "
        "report as one process gives (default: the number of cores; 1: in this process)",
    )
    traceback_option(check)

    commands.add_parser("list", help="list every invariant and what it promises")

    checkpointer = commands.add_parser(
        "check-checkpointer",
        help="check your own checkpoint code",
        description="Check a checkpointer (an object with save(state, path) and "
        "load(path, into, map_location=None), a class built with the --arg values, or a "
        "function called with them that returns one) against every invariant for its "
        "purpose. Exits 0 when all hold, 1 with the report otherwise.",
    )
    checkpointer.add_argument(
        "target",
        metavar="FILE.py:NAME",
        help="the file (its folder is put on sys.path) and the class, instance or factory in it",
    )
    checkpointer.add_argument(
        "--arg",
        action="append",
        type=_argument,
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the class or factory (repeatable; VALUE is read as a "
        "Python literal when it is one, else as a string)",
    )
    checkpointer.add_argument(
        "--purpose", choices=("resume", "inference"), default="resume", help="(default: resume)"
    )
    checkpointer.add_argument(
        "--max-examples",
        type=_positive_int,
        default=50,
        metavar="N",
        help="examples per invariant (default: 50)",
    )
    checkpointer.add_argument(
        "--seed", type=int, default=None, help="seed of the draws (default: random, printed)"
    )
    checkpointer.add_argument(
        "--invariant",
        action="append",
        metavar="NAME",
        help="check only this invariant (repeatable; default: all for the purpose; see 'list')",
    )
    checkpointer.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NAME",
        help="leave out an invariant, a model family, or an optimizer or scheduler class "
        "(repeatable; listed in the report)",
    )
    checkpointer.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="how long one save or load may take before it counts as a hang "
        "(default: the harness's, 60)",
    )
    checkpointer.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="FILE.py:NAME",
        help="check on your models instead of generated ones: NAME is a harness.UserModel, a "
        "Hypothesis strategy of them, or a list of either (repeatable)",
    )
    checkpointer.add_argument(
        "--optimizers",
        action="append",
        default=[],
        metavar="FILE.py:NAME",
        help="check with your optimizers: NAME is a function of the model (or a torch.optim "
        "class or functools.partial of one, given model.parameters()) returning an optimizer, a "
        "strategy of them, or a list (repeatable; default: every optimizer class that fits)",
    )
    checkpointer.add_argument(
        "--schedulers",
        action="append",
        default=[],
        metavar="FILE.py:NAME",
        help="check with your learning-rate schedulers: NAME is a function of the optimizer "
        "returning a scheduler, a strategy of them, or a list; 'none' for no scheduler "
        "(repeatable; default: a generated scheduler or none)",
    )
    checkpointer.add_argument(
        "--out", default=None, help="also write report.json and report.md into this directory"
    )
    traceback_option(checkpointer)

    distributed = commands.add_parser(
        "check-distributed",
        help="check a distributed checkpointer across world sizes",
        description="Check a checkpointer (save(state, path) and load(path, into, "
        "map_location=None), called on every rank) on real gloo process groups: saved at "
        "one world size, loaded at another. FILE.py is imported in every rank.",
        epilog="Exit status: 0 every invariant held, 1 an invariant failed, 2 usage error.",
    )
    distributed.add_argument("target", metavar="FILE.py:NAME", help="the file and the class in it")
    distributed.add_argument(
        "--world-sizes",
        type=_world_sizes,
        default=None,
        metavar="S:L,...",
        help="(saving, loading) world sizes, e.g. 2:3,3:1 (default: "
        "harness.distributed.DEFAULT_WORLD_SIZES, 2:3,3:1,2:2,4:2)",
    )
    distributed.add_argument(
        "--max-examples", type=_positive_int, default=5, metavar="N", help="(default: 5)"
    )
    distributed.add_argument("--seed", type=int, default=None, help="(default: random, printed)")
    distributed.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds one process group may take (default: harness.distributed.DEFAULT_TIMEOUT)",
    )
    distributed.add_argument(
        "--full", action="store_true", help="also attack, damage and delete every written file"
    )
    distributed.add_argument("--out", default=None, metavar="DIR", help="write the report there")
    traceback_option(distributed)

    inspect_command = commands.add_parser(
        "inspect",
        help="say what a checkpoint file or folder is, without loading it",
        description="Say what a checkpoint is: its format, the torch version that wrote it "
        "where recorded, its tensors, the globals its pickles need (never run), whether "
        "torch.load(weights_only=True) loads it on the installed torch (predicted, and "
        "checked in a forked child) and which hostile-file classes it matches.",
        epilog="Exit status: 0 inspected, 1 with --require-weights-only when weights_only "
        "would refuse it or it matches a hostile class, 2 a path that is not a checkpoint.",
    )
    inspect_command.add_argument("path", metavar="PATH", help="a checkpoint file, or a DCP folder")
    inspect_command.add_argument(
        "--json", action="store_true", help="print JSON (see docs/formats.md)"
    )
    inspect_command.add_argument(
        "--require-weights-only",
        action="store_true",
        help="exit 1 unless weights_only=True loads it and it matches no hostile class",
    )
    traceback_option(inspect_command)
    return parser


def _world_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``--world-sizes 2:3,3:1`` as pairs; their range is the check's to judge."""
    try:
        pairs = tuple(
            (int(saving), int(loading))
            for saving, _, loading in (item.partition(":") for item in text.split(","))
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected SAVING:LOADING pairs of world sizes separated by commas (e.g. 2:3,3:1), "
            f"got {text!r}"
        ) from None
    return pairs


_OUTPUT_LOCK = threading.Lock()


def _say(line: str) -> None:
    """Print a progress line whole (they come from the runner's thread and its heartbeat)."""
    with _OUTPUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _use_own_packages() -> None:
    """Import this project's ``strategies`` from beside ``harness``, whatever ``sys.path`` says.

    ``python -m`` puts the working directory first on ``sys.path``, and a user's file may
    sit beside a module of its own called ``strategies``: either would otherwise be imported
    in place of this project's package the first time an invariant needs it.
    """
    if "strategies" in sys.modules:
        return
    package = Path(__file__).resolve().parent.parent / "strategies"
    init = package / "__init__.py"
    if not init.is_file():
        return
    spec = importlib.util.spec_from_file_location(
        "strategies", init, submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["strategies"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["strategies"]
        raise


def _import_user_file(path: Path):
    """Import the user's file as a module, its folder on ``sys.path`` after ours."""
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)
    module_name = f"harness_user_{path.stem}"
    imported = sys.modules.get(module_name)
    known = getattr(imported, "__file__", None)
    if known is not None and Path(known).resolve() == path.resolve():
        return imported  # named by two options: one module, so its classes are the same
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered, so that classes defined in the file can be pickled and found again.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as error:
        del sys.modules[module_name]
        if isinstance(error, KeyboardInterrupt):
            raise
        raise UsageError(f"could not import {path}: {first_line(error)}; fix the file") from error
    return module


def _is_checkpointer(value: Any) -> bool:
    return all(callable(getattr(value, method, None)) for method in ("save", "load"))


def _load_reference(target: str, example: str, option: str = "") -> tuple[Path, str, Any]:
    """The file, the name and the object ``FILE.py:NAME`` names."""
    path_text, separator, name = target.rpartition(":")
    path = Path(path_text)
    if not separator or not name or path.suffix != ".py":
        raise UsageError(f"{option}expected FILE.py:NAME (e.g. {example}), got {target!r}")
    if not path.is_file():
        raise UsageError(f"{option}no such file: {path}")
    module = _import_user_file(path)
    if not hasattr(module, name):
        defined = sorted(
            key
            for key, value in vars(module).items()
            if not key.startswith("_") and getattr(value, "__module__", None) == module.__name__
        )
        hint = f" (it defines: {', '.join(defined)})" if defined else ""
        raise UsageError(f"{option}{path} defines no {name!r}{hint}")
    return path, name, getattr(module, name)


def load_objects(target: str, example: str, option: str) -> tuple[str, list[Any]]:
    """The name ``FILE.py:NAME`` gives and the objects it names: the items of a list or
    tuple, else the one object. :class:`UsageError` (the message starting with ``option``)
    where the reference is not of that form or names nothing."""
    _, name, value = _load_reference(target, example, option=option)
    return name, list(value) if isinstance(value, list | tuple) else [value]


def _load_checkpointer(target: str, arguments: dict[str, Any]):
    """The checkpointer ``FILE.py:NAME`` names: an instance, or a class or a factory function
    called with ``arguments``."""
    path, name, found = _load_reference(target, "my_checkpoints.py:MyCheckpointer")
    if not isinstance(found, type) and _is_checkpointer(found):
        if arguments:
            raise UsageError(
                f"{name} in {path} is an instance; --arg applies to a class or a factory function"
            )
        checkpointer = found
    elif callable(found):
        checkpointer = _build(found, name, arguments)
    else:
        raise UsageError(
            f"{name} in {path} is a {type(found).__name__}, not a checkpointer, a class or a "
            "factory function"
        )
    if not _is_checkpointer(checkpointer):
        missing = [m for m in ("save", "load") if not callable(getattr(checkpointer, m, None))]
        raise UsageError(
            f"{name} in {path} has no {' or '.join(missing)} method: a checkpointer needs "
            "save(state, path) and load(path, into, map_location=None)"
        )
    return checkpointer


#: The options naming the user's models, optimizers and schedulers, and an example of each.
_USER_PARTS = {
    "models": "my_models.py:MODELS",
    "optimizers": "my_training.py:make_optimizer",
    "schedulers": "my_training.py:make_scheduler",
}


def _user_parts(args: argparse.Namespace) -> dict[str, list[Any]]:
    """What ``--models``, ``--optimizers`` and ``--schedulers`` name, per option given: the
    objects, a list named by one reference contributing its items (``--schedulers none``
    stands for no scheduler). What the objects are is checked by ``check_checkpointer``."""
    parts = {}
    for option, example in _USER_PARTS.items():
        found: list[Any] = []
        for target in getattr(args, option):
            if option == "schedulers" and target == "none":
                found.append(None)
                continue
            found += load_objects(target, example, option=f"--{option}: ")[1]
        if getattr(args, option):
            parts[option] = found
    return parts


def _build(factory: Callable[..., Any], name: str, arguments: dict[str, Any]) -> Any:
    """``factory(**arguments)``, with the missing or unexpected arguments named first."""
    call = f"{name}({', '.join(f'{key}={value!r}' for key, value in arguments.items())})"
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**arguments)
        except TypeError as error:
            raise UsageError(
                f"cannot call {call}: {error}; give keyword arguments with --arg KEY=VALUE"
            ) from error
    try:
        return factory(**arguments)
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        raise UsageError(f"{call} raised {first_line(error)}") from error


def _validated(names: Sequence[str] | None, known: Sequence[str], where: str) -> None:
    unknown = [name for name in names or () if name not in known]
    if unknown:
        raise UsageError(
            f"unknown invariant(s) {', '.join(unknown)} for {where}; known: {', '.join(known)}"
        )


def _draw_seed() -> int:
    return random.SystemRandom().randrange(2**32)


def _check_checkpointer(args: argparse.Namespace) -> int:
    arguments = _keyword_arguments(args.arg)
    checkpointer = _load_checkpointer(args.target, arguments)
    parts = _user_parts(args)

    from hypothesis.errors import InvalidArgument

    from harness.checkpointer import CHECKPOINTER_INVARIANTS, DEFAULT_TIMEOUT, check_checkpointer

    _validated(
        args.invariant,
        [record.name for record in CHECKPOINTER_INVARIANTS if args.purpose in record.purposes],
        f"check-checkpointer --purpose {args.purpose}",
    )
    seed = args.seed if args.seed is not None else _draw_seed()
    timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    # The command that reruns this check: the same checkpointer, arguments and options.
    command = ["check-checkpointer", args.target]
    for text in args.arg:
        command += ["--arg", text]
    command += ["--purpose", args.purpose, "--max-examples", str(args.max_examples)]
    command += ["--seed", str(seed)]
    for name in args.exclude:
        command += ["--exclude", name]
    for option in _USER_PARTS:
        for target in getattr(args, option):
            command += [f"--{option}", target]
    command += ["--timeout", f"{timeout:g}"]
    base = f"{PROG} {shlex.join(command)}"
    examples = "1 example" if args.max_examples == 1 else f"{args.max_examples} examples"
    _say(
        f"checking {args.target} for {args.purpose}, {examples} per invariant, seed {seed} "
        f"(rerun with --seed {seed})"
    )
    try:
        report = check_checkpointer(
            checkpointer,
            purpose=args.purpose,
            max_examples=args.max_examples,
            seed=seed,
            reproduce=base,
            exclude=args.exclude,
            invariants=args.invariant,
            timeout=timeout,
            progress=_say,
            **parts,
        )
    except (InvalidArgument, ValueError) as error:
        raise UsageError(str(error)) from error
    # Each failure reruns exactly its own invariant.
    for result in report.failures:
        for failure in result.failures:
            failure.reproduction = f"{base} --invariant {shlex.quote(result.name)}"
    return _finish(report, args.out, stem="report")


def _check_distributed(args: argparse.Namespace) -> int:
    from hypothesis.errors import InvalidArgument

    from harness.distributed import (
        DEFAULT_TIMEOUT,
        DEFAULT_WORLD_SIZES,
        check_distributed_checkpointer,
    )

    checkpointer = _load_checkpointer(args.target, {})
    seed = args.seed if args.seed is not None else _draw_seed()
    world_sizes = args.world_sizes or DEFAULT_WORLD_SIZES
    timeout = args.timeout or DEFAULT_TIMEOUT
    sizes = ",".join(f"{saving}:{loading}" for saving, loading in world_sizes)
    command = ["check-distributed", args.target, "--world-sizes", sizes]
    command += ["--max-examples", str(args.max_examples), "--seed", str(seed)]
    command += ["--timeout", f"{timeout:g}"] + (["--full"] if args.full else [])
    _say(f"checking {args.target} at world sizes {sizes}, seed {seed} (rerun with --seed {seed})")
    try:
        report = check_distributed_checkpointer(
            checkpointer,
            world_sizes=world_sizes,
            max_examples=args.max_examples,
            seed=seed,
            timeout=timeout,
            full=args.full,
            reproduce=f"{PROG} {shlex.join(command)}",
            progress=_say,
            user_file=str(Path(args.target.rpartition(":")[0]).resolve()),
        )
    except (InvalidArgument, ValueError) as error:
        raise UsageError(str(error)) from error
    return _finish(report, args.out, stem="distributed-report")


def _inspect(args: argparse.Namespace) -> int:
    import json

    from harness.inspect import NotACheckpoint, acceptable, inspect_checkpoint

    try:
        inspection = inspect_checkpoint(args.path)
    except NotACheckpoint as error:
        raise UsageError(str(error)) from error
    if args.json:
        print(json.dumps(inspection.to_json(), indent=2))
    else:
        print(inspection.table())
    if args.require_weights_only and not acceptable(inspection):
        return EXIT_FAILED
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        profile, reason = profiles.choose_profile(args.profile, option="--profile")
    except ValueError as error:
        raise UsageError(str(error)) from error

    from hypothesis import settings

    from harness import sandbox
    from harness.invariants import INVARIANTS
    from harness.safety import safety_invariants
    from harness.suite import default_jobs, run_suite

    by_name = {invariant.name: invariant for invariant in INVARIANTS}
    _validated(args.invariant, list(by_name), "check")
    invariants = [by_name[name] for name in args.invariant] if args.invariant else list(INVARIANTS)
    jobs = args.jobs or default_jobs()
    import torch

    # Every example of the main job is small: a second intra-op thread only adds wake-ups
    # (measured in docs/benchmarks.md, "Torch threads"); the workers have one each too.
    torch.set_num_threads(1)
    sandboxed = {invariant.name for invariant in invariants} & {i.name for i in safety_invariants()}
    if sandboxed and jobs == 1:
        sandbox.start()  # the sandbox's server imports torch while the first invariants run
    profiles.register_profiles()
    randomized = not settings.get_profile(profile).derandomize
    random_seed = (args.seed if args.seed is not None else _draw_seed()) if randomized else None

    def reproduce(invariant) -> str:
        command = ["check", "--invariant", invariant.name, "--profile", profile]
        if random_seed is not None:
            command += ["--seed", str(random_seed)]
        return f"{PROG} {shlex.join(command)}"

    seed_text = (
        f"seed {random_seed} (rerun with --seed {random_seed})"
        if random_seed is not None
        else "derandomized"
    )
    _say(
        f"checking {len(invariants)} invariant(s), Hypothesis profile '{profile}' ({reason}), "
        f"{seed_text}"
    )
    report = run_suite(
        invariants,
        profile=profile,
        profile_reason=reason,
        random_seed=random_seed,
        reproduce=reproduce,
        progress=_say,
        jobs=jobs,
        # Each worker its own server, started before its first invariant.
        worker_start=sandbox.start if sandboxed else None,
    )
    # A run of some invariants only is written beside the full report, not over it.
    return _finish(report, args.out, stem=PARTIAL_STEM if args.invariant else "report")


def _summary(report) -> str:
    """What is printed after the run: the table, findings, warnings and every failure."""
    from harness.report import strip_ansi

    lines = ["", report.settings_line(), "", report.table()]
    findings = report.findings()
    if findings:
        lines += [
            "",
            f"{len(findings)} finding(s): places where torch breaks a promise users rely on",
        ]
        lines += [
            f"  [{finding.invariant}] {finding.text}"
            + (f" (upstream: {finding.upstream})" if finding.upstream else "")
            for finding in findings
        ]
    warnings = report.warnings()
    if warnings:
        shown = 5
        lines += [
            "",
            f"{sum(warnings.values())} warning(s) captured while checking (not printed as "
            "they came; all in the report):",
        ]
        lines += [f"  {count}x {text}" for text, count in warnings.most_common(shown)]
        if len(warnings) > shown:
            lines.append(f"  ... and {len(warnings) - shown} more kinds")
    for result in report.failures:
        for number, failure in enumerate(result.failures, start=1):
            which = f" ({number} of {len(result.failures)})" if len(result.failures) > 1 else ""
            lines += ["", f"{result.name} FAILED{which}:", failure.message]
            if failure.minimal_example:
                lines.append(f"minimal example: {failure.minimal_example}")
            if failure.reproduction:
                lines.append(f"reproduce: {failure.reproduction}")
    return strip_ansi("\n".join(lines))


def _finish(report, out: str | None, *, stem: str) -> int:
    """Print the summary, write the report files, print the headline; the exit status."""
    print(_summary(report))
    if out is not None:
        json_path, markdown_path = report.write(out, stem=stem)
        print(f"\nreport written to {json_path} and {markdown_path}")
    print(f"\n{report.headline()}", flush=True)
    if report.interrupted is not None:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_FAILED


def _one_line_description(text: str) -> str:
    return " ".join(text.split())


def _list() -> int:
    from harness.checkpointer import CHECKPOINTER_INVARIANTS
    from harness.invariants import INVARIANTS

    print(f"{PROG} check:")
    for invariant in INVARIANTS:
        print(f"  {invariant.name}: {_one_line_description(invariant.description)}")
    print(f"{PROG} check-checkpointer (purposes in brackets):")
    for record in CHECKPOINTER_INVARIANTS:
        purposes = ", ".join(record.purposes)
        print(f"  {record.name} [{purposes}]: {_one_line_description(record.description)}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    try:
        _use_own_packages()
        if args.command == "check":
            return _check(args)
        if args.command == "check-checkpointer":
            return _check_checkpointer(args)
        if args.command == "check-distributed":
            return _check_distributed(args)
        if args.command == "inspect":
            return _inspect(args)
        return _list()
    except UsageError as error:
        from harness.report import strip_ansi

        if args.traceback:
            traceback.print_exception(error.__cause__ or error)
        line = strip_ansi(" ".join(str(error).split()))
        print(f"{PROG} {args.command}: error: {line}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Outside an invariant (importing, writing): nothing to report.
        print(f"\n{PROG} {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        sys.stdout.flush()
