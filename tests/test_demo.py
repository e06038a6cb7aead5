"""The README's main job runs and its correctness checks pass (quick mode, on this machine's device)."""

import subprocess
import sys
from pathlib import Path


def test_demo_quick_runs_and_passes():
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "bench.demo", "--quick"], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAIL" not in done.stdout and done.stdout.count("PASS") >= 4, done.stdout[-3000:]
