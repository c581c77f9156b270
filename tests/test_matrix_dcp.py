"""matrix.dcp: DCP checkpoints written at world size 2 by one process group, read back at
world sizes 1 and 3 by one group each, judged by description.

The default run writes one corpus of the DCP items on the installed torch and reads it,
as written and damaged. Across torch 1.13.1 and the installed torch (1.13.1 has no
``torch.distributed.checkpoint``) needs ``.tox/oldest`` and
``HARNESS_MATRIX_TWO_VERSIONS=1``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess

import pytest
import torch

from matrix import dcp
from matrix.describe import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = os.path.join(ROOT, ".tox", "oldest", "bin", "python")

pytestmark = pytest.mark.skipif(
    any(dcp.missing_api(item) for item in dcp.ITEMS),
    reason="the installed torch lacks what the DCP items need",
)


def _descendants() -> set[int]:
    """The processes below this one but multiprocessing's forkserver and resource tracker
    (which serve every launch and end with this process). Other tests of the same process
    may leave helpers of their own running (the sandbox's server): a test compares what runs
    after its launches with what ran before them."""
    from multiprocessing import forkserver, resource_tracker

    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stream:
                    parent = int(stream.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(name))
    found, todo = set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found - {forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, list[dict]]:
    """One corpus of the DCP items, written on the installed torch."""
    directory = str(tmp_path_factory.mktemp("dcp-corpus"))
    return directory, dcp.write_dcp(directory, progress=lambda line: None)


def _outcomes(entries, directory) -> dict[tuple[str, str], tuple[str, str]]:
    results = dcp.read_dcp(entries, directory, progress=lambda line: None)
    assert [(entry["name"], mode) for entry, mode, _, _ in results] == [
        (entry["name"], mode) for mode in dcp.LOAD_MODES for entry in entries
    ]
    return {(entry["name"], mode): (outcome, message) for entry, mode, outcome, message in results}


def _copy(corpus, tmp_path) -> tuple[str, list[dict]]:
    directory, entries = corpus
    copied = str(tmp_path / "corpus")
    shutil.copytree(directory, copied)
    return copied, copy.deepcopy(entries)


def test_every_item_is_written_by_two_ranks_with_its_description(corpus):
    directory, entries = corpus
    assert [entry["name"] for entry in entries] == [f"dcp/{item.name}" for item in dcp.ITEMS]
    for entry in entries:
        assert "unwritable" not in entry, entry
        assert entry["world_size"] == 2 and entry["api"] == "save"
        files = sorted(os.listdir(os.path.join(directory, entry["folder"])))
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    json.dumps(entries)  # the manifest is JSON


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_the_checkpoint_holds_the_seeded_values(corpus):
    """Loaded in this process without a group (DCP's single-process mode), the state_dict
    item holds the writer's seeded tensors, as the manifest describes them."""
    import torch.distributed.checkpoint as checkpoint

    directory, entries = corpus
    generator = torch.Generator().manual_seed(20261201)
    weight = torch.randn(7, 4, generator=generator)
    bias = torch.randn(7, generator=generator)
    state = {
        "linear.weight": torch.zeros(7, 4),
        "linear.bias": torch.zeros(7),
        "embedding.weight": torch.zeros(5, 3, dtype=torch.float64),
        "counts": torch.zeros(5, dtype=torch.int64),
        "scale": torch.zeros((), dtype=torch.bfloat16),
        "step": 0,
    }
    checkpoint.load(state, checkpoint_id=os.path.join(directory, entries[0]["folder"]))
    assert torch.equal(state["linear.weight"], weight) and torch.equal(state["linear.bias"], bias)
    assert state["step"] == 20261201 % 1000
    assert describe(state) == entries[0]["expected"]


def test_read_back_at_one_and_three_ranks_is_identical(corpus):
    directory, entries = corpus
    before = _descendants()
    outcomes = _outcomes(entries, directory)
    assert set(outcomes.values()) == {("identical", "")}, outcomes
    assert _descendants() <= before


def test_writing_twice_gives_the_same_manifest(corpus, tmp_path):
    again = dcp.write_dcp(str(tmp_path), progress=lambda line: None)
    assert again == corpus[1]


def test_a_tampered_manifest_differs_naming_the_tensor(corpus, tmp_path):
    directory, entries = _copy(corpus, tmp_path)
    header = entries[0]["expected"][1][0][1][1]  # linear.weight's header
    header["storage"]["sha256"] = "0" * 64
    outcomes = _outcomes(entries[:1], directory)
    for mode in dcp.LOAD_MODES:
        outcome, message = outcomes[("dcp/state_dict", mode)]
        assert outcome == "differs"
        assert message.startswith("['linear.weight'].storage.sha256: expected '0000")


def _remove(path: str) -> None:
    os.remove(path)


def _empty(path: str) -> None:
    with open(path, "wb"):
        pass


@pytest.mark.parametrize(
    ("damaged", "shard", "damage", "cause"),
    [
        ("state_dict", "__1_0.distcp", _remove, "FileNotFoundError"),
        ("training", "__0_0.distcp", _empty, "EOFError"),
    ],
)
def test_a_damaged_shard_is_an_error_of_its_checkpoint_alone(
    corpus, tmp_path, damaged, shard, damage, cause
):
    directory, entries = _copy(corpus, tmp_path)
    damage(os.path.join(directory, f"dcp--{damaged}", shard))
    before = _descendants()
    outcomes = _outcomes(entries, directory)
    for (name, _), (outcome, message) in outcomes.items():
        if name == f"dcp/{damaged}":
            assert outcome == "error", message
            assert message.startswith("CheckpointException: rank ") and f": {cause}: " in message
        else:  # read in the same launches
            assert (outcome, message) == ("identical", ""), message
    assert _descendants() <= before


def test_ranks_past_the_time_limit_are_crashed_and_ended(corpus, monkeypatch):
    directory, entries = corpus
    # A microsecond: no group can start, load and end in it (0.05 s was enough for a warm
    # forkserver's group of one rank).
    monkeypatch.setattr(dcp, "TIMEOUT", 1e-6)
    before = _descendants()
    outcomes = _outcomes(entries[:1], directory)
    for mode in dcp.LOAD_MODES:
        outcome, message = outcomes[("dcp/state_dict", mode)]
        assert outcome == "crashed" and "did not finish within 1e-06 s" in message, message
    assert _descendants() <= before


_TWO_VERSIONS = os.environ.get("HARNESS_MATRIX_TWO_VERSIONS") == "1" and os.path.isfile(OLDEST)


def _on_oldest(code: str, directory: str) -> list:
    """What ``code`` (given ``directory``) prints as JSON, run by torch 1.13.1."""
    run = subprocess.run(
        [OLDEST, "-c", code, directory],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=True,
    )
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.skipif(
    not _TWO_VERSIONS,
    reason="needs .tox/oldest/bin/python (torch 1.13.1) and HARNESS_MATRIX_TWO_VERSIONS=1",
)
def test_torch_1_13_writes_nothing_and_reads_with_an_error(corpus, tmp_path):
    written = _on_oldest(
        "import json, sys; from matrix.dcp import write_dcp; "
        "print(json.dumps(write_dcp(sys.argv[1], progress=lambda line: None)))",
        str(tmp_path),
    )
    reason = "ImportError: torch 1.13.1 has no torch.distributed.checkpoint"
    assert [entry["name"] for entry in written] == [entry["name"] for entry in corpus[1]]
    assert all(entry["unwritable"].startswith(reason) for entry in written), written
    directory, entries = corpus
    with open(tmp_path / "entries.json", "w") as stream:
        json.dump(entries, stream)
    read = _on_oldest(
        "import json, sys; from matrix.dcp import read_dcp; "
        "entries = json.load(open(sys.argv[1] + '/entries.json')); "
        f"print(json.dumps([r[1:] for r in read_dcp(entries, {directory!r}, lambda line: None)]))",
        str(tmp_path),
    )
    assert len(read) == len(entries) * len(dcp.LOAD_MODES)
    assert all(outcome == "error" and message.startswith(reason) for _, outcome, message in read)


def test_hyperparameters_one_torch_lacks_are_left_out_of_the_description_only():
    """What the reader leaves out where the writer's and its own Adam keep other
    hyperparameters (or StepLR other entries): those entries, and nothing else."""
    model = torch.nn.Linear(2, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)  # adds initial_lr to the groups
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    without = copy.deepcopy(state)
    for group in without["optimizer"]["param_groups"]:
        del group["amsgrad"], group["lr"]
    left = dcp._without_keys(describe(state), {"amsgrad", "lr"})
    assert left == describe(without)
    assert dcp._without_keys(describe(state), set()) == describe(state)
    with_scheduler = {**state, "scheduler": scheduler.state_dict()}
    assert dcp._group_keys(with_scheduler) == sorted(dcp._this_torchs_group_keys())
