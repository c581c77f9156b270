"""torch-persistence-harness: property-based checks of PyTorch save/load promises.

The public names below are imported on first use (PEP 562, with
:func:`lazy_exports.lazy_attributes`), so that importing a submodule such as
:mod:`harness.profiles` or the pytest plugin does not import torch.

Imports run in one direction. :data:`FOUNDATION` is what ``strategies`` builds on: those
modules import only the standard library, torch, numpy, Hypothesis and each other.
``strategies`` imports only the foundation from ``harness``; the rest of ``harness`` imports
``strategies``; ``matrix`` and ``benchmarks`` import both, and neither imports the other
(tests/test_imports.py checks all of it). Below them all, the top-level module
:mod:`lazy_exports` imports only the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazy_exports import lazy_attributes

if TYPE_CHECKING:
    from harness.capabilities import Capabilities, probe
    from harness.checkpointer import Checkpointer, check_checkpointer
    from harness.compare import assert_identical
    from harness.distributed import DistributedCheckpoint, check_distributed_checkpointer
    from harness.inspect import inspect_checkpoint
    from harness.recipes import InferencePackage, TrainingCheckpoint
    from harness.report import Report
    from harness.state import DataStream, TrainingState
    from harness.user_models import UserModel

__all__ = [
    "Capabilities",
    "Checkpointer",
    "DataStream",
    "DistributedCheckpoint",
    "InferencePackage",
    "Report",
    "TrainingCheckpoint",
    "TrainingState",
    "UserModel",
    "assert_identical",
    "check_checkpointer",
    "check_distributed_checkpointer",
    "inspect_checkpoint",
    "probe",
]

#: The modules of the foundation, below ``strategies`` and the rest of ``harness``.
FOUNDATION = (
    "harness.capabilities",
    "harness.compare",
    "harness.persistence",
    "harness.state",
)

# Where each public name is defined.
_MODULES = {
    "Capabilities": "harness.capabilities",
    "probe": "harness.capabilities",
    "Checkpointer": "harness.checkpointer",
    "check_checkpointer": "harness.checkpointer",
    "assert_identical": "harness.compare",
    "InferencePackage": "harness.recipes",
    "TrainingCheckpoint": "harness.recipes",
    "Report": "harness.report",
    "TrainingState": "harness.state",
    "DataStream": "harness.state",
    "UserModel": "harness.user_models",
    "DistributedCheckpoint": "harness.distributed",
    "check_distributed_checkpointer": "harness.distributed",
    "inspect_checkpoint": "harness.inspect",
}


__getattr__, __dir__ = lazy_attributes(globals(), _MODULES)
