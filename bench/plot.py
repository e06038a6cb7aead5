"""The plot: time of one call against batch size, one panel per shape and mode that has timings, one
line per competitor with its p20-p80 as error bars; the title names the device, versions and commit,
and every competitor that is not drawn is listed under the panels with the reason."""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path

from .report import is_skipped, skipped_summary


def _shape_key(row: dict) -> tuple:
    return (row["cell"], row["dtype"], row["seq_len"], row["hidden"], row["input_size"], row.get("layers", 1),
            row.get("bidirectional", False), row.get("min_length_fraction"))


def _shape_title(key: tuple, mode: str) -> str:
    cell, dtype, seq_len, hidden, input_size, layers, bidirectional, fraction = key
    parts = [cell, dtype, f"T={seq_len}", f"H={hidden}"]
    if input_size != hidden:
        parts.append(f"I={input_size}")
    if layers != 1:
        parts.append(f"L={layers}")
    if bidirectional:
        parts.append("bidir")
    if fraction is not None:
        parts.append(f"varlen>={fraction:g}T")
    return " ".join([*parts, mode])


def title(environment: dict) -> str:
    versions = [f"torch {environment.get('torch')}"]
    if environment.get("cuda"):
        versions.append(f"CUDA {environment['cuda']}")
    versions.append(f"triton {environment.get('triton') or 'not installed'}")
    return (f"time of one call vs batch size, median with p20-p80 bars (lower is faster)\n"
            f"{environment.get('device')}; {', '.join(versions)}; commit {environment.get('commit')}; "
            f"{environment.get('date')}")


def not_drawn(rows: list[dict]) -> list[str]:
    """Each competitor that is in no panel, with why: skipped here, or WRONG / FAILED."""
    lines = [f"skipped: {text}" for text in skipped_summary(rows)]
    seen = set()
    for row in rows:
        if not is_skipped(row) and row["status"] != "ok" and (row["impl"], row["status"]) not in seen:
            seen.add((row["impl"], row["status"]))
            lines.append(f"{row['impl']} ({row['case']}): {row['status']}")
    return lines


def panel_grid(rows: list[dict]) -> tuple[dict[tuple, dict[str, list]], int]:
    """The panels, in drawing order: (shape, mode) -> impl -> [(batch, ms, p20, p80)], only where some
    competitor was timed correct; and the number of columns (a row per shape and a column per mode when
    that fills the grid, else up to 3, leaving as few blank places as can be)."""
    panels: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["ms"] is not None and row["status"] == "ok":
            panels[(_shape_key(row), row["mode"])][row["impl"]].append((row["batch"], row["ms"], row["low_ms"], row["high_ms"]))
    keys = sorted(panels, key=lambda k: (tuple(str(v) for v in k[0]), k[1]))
    shapes, modes = {shape for shape, _ in keys}, {mode for _, mode in keys}
    if len(modes) > 1 and len(keys) == len(shapes) * len(modes):
        columns = len(modes)
    else:  # up to 3 columns, as few blank places in the last row as can be
        columns = min((3, 2), key=lambda c: -len(keys) % c) if len(keys) > 2 else max(len(keys), 1)
    return {key: panels[key] for key in keys}, columns


def plot_time_vs_batch(path: Path, rows: list[dict], environment: dict) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    panels, columns = panel_grid(rows)
    if not panels:
        return None
    keys = list(panels)
    grid_rows = math.ceil(len(keys) / columns)
    impl_order = list(dict.fromkeys(row["impl"] for row in rows))
    colors = {impl: plt.get_cmap("tab10")(i % 10) for i, impl in enumerate(impl_order)}
    notes = not_drawn(rows)

    width = max(5.2 * columns, 10.0)  # room for the title and the notes however few the panels
    wrapped = [piece for note in notes for piece in textwrap.wrap(note, int(width * 14), subsequent_indent="    ")]
    figure, axes = plt.subplots(grid_rows, columns, figsize=(width, 3.6 * grid_rows + 0.14 * len(wrapped) + 1.4),
                                squeeze=False)
    handles = {}
    for axis, key in zip(axes.flat, keys):
        batches = set()
        for impl, points in sorted(panels[key].items(), key=lambda item: impl_order.index(item[0])):
            points.sort()
            batch, ms, low, high = zip(*points)
            batches.update(batch)
            line = axis.errorbar(batch, ms, yerr=[[m - lo for m, lo in zip(ms, low)], [hi - m for m, hi in zip(ms, high)]],
                                 marker="o", markersize=4, capsize=3, color=colors[impl], label=impl)
            handles.setdefault(impl, line)
        axis.set_title(_shape_title(*key), fontsize=9)
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted(batches), [str(b) for b in sorted(batches)])
        axis.xaxis.set_minor_locator(ticker.NullLocator())
        axis.set_yscale("log")
        axis.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel("batch size")
        axis.set_ylabel("ms per call")
        axis.grid(True, which="major", alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        figure.delaxes(axis)
    figure.suptitle("\n".join(textwrap.fill(line, int(width * 12)) for line in title(environment).splitlines()),
                    fontsize=10)
    # Under the panels: the legend, then what is not drawn and why (heights in inches, as fractions).
    notes_height = (0.14 * (len(wrapped) + 1) + 0.1) / figure.get_figheight() if wrapped else 0.0
    legend_height = 0.45 / figure.get_figheight()
    ordered = [impl for impl in impl_order if impl in handles]
    figure.legend([handles[impl] for impl in ordered], ordered, loc="lower center", ncol=min(len(ordered), 5),
                  fontsize=8, frameon=False, bbox_to_anchor=(0.5, notes_height))
    if wrapped:
        figure.text(0.01, notes_height, "not drawn:\n" + "\n".join(wrapped), fontsize=7, va="top", family="monospace")
    figure.tight_layout(rect=(0, notes_height + legend_height, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
