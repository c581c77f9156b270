"""Tests of strategies.models and strategies.model_specs: every drawn model runs forward and
backward, eval mode is deterministic, building is reproducible and seed-dependent, every
family is drawable on its own, failures shrink to a one-layer model, and what each family's
record says holds for the layers it draws and builds."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis.errors import InvalidArgument, NoSuchExample
from torch import nn

from harness import assert_identical, probe
from harness.capabilities import multihead_attention_without_bias_runs, weight_parametrizations
from harness.pickle_scan import referenced_globals
from strategies import _modules
from strategies.model_specs import FAMILY_REGISTRY, family, layer_kind
from strategies.models import (
    FAMILIES,
    ModelCase,
    ModelSpec,
    TiedEmbeddingModel,
    available_families,
    build_model,
    model_specs,
    models,
)

RUNS = settings(database=None, derandomize=True, max_examples=60, deadline=None)
FEW = settings(database=None, derandomize=True, max_examples=6, deadline=None)
# Reachability only needs an example, not the smallest one: no shrinking.
FIND = settings(database=None, derandomize=True, max_examples=2000, phases=[Phase.generate])
SHRINK = settings(database=None, derandomize=True, max_examples=2000)


def uninitialized(module: nn.Module) -> list[str]:
    return [
        name
        for name, parameter in module.named_parameters()
        if isinstance(parameter, nn.parameter.UninitializedParameter)
    ]


def materialized(case: ModelCase) -> ModelCase:
    """``case`` after one eval-mode forward, which initializes any lazy module."""
    case.module.eval()
    with torch.no_grad():
        case.module(*case.example_input)
    case.module.train()
    return case


def eval_output(case: ModelCase):
    case.module.eval()
    with torch.no_grad():
        return case.module(*case.example_input)


@RUNS
@given(models())
def test_forward_and_backward_reach_every_trainable_parameter(case: ModelCase) -> None:
    # An uninitialized lazy model holds UninitializedParameters until its first forward;
    # after it, every parameter is initialized and gets a gradient like any other.
    assert bool(uninitialized(case.module)) == case.spec.has_uninitialized_parameters
    case.module.train()
    loss = case.loss(case.module(*case.example_input))
    assert uninitialized(case.module) == []
    assert loss.dim() == 0 and loss.dtype == torch.float32
    trainable = [name for name, p in case.module.named_parameters() if p.requires_grad]
    if trainable:
        loss.backward()
        missing = [
            name for name, p in case.module.named_parameters() if p.requires_grad and p.grad is None
        ]
        assert missing == []
    else:
        assert not loss.requires_grad
    frozen = [p for p in case.module.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)
    eval_loss = case.loss(eval_output(case))
    assert torch.isfinite(eval_loss) or not torch.isfinite(loss)


@RUNS
@given(models())
def test_eval_forward_is_deterministic(case: ModelCase) -> None:
    first = eval_output(case)
    second = eval_output(case)
    assert_identical(first, second, name="output")
    assert_identical(case.loss(first), case.loss(second), name="loss")


@RUNS
@given(model_specs())
def test_building_is_reproducible_and_leaves_the_global_rng_alone(spec: ModelSpec) -> None:
    rng_before = torch.get_rng_state()
    first, second = build_model(spec, 3), build_model(spec, 3)
    assert_identical(rng_before, torch.get_rng_state(), name="global_rng_state")
    assert_identical(first.example_input, second.example_input, name="example_input")
    assert uninitialized(first.module) == uninitialized(second.module)
    assert list(first.module.state_dict()) == list(second.module.state_dict())
    materialized(first)
    materialized(second)
    assert_identical(first.module.state_dict(), second.module.state_dict(), name="state_dict")


@RUNS
@given(models())
def test_rebuild_changes_every_float_parameter_but_not_the_layout(case: ModelCase) -> None:
    other = case.rebuild(1)
    assert other.spec == case.spec
    assert other.example_input is case.example_input
    materialized(case)
    materialized(other)
    old, new = case.module.state_dict(), other.module.state_dict()
    assert list(old) == list(new)
    assert [v.shape for v in old.values()] == [v.shape for v in new.values()]
    for name, parameter in case.module.named_parameters():
        if parameter.is_floating_point():
            assert not torch.equal(parameter, dict(other.module.named_parameters())[name]), name


@RUNS
@given(models())
def test_a_state_dict_restores_a_rebuilt_model_exactly(case: ModelCase) -> None:
    # Non-persistent buffers are not in the state_dict, so they must not depend on the seed.
    materialized(case)
    fresh = case.rebuild(1)
    fresh.module.load_state_dict(case.module.state_dict(), strict=True)
    assert_identical(case.module.state_dict(), fresh.module.state_dict(), name="state_dict")
    assert_identical(eval_output(case), eval_output(fresh), name="output")


@RUNS
@given(models())
def test_dtypes_are_the_floating_point_dtypes_of_the_state(case: ModelCase) -> None:
    materialized(case)
    tensors = [*case.module.parameters(), *case.module.buffers()]
    assert {t.dtype for t in tensors if t.is_floating_point()} <= case.spec.dtypes
    mixed = case.spec.dtypes - {torch.float32}
    assert mixed <= {p.dtype for p in case.module.parameters()}


@pytest.mark.parametrize("family", available_families())
def test_each_family_is_drawable_alone(family: str) -> None:
    @FEW
    @given(models(families=[family]))
    def check(case: ModelCase) -> None:
        assert case.spec.families == {family}
        assert case.loss(case.module(*case.example_input)).dim() == 0

    check()


def test_families_restrict_what_is_drawn() -> None:
    allowed = {"linear", "activation", "residual"}
    spec = find(
        model_specs(families=sorted(allowed)),
        lambda s: len(s.families) == 3,
        settings=FIND,
    )
    assert spec.families == allowed


def test_a_conv2d_failure_shrinks_to_one_minimal_conv2d() -> None:
    spec = find(model_specs(), lambda s: "conv2d" in s.families, settings=SHRINK)
    assert spec.input.kind == "image"
    assert spec.input.shape == (1, 1, 1, 1)
    (layer,) = spec.layers
    assert layer.kind == "conv2d" and layer.children == ()
    assert dict(layer.options) == {
        "in_channels": 1,
        "out_channels": 1,
        "kernel_size": 1,
        "stride": 1,
        "padding": 0,
        "groups": 1,
        "bias": False,
        "padding_mode": "zeros",
    }


def test_sparse_embeddings_are_drawn_and_flagged() -> None:
    case = find(
        models(families=["embedding", "embedding_bag"]),
        lambda c: c.spec.has_sparse_gradients,
        settings=FIND,
    )
    loss = case.loss(case.module(*case.example_input))
    loss.backward()
    assert any(p.grad is not None and p.grad.is_sparse for p in case.module.parameters())


@pytest.mark.parametrize(
    "description, predicate",
    [
        ("an LSTM with projections", lambda m: isinstance(m, nn.LSTM) and m.proj_size > 0),
        (
            "a bidirectional 2-layer GRU",
            lambda m: isinstance(m, nn.GRU) and m.bidirectional and m.num_layers == 2,
        ),
        ("a non-persistent buffer", lambda m: bool(getattr(m, "_non_persistent_buffers_set", ()))),
        (
            "a bfloat16 submodule",
            lambda m: any(p.dtype == torch.bfloat16 for p in m.parameters(recurse=False)),
        ),
        (
            "a float64 submodule",
            lambda m: any(p.dtype == torch.float64 for p in m.parameters(recurse=False)),
        ),
        (
            "an instance norm with running stats",
            lambda m: (
                isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats
            ),
        ),
        ("a ModuleDict", lambda m: isinstance(m, nn.ModuleDict)),
        ("a ParameterDict", lambda m: isinstance(m, nn.ParameterDict)),
        (
            "a partly frozen linear",
            lambda m: (
                isinstance(m, nn.Linear)
                and m.bias is not None
                and m.bias.requires_grad
                and not m.weight.requires_grad
            ),
        ),
        ("a parametrized module", lambda m: bool(getattr(m, "parametrizations", None))),
    ],
)
def test_features_are_reachable(description: str, predicate) -> None:
    case = find(models(), lambda c: any(predicate(m) for m in c.module.modules()), settings=FIND)
    assert any(predicate(m) for m in case.module.modules()), description


@pytest.mark.parametrize("initialized", [True, False])
def test_lazy_modules_come_initialized_or_not(initialized: bool) -> None:
    case = find(
        models(families=["lazy"]),
        lambda c: c.spec.has_uninitialized_parameters != initialized,
        settings=FIND,
    )
    assert bool(uninitialized(case.module)) != initialized


def test_tied_models_share_one_parameter_between_embedding_and_head() -> None:
    case = find(models(families=["tied"]), lambda c: True, settings=FIND)
    (tied,) = [m for m in case.module.modules() if isinstance(m, TiedEmbeddingModel)]
    assert tied.head.weight is tied.embedding.weight
    assert "head.weight" in dict(tied.state_dict())


def test_batch_norm_tracks_batches_in_train_mode() -> None:
    case = find(models(families=["batch_norm"]), lambda c: True, settings=FIND)
    norm = case.module.layers[0]
    case.module(*case.example_input)
    assert int(norm.num_batches_tracked) == 1


@FEW
@given(models(families=[f for f in available_families() if f != "parametrization"]))
def test_whole_model_pickles_round_trip(case: ModelCase) -> None:
    assert case.spec.whole_model_picklable
    materialized(case)
    buffer = io.BytesIO()
    torch.save(case.module, buffer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    buffer.seek(0)
    options = {"weights_only": False} if probe().load_weights_only else {}
    loaded = torch.load(buffer, **options)
    loaded.eval()
    with torch.no_grad():
        assert_identical(eval_output(case), loaded(*case.example_input), name="output")


def test_parametrized_models_say_they_cannot_be_pickled_whole() -> None:
    case = find(models(families=["parametrization"]), lambda c: True, settings=FIND)
    assert not case.spec.whole_model_picklable
    with pytest.raises(RuntimeError, match="state_dict"):
        torch.save(case.module, io.BytesIO())


@pytest.mark.parametrize(
    "families, message",
    [("linear", "collection"), (["convolution"], "known names"), ([], "nothing")],
)
def test_bad_families_are_refused(families, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        model_specs(families=families)


def test_available_families_are_every_family_the_installed_torch_can_build() -> None:
    # Two families need something of torch: a weight parametrization, a second float dtype.
    needs = {
        "parametrization": bool(weight_parametrizations()),
        "mixed_dtype": bool({torch.float64, torch.bfloat16} & set(probe().dtypes)),
    }
    assert available_families() == tuple(family for family in FAMILIES if needs.get(family, True))


@RUNS
@given(models(families=["lazy", "linear", "residual", "nested"], allow_uninitialized=False))
def test_allow_uninitialized_false_draws_only_initialized_lazy_modules(case: ModelCase) -> None:
    assert not case.spec.has_uninitialized_parameters
    assert uninitialized(case.module) == []


def test_lazy_modules_are_drawn_under_allow_uninitialized_false() -> None:
    spec = find(model_specs(["lazy"], allow_uninitialized=False), lambda s: True, settings=FIND)
    assert "lazy" in spec.families and not spec.has_uninitialized_parameters


@pytest.mark.parametrize("strategy", [model_specs, models])
@pytest.mark.parametrize("value", [0, "no", None])
def test_a_non_bool_allow_uninitialized_is_refused(strategy, value) -> None:
    with pytest.raises(InvalidArgument, match="allow_uninitialized=.* must be True or False"):
        strategy(allow_uninitialized=value)


def trainable_ranks(case: ModelCase) -> frozenset[int]:
    materialized(case)
    return frozenset(p.dim() for p in case.module.parameters() if p.requires_grad)


@RUNS
@given(models())
def test_trainable_parameter_ranks_are_those_of_the_built_model(case: ModelCase) -> None:
    assert case.spec.trainable_parameter_ranks == trainable_ranks(case)


@pytest.mark.parametrize("family", available_families())
def test_trainable_parameter_ranks_hold_for_each_family(family: str) -> None:
    @FEW
    @given(models(families=[family]))
    def check(case: ModelCase) -> None:
        assert case.spec.trainable_parameter_ranks == trainable_ranks(case)

    check()


def has_attention_without_bias(spec: ModelSpec) -> bool:
    return any(
        layer.kind == "multihead_attention" and not layer.option("bias") for layer in spec.walk()
    )


def test_attention_without_bias_is_drawn_only_where_its_eval_forward_runs() -> None:
    specs = model_specs(["multihead_attention"])
    if multihead_attention_without_bias_runs():
        spec = find(specs, has_attention_without_bias, settings=FIND)
        materialized(build_model(spec, 0))
        return
    attention = nn.MultiheadAttention(4, 2, bias=False, batch_first=True).eval()
    x = torch.ones(1, 3, 4)
    with torch.no_grad(), pytest.raises(TypeError, match="qkv_bias"):
        attention(x, x, x)
    with pytest.raises(NoSuchExample):
        find(specs, has_attention_without_bias, settings=FIND)


def test_each_family_is_registered_once_under_its_name() -> None:
    names = [record.name for record in FAMILY_REGISTRY]
    assert len(set(names)) == len(names) and tuple(names) == FAMILIES
    assert all(family(name).name == name for name in names)
    with pytest.raises(InvalidArgument, match="'flatten' is no family"):
        family("flatten")
    with pytest.raises(InvalidArgument, match="kind 'convolution' has no family"):
        layer_kind("convolution")


@pytest.mark.parametrize("name", available_families())
def test_what_a_family_record_says_holds_for_its_layers(name: str) -> None:
    record = family(name)

    @FEW
    @given(models(families=[name]))
    def check(case: ModelCase) -> None:
        spec = case.spec
        assert spec.input.kind in record.input_kinds()
        assert spec.input.shape[0] >= record.min_batch
        layers = [layer for layer in spec.walk() if layer.kind == name]
        assert record.wraps or not any(layer.children for layer in layers)
        if not spec.has_dropout:
            # Nothing random in train mode: copies run from other RNG states agree (copies,
            # since a train-mode forward may change the state: running statistics, ...).
            materialized(case)
            outputs = []
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                for seed in (1, 2):
                    torch.manual_seed(seed)
                    outputs.append(copy.deepcopy(case.module)(*case.example_input))
            assert_identical(outputs[0], outputs[1], name="train-mode output")

    check()


def test_whole_model_pickles_name_the_module_classes_as_strategies_models() -> None:
    # The matrix's committed corpora hold pickles that name strategies.models.<class>.
    spec = find(
        model_specs(["residual", "buffers"]), lambda s: s.families == {"residual", "buffers"}
    )
    buffer = io.BytesIO()
    torch.save(build_model(spec).module, buffer)
    named = {name for name in referenced_globals(buffer.getvalue()) if "strategies" in name}
    assert {"strategies.models.SequentialBody", "strategies.models.Residual"} <= named
    assert {"strategies.models.BufferHolder"} <= named
    assert all(name.startswith("strategies.models.") for name in named), named
    assert all(
        getattr(_modules, name).__module__ == "strategies.models" for name in _modules.__all__
    )
