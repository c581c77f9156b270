"""Your own models, optimizers and schedulers as check_checkpointer's cases: every drawn
case builds, trains and differs between seeds; what is measured on a model (dropout) is what
the model does; bad arguments are refused early, naming the place; the docs' small CNN and
transformer pass the reference checkpointers, and a checkpointer that forgets their buffers
fails on them."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

import harness
from harness.user_models import (
    UserModel,
    UserModelCase,
    UserTrainingCase,
    describe_callable,
    user_cases,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
DOC = ROOT / "docs" / "your-own-models.md"
sys.path.insert(0, str(EXAMPLES))
import my_models  # noqa: E402  (docs/examples, on the path above)

CNN, TRANSFORMER = my_models.CNN, my_models.TRANSFORMER
SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)


class TinyMLP(nn.Module):
    """No dropout, no buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


MLP = UserModel(TinyMLP, example_input=(torch.randn(3, 4),))
WITH_DROPOUT = UserModel(
    lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), example_input=(torch.ones(2, 4),)
)

_settings = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _parameters(state) -> list[torch.Tensor]:
    return [p.detach().clone() for p in state.model.parameters()]


def _differ(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))


# --- every drawn case builds, differs between seeds, and trains ----------------------------


MIXES = {
    "all yours": dict(
        models=[CNN, TRANSFORMER, MLP],
        optimizers=my_models.OPTIMIZERS,
        schedulers=my_models.SCHEDULERS,
    ),
    "your models": dict(models=[CNN, MLP]),
    "your optimizers": dict(optimizers=[SGD], schedulers=[]),
    "a strategy of models": dict(
        models=st.integers(1, 3).map(
            lambda width: UserModel(
                functools.partial(nn.Linear, 2, width), example_input=(torch.ones(1, 2),)
            )
        ),
        optimizers=st.sampled_from([SGD, functools.partial(torch.optim.Adam, lr=0.01)]),
    ),
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_every_resume_case_builds_two_different_states_and_trains(mix):
    @_settings
    @given(user_cases("resume", **MIXES[mix]))
    def check(case):
        assert isinstance(case, UserTrainingCase) and 1 <= case.steps <= 3
        original, fresh = case.build(0), case.build(1)
        assert original.optimizer is not None
        before = _parameters(original)
        assert not _differ(before, _parameters(case.build(0))), "seed 0 built two models"
        if not case.spec.scaled_output:  # a generated model with nothing else to train
            assert _differ(before, _parameters(fresh)), "seeds 0 and 1 built the same model"
        loss = case.train_step(original)
        assert isinstance(loss, float) and math.isfinite(loss)
        if isinstance(case.spec.model, UserModel):
            assert _differ(before, _parameters(original)), "a training step changed nothing"

    check()


def test_every_inference_case_is_trained_and_rebuilds_untrained_from_another_seed():
    @_settings
    @given(user_cases("inference", models=[CNN, TRANSFORMER, MLP]))
    def check(case):
        assert isinstance(case, UserModelCase)
        fresh = case.rebuild(1).module
        untrained_same_seed = case.rebuild(0).module.state_dict()
        trained = case.module.state_dict()
        assert trained.keys() == fresh.state_dict().keys()
        # Every parameter and buffer of the trained original differs from a fresh build of
        # the same seed, except the ones a step leaves (a buffer that is a count, say).
        changed = [k for k in trained if not torch.equal(trained[k], untrained_same_seed[k])]
        assert changed, "the inference original is the untrained build"
        with torch.no_grad():
            case.module.eval()
            case.module(*case.example_input)

    check()


def test_batch_norm_statistics_of_the_inference_original_move():
    case = UserModelCase(CNN)
    fresh = case.rebuild(1).module
    assert not torch.equal(case.module.features[1].running_mean, fresh.features[1].running_mean)
    assert not torch.equal(case.module.features[1].weight, fresh.features[1].weight)


def test_the_same_seed_builds_the_same_parameters_and_leaves_the_global_rng():
    before = torch.get_rng_state()
    first, second = CNN.module(3).state_dict(), CNN.module(3).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_build_runs_with_python_and_numpy_seeded_too_and_leaves_them_as_they_were():
    import random

    import numpy

    drawn = []

    def build():
        drawn.append((random.random(), float(numpy.random.random())))
        return nn.Linear(2, 2)

    model = UserModel(build, example_input=(torch.ones(1, 2),))
    state = random.getstate(), numpy.random.get_state()[1].tobytes()
    model.module(4), model.module(4), model.module(5)
    assert (random.getstate(), numpy.random.get_state()[1].tobytes()) == state
    assert drawn[0] == drawn[1] != drawn[2]


def test_build_is_given_the_seed_when_it_takes_one():
    seen = []

    def build(seed):
        seen.append((seed, torch.initial_seed()))
        return nn.Linear(2, 2)

    UserModel(build, example_input=(torch.ones(1, 2),)).module(7)
    assert seen == [(7, 7)]


@pytest.mark.parametrize(
    ("model", "dropout"),
    [(CNN, True), (TRANSFORMER, True), (WITH_DROPOUT, True), (MLP, False)],
    ids=["cnn", "transformer", "dropout", "mlp"],
)
def test_has_dropout_is_whether_a_training_forward_draws_random_numbers(model, dropout):
    assert model.has_dropout is dropout
    assert model.uses_host_rng is False
    case = find(user_cases("resume", models=model, optimizers=SGD), lambda case: True)
    assert case.has_dropout is dropout


def test_a_forward_that_draws_from_python_random_uses_the_host_rng():
    class Jitter(nn.Linear):
        def forward(self, x):
            import random

            return super().forward(x * random.uniform(0.9, 1.1))

    model = UserModel(functools.partial(Jitter, 2, 2), example_input=(torch.ones(1, 2),))
    assert model.uses_host_rng and not model.has_dropout


# --- what minimal examples show -------------------------------------------------------------


def test_cases_shrink_to_the_first_model_and_optimizer_and_print_readably():
    strategy = user_cases(
        "resume",
        models=[CNN, TRANSFORMER],
        optimizers=my_models.OPTIMIZERS,
        schedulers=my_models.SCHEDULERS,
    )
    minimal = find(strategy, lambda case: True)
    assert repr(minimal) == (
        "UserTrainingCase(model=SmallCNN, optimizer=SGD(lr=0.05, momentum=0.9), "
        "scheduler=None, steps=1)"
    )
    with_scheduler = find(strategy, lambda case: case.spec.scheduler is not None)
    assert "scheduler=StepLR(step_size=1)" in repr(with_scheduler)
    transformer = find(strategy, lambda case: case.spec.model is TRANSFORMER)
    assert repr(transformer).startswith("UserTrainingCase(model=SmallTransformer(width=16), ")


def test_names_of_callables():
    line = inspect.currentframe().f_lineno + 1
    anonymous = lambda model: None  # noqa: E731
    assert describe_callable(anonymous) == f"lambda at test_user_models.py:{line}"
    assert describe_callable(my_models.adamw_with_decay) == "adamw_with_decay"
    assert describe_callable(torch.optim.AdamW) == "AdamW"
    partial = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)
    assert describe_callable(partial) == "StepLR(step_size=2, gamma=0.5)"
    assert repr(UserModel(TinyMLP, (torch.ones(1, 4),), name="mlp")) == "UserModel('mlp')"


# --- bad arguments --------------------------------------------------------------------------


def _raises_at_line_below() -> nn.Module:
    raise RuntimeError("no such checkpoint folder")


class _BadForward(nn.Linear):
    def forward(self, x):
        return super().forward(x.view(-1, 7))


def _resume(**arguments):
    return user_cases("resume", **arguments)


BAD = {
    "build not callable": (lambda: UserModel(3, (torch.ones(1),)), "build=3 is not callable"),
    "input not a tuple": (
        lambda: UserModel(TinyMLP, torch.ones(3, 4)),
        "must be a tuple of the forward's positional arguments",
    ),
    "build needs arguments": (
        lambda: UserModel(nn.Linear, (torch.ones(1, 2),)),
        "requires the arguments in_features, out_features",
    ),
    "build returns no module": (
        lambda: _resume(models=UserModel(lambda: 3, (torch.ones(1),))),
        "returned a value of type int, not a torch.nn.Module",
    ),
    "build raises": (
        lambda: _resume(models=UserModel(_raises_at_line_below, (torch.ones(1),))),
        "build() raised RuntimeError: no such checkpoint folder (at test_user_models.py:"
        f"{_raises_at_line_below.__code__.co_firstlineno + 1})",
    ),
    "input function returns a tensor": (
        lambda: _resume(models=UserModel(TinyMLP, lambda: torch.ones(3, 4))),
        "example_input() returned a value of type Tensor, not a tuple",
    ),
    "forward fails": (
        lambda: _resume(
            models=UserModel(functools.partial(_BadForward, 2, 2), (torch.ones(1, 2),))
        ),
        f"module(*example_input) raised RuntimeError: shape '[-1, 7]' is invalid for input of "
        f"size 2 (at test_user_models.py:{_BadForward.forward.__code__.co_firstlineno + 1})",
    ),
    "loss not a scalar": (
        lambda: _resume(models=UserModel(TinyMLP, (torch.ones(3, 4),), loss=lambda out: out)),
        "the loss must be a tensor with one element, not one of shape (3, 2)",
    ),
    "nothing to train": (
        lambda: _resume(models=UserModel(nn.ReLU, (torch.ones(3, 4),))),
        "no trainable parameter, and a resume check trains the model",
    ),
    "a bare model class": (
        lambda: _resume(models=[TinyMLP]),
        "models holds TinyMLP, a callable: the harness needs an input to run it, so wrap it",
    ),
    "models a string": (lambda: _resume(models="cnn"), "models='cnn' must be objects"),
    "no models": (lambda: _resume(models=[]), "leave nothing to draw"),
    "optimizer not callable": (
        lambda: _resume(models=MLP, optimizers=[0.1]),
        "optimizers=0.1 is not callable",
    ),
    "optimizer function given parameters": (
        lambda: _resume(models=MLP, optimizers=lambda params: torch.optim.Adam(params)),
        (
            "called with the model, raised TypeError: 'TinyMLP' object is not iterable (at "
            "test_user_models.py:",
            "; a function is given the model: lambda model: torch.optim.AdamW(model.parameters())",
        ),
    ),
    "optimizer returns no optimizer": (
        lambda: _resume(models=MLP, optimizers=lambda model: model),
        "returned a value of type TinyMLP, not a torch.optim.Optimizer",
    ),
    "scheduler returns no scheduler": (
        lambda: _resume(models=MLP, schedulers=[lambda optimizer: 0]),
        "returned a value of type int, which has no step and state_dict methods",
    ),
    "optimizers for inference": (
        lambda: user_cases("inference", models=MLP, optimizers=SGD),
        "optimizers and schedulers apply to purpose='resume' only",
    ),
    "inference without models": (lambda: user_cases("inference"), "needs models="),
    "unknown purpose": (lambda: user_cases("serving", models=MLP), "purpose must be one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_are_refused_early_with_a_sentence(case):
    make, expected = BAD[case]
    with pytest.raises(InvalidArgument) as raised:
        make()
    for text in (expected,) if isinstance(expected, str) else expected:
        assert text in str(raised.value)


def test_a_bad_model_drawn_from_a_strategy_is_refused_when_drawn():
    strategy = _resume(models=st.just(TinyMLP))
    with pytest.raises(InvalidArgument, match="wrap it"):
        find(strategy, lambda case: True)


# --- end to end: the docs' code, and a planted checkpointer --------------------------------


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_docs_show_the_examples_code():
    records, _, module = _blocks("python")[:3]
    # The records without their import line, and the Python example whole, as the files
    # hold them.
    assert records.split("\n", 2)[2] in (EXAMPLES / "my_models.py").read_text()
    assert module in (EXAMPLES / "check_my_models.py").read_text()


class ForgetsBuffers(harness.TrainingCheckpoint):
    """Restores the parameters only: the batch-norm statistics stay the fresh model's."""

    def load(self, path, into, map_location=None):
        buffers = {name: b.clone() for name, b in into.model.named_buffers()}
        super().load(path, into, map_location)
        with torch.no_grad():
            for name, buffer in into.model.named_buffers():
                buffer.copy_(buffers[name])


def test_the_docs_example_passes_the_reference_checkpointers_on_both_models():
    import check_my_models  # docs/examples, on the path above

    reports = check_my_models.check(max_examples=3, seed=0)
    names = [[result.name for result in report.results] for report in reports]
    assert "resume_equivalence" in names[0] and "resume_equivalence" not in names[1]
    for report in reports:
        assert report.ok, [f.message for result in report.failures for f in result.failures]


def test_the_docs_command_line_runs(tmp_path):
    (command,) = _blocks("bash")
    arguments = shlex.split(command.removeprefix("python -m harness "))
    arguments += ["--max-examples", "2", "--seed", "0", "--invariant", "state_restored"]
    done = subprocess.run(
        [sys.executable, "-m", "harness", *arguments, "--out", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True


def test_a_checkpointer_that_forgets_buffers_fails_on_the_users_model():
    report = harness.check_checkpointer(
        ForgetsBuffers(),
        "resume",
        max_examples=5,
        seed=0,
        models=[MLP, CNN],
        optimizers=[SGD],
        invariants=["state_restored"],
        shrink=False,
    )
    (result,) = report.failures
    (failure,) = result.failures
    assert "running_mean" in failure.message and "model_not_restored" in failure.message
    assert failure.minimal_example.startswith("UserTrainingCase(model=SmallCNN, ")
