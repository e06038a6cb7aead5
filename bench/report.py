"""Writing results: the terminal table (timed rows, then the skipped competitors once each), JSON, CSV
and the plot (bench/plot.py)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from . import load

COLUMNS = ["case", "impl", "mode", "status", "ms", "low_ms", "high_ms", "threads", "cpu_ms", "oversubscribed",
           "speedup_vs_nn", "us_per_step", "tokens_per_s", "gflops", "pct_peak", "peak_mb", "floor_ms", "error",
           "nn_error"]

SKIPPED = "skipped: "

LEGEND = """\
median ms, p20-p80: the median time of one call and the 20th-80th percentile of the measured calls.
speed-up: nn's median time / this row's, same case and mode; above 1 is faster than nn, below 1 slower
  (0.25 = 4x slower).
error: the largest relative error of outputs, final states and every gradient against nn in float64;
  nn's own row shows nn's error in this dtype, and a competitor passes at most 3x that (plus a floor).
  Inference-only runtimes (onnxruntime, openvino) are checked on outputs and final states, against nn's
  error over those; openvino-bf16, which computes in bfloat16, against nn's own error run in bfloat16.
cpu ms: the median CPU time of the calling thread per call, on 1-thread rows (where it does all the work):
  unlike wall time it does not grow while the thread waits for a core on a shared machine.
GFLOP/s, % peak: the case's matmul FLOPs (input projection included; training 3x the forward) per second of
  median time, and that as a share of the peak in the header (on a CPU: per thread, times the row's threads).
floor ms: those FLOPs at that peak, so no correct implementation is faster (a row at 100% of the peak).
""" + load.LEGEND


def is_skipped(row: dict) -> bool:
    return row["status"].startswith(SKIPPED)


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _flagged(text: str, flag: bool) -> str:
    return text + (load.MARK if flag else " ")


def table(rows: list[dict]) -> str:
    """One line per timed, WRONG or FAILED (case, implementation, mode), the legend, then the skipped
    competitors, each reason once."""
    shown = [row for row in rows if not is_skipped(row)]
    nn_rows = {(row["case"], row["mode"]): row for row in rows if row["impl"] == "nn"}

    def speedup(row: dict) -> str:
        if row["speedup_vs_nn"] is None:
            return "-"
        return _flagged(f"{row['speedup_vs_nn']:.2f}", load.speedup_suspect(row, nn_rows.get((row["case"], row["mode"]))))

    columns = [  # (header, cell text, right-aligned)
        ("case", lambda r: r["case"], False),
        ("impl", lambda r: r["impl"], False),
        ("mode", lambda r: r["mode"], False),
        ("median ms", lambda r: "-" if r["ms"] is None else _flagged(f"{r['ms']:.3f}", bool(r.get("oversubscribed"))), True),
        ("p20-p80 ms", lambda r: "" if r["ms"] is None else f"{r['low_ms']:.3f}-{r['high_ms']:.3f}", True),
        ("cpu ms", lambda r: _number(r.get("cpu_ms"), ".3f"), True),
        ("speed-up", speedup, True),
        ("us/step", lambda r: _number(r["us_per_step"], ".2f"), True),
        ("GFLOP/s", lambda r: _number(r.get("gflops"), ".1f"), True),
        ("% peak", lambda r: _number(r.get("pct_peak"), ".1f"), True),
        ("floor ms", lambda r: _number(r["floor_ms"], ".3f"), True),
        ("peak MB", lambda r: _number(r["peak_mb"], ".0f"), True),
        ("error", lambda r: _number(r["error"], ".1e"), True),
        ("status", lambda r: r["status"], False),
    ]
    cells = [[text(row) for _, text, _ in columns] for row in shown]
    widths = [max([len(header)] + [len(line[i]) for line in cells]) for i, (header, _, _) in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [value.rjust(width) if right else value.ljust(width)
                 for value, width, (_, _, right) in zip(values, widths, columns)]
        return "  ".join(parts).rstrip()

    header = line([header for header, _, _ in columns])
    lines = [header, "-" * len(header), *map(line, cells)]
    if not shown:
        lines.append("(no competitor ran)")
    lines += ["", LEGEND]
    skipped = skipped_summary(rows)
    if skipped:
        lines += ["", "skipped (in no row above, nor in the plot):", *(f"  {text}" for text in skipped)]
    return "\n".join(lines)


def skipped_summary(rows: list[dict]) -> list[str]:
    """'impl, impl: reason' once per reason, saying in how many cases when not in all of them."""
    cases = {row["case"] for row in rows}
    where: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        if is_skipped(row):
            where[(row["impl"], row["status"].removeprefix(SKIPPED))].add(row["case"])
    by_reason: dict[tuple[str, int], list[str]] = defaultdict(list)
    for (impl, reason), skipped_cases in where.items():
        by_reason[(reason, len(skipped_cases))].append(impl)
    lines = []
    for (reason, count), impls in by_reason.items():
        scope = "" if count == len(cases) else f" (in {count} of {len(cases)} cases)"
        lines.append(f"{', '.join(impls)}{scope}: {reason}")
    return lines


def write_all(out_dir: Path, environment: dict, rows: list[dict]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    json_path.write_text(json.dumps({"environment": environment, "rows": rows}, indent=2))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written = [json_path, csv_path]
    from .plot import plot_time_vs_batch

    plot = plot_time_vs_batch(out_dir / "time_vs_batch.png", rows, environment)
    if plot is not None:
        written.append(plot)
    return written
