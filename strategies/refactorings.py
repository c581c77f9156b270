"""Strategies for model source code and the refactorings applied to it after saving.

A whole-model pickle (``torch.save(model)``) stores a reference to the model's class, not its
code. :func:`refactoring_cases` draws a small model class, written as Python source, and one
refactoring of that source, so the harness can save the model, refactor the code and see
what loading the pickle does. Each refactoring is one :class:`Refactoring` record in
:data:`REFACTORING_REGISTRY`: what it changes, how the source is rendered after it, what
happens to the module file, whether the state_dict keeps its names and forward its function,
and what loading the whole-model pickle does afterwards. The table of refactorings in
``docs/catalog.md`` is generated from it (``python -m harness.catalog``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from strategies._arguments import check_choice, check_type

__all__ = [
    "REFACTORING_KINDS",
    "REFACTORING_REGISTRY",
    "ModelSource",
    "Refactoring",
    "RefactoringCase",
    "refactoring",
    "refactoring_cases",
    "render_source",
]

# The activations a model source may apply between its layers, simplest first.
_ACTIVATIONS = ("relu", "tanh", "sigmoid")


class ModuleFile(Protocol):
    """The module a refactoring changes (:class:`harness.temp_modules.TemporaryModule`)."""

    name: str

    def rewrite(self, source: str) -> None: ...

    def rename(self, new_name: str) -> None: ...

    def delete(self) -> None: ...


def _rewrite(module: ModuleFile, source: str) -> None:
    module.rewrite(source)


def _move(module: ModuleFile, source: str) -> None:
    module.rename(f"{module.name}_moved")


def _delete(module: ModuleFile, source: str) -> None:
    module.delete()


@dataclass(frozen=True)
class Refactoring:
    """Everything known about one refactoring of a model's code, registered once in
    :data:`REFACTORING_REGISTRY`.

    Attributes:
        name: the refactoring, as :class:`RefactoringCase` names it.
        description: what it changes, in words (for the catalog).
        keeps_parameter_names: whether the model's state_dict keeps its names.
        keeps_forward: whether forward computes the same function afterwards.
        pickle_outcome: what loading the whole-model pickle saved before it does afterwards,
            as :func:`harness.invariants.whole_model_refactoring` words it; it follows from
            how pickle restores an object (by module and class name, ``__dict__`` restored,
            ``__init__`` not called).
        on_module: what is done to the module file once the model is saved, given the
            module and the source rendered after the refactoring; None when the code is left
            as it was.
        keeps_class: whether the model's class can still be imported afterwards.
        class_name, attribute, init_signature, init_extra, output_suffix: how the source is
            rendered after it: the class's name, the attribute holding the layers, the
            parameters of ``__init__``, lines added to ``__init__``, and what is appended to
            the expression ``forward`` returns.
    """

    name: str
    description: str
    keeps_parameter_names: bool
    keeps_forward: bool
    pickle_outcome: str
    on_module: Callable[[ModuleFile, str], None] | None = _rewrite
    keeps_class: bool = True
    class_name: str = "Net"
    attribute: str = "layers"
    init_signature: str = "sizes=SIZES"
    init_extra: str = ""
    output_suffix: str = ""

    @property
    def changes_code(self) -> bool:
        """Whether the model's code changes at all."""
        return self.on_module is not None

    def apply(self, module: ModuleFile, model: ModelSource) -> None:
        """Refactor ``module``, which defines ``model`` as :func:`render_source` writes it."""
        if self.on_module is not None:
            self.on_module(module, render_source(model, self.name))


#: Every refactoring, simplest first, so that a failure shrinks toward "no refactoring".
REFACTORING_REGISTRY: tuple[Refactoring, ...] = (
    Refactoring(
        "none",
        "nothing: the code stays as it was",
        keeps_parameter_names=True,
        keeps_forward=True,
        pickle_outcome="loads and behaves the same",
        on_module=None,
    ),
    Refactoring(
        "change_init_signature",
        "`__init__` takes a further keyword-only argument",
        keeps_parameter_names=True,
        keeps_forward=True,
        pickle_outcome="loads and behaves the same",
        init_signature="sizes=SIZES, *, bias=True",
    ),
    Refactoring(
        "add_attribute",
        "`__init__` sets a new attribute, which `forward` uses",
        keeps_parameter_names=True,
        keeps_forward=False,
        pickle_outcome="loads, fails at forward (AttributeError)",
        init_extra="        self.scale = 2.0\n",
        output_suffix=" * self.scale",
    ),
    Refactoring(
        "change_forward",
        "`forward` computes something else (adds 1)",
        keeps_parameter_names=True,
        keeps_forward=False,
        pickle_outcome="loads and silently computes something else",
        output_suffix=" + 1.0",
    ),
    Refactoring(
        "rename_attribute",
        "the attribute holding the layers is renamed",
        keeps_parameter_names=False,
        keeps_forward=True,
        pickle_outcome="loads, fails at forward (AttributeError)",
        attribute="blocks",
    ),
    Refactoring(
        "rename_class",
        "the model class is renamed",
        keeps_parameter_names=True,
        keeps_forward=True,
        pickle_outcome="fails at load (AttributeError)",
        class_name="RenamedNet",
    ),
    Refactoring(
        "move_module",
        "the module defining the class is renamed",
        keeps_parameter_names=True,
        keeps_forward=True,
        pickle_outcome="fails at load (ModuleNotFoundError)",
        on_module=_move,
    ),
    Refactoring(
        "delete_module",
        "the module defining the class is deleted",
        keeps_parameter_names=True,
        keeps_forward=True,
        pickle_outcome="fails at load (ModuleNotFoundError)",
        on_module=_delete,
        keeps_class=False,
    ),
)

#: Every refactoring's name, simplest first.
REFACTORING_KINDS = tuple(record.name for record in REFACTORING_REGISTRY)
_REFACTORING = {record.name: record for record in REFACTORING_REGISTRY}


def refactoring(name: str) -> Refactoring:
    """The record of the refactoring ``name`` (one of :data:`REFACTORING_KINDS`)."""
    check_choice(name, REFACTORING_KINDS, name="refactoring")
    return _REFACTORING[name]


@dataclass(frozen=True)
class ModelSource:
    """A multi-layer perceptron class as plain data: layer sizes and the activation.

    Attributes:
        sizes: the features of the input and of each layer's output, at least two.
        activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``, applied between layers.
    """

    sizes: tuple[int, ...]
    activation: str

    def __post_init__(self) -> None:
        check_type(self.sizes, tuple, name="sizes", example="(2, 3)")
        if len(self.sizes) < 2 or not all(
            isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in self.sizes
        ):
            raise InvalidArgument(
                f"sizes={self.sizes!r} must hold two or more positive ints, e.g. sizes=(2, 3)"
            )
        check_choice(self.activation, _ACTIVATIONS, name="activation")


@dataclass(frozen=True)
class RefactoringCase:
    """A model class and the refactoring applied to its code after the model was saved."""

    model: ModelSource
    refactoring: str

    def __post_init__(self) -> None:
        check_type(self.model, ModelSource, name="model", example="ModelSource((2, 3), 'relu')")
        check_choice(self.refactoring, REFACTORING_KINDS, name="refactoring")

    @property
    def record(self) -> Refactoring:
        """The refactoring's record."""
        return _REFACTORING[self.refactoring]

    @property
    def keeps_parameter_names(self) -> bool:
        """Whether the model's state_dict keeps its names after the refactoring."""
        return self.record.keeps_parameter_names

    @property
    def keeps_forward(self) -> bool:
        """Whether forward computes the same function after the refactoring."""
        return self.record.keeps_forward

    @property
    def class_name_after(self) -> str:
        """The name of the model class after the refactoring."""
        return self.record.class_name


def render_source(model: ModelSource, refactoring: str = "none") -> str:
    """The module source defining the model class, with ``refactoring`` (one of
    :data:`REFACTORING_KINDS`) applied."""
    check_type(model, ModelSource, name="model", example="ModelSource((2, 3), 'relu')")
    check_choice(refactoring, REFACTORING_KINDS, name="refactoring")
    record = _REFACTORING[refactoring]
    attribute = record.attribute
    return f"""import torch
from torch import nn

SIZES = {model.sizes!r}


class {record.class_name}(nn.Module):
    def __init__(self, {record.init_signature}):
        super().__init__()
        self.{attribute} = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
{record.init_extra}
    def forward(self, x):
        for layer in self.{attribute}[:-1]:
            x = torch.{model.activation}(layer(x))
        return self.{attribute}[-1](x){record.output_suffix}
"""


def refactoring_cases(
    refactorings: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[RefactoringCase]:
    """A small model class (2 to 4 layers of 1 to 4 features) and one refactoring of it.

    ``refactorings`` draws the refactoring, each a name in :data:`REFACTORING_KINDS`; by
    default any of them. A drawn name that is not one raises
    :class:`~hypothesis.errors.InvalidArgument`. Shrinks toward two layers of one feature,
    ``relu``, and no refactoring.
    """
    if refactorings is None:
        kinds = st.sampled_from(REFACTORING_KINDS)
    else:
        check_type(
            refactorings,
            st.SearchStrategy,
            name="refactorings",
            example="st.sampled_from(['none', 'rename_class'])",
        )
        kinds = refactorings
    models = st.builds(
        ModelSource,
        sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple),
        activation=st.sampled_from(_ACTIVATIONS),
    )
    return st.builds(RefactoringCase, model=models, refactoring=kinds).map(_record)


def _record(case: RefactoringCase) -> RefactoringCase:
    event(f"refactoring: {case.refactoring}")
    return case
