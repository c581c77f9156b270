"""Check a checkpointer on the small CNN and the small transformer of my_models.py.

Run it from this folder or with it on the path: ``python docs/examples/check_my_models.py``.
"""

from __future__ import annotations

from my_models import CNN, OPTIMIZERS, SCHEDULERS, TRANSFORMER

import harness


def check(max_examples: int = 20, seed: int | None = None) -> list[harness.Report]:
    """Resume and inference checks of the reference checkpointers on both models."""
    resume = harness.check_checkpointer(
        harness.TrainingCheckpoint(),
        purpose="resume",
        models=[CNN, TRANSFORMER],
        optimizers=OPTIMIZERS,
        schedulers=SCHEDULERS,
        max_examples=max_examples,
        seed=seed,
    )
    inference = harness.check_checkpointer(
        harness.InferencePackage(),
        purpose="inference",
        models=[CNN, TRANSFORMER],
        max_examples=max_examples,
        seed=seed,
    )
    return [resume, inference]


if __name__ == "__main__":
    for report in check():
        print(report.headline())
