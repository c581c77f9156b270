"""The report of a check run: data, headline, terminal table, JSON and Markdown.

The JSON written by :meth:`Report.to_json` is documented field by field in
``docs/report-format.md`` (:data:`SCHEMA_VERSION` says which version of it).
"""

from __future__ import annotations

import json
import platform
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "Failure",
    "Finding",
    "InvariantResult",
    "Report",
    "ReportedFinding",
    "first_line",
    "strip_ansi",
]

#: The version of the report.json format; raised whenever a field changes meaning or goes.
SCHEMA_VERSION = 2

FINDING_PREFIX = "finding: "

# Terminal control sequences: CSI (colours, bold: "\x1b[1m"), OSC (titles, links) and the
# two-character escapes. torch writes some of its error messages in bold.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences, so that it reads the same in a file."""
    return _ANSI.sub("", text)


def first_line(error: BaseException) -> str:
    """``error`` in one line, as failures name it: its type and its message's first line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@dataclass(frozen=True)
class Finding:
    """A place where torch (or a library) breaks a promise users rely on, as a check yields it.

    A check may yield a plain string starting with ``"finding: "`` instead; a ``Finding``
    adds where the behaviour is tracked upstream.

    Attributes:
        text: what breaks, in one sentence (without the ``"finding: "`` prefix).
        upstream: the issue that tracks it, e.g. ``"pytorch/pytorch#75224"``, if known.
    """

    text: str
    upstream: str | None = None

    @property
    def observation(self) -> str:
        """The text as it is counted among the observations: ``"finding: ..."``."""
        return self.text if self.text.startswith(FINDING_PREFIX) else FINDING_PREFIX + self.text


@dataclass
class Failure:
    """One distinct way an invariant failed.

    Attributes:
        message: the error, its type first (at most 20 lines).
        minimal_example: the example Hypothesis shrank it to, as plain data (``repr``), or
            None when the failure came before any example (e.g. a strategy that cannot be
            built).
        reproduction: a command (or call) that reruns exactly this check.
    """

    message: str
    minimal_example: str | None = None
    reproduction: str | None = None


@dataclass
class InvariantResult:
    """How one invariant fared.

    Attributes:
        name: the invariant's name, e.g. ``"state_dict_round_trip"``.
        description: one sentence saying what it promises.
        examples: how many examples the check was run on while searching: the examples
            Hypothesis generated (and replayed from its database) that the check completed
            or failed on. Shrinking is not included, so for a passing run this is at most
            the profile's ``max_examples``.
        passed: whether every example held.
        seconds: wall time spent.
        failures: every distinct failure Hypothesis found (told apart by exception type
            and where it was raised), each with its own message and minimal example.
        shrinking: further calls of the check after a failure was found: shrinking it,
            explaining it and replaying the minimal examples (0 for a passing run).
        observations: facts seen along the way that are reported, not judged (e.g. "saving
            twice gives identical bytes"), each with the number of examples it was seen in.
            Those starting with ``"finding: "`` are findings.
        upstream: for findings whose upstream issue is known, observation text -> issue.
        warnings: the Python warnings raised during the invariant (captured, not printed),
            ``"Category: first line of the message"`` -> how many times.
        explicit: how many explicit examples (the known hazards of
            ``strategies.hazards``) were checked first, on top of ``examples``.
    """

    name: str
    description: str
    examples: int
    passed: bool
    seconds: float
    failures: list[Failure] = field(default_factory=list)
    shrinking: int = 0
    observations: dict[str, int] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    explicit: int = 0

    @property
    def message(self) -> str | None:
        """The first failure's message, for a failed invariant."""
        return self.failures[0].message if self.failures else None

    @property
    def minimal_example(self) -> str | None:
        """The first failure's minimal example, for a failed invariant."""
        return self.failures[0].minimal_example if self.failures else None

    @property
    def reproduction(self) -> str | None:
        """The command that reruns this check, for a failed invariant."""
        return self.failures[0].reproduction if self.failures else None

    @property
    def verdict(self) -> str:
        """``"passed"``, ``"FAILED"``, or ``"FAILED (n distinct)"``."""
        if self.passed:
            return "passed"
        return "FAILED" if len(self.failures) <= 1 else f"FAILED ({len(self.failures)} distinct)"


@dataclass(frozen=True)
class ReportedFinding:
    """A finding as the report lists it: which invariant saw it, how often, tracked where."""

    invariant: str
    text: str
    count: int
    upstream: str | None = None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _harness_version() -> str | None:
    try:
        return metadata.version("torch-persistence-harness")
    except metadata.PackageNotFoundError:
        return None


@dataclass
class Report:
    """The results of one run of the check suite, with where and how it ran.

    Attributes:
        torch_version: the installed torch, e.g. ``"2.13.0"``.
        profile: the Hypothesis profile the examples were drawn under.
        results: one :class:`InvariantResult` per invariant that ran to its end.
        profile_reason: why that profile was chosen (e.g. ``"because $CI is set"``).
        seed: the random seed of the draws, or None for a derandomized profile.
        excluded: what the caller left out of the run (invariants, model families, ...).
        interrupted: the invariant that was running when the run was interrupted
            (Ctrl-C), or None for a complete run.
        not_run: the invariants that did not run to their end because of the interruption.
        python_version: the Python the run used.
    """

    torch_version: str
    profile: str
    results: list[InvariantResult]
    profile_reason: str | None = None
    seed: int | None = None
    excluded: list[str] = field(default_factory=list)
    interrupted: str | None = None
    not_run: list[str] = field(default_factory=list)
    python_version: str = field(default_factory=platform.python_version)

    @property
    def ok(self) -> bool:
        """True when the run was complete and every invariant held."""
        return self.interrupted is None and all(result.passed for result in self.results)

    @property
    def failures(self) -> list[InvariantResult]:
        """The invariants that did not hold."""
        return [result for result in self.results if not result.passed]

    def findings(self) -> list[ReportedFinding]:
        """Every observation marked as a finding, invariant by invariant."""
        return [
            ReportedFinding(
                invariant=result.name,
                text=text.removeprefix(FINDING_PREFIX),
                count=result.observations[text],
                upstream=result.upstream.get(text),
            )
            for result in self.results
            for text in sorted(result.observations)
            if text.startswith(FINDING_PREFIX)
        ]

    def warnings(self) -> Counter[str]:
        """The warnings captured during the run, over all invariants."""
        total: Counter[str] = Counter()
        for result in self.results:
            total.update(result.warnings)
        return total

    def headline(self) -> str:
        """One line to read first: how many invariants held and failed, how many findings."""
        held = sum(result.passed for result in self.results)
        total = len(self.results) + len(self.not_run)
        findings = len(self.findings())
        counts = (
            f"{held} of {_plural(total, 'invariant')} held, {len(self.failures)} FAILED"
            if self.failures
            else f"{held} of {_plural(total, 'invariant')} held, 0 failed"
        )
        if self.interrupted is not None:
            counts = f"INTERRUPTED during {self.interrupted}: {counts}, {len(self.not_run)} not run"
        return f"{counts}; {_plural(findings, 'torch finding')}"

    def settings_line(self) -> str:
        """Where and how the run went: torch, Python, profile and why, seed, exclusions."""
        profile = f"profile {self.profile}"
        if self.profile_reason:
            profile += f" ({self.profile_reason})"
        seed = f"seed {self.seed}" if self.seed is not None else "derandomized (no seed)"
        parts = [f"torch {self.torch_version}", f"Python {self.python_version}", profile, seed]
        if self.excluded:
            parts.append(f"excluded: {', '.join(self.excluded)}")
        return ", ".join(parts)

    def table(self) -> str:
        """A plain-text table: invariant, examples tried, shrinking, result, time."""
        rows = [("invariant", "examples", "shrinking", "result", "time")]
        rows += [
            (r.name, str(r.examples), str(r.shrinking), r.verdict, f"{r.seconds:.1f}s")
            for r in self.results
        ]
        rows += [
            (name, "-", "-", "interrupted" if name == self.interrupted else "not run", "-")
            for name in self.not_run
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return strip_ansi("\n".join(line.rstrip() for line in lines))

    def to_data(self) -> dict[str, Any]:
        """The report as plain data, as :meth:`to_json` writes it (see docs/report-format.md)."""
        data = {
            "schema_version": SCHEMA_VERSION,
            "headline": self.headline(),
            "ok": self.ok,
            "interrupted": self.interrupted,
            "not_run": list(self.not_run),
            "torch_version": self.torch_version,
            "python_version": self.python_version,
            "harness_version": _harness_version(),
            "profile": self.profile,
            "profile_reason": self.profile_reason,
            "seed": self.seed,
            "excluded": list(self.excluded),
            "findings": [
                {
                    "invariant": finding.invariant,
                    "text": finding.text,
                    "count": finding.count,
                    "upstream": finding.upstream,
                }
                for finding in self.findings()
            ],
            "warnings": dict(self.warnings().most_common()),
            "results": [_result_data(result) for result in self.results],
        }
        return _without_ansi(data)

    def to_json(self) -> str:
        """The report as JSON (every field is described in docs/report-format.md)."""
        return json.dumps(self.to_data(), indent=2)

    def to_markdown(self) -> str:
        """The report as a Markdown document: the headline, a table, then each invariant."""
        lines = [
            "# Persistence check report",
            "",
            f"**{self.headline()}**.",
            "",
            self.settings_line() + ".",
            "",
            "| invariant | examples | shrinking | result | time |",
            "|---|---:|---:|---|---:|",
        ]
        lines += [
            f"| `{r.name}` | {r.examples} | {r.shrinking} | "
            f"{r.verdict if r.passed else f'**{r.verdict}**'} | {r.seconds:.1f} s |"
            for r in self.results
        ]
        lines += [
            f"| `{name}` | - | - | {'interrupted' if name == self.interrupted else 'not run'} | - |"
            for name in self.not_run
        ]
        findings = self.findings()
        if findings:
            lines += ["", "## Findings", ""]
            lines += [
                f"- `{finding.invariant}`: {finding.text} ({_plural(finding.count, 'example')})"
                + (f", upstream: {finding.upstream}" if finding.upstream else "")
                for finding in findings
            ]
        warnings = self.warnings()
        if warnings:
            lines += ["", "## Warnings captured", ""]
            lines += [f"- {text} ({count}x)" for text, count in warnings.most_common()]
        for r in self.results:
            lines += ["", f"## `{r.name}`", "", r.description]
            for number, failure in enumerate(r.failures, start=1):
                if len(r.failures) > 1:
                    lines += ["", f"### Failure {number} of {len(r.failures)}"]
                lines += ["", "```", failure.message, "```"]
                if failure.minimal_example:
                    lines += ["", f"Minimal example: `{failure.minimal_example}`"]
                if failure.reproduction:
                    lines += ["", f"Reproduce: `{failure.reproduction}`"]
            if r.observations:
                lines += ["", "Observed:"]
                # Findings first, then the rest in order, so related lines stand together.
                ordered = sorted(r.observations, key=lambda t: (not t.startswith("finding"), t))
                lines += [f"- {text} ({r.observations[text]} examples)" for text in ordered]
        return strip_ansi("\n".join(lines) + "\n")

    def write(self, directory: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.md`` into ``directory``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = directory / f"{stem}.json", directory / f"{stem}.md"
        json_path.write_text(self.to_json())
        markdown_path.write_text(self.to_markdown())
        return json_path, markdown_path


def _result_data(result: InvariantResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "description": result.description,
        "passed": result.passed,
        "examples": result.examples,
        "explicit": result.explicit,
        "shrinking": result.shrinking,
        "seconds": result.seconds,
        "failures": [
            {
                "message": failure.message,
                "minimal_example": failure.minimal_example,
                "reproduction": failure.reproduction,
            }
            for failure in result.failures
        ],
        # The first failure's, as before there was a list of them.
        "message": result.message,
        "minimal_example": result.minimal_example,
        "reproduction": result.reproduction,
        "observations": dict(result.observations),
        "warnings": dict(result.warnings),
    }


def _without_ansi(value: Any) -> Any:
    if isinstance(value, str):
        return strip_ansi(value)
    if isinstance(value, dict):
        return {_without_ansi(key): _without_ansi(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return [_without_ansi(item) for item in value]
    return value
