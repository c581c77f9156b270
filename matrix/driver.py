"""Running the whole matrix: one tox environment per torch version, each created, used and
removed in turn, with progress, an estimate of the time left, and the disk it took.

Steps, for the versions chosen:

1. **write**, for each version whose corpus is not committed yet (every version with
   ``--rewrite``): create its environment, write ``matrix/corpus/<version>``, remove it.
2. **read**, for each version: create its environment, write its corpus again into a
   temporary folder and check that the manifest is the same (determinism), read every
   committed corpus and attack the loader into ``matrix/results/<version>.json``, remove it.
3. **merge** every ``matrix/results/*.json`` into ``matrix/results.json``, **render** the grid.

Each environment is a CUDA build of torch (3 to 5 GB); with tox-uv installed, uv installs
it in under a minute with a cache inside the environment, which goes with it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from harness.releases import version_key
from matrix.results import read_records
from matrix.versions import tox_env

__all__ = ["CORPUS", "GB_PER_ENV", "RESULTS", "ROOT", "Step", "corpora", "run_steps"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The committed corpora, one folder per torch version, each with its manifest.json.
CORPUS = os.path.join(ROOT, "matrix", "corpus")
#: One results file per reader, <version>.json, merged into matrix/results.json.
RESULTS = os.path.join(ROOT, "matrix", "results")
# Measured: an environment with torch's CUDA build and its uv cache takes up to 5 GB.
GB_PER_ENV = 5.5


def corpora(folder: str) -> list[str]:
    """The corpus folders in ``folder`` (each ``<version>/`` with its ``manifest.json``), by
    torch version."""
    found = glob.glob(os.path.join(folder, "*", "manifest.json"))
    return sorted(
        (os.path.dirname(path) for path in found),
        key=lambda path: version_key(os.path.basename(path)),
    )


class Step:
    """One tox environment's work: ``commands`` are ``python -m matrix`` arguments, run in
    order in the environment of ``version``; ``log`` gets their output."""

    def __init__(self, phase: str, version: str, commands: list[list[str]]):
        self.phase = phase
        self.version = version
        self.commands = commands
        self.log = os.path.join(ROOT, ".tox", "matrix-logs", f"{phase}-{version}.log")

    def __str__(self) -> str:
        return f"{self.phase} {self.version}"

    def run(self, keep_env: bool) -> tuple[bool, str]:
        """Run every command; remove the environment unless ``keep_env``. ``(ok, what it
        wrote)``: a failed command's exit status, or what the step's files hold."""
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        env_dir = os.path.join(ROOT, ".tox", tox_env(self.version))
        try:
            with open(self.log, "w") as log:
                for arguments in self.commands:
                    command = [
                        sys.executable,
                        "-m",
                        "tox",
                        "-e",
                        tox_env(self.version),
                        "--",
                        *arguments,
                    ]
                    log.write(f"$ {' '.join(command)}\n")
                    log.flush()
                    result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
                    if result.returncode != 0:
                        named = " ".join(arguments)
                        return False, f"`{named}` exited {result.returncode}; see {self.log}"
            return True, self.written()
        finally:
            if not keep_env:
                shutil.rmtree(env_dir, ignore_errors=True)

    def written(self) -> str:
        """What the step wrote, read from its files: the corpus's manifest (``write``) or
        the reader's records (``read``)."""
        if self.phase == "write":
            with open(os.path.join(CORPUS, self.version, "manifest.json")) as handle:
                entries = json.load(handle)["artifacts"]
            unwritable = sum("unwritable" in entry for entry in entries)
            return f"corpus of {len(entries)} artifacts ({unwritable} unwritable)"
        records = read_records(os.path.join(RESULTS, f"{self.version}.json"))
        counts = Counter(record.outcome for record in records)
        outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
        return f"{len(records)} records: {outcomes}"


class _DiskWatch:
    """The most disk used above what was used when it started, sampled every second."""

    def __init__(self, path: str):
        self.path = path
        self.start = shutil.disk_usage(path).used
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.peak = max(self.peak, shutil.disk_usage(self.path).used - self.start)

    def __enter__(self) -> _DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds:02d} s"


def run_steps(
    steps: list[Step], jobs: int, keep_envs: bool, say: Callable[[str], None] = print
) -> tuple[list[Step], float, int]:
    """Run ``steps`` (``jobs`` at a time), saying how each ends and the time left.
    Returns the failed steps, the seconds taken and the peak extra disk in bytes."""
    started = time.monotonic()
    done: list[float] = []
    failed: list[Step] = []
    lock = threading.Lock()

    def run(step: Step) -> None:
        step_started = time.monotonic()
        ok, detail = step.run(keep_envs)
        with lock:
            done.append(time.monotonic() - step_started)
            if not ok:
                failed.append(step)
            left = len(steps) - len(done)
            eta = sum(done) / len(done) * left / jobs
            state = "ok" if ok else "FAILED"
            say(
                f"[{len(done)}/{len(steps)}] {step}: {state} in {_duration(done[-1])}"
                f"{' - ' + detail if detail else ''}; about {_duration(eta)} left"
            )

    with _DiskWatch(ROOT) as disk, ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run, steps))
    return failed, time.monotonic() - started, disk.peak
