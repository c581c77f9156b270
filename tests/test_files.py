"""harness.files: the kinds of written files, the forked child, and the attacks and damage
applied to every file a checkpointer writes, all on real files and real loaders."""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import signal
import subprocess
import time
import warnings

import numpy
import pytest
import safetensors.torch
import torch
from hypothesis.errors import InvalidArgument

from harness import files
from harness.files import (
    DAMAGES,
    FILE_KINDS,
    SAFETENSORS_ATTACKS,
    attack_written_files,
    damage_written_files,
    file_kind,
    kind_of,
    run_isolated,
    written_files,
)
from strategies.payloads import ATTACK_CLASSES, HOSTILE_CLASSES, LEGACY_CARRIED_CLASSES, attack

pytestmark = pytest.mark.skipif(
    not files.ISOLATION_AVAILABLE, reason="run_isolated needs os.fork and /proc (Linux)"
)

TENSORS = {"weight": torch.arange(6, dtype=torch.float32), "bias": torch.ones(2)}


def _torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)


def _pickled(protocol):
    def write(path):
        with open(path, "wb") as file:
            pickle.dump({"epoch": 3, "losses": [0.5, 0.25]}, file, protocol=protocol)

    return write


def _text(content):
    def write(path):
        with open(path, "w") as file:
            file.write(content)

    return write


WRITERS = {
    "torch.save": (lambda path: torch.save(TENSORS, path), "torch_zip"),
    "torch.save legacy": (
        lambda path: torch.save(TENSORS, path, _use_new_zipfile_serialization=False),
        "legacy_torch",
    ),
    "torch.save legacy protocol 4": (
        lambda path: torch.save(
            TENSORS, path, _use_new_zipfile_serialization=False, pickle_protocol=4
        ),
        "legacy_torch",
    ),
    "torch.jit.save": (_torchscript, "torchscript"),
    "pickle.dump": (_pickled(pickle.DEFAULT_PROTOCOL), "plain_pickle"),
    "pickle.dump protocol 2": (_pickled(2), "plain_pickle"),
    "pickle.dump protocol 5": (_pickled(5), "plain_pickle"),
    "safetensors": (lambda path: safetensors.torch.save_file(TENSORS, path), "safetensors"),
    "json": (_text(json.dumps({"lr": 0.1, "classes": ["a", "b"]})), "other"),
    "text": (_text("epoch 3\n"), "other"),
    "numpy.savez": (lambda path: numpy.savez(path, a=numpy.ones(3)), "other"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_the_kind_of_a_file_is_the_writer_s_format(tmp_path, writer):
    write, expected = WRITERS[writer]
    path = str(tmp_path / "file")
    write(path)
    if not os.path.exists(path):  # numpy.savez adds .npz
        path += ".npz"
    assert kind_of(path).name == expected


def test_a_damaged_torch_zip_is_of_kind_other(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(TENSORS, path)
    path.write_bytes(path.read_bytes()[:100])
    assert kind_of(path).name == "other"


def test_every_kind_is_registered_once_and_other_is_last():
    names = [kind.name for kind in FILE_KINDS]
    assert len(names) == len(set(names))
    assert set(names) == {
        "torch_zip",
        "legacy_torch",
        "torchscript",
        "plain_pickle",
        "safetensors",
        "other",
    }
    assert names[-1] == "other" and file_kind("other").attacks == ()
    assert list(file_kind("other").hostile_files("unused")) == []
    with pytest.raises(InvalidArgument):
        file_kind("zip")


def test_each_kind_carries_the_attacks_of_its_format():
    def names(kind):
        return [record.name for record in file_kind(kind).attacks]

    assert names("torch_zip") == list(HOSTILE_CLASSES)
    assert names("legacy_torch") == list(LEGACY_CARRIED_CLASSES)
    assert names("plain_pickle") == [n for n in LEGACY_CARRIED_CLASSES if n in ATTACK_CLASSES]
    assert "torchscript_archive" in names("torchscript")
    assert {record.group for record in SAFETENSORS_ATTACKS} == {"memory", "bomb"}
    assert names("safetensors") == [record.name for record in SAFETENSORS_ATTACKS]


def test_a_kind_refuses_an_attack_it_does_not_carry(tmp_path):
    with pytest.raises(InvalidArgument, match="not an attack of kind"):
        file_kind("plain_pickle").hostile_file(attack("zeros_bomb"), str(tmp_path / "s"))


def test_written_files_lists_every_regular_file_sorted_with_kind_and_size(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "z.json").write_text('{"a": 1}')
    (tmp_path / "sub" / "deeper" / "notes.txt").write_text("hello")
    torch.save(TENSORS, tmp_path / "sub" / "model.pt")
    (tmp_path / "link.json").symlink_to(tmp_path / "z.json")
    listed = written_files(tmp_path)
    assert [(f.path, f.kind) for f in listed] == [
        ("sub/deeper/notes.txt", "other"),
        ("sub/model.pt", "torch_zip"),
        ("z.json", "other"),
    ]
    assert [f.size for f in listed] == [5, os.path.getsize(tmp_path / "sub" / "model.pt"), 8]
    with pytest.raises(InvalidArgument, match="directory"):
        written_files(tmp_path / "z.json")


# --- every hostile file is real: refused by the safe loader, run by the unsafe one --------------


def _hostile_files(tmp_path, kind):
    """(record, path, sentinel) for every hostile file of ``kind``, written to disk."""
    written = []
    for record in file_kind(kind).attacks:
        sentinel = str(tmp_path / f"{kind}-{record.name}.ran")
        path = str(tmp_path / f"{kind}-{record.name}.bin")
        with open(path, "wb") as file:
            file.write(file_kind(kind).hostile_file(record, sentinel))
        written.append((record, path, sentinel))
    return written


def _call(load, path):
    load(path)  # what it returns stays in the child: a loaded file need not pickle


def _loaded(load, path):
    """How ``load(path)`` ends in a forked child."""
    return run_isolated(functools.partial(_call, load, path), timeout=20)


def _safe_load(path):
    return torch.load(path, weights_only=True)


ATTACKED_KINDS = [kind.name for kind in FILE_KINDS if kind.attacks]


@pytest.mark.parametrize("kind", ATTACKED_KINDS)
def test_weights_only_load_refuses_every_hostile_file_of_every_kind(tmp_path, kind):
    for record, path, sentinel in _hostile_files(tmp_path, kind):
        ended = _loaded(_safe_load, path)
        assert ended.outcome == "raised", (record.name, str(ended))
        assert not os.path.exists(sentinel), record.name


def test_safetensors_refuses_every_hostile_safetensors_file(tmp_path):
    for record, path, _ in _hostile_files(tmp_path, "safetensors"):
        ended = _loaded(safetensors.torch.load_file, path)
        assert (ended.outcome, ended.error_type) == ("raised", "SafetensorError"), record.name


def _unsafe_loads(kind, record):
    if kind == "plain_pickle":

        def load(path):
            with open(path, "rb") as file:
                return pickle.load(file)

        return load
    if record.name == "torchscript_archive":
        return torch.jit.load
    return lambda path: torch.load(path, weights_only=False)


@pytest.mark.parametrize("kind", ["torch_zip", "legacy_torch", "torchscript", "plain_pickle"])
def test_every_code_attack_of_every_kind_runs_under_an_unsafe_loader(tmp_path, kind):
    code = [entry for entry in _hostile_files(tmp_path, kind) if entry[0].group == "code"]
    assert code
    for record, path, sentinel in code:
        ended = _loaded(_unsafe_loads(kind, record), path)
        assert os.path.exists(sentinel), (record.name, str(ended))


# --- run_isolated --------------------------------------------------------------------------------


def _gone(pid, within=5.0):
    """Whether process ``pid`` is gone (or a zombie left to init) within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def _write_pid(path, pid=None):
    with open(path, "w") as file:
        file.write(str(os.getpid() if pid is None else pid))


def test_a_returned_value_comes_back():
    ended = run_isolated(lambda: {"sum": int(torch.arange(5).sum())}, timeout=20)
    assert (ended.outcome, ended.value) == ("returned", {"sum": 10})


def test_an_exception_comes_back_as_its_type_and_first_line():
    def fail():
        raise ValueError("first line\nsecond line")

    ended = run_isolated(fail, timeout=20)
    assert (ended.outcome, ended.error_type, ended.error) == (
        "raised",
        "ValueError",
        "ValueError: first line",
    )


def test_what_the_child_prints_is_its_output_not_the_caller_s(capfd):
    def noisy():
        print("from print")
        logger = logging.getLogger("harness-test-isolated-output")
        logger.propagate = False  # pytest's own handler raises on a malformed call
        logger.addHandler(logging.StreamHandler())
        logger.warning("a %s needing %s", "format")  # malformed, as torch has one
        os.write(2, b"x" * 5000 + b"\nlast line of C++ output\n")
        return 1

    ended = run_isolated(noisy, timeout=20)
    assert ended.outcome == "returned"
    assert capfd.readouterr() == ("", "")
    assert ended.output.endswith("last line of C++ output\n") and len(ended.output) == 4096
    crashed = run_isolated(lambda: (print("before", flush=True), os._exit(3)), timeout=20)
    assert (crashed.outcome, crashed.output) == ("crashed", "before\n")
    assert crashed.error == "exited with status 3; it last wrote: before"
    assert capfd.readouterr() == ("", "")


def test_a_value_that_does_not_pickle_is_reported_as_raised():
    ended = run_isolated(lambda: lambda: None, timeout=20)
    assert ended.outcome == "raised" and "could not be sent back" in ended.error


def test_a_segfault_is_a_crash_named_by_its_signal():
    ended = run_isolated(lambda: os.kill(os.getpid(), signal.SIGSEGV), timeout=20)
    assert (ended.outcome, ended.signal) == ("crashed", "SIGSEGV")


def test_an_exit_without_a_report_is_a_crash_with_its_status():
    ended = run_isolated(lambda: os._exit(3), timeout=20)
    assert (ended.outcome, ended.exit_status, ended.signal) == ("crashed", 3, None)


def test_a_hung_child_is_killed_with_what_it_started(tmp_path):
    pids = tmp_path / "pids"

    def hang():
        sleeper = subprocess.Popen(["sleep", "60"])
        _write_pid(pids, f"{os.getpid()} {sleeper.pid}")
        time.sleep(60)

    started = time.monotonic()
    ended = run_isolated(hang, timeout=1.0)
    assert ended.outcome == "hung" and time.monotonic() - started < 10
    child, grandchild = map(int, pids.read_text().split())
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # reaped: no longer a child of this process
    assert _gone(child) and _gone(grandchild)


@pytest.mark.parametrize(
    "allocate",
    [lambda: bytearray(2**33), lambda: torch.empty(2**33, dtype=torch.uint8)],
    ids=["python", "torch"],
)
def test_an_allocation_past_the_limit_is_out_of_memory(allocate):
    ended = run_isolated(lambda: allocate() and None, timeout=20, memory_bytes=2**30)
    assert ended.outcome == "out_of_memory", str(ended)


def test_a_child_does_tensor_math_after_the_parent_ran_parallel_tensor_math():
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        matrix = torch.randn(1500, 1500)
        assert torch.isfinite(matrix @ matrix).all()  # OpenMP's worker threads exist now
        ended = run_isolated(lambda: float((matrix @ matrix).sum()), timeout=30)
    finally:
        torch.set_num_threads(threads)
    assert ended.outcome == "returned", str(ended)


def test_a_keyboard_interrupt_in_the_parent_kills_the_child(tmp_path):
    pid = tmp_path / "pid"

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    def wait():
        _write_pid(pid)
        time.sleep(60)

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_isolated(wait, timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    child = int(pid.read_text())
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)
    assert _gone(child)


@pytest.mark.parametrize(
    "arguments",
    [
        {"function": 3},
        {"timeout": 0},
        {"timeout": True},
        {"memory_bytes": -1},
        {"memory_bytes": 1.5},
    ],
)
def test_bad_arguments_to_run_isolated_are_refused(arguments):
    call = {"function": lambda: None, "timeout": 5, "memory_bytes": 2**30, **arguments}
    with pytest.raises(InvalidArgument):
        run_isolated(call.pop("function"), **call)


# --- attacking every written file ----------------------------------------------------------------


def _contents(root):
    return {f.path: (root / f.path).read_bytes() for f in written_files(root)}


def test_only_the_file_read_with_pickle_load_is_harmed(tmp_path):
    root = tmp_path / "checkpoint"
    root.mkdir()
    torch.save({"weight": torch.ones(2)}, root / "model.pt")
    optimizer = {"step": torch.tensor(3)}
    torch.save(optimizer, root / "optimizer.pt", _use_new_zipfile_serialization=False)
    with open(root / "rng.pkl", "wb") as file:
        pickle.dump({"seed": 7}, file)
    (root / "meta.json").write_text('{"epoch": 1}')
    before = _contents(root)

    def load():
        torch.load(root / "model.pt", weights_only=True)
        torch.load(root / "optimizer.pt", weights_only=True)
        with open(root / "rng.pkl", "rb") as file:
            pickle.load(file)
        json.loads((root / "meta.json").read_text())

    result = attack_written_files(root, load, timeout=20)
    assert sorted((t.file, t.attack) for t in result.harmful) == sorted(
        ("rng.pkl", name) for name in LEGACY_CARRIED_CLASSES if name in ATTACK_CLASSES
    )
    assert all(t.ran for t in result.harmful)
    assert result.trials_per_file == {
        "model.pt": len(HOSTILE_CLASSES),
        "optimizer.pt": len(LEGACY_CARRIED_CLASSES),
        "rng.pkl": len(LEGACY_CARRIED_CLASSES),
    }
    assert all(t.outcome == "raised" for t in result.trials if t.file != "rng.pkl")
    assert [f.path for f in result.not_attacked] == ["meta.json"]
    assert _contents(root) == before  # restored, and no sentinel inside the root


def test_an_unsafe_loader_is_harmed_by_code_memory_and_bomb_attacks(tmp_path):
    root = tmp_path / "checkpoint"
    root.mkdir()
    torch.save({"weight": torch.ones(2)}, root / "model.pt")
    # What load returns is dropped in the child: reduce_open's loads an open file, which
    # does not pickle.
    result = attack_written_files(
        root, lambda: torch.load(root / "model.pt", weights_only=False), timeout=20
    )
    trials = {t.attack: t for t in result.trials}
    assert (trials["reduce_open"].outcome, trials["reduce_open"].harmed) == ("returned", True)
    assert trials["reduce_open"].ran
    assert (trials["setitem_on_tensor"].outcome, trials["setitem_on_tensor"].harmed) == (
        "returned",
        True,
    )
    assert trials["setitem_on_tensor"].read is True
    assert (trials["zeros_bomb"].outcome, trials["zeros_bomb"].harmed) == ("out_of_memory", True)
    refused = [t for t in result.trials if t.outcome == "raised" and not t.ran]
    assert refused and not any(t.harmed for t in refused)


def test_a_loader_that_never_reads_the_file_is_not_harmed(tmp_path):
    root = tmp_path / "checkpoint"
    root.mkdir()
    torch.save({"weight": torch.ones(2)}, root / "unused.pt")
    result = attack_written_files(root, lambda: None, timeout=20)
    assert {t.outcome for t in result.trials} == {"returned"}
    assert {t.read for t in result.trials} == {False}
    assert result.harmful == ()


def test_a_loader_that_hangs_on_a_changed_file_is_harmed(tmp_path):
    root = tmp_path / "checkpoint"
    root.mkdir()
    safetensors.torch.save_file(TENSORS, root / "model.safetensors")
    original = (root / "model.safetensors").read_bytes()

    def load():
        if (root / "model.safetensors").read_bytes() != original:
            time.sleep(60)

    result = attack_written_files(root, load, timeout=0.5)
    assert len(result.trials) == len(SAFETENSORS_ATTACKS)
    assert all(t.outcome == "hung" and t.harmed for t in result.trials)


# --- damaging every written file -----------------------------------------------------------------


def _training_files(root):
    torch.save({"weight": torch.arange(8, dtype=torch.float32)}, root / "model.pt")
    torch.save({"lr": torch.tensor(0.5)}, root / "extra.pt")


def _compared(root, *, lenient):
    """A trial: load both files (the lenient one falls back to defaults when extra.pt is
    missing) and say what differs from what was saved."""

    def trial():
        model = torch.load(root / "model.pt", weights_only=True)
        if lenient and not (root / "extra.pt").exists():
            extra = {"lr": torch.tensor(0.1)}
        else:
            extra = torch.load(root / "extra.pt", weights_only=True)
        if not torch.equal(model["weight"], torch.arange(8, dtype=torch.float32)):
            return "model weight differs"
        if not torch.equal(extra["lr"], torch.tensor(0.5)):
            return "lr differs"
        return None

    return trial


def test_a_loader_that_ignores_a_missing_file_is_silently_wrong_when_it_is_deleted(tmp_path):
    _training_files(tmp_path)
    result = damage_written_files(tmp_path, _compared(tmp_path, lenient=True), timeout=20)
    wrong = {(t.file, t.damage) for t in result.silently_wrong if t.damage != "bit_flipped"}
    assert wrong == {("extra.pt", "deleted")}
    deleted = next(t for t in result.trials if (t.file, t.damage) == ("extra.pt", "deleted"))
    assert deleted.value == "lr differs"


def test_a_strict_loader_refuses_every_deleted_emptied_or_truncated_file(tmp_path):
    _training_files(tmp_path)
    before = _contents(tmp_path)
    result = damage_written_files(tmp_path, _compared(tmp_path, lenient=False), timeout=20)
    cut = [t for t in result.trials if t.damage in ("deleted", "emptied", "truncated")]
    assert len(cut) == 6 and all(t.outcome == "raised" for t in cut)
    assert result.failures == ()
    assert _contents(tmp_path) == before


def test_torch_loads_a_bit_flipped_in_tensor_data_without_noticing(tmp_path):
    # torch 2.13.0 does not check a zip record's CRC-32 when it reads it.
    _training_files(tmp_path)
    result = damage_written_files(tmp_path, _compared(tmp_path, lenient=False), timeout=20)
    flipped = [t for t in result.trials if t.damage == "bit_flipped" and "(data)" in t.where]
    assert {t.file for t in flipped} == {"model.pt", "extra.pt"}
    assert all(t.silently_wrong for t in flipped)


def test_every_trial_starts_from_the_tree_save_wrote(tmp_path):
    root = tmp_path / "checkpoint"
    (root / "nested").mkdir(parents=True)
    (root / "a.json").write_text("[1]")
    (root / "nested" / "b.json").write_text("[2]")
    saved = _contents(root)

    def trial():
        seen = _contents(root)
        # Leave a mess for the next trial: a new folder, a rewritten and a removed file.
        (root / "left-behind").mkdir(exist_ok=True)
        if (root / "a.json").exists():
            (root / "a.json").write_text("[3]")
        if (root / "nested" / "b.json").exists():
            (root / "nested" / "b.json").unlink()
        return seen

    result = damage_written_files(root, trial, timeout=20)
    assert [d.name for d in DAMAGES] == ["truncated", "emptied", "bit_flipped", "deleted"]
    assert len(result.trials) == 2 * (1 + 1 + 2 + 1)
    for entry in result.trials:
        seen = dict(entry.value)
        damaged = seen.pop(entry.file, None)
        assert seen == {p: c for p, c in saved.items() if p != entry.file}, entry
        assert (damaged is None) == (entry.damage == "deleted")
        assert damaged != saved[entry.file]
    assert _contents(root) == saved
    assert not (root / "left-behind").exists()


def test_a_refusal_that_load_swallows_is_no_accepted_memory_attack(tmp_path):
    # torch.load refuses each memory attack; a loader that catches the error and goes on has
    # accepted nothing (that it goes on is damaged_files_detected's concern).
    path = tmp_path / "rng.pt"
    torch.save({"rng": torch.get_rng_state()}, path)

    def swallowing():
        try:
            torch.load(path, weights_only=True)
        except Exception:
            pass

    def accepting():
        torch.load(path, weights_only=True, mmap=True)

    assert not attack_written_files(tmp_path, swallowing).harmful
    accepted = {trial.attack for trial in attack_written_files(tmp_path, accepting).harmful}
    assert "storage_record_short" in accepted
