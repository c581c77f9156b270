"""The catalog of what the project knows, written from its registries.

``python -m harness.catalog`` (from the repository root) writes ``docs/catalog.md``: one
table per registry, each row one record, in registry order:

- model families: :data:`strategies.model_specs.FAMILY_REGISTRY`;
- attack classes: :data:`strategies.payloads.ATTACK_REGISTRY`;
- optimizers: :data:`harness.capabilities.OPTIMIZER_REGISTRY`, with what
  :mod:`strategies.optim` draws for each;
- schedulers: :data:`strategies.optim.SCHEDULER_REGISTRY`;
- refactorings: :data:`strategies.refactorings.REFACTORING_REGISTRY`;
- known hazards: :data:`strategies.hazards.HAZARD_REGISTRY`;
- kinds of written files and damages: :data:`harness.files.FILE_KINDS`,
  :data:`harness.files.SAFETENSORS_ATTACKS`, :data:`harness.files.DAMAGES`.

``--out PATH`` writes another file; ``--check`` writes nothing and exits 1 when the file
differs from what would be written. ``tests/test_catalog.py`` fails when the committed file
is stale, so the tables cannot drift from the code. Nothing in them depends on the installed
torch: they are the records, not what a probe finds (which classes exist, which flags run).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence

from harness.capabilities import OPTIMIZER_FLAGS, OPTIMIZER_REGISTRY, OptimizerConstraints
from harness.files import DAMAGES, FILE_KINDS, SAFETENSORS_ATTACKS
from strategies.hazards import HAZARD_REGISTRY
from strategies.model_specs import FAMILY_REGISTRY, Family, layer_kind
from strategies.optim import (
    SCHEDULER_REGISTRY,
    STEPS_AT_LEAST,
    Scheduler,
    drawn_hyperparameters,
)
from strategies.payloads import ATTACK_GROUPS, ATTACK_REGISTRY, CARRIERS, Attack
from strategies.refactorings import REFACTORING_REGISTRY, Refactoring

__all__ = ["DEFAULT_PATH", "catalog", "main"]

#: Where ``python -m harness.catalog`` writes, relative to the repository root.
DEFAULT_PATH = "docs/catalog.md"

# Each attack group, in a table cell and counted in prose.
_GROUP_NAMES = {"code": "code", "memory": "memory", "bomb": "allocation bomb"}
_GROUPS_COUNTED = {"code": "code payloads", "memory": "memory attacks", "bomb": "allocation bombs"}


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def _code(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _family_notes(record: Family) -> str:
    notes = []
    if record.wraps:
        notes.append("holds a body of layers")
    if record.has_dropout:
        notes.append("dropout in train mode (`dropout` option)")
    if record.sparse_gradients:
        notes.append("sparse gradients (`sparse` option)")
    if record.lazy:
        notes.append("may be left uninitialized (`initialized` option)")
    if record.casts:
        notes.append("parameters in another dtype (`dtype` option)")
    if not record.whole_model_picklable:
        notes.append("no whole-model pickle: state_dict only")
    first = [
        f"{what} {value}"
        for what, value in (
            ("batch", record.min_batch),
            ("channels", record.min_channels),
            ("first side", record.min_first_side),
        )
        if value > 1
    ]
    if first:
        notes.append("as the first layer, at least " + ", ".join(first))
    if record.needs:
        notes.append(f"needs {record.needs}")
    return "; ".join(notes) or "-"


def _families() -> list[str]:
    flatten = layer_kind("flatten")
    rows = [
        (f"`{r.name}`", r.builds, _code(r.input_kinds()), _family_notes(r)) for r in FAMILY_REGISTRY
    ]
    return [
        "## Model families",
        "",
        f"{len(FAMILY_REGISTRY)} families, one `Family` record each in "
        "`strategies.model_specs.FAMILY_REGISTRY`, in the order the "
        "strategies prefer them (a failure shrinks toward the first family that shows it). "
        "*Starts* lists the input kinds a model may begin with a layer of the family; later "
        "layers take whatever the layer before them gives, where the family accepts it. "
        f"Between two families, `{flatten.name}` ({flatten.builds}) may turn a sequence or a "
        "grid into vectors; it belongs to no family.",
        "",
        *_table(("family", "builds", "starts", "notes"), rows),
    ]


def _attack_notes(record: Attack) -> str:
    if record.corrupts_memory:
        return f"{record.harm}; loaded in a child process of its own"
    return record.harm


def _attacks() -> list[str]:
    counts = {group: sum(r.group == group for r in ATTACK_REGISTRY) for group in ATTACK_GROUPS}
    legacy = [r.name for r in ATTACK_REGISTRY if CARRIERS[1] in r.carriers]
    files = sum(len(r.carriers) for r in ATTACK_REGISTRY)
    groups = ", ".join(f"{counts[group]} {_GROUPS_COUNTED[group]}" for group in ATTACK_GROUPS)
    rows = [
        (
            f"`{r.name}`",
            _GROUP_NAMES[r.group],
            ", ".join(r.carriers),
            r.description,
            _attack_notes(r),
            r.advisory or "-",
        )
        for r in ATTACK_REGISTRY
    ]
    return [
        "## Attack classes",
        "",
        f"{len(ATTACK_REGISTRY)} classes, one `Attack` record each in "
        "`strategies.payloads.ATTACK_REGISTRY`, in the order the strategies draw them: "
        f"{groups}. A code payload's only effect is to create a "
        "sentinel file; memory attacks and allocation bombs create none: loading them at all "
        f"is what goes wrong. The {len(legacy)} pickle-level classes come in both carriers "
        "(`zip`, the format torch writes by default, and `legacy`, the non-zip format of "
        "`_use_new_zipfile_serialization=False`); the others are their own file: "
        f"{files} hostile files in all. *If accepted* is what a loader that accepts the file "
        "has let happen (`HostilePayload.harm`).",
        "",
        *_table(("attack", "group", "carriers", "the file", "if accepted", "stands for"), rows),
    ]


def _constraints(record: OptimizerConstraints) -> str:
    notes = []
    if record.sparse_gradients_only:
        notes.append(
            "trains only parameters with sparse gradients, and is the only kind given them"
        )
    if record.matrix_parameters_only:
        notes.append("trains only 2-d parameters")
    if record.needs_closure:
        notes.append("`step` needs a closure (never paired with a scheduler)")
    if record.single_group:
        notes.append("one parameter group")
    return "; ".join(notes) or "-"


def _state(record: OptimizerConstraints) -> str:
    notes = []
    if record.stateless_without:
        notes.append(f"none without `{record.stateless_without}`")
    if record.own_dtype_state:
        notes.append(f"{_code(record.own_dtype_state)} can differ from the parameter's dtype")
    return "; ".join(notes) or "-"


def _choices(name: str, choices: Iterable[object], conditional: bool) -> str:
    return f"`{name}` {', '.join(map(repr, choices))}{' (where it applies)' if conditional else ''}"


def _hyperparameters(name: str) -> tuple[str, str]:
    drawn = drawn_hyperparameters(name)
    if drawn is None:
        return "fractions of the default", "-"
    (_, learning_rates, _), *others = drawn
    described = [_choices(option, choices, when) for option, choices, when in others]
    return ", ".join(map(repr, learning_rates)), "; ".join(described) or "-"


def _optimizers() -> list[str]:
    rows = [
        (f"`{r.name}`", _constraints(r), _state(r), *_hyperparameters(r.name))
        for r in OPTIMIZER_REGISTRY
    ]
    return [
        "## Optimizers",
        "",
        f"{len(OPTIMIZER_REGISTRY)} optimizer classes, one `OptimizerConstraints` record each "
        "in `harness.capabilities.OPTIMIZER_REGISTRY`, in the order the strategies prefer "
        "them; the learning rates and hyperparameters are what `strategies.optim` draws for "
        "each parameter group (choices simplest first; "
        "groups never share a learning rate). A torch version lacking a class skips it; a "
        "class of a newer torch that is not recorded is drawn without constraints. Flags "
        f"({_code(OPTIMIZER_FLAGS)}) are drawn where they run on CPU on the installed torch "
        "(`harness.capabilities.optimizer_flags_that_run`). *State*: per-parameter state "
        "worth knowing about; `Optimizer.load_state_dict` casts every floating-point entry "
        "but `step` to its parameter's dtype (pytorch/pytorch#43706).",
        "",
        *_table(("optimizer", "constraints", "state", "learning rates", "hyperparameters"), rows),
    ]


def _scheduler_constraints(record: Scheduler) -> str:
    notes = []
    if record.children[1]:
        fewest, most = record.children
        notes.append(f"holds {fewest} to {most} chainable schedulers, built first")
    if record.chainable:
        notes.append("chainable")
    if record.needs_metric:
        notes.append("`step` is given the metric")
    if record.cycles_momentum:
        notes.append(
            "cycles momentum (or betas) with `cycle_momentum`, turned off where a group has none"
        )
    if record.step_limit:
        notes.append(f"steps at most `{record.step_limit}` times")
    return "; ".join(notes) or "-"


def _scheduler_arguments(record: Scheduler) -> str:
    described = [
        _choices(option.name, option.choices, option.when is not None) for option in record.options
    ]
    if record.milestone_gaps[1]:
        fewest, most = record.milestone_gaps
        described.append(f"`milestones` between its children, {fewest} to {most} steps apart")
    return "; ".join(described) or "-"


def _schedulers() -> list[str]:
    rows = [
        (f"`{r.name}`", _scheduler_constraints(r), r.state or "-", _scheduler_arguments(r))
        for r in SCHEDULER_REGISTRY
    ]
    return [
        "## Schedulers",
        "",
        f"{len(SCHEDULER_REGISTRY)} learning-rate scheduler classes, one `Scheduler` record "
        "each in `strategies.optim.SCHEDULER_REGISTRY`, in the order the strategies prefer "
        "them (a failure shrinks toward the first that shows it): what `strategies.optim` "
        "draws for its arguments (choices simplest first), how it is built and stepped, and "
        "what its state holds that `torch.save` or `torch.load(weights_only=True)` refuses on "
        "some torch. A *chainable* scheduler may be held by those that hold others. Every "
        f"drawn scheduler can be stepped at least {STEPS_AT_LEAST} times. A torch version "
        "lacking a class skips it; a class of a newer torch that is not recorded is drawn "
        "without arguments.",
        "",
        *_table(("scheduler", "constraints", "state", "arguments"), rows),
    ]


def _refactoring_row(record: Refactoring) -> tuple[str, ...]:
    return (
        f"`{record.name}`",
        record.description,
        "kept" if record.keeps_parameter_names else "changed",
        "same" if record.keeps_forward else "changed",
        record.pickle_outcome,
    )


def _refactorings() -> list[str]:
    return [
        "## Refactorings",
        "",
        f"{len(REFACTORING_REGISTRY)} refactorings, one `Refactoring` record each in "
        "`strategies.refactorings.REFACTORING_REGISTRY`, simplest first: what "
        "`whole_model_refactoring` does to a model's code after saving it whole and as a "
        "state_dict. *Whole-model pickle* is what loading the pickle does "
        "afterwards, which follows from how pickle restores an object (by module and class "
        "name, `__dict__` restored, `__init__` not called).",
        "",
        *_table(
            ("refactoring", "what changes", "state_dict names", "forward", "whole-model pickle"),
            map(_refactoring_row, REFACTORING_REGISTRY),
        ),
    ]


def _hazards() -> list[str]:
    # Hazards with the same defect (one per optimizer and dtype) share a row.
    grouped: dict[tuple[str, tuple[str, ...], str], list[str]] = {}
    for record in HAZARD_REGISTRY:
        grouped.setdefault((record.defect, record.purposes, record.needs), []).append(record.name)
    rows = [
        (_code(names), ", ".join(purposes), defect, needs or "-")
        for (defect, purposes, needs), names in grouped.items()
    ]
    return [
        "## Known hazards",
        "",
        f"{len(HAZARD_REGISTRY)} hazards, one `Hazard` record each in "
        "`strategies.hazards.HAZARD_REGISTRY`: cases that real checkpoint code gets wrong, "
        "checked first by `check_checkpointer` at every seed and budget (where the installed "
        "torch has what the case needs), before the random draws. `exclude=` takes their "
        "names.",
        "",
        *_table(("hazard", "purposes", "what checkpoint code gets wrong", "also needs"), rows),
    ]


def _file_kinds() -> list[str]:
    total = sum(len(kind.attacks) for kind in FILE_KINDS)
    kinds = [
        (
            f"`{kind.name}`",
            kind.description,
            str(len(kind.attacks)) if kind.attacks else "not attacked",
            _code(record.name for record in kind.attacks) or "-",
        )
        for kind in FILE_KINDS
    ]
    safetensors = [
        (f"`{record.name}`", _GROUP_NAMES[record.group], record.description, record.harm)
        for record in SAFETENSORS_ATTACKS
    ]
    damages = [(f"`{damage.name}`", damage.description) for damage in DAMAGES]
    return [
        "## Kinds of written files",
        "",
        f"{len(FILE_KINDS)} kinds, one `FileKind` record each in `harness.files.FILE_KINDS`, "
        "in the order a file's kind is decided (the first that claims it). The invariant "
        "`written_files_run_nothing` replaces each file a checkpointer writes by every "
        f"hostile file of its kind in turn ({total} hostile files over all kinds); a file of "
        "kind `other` is reported as not attacked.",
        "",
        *_table(("kind", "the file", "hostile files", "attacks"), kinds),
        "",
        f"The {len(SAFETENSORS_ATTACKS)} hostile safetensors files are built by hand "
        "(`harness.files.SAFETENSORS_ATTACKS`); they run no code.",
        "",
        *_table(("attack", "group", "the file", "if accepted"), safetensors),
        "",
        "The invariant `damaged_files_detected` damages each written file in each way of "
        f"`harness.files.DAMAGES` ({len(DAMAGES)}):",
        "",
        *_table(("damage", "what is done to the file"), damages),
    ]


def catalog() -> str:
    """The text of ``docs/catalog.md``."""
    lines = [
        "# Catalog: what the project knows",
        "",
        "Written by `python -m harness.catalog` from the registries; do not edit by hand "
        "(`tests/test_catalog.py` fails when this file differs from what the generator "
        "writes). How to add a record: [extending.md](extending.md).",
        "",
    ]
    for section in (
        _families(),
        _attacks(),
        _optimizers(),
        _schedulers(),
        _refactorings(),
        _hazards(),
        _file_kinds(),
    ):
        lines += [*section, ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the catalog (or, with ``--check``, compare it); the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.catalog", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default=DEFAULT_PATH, help=f"default: {DEFAULT_PATH}")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the file is stale"
    )
    arguments = parser.parse_args(argv)
    text = catalog()
    if arguments.check:
        try:
            with open(arguments.out, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{arguments.out} is stale: run python -m harness.catalog", file=sys.stderr)
            return 1
        print(f"{arguments.out} is up to date")
        return 0
    with open(arguments.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
