"""bench/gpu_suite.sh, the first GPU run in one 8-minute call: its stage budgets, its time limits, and a
dry run here (every stage's logic that needs no GPU) writing at most 8 files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import gpu_suite

ROOT = Path(__file__).resolve().parent.parent


def test_stage_budgets_fit_one_eight_minute_call():
    budgets = {stage.name: stage.budget_s for stage in gpu_suite.STAGES}
    assert sum(budgets.values()) <= gpu_suite.TOTAL_BUDGET_S == 480, budgets
    assert list(budgets)[:3] == ["env", "build", "smoke"]  # the build before anything that needs it
    assert {"tests-cuda", "tests-triton", "memcheck", "racecheck"} <= set(budgets)
    assert {"bench-bfloat16", "bench-float16", "bench-float32"} <= set(budgets)
    assert len(gpu_suite.OUTPUT_FILES) <= gpu_suite.MAX_FILES == 8


def test_a_stage_past_its_limit_is_stopped(tmp_path):
    suite = gpu_suite.Suite(tmp_path, dry_run=True)
    stage = gpu_suite.Stage("slow", 1, "tests.log", "sleeps")
    began = time.monotonic()
    rc, _ = suite.command(stage, [sys.executable, "-c", "import time; time.sleep(60)"], limit_s=1)
    assert rc is None and time.monotonic() - began < 15
    assert "slow: timed out" in (tmp_path / "tests.log").read_text()


def test_dry_run_runs_every_stage_within_eight_files(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(out), "--dry-run"],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and set(files) <= set(gpu_suite.OUTPUT_FILES) and all(p.is_file() for p in out.iterdir())
    summary = (out / "summary.txt").read_text()
    assert "stage budgets sum to 470 s" in summary and "10/10 stages" in summary
    for stage in gpu_suite.STAGES:
        line = next(line for line in summary.splitlines() if line.startswith(stage.name + " "))
        assert f" {stage.budget_s} " in line and " dry-run " in line, line
    # The stages that run here did: the selections collect tests, the benchmark's rows merge, the table shows.
    collected = [int(n) for n in re.findall(r"selection collected: (\d+)/", summary)]
    assert len(collected) == 2 and min(collected) > 100, collected  # tests-cuda, tests-triton
    sanitized = [int(n) for n in re.findall(r"\((\d+)/\d+ tests collected", summary)]
    assert len(sanitized) == 2 and min(sanitized) == 6, sanitized  # memcheck, racecheck: every kernel, TF32 too
    assert "rows merged into bench.json" in summary and "us/step" in summary
    assert (out / "bench.json").stat().st_size > 0 and (out / "bench.csv").read_text().startswith("case,")


def test_the_per_step_table_sets_the_cost_model_beside_each_cuda_row(tmp_path):
    """The first GPU run checks the cost model as it measures: a cuda row's "model" column is the plan's
    expected us per step (forward; training forward + backward), other competitors show "-"."""
    suite = gpu_suite.Suite(tmp_path, dry_run=True)
    base = dict(cell="gru", dtype="bfloat16", batch=16, hidden=256, status="ok", speedup_vs_nn=1.5)
    for impl in ("fastrnn-cuda", "nn"):
        for mode in ("forward", "train"):
            for seq_len, ms in ((64, 0.2), (256, 0.6)):
                suite.rows.append(dict(base, impl=impl, mode=mode, seq_len=seq_len, ms=ms))
    asked = []

    def describe(kernel, steps, batch, hidden, state, projection, dtype):
        asked.append((kernel, steps, batch, hidden, str(dtype)))
        return f"persistent: ...; expected {1.5 if kernel.endswith('forward') else 2.0} us per step on an H100/H200 (...)"

    table = suite.per_step_table(describe)
    rows = {(line.split()[4], line.split()[5]): line.split()[-1] for line in table[2:]}
    assert rows == {("forward", "fastrnn-cuda"): "1.5", ("train", "fastrnn-cuda"): "3.5", ("forward", "nn"): "-",
                    ("train", "nn"): "-"}, table
    assert ("gru_backward", 256, 16, 256, "torch.bfloat16") in asked and "model" in table[1]
