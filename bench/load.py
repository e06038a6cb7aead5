"""Was the machine busy with other work while a row was timed? A row is flagged when its samples spread too
widely, or, on 1 thread, when its wall time exceeds the CPU time its thread got: time spent waiting for a
core, not computing. A flagged row's time, and every speed-up computed from it, is not to be quoted."""

from __future__ import annotations

SPREAD_LIMIT = 0.25  # (p80 - p20) / median above this: the calls did not take one time
WALL_CPU_LIMIT = 1.10  # median wall / median thread CPU time above this: the thread waited for a core

MARK = "!"

LEGEND = (f"{MARK} after a time: the machine was oversubscribed while this row was timed: its p20-p80 spread\n"
          f"  exceeds {SPREAD_LIMIT:.0%} of its median or, on 1 thread, its wall time exceeds {WALL_CPU_LIMIT:.2f}x its "
          f"CPU time;\n  after a speed-up: this row or nn's was. Retime such rows on a quieter machine before "
          f"quoting them.")


def oversubscribed(median_ms: float, low_ms: float, high_ms: float, cpu_ms: float | None = None) -> str | None:
    """Why these timings say the machine was oversubscribed, or None when they do not."""
    reasons = []
    spread = (high_ms - low_ms) / median_ms
    if spread > SPREAD_LIMIT:
        reasons.append(f"p20-p80 spread {spread:.0%} of the median")
    if cpu_ms is not None and cpu_ms > 0 and median_ms / cpu_ms > WALL_CPU_LIMIT:
        reasons.append(f"wall {median_ms / cpu_ms:.2f}x its thread's CPU time")
    return "; ".join(reasons) or None


def speedup_suspect(row: dict, nn_row: dict | None) -> bool:
    """A speed-up is nn's time over this row's: suspect when either was timed on an oversubscribed machine."""
    return bool(row.get("oversubscribed") or (nn_row is not None and nn_row.get("oversubscribed")))
