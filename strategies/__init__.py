"""Hypothesis strategies for PyTorch persistence testing.

The public strategies and the spec types they draw are names of this package, as
Hypothesis's are of ``hypothesis.strategies``::

    import strategies

    @given(strategies.models(families=["linear", "conv2d"]), strategies.save_options())
    def test_round_trip(case, options): ...

Each name is imported from its module on first use (PEP 562), so ``import strategies``
imports neither torch nor Hypothesis. The modules stay importable as before
(``from strategies.models import build_model``). Four of them share their name with the
strategy they define (``models``, ``model_specs``, ``tensors``, ``bundles``): the package
attribute of that name is always the strategy, so ``import strategies.models as m`` gives
the strategy too, and the module's other names are reached with ``from strategies.models
import ...``.
"""

from __future__ import annotations

import sys
import types

from lazy_exports import lazy_attributes

# Not typing.TYPE_CHECKING: importing typing would cost more than the rest of this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from strategies.bundles import UnsafeContent, bundles, unsafe_contents, weights_only_contents
    from strategies.model_specs import InputSpec, Layer, ModelSpec, model_specs
    from strategies.models import ModelCase, models
    from strategies.optim import (
        ConstantFactor,
        ExponentialFactor,
        OptimizerSpec,
        SchedulerSpec,
        WarmupFactor,
        optimizer_specs,
        scheduler_specs,
    )
    from strategies.options import save_options
    from strategies.payloads import (
        Corruption,
        HostilePayload,
        allocation_bombs,
        corruptions,
        hostile_files,
        hostile_payloads,
        memory_attacks,
    )
    from strategies.refactorings import ModelSource, RefactoringCase, refactoring_cases
    from strategies.tensors import TensorSpec, dtypes, layouts, tensor_shapes, tensor_specs, tensors
    from strategies.training import TrainingCase, TrainingSpec, training_cases, training_states

# Where each public name is defined: the strategies, then the spec types they draw.
_MODULES = {
    "models": "strategies.models",
    "model_specs": "strategies.model_specs",
    "tensors": "strategies.tensors",
    "tensor_specs": "strategies.tensors",
    "dtypes": "strategies.tensors",
    "layouts": "strategies.tensors",
    "tensor_shapes": "strategies.tensors",
    "bundles": "strategies.bundles",
    "weights_only_contents": "strategies.bundles",
    "unsafe_contents": "strategies.bundles",
    "optimizer_specs": "strategies.optim",
    "scheduler_specs": "strategies.optim",
    "training_cases": "strategies.training",
    "training_states": "strategies.training",
    "save_options": "strategies.options",
    "hostile_payloads": "strategies.payloads",
    "memory_attacks": "strategies.payloads",
    "allocation_bombs": "strategies.payloads",
    "hostile_files": "strategies.payloads",
    "corruptions": "strategies.payloads",
    "refactoring_cases": "strategies.refactorings",
    "ModelCase": "strategies.models",
    "ModelSpec": "strategies.model_specs",
    "InputSpec": "strategies.model_specs",
    "Layer": "strategies.model_specs",
    "TensorSpec": "strategies.tensors",
    "UnsafeContent": "strategies.bundles",
    "OptimizerSpec": "strategies.optim",
    "SchedulerSpec": "strategies.optim",
    "ConstantFactor": "strategies.optim",
    "ExponentialFactor": "strategies.optim",
    "WarmupFactor": "strategies.optim",
    "TrainingCase": "strategies.training",
    "TrainingSpec": "strategies.training",
    "HostilePayload": "strategies.payloads",
    "Corruption": "strategies.payloads",
    "RefactoringCase": "strategies.refactorings",
    "ModelSource": "strategies.refactorings",
}

__all__ = [
    "ConstantFactor",
    "Corruption",
    "ExponentialFactor",
    "HostilePayload",
    "InputSpec",
    "Layer",
    "ModelCase",
    "ModelSource",
    "ModelSpec",
    "OptimizerSpec",
    "RefactoringCase",
    "SchedulerSpec",
    "TensorSpec",
    "TrainingCase",
    "TrainingSpec",
    "UnsafeContent",
    "WarmupFactor",
    "allocation_bombs",
    "bundles",
    "corruptions",
    "dtypes",
    "hostile_files",
    "hostile_payloads",
    "layouts",
    "memory_attacks",
    "model_specs",
    "models",
    "optimizer_specs",
    "refactoring_cases",
    "save_options",
    "scheduler_specs",
    "tensor_shapes",
    "tensor_specs",
    "tensors",
    "training_cases",
    "training_states",
    "unsafe_contents",
    "weights_only_contents",
]


__getattr__, __dir__ = lazy_attributes(globals(), _MODULES)


class _Package(types.ModuleType):
    """This package's module type: it keeps a strategy's name for the strategy."""

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing a submodule sets it as an attribute of its package; where the submodule
        # is named after its strategy (strategies.models defines models()), the package
        # attribute stays the strategy.
        if name in _MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
