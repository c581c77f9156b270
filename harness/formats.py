"""Every format a model leaves the training process in besides ``torch.save``, as invariants.

One :class:`Format` record per format, registered once in :data:`FORMAT_REGISTRY`: how a
model is written and read back, how the outputs are compared, and the check that runs as a
main-job invariant (:func:`format_invariants`). Each check takes one drawn model and raises
``AssertionError`` when the format breaks its promise; a model the exporter refuses is not a
failure but an observation naming the model's families and the exporter's own message, so
which families a format takes is derived by running it (:func:`family_verdicts`, the table
in ``docs/formats.md``), never declared by hand.

The loaders of these formats also meet hostile files (:data:`FORMAT_ATTACKS`): a TorchScript
archive, ``.pt2`` archives with a hostile pickle inside, hostile safetensors headers, each
loaded by that format's own loader in a forked child (:func:`format_attack_outcomes`).

Run ``python -m harness.formats`` for the per-family table and the hostile-file table.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import find
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.compare import assert_identical, computed, find_difference, storage_key
from harness.files import SAFETENSORS_ATTACKS, Isolated, run_isolated
from harness.persistence import explain_error
from harness.suite import Invariant
from strategies.model_specs import available_families
from strategies.models import ModelCase, models
from strategies.payloads import attack
from strategies.tensors import dtypes, tensors

__all__ = [
    "FORMATS",
    "FORMAT_ATTACKS",
    "FORMAT_REGISTRY",
    "ONNX_TOLERANCES",
    "FamilyVerdict",
    "Format",
    "FormatAttack",
    "FormatAttackOutcome",
    "Refused",
    "attack_table",
    "family_table",
    "family_verdicts",
    "format_attack_outcomes",
    "format_invariants",
    "format_record",
    "safetensors_dtypes",
    "second_input",
]

# The init seed of the fresh instance a state_dict is loaded into (another random init).
_FRESH_INIT_SEED = 1
# The second input of torch.export's check: drawn from this seed, same shape and dtype.
_SECOND_INPUT_SEED = 7


class Refused(Exception):
    """The format's exporter (or runtime) does not take this model: the message is its own."""


def _eval_output(module: torch.nn.Module, example_input: tuple) -> Any:
    module.eval()
    with torch.no_grad():
        return computed(module(*example_input))


def _families(case: ModelCase) -> str:
    return ", ".join(sorted(case.spec.families)) or "flatten"


def _refusal(name: str, case: ModelCase, error: BaseException) -> str:
    return f"{name} refuses a model of {_families(case)}: {explain_error(error)}"


def second_input(case: ModelCase) -> tuple[torch.Tensor, ...]:
    """An input of the same shape and dtype as ``case.example_input`` with other values."""
    generator = torch.Generator().manual_seed(_SECOND_INPUT_SEED)
    (first,) = case.example_input
    if case.spec.input.kind == "tokens":
        return (torch.randint(0, case.spec.input.vocabulary, first.shape, generator=generator),)
    return (torch.randn(first.shape, generator=generator),)


# --- safetensors -------------------------------------------------------------------------------


@functools.cache
def safetensors_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes both the installed torch (``probe().dtypes``) and safetensors save: each
    tried by saving and loading a two-element tensor (an empty tuple without safetensors)."""
    try:
        from safetensors.torch import load, save
    except ImportError:
        return ()
    from harness.capabilities import probe

    shared = []
    for dtype in probe().dtypes:
        try:
            tensor = torch.zeros(2, dtype=dtype)
            if load(save({"t": tensor}))["t"].dtype == dtype:
                shared.append(dtype)
        except Exception:  # a dtype one side lacks: not shared
            continue
    return tuple(shared)


def _shares_storage(state: dict[str, torch.Tensor]) -> bool:
    keys = [storage_key(tensor) for tensor in state.values() if tensor.numel()]
    return len(keys) != len(set(keys))


def _safetensors_examples() -> st.SearchStrategy:
    shared = safetensors_dtypes()
    if not shared:
        return st.tuples(models(), st.just({}), st.just({}))
    by_dtype = st.lists(
        tensors(dtypes(include=shared), layouts=st.just("contiguous")), max_size=3
    ).map(lambda found: {f"t{index}": tensor for index, tensor in enumerate(found)})
    metadata = st.dictionaries(
        st.text("abcdefgh_", min_size=1, max_size=6), st.text(max_size=8), max_size=3
    )
    return st.tuples(models(), by_dtype, metadata)


def _in_order(loaded: dict, saved: dict) -> dict:
    """``loaded`` in the key order of ``saved`` (safetensors promises the keys, not their
    order); the same keys are asserted first."""
    assert set(loaded) == set(saved), f"keys {sorted(loaded)} came back for {sorted(saved)}"
    return {key: loaded[key] for key in saved}


def _empty_metadata_finding(path: str) -> str:
    """What ``load_file`` does with a file of no tensors saved with ``metadata={}``."""
    from safetensors.torch import load_file

    try:
        load_file(path)
    except Exception as error:
        return (
            "finding: safetensors saving no tensors with metadata={} (save_file or save_model) "
            f"writes a header its own load_file refuses: {explain_error(error)} "
            "(safetensors/safetensors#466, #601)"
        )
    return "no tensors saved with metadata={} read back"


def safetensors_round_trip(example: tuple[ModelCase, dict, dict]) -> Iterator[str]:
    """safetensors keeps tensors and metadata, and handles shared tensors as documented.

    ``save_file``/``load_file`` give back identical tensors of every drawn dtype (those
    :func:`safetensors_dtypes` lists) and the metadata exactly; a model's state_dict whose
    tensors share storage (tied weights) is refused by ``save_file``, as its documentation
    says, and saved by ``save_model``, whose ``load_model`` into a fresh instance restores
    the state_dict and the eval outputs bit-identical; an untied state_dict also goes
    through ``save_file``/``load_file`` identical.
    """
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file, load_model, save_file, save_model
    except ImportError:
        yield "safetensors is not installed: not checked"
        return
    case, by_dtype, metadata = example
    if case.spec.has_uninitialized_parameters:
        _eval_output(case.module, case.example_input)  # initializes the lazy modules
    expected = _eval_output(case.module, case.example_input)
    state = case.module.state_dict()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "tensors.safetensors")
        save_file(by_dtype, path, metadata=metadata)
        if by_dtype or metadata != {}:
            assert_identical(
                by_dtype, _in_order(load_file(path), by_dtype), name="load_file(save_file(tensors))"
            )
            with safe_open(path, "pt") as opened:
                kept = opened.metadata() or {}
            assert kept == metadata, f"metadata {metadata!r} came back as {kept!r}"
        else:
            yield _empty_metadata_finding(path)

        model_path = os.path.join(directory, "model.safetensors")
        if not state and metadata == {}:
            save_model(case.module, model_path, metadata=metadata)
            yield _empty_metadata_finding(model_path)
            return
        if _shares_storage(state):
            try:
                save_file(state, model_path)
            except RuntimeError as error:
                message = str(error)
                assert "share" in message and "save_model" in message, (
                    f"a refusal that does not point to save_model: {explain_error(error)}"
                )
                yield "save_file refuses a state_dict with shared tensors, naming save_model"
            else:
                raise AssertionError("save_file saved a state_dict whose tensors share storage")
        else:
            strided = sorted(name for name, tensor in state.items() if not tensor.is_contiguous())
            if strided:
                # As safetensors documents: save_file takes contiguous tensors only (an
                # orthogonal parametrization's base is a strided view), save_model makes them so.
                try:
                    save_file(state, model_path)
                except ValueError as error:
                    assert "contiguous" in str(error), (
                        f"a refusal that does not say why: {explain_error(error)}"
                    )
                    yield "save_file refuses a non-contiguous tensor, asking for .contiguous()"
                else:
                    raise AssertionError(f"save_file saved the non-contiguous {strided}")
            saved = {name: tensor.contiguous() for name, tensor in state.items()}
            save_file(saved, model_path)
            assert_identical(
                saved, _in_order(load_file(model_path), saved), name="load_file(save_file(state))"
            )
        save_model(case.module, model_path, metadata=metadata)
        fresh = case.rebuild(_FRESH_INIT_SEED)
        if fresh.spec.has_uninitialized_parameters:
            _eval_output(fresh.module, fresh.example_input)
        missing, unexpected = load_model(fresh.module, model_path, strict=True)
        assert not missing and not unexpected, (missing, unexpected)
    assert_identical(state, fresh.module.state_dict(), name="state_dict after load_model")
    assert_identical(expected, _eval_output(fresh.module, case.example_input), name="eval output")


# --- TorchScript -------------------------------------------------------------------------------


def _scripted(case: ModelCase) -> tuple[torch.jit.ScriptModule, str]:
    """``torch.jit.script`` of the model, else (scripting fails, or the scripted module fails
    on the example input) ``torch.jit.trace`` on its example input, and which; raises
    :class:`Refused` with both messages when neither takes it."""
    try:
        scripted = torch.jit.script(case.module)
        with torch.no_grad():
            scripted(*case.example_input)
        return scripted, "script"
    except Exception as script_error:
        try:
            with torch.no_grad():
                traced = torch.jit.trace(case.module, case.example_input, check_trace=False)
        except Exception as trace_error:
            raise Refused(
                f"script: {explain_error(script_error)}; trace: {explain_error(trace_error)}"
            ) from trace_error
        return traced, f"trace (script: {explain_error(script_error)})"


def torchscript_round_trip(case: ModelCase) -> Iterator[str]:
    """A TorchScript archive gives the eager module's outputs and state back.

    The eval-mode model is scripted (traced where scripting fails), saved with
    ``torch.jit.save`` and read with ``torch.jit.load``: its eval outputs on the example
    input are bit-identical to the eager module's, and its ``state_dict`` loads with
    ``strict=True`` into a fresh eager instance that then gives the same outputs. Known:
    TorchScript makes non-persistent buffers persistent (pytorch/pytorch#45012), reported
    as a finding and left out of the strict load.
    """
    module = case.module
    expected = _eval_output(module, case.example_input)
    try:
        scripted, how = _scripted(case)
    except Refused as refusal:
        yield f"torchscript refuses a model of {_families(case)}: {refusal}"
        return
    yield f"torchscript takes a model of {_families(case)} by {how.split(' ')[0]}"
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer, map_location="cpu")
    assert_identical(expected, _eval_output(loaded, case.example_input), name="scripted output")
    state = loaded.state_dict()
    non_persistent = {
        f"{prefix}.{name}" if prefix else name
        for prefix, submodule in module.named_modules()
        for name in getattr(submodule, "_non_persistent_buffers_set", ())
    }
    leaked = sorted(non_persistent & set(state))
    if leaked:
        yield (
            "finding: torch.jit.save keeps non-persistent buffers in the archive's state_dict "
            f"({', '.join(leaked)}; pytorch/pytorch#45012)"
        )
        state = {key: value for key, value in state.items() if key not in non_persistent}
    fresh = case.rebuild(_FRESH_INIT_SEED)
    fresh.module.load_state_dict(state, strict=True)
    assert_identical(
        expected,
        _eval_output(fresh.module, case.example_input),
        name="eager output after loading the scripted state_dict",
    )


# --- torch.export ------------------------------------------------------------------------------


def export_round_trip(case: ModelCase) -> Iterator[str]:
    """A ``.pt2`` archive of ``torch.export`` computes what the eager module computes.

    The eval-mode model is exported on its example input, saved with ``torch.export.save``
    and read with ``torch.export.load``; the loaded program's module gives bit-identical
    outputs to the eager module's on the example input and on a second input of the same
    shape (:func:`second_input`).
    """
    module = case.module
    other = second_input(case)
    with _without_attention_fast_path():
        expected = _eval_output(module, case.example_input)
        expected_other = _eval_output(module, other)
    try:
        with torch.no_grad():
            program = torch.export.export(module, case.example_input)
    except Exception as error:
        yield _refusal("torch.export", case, error)
        return
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    with torch.no_grad():
        actual = computed(loaded(*case.example_input))
        actual_other = computed(loaded(*other))
    assert_identical(expected, actual, name="exported output on the example input")
    assert_identical(expected_other, actual_other, name="exported output on a second input")
    yield f"torch.export takes a model of {_families(case)}"
    if find_difference(_eval_output(module, case.example_input), actual) is not None:
        yield (
            "finding: eager MultiheadAttention's eval fast path and the exported program "
            "(which computes the composite path) differ in the last bits"
        )


@contextlib.contextmanager
def _without_attention_fast_path() -> Iterator[None]:
    """Eager modules computing what an exported program computes: ``MultiheadAttention``
    and the transformer layers leave their fused eval fast path (a kernel of its own,
    whose last bits differ) for the composite path ``torch.export`` traces."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    enabled = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(enabled)


# --- ONNX --------------------------------------------------------------------------------------

#: The agreement asked of onnxruntime with eager torch, per family: ``(rtol, atol)``; a model
#: gets the loosest of its families' (a family not listed: ``ONNX_TOLERANCES["default"]``).
#: float32 kernels differ in the order of their sums; the bfloat16 of ``mixed_dtype`` keeps 8
#: bits of mantissa; recurrent and attention layers compose many sums and exponentials.
ONNX_TOLERANCES: dict[str, tuple[float, float]] = {
    "default": (1e-5, 1e-6),
    "mixed_dtype": (2e-2, 2e-2),
    "rnn": (1e-4, 1e-5),
    "gru": (1e-4, 1e-5),
    "lstm": (1e-4, 1e-5),
    "multihead_attention": (1e-4, 1e-5),
    "transformer_encoder_layer": (1e-4, 1e-5),
}


def _tolerance(case: ModelCase) -> tuple[float, float]:
    found = [ONNX_TOLERANCES.get(name, ONNX_TOLERANCES["default"]) for name in case.spec.families]
    found = found or [ONNX_TOLERANCES["default"]]
    return max(rtol for rtol, _ in found), max(atol for _, atol in found)


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [tensor for item in value for tensor in _flat_tensors(item)]
    return []


@contextlib.contextmanager
def _quiet_onnx_export() -> Iterator[None]:
    """File descriptor 1 goes nowhere meanwhile, and ONNX logging is as it was after: an
    export turns it on for good (docs/findings.md, 30), and a failed one then writes the
    model's whole graph to stdout from C++; the error it raises already says why."""
    enabled = torch._C._jit_is_onnx_log_enabled()
    sys.stdout.flush()
    kept = os.dup(1)
    try:
        with open(os.devnull, "wb") as nowhere:
            os.dup2(nowhere.fileno(), 1)
        yield
    finally:
        os.dup2(kept, 1)
        os.close(kept)
        torch._C._jit_set_onnx_log_enabled(enabled)


def _onnx_outputs(case: ModelCase) -> list[Any]:
    """The model exported by ``torch.onnx.export`` and run by onnxruntime on the example
    input; raises :class:`Refused` when the exporter or the runtime does not take it."""
    import onnxruntime

    buffer = io.BytesIO()
    try:
        # dynamo=False: the TorchScript-based exporter, which needs no onnxscript.
        with _quiet_onnx_export():
            torch.onnx.export(case.module, case.example_input, buffer, dynamo=False)
    except Exception as error:
        raise Refused(f"torch.onnx.export: {explain_error(error)}") from error
    try:
        options = onnxruntime.SessionOptions()
        # Errors only: onnxruntime's warnings about its own graph rewrites went to the
        # terminal (what it computes is compared below).
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
        )
        feeds = {
            argument.name: tensor.numpy()
            for argument, tensor in zip(session.get_inputs(), case.example_input, strict=False)
        }
        return session.run(None, feeds)
    except Exception as error:
        raise Refused(f"onnxruntime: {explain_error(error)}") from error


def onnx_agreement(case: ModelCase) -> Iterator[str]:
    """onnxruntime runs the ONNX export of a model and agrees with eager torch.

    The eval-mode model is exported with ``torch.onnx.export`` and run on its example input
    by onnxruntime's CPU provider: as many outputs as the eager module's tensors, each of
    the same shape and within the model's tolerance (:data:`ONNX_TOLERANCES`), NaNs in the
    same places.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        yield "onnxruntime is not installed: not checked"
        return
    expected = _flat_tensors(_eval_output(case.module, case.example_input))
    try:
        outputs = _onnx_outputs(case)
    except Refused as refusal:
        yield f"onnx refuses a model of {_families(case)}: {refusal}"
        return
    rtol, atol = _tolerance(case)
    assert len(outputs) == len(expected), f"{len(outputs)} outputs, eager has {len(expected)}"
    for index, (want, got) in enumerate(zip(expected, outputs, strict=True)):
        got = torch.from_numpy(got).to(want.dtype)
        assert got.shape == want.shape, f"output {index}: shape {got.shape}, eager {want.shape}"
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    yield f"onnx takes a model of {_families(case)} (rtol={rtol:g}, atol={atol:g})"


# --- dynamically quantized models ----------------------------------------------------------------

#: The families whose layers dynamic quantization converts (nn.Linear, nn.LSTM).
_QUANTIZED_FAMILIES = ("linear", "activation", "lstm", "frozen", "residual", "nested")


def _quantized(module: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import quantize_dynamic

    eval_copy = copy.deepcopy(module).eval()
    return quantize_dynamic(eval_copy, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)


def _comparable(value: Any) -> Any:
    """``value`` with each TorchScript object in it (the packed weights of a quantized LSTM
    or Linear, which define no ``==``) replaced by its class name and pickled state, down to
    tensors and plain values."""
    if isinstance(value, torch.ScriptObject):
        return (value._type().qualified_name(), _comparable(value.__getstate__()))
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_comparable(item) for item in value)
    return value


def _quantized_examples() -> st.SearchStrategy:
    wanted = [name for name in _QUANTIZED_FAMILIES if name in available_families()]
    return models(wanted)


def quantized_round_trip(case: ModelCase) -> Iterator[str]:
    """A dynamically quantized model's state_dict round-trips identical.

    ``quantize_dynamic`` (qint8, ``nn.Linear`` and ``nn.LSTM``) of the model; its state_dict,
    quantized tensors and packed parameters included, comes back from
    ``torch.save``/``torch.load(weights_only=True)`` identical, loads with ``strict=True``
    into the quantized fresh instance, whose state_dict is then identical and whose eval
    outputs are bit-identical to the original quantized model's.
    """
    try:
        quantized = _quantized(case.module)
    except Exception as error:
        yield _refusal("quantize_dynamic", case, error)
        return
    try:
        expected = _eval_output(quantized, case.example_input)
    except Exception as error:  # e.g. a float64 Linear, converted, then fed float64
        yield _refusal("the dynamically quantized model", case, error)
        return
    state = quantized.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        loaded = torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as error:
        yield (
            "finding: torch.load(weights_only=True) refuses the state_dict of a dynamically "
            f"quantized {_families(case)} model: {explain_error(error)}"
        )
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)  # the file this check just wrote
    assert_identical(_comparable(state), _comparable(loaded), name="quantized state_dict")
    fresh = _quantized(case.rebuild(_FRESH_INIT_SEED).module)
    fresh.load_state_dict(loaded, strict=True)
    assert_identical(
        _comparable(state), _comparable(fresh.state_dict()), name="fresh quantized state_dict"
    )
    assert_identical(
        expected, _eval_output(fresh, case.example_input), name="quantized eval output"
    )
    converted = sorted(
        {type(m).__name__ for m in quantized.modules() if "quantized" in type(m).__module__}
    )
    yield f"quantize_dynamic converts {', '.join(converted) or 'nothing'}"


# --- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One persistence format, registered once in :data:`FORMAT_REGISTRY`.

    Attributes:
        name: e.g. ``"safetensors"``.
        invariant: the name of its main-job invariant.
        writes: how a model is written, in a few words.
        reads: how it is read back.
        compares: how the read-back model's outputs are compared with the eager module's.
        check: the invariant's check on one drawn example (see each check's docstring).
        examples: a function returning the strategy of examples.
        model: from one example, the :class:`~strategies.models.ModelCase` it holds.
        needs: the optional library the format needs (its import name), or ``""``.
    """

    name: str
    invariant: str
    writes: str
    reads: str
    compares: str
    check: Callable[[Any], Iterator[str]]
    examples: Callable[[], st.SearchStrategy]
    model: Callable[[Any], ModelCase] = lambda example: example
    needs: str = ""

    @property
    def description(self) -> str:
        """The promise, for the report (the check's first docstring line)."""
        return (self.check.__doc__ or "").strip().splitlines()[0]


#: Every format, in the order the main job checks them.
FORMAT_REGISTRY: tuple[Format, ...] = (
    Format(
        "safetensors",
        "safetensors_round_trip",
        writes="safetensors.torch.save_file(state_dict, path, metadata) and "
        "save_model(model, path, metadata)",
        reads="load_file(path); load_model(fresh_model, path)",
        compares="tensors and metadata identical; eval outputs bit-identical",
        check=safetensors_round_trip,
        examples=_safetensors_examples,
        model=lambda example: example[0],
        needs="safetensors",
    ),
    Format(
        "torchscript",
        "torchscript_round_trip",
        writes="torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, input))",
        reads="torch.jit.load(f, map_location='cpu'); its state_dict into the eager class",
        compares="eval outputs bit-identical",
        check=torchscript_round_trip,
        examples=models,
    ),
    Format(
        "export",
        "export_round_trip",
        writes="torch.export.save(torch.export.export(model, input), f)",
        reads="torch.export.load(f).module()",
        compares="outputs bit-identical on the example input and a second input",
        check=export_round_trip,
        examples=models,
    ),
    Format(
        "onnx",
        "onnx_agreement",
        writes="torch.onnx.export(model, input, f, dynamo=False)",
        reads="onnxruntime.InferenceSession(bytes, providers=['CPUExecutionProvider'])",
        compares="outputs within the per-family tolerance of ONNX_TOLERANCES",
        check=onnx_agreement,
        examples=models,
        needs="onnxruntime",
    ),
    Format(
        "quantized",
        "quantized_round_trip",
        writes="torch.save(quantize_dynamic(model, {Linear, LSTM}, qint8).state_dict())",
        reads="torch.load(weights_only=True) into a quantized fresh instance",
        compares="state_dict identical (quantized tensors included); outputs bit-identical",
        check=quantized_round_trip,
        examples=_quantized_examples,
    ),
)

#: Every format's name.
FORMATS: tuple[str, ...] = tuple(record.name for record in FORMAT_REGISTRY)
_BY_NAME = {record.name: record for record in FORMAT_REGISTRY}


def format_record(name: str) -> Format:
    """The record of format ``name`` (one of :data:`FORMATS`)."""
    if name not in _BY_NAME:
        raise InvalidArgument(f"format={name!r} must be one of {list(FORMATS)!r}")
    return _BY_NAME[name]


# --- which families each format takes ------------------------------------------------------------


@dataclass(frozen=True)
class FamilyVerdict:
    """What one format did with the simplest model of one family.

    Attributes:
        format: the format's name.
        family: the family's name.
        verdict: ``"holds"``, ``"refused"`` (the exporter's or runtime's message in
            ``detail``) or ``"fails"`` (the check's assertion in ``detail``).
        detail: the message, or the check's observations joined.
    """

    format: str
    family: str
    verdict: str
    detail: str


def _simplest_model(family_name: str) -> ModelCase:
    return find(models([family_name]), lambda case: True)


def _verdict_of(record: Format, case: ModelCase, example: Any) -> FamilyVerdict:
    family_name = next(iter(sorted(case.spec.families)), "flatten")
    try:
        said = [str(line) for line in record.check(example)]
    except Exception as error:  # an assertion, or an error the check did not expect
        return FamilyVerdict(record.name, family_name, "fails", explain_error(error))
    refused = [line for line in said if " refuses a model of " in line]
    if refused:
        return FamilyVerdict(record.name, family_name, "refused", refused[0].split(": ", 1)[1])
    return FamilyVerdict(record.name, family_name, "holds", "; ".join(said))


def family_verdicts(format_name: str, families: tuple[str, ...] | None = None) -> list:
    """One :class:`FamilyVerdict` per family (every available one by default): the format's
    check run on the simplest model of that family alone (Hypothesis's minimal example)."""
    record = format_record(format_name)
    verdicts = []
    for name in families if families is not None else available_families():
        case = _simplest_model(name)
        example = (case, {}, {"format": "pt"}) if record.name == "safetensors" else case
        verdicts.append(_verdict_of(record, case, example))
    return verdicts


# --- hostile files per format ------------------------------------------------------------------


def _hostile_checkpoint(sentinel: str) -> bytes:
    return attack("reduce_os_system").checkpoint(sentinel)


@functools.cache
def _benign_pt2() -> bytes:
    """A ``.pt2`` archive of a one-layer model, written by ``torch.export.save``."""
    module = torch.nn.Linear(2, 2).eval()
    program = torch.export.export(module, (torch.zeros(1, 2),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _rewritten_pt2(replace: Callable[[str, bytes], bytes | None], extra: dict) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(_benign_pt2()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = replace(info.filename, source.read(info.filename))
            target.writestr(info.filename, data if data is not None else source.read(info))
        for name, data in extra.items():
            target.writestr(name, data)
    return out.getvalue()


def _pt2_sample_inputs(sentinel: str) -> bytes:
    hostile = _hostile_checkpoint(sentinel)
    return _rewritten_pt2(
        lambda name, data: hostile if name.endswith("sample_inputs/model.pt") else None, {}
    )


def _pt2_pickled_weight(sentinel: str) -> bytes:
    hostile = _hostile_checkpoint(sentinel)
    prefix = next(
        name[: -len("model_weights_config.json")]
        for name in zipfile.ZipFile(io.BytesIO(_benign_pt2())).namelist()
        if name.endswith("model_weights_config.json")
    )

    def replace(name: str, data: bytes) -> bytes | None:
        if not name.endswith("model_weights_config.json"):
            return None
        config = json.loads(data)
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        first["path_name"] = "hostile_weight"
        return json.dumps(config).encode()

    return _rewritten_pt2(replace, {f"{prefix}hostile_weight": hostile})


@dataclass(frozen=True)
class FormatAttack:
    """A hostile file carried by one format and read by that format's loader.

    Attributes:
        format: the format's name (one of :data:`FORMATS`).
        name: the attack's name.
        loader: the loader called, as a user writes it.
        description: what the file holds.
        build: the file's bytes given the sentinel path a code payload creates.
        load: ``load(path)``, the loader's call.
        suffix: the file name's ending the loader expects (``torch.export.load`` reads a
            path as a ``.pt2`` archive only under that name).
        group: ``"code"``, ``"memory"`` or ``"bomb"`` (as :mod:`strategies.payloads`).
        upstream: what upstream says of a loader that runs the file's code, where known.
    """

    format: str
    name: str
    loader: str
    description: str
    build: Callable[[str], bytes]
    load: Callable[[str], Any]
    suffix: str
    group: str = "code"
    upstream: str = ""


def _safetensors_load(path: str) -> None:
    from safetensors.torch import load_file

    load_file(path)


def _jit_load(path: str) -> None:
    torch.jit.load(path, map_location="cpu")


def _export_load(path: str) -> None:
    torch.export.load(path)


_TORCHSCRIPT_ARCHIVE = attack("torchscript_archive")
_EXPORT_UPSTREAM = (
    "torch.export.load retries a refused record with weights_only=False and reads "
    "use_pickle weights with it (pytorch/pytorch#153410; a weights_only option: #191149, "
    "closed unmerged)"
)

#: Every hostile file carried by a format of :data:`FORMAT_REGISTRY` that can hold one.
FORMAT_ATTACKS: tuple[FormatAttack, ...] = (
    FormatAttack(
        "torchscript",
        _TORCHSCRIPT_ARCHIVE.name,
        "torch.jit.load(path)",
        _TORCHSCRIPT_ARCHIVE.description,
        _TORCHSCRIPT_ARCHIVE.checkpoint,
        _jit_load,
        ".pt",
        upstream="by design: torch.jit.load's docstring says to load only trusted data "
        "(pytorch/pytorch#143403)",
    ),
    FormatAttack(
        "export",
        "pt2_sample_inputs",
        "torch.export.load(path)",
        "a torch.export.save archive whose sample inputs record is the reduce_os_system checkpoint",
        _pt2_sample_inputs,
        _export_load,
        ".pt2",
        upstream=_EXPORT_UPSTREAM,
    ),
    FormatAttack(
        "export",
        "pt2_pickled_weight",
        "torch.export.load(path)",
        "a torch.export.save archive whose weights config marks a weight use_pickle and "
        "points it to the reduce_os_system checkpoint",
        _pt2_pickled_weight,
        _export_load,
        ".pt2",
        upstream=_EXPORT_UPSTREAM,
    ),
    *(
        FormatAttack(
            "safetensors",
            record.name,
            "safetensors.torch.load_file(path)",
            record.description,
            record.archive,
            _safetensors_load,
            ".safetensors",
            record.group,
        )
        for record in SAFETENSORS_ATTACKS
    ),
)


@dataclass(frozen=True)
class FormatAttackOutcome:
    """How one format's loader ended on one of its hostile files.

    Attributes:
        attack: the :class:`FormatAttack`.
        isolated: how the load in the forked child ended (:class:`harness.files.Isolated`).
        ran: whether the payload's code ran (its sentinel appeared).
    """

    attack: FormatAttack
    isolated: Isolated
    ran: bool

    def __str__(self) -> str:
        ran = ", ran" if self.ran else ""
        return f"{self.attack.loader} on {self.attack.name}: {self.isolated.outcome}{ran}"


def format_attack_outcomes(attacks: tuple[FormatAttack, ...] = FORMAT_ATTACKS) -> list:
    """Write each hostile file and load it with its format's loader in a forked child
    (:func:`harness.files.run_isolated`); one :class:`FormatAttackOutcome` each."""
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="format-hostile-") as directory:
        for position, record in enumerate(attacks):
            sentinel = os.path.join(directory, f"{position}-{record.name}.ran")
            path = os.path.join(directory, f"{position}-{record.name}{record.suffix}")
            with open(path, "wb") as file:
                file.write(record.build(sentinel))
            isolated = run_isolated(functools.partial(record.load, path), timeout=60)
            outcomes.append(FormatAttackOutcome(record, isolated, os.path.exists(sentinel)))
    return outcomes


def format_loaders_on_hostile_files(_: Any) -> Iterator[str]:
    """Each format's loader on the hostile files it can meet: which ran code is reported.

    No loader may crash or hang; safetensors' loader runs no code and refuses every hostile
    header; a loader that runs a payload is a finding (TorchScript's by design, its
    documentation says to load only trusted data; torch.export's through the pickles a
    ``.pt2`` archive may hold).
    """
    for outcome in format_attack_outcomes():
        yield str(outcome)
        isolated, record = outcome.isolated, outcome.attack
        assert isolated.outcome not in ("crashed", "hung"), f"{outcome}: {isolated}"
        if record.format == "safetensors":
            assert isolated.outcome in ("raised", "out_of_memory") or record.group == "bomb", (
                f"{outcome}: safetensors accepted a hostile header ({record.description})"
            )
        if outcome.ran:
            why = f" ({record.upstream})" if record.upstream else ""
            yield f"finding: {record.loader} runs the code in a {record.name} file{why}"


def format_invariants() -> list[Invariant]:
    """One main-job invariant per format of :data:`FORMAT_REGISTRY`, then the hostile files
    of :data:`FORMAT_ATTACKS` loaded by their formats' loaders."""
    found = [
        Invariant(record.invariant, record.description, record.examples, record.check)
        for record in FORMAT_REGISTRY
    ]
    found.append(
        Invariant(
            "format_loaders_on_hostile_files",
            (format_loaders_on_hostile_files.__doc__ or "").strip().splitlines()[0],
            lambda: st.just(None),
            format_loaders_on_hostile_files,
        )
    )
    return found


def family_table(verdicts_by_format: dict[str, list]) -> str:
    """A Markdown table: one row per family, one column per format, each cell the verdict
    (``holds``, ``refused n`` or ``fails n``), then the numbered messages."""
    names = list(verdicts_by_format)
    families = [verdict.family for verdict in verdicts_by_format[names[0]]]
    notes: list[str] = []
    rows = ["| family | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for index, family_name in enumerate(families):
        cells = []
        for name in names:
            verdict = verdicts_by_format[name][index]
            if verdict.verdict == "holds":
                cells.append("holds")
                continue
            notes.append(f"{len(notes) + 1}. {name}, {family_name}: {verdict.detail}")
            cells.append(f"**{verdict.verdict}** ({len(notes)})")
        rows.append(f"| {family_name} | " + " | ".join(cells) + " |")
    return "\n".join(rows + [""] + notes)


def attack_table(outcomes: list) -> str:
    """A Markdown table: each format's loader on each of its hostile files."""
    rows = ["| format | loader | hostile file | outcome | ran code |", "|---|---|---|---|---|"]
    for outcome in outcomes:
        record, isolated = outcome.attack, outcome.isolated
        ended = isolated.outcome + (f" ({isolated.error_type})" if isolated.error_type else "")
        rows.append(
            f"| {record.format} | `{record.loader}` | {record.name} | {ended} | "
            f"{'**yes**' if outcome.ran else 'no'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(f"torch {torch.__version__}\n")
    print(family_table({name: family_verdicts(name) for name in FORMATS}))
    print()
    print(attack_table(format_attack_outcomes()))
