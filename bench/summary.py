"""Summarise bench runs as a Markdown table: per case and mode, each competitor's median time and its
speed-up over nn in the same run, for one or more runs side by side (e.g. one per thread count).

    python -m bench.summary results/bench-1thread/results.json results/bench-2threads/results.json \\
        --impls fastrnn-cpp fastrnn-auto

Every figure is read from the runs' results.json; the header names each run's device, versions,
commit and command, so a table pasted into a results file says where it came from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .load import MARK, speedup_suspect


def load(path: Path) -> dict:
    run = json.loads(path.read_text())
    if "environment" not in run or "rows" not in run:
        raise ValueError(f"{path} is not a results.json written by python -m bench")
    return run


def run_label(environment: dict) -> str:
    return environment.get("device", "?")


def describe(runs: list[tuple[Path, dict]]) -> list[str]:
    lines = []
    for path, run in runs:
        env = run["environment"]
        lines.append(f"- `{env.get('command', '?')}` — {env.get('device', '?')}, torch {env.get('torch', '?')}, "
                     f"commit {env.get('commit', '?')}, {env.get('date', '?')} ({path})")
    return lines


def table(runs: list[tuple[Path, dict]], impls: list[str]) -> str:
    """One row per (case, mode); per run: nn's median ms, then each competitor's ms and speed-up."""
    keys: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, int, str], dict] = {}
    for index, (_, run) in enumerate(runs):
        for row in run["rows"]:
            key = (row["case"], row["mode"])
            if key not in keys:
                keys.append(key)
            cells[(*key, index, row["impl"])] = row
    header = ["case", "mode"]
    for _, run in runs:
        label = run_label(run["environment"])
        header += [f"nn ms ({label})"] + [f"{impl} ms (speed-up)" for impl in impls]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case, mode in keys:
        values = [case, mode]
        for index in range(len(runs)):
            base = cells.get((case, mode, index, "nn"))
            values.append(_ms(base))
            for impl in impls:
                row = cells.get((case, mode, index, impl))
                values.append(_with_ratio(row, base))
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def _ms(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['ms']:.3f}" if row.get("ms") is not None else row["status"]


def _with_ratio(row: dict | None, base: dict | None = None) -> str:
    if row is None:
        return "-"
    if row.get("ms") is None:
        return row["status"]
    ratio = row.get("speedup_vs_nn", row.get("x_nn"))  # x_nn: its name in results written before
    mark = MARK if speedup_suspect(row, base) else ""  # timed on an oversubscribed machine
    return f"{row['ms']:.3f} ({ratio:.2f}x{mark})" if ratio is not None else f"{row['ms']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of python -m bench runs")
    parser.add_argument("--impls", nargs="+", default=["fastrnn-cpp", "fastrnn-auto"],
                        help="competitors to show beside nn (default: fastrnn-cpp fastrnn-auto)")
    args = parser.parse_args(argv)
    try:
        runs = [(path, load(path)) for path in args.results]
    except (OSError, ValueError) as error:
        print(f"python -m bench.summary: {error}", file=sys.stderr)
        return 2
    print("\n".join(describe(runs)))
    print()
    print(table(runs, args.impls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
