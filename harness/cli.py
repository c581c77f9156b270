"""The command line: ``python -m harness`` (also installed as ``torch-persistence-harness``)."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence

from harness import profiles

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="Property-based checks of PyTorch save/load promises on the installed torch.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser(
        "check",
        help="check every persistence invariant and write a report",
        description="Check the persistence invariants on random models, optimizers and "
        "checkpoints; print a per-invariant table and write report.json and report.md.",
    )
    check.add_argument(
        "--profile",
        choices=sorted(profiles.PROFILES),
        default=None,
        help=f"Hypothesis profile (default: ${profiles.ENVIRONMENT_VARIABLE}, else ci when $CI "
        "is set, else dev)",
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
        help="directory for report.json and report.md (default: reports)",
    )

    commands.add_parser("list", help="list the invariants and what each promises")

    checkpointer = commands.add_parser(
        "check-checkpointer",
        help="check your own checkpoint code",
        description="Check a checkpointer (an object, or a class built with no arguments, "
        "with save(state, path) and load(path, into, map_location=None)) against every "
        "invariant for its purpose. Exits 0 when all hold, 1 with the report otherwise.",
    )
    checkpointer.add_argument("target", metavar="FILE.py:NAME", help="where the checkpointer is")
    checkpointer.add_argument(
        "--purpose", choices=("resume", "inference"), default="resume", help="(default: resume)"
    )
    checkpointer.add_argument(
        "--max-examples", type=int, default=50, help="examples per invariant (default: 50)"
    )
    checkpointer.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    checkpointer.add_argument(
        "--out", default=None, help="also write report.json and report.md into this directory"
    )
    return parser


def _load_checkpointer(target: str):
    """The checkpointer named by ``FILE.py:NAME``; a class is instantiated with no arguments."""
    import importlib.util
    from pathlib import Path

    path_text, separator, name = target.rpartition(":")
    path = Path(path_text)
    if not separator or not name or path.suffix != ".py":
        raise SystemExit(f"expected FILE.py:NAME, got {target!r}")
    if not path.is_file():
        raise SystemExit(f"no such file: {path}")
    module_name = f"harness_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered, so that classes defined in the file can be pickled and found again.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise SystemExit(f"{path} defines no {name!r}")
    found = getattr(module, name)
    return found() if isinstance(found, type) else found


def _check_checkpointer(args: argparse.Namespace) -> int:
    from harness.checkpointer import check_checkpointer

    checkpointer = _load_checkpointer(args.target)
    command = (
        f"python -m harness check-checkpointer {args.target} --purpose {args.purpose} "
        f"--max-examples {args.max_examples} --seed {args.seed}"
    )
    print(f"checking {args.target} for {args.purpose}, {args.max_examples} examples per invariant")
    report = check_checkpointer(
        checkpointer,
        purpose=args.purpose,
        max_examples=args.max_examples,
        seed=args.seed,
        reproduce=command,
    )
    return _finish(report, args.out)


def _select(names: Sequence[str] | None):
    from harness.invariants import INVARIANTS

    if not names:
        return list(INVARIANTS)
    by_name = {invariant.name: invariant for invariant in INVARIANTS}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise SystemExit(f"unknown invariant(s): {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[name] for name in names]


def _check(args: argparse.Namespace) -> int:
    from harness.suite import run_suite

    profiles.register_profiles()
    profile, reason = profiles.choose_profile(args.profile)
    random_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    invariants = _select(args.invariant)

    def reproduce(invariant) -> str:
        return (
            f"python -m harness check --invariant {invariant.name} --profile {profile} "
            f"--seed {random_seed}"
        )

    print(f"checking {len(invariants)} invariant(s), Hypothesis profile '{profile}' ({reason})")
    report = run_suite(
        invariants,
        profile=profile,
        random_seed=random_seed,
        reproduce=reproduce,
        progress=lambda line: print(line, flush=True),
    )
    return _finish(report, args.out)


def _finish(report, out: str | None) -> int:
    """Print the table and every failure, write the report files, return the exit code."""
    print()
    print(report.table())
    findings = report.findings()
    if findings:
        print(f"\n{len(findings)} finding(s): places where torch breaks a promise users rely on")
        for name, text in findings:
            print(f"  [{name}] {text.removeprefix('finding: ')}")
    for failure in report.failures:
        print(f"\n{failure.name} FAILED:\n{failure.message}")
        if failure.minimal_example:
            print(f"minimal example: {failure.minimal_example}")
        print(f"reproduce: {failure.reproduction}")
    if out is not None:
        json_path, markdown_path = report.write(out)
        print(f"\nreport written to {json_path} and {markdown_path}")
    return 0 if report.ok else 1


def _list() -> int:
    from harness.invariants import INVARIANTS

    for invariant in INVARIANTS:
        print(f"{invariant.name}: {invariant.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "check-checkpointer":
        return _check_checkpointer(args)
    return _list()
