"""Tests of strategies.optim: every drawn optimizer and scheduler builds, steps and keeps a
state_dict that survives saving, every class of the installed torch is drawable, bad
arguments are refused, failures shrink to SGD with one group and default flags (whichever
other class could show them), and what harness.capabilities records of each optimizer class
and strategies.optim of each scheduler class is what torch does."""

from __future__ import annotations

import collections
import inspect
import io
import math
import pickle

import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis.errors import InvalidArgument, NoSuchExample

from harness import assert_identical
from harness.capabilities import (
    OPTIMIZER_REGISTRY,
    OptimizerConstraints,
    cyclic_lr_cycles_betas,
    optimizer_constraints,
    optimizer_flags_that_run,
    optimizer_param_names,
    probe,
    weights_only_loadable_types,
    weights_only_loads_counter,
)
from strategies.optim import (
    SCHEDULER_REGISTRY,
    STEPS_AT_LEAST,
    ConstantFactor,
    ExponentialFactor,
    OptimizerSpec,
    Scheduler,
    SchedulerSpec,
    build_optimizer,
    build_scheduler,
    optimizer_specs,
    optimizer_step,
    scheduler_record,
    scheduler_specs,
    step_scheduler,
)

# Reachability only needs an example, not the smallest one: no shrinking.
FIND = settings(database=None, derandomize=True, max_examples=200, phases=[Phase.generate])
SHRINK = settings(database=None, derandomize=True, max_examples=200)
STEPS = 3
# SGD has no default learning rate on older torch.
PLAIN_SGD = OptimizerSpec("SGD", groups=((("lr", 0.1),),))


class Net(torch.nn.Module):
    """Two linear layers (two 2-d parameters, two biases), plus two sparse embeddings."""

    def __init__(self, sparse: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.hidden = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 2)
        self.embeddings = (
            torch.nn.ModuleList([torch.nn.Embedding(6, 4, sparse=True) for _ in range(2)])
            if sparse
            else None
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        self.inputs = torch.randn(5, 4, generator=generator)
        self.indices = torch.tensor([0, 2, 3, 3, 5])

    def forward(self) -> torch.Tensor:
        x = self.inputs
        if self.embeddings is not None:
            x = x + sum(embedding(self.indices) for embedding in self.embeddings)
        return self.out(torch.tanh(self.hidden(x))).pow(2).mean()


def make_module(spec: OptimizerSpec) -> Net:
    return Net(sparse=spec.needs_sparse_gradients)


def loss_function(module: Net, optimizer: torch.optim.Optimizer):
    def compute_loss() -> torch.Tensor:
        optimizer.zero_grad()
        loss = module()
        loss.backward()
        return loss

    return compute_loss


def round_trip(value, weights_only: bool = True):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    if probe().load_weights_only:
        return torch.load(buffer, weights_only=weights_only)
    return torch.load(buffer)


def values_in(value) -> list:
    """``value`` and everything inside its dicts, lists and tuples."""
    if isinstance(value, dict):
        return [value, *(found for item in value.values() for found in values_in(item))]
    if isinstance(value, list | tuple):
        return [value, *(found for item in value for found in values_in(item))]
    return [value]


def refused_by_weights_only(state_dict) -> bool:
    """Whether ``state_dict`` holds what ``torch.load(weights_only=True)`` refuses here: a
    bound method (every version, finding 13), or a float or a ``collections.Counter`` where
    the probe says they do not load (1.13.1 refuses both)."""
    if not probe().load_weights_only:
        return False
    values = values_in(state_dict)
    kinds = {type(value) for value in values}
    return (
        any(inspect.ismethod(value) for value in values)
        or (float in kinds and float not in weights_only_loadable_types())
        or (collections.Counter in kinds and not weights_only_loads_counter())
    )


def assert_survives_weights_only_load(state_dict, name: str) -> None:
    """``state_dict`` loads back identical with ``weights_only=True``; where it holds what the
    probe says that loader refuses, it is refused, and loads back identical without it."""
    if refused_by_weights_only(state_dict):
        with pytest.raises(pickle.UnpicklingError):
            round_trip(state_dict)
        loaded = round_trip(state_dict, weights_only=False)
        # A bound method (an old OneCycleLR's or SWALR's anneal_func) comes back bound to a
        # new scheduler: the same function, not the same object.
        methods = {key for key, value in state_dict.items() if inspect.ismethod(value)}
        for key in methods:
            assert loaded[key].__func__ is state_dict[key].__func__, key
        assert_identical(
            {key: value for key, value in state_dict.items() if key not in methods},
            {key: value for key, value in loaded.items() if key not in methods},
            name=name,
        )
        return
    assert_identical(state_dict, round_trip(state_dict), name=name)


def train(spec: OptimizerSpec):
    module = make_module(spec)
    optimizer = build_optimizer(spec, module)
    compute_loss = loss_function(module, optimizer)
    for _ in range(STEPS):
        optimizer_step(optimizer, spec, compute_loss)
    return module, optimizer


@given(optimizer_specs())
def test_drawn_optimizers_build_step_and_keep_state(spec):
    module, optimizer = train(spec)
    groups = optimizer.param_groups
    assert len(groups) == min(len(spec.groups), sum(len(g["params"]) for g in groups))
    for group, options in zip(groups, spec.groups, strict=False):
        assert group["params"], "an empty param group"
        for name, value in options:
            assert group[name] == value, (name, group[name], value)
        for name, value in spec.flags:
            assert group[name] == value, (name, group[name], value)
        if spec.param_names:
            assert len(group["param_names"]) == len(group["params"])
    assert len({dict(options)["lr"] for options in spec.groups if options}) == len(spec.groups)
    for p in module.parameters():
        assert torch.isfinite(p).all()
    if spec.keeps_state:
        assert optimizer.state, f"{spec.name} kept no state after {STEPS} steps"
        trained = {id(p) for group in groups for p in group["params"]}
        assert all(id(p) in trained for p in optimizer.state)


@given(optimizer_specs())
def test_optimizer_state_dicts_survive_weights_only_load(spec):
    _, optimizer = train(spec)
    assert_survives_weights_only_load(optimizer.state_dict(), "optimizer_state_dict")


# LBFGS's strong Wolfe line search divides by the learning rate, which a scheduler such as
# PolynomialLR brings to zero; training cases never pair LBFGS with a scheduler either.
WITHOUT_LBFGS = [name for name in probe().optimizers if name != "LBFGS"]


@given(optimizer_specs(names=WITHOUT_LBFGS), scheduler_specs())
def test_drawn_schedulers_build_step_and_survive_weights_only_load(optimizer_spec, spec):
    module = make_module(optimizer_spec)
    optimizer = build_optimizer(optimizer_spec, module)
    scheduler = build_scheduler(spec, optimizer)
    compute_loss = loss_function(module, optimizer)
    for _ in range(STEPS):
        optimizer_step(optimizer, optimizer_spec, compute_loss)
        step_scheduler(scheduler, float(module().detach()))
    for group in optimizer.param_groups:
        assert math.isfinite(group["lr"]) and group["lr"] >= 0
    state_dict = scheduler.state_dict()
    assert state_dict
    if not scheduler_record(spec.name).state_saves():
        # CyclicLR's state holds a WeakMethod on 1.13.1 (finding 19).
        with pytest.raises(TypeError, match="WeakMethod"):
            torch.save(state_dict, io.BytesIO())
        return
    assert_survives_weights_only_load(state_dict, "scheduler_state_dict")


@pytest.mark.parametrize("name", sorted(probe().optimizers))
def test_every_optimizer_class_is_drawable(name):
    spec = find(optimizer_specs(names=[name]), lambda s: True, settings=FIND)
    assert spec.name == name
    _, optimizer = train(spec)
    assert type(optimizer) is probe().optimizers[name]


@pytest.mark.parametrize("name", sorted(probe().schedulers))
def test_every_scheduler_class_is_drawable(name):
    spec = find(scheduler_specs(names=[name]), lambda s: True, settings=FIND)
    assert spec.name == name
    module = Net()
    optimizer = build_optimizer(PLAIN_SGD, module)
    scheduler = build_scheduler(spec, optimizer)
    assert type(scheduler) is probe().schedulers[name]


def test_sparse_adam_is_drawn_only_when_named():
    if "SparseAdam" not in probe().optimizers:
        pytest.skip("the installed torch has no SparseAdam")
    with pytest.raises(NoSuchExample):
        find(optimizer_specs(), lambda spec: spec.name == "SparseAdam", settings=FIND)
    named = optimizer_specs(names=["SGD", "SparseAdam"])
    find(named, lambda spec: spec.name == "SparseAdam", settings=FIND)


@given(optimizer_specs())
def test_default_optimizers_train_a_dense_model(spec):
    module = Net(sparse=False)
    optimizer = build_optimizer(spec, module)
    compute_loss = loss_function(module, optimizer)
    optimizer_step(optimizer, spec, compute_loss)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_two_group_failure_shrinks_to_sgd_with_default_flags():
    spec = find(optimizer_specs(), lambda s: len(s.groups) == 2, settings=SHRINK)
    assert spec.name == "SGD"
    assert len(spec.groups) == 2
    assert spec.flags == ()
    assert not spec.param_names
    assert [dict(group)["momentum"] for group in spec.groups] == [0.0, 0.0]


# Written out, not taken from the strategies: SGD's first learning rate and the defaults of
# its hyperparameters.
SIMPLEST_SGD = OptimizerSpec(
    "SGD",
    (
        (
            ("lr", 0.01),
            ("momentum", 0.0),
            ("nesterov", False),
            ("dampening", 0.0),
            ("weight_decay", 0.0),
        ),
    ),
)


@pytest.mark.parametrize(
    "names", [None, sorted(probe().optimizers)], ids=["default", "every class"]
)
def test_the_simplest_optimizer_spec_is_sgd_with_one_group(names):
    """Hypothesis prefers the example that takes fewer choices, so no class may take fewer
    than SGD (LBFGS, with one group and no flags, did, and SparseAdam)."""
    assert find(optimizer_specs(names=names), lambda s: True, settings=SHRINK) == SIMPLEST_SGD


FLAGS = [
    (name, flag)
    for name in sorted(probe().optimizers)
    for flag in sorted(optimizer_flags_that_run(name))
]


@pytest.mark.parametrize(("name", "flag"), FLAGS)
def test_every_flag_that_runs_is_drawable(name, flag):
    spec = find(
        optimizer_specs(names=[name]),
        lambda s: dict(s.flags).get(flag) is True,
        settings=FIND,
    )
    _, optimizer = train(spec)
    assert all(group[flag] is True for group in optimizer.param_groups)


@pytest.mark.parametrize(
    ("name", "option"),
    [("SGD", "nesterov"), ("SGD", "dampening"), ("Adam", "amsgrad"), ("AdamW", "amsgrad")]
    + [("RMSprop", "centered"), ("RMSprop", "momentum")],
)
def test_class_specific_options_are_drawable(name, option):
    find(
        optimizer_specs(names=[name]),
        lambda s: any(dict(group)[option] for group in s.groups),
        settings=FIND,
    )


@pytest.mark.skipif(not optimizer_param_names(), reason="no param_names in param groups here")
def test_param_names_are_drawable():
    spec = find(optimizer_specs(), lambda s: s.param_names, settings=FIND)
    module = make_module(spec)
    optimizer = build_optimizer(spec, module)
    names = [n for g in optimizer.param_groups for n in g["param_names"]]
    assert names == [n for n, _ in module.named_parameters()][: len(names)]


def test_groups_merge_when_the_module_has_fewer_parameters():
    spec = OptimizerSpec("SGD", groups=((("lr", 0.1),), (("lr", 0.2),), (("lr", 0.3),)))
    optimizer = build_optimizer(spec, torch.nn.Linear(2, 2))
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.2]
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 1]


def test_groups_split_parameters_in_order():
    spec = OptimizerSpec("SGD", groups=((("lr", 0.1),), (("lr", 0.2),)))
    module = Net()
    optimizer = build_optimizer(spec, module)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert params == list(module.parameters())
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]


@pytest.mark.parametrize(
    ("constraint", "module", "message"),
    [
        ("sparse_gradients_only", torch.nn.Linear(2, 2), "sparse"),
        ("matrix_parameters_only", torch.nn.LayerNorm(3), "2-d"),
    ],
)
def test_modules_that_cannot_serve_a_spec_are_refused(constraint, module, message):
    names = [r.name for r in OPTIMIZER_REGISTRY if getattr(r, constraint)]
    names = [name for name in names if name in probe().optimizers]
    if not names:
        pytest.skip(f"the installed torch has no optimizer with {constraint}")
    for name in names:
        with pytest.raises(InvalidArgument, match=message):
            build_optimizer(OptimizerSpec(name), module)


def test_each_optimizer_class_is_registered_once():
    names = [record.name for record in OPTIMIZER_REGISTRY]
    assert len(set(names)) == len(names)
    assert all(optimizer_constraints(r.name) is r for r in OPTIMIZER_REGISTRY)
    # A class of a newer torch that is not recorded yet: drawn, without constraints.
    assert optimizer_constraints("NoSuchOptimizer") == OptimizerConstraints("NoSuchOptimizer")
    assert set(probe().optimizers) <= set(names), "record the constraints of the new classes"


def _refused(action) -> bool:
    try:
        action()
    except Exception:  # torch refuses with TypeError, ValueError or RuntimeError
        return True
    return False


def _stepped(name, params, *, sparse, closure=True, groups=1, **options):
    """``name`` built over ``params`` (in ``groups`` groups) and stepped twice on a quadratic
    loss, with sparse gradients where ``sparse``."""
    param_groups = [{"params": params[i::groups]} for i in range(groups)]
    optimizer = probe().optimizers[name](param_groups, lr=0.01, **options)

    def compute_loss() -> torch.Tensor:
        optimizer.zero_grad()
        loss = sum(((p.double() - 0.5) ** 2).sum() for p in params)
        loss.backward()
        if sparse:
            for p in params:
                p.grad = p.grad.to_sparse()
        return loss

    for _ in range(2):
        if closure:
            optimizer.step(compute_loss)
        else:
            compute_loss()
            optimizer.step()
    return optimizer


def _matrices(*dtypes):
    return [torch.nn.Parameter(torch.ones(2, 2, dtype=dtype)) for dtype in dtypes]


@pytest.mark.parametrize(
    "record",
    [record for record in OPTIMIZER_REGISTRY if record.name in probe().optimizers],
    ids=lambda record: record.name,
)
def test_the_recorded_constraints_are_what_torch_does(record):
    name, sparse = record.name, record.sparse_gradients_only
    assert _refused(lambda: _stepped(name, _matrices(torch.float32), sparse=False)) == sparse
    vector = [torch.nn.Parameter(torch.ones(3))]
    assert _refused(lambda: _stepped(name, vector, sparse=sparse)) == record.matrix_parameters_only
    two = _matrices(torch.float32, torch.float32)
    assert _refused(lambda: _stepped(name, two, sparse=sparse, closure=False)) == (
        record.needs_closure
    )
    assert _refused(lambda: _stepped(name, two, sparse=sparse, groups=2)) == record.single_group

    def keeps_tensors(optimizer) -> bool:
        return any(
            isinstance(v, torch.Tensor) for s in optimizer.state.values() for v in s.values()
        )

    assert keeps_tensors(_stepped(name, _matrices(torch.float32), sparse=sparse)) != bool(
        record.stateless_without
    )
    if record.stateless_without:
        options = {record.stateless_without: 0.9}
        assert keeps_tensors(_stepped(name, _matrices(torch.float32), sparse=sparse, **options))

    params = _matrices(torch.float32, torch.float64)
    optimizer = _stepped(name, params, sparse=sparse)

    def dtypes(value) -> set[torch.dtype]:
        values = value if isinstance(value, list) else [value]
        return {v.dtype for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()}

    own = {
        key
        for p in params
        for key, value in optimizer.state[p].items()
        if key != "step" and dtypes(value) - {p.dtype}
    }
    assert own == set(record.own_dtype_state)


def test_unknown_optimizer_is_refused():
    with pytest.raises(InvalidArgument, match="no optimizer 'NoSuchOptimizer'"):
        build_optimizer(OptimizerSpec("NoSuchOptimizer"), torch.nn.Linear(2, 2))


def test_unknown_scheduler_is_refused():
    optimizer = build_optimizer(PLAIN_SGD, Net())
    with pytest.raises(InvalidArgument, match="no scheduler 'NoSuchScheduler'"):
        build_scheduler(SchedulerSpec("NoSuchScheduler"), optimizer)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("SGD", torch.nn.Linear(2, 2)), "spec='SGD' must be of type OptimizerSpec"),
        ((PLAIN_SGD, [torch.nn.Parameter(torch.ones(2))]), "must be of type Module, e.g."),
    ],
)
def test_build_optimizer_refuses_what_is_not_a_spec_and_a_module(arguments, message):
    with pytest.raises(InvalidArgument, match=message):
        build_optimizer(*arguments)


def test_build_scheduler_refuses_what_is_not_a_spec_and_an_optimizer():
    optimizer = build_optimizer(PLAIN_SGD, Net())
    with pytest.raises(InvalidArgument, match="spec='StepLR' must be of type SchedulerSpec"):
        build_scheduler("StepLR", optimizer)
    with pytest.raises(InvalidArgument, match="must be of type Optimizer, e.g."):
        build_scheduler(SchedulerSpec("StepLR", (("step_size", 1),)), PLAIN_SGD)


@pytest.mark.parametrize("strategy", [optimizer_specs, scheduler_specs])
@pytest.mark.parametrize("names", ["SGD", [1], ["NoSuchClass"], []])
def test_bad_names_are_refused(strategy, names):
    with pytest.raises(InvalidArgument):
        strategy(names=names)


def test_cyclic_momentum_is_off_without_momentum():
    spec = SchedulerSpec(
        "CyclicLR", (("base_lr", 0.001), ("max_lr", 0.1), ("cycle_momentum", True))
    )
    module = Net()
    without = build_scheduler(spec, build_optimizer(OptimizerSpec("Adagrad"), module))
    assert not without.cycle_momentum
    sgd = OptimizerSpec("SGD", groups=((("lr", 0.01), ("momentum", 0.9)),))
    with_momentum = build_scheduler(spec, build_optimizer(sgd, module))
    assert with_momentum.cycle_momentum
    adam = build_scheduler(spec, build_optimizer(OptimizerSpec("Adam"), module))
    assert adam.cycle_momentum == cyclic_lr_cycles_betas()


def test_lambda_factors_are_kept_in_the_state_dict():
    optimizer = build_optimizer(
        OptimizerSpec("SGD", groups=((("lr", 0.1),), (("lr", 0.2),))), Net()
    )
    spec = SchedulerSpec(
        "LambdaLR", (("lr_lambda", (ExponentialFactor(0.9), ConstantFactor(0.5))),)
    )
    scheduler = build_scheduler(spec, optimizer)
    assert scheduler.state_dict()["lr_lambdas"] == [{"rate": 0.9}, {"value": 0.5}]
    assert spec.options[0][1][0].rate == 0.9


def test_a_spec_giving_children_to_a_scheduler_that_holds_none_is_refused():
    optimizer = build_optimizer(PLAIN_SGD, Net())
    child = SchedulerSpec("ExponentialLR", (("gamma", 0.9),))
    spec = SchedulerSpec("StepLR", (("step_size", 1),), children=(child,))
    with pytest.raises(InvalidArgument, match="StepLR holds no child schedulers"):
        build_scheduler(spec, optimizer)


def test_a_subclass_of_a_scheduler_that_needs_the_metric_is_given_it():
    class Plateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
        pass

    optimizer = build_optimizer(PLAIN_SGD, Net())
    scheduler = Plateau(optimizer, mode="max", factor=0.5, patience=0)
    # The same metric twice is no improvement in mode "max": the learning rate halves.
    step_scheduler(scheduler, 1.0)
    step_scheduler(scheduler, 1.0)
    assert optimizer.param_groups[0]["lr"] == 0.05


# --- the scheduler registry ---------------------------------------------------------------


def test_each_scheduler_class_is_registered_once():
    names = [record.name for record in SCHEDULER_REGISTRY]
    assert len(set(names)) == len(names)
    assert all(scheduler_record(r.name) is r for r in SCHEDULER_REGISTRY)
    # A class of a newer torch that is not recorded yet: drawn, without arguments.
    assert scheduler_record("NoSuchScheduler") == Scheduler("NoSuchScheduler")
    assert set(probe().schedulers) <= set(names), "record the new scheduler classes"


def test_every_step_limit_leaves_room_for_the_steps_promised():
    limited = [record for record in SCHEDULER_REGISTRY if record.step_limit]
    assert [record.name for record in limited] == ["OneCycleLR"]
    for record in limited:
        [option] = [option for option in record.options if option.name == record.step_limit]
        assert min(option.choices) >= STEPS_AT_LEAST


def _momenta_while_stepping(scheduler, optimizer, steps: int) -> set[float]:
    momenta = set()
    for _ in range(steps):
        optimizer.step()
        step_scheduler(scheduler, 1.0)
        momenta.update(group["momentum"] for group in optimizer.param_groups)
    return momenta


@pytest.mark.parametrize(
    "record",
    [record for record in SCHEDULER_REGISTRY if record.name in probe().schedulers],
    ids=lambda record: record.name,
)
def test_the_recorded_scheduler_facts_are_what_torch_does(record):
    spec = find(scheduler_specs(names=[record.name]), lambda s: True, settings=FIND)
    if "cycle_momentum" in dict(spec.options):
        options = dict(spec.options, cycle_momentum=True)
        spec = SchedulerSpec(spec.name, tuple(options.items()), spec.children)
    momentum = OptimizerSpec("SGD", ((("lr", 0.1), ("momentum", 0.9)),))

    def built():
        optimizer = build_optimizer(momentum, Net())
        return build_scheduler(spec, optimizer), optimizer

    scheduler, optimizer = built()
    optimizer.step()
    if record.needs_metric:
        with pytest.raises(TypeError, match="metrics"):
            scheduler.step()
    else:
        scheduler.step()

    # Every drawn scheduler steps STEPS_AT_LEAST times; one with a step limit no further.
    scheduler, optimizer = built()
    steps = dict(spec.options).get(record.step_limit, STEPS_AT_LEAST)
    momenta = _momenta_while_stepping(scheduler, optimizer, steps)
    assert (len(momenta) > 1) == record.cycles_momentum, momenta
    if record.step_limit:
        with pytest.raises(ValueError, match="total steps"):
            step_scheduler(scheduler, 1.0)
    else:
        _momenta_while_stepping(scheduler, optimizer, 1)

    saves = not _refused(lambda: torch.save(scheduler.state_dict(), io.BytesIO()))
    assert saves == record.state_saves()

    holders = [r for r in SCHEDULER_REGISTRY if r.children[1] and r.name in probe().schedulers]
    if record.chainable:
        for holder in holders:
            options = (("milestones", (2,)),) if holder.milestone_gaps[1] else ()
            composite = SchedulerSpec(holder.name, options, (spec, spec))
            optimizer = build_optimizer(momentum, Net())
            _momenta_while_stepping(build_scheduler(composite, optimizer), optimizer, 4)
