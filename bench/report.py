"""Writing results: the terminal table, JSON, CSV and the plot."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

COLUMNS = ["case", "impl", "mode", "status", "ms", "low_ms", "high_ms", "x_nn", "us_per_step", "tokens_per_s",
           "peak_mb", "floor_ms", "error", "nn_error"]


def table(rows: list[dict]) -> str:
    """One line per (case, implementation, mode); 'x nn' > 1 means faster than torch's nn module."""
    header = f"{'case':<44} {'impl':<25} {'mode':<7} {'ms':>9} {'p20-p80':>15} {'x nn':>6} {'us/step':>8} " \
             f"{'floor ms':>8} {'peak MB':>8}  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        if row["ms"] is None:
            lines.append(f"{row['case']:<44} {row['impl']:<25} {row['mode']:<7} {'':>9} {'':>15} {'':>6} {'':>8} "
                         f"{'':>8} {'':>8}  {row['status']}")
            continue
        spread = f"{row['low_ms']:.3f}-{row['high_ms']:.3f}"
        ratio = f"{row['x_nn']:.2f}" if row["x_nn"] is not None else "-"
        peak = f"{row['peak_mb']:.0f}" if row["peak_mb"] is not None else "-"
        lines.append(f"{row['case']:<44} {row['impl']:<25} {row['mode']:<7} {row['ms']:>9.3f} {spread:>15} {ratio:>6} "
                     f"{row['us_per_step']:>8.2f} {row['floor_ms']:>8.3f} {peak:>8}  {row['status']}")
    return "\n".join(lines)


def write_all(out_dir: Path, environment: dict, rows: list[dict]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    json_path.write_text(json.dumps({"environment": environment, "rows": rows}, indent=2))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written = [json_path, csv_path]
    plot = plot_time_vs_batch(out_dir / "time_vs_batch.png", rows)
    if plot is not None:
        written.append(plot)
    return written


def plot_time_vs_batch(path: Path, rows: list[dict]) -> Path | None:
    """Time vs batch, one panel per (cell, dtype, T, mode, H), one line per implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    panels: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["ms"] is not None and row["status"] == "ok":
            key = (row["cell"], row["dtype"], row["seq_len"], row["mode"], row["hidden"])
            panels[key][row["impl"]].append((row["batch"], row["ms"]))
    if not panels:
        return None
    keys = sorted(panels)
    columns = min(3, len(keys))
    rows_count = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows_count, columns, figsize=(5 * columns, 3.6 * rows_count), squeeze=False)
    for axis, key in zip(axes.flat, keys):
        for impl, points in sorted(panels[key].items()):
            points.sort()
            axis.plot([b for b, _ in points], [ms for _, ms in points], marker="o", label=impl)
        cell, dtype, seq_len, mode, hidden = key
        axis.set_title(f"{cell} {dtype} T={seq_len} H={hidden} {mode}", fontsize=9)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("batch")
        axis.set_ylabel("ms")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(keys):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
