"""Strategies for model source code and the refactorings applied to it after saving.

A whole-model pickle (``torch.save(model)``) stores a reference to the model's class, not its
code. :func:`refactoring_cases` draws a small model class, written as Python source, and one
refactoring of that source, so the harness can save the model, refactor the code and see
what loading the pickle does.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from strategies._arguments import check_choice, check_type

__all__ = [
    "REFACTORING_KINDS",
    "ModelSource",
    "RefactoringCase",
    "refactoring_cases",
    "render_source",
]

# Simplest first, so that a failure shrinks toward "no refactoring".
REFACTORING_KINDS = (
    "none",
    "change_init_signature",
    "add_attribute",
    "change_forward",
    "rename_attribute",
    "rename_class",
    "move_module",
    "delete_module",
)

# The activations a model source may apply between its layers, simplest first.
_ACTIVATIONS = ("relu", "tanh", "sigmoid")

# What each refactoring does to the names in the model's state_dict.
KEEPS_PARAMETER_NAMES = {
    "none": True,
    "change_init_signature": True,
    "add_attribute": True,
    "change_forward": True,
    "rename_attribute": False,
    "rename_class": True,
    "move_module": True,
    "delete_module": True,
}
# Whether forward computes the same function after the refactoring.
KEEPS_FORWARD = {
    kind: kind not in ("change_forward", "add_attribute") for kind in REFACTORING_KINDS
}


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
    def keeps_parameter_names(self) -> bool:
        """Whether the model's state_dict keeps its names after the refactoring."""
        return KEEPS_PARAMETER_NAMES[self.refactoring]

    @property
    def keeps_forward(self) -> bool:
        """Whether forward computes the same function after the refactoring."""
        return KEEPS_FORWARD[self.refactoring]

    @property
    def class_name_after(self) -> str:
        """The name of the model class after the refactoring."""
        return _class_name(self.refactoring)


def _class_name(refactoring: str) -> str:
    return "RenamedNet" if refactoring == "rename_class" else "Net"


def render_source(model: ModelSource, refactoring: str = "none") -> str:
    """The module source defining the model class, with ``refactoring`` (one of
    :data:`REFACTORING_KINDS`) applied."""
    check_type(model, ModelSource, name="model", example="ModelSource((2, 3), 'relu')")
    check_choice(refactoring, REFACTORING_KINDS, name="refactoring")
    class_name = _class_name(refactoring)
    attribute = "blocks" if refactoring == "rename_attribute" else "layers"
    signature = (
        "sizes=SIZES, *, bias=True" if refactoring == "change_init_signature" else ("sizes=SIZES")
    )
    extra_init = "        self.scale = 2.0\n" if refactoring == "add_attribute" else ""
    scale = " * self.scale" if refactoring == "add_attribute" else ""
    output_change = " + 1.0" if refactoring == "change_forward" else ""
    return f"""import torch
from torch import nn

SIZES = {model.sizes!r}


class {class_name}(nn.Module):
    def __init__(self, {signature}):
        super().__init__()
        self.{attribute} = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
{extra_init}
    def forward(self, x):
        for layer in self.{attribute}[:-1]:
            x = torch.{model.activation}(layer(x))
        return self.{attribute}[-1](x){scale}{output_change}
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
