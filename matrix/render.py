"""The matrix as people look at it: ``grid.md`` (tables) and ``grid.png`` (heatmaps).

Artifacts are grouped into panels (:data:`PANELS`). A cell of a panel is one writer and one
reader, loading with ``weights_only=True`` (the files of a format torch.load does not read,
such as safetensors or TorchScript, with that format's own loader); it shows the worst
outcome among the panel's artifacts (:data:`SEVERITY`) and how many artifacts ended so.
Hostile payloads and damaged checkpoints, which every reader builds itself, have their own
panels: attack class (or kind of damage) against reader.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from harness.releases import version_key
from matrix.results import Record, kind_facts

__all__ = [
    "COLOURS",
    "PANELS",
    "SEVERITY",
    "SYMBOLS",
    "cell_table",
    "heatmap",
    "panel_of",
    "render",
    "shown_outcome",
    "worst",
]

# What a cell shows, worst first: the outcomes, with "refused" split in two. A weights_only
# refusal of a whole-model pickle or a hostile payload is the promise kept ("as promised");
# of anything else it is a loss. A user checkpointer's case restored identical whose resumed
# training or outputs could not be compared (the reader's torch trains it otherwise) is
# "restored": less than identical, shown apart from it.
SEVERITY = (
    "crashed",
    "executed",
    "error",
    "differs",
    "refused",
    "unwritable",
    "refused as promised",
    "restored",
    "identical",
)
# What the torch matrix's grid can show: every outcome but a user checkpointer's.
_MATRIX_SHOWN = tuple(outcome for outcome in SEVERITY if outcome != "restored")
#: The symbol of each outcome in a Markdown cell.
SYMBOLS = {
    "identical": "✓",
    "restored": "✓°",
    "refused as promised": "r",
    "differs": "≠",
    "refused": "R",
    "error": "E",
    "crashed": "💥",
    "executed": "☠",
    "unwritable": "–",
}
#: The colour of each outcome in a picture.
COLOURS = {
    "identical": "#4caf50",
    "restored": "#aed581",
    "unwritable": "#d9d9d9",
    "refused as promised": "#64b5f6",
    "refused": "#fdd835",
    "differs": "#fb8c00",
    "error": "#e53935",
    "executed": "#6a1b9a",
    "crashed": "#000000",
}
PANELS = {
    "models": "state_dict and outputs of every model family",
    "training": "training checkpoints, every optimizer and scheduler",
    "tensors": "every dtype, views, sparse, quantized",
    "packages": "inference package, whole-model pickle, CUDA-tagged, legacy format",
    "safetensors": "safetensors files of a few models and of every dtype, by load_file",
    "torchscript": "TorchScript archives of a few models, by torch.jit.load",
    "export": "torch.export archives of a few models, by torch.export.load",
    "distributed": "torch.distributed.checkpoint, written by 2 ranks, read by 1 and by 3",
}
# Panels of files each reader builds itself: their rows, and their title.
READER_PANELS = {
    "payloads": ("attack class", "hostile files, built by each torch"),
    "malformed": ("kind of damage", "damaged checkpoints, built by each torch"),
}


def panel_of(kind: str) -> str:
    """The panel an artifact kind is drawn in, as its record says."""
    return kind_facts(kind).panel


def shown_outcome(record: Record) -> str:
    """The outcome a cell counts: ``refused as promised`` for a weights_only refusal of a
    kind whose refusal is the promise (a whole-model pickle, a payload, a damaged file),
    else the record's outcome."""
    promised = kind_facts(record.kind).refusal_promised and record.load_mode.startswith(
        "weights_only"
    )
    return "refused as promised" if promised and record.outcome == "refused" else record.outcome


def _in_view(record: Record, load_mode: str) -> bool:
    """Whether a cell of the ``load_mode`` view (``weights_only``, ``weights_only_mmap``)
    counts ``record``: a load in that mode, or for a kind that has no ``weights_only`` mode
    (its own loader), in the ``weights_only`` view, a load in any of its modes."""
    if record.load_mode == load_mode:
        return True
    own = "weights_only" not in kind_facts(record.kind).load_modes
    return load_mode == "weights_only" and own


def worst(outcomes: list[str]) -> str:
    """The worst of ``outcomes`` (by :data:`SEVERITY`)."""
    return min(outcomes, key=SEVERITY.index)


def _row(record: Record) -> str:
    """The row of the record's panel: its writer, its attack class or its kind of damage."""
    panel = panel_of(record.kind)
    if panel == "payloads":
        return record.artifact
    if panel == "malformed":
        return record.kind.split(":", 1)[1]
    return record.writer


def _cells(records: list[Record], load_mode: str) -> dict[str, dict[tuple[str, str], list[str]]]:
    """Outcomes by panel, then by (row, column): (writer, reader), (attack, reader) or
    (kind of damage, reader)."""
    cells: dict[str, dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if _in_view(record, load_mode):
            cells[panel_of(record.kind)][(_row(record), record.reader)].append(
                shown_outcome(record)
            )
    return cells


def _reader_panel_rows(records: list[Record], panel: str) -> list[str]:
    return sorted({_row(r) for r in records if panel_of(r.kind) == panel})


def _cell_text(outcomes: list[str]) -> str:
    counts = Counter(outcomes)
    if worst(outcomes) == "identical":
        return SYMBOLS["identical"]
    return " ".join(
        f"{SYMBOLS[outcome]}{counts[outcome]}"
        for outcome in SEVERITY
        if counts[outcome] and outcome != "identical"
    )


def _versions(records: list[Record]) -> list[str]:
    return sorted({r.writer for r in records} | {r.reader for r in records}, key=version_key)


def cell_table(
    cells: dict[tuple[str, str], list[str]], rows: list[str], columns: list[str], corner: str
) -> str:
    """A Markdown table of ``cells`` (outcomes by (row, column)): ✓ where every outcome is
    identical, else each other outcome's symbol and count."""
    lines = [f"| {corner} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        texts = [
            _cell_text(cells[(row, column)]) if (row, column) in cells else "" for column in columns
        ]
        lines.append(f"| **{row}** | " + " | ".join(texts) + " |")
    return "\n".join(lines)


_NOT_LISTED = ("identical", "unwritable", "refused as promised")
_DIGEST = re.compile(r"'[0-9a-f]{64}'")


def _differences(records: list[Record]) -> list[str]:
    """Every weights_only outcome (with or without mmap; for a kind with loads of its own,
    every load) other than identical, unwritable or refused as promised, grouped by artifact,
    outcome and message (digests left out), with the writers and readers it happens for."""
    groups: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
    for record in records:
        shown = shown_outcome(record)
        drawn = _in_view(record, "weights_only") or record.load_mode == "weights_only_mmap"
        if drawn and shown not in _NOT_LISTED:
            message = _DIGEST.sub("…", record.message)
            label = _row(record) if panel_of(record.kind) == "malformed" else record.artifact
            if record.load_mode.endswith("mmap"):
                label += " (mmap)"
            elif not record.load_mode.startswith("weights_only"):
                label += f" ({record.load_mode})"
            groups[(label, record.outcome, message)].append(record)
    lines = []
    for (artifact, outcome, message), found in sorted(groups.items()):
        writers = sorted({r.writer for r in found}, key=version_key)
        readers = sorted({r.reader for r in found}, key=version_key)
        lines.append(
            f"| {artifact} | {outcome} | {len(found)} | {', '.join(writers)} | "
            f"{', '.join(readers)} | {message.replace('|', '/')[:160]} |"
        )
    return lines


def _markdown(records: list[Record]) -> str:
    versions = _versions(records)
    cells = _cells(records, "weights_only")
    legend = ", ".join(f"{SYMBOLS[o]} {o}" for o in _MATRIX_SHOWN)
    parts = [
        "# The cross-version matrix",
        "",
        f"{len(records)} loads from `matrix/results.json`. Rows: the torch that wrote the file; "
        "columns: the torch that loaded it with `weights_only=True` (files of other formats: "
        "with the format's own loader). A cell shows ✓ when every "
        "artifact of the panel loaded identical, else each other outcome with its count "
        f"({legend}).",
        "The picture: `grid.png`. Every record, with its message: `results.json`.",
    ]
    for panel, title in PANELS.items():
        parts += [
            "",
            f"## {panel}: {title}",
            "",
            cell_table(cells.get(panel, {}), versions, versions, "writer \\ reader"),
        ]
    with_mmap = _cells(records, "weights_only_mmap")
    for panel, (rows_are, title) in READER_PANELS.items():
        rows = _reader_panel_rows(records, panel)
        for by_panel, options in ((cells, ""), (with_mmap, ", mmap=True")):
            found = by_panel.get(panel, {})
            readers = [v for v in versions if any((row, v) in found for row in rows)]
            if readers:
                parts += [
                    "",
                    f"## {panel}: {title}, loaded with weights_only=True{options}",
                    "",
                    cell_table(found, rows, readers, f"{rows_are} \\ torch"),
                ]
    parts += [
        "",
        "## Every load with weights_only=True that was not identical",
        "",
        "| artifact | outcome | loads | writers | readers | message |",
        "|---|---|---|---|---|---|",
        *_differences(records),
    ]
    return "\n".join(parts) + "\n"


# Outcomes whose colour is dark: their cells' labels are white.
_DARK = ("executed", "crashed", "error")


def heatmap(
    axis: Any,
    cells: dict[tuple[str, str], list[str]],
    rows: list[str],
    columns: list[str],
    label: Callable[[str, int], str],
    aspect: str = "equal",
) -> None:
    """Draw ``cells`` (outcomes by (row, column)) on the matplotlib ``axis``: each cell in
    the colour of its worst outcome, labelled ``label(worst, how many ended so)`` where that
    is not identical; the rows and columns named on the axes."""
    from matplotlib.colors import ListedColormap

    grid = [[float("nan")] * len(columns) for _ in rows]
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            outcomes = cells.get((row, column))
            if not outcomes:
                continue
            shown = worst(outcomes)
            grid[i][j] = SEVERITY.index(shown)
            if shown != "identical":
                text = label(shown, sum(o == shown for o in outcomes))
                colour = "white" if shown in _DARK else "black"
                axis.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    colormap = ListedColormap([COLOURS[o] for o in SEVERITY])
    axis.imshow(grid, cmap=colormap, vmin=-0.5, vmax=len(SEVERITY) - 0.5, aspect=aspect)
    axis.set_xticks(range(len(columns)), columns, rotation=90, fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)


def _picture(records: list[Record], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    versions = _versions(records)
    cells = _cells(records, "weights_only")
    panels = [(name, versions) for name in PANELS]
    panels += [
        (name, rows) for name in READER_PANELS if (rows := _reader_panel_rows(records, name))
    ]
    own_loader = {
        panel_of(r.kind) for r in records if "weights_only" not in kind_facts(r.kind).load_modes
    }
    columns = 4
    lines = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(32, 8.5 * lines))
    for axis, (panel, rows) in zip(axes.flat, panels, strict=False):
        heatmap(axis, cells.get(panel, {}), rows, versions, lambda _, count: str(count), "auto")
        loader = "its format's loader" if panel in own_loader else "torch.load, weights_only=True"
        axis.set_xlabel(f"reader ({loader})")
        rows_are, title = READER_PANELS.get(panel, ("writer (torch.save)", PANELS.get(panel)))
        axis.set_ylabel(rows_are)
        axis.set_title(f"{panel}: {title}", fontsize=10)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    handles = [Patch(color=COLOURS[o], label=o) for o in _MATRIX_SHOWN]
    figure.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        fontsize=12,
        title="worst outcome in the cell (number: how many artifacts)",
    )
    figure.suptitle(
        "written by one torch version, loaded by another: torch.load(weights_only=True), "
        "and the other formats by their own loaders",
        fontsize=16,
    )
    figure.tight_layout(rect=(0, 0.05, 1, 0.97))
    figure.savefig(path, dpi=80)
    plt.close(figure)


def render(records: list[Record], directory: str) -> list[str]:
    """Write ``grid.md`` and ``grid.png`` of ``records`` into ``directory``; their paths."""
    markdown = os.path.join(directory, "grid.md")
    with open(markdown, "w") as handle:
        handle.write(_markdown(records))
    picture = os.path.join(directory, "grid.png")
    _picture(records, picture)
    return [markdown, picture]
