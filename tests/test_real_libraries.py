"""Real libraries as tests: ``check_checkpointer`` on checkpoint code written with them.

Each checkpointer of ``tests/real_checkpointers.py`` is written the way one library's
documentation shows (safetensors, torch.distributed.checkpoint, Lightning Fabric,
accelerate, TorchScript). The tests here assert the harness's verdict on each, invariant by
invariant: which promises hold, on which draws, and which fail with what cause. A fix
upstream or a regression, in the library or in the harness, makes one of them fail; the
verdicts and figures are in docs/real-libraries.md.

Every library defect found this way also has a standalone reproduction here, plain Python
with no harness, so that it can be reported upstream and the verdict test can be trusted.

Each report is computed once (a module-level cache) with an explicit seed, a few examples,
the invariants named and no shrinking. The tests of a library are skipped where it is not
installed (``pip install -e ".[test]"`` installs them all).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import pickle
import warnings
from dataclasses import dataclass, field

import pytest
import torch

import harness
from harness.capabilities import probe
from harness.report import Report
from strategies.model_specs import available_families
from tests import real_checkpointers as real

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
    # Some hostile payloads are TorchScript archives; torch.load says so before refusing.
    pytest.mark.filterwarnings("ignore:'torch.load' received a zip file"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\..*` is deprecated:DeprecationWarning"),
]

RESUME = (
    "state_restored",
    "resume_equivalence",
    "save_changes_nothing",
    "cuda_tagged_round_trip",
    "hostile_file_runs_nothing",
    "written_files_run_nothing",
    "damaged_files_detected",
)
INFERENCE = tuple(name for name in RESUME if name != "resume_equivalence")


def _needs(package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None, reason=f"needs {package}, not installed"
    )


@functools.cache
def _report(
    make: type,
    purpose: str,
    invariants: tuple[str, ...],
    examples: int,
    seed: int,
    exclude: tuple[str, ...] = (),
) -> Report:
    """The report of ``check_checkpointer`` on ``make()`` (computed once per arguments)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return harness.check_checkpointer(
            make(),
            purpose=purpose,
            max_examples=examples,
            seed=seed,
            exclude=exclude,
            invariants=list(invariants),
            shrink=False,
        )


def _only(families: tuple[str, ...] = (), optimizers: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The exclusions that leave only ``families`` and ``optimizers`` (all, where empty)."""
    kept_families = families or available_families()
    kept_optimizers = optimizers or tuple(probe().optimizers)
    return tuple(
        [name for name in available_families() if name not in kept_families]
        + [name for name in probe().optimizers if name not in kept_optimizers]
    )


def _failed(report: Report) -> set[str]:
    return {result.name for result in report.failures}


def _messages(report: Report, invariant: str) -> str:
    (result,) = [result for result in report.results if result.name == invariant]
    return "\n".join(failure.message for failure in result.failures)


class _CreatesFile:
    """Pickles as a call of ``open(sentinel, "w")``: loading it creates the sentinel."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


@dataclass(frozen=True)
class Verdict:
    """What check_checkpointer says of one library's checkpointer on one kind of draw.

    Attributes:
        name: the test id.
        make: the checkpointer class (tests/real_checkpointers.py).
        purpose: ``"resume"`` or ``"inference"``.
        package: the library it needs.
        exclude: what is left out of the draws (known failures have tests of their own).
        failed: each invariant that fails, with text every one of its failure messages
            together must contain; every other invariant checked holds.
        invariants: the invariants checked.
        examples: examples per invariant.
        seed: the seed of the draws.
    """

    name: str
    make: type
    purpose: str
    package: str
    exclude: tuple[str, ...] = ()
    failed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    invariants: tuple[str, ...] = RESUME
    examples: int = 4
    seed: int = 0

    def report(self) -> Report:
        return _report(
            self.make, self.purpose, self.invariants, self.examples, self.seed, self.exclude
        )


# The draws where torch's own Optimizer.load_state_dict changes the state: parameters in
# float64 or bfloat16 and an optimizer that keeps float32 state beside them
# (pytorch/pytorch#43706). Every resuming library below calls load_state_dict and does
# not undo it; its verdict on everything else is taken without mixed dtypes.
CAST = _only(families=("mixed_dtype",), optimizers=("NAdam", "ASGD"))
CAST_CAUSE = ("likely cause (optimizer_state_cast)",)
# What DCP cannot resume (the standalone reproductions below): SparseAdam and LBFGS, which
# get_state_dict cannot initialize, and SGD, whose momentum-free groups keep no state.
DCP_CANNOT = ("SparseAdam", "LBFGS", "SGD")
# Families whose models TorchScript cannot run: the recurrent and attention layers return
# tuples into a Python loop TorchScript cannot type, and parametrizations (below).
NOT_SCRIPTABLE = ("rnn", "gru", "lstm", "multihead_attention", "parametrization")


def _payload_ran(written: str, attack: str = "reduce_open") -> str:
    """The line of a written file (``path (kind)``) whose code attack ran when loaded."""
    return f"{written} replaced by {attack} (code): load ran the payload's code"


VERDICTS = (
    Verdict(
        "safetensors-inference",
        real.SafetensorsInference,
        "inference",
        "safetensors",
        invariants=INFERENCE,
    ),
    Verdict(
        "safetensors-resume", real.SafetensorsResume, "resume", "safetensors", ("mixed_dtype",)
    ),
    Verdict(
        "dcp",
        real.DistributedCheckpoint,
        "resume",
        "torch",
        ("mixed_dtype", *DCP_CANNOT),
        {
            # .metadata is read with pickle.load.
            "written_files_run_nothing": (_payload_ran("checkpoint.pt/.metadata (plain_pickle)"),),
        },
    ),
    Verdict("fabric", real.FabricCheckpoint, "resume", "lightning_fabric", ("mixed_dtype",)),
    Verdict(
        "accelerate",
        real.AccelerateCheckpoint,
        "resume",
        "accelerate",
        ("mixed_dtype",),
        # Registered objects are read with weights_only=False.
        {
            "written_files_run_nothing": (
                _payload_ran("checkpoint.pt/custom_checkpoint_0.pkl (torch_zip)"),
            ),
            # A damaged random_states_0.pkl is refused by torch and swallowed: the RNG
            # states are not restored (huggingface/accelerate#4283).
            "damaged_files_detected": (
                "checkpoint.pt/random_states_0.pkl truncated",
                "the global RNG states differ from those the undamaged files restore",
            ),
        },
    ),
    Verdict(
        "torchscript",
        real.TorchScriptInference,
        "inference",
        "torch",
        (*NOT_SCRIPTABLE, "buffers"),
        # torch.jit.load runs the archive's TorchScript __setstate__.
        {
            "written_files_run_nothing": (
                _payload_ran("checkpoint.pt (torchscript)", "torchscript_archive"),
            )
        },
        # A hostile file drawn at random may or may not be a TorchScript archive: the
        # written-file attack tries every one.
        invariants=tuple(name for name in INFERENCE if name != "hostile_file_runs_nothing"),
    ),
    # Each cast draw fails state_restored and resume_equivalence, and save changes nothing.
    *(
        Verdict(
            f"{name}-cast",
            make,
            "resume",
            package,
            CAST,
            {"state_restored": CAST_CAUSE, "resume_equivalence": CAST_CAUSE},
            ("state_restored", "resume_equivalence", "save_changes_nothing"),
            examples=4,
        )
        for name, make, package in (
            ("safetensors", real.SafetensorsResume, "safetensors"),
            ("dcp", real.DistributedCheckpoint, "torch"),
            ("fabric", real.FabricCheckpoint, "lightning_fabric"),
            ("accelerate", real.AccelerateCheckpoint, "accelerate"),
        )
    ),
    *(
        Verdict(
            f"dcp-{optimizer}",
            real.DistributedCheckpoint,
            "resume",
            "torch",
            _only(optimizers=(optimizer,)) + ("mixed_dtype",),
            {"state_restored": (f"load raised {error}",)},
            ("state_restored",),
            # Only some SGD draws have a group without momentum beside one with it.
            examples=20,
            seed=3,
        )
        for optimizer, error in (
            ("SparseAdam", "RuntimeError: SparseAdam does not support dense gradients"),
            ("LBFGS", "TypeError: 'NoneType' object is not callable"),
            ("SGD", "RuntimeError: Missing optimizer state for parameter"),
        )
    ),
    Verdict(
        "torchscript-buffers",
        real.TorchScriptInference,
        "inference",
        "torch",
        _only(families=("buffers",)),
        {"state_restored": ("unexpected keys ['layers.0.scale']",)},
        ("state_restored",),
    ),
    *(
        Verdict(
            f"torchscript-{family}",
            real.TorchScriptInference,
            "inference",
            "torch",
            _only(families=(family,)),
            {"state_restored": ("save raised RuntimeError",)},
            ("state_restored",),
            examples=4,
        )
        for family in NOT_SCRIPTABLE[:-1]
    ),
    # Each parametrization fails in its own way: orthogonal and spectral_norm do not compile
    # (a list size TorchScript cannot infer, a comprehension with an if), and a scripted
    # weight_norm raises "Parametrization is not working with scripting" when called.
    Verdict(
        "torchscript-parametrization",
        real.TorchScriptInference,
        "inference",
        "torch",
        _only(families=("parametrization",)),
        {"state_restored": ()},
        ("state_restored",),
        examples=4,
    ),
)


@pytest.mark.parametrize("verdict", VERDICTS, ids=lambda verdict: verdict.name)
def test_verdict(verdict: Verdict):
    if importlib.util.find_spec(verdict.package) is None:
        pytest.skip(f"needs {verdict.package}, not installed")
    report = verdict.report()
    assert [result.name for result in report.results] == list(verdict.invariants)
    assert report.interrupted is None and not report.not_run
    assert _failed(report) == set(verdict.failed), report.table()
    for invariant, texts in verdict.failed.items():
        messages = _messages(report, invariant)
        for text in texts:
            assert text in messages, messages


@_needs("accelerate")
def test_accelerate_runs_code_from_its_registered_objects_files_only(tmp_path):
    """Which of accelerate's files a code payload in its place runs from (every hostile file
    of each file's kind, harness.files.attack_written_files): each
    ``custom_checkpoint_<i>.pkl`` (read with ``weights_only=False``), and none of
    ``model.safetensors``, ``optimizer.bin`` and ``random_states_0.pkl`` (read with
    safetensors and ``weights_only=True``)."""
    from harness.files import attack_written_files

    def state() -> harness.TrainingState:
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        return harness.TrainingState(model, optimizer, scheduler, extra={"epoch": 1})

    path = str(tmp_path / "checkpoint")
    real.AccelerateCheckpoint().save(state(), path)
    result = attack_written_files(tmp_path, lambda: real.AccelerateCheckpoint().load(path, state()))
    ran = {trial.file for trial in result.trials if trial.ran}
    written = {file.path for file in result.files}
    assert written == {
        f"checkpoint/{name}"
        for name in (
            "custom_checkpoint_0.pkl",
            "custom_checkpoint_1.pkl",
            "model.safetensors",
            "optimizer.bin",
            "random_states_0.pkl",
        )
    }
    assert ran == {"checkpoint/custom_checkpoint_0.pkl", "checkpoint/custom_checkpoint_1.pkl"}


# --- Standalone reproductions: plain Python, no harness -----------------------------------


def test_reproduction_dcp_unpickles_the_metadata_file_without_restriction(tmp_path):
    """dcp.load reads ``.metadata`` with a bare ``pickle.load`` (pytorch/pytorch#189308):
    a hostile one runs its code before anything is checked."""
    import torch.distributed.checkpoint as dcp

    sentinel = tmp_path / "payload-ran"
    checkpoint = tmp_path / "checkpoint"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"weight": torch.ones(2)}, checkpoint_id=checkpoint)
        (checkpoint / ".metadata").write_bytes(pickle.dumps(_CreatesFile(str(sentinel))))
        with pytest.raises(BaseException):  # noqa: B017 (CheckpointException, after the payload)
            dcp.load({"weight": torch.zeros(2)}, checkpoint_id=checkpoint)
    assert sentinel.exists()


def test_reproduction_dcp_unpickles_values_with_weights_only_false(tmp_path):
    """Every value that is not a tensor is pickled into the ``.distcp`` file and read back
    with ``torch.load(weights_only=False)``: loading a checkpoint someone else saved runs
    whatever they put in it."""
    import torch.distributed.checkpoint as dcp

    sentinel = tmp_path / "payload-ran"
    checkpoint = tmp_path / "checkpoint"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"epoch": _CreatesFile(str(sentinel))}, checkpoint_id=checkpoint)
        assert not sentinel.exists()
        dcp.load({"epoch": 0}, checkpoint_id=checkpoint)
    assert sentinel.exists()


def test_reproduction_dcp_loads_a_flipped_bit_of_tensor_data_silently(tmp_path):
    """DCP keeps no checksum of what it writes, and each tensor is a torch.save record
    whose CRC-32 torch does not check (pytorch/pytorch#126952): one flipped bit in
    ``__0_0.distcp`` loads as another value, without an error."""
    import torch.distributed.checkpoint as dcp

    weight = torch.arange(16, dtype=torch.float32)
    checkpoint = tmp_path / "checkpoint"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"weight": weight}, checkpoint_id=checkpoint)
        data = checkpoint / "__0_0.distcp"
        raw = bytearray(data.read_bytes())
        at = raw.find(weight.numpy().tobytes())
        assert at >= 0
        raw[at + 4 * 5] ^= 1  # the lowest bit of weight[5]
        data.write_bytes(bytes(raw))
        loaded = {"weight": torch.zeros(16)}
        dcp.load(loaded, checkpoint_id=checkpoint)
    assert loaded["weight"][5].item() == torch.tensor(5.0).nextafter(torch.tensor(6.0)).item()
    assert torch.equal(loaded["weight"][:5], weight[:5])


def test_reproduction_dcp_cannot_set_what_it_got_from_a_partly_stateful_optimizer():
    """SGD keeps a momentum buffer only in groups with momentum; get_state_dict saves that,
    and set_state_dict (strict by default) refuses it: 'Missing optimizer state for
    parameter' (the partial-state case of pytorch/pytorch#192202)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "momentum": 0.9}, {"params": [model.bias]}], lr=0.1
    )
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    assert list(optimizer_state["state"]) == ["weight"]
    with pytest.raises(RuntimeError, match="Missing optimizer state for parameter 'bias'"):
        set_state_dict(
            model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state
        )


@pytest.mark.parametrize(
    "make, error",
    [
        (
            lambda: torch.nn.Embedding(3, 2, sparse=True),
            (RuntimeError, "SparseAdam does not support dense gradients"),
        ),
        (lambda: torch.nn.Linear(2, 2), (TypeError, "'NoneType' object is not callable")),
    ],
    ids=["SparseAdam", "LBFGS"],
)
def test_reproduction_dcp_get_state_dict_of_a_fresh_optimizer_steps_it(make, error):
    """get_state_dict (and set_state_dict) initialize a fresh optimizer's state by stepping
    it on dense zero gradients without a closure, which SparseAdam and LBFGS refuse: DCP
    cannot load into either (its load asks the fresh state for its state_dict first)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    module = make()
    optimizer_class = torch.optim.SparseAdam if error[0] is RuntimeError else torch.optim.LBFGS
    with pytest.raises(error[0], match=error[1]):
        get_state_dict(module, optimizer_class(module.parameters()))


def _accelerator_with_scheduler() -> tuple:
    from accelerate import Accelerator

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return accelerator, scheduler


@_needs("accelerate")
def test_reproduction_accelerate_loads_registered_objects_with_weights_only_false(tmp_path):
    """load_state reads each object registered with register_for_checkpointing (the
    scheduler of accelerate's own checkpointing guide) with ``weights_only=False``: a
    hostile ``custom_checkpoint_0.pkl`` runs its code."""
    accelerator, _ = _accelerator_with_scheduler()
    accelerator.save_state(tmp_path)
    sentinel = tmp_path / "payload-ran"
    torch.save(_CreatesFile(str(sentinel)), tmp_path / "custom_checkpoint_0.pkl")
    with pytest.raises(io.UnsupportedOperation):  # the file opened for writing is then "loaded"
        accelerator.load_state(tmp_path)
    assert sentinel.exists()


@_needs("accelerate")
def test_reproduction_accelerate_resumes_silently_without_its_damaged_rng_file(tmp_path):
    """load_state swallows any error reading ``random_states_0.pkl`` (logged at INFO only,
    huggingface/accelerate#4283): an empty file loads, and the RNG is not restored."""
    accelerator, _ = _accelerator_with_scheduler()
    torch.manual_seed(0)
    saved = torch.get_rng_state()
    accelerator.save_state(tmp_path)
    (tmp_path / "random_states_0.pkl").write_bytes(b"")
    torch.manual_seed(1)
    accelerator.load_state(tmp_path)
    assert not torch.equal(torch.get_rng_state(), saved)


@_needs("accelerate")
def test_reproduction_accelerate_prepare_casts_the_state_of_an_optimizer_that_has_some():
    """With device placement (the default), prepare loads the optimizer's own state_dict
    back into it, and Optimizer.load_state_dict casts state kept in another dtype than the
    parameter's (pytorch/pytorch#43706): preparing after the first step, or after restoring
    a checkpoint by hand, changes NAdam's ``mu_product`` from float32 to float64."""
    from accelerate import Accelerator

    model = torch.nn.Linear(2, 1).double()
    optimizer = torch.optim.NAdam(model.parameters())
    model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
    optimizer.step()
    assert optimizer.state[model.weight]["mu_product"].dtype == torch.float32
    Accelerator(cpu=True).prepare(model, optimizer)
    assert optimizer.state[model.weight]["mu_product"].dtype == torch.float64


class _WithNonPersistentBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(2), persistent=False)

    def forward(self, x):
        return self.linear(x) * self.scale


def test_reproduction_torchscript_makes_non_persistent_buffers_persistent():
    """A buffer registered with ``persistent=False`` is in the state_dict of the scripted
    module and of the one torch.jit.load returns (pytorch/pytorch#45012, #65398)."""
    module = _WithNonPersistentBuffer()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    assert list(module.state_dict()) == ["linear.weight", "linear.bias"]
    assert list(torch.jit.load(buffer).state_dict()) == ["scale", "linear.weight", "linear.bias"]


class _ReturnsTuple(torch.nn.Module):
    def forward(self, x):
        return x, x


class _TakesFirst(torch.nn.Module):
    """Calls a layer whose output type TorchScript cannot infer for the loop variable."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_ReturnsTuple(), torch.nn.Identity()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_reproduction_torchscript_hides_a_compilation_error_on_the_next_try():
    """A failed torch.jit.script leaves the class half defined: scripting another instance
    raises "Can't redefine method: forward" instead of the real error
    (pytorch/pytorch#91504)."""
    with pytest.raises(RuntimeError) as first:
        torch.jit.script(_TakesFirst())
    assert "Can't redefine method" not in str(first.value)
    with pytest.raises(RuntimeError, match="Can't redefine method: forward on class"):
        torch.jit.script(_TakesFirst())
