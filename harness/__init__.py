"""torch-persistence-harness: property-based checks of PyTorch save/load promises."""

from harness.capabilities import Capabilities, probe
from harness.checkpointer import Checkpointer, check_checkpointer
from harness.compare import assert_identical
from harness.recipes import InferencePackage, TrainingCheckpoint
from harness.report import Report
from harness.state import TrainingState

__all__ = [
    "Capabilities",
    "Checkpointer",
    "InferencePackage",
    "Report",
    "TrainingCheckpoint",
    "TrainingState",
    "assert_identical",
    "check_checkpointer",
    "probe",
]
