"""The per-invariant report of a check run: data, terminal table, JSON and Markdown."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["InvariantResult", "Report"]


@dataclass
class InvariantResult:
    """How one invariant fared.

    Attributes:
        name: the invariant's name, e.g. ``"state_dict_round_trip"``.
        description: one sentence saying what it promises.
        examples: how many examples were tried (shrinking included).
        passed: whether every example held.
        seconds: wall time spent.
        message: the failure message, for a failed invariant.
        minimal_example: the shrunk failing example as plain data, for a failed invariant.
        reproduction: a command that reruns exactly this check.
        observations: facts seen along the way that are reported, not judged (e.g. "saving
            twice gives identical bytes"), each with the number of examples it was seen in.
    """

    name: str
    description: str
    examples: int
    passed: bool
    seconds: float
    message: str | None = None
    minimal_example: str | None = None
    reproduction: str | None = None
    observations: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    """The results of one run of the check suite, with where it ran."""

    torch_version: str
    profile: str
    results: list[InvariantResult]
    python_version: str = field(default_factory=platform.python_version)

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[InvariantResult]:
        """The invariants that did not hold."""
        return [result for result in self.results if not result.passed]

    def findings(self) -> list[tuple[str, str]]:
        """(invariant, text) for every observation marked as a finding."""
        return [
            (r.name, text)
            for r in self.results
            for text in sorted(r.observations)
            if text.startswith("finding:")
        ]

    def table(self) -> str:
        """A plain-text table: invariant, examples tried, passed/failed, time."""
        rows = [("invariant", "examples", "result", "time")]
        rows += [
            (r.name, str(r.examples), "passed" if r.passed else "FAILED", f"{r.seconds:.1f}s")
            for r in self.results
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(line.rstrip() for line in lines)

    def to_json(self) -> str:
        """The report as JSON (keys as in the dataclasses, plus ``ok``)."""
        data = asdict(self)
        data["ok"] = self.ok
        return json.dumps(data, indent=2)

    def to_markdown(self) -> str:
        """The report as a Markdown document: a summary table, then details per invariant."""
        verdict = "all invariants hold" if self.ok else f"{len(self.failures)} invariant(s) FAILED"
        lines = [
            "# Persistence check report",
            "",
            f"torch {self.torch_version}, Python {self.python_version}, "
            f"Hypothesis profile `{self.profile}`: **{verdict}**.",
            "",
            "| invariant | examples | result | time |",
            "|---|---:|---|---:|",
        ]
        lines += [
            f"| `{r.name}` | {r.examples} | {'passed' if r.passed else '**FAILED**'} "
            f"| {r.seconds:.1f} s |"
            for r in self.results
        ]
        for r in self.results:
            lines += ["", f"## `{r.name}`", "", r.description]
            if not r.passed:
                lines += ["", "```", r.message or "", "```"]
                if r.minimal_example:
                    lines += ["", f"Minimal example: `{r.minimal_example}`"]
                if r.reproduction:
                    lines += ["", f"Reproduce: `{r.reproduction}`"]
            if r.observations:
                lines += ["", "Observed:"]
                # Findings first, then the rest in order, so related lines stand together.
                ordered = sorted(r.observations, key=lambda t: (not t.startswith("finding"), t))
                lines += [f"- {text} ({r.observations[text]} examples)" for text in ordered]
        return "\n".join(lines) + "\n"

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` into ``directory``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = directory / "report.json", directory / "report.md"
        json_path.write_text(self.to_json())
        markdown_path.write_text(self.to_markdown())
        return json_path, markdown_path
