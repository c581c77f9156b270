"""The command line: ``python -m harness`` (also installed as ``torch-persistence-harness``)."""

from __future__ import annotations

import argparse
import random
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
    return parser


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
    print()
    print(report.table())
    for failure in report.failures:
        print(f"\n{failure.name} FAILED:\n{failure.message}")
        if failure.minimal_example:
            print(f"minimal example: {failure.minimal_example}")
        print(f"reproduce: {failure.reproduction}")
    json_path, markdown_path = report.write(args.out)
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
    return _list()
