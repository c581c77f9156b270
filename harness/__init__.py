"""torch-persistence-harness: property-based checks of PyTorch save/load promises."""

from harness.capabilities import Capabilities, probe
from harness.compare import assert_identical
from harness.state import TrainingState

__all__ = ["Capabilities", "TrainingState", "assert_identical", "probe"]
