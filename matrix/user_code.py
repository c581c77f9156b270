"""The matrix for your own checkpointer: does a checkpoint your code writes under one torch
load with your code under another?

``python -m matrix run --checkpointer FILE.py:NAME --python A --python B`` (see
``docs/your-code-across-versions.md``) runs, in each environment (a Python executable with
torch and this project importable), in a subprocess of its own with a time limit:

1. **write**: your checkpointer's ``save`` writes a deterministic corpus of states (the
   cases of :data:`RESUME_CASES` or :data:`INFERENCE_CASES`: the same models, optimizers
   and schedulers, from the same fixed seeds, in every torch), with a manifest holding each
   case's spec (:func:`matrix.corpus.to_plain`) and :func:`matrix.describe.describe` of
   what must come back;
2. **read**: every environment loads every corpus with your ``load`` into a fresh state
   rebuilt from the spec, and compares what it holds with the manifest;

then the parent merges the records into ``results.json`` and draws ``grid.md`` and
``grid.png``. :func:`regressions` compares a run with an earlier one.

Records are :class:`UserRecord`: the fields of :class:`matrix.results.Record`, with kind
``checkpointer:<purpose>:<case kind>`` and load mode :data:`LOAD_MODE` (your ``load``,
whatever it passes to ``torch.load``). Outcomes are the matrix's: ``identical`` (state and
extra restored; training resumes bit for bit, or the loaded model is in eval mode and gives
the same outputs, where the reader's kernels agree with the writer's), ``differs``,
``refused`` (your load raised ``pickle.UnpicklingError``: the weights_only unpickler),
``error`` (it raised anything else), ``unwritable`` (your save raised in the writer) and
``crashed`` (the environment died or ran past its time limit).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from harness.releases import version_key
from matrix.results import OUTCOMES

__all__ = [
    "DEFAULT_TIMEOUT",
    "INFERENCE_CASES",
    "LOAD_MODE",
    "USER_MODEL_KIND",
    "MANIFEST",
    "RESUME_CASES",
    "Environment",
    "Regression",
    "UserRecord",
    "call_folder",
    "changed_pairs",
    "environment",
    "merge_user_records",
    "load_models",
    "read_call_corpora",
    "read_user_corpora",
    "read_user_records",
    "regressions",
    "render_user_grid",
    "run_command",
    "run_user_matrix",
    "write_call_corpus",
    "write_user_corpus",
    "write_user_records",
]

MANIFEST = "manifest.json"
#: The load mode of every record: the user's ``load``, as it is written.
LOAD_MODE = "user_load"
#: Training cases of ``purpose="resume"``: (optimizer class, scheduler class or None, model
#: family); each the simplest of the project's strategies, trained from fixed seeds.
RESUME_CASES = (
    ("Adam", "StepLR", "linear"),
    ("SGD", None, "linear"),
    ("AdamW", None, "transformer_encoder_layer"),
)
#: Model families of ``purpose="inference"``: the simplest model of each.
INFERENCE_CASES = ("linear", "conv2d", "batch_norm")
_KIND = re.compile(r"checkpointer:(resume|inference):[A-Za-z0-9_]+")
_CLASS_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)?")
# Seconds an environment may take to write or read, by default: a few small states.
DEFAULT_TIMEOUT = 600.0
# The note of a case restored identical whose training or outputs were not compared.
_NOT_COMPARED = (
    "restored; resume or outputs not compared: this torch builds or trains the spec otherwise "
    "than the writer's"
)


@dataclass(frozen=True)
class UserRecord:
    """One load, by one reader's torch, of one case a writer's torch saved with the user's
    checkpointer. The fields of :class:`matrix.results.Record`; ``kind`` is
    ``checkpointer:<purpose>:<case kind>`` (the optimizer class for resume, the model family
    for inference), ``load_mode`` is :data:`LOAD_MODE`."""

    writer: str
    reader: str
    artifact: str
    kind: str
    load_mode: str
    outcome: str
    message: str = ""
    error_type: str = ""

    def __post_init__(self) -> None:
        if not _KIND.fullmatch(self.kind):
            raise ValueError(f"kind {self.kind!r} is not checkpointer:<purpose>:<case kind>")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {OUTCOMES}")
        if self.load_mode != LOAD_MODE:
            raise ValueError(f"load_mode {self.load_mode!r} is not {LOAD_MODE!r}")
        if not _CLASS_NAME.fullmatch(self.error_type):
            raise ValueError(f"error_type {self.error_type!r} is not a class name")

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the record: writer, reader, artifact."""
        return (self.writer, self.reader, self.artifact)

    def sort_key(self) -> tuple:
        return (version_key(self.writer), version_key(self.reader), self.artifact)


def write_user_records(records: list[UserRecord], path: str) -> None:
    """Write ``records`` sorted by writer, reader and artifact, one per line."""
    ordered = sorted(records, key=UserRecord.sort_key)
    lines = ",\n".join("  " + json.dumps(asdict(record)) for record in ordered)
    with open(path, "w") as handle:
        handle.write(f"[\n{lines}\n]\n" if ordered else "[]\n")


def read_user_records(path: str) -> list[UserRecord]:
    """The records of a ``results.json`` of :func:`run_user_matrix`; ValueError for a bad one."""
    with open(path) as handle:
        raw = json.load(handle)
    names = {field.name for field in fields(UserRecord)}
    for index, item in enumerate(raw):
        if set(item) != names:
            raise ValueError(
                f"{path}: record {index} has fields {sorted(item)}, not {sorted(names)}"
            )
    return [UserRecord(**item) for item in raw]


# --- in one environment: the corpus ---------------------------------------------------------


#: The case kind of a case built on one of the user's models (``--models``).
USER_MODEL_KIND = "user_model"
#: The optimizer that trains the user's models in resume cases, else the second.
_USER_MODEL_OPTIMIZERS = ("Adam", "SGD")


def load_models(reference: str) -> list[Any]:
    """The :class:`harness.UserModel` records ``FILE.py:NAME`` names (one, or a list or
    tuple of them): ``harness.cli.UsageError`` where it names something else."""
    from harness.cli import UsageError, load_objects
    from harness.user_models import UserModel

    name, models = load_objects(reference, "my_models.py:MODELS", option="--models: ")
    for model in models:
        if not isinstance(model, UserModel):
            raise UsageError(
                f"--models: {name} holds {model!r}, not a harness.UserModel: wrap your model "
                "as harness.UserModel(build=MyModel, example_input=(x,))"
            )
    if not models:
        raise UsageError(f"--models: {name} is empty: give at least one harness.UserModel")
    return models


def _user_case(purpose: str, models: list[Any], plain: dict[str, Any]) -> Any:
    """The case of a user's model a manifest's spec names: ``{"user_model": index,
    "label": ..., "optimizer": ..., "steps": ...}``."""
    from harness.user_models import UserModelCase, UserTrainingCase, UserTrainingSpec
    from matrix.corpus import from_plain

    index = plain["user_model"]
    if index >= len(models) or models[index].label != plain["label"]:
        found = models[index].label if index < len(models) else "nothing"
        raise ValueError(
            f"the writer's model {index} was {plain['label']!r}, --models gives {found!r} "
            "there: give every environment the same models"
        )
    model = models[index].check(purpose)
    if purpose == "inference":
        return UserModelCase(model)
    spec = UserTrainingSpec(model, from_plain(plain["optimizer"]), None, plain["steps"])
    return UserTrainingCase(spec)


def _user_model_cases(purpose: str, models: list[Any]) -> list[tuple[str, str, Any, Any]]:
    from harness.user_models import _optimizer_fits
    from matrix.corpus import _training_spec, to_plain

    cases = []
    for index, model in enumerate(models):
        plain: dict[str, Any] = {"user_model": index, "label": model.label}
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.label)[:40]
        if purpose == "resume":
            fits = [n for n in _USER_MODEL_OPTIMIZERS if _optimizer_fits(n, model.check(purpose))]
            generated = _training_spec((fits or ["SGD"])[0])
            plain.update(optimizer=to_plain(generated.optimizer), steps=generated.steps)
            name = f"resume/{generated.optimizer.name}-none-{index}-{slug}"
        else:
            name = f"inference/{index}-{slug}"
        cases.append((name, USER_MODEL_KIND, _user_case(purpose, models, plain), plain))
    return cases


def _cases(purpose: str, models: list[Any] | None = None) -> list[tuple[str, str, Any, Any]]:
    """(artifact name, case kind, case, plain spec) of ``purpose``, the same in every
    torch: the fixed cases, then one per model of ``models`` (the user's)."""
    from matrix.corpus import _simplest, _training_spec, simplest_model_spec, to_plain
    from strategies.models import build_model
    from strategies.optim import scheduler_specs
    from strategies.training import TrainingCase, TrainingSpec

    cases = []
    if purpose == "inference":
        for family in INFERENCE_CASES:
            case = build_model(simplest_model_spec(family))
            cases.append((f"inference/{family}", family, case, to_plain(case.spec)))
        return cases + _user_model_cases(purpose, models or [])
    for optimizer, scheduler, family in RESUME_CASES:
        scheduler_spec = _simplest(scheduler_specs([scheduler])) if scheduler else None
        spec = _training_spec(optimizer, scheduler_spec)
        if family != "linear":
            model = _trainable_with_dropout(family, optimizer)
            spec = TrainingSpec(model, spec.optimizer, spec.scheduler, spec.steps)
        name = f"resume/{optimizer}-{scheduler or 'none'}-{family}"
        cases.append((name, optimizer, TrainingCase(spec), to_plain(spec)))
    return cases + _user_model_cases(purpose, models or [])


def _trainable_with_dropout(family: str, optimizer: str) -> Any:
    """The simplest model spec of ``family`` with dropout and a parameter ``optimizer``
    can train."""
    from matrix.corpus import _simplest
    from strategies.model_specs import model_specs
    from strategies.models import build_model
    from strategies.training import optimizer_fits

    def fits(spec: Any) -> bool:
        if not spec.has_dropout or spec.has_uninitialized_parameters:
            return False
        module = build_model(spec).module
        trainable = any(parameter.requires_grad for parameter in module.parameters())
        return trainable and optimizer_fits(optimizer, module, spec)

    return _simplest(model_specs([family]), fits)


def _rebuilt(purpose: str, plain: Any, models: list[Any] | None) -> Any:
    from matrix.corpus import from_plain
    from strategies.models import build_model
    from strategies.training import TrainingCase

    if isinstance(plain, dict) and "user_model" in plain:
        if not models:
            raise ValueError("a case of the writer's own models: give the reader --models too")
        return _user_case(purpose, models, plain)
    spec = from_plain(plain)
    return build_model(spec) if purpose == "inference" else TrainingCase(spec)


def _raised(error: BaseException) -> str:
    """``<class>: <reason>``, as the matrix words an exception."""
    from harness.persistence import explain_error

    return explain_error(error)[:300]


def write_user_corpus(
    checkpointer: Any, purpose: str, directory: str, models: list[Any] | None = None
) -> dict[str, Any]:
    """Save every case of ``purpose`` (and one per :class:`harness.UserModel` of ``models``)
    with ``checkpointer`` into ``directory``, with its
    manifest (returned): per case its ``name``, ``kind``, ``spec`` (plain),
    ``expected`` (the description of :func:`harness.state.snapshot` of what was saved)
    and ``extra``; and ``file``, or ``unwritable`` with the reason where ``save`` raised."""
    from harness.capabilities import torch_version
    from harness.checkpointer import _original
    from harness.state import snapshot
    from matrix.describe import describe

    os.makedirs(directory, exist_ok=True)
    entries = []
    for name, case_kind, case, plain in _cases(purpose, models):
        entry: dict[str, Any] = {
            "name": name,
            "kind": f"checkpointer:{purpose}:{case_kind}",
            "spec": plain,
        }
        original = _original(purpose, case)
        entry["expected"] = describe(snapshot(original))
        entry["extra"] = describe(copy.deepcopy(original.extra))
        file = name.replace("/", "--") + ".ckpt"
        try:
            checkpointer.save(original, os.path.join(directory, file))
        except Exception as error:  # noqa: BLE001 - the user's save raising is the result
            entry["unwritable"] = _raised(error)
        else:
            entry["file"] = file
        entries.append(entry)
    manifest = {"writer": torch_version(), "purpose": purpose, "cases": entries}
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return manifest


def _restricted(live: Any, expected: Any) -> Any:
    """``live`` with only the mapping entries the description ``expected`` has, in its
    order, at every level: a torch loading an older state adds its own defaults (an
    optimizer's ``foreach``, ``differentiable``...), which changes nothing restored. An
    entry ``expected`` has and ``live`` lacks stays missing, so the comparison names it."""
    from matrix.describe import _is_mapping, describe

    if isinstance(live, dict) and _is_mapping(expected):
        by_description = {json.dumps(describe(key)): key for key in live}
        kept = copy.copy(live)
        kept.clear()
        for described_key, described_value in expected[1]:
            key = by_description.get(json.dumps(described_key))
            if key is not None:
                kept[key] = _restricted(live[key], described_value)
        return kept
    if isinstance(live, list | tuple) and isinstance(expected, list) and len(expected) == 2:
        items = expected[1]
        if isinstance(items, list) and len(items) == len(live):
            return type(live)(_restricted(v, e) for v, e in zip(live, items, strict=True))
    return live


def _difference(expected: Any, live: Any) -> str | None:
    from matrix.describe import describe, first_difference

    return first_difference(expected, describe(_restricted(live, expected)))


def _read_case(
    checkpointer: Any, purpose: str, entry: dict[str, Any], path: str, models: list[Any] | None
) -> tuple:
    """(outcome, message, error type) of loading one saved case."""
    import torch

    from harness.checkpointer import (
        RESUME_STEPS,
        _disturb_global_rng,
        _fresh,
        _match_requires_grad,
        _original,
    )
    from harness.state import snapshot
    from matrix.describe import describe

    try:
        case = _rebuilt(purpose, entry["spec"], models)
    except ValueError as error:
        return "error", f"not rebuilt: {error}", type(error).__name__
    fresh = _fresh(purpose, case)
    _disturb_global_rng()
    try:
        checkpointer.load(path, fresh)
    except Exception as error:  # noqa: BLE001 - the user's load raising is the result
        refused = isinstance(error, pickle.UnpicklingError)
        return ("refused" if refused else "error"), _raised(error), type(error).__name__
    difference = _difference(entry["expected"], snapshot(fresh))
    if difference is None:
        difference = _difference(entry["extra"], fresh.extra)
        difference = difference and f"extra: {difference}"
    if difference:
        return "differs", f"restored: {difference}", ""
    if purpose == "inference":
        training = sorted(name or "model" for name, m in fresh.model.named_modules() if m.training)
        if training:
            return "differs", f"loaded for inference but in training mode: {training}", ""
    else:
        try:
            for _ in range(RESUME_STEPS):
                case.train_step(fresh)
        except Exception as error:  # noqa: BLE001 - a restored state that cannot train
            return "error", f"training the restored state raised {_raised(error)}", ""
    # The reference, where the reader's kernels agree with the writer's: the reader builds
    # the original itself (after training the restored state: building it seeds the global
    # RNG the checkpoint restored); only if it is the writer's is its continuation, or its
    # output, what the restored state must give.
    own = _original(purpose, case)
    if _difference(entry["expected"], snapshot(own)) is not None:
        return "identical", _NOT_COMPARED, ""
    if purpose == "resume":
        for _ in range(RESUME_STEPS):
            case.train_step(own)
        # Both only with the entries the writer's torch saved: a newer torch fills in the
        # defaults an older state lacks its own way (SGD's ``fused``: None when built,
        # False when loaded), which changes no step.
        reference = describe(_restricted(snapshot(own), entry["expected"]))
        difference = _difference(reference, _restricted(snapshot(fresh), entry["expected"]))
        return ("differs", f"resumed: {difference}", "") if difference else ("identical", "", "")
    own.model.eval()
    _match_requires_grad(own.model, fresh.model)
    with torch.no_grad():
        expected = own.model(*case.example_input)
        actual = fresh.model(*case.example_input)
    difference = _difference(describe(expected), actual)
    return ("differs", f"outputs: {difference}", "") if difference else ("identical", "", "")


def read_user_corpora(
    checkpointer: Any, directories: list[str], models: list[Any] | None = None
) -> list[UserRecord]:
    """Load every case of every corpus in ``directories`` with ``checkpointer``'s ``load``:
    one record each. ``models``: the user's models, where the writers were given them."""
    import warnings

    from harness.capabilities import torch_version
    from harness.state import global_rng_state, set_global_rng_state

    records = []
    for directory in directories:
        with open(os.path.join(directory, MANIFEST)) as handle:
            manifest = json.load(handle)
        for entry in manifest["cases"]:
            fields_ = {
                "writer": manifest["writer"],
                "reader": torch_version(),
                "artifact": entry["name"],
                "kind": entry["kind"],
                "load_mode": LOAD_MODE,
            }
            if "unwritable" in entry:
                error_type = entry["unwritable"].split(":", 1)[0]
                records.append(
                    UserRecord(
                        **fields_,
                        outcome="unwritable",
                        message=entry["unwritable"],
                        error_type=error_type,
                    )
                )
                continue
            callers = global_rng_state()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    outcome, message, error_type = _read_case(
                        checkpointer,
                        manifest["purpose"],
                        entry,
                        os.path.join(directory, entry["file"]),
                        models,
                    )
            finally:
                set_global_rng_state(callers)
            records.append(
                UserRecord(**fields_, outcome=outcome, message=message, error_type=error_type)
            )
    return records


# --- the parent: every environment, each in a subprocess ---------------------------------


@dataclass(frozen=True)
class Environment:
    """A torch environment to run in: its Python executable and, once asked, its torch
    version (``torch.__version__`` without the local part)."""

    python: str
    version: str


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_env() -> dict[str, str]:
    """The environment of a child: this project importable, no bytecode written into it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def environment(python: str, timeout: float = 120.0) -> Environment:
    """The environment of the executable ``python``: ValueError where it cannot run or has
    no torch."""
    code = "from harness.capabilities import torch_version; print(torch_version())"
    try:
        found = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ValueError(f"--python {python}: cannot run it ({error})") from error
    if found.returncode != 0:
        last = (found.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"--python {python}: has no torch this project can use ({last})")
    return Environment(python, found.stdout.strip().splitlines()[-1])


def _run_logged(command: list[str], log: str, timeout: float, **options: Any) -> int | None:
    """Run ``command`` with its output appended to ``log`` (after the command line): its
    exit status, or None where it ran past ``timeout`` seconds. ``options`` go to
    :func:`subprocess.run`."""
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        try:
            done = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout, **options
            )
        except subprocess.TimeoutExpired:
            return None
    return done.returncode


def _run_child(
    env: Environment, arguments: list[str], log: str, timeout: float
) -> tuple[bool, str]:
    """Run ``python -m matrix.user_code ARGUMENTS`` in ``env``, output into ``log``:
    (ok, why not)."""
    command = [env.python, "-m", "matrix.user_code", *arguments]
    status = _run_logged(command, log, timeout, env=_child_env(), cwd=os.path.dirname(log))
    if status is None:
        return False, f"ran past its time limit of {timeout:g} s"
    if status != 0:
        return False, f"exited {status}; see {log}"
    return True, ""


def _installed(
    environments: list[Environment],
    install: str,
    run: str,
    timeout: float,
    say: Callable[[str], None],
) -> list[Environment]:
    """``pip install install`` into each environment; those where it failed are left out
    (said, with the log)."""
    kept = []
    for env in environments:
        log = os.path.join(run, f"install-{env.version}.log")
        command = [env.python, "-m", "pip", "install", "--quiet", install]
        status = _run_logged(command, log, timeout)
        if status is None:
            why = f"ran past its time limit of {timeout:g} s"
        else:
            why = "" if status == 0 else f"exited {status}"
        said = f"FAILED ({why}; see {log})" if why else "ok"
        say(f"install {install} into {env.version}: {said}")
        if not why:
            kept.append(env)
    return kept


def _crashed(writer: str, reader: str, manifest: dict[str, Any], why: str) -> list[UserRecord]:
    return [
        UserRecord(writer, reader, entry["name"], entry["kind"], LOAD_MODE, "crashed", why)
        for entry in manifest["cases"]
    ]


def run_user_matrix(
    reference: str,
    purpose: str,
    environments: list[Environment],
    out: str,
    timeout: float = DEFAULT_TIMEOUT,
    say: Callable[[str], None] = print,
    models: str | None = None,
    install: str | None = None,
) -> list[UserRecord]:
    r"""Run the user's checkpointer ``reference`` (``FILE.py:NAME``) through ``environments``:
    each writes its corpus into ``out/corpus/<version>``, then each reads every corpus;
    ``out`` gets ``results.json``, ``grid.md``, ``grid.png`` and ``run/`` (the copied
    files, the logs). ``models``: ``FILE.py:NAME`` of the user's :class:`harness.UserModel`
    records, one more case each; ``install``: a path or requirement ``pip install``\ ed into
    each environment first. Returns the records."""
    run = os.path.join(out, "run")
    corpus = os.path.join(out, "corpus")
    for folder in (run, corpus):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)

    def copied(reference: str) -> str:
        path, _, name = reference.rpartition(":")
        copy = os.path.join(run, os.path.basename(path))
        if not os.path.exists(copy):
            shutil.copyfile(path, copy)
        return f"{copy}:{name}"

    target = copied(reference)
    given = ["--models", copied(models)] if models else []
    if install is not None:
        environments = _installed(environments, install, run, timeout, say)
    manifests: dict[str, dict[str, Any]] = {}
    for env in environments:
        directory = os.path.join(corpus, env.version)
        log = os.path.join(run, f"write-{env.version}.log")
        arguments = ["write", target, purpose, directory, *given]
        ok, why = _run_child(env, arguments, log, timeout)
        if ok:
            with open(os.path.join(directory, MANIFEST)) as handle:
                manifests[env.version] = json.load(handle)
        say(f"write {env.version}: " + ("ok" if ok else f"FAILED ({why})"))
    records: list[UserRecord] = []
    for env in environments:
        for writer in environments:
            if writer.version not in manifests:
                records.append(
                    UserRecord(
                        writer.version,
                        env.version,
                        f"{purpose}/corpus",
                        f"checkpointer:{purpose}:corpus",
                        LOAD_MODE,
                        "crashed",
                        f"the writer's environment failed; see {run}/write-{writer.version}.log",
                    )
                )
        results = os.path.join(run, f"read-{env.version}.json")
        log = os.path.join(run, f"read-{env.version}.log")
        folders = [os.path.join(corpus, version) for version in manifests]
        ok, why = _run_child(env, ["read", target, results, *folders, *given], log, timeout)
        if ok:
            records += read_user_records(results)
        else:
            for writer, manifest in manifests.items():
                records += _crashed(writer, env.version, manifest, f"the reader {why}")
        say(f"read {env.version}: " + ("ok" if ok else f"FAILED ({why})"))
    write_user_records(records, os.path.join(out, "results.json"))
    render_user_grid(records, out, purpose)
    return records


# --- the grid and the baseline ------------------------------------------------------------


def _versions(records: list[UserRecord]) -> list[str]:
    return sorted({r.writer for r in records} | {r.reader for r in records}, key=version_key)


def _by_cell(records: list[UserRecord], kind: str | None = None) -> dict[tuple, list[str]]:
    cells: dict[tuple, list[str]] = {}
    for record in records:
        if kind is None or record.kind == kind:
            cells.setdefault((record.writer, record.reader), []).append(_shown(record))
    return cells


def _shown(record: UserRecord) -> str:
    """What the grid shows of a record: its outcome, or ``restored`` for a case restored
    identical whose resumed training or outputs were not compared."""
    restored = record.outcome == "identical" and record.message == _NOT_COMPARED
    return "restored" if restored else record.outcome


def render_user_grid(
    records: list[UserRecord], directory: str, purpose: str, picture: bool = True
) -> list[str]:
    """Write ``grid.md`` (a table per case kind and every load that was not identical) and,
    unless ``picture`` is False, ``grid.png`` (a heatmap per case kind: worst outcome, and
    how many cases ended so) of ``records`` into ``directory``; their paths."""
    from matrix.render import COLOURS, SEVERITY, SYMBOLS, cell_table, heatmap

    versions = _versions(records)
    kinds = sorted({record.kind for record in records})
    # Every outcome a user checkpointer's load can end in: none is a refusal as promised.
    outcomes = [o for o in SEVERITY if o != "refused as promised"]
    legend = ", ".join(f"{SYMBOLS[o]} {o}" for o in outcomes)
    parts = [
        f"# Your checkpointer across torch versions ({purpose})",
        "",
        f"{len(records)} loads from `results.json`. Rows: the torch whose environment saved "
        "with your `save`; columns: the torch that loaded with your `load`. A cell shows ✓ "
        f"when every case loaded identical, else each other outcome with its count ({legend}). "
        "Restored (✓°): the state came back identical, but this torch builds or trains the "
        "case otherwise than the writer's, so the resumed training (or the outputs) could "
        "not be compared.",
    ]
    for kind in [None, *kinds]:
        parts += ["", f"## {kind or 'every case'}", ""]
        parts.append(cell_table(_by_cell(records, kind), versions, versions, "writer \\ reader"))
    parts += ["", "## Every load that was not identical, or a note on it", ""]
    parts += ["| writer | reader | case | outcome | message |", "|---|---|---|---|---|"]
    for record in sorted(records, key=UserRecord.sort_key):
        if record.outcome != "identical" or record.message:
            message = record.message.replace("|", "/")[:200]
            parts.append(
                f"| {record.writer} | {record.reader} | {record.artifact} | {record.outcome} "
                f"| {message} |"
            )
    markdown = os.path.join(directory, "grid.md")
    with open(markdown, "w") as handle:
        handle.write("\n".join(parts) + "\n")
    if not picture:
        return [markdown]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown = kinds or [f"checkpointer:{purpose}:none"]
    # A panel grows with the versions; past a handful a cell holds the outcome's symbol and
    # count (the legend names the colours), not its name.
    side = max(3.0, 0.32 * len(versions) + 1.2)
    compact = len(versions) > 6
    symbols = {**SYMBOLS, "crashed": "✗"}  # the grid.md symbol is not in matplotlib's font
    figure, axes = plt.subplots(
        1, len(shown), figsize=(1 + side * len(shown), side + 1.2), squeeze=False
    )
    for axis, kind in zip(axes.flat, shown, strict=True):
        heatmap(
            axis,
            _by_cell(records, kind),
            versions,
            versions,
            lambda worst, count: f"{symbols[worst]}{count}" if compact else f"{worst}\n{count}",
        )
        axis.set_xlabel("reader (your load)")
        axis.set_ylabel("writer (your save)")
        axis.set_title(kind, fontsize=9)
    figure.legend(
        handles=[Patch(color=COLOURS[o], label=f"{symbols[o]} {o}") for o in outcomes],
        loc="lower center",
        ncol=len(outcomes),
        fontsize=8,
        title="worst outcome of the cell's cases (and how many ended so)",
        title_fontsize=8,
    )
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    picture = os.path.join(directory, "grid.png")
    figure.savefig(picture, dpi=80)
    plt.close(figure)
    return [markdown, picture]


# --- pytest's --harness-write-corpus and --harness-read-corpus: a corpus per call ---------


def call_folder(root: str, version: str, test: str, call: int) -> str:
    """Where pytest's corpus options keep call ``call`` (from 1) of ``check_checkpointer`` in
    the test ``test`` (a folder name) under ``root``: the corpus torch ``version`` wrote, and
    the records it read."""
    return os.path.join(root, version, test, str(call))


def write_call_corpus(
    checkpointer: Any, purpose: str, root: str, test: str, call: int, models: list[Any]
) -> str:
    """:func:`write_user_corpus` into this torch's :func:`call_folder`, replacing an earlier
    corpus there, with the caller's global RNGs left as they were; the folder."""
    from harness.capabilities import torch_version
    from harness.state import global_rng_state, set_global_rng_state

    folder = call_folder(root, torch_version(), test, call)
    shutil.rmtree(folder, ignore_errors=True)
    callers = global_rng_state()
    try:
        write_user_corpus(checkpointer, purpose, folder, models)
    finally:
        set_global_rng_state(callers)
    return folder


def read_call_corpora(
    checkpointer: Any, root: str, test: str, call: int, label: str, models: list[Any]
) -> list[UserRecord]:
    """:func:`read_user_corpora` of every torch's corpus of the call (its
    :func:`call_folder` under each version, oldest first); the records go, each case's
    artifact prefixed with ``label``, to ``results.json`` in this torch's folder of the call.
    The records as read; none where no torch wrote the call's corpus."""
    import glob

    from harness.capabilities import torch_version

    pattern = os.path.join(glob.escape(root), "*", glob.escape(test), str(call), MANIFEST)
    # root/<version>/<test>/<call>/manifest.json
    versions = sorted((path.split(os.sep)[-4] for path in glob.glob(pattern)), key=version_key)
    if not versions:
        return []
    folders = [call_folder(root, version, test, call) for version in versions]
    records = read_user_corpora(checkpointer, folders, models)
    own = call_folder(root, torch_version(), test, call)
    os.makedirs(own, exist_ok=True)
    labelled = [replace(record, artifact=f"{label}: {record.artifact}") for record in records]
    write_user_records(labelled, os.path.join(own, "results.json"))
    return records


def merge_user_records(root: str) -> list[UserRecord]:
    """Merge the records of every ``results.json`` in the folders below ``root`` (those of
    pytest's ``--harness-read-corpus ROOT``: one per reader and ``check_checkpointer`` call)
    into ``root/results.json``, and draw its ``grid.md`` and, where matplotlib is installed,
    ``grid.png`` (else an earlier ``grid.png`` is removed); the records. ValueError where two
    files hold the same load."""
    import importlib.util

    root = os.path.normpath(root)
    where: dict[tuple[str, str, str], str] = {}
    records = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        if folder == root or "results.json" not in files:
            continue
        path = os.path.join(folder, "results.json")
        for record in read_user_records(path):
            if record.key in where:
                raise ValueError(f"{where[record.key]} and {path} both hold {record.key}")
            where[record.key] = path
            records.append(record)
    write_user_records(records, os.path.join(root, "results.json"))
    purposes = ", ".join(sorted({record.kind.split(":")[1] for record in records}))
    picture = importlib.util.find_spec("matplotlib") is not None
    if not picture and os.path.exists(os.path.join(root, "grid.png")):
        os.remove(os.path.join(root, "grid.png"))  # an earlier run's, no longer the grid
    render_user_grid(records, root, purposes or "no loads", picture=picture)
    return records


@dataclass(frozen=True)
class Regression:
    """A cell that got worse since the baseline: one case, one (writer, reader) pair.
    ``now`` is ``missing`` where the case is no longer in the results."""

    writer: str
    reader: str
    artifact: str
    before: str
    now: str
    message: str

    def __str__(self) -> str:
        line = f"{self.writer} -> {self.reader} {self.artifact}: {self.before} -> {self.now}"
        return f"{line} ({self.message})" if self.message else line


def _rank(outcome: str) -> int:
    """Lower is worse: the matrix's severity order (crashed first, identical last)."""
    from matrix.render import SEVERITY

    return SEVERITY.index(outcome)


def regressions(before: list[UserRecord], now: list[UserRecord]) -> list[Regression]:
    """Every case of ``before`` whose outcome is worse in ``now`` (by the matrix's severity,
    :data:`matrix.render.SEVERITY`), or that ``now`` lacks, for a (writer, reader) pair
    ``now`` ran."""
    current = {record.key: record for record in now}
    pairs = {(record.writer, record.reader) for record in now}
    found = []
    for record in sorted(before, key=UserRecord.sort_key):
        if (record.writer, record.reader) not in pairs:
            continue
        later = current.get(record.key)
        if later is None:
            found.append(Regression(*record.key, record.outcome, "missing", ""))
        elif _rank(later.outcome) < _rank(record.outcome):
            found.append(Regression(*record.key, record.outcome, later.outcome, later.message))
    return found


def changed_pairs(before: list[UserRecord], now: list[UserRecord]) -> list[tuple[str, str]]:
    """The (writer, reader) pairs where any case's outcome changed, either way, or a case
    came or went, among the pairs both runs have."""
    old = {record.key: record.outcome for record in before}
    new = {record.key: record.outcome for record in now}
    both = {(w, r) for w, r, _ in old} & {(w, r) for w, r, _ in new}
    changed = {key[:2] for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    return sorted(changed & both, key=lambda pair: tuple(map(version_key, pair)))


# --- ``python -m matrix run --checkpointer ...`` -----------------------------------------


def _environments(pythons: list[str], versions: list[str]) -> list[Environment]:
    """The environments ``--python`` and ``--versions`` name (default: this Python's);
    ValueError for one that cannot run, has no torch, or repeats a torch version."""
    from matrix.versions import check_versions, tox_env

    executables = list(pythons)
    for version in check_versions(versions) if versions else []:
        python = os.path.join(_ROOT, ".tox", tox_env(version), "bin", "python")
        if not os.path.isfile(python):
            raise ValueError(
                f"--versions {version}: no environment at {python}; create it with "
                f"`tox -e {tox_env(version)} --notest`, or pass its Python with --python"
            )
        executables.append(python)
    found = [environment(python) for python in executables or [sys.executable]]
    seen: dict[str, str] = {}
    for env in found:
        if env.version in seen:
            raise ValueError(
                f"--python {seen[env.version]} and {env.python} both have torch {env.version}"
            )
        seen[env.version] = env.python
    return found


def run_command(
    reference: str,
    purpose: str,
    pythons: list[str],
    versions: list[str],
    out: str,
    baseline: str | None,
    timeout: float = DEFAULT_TIMEOUT,
    models: str | None = None,
    install: str | None = None,
) -> int:
    """``python -m matrix run --checkpointer``: check the arguments (a mistake is one line
    on stderr, exit status 2), run :func:`run_user_matrix`, compare with ``baseline``.

    Progress goes to stderr; stdout's first line names the (writer, reader) pairs that
    changed since the baseline (or sums the run up without one), then each cell that got
    worse. Exit status 1 where a cell got worse or an environment failed, else 0."""
    from harness.cli import UsageError

    out = os.path.abspath(out)
    try:
        if "site-packages" in out.split(os.sep):
            raise UsageError(f"--out {out} is inside site-packages: choose a folder of yours")
        if install is None:
            _checkpointer(reference)
            if models is not None:
                load_models(models)
        else:
            # Your files may import your project, which only the environments get: check
            # here that they exist; each environment imports them once it is installed.
            for given in (reference, models):
                path = (given or "").rpartition(":")[0]
                if given is not None and not os.path.isfile(path):
                    raise UsageError(f"no such file: {path} (expected FILE.py:NAME)")
        before = None
        if baseline is not None:
            results = os.path.join(baseline, "results.json")
            if not os.path.isfile(results):
                raise UsageError(f"--baseline {baseline}: no results.json there")
            before = read_user_records(results)
        environments = _environments(pythons, versions)
    except (UsageError, ValueError) as error:
        print(f"python -m matrix run: {error}", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    say = functools.partial(print, file=sys.stderr)
    records = run_user_matrix(
        reference, purpose, environments, out, timeout, say=say, models=models, install=install
    )
    failed = sum(record.outcome == "crashed" for record in records)
    if before is None:
        counts = Counter(record.outcome for record in records)
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
        print(f"{len(records)} loads ({summary}) in {out}")
        return 1 if failed else 0
    pairs = changed_pairs(before, records)
    shown = ", ".join(f"{writer} -> {reader}" for writer, reader in pairs) or "none"
    print(f"changed (writer -> reader) pairs since {baseline}: {shown}")
    worse = regressions(before, records)
    for regression in worse:
        print(f"worse: {regression}")
    print(f"{len(worse)} cells worse, {len(records)} loads in {out}")
    return 1 if worse or failed else 0


# --- in one environment: ``python -m matrix.user_code write|read`` -----------------------


def _checkpointer(reference: str) -> Any:
    from harness.cli import _load_checkpointer

    return _load_checkpointer(reference, {})


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matrix.user_code")
    steps = parser.add_subparsers(dest="step", required=True)
    write = steps.add_parser("write", help="save this torch's corpus with the checkpointer")
    write.add_argument("checkpointer")
    write.add_argument("purpose", choices=("resume", "inference"))
    write.add_argument("directory")
    read = steps.add_parser("read", help="load every corpus with the checkpointer")
    read.add_argument("checkpointer")
    read.add_argument("results")
    read.add_argument("corpora", nargs="*")
    for step in (write, read):
        step.add_argument("--models", help="FILE.py:NAME of your harness.UserModel records")
    merge = steps.add_parser(
        "merge", help="merge the results.json below a --harness-read-corpus folder; draw its grid"
    )
    merge.add_argument("root")
    arguments = parser.parse_args(argv)
    if arguments.step == "merge":
        if not os.path.isdir(arguments.root):
            print(
                f"python -m matrix.user_code merge: {arguments.root} is no folder", file=sys.stderr
            )
            return 2
        records = merge_user_records(arguments.root)
        print(f"merged {len(records)} loads into {os.path.join(arguments.root, 'results.json')}")
        return 0
    checkpointer = _checkpointer(arguments.checkpointer)
    models = load_models(arguments.models) if arguments.models else None
    if arguments.step == "write":
        try:
            manifest = write_user_corpus(
                checkpointer, arguments.purpose, arguments.directory, models
            )
        except Exception:
            traceback.print_exc()
            return 1
        print(f"wrote {len(manifest['cases'])} cases to {arguments.directory}")
        return 0
    records = read_user_corpora(checkpointer, arguments.corpora, models)
    write_user_records(records, arguments.results)
    print(f"read {len(arguments.corpora)} corpora: {len(records)} records")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
