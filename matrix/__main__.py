"""``python -m matrix``: run the cross-version matrix, or one of its steps.

In any environment with the project installed::

    python -m matrix run [--versions 2.5.1 2.6.0] [--jobs 2] [--rewrite]   the whole matrix
    python -m matrix merge            matrix/results/*.json into matrix/results.json
    python -m matrix render           matrix/results.json into matrix/grid.md and grid.png
    python -m matrix kinds [--check]  matrix/kinds.json and the table of kinds in
                                      matrix/README.md, from matrix.corpus.ARTIFACT_KINDS

Your own checkpointer across the torch of several environments (matrix.user_code;
docs/your-code-across-versions.md)::

    python -m matrix run --checkpointer FILE.py:NAME [--purpose resume|inference]
        [--python PATH ...] [--versions 2.5.1 ...] [--out DIR] [--baseline DIR]

In one torch version's environment (what ``run`` does through tox)::

    python -m matrix write            write matrix/corpus/<this torch's version>
    python -m matrix verify-corpus    write it again elsewhere; fail if the manifest differs
    python -m matrix read             read every corpus, attack the loader:
                                      matrix/results/<this torch's version>.json
    python -m matrix bench            the benchmarks of versions.BENCHMARK_SELECTION:
                                      matrix/bench/<this torch's version>.json
    python -m matrix recipes-write    the corpora of the project's recipes (matrix.recipes)
    python -m matrix recipes-read     read every committed recipe corpus with its recipe

And after every reader::

    python -m matrix recipes-merge    matrix/recipes/<purpose>/results.json, grid.md, grid.png
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile

from matrix.driver import CORPUS, RESULTS, ROOT, corpora

MERGED = os.path.join(ROOT, "matrix", "results.json")
# Where ``run --checkpointer`` writes, relative to the current directory.
_USER_OUT = "checkpointer-matrix"


def _write(arguments) -> int:
    from harness.capabilities import torch_version
    from matrix.corpus import write_corpus

    directory = arguments.out or os.path.join(CORPUS, torch_version())
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    manifest = write_corpus(directory)
    unwritable = sum("unwritable" in entry for entry in manifest["artifacts"])
    print(f"wrote {len(manifest['artifacts'])} artifacts ({unwritable} unwritable) to {directory}")
    return 0


def _verify_corpus(arguments) -> int:
    from harness.capabilities import torch_version
    from matrix.corpus import MANIFEST, write_corpus
    from matrix.describe import first_difference

    committed = os.path.join(CORPUS, torch_version(), MANIFEST)
    if not os.path.isfile(committed):
        print(f"corpus of {torch_version()}: none committed, nothing to compare with")
        return 0
    with open(committed) as handle:
        expected = json.load(handle)
    with tempfile.TemporaryDirectory(prefix="matrix-corpus-") as directory:
        again = write_corpus(directory, progress=lambda line: None)
    difference = first_difference(expected, again)
    if difference:
        print(f"corpus of {torch_version()}: written again, the manifest differs: {difference}")
        return 1
    print(f"corpus of {torch_version()}: written again, same manifest")
    return 0


def _read(arguments) -> int:
    from harness.capabilities import torch_version
    from matrix.reader import malformed_records, payload_records, read_corpus
    from matrix.results import write_records

    folders = corpora(CORPUS)
    records = []
    for directory in folders:
        records += read_corpus(directory)
    if not arguments.skip_payloads:
        records += payload_records() + malformed_records()
    out = arguments.out or os.path.join(RESULTS, f"{torch_version()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_records(records, out)
    print(f"read {len(folders)} corpora: {len(records)} records in {out}")
    return 0


def _bench(arguments) -> int:
    import subprocess

    from harness.capabilities import torch_version
    from matrix.versions import BENCHMARK_SELECTION

    out = os.path.join(ROOT, "matrix", "bench", f"{torch_version()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    command = [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider"]
    command += ["-k", BENCHMARK_SELECTION, f"--benchmark-json={out}"]
    status = subprocess.call(command, cwd=ROOT)
    print(f"benchmarks of {torch_version()}: {out}" if status == 0 else "benchmarks failed")
    return status


def _merge(arguments) -> int:
    from matrix.results import merge, read_records, write_records

    parts = sorted(glob.glob(os.path.join(RESULTS, "*.json")))
    if not parts:
        print(f"no results in {RESULTS}: run `python -m matrix run` first", file=sys.stderr)
        return 1
    records = merge([read_records(path) for path in parts])
    write_records(records, MERGED)
    print(f"merged {len(parts)} readers' results: {len(records)} records in {MERGED}")
    return 0


def _render(arguments) -> int:
    from matrix.render import render
    from matrix.results import read_records

    for path in render(read_records(MERGED), os.path.join(ROOT, "matrix")):
        print(f"wrote {path}")
    return 0


def _kinds(arguments) -> int:
    from matrix.corpus import generated_kind_files

    stale = []
    for path, text in generated_kind_files().items():
        with open(path) as handle:
            if handle.read() == text:
                continue
        stale.append(os.path.relpath(path, ROOT))
        if not arguments.check:
            with open(path, "w") as handle:
                handle.write(text)
    if arguments.check:
        print(f"stale: {', '.join(stale)}" if stale else "up to date")
        return 1 if stale else 0
    print(f"wrote {', '.join(stale)}" if stale else "up to date")
    return 0


def _recipes(arguments) -> int:
    from matrix import recipes

    steps = {
        "recipes-write": recipes.write_recipes,
        "recipes-read": recipes.read_recipes,
        "recipes-merge": recipes.merge_recipes,
    }
    steps[arguments.command]()
    return 0


def plan(
    versions: list[str], committed: set[str], with_recipes: set[str], rewrite: bool, bench: bool
) -> list:
    """The steps of ``run``: a write step for each version whose corpus (``committed``) or
    recipe corpora (``with_recipes``) are not committed yet (every version with
    ``rewrite``), writing only what is missing; then a read step for each version."""
    from matrix.driver import Step

    steps = []
    for version in versions:
        writing = [] if version in committed and not rewrite else [["write"]]
        if version not in with_recipes or rewrite:
            writing.append(["recipes-write"])
        if writing:
            steps.append(Step("write", version, writing))
    reading = [["verify-corpus"], ["read"], ["recipes-read"]] + ([["bench"]] if bench else [])
    return steps + [Step("read", version, reading) for version in versions]


def _run(arguments) -> int:
    from matrix.driver import GB_PER_ENV, run_steps
    from matrix.versions import VERSIONS, check_versions

    if arguments.checkpointer is not None:
        from matrix.user_code import run_command

        return run_command(
            arguments.checkpointer,
            arguments.purpose,
            arguments.python or [],
            arguments.versions or [],
            arguments.out,
            arguments.baseline,
            arguments.timeout,
            arguments.models,
            arguments.install,
        )
    user_only = [
        option
        for option, given in (
            ("--python", arguments.python),
            ("--baseline", arguments.baseline),
            ("--purpose", arguments.purpose != "resume"),
            ("--out", arguments.out != _USER_OUT),
            ("--models", arguments.models),
            ("--install", arguments.install),
        )
        if given
    ]
    if user_only:
        print(f"{', '.join(user_only)}: only with --checkpointer FILE.py:NAME", file=sys.stderr)
        return 2
    try:
        versions = check_versions(arguments.versions) if arguments.versions else list(VERSIONS)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    from matrix.recipes import committed_versions

    committed = {os.path.basename(path) for path in corpora(CORPUS)}
    steps = plan(versions, committed, committed_versions(), arguments.rewrite, arguments.bench)
    to_write = [step.version for step in steps if step.phase == "write"]
    need_gb = GB_PER_ENV * arguments.jobs
    free_gb = shutil.disk_usage(ROOT).free / 1e9
    print(
        f"matrix: {len(versions)} torch versions, {len(to_write)} corpora to write, "
        f"{len(steps)} environment runs, {arguments.jobs} at a time; each environment is "
        f"created, used and removed: needs about {need_gb:.0f} GB of disk at a time "
        f"({free_gb:.0f} GB free); logs in .tox/matrix-logs/"
    )
    if free_gb < need_gb:
        print(
            f"not enough free disk: {need_gb:.0f} GB needed; lower --jobs or free some",
            file=sys.stderr,
        )
        return 1
    # Every corpus must be written before any reader starts: run the phases one after another.
    failed, seconds, peak = [], 0.0, 0
    for phase in ("write", "read"):
        phase_steps = [step for step in steps if step.phase == phase]
        if phase_steps:
            phase_failed, phase_seconds, phase_peak = run_steps(
                phase_steps, arguments.jobs, arguments.keep_envs
            )
            failed += phase_failed
            seconds += phase_seconds
            peak = max(peak, phase_peak)
    print(f"matrix took {seconds / 60:.1f} min; disk peak {peak / 1e9:.1f} GB above the start")
    _merge(arguments)
    _render(arguments)
    from matrix.recipes import merge_recipes

    merge_recipes()
    if failed:
        print(f"failed: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matrix", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write this torch's corpus")
    write.add_argument("--out", help="folder (default: matrix/corpus/<version>)")
    write.set_defaults(handler=_write)
    verify = commands.add_parser(
        "verify-corpus", help="check that writing again gives the same manifest"
    )
    verify.set_defaults(handler=_verify_corpus)
    read = commands.add_parser("read", help="read every corpus and attack the loader")
    read.add_argument("--out", help="results file (default: matrix/results/<version>.json)")
    read.add_argument(
        "--skip-payloads",
        action="store_true",
        help="read corpora only: no hostile or damaged files",
    )
    read.set_defaults(handler=_read)
    bench = commands.add_parser("bench", help="run the benchmarks every version runs")
    bench.set_defaults(handler=_bench)
    commands.add_parser("merge", help="merge matrix/results/*.json").set_defaults(handler=_merge)
    commands.add_parser("render", help="draw matrix/grid.md and grid.png").set_defaults(
        handler=_render
    )
    for name, does in (
        ("recipes-write", "write this torch's corpus of each recipe of matrix.recipes"),
        ("recipes-read", "read every committed recipe corpus with its recipe"),
        ("recipes-merge", "merge the recipes' results and draw their grids"),
    ):
        commands.add_parser(name, help=does).set_defaults(handler=_recipes)
    kinds = commands.add_parser(
        "kinds", help="write matrix/kinds.json and the kinds table of matrix/README.md"
    )
    kinds.add_argument("--check", action="store_true", help="exit 1 if either is stale")
    kinds.set_defaults(handler=_kinds)
    run = commands.add_parser("run", help="the whole matrix, through tox")
    run.add_argument("--versions", nargs="+", help="a subset of the versions (default: all)")
    run.add_argument("--jobs", type=int, default=1, help="environments at a time (each about 5 GB)")
    run.add_argument("--rewrite", action="store_true", help="write every corpus again")
    run.add_argument("--keep-envs", action="store_true", help="keep the environments afterwards")
    run.add_argument(
        "--bench", action="store_true", help="also run the benchmarks into matrix/bench/"
    )
    user = run.add_argument_group(
        "your checkpointer (docs/your-code-across-versions.md): with --checkpointer, the "
        "environments are --python executables and the --versions' tox environments"
    )
    user.add_argument("--checkpointer", metavar="FILE.py:NAME", help="your checkpointer")
    user.add_argument("--purpose", choices=("resume", "inference"), default="resume")
    user.add_argument(
        "--python",
        action="append",
        metavar="PATH",
        help="a Python with torch and this project importable (repeat; default: this one)",
    )
    user.add_argument("--out", default=_USER_OUT, help=f"results folder (default: {_USER_OUT})")
    user.add_argument("--baseline", metavar="DIR", help="an earlier --out: exit 1 if worse")
    user.add_argument(
        "--models",
        metavar="FILE.py:NAME",
        help="your harness.UserModel records (one, or a list): one more case each",
    )
    user.add_argument(
        "--install",
        metavar="PATH",
        help="pip install this (your project: .) into each environment first",
    )
    user.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per environment's write or read"
    )
    run.set_defaults(handler=_run)
    arguments = parser.parse_args(argv)
    return arguments.handler(arguments)


if __name__ == "__main__":
    sys.exit(main())
