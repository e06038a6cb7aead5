"""The first GPU run in one call: build, test and benchmark within 8 minutes, everything in one folder.

    bash bench/gpu_suite.sh OUT            # on a machine with a CUDA GPU, from the repository root
    bash bench/gpu_suite.sh OUT --dry-run  # anywhere: every stage's logic that needs no GPU, and the budgets

Stages run in order, each under its own time limit (STAGES: the budgets sum to at most 480 s), most
informative first, and each writes its results as soon as it ends, so a run cut short keeps what it got:

    env           GPU, driver, torch/triton/CUDA versions, compute capability
    build         fastrnn._C for this GPU's architecture only, MAX_JOBS = all cores (nothing downloaded)
    smoke         one small forward + backward per kernel backend and dtype against float64
    tests-cuda    the GPU tests of backend "cuda": tests/test_cuda_gpu.py on the bounded grid, and
                  tests/test_conformance.py's cuda-device cases of backend cuda (float32 TF32 off and on)
    tests-triton  the same for backend "triton" (tests/test_triton.py)
    bench-*       python -m bench at DESIGN.md's anchor shapes (LSTM and GRU, B in {1, 16, 64},
                  H in {256, 1024}) at T = 64 and 256: ms, ratio to nn (cuDNN), and us per step from
                  the two lengths, (ms(256) - ms(64)) / 192, which leaves out the per-call overhead, beside
                  the cost model's expected us per step for the cuda kernels (csrc/README.md)
    memcheck,     compute-sanitizer's memcheck and racecheck over the small-shape test of every CUDA kernel
    racecheck

The output folder holds at most 8 files: summary.txt (the stage table, the environment, the per-step
table; rewritten after every stage), build.log, tests.log, sanitizer.log, bench.log and the merged
benchmark bench.json, bench.csv, bench.png (python -m bench's results.json, results.csv, plot).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOTAL_BUDGET_S = 480
MAX_FILES = 8
SHORT, LONG = 64, 256  # the two lengths of the per-step figure
ANCHORS = ["--cells", "lstm", "gru", "--batch", "1", "16", "64", "--hidden", "256", "1024",
           "--seq-len", str(SHORT), str(LONG)]
BENCH_ARGS = ["--impls", "fastrnn-cuda", "fastrnn-triton", "--min-seconds", "0.05", "--rounds", "1"]
# The dry run's stand-in benchmark: the same code path (bench CLI, merge, per-step table) on a tiny CPU case.
DRY_BENCH = ["--device", "cpu", "--cells", "lstm", "--dtypes", "float32", "--batch", "1", "--hidden", "8",
             "--seq-len", "4", "8", "--impls", "fastrnn-reference", "--min-seconds", "0.01", "--rounds", "1",
             "--threads", "1"]
GPU_TESTS = {
    "cuda": ["tests/test_cuda_gpu.py", "tests/test_conformance.py", "-k", "test_cuda_gpu or cuda-cuda"],
    "triton": ["tests/test_triton.py", "tests/test_conformance.py", "-k", "test_triton or triton-cuda"],
}
SANITIZED = ["tests/test_cuda_gpu.py", "-k", "small_shapes_for_compute_sanitizer"]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--tb=line"]
PER_TEST_TIMEOUT = ["--timeout", "60"]  # pytest-timeout, where installed: one hung test costs a minute, not the stage


@dataclasses.dataclass
class Stage:
    name: str
    budget_s: int
    log: str  # the file its output goes to (appended)
    what: str


STAGES = [
    Stage("env", 10, "summary.txt", "GPU, driver, versions, compute capability"),
    Stage("build", 135, "build.log", "fastrnn._C for this GPU's arch, all cores"),
    Stage("smoke", 15, "tests.log", "one small fwd+bwd per backend and dtype vs float64"),
    Stage("tests-cuda", 65, "tests.log", "GPU tests of backend cuda, bounded grid, TF32 off and on"),
    Stage("tests-triton", 65, "tests.log", "GPU tests of backend triton, bounded grid, TF32 off and on"),
    Stage("bench-bfloat16", 45, "bench.log", "anchor shapes, T = 64 and 256, vs nn (cuDNN)"),
    Stage("bench-float16", 45, "bench.log", "anchor shapes, T = 64 and 256, vs nn (cuDNN)"),
    Stage("memcheck", 20, "sanitizer.log", "compute-sanitizer memcheck, small shapes, every kernel"),
    Stage("racecheck", 25, "sanitizer.log", "compute-sanitizer racecheck, small shapes, every kernel"),
    Stage("bench-float32", 45, "bench.log", "anchor shapes, T = 64 and 256, vs nn (cuDNN)"),
]
OUTPUT_FILES = sorted({stage.log for stage in STAGES} | {"summary.txt", "bench.json", "bench.csv", "bench.png"})

SMOKE = r"""
import sys, torch, fastrnn
from fastrnn.backends import unavailable_reason
device = sys.argv[1]
backends = sys.argv[2:]
print(fastrnn.explain(device))
for backend in backends:
    reason = unavailable_reason(backend, device)
    if reason is not None:
        print(f"smoke {backend}: unavailable: {reason}")
        continue
    for cell in (fastrnn.LSTM, fastrnn.GRU):
        for dtype in ((torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,)):
            torch.manual_seed(0)
            ours = cell(32, 64, num_layers=2, backend=backend, device=device, dtype=dtype)
            exact = cell(32, 64, num_layers=2, backend="reference", device=device, dtype=torch.float64)
            exact.load_state_dict(ours.state_dict())
            x = torch.randn(17, 5, 32, device=device, dtype=torch.float64)
            try:
                errors = []
                for module, inputs in ((ours, x.to(dtype)), (exact, x)):
                    inputs.requires_grad_(True)
                    out = module(inputs)[0]
                    out.sum().backward()
                    errors.append((out, inputs.grad))
                rel = [((a.double() - b).norm() / b.norm()).item() for a, b in zip(errors[0], errors[1])]
                print(f"smoke {backend} {cell.__name__} {str(dtype)[6:]}: output error {rel[0]:.1e}, "
                      f"input-gradient error {rel[1]:.1e} (vs float64)")
            except Exception as error:
                print(f"smoke {backend} {cell.__name__} {str(dtype)[6:]}: FAILED {type(error).__name__}: {error}")
"""


class Suite:
    def __init__(self, out: Path, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.start = time.monotonic()
        self.rows: list[dict] = []  # the merged benchmark rows
        self.bench_env: dict | None = None
        self.env_lines: list[str] = []
        self.results: list[tuple[Stage, float, str, str]] = []  # stage, seconds, status, result
        self.capability: str | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="fastrnn-gpu-suite-"))
        self.base_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            FASTRNN_GPU_GRID="bounded", FASTRNN_TRITON_AUTOTUNE="0", FASTRNN_BUILD_ON_FIRST_USE="0")

    # --- running -------------------------------------------------------------------------------------

    def command(self, stage: Stage, argv: list[str], limit_s: float, env: dict | None = None) -> tuple[int | None, str]:
        """Run argv under limit_s, its output appended to the stage's log; (rc or None on timeout, output)."""
        with open(self.out / stage.log, "a") as log:
            log.write(f"\n=== {stage.name}: {' '.join(argv)} (limit {limit_s:.0f} s)\n")
            log.flush()
            process = subprocess.Popen(argv, cwd=ROOT, env=env or self.base_env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                output, _ = process.communicate(timeout=max(limit_s, 1))
                rc = process.returncode
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGINT)  # pytest then still prints its failures so far
                try:
                    output, _ = process.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    output, _ = process.communicate()
                rc = None
            log.write(output or "")
            log.write(f"=== {stage.name}: {'timed out' if rc is None else f'rc={rc}'}\n")
        return rc, output or ""

    def run(self) -> int:
        self.write_summary()
        for stage in STAGES:
            began = time.monotonic()
            deadline = TOTAL_BUDGET_S - (began - self.start)
            limit = min(stage.budget_s, deadline)
            if limit < 3:
                status, result = "skipped", "no time left in the 480 s budget"
            else:
                try:
                    status, result = getattr(self, "stage_" + stage.name.split("-")[0].replace("-", "_"))(stage, limit)
                except Exception as error:  # a stage that breaks is reported; the next one still runs
                    status, result = "error", f"{type(error).__name__}: {error}"
            self.results.append((stage, time.monotonic() - began, status, result))
            self.write_summary()
            print(f"[{time.monotonic() - self.start:6.1f} s] {stage.name:<14} {status:<9} {result.splitlines()[0] if result else ''}",
                  flush=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        files = sorted(p.name for p in self.out.iterdir())
        print(f"{len(files)} files in {self.out}: {' '.join(files)}")
        return 0 if all(status in ("ok", "dry-run") for _, _, status, _ in self.results) else 1

    @staticmethod
    def _status(rc: int | None) -> str:
        return "timeout" if rc is None else "ok" if rc == 0 else f"rc={rc}"

    # --- stages --------------------------------------------------------------------------------------

    def stage_env(self, stage: Stage, limit: float):
        lines = []
        smi = shutil.which("nvidia-smi")
        if smi:
            rc, output = self._capture([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                        "--format=csv,noheader"], limit / 3)
            lines.append(f"gpu: {output.strip() or f'nvidia-smi rc={rc}'}")
        else:
            lines.append("gpu: nvidia-smi not found")
        probe = ("import torch, platform; cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None;"
                 "print(f'python {platform.python_version()} torch {torch.__version__} cuda {torch.version.cuda} '"
                 "f'cudnn {torch.backends.cudnn.version()} gpu {torch.cuda.get_device_name() if cap else None}');"
                 "import importlib.util as u; t = u.find_spec('triton');"
                 "print('triton', __import__('triton').__version__ if t else 'not installed');"
                 "print('capability', '%d.%d' % cap if cap else 'none'); print('cores', __import__('os').cpu_count())")
        rc, output = self._capture([sys.executable, "-c", probe], limit / 2)
        lines += output.strip().splitlines()
        for line in lines:
            if line.startswith("capability ") and line.split()[1] != "none":
                self.capability = line.split()[1]
        nvcc = shutil.which("nvcc") or (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc")
        lines.append(f"nvcc: {self._version_line([str(nvcc), '--version'])}")
        lines.append(f"compute-sanitizer: {self._version_line([str(self.sanitizer()), '--version'])}")
        self.env_lines = lines
        return ("ok" if self.capability else ("dry-run" if self.dry_run else "no-gpu")), "; ".join(lines[:2])

    def stage_build(self, stage: Stage, limit: float):
        if self.capability is None:
            return ("dry-run" if self.dry_run else "skipped"), (
                f"no GPU: would run TORCH_CUDA_ARCH_LIST=<this GPU's capability> MAX_JOBS={os.cpu_count()} "
                f"{sys.executable} setup.py build_ext --inplace")
        env = dict(self.base_env, TORCH_CUDA_ARCH_LIST=self.capability, MAX_JOBS=str(os.cpu_count() or 16))
        rc, _ = self.command(stage, [sys.executable, "setup.py", "build_ext", "--inplace"], limit - 5, env)
        _, reason = self._capture([sys.executable, "-c", "from fastrnn import _ext; print(_ext.cuda_unavailable_reason())"],
                                  5, self.base_env)
        built = reason.strip().splitlines()[-1] if reason.strip() else "?"
        return self._status(rc), f"arch {self.capability}; cuda kernels: {'built' if built == 'None' else built}"

    def stage_smoke(self, stage: Stage, limit: float):
        device, backends = ("cuda", ["cuda", "triton"]) if self.capability else ("cpu", ["reference", "cpp"])
        rc, output = self.command(stage, [sys.executable, "-c", SMOKE, device, *backends], limit)
        lines = [line for line in output.splitlines() if line.startswith("smoke ")]
        status = self._status(rc) if self.capability else "dry-run"
        if any("FAILED" in line for line in lines):
            status = "failed"
        return status, "\n".join(lines) or output.strip()[-300:]

    def stage_tests(self, stage: Stage, limit: float):
        selection = GPU_TESTS[stage.name.split("-")[1]]
        if self.capability is None:
            rc, output = self.command(stage, PYTEST + ["--collect-only", *selection], limit)
            return "dry-run", f"no GPU: selection collected: {self._last_line(output)}"
        import importlib.util

        per_test = PER_TEST_TIMEOUT if importlib.util.find_spec("pytest_timeout") else []
        rc, output = self.command(stage, PYTEST + per_test + selection, limit)
        failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return self._status(rc), "\n".join([self._last_line(output)] + failed[:12])

    def stage_bench(self, stage: Stage, limit: float):
        dtype = stage.name.split("-")[1]
        run_dir = self.scratch / stage.name
        argv = [sys.executable, "-m", "bench", *ANCHORS, "--dtypes", dtype, *BENCH_ARGS, "--out", str(run_dir)]
        if self.capability is None:
            if stage.name != "bench-bfloat16":
                return "dry-run", "no GPU: would run " + " ".join(argv[1:])
            argv = [sys.executable, "-m", "bench", *DRY_BENCH, "--out", str(run_dir)]  # the merge path, on the CPU
        rc, output = self.command(stage, argv, limit - 8)  # 8 s of the budget for the merge and the plot
        merged = self.merge(run_dir)
        status = self._status(rc) if self.capability else "dry-run"
        bad = [line for line in output.splitlines() if "WRONG" in line or "FAILED" in line][:6]
        return status, "\n".join([f"{merged} rows merged into bench.json"] + bad)

    def stage_memcheck(self, stage: Stage, limit: float):
        return self._sanitize(stage, limit, "memcheck")

    def stage_racecheck(self, stage: Stage, limit: float):
        return self._sanitize(stage, limit, "racecheck")

    def _sanitize(self, stage: Stage, limit: float, tool: str):
        sanitizer = self.sanitizer()
        argv = [str(sanitizer), "--tool", tool, "--error-exitcode", "99", *PYTEST, *SANITIZED]
        if self.capability is None or not Path(sanitizer).exists():
            rc, output = self.command(stage, PYTEST + ["--collect-only", *SANITIZED], limit)
            why = "no GPU" if self.capability is None else f"compute-sanitizer not found at {sanitizer}"
            return ("dry-run" if self.dry_run else "skipped"), f"{why}: would run {' '.join(argv[:5])} pytest " \
                f"{' '.join(SANITIZED)} ({self._last_line(output)})"
        # Without torch's caching allocator every tensor is its own allocation, so memcheck sees an access
        # past a tensor's end rather than into the pool's next block.
        rc, output = self.command(stage, argv, limit, dict(self.base_env, PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
        summary = [line for line in output.splitlines() if "ERROR SUMMARY" in line or "RACECHECK SUMMARY" in line]
        return self._status(rc), "\n".join([self._last_line(output)] + summary[-2:])

    # --- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def sanitizer() -> Path:
        found = shutil.which("compute-sanitizer")
        return Path(found) if found else Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "compute-sanitizer"

    def _capture(self, argv, limit, env=None) -> tuple[int | None, str]:
        try:
            done = subprocess.run(argv, cwd=ROOT, env=env or self.base_env, capture_output=True, text=True,
                                  timeout=max(limit, 1))
            return done.returncode, done.stdout + done.stderr
        except (OSError, subprocess.TimeoutExpired) as error:
            return None, f"{type(error).__name__}: {error}"

    def _version_line(self, argv) -> str:
        if not Path(argv[0]).exists() and shutil.which(argv[0]) is None:
            return f"not found ({argv[0]})"
        rc, output = self._capture(argv, 10)
        lines = [line for line in output.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"rc={rc}"

    @staticmethod
    def _last_line(output: str) -> str:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        return lines[-1] if lines else "(no output)"

    def merge(self, run_dir: Path) -> int:
        """Add a bench run's rows to bench.json/csv/png (python -m bench's own writer, all rows so far)."""
        results = run_dir / "results.json"
        if not results.exists():
            return 0
        data = json.loads(results.read_text())
        self.rows += data["rows"]
        self.bench_env = self.bench_env or data["environment"]
        sys.path.insert(0, str(ROOT))
        from bench import report

        merged_dir = self.scratch / "merged"
        for path in report.write_all(merged_dir, self.bench_env, self.rows):
            shutil.copyfile(path, self.out / ("bench" + path.suffix))
        return len(data["rows"])

    def per_step_table(self, describe=None) -> list[str]:
        """Per (cell, dtype, B, H, mode, competitor): ms at the long length, ratio to nn, us per step from the
        two lengths and, for the cuda kernels, what the cost model expected of that step (csrc/README.md), so
        that the first run checks the model too. `describe`: describe_plan's stand-in, for tests."""
        timed = {}
        lengths = sorted({row["seq_len"] for row in self.rows})
        for row in self.rows:
            if row["status"] == "ok" and row["ms"] is not None:
                timed[(row["cell"], row["dtype"], row["batch"], row["hidden"], row["mode"], row["impl"], row["seq_len"])] = row
        if len(lengths) < 2:
            return []
        short, long = lengths[0], lengths[-1]
        lines = [f"per step from T = {short} and {long}: us/step = (ms(T={long}) - ms(T={short})) / {long - short}; "
                 "model: the cost model's expected us/step (cuda: forward, training forward + backward)",
                 f"{'cell':<5}{'dtype':<9}{'B':>4}{'H':>6} {'mode':<8}{'competitor':<16}{'ms@' + str(long):>9}"
                 f"{'x nn':>7}{'us/step':>9}{'model':>7}"]
        for key in sorted({k[:6] for k in timed}):
            a, b = timed.get((*key, short)), timed.get((*key, long))
            if b is None:
                continue
            slope = (b["ms"] - a["ms"]) * 1e3 / (long - short) if a else float("nan")
            ratio = f"{b['speedup_vs_nn']:.2f}" if b["speedup_vs_nn"] else "-"
            model = expected_us_per_step(b, describe)
            lines.append(f"{key[0]:<5}{key[1]:<9}{key[2]:>4}{key[3]:>6} {key[4]:<8}{key[5]:<16}{b['ms']:>9.3f}"
                         f"{ratio:>7}{slope:>9.2f}{'-' if model is None else f'{model:.1f}':>7}")
        return lines

    def write_summary(self) -> None:
        spent = sum(seconds for _, seconds, _, _ in self.results)
        lines = [f"fastrnn GPU suite{' (dry run: GPU stages skipped)' if self.dry_run else ''}: "
                 f"{len(self.results)}/{len(STAGES)} stages, {spent:.0f} s of a {TOTAL_BUDGET_S} s budget "
                 f"(stage budgets sum to {sum(s.budget_s for s in STAGES)} s)", *self.env_lines, "",
                 f"{'stage':<15}{'budget s':>9}{'took s':>8}  {'status':<9} result", ]
        done = {stage.name: (seconds, status, result) for stage, seconds, status, result in self.results}
        for stage in STAGES:
            seconds, status, result = done.get(stage.name, (None, "pending", stage.what))
            first, *rest = (result or "").splitlines() or [""]
            took = f"{seconds:8.1f}" if seconds is not None else f"{'-':>8}"
            lines.append(f"{stage.name:<15}{stage.budget_s:>9}{took}  {status:<9} {first}")
            lines += [f"{'':<43}{line}" for line in rest]
        table = self.per_step_table()
        if table:
            lines += ["", *table]
        lines += ["", "files: " + ", ".join(OUTPUT_FILES)]
        (self.out / "summary.txt").write_text("\n".join(lines) + "\n")


def expected_us_per_step(row: dict, describe=None) -> float | None:
    """The cost model's us per step for a bench row of the cuda kernels (plan.h, shown by describe_plan): the
    forward's, plus the backward's in training. None for other competitors, or where the plan cannot be had."""
    if row.get("impl") != "fastrnn-cuda" or row.get("cell") not in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        return None
    import re

    import torch

    if describe is None:
        try:
            from fastrnn.backends.cuda import describe_plan as describe
        except Exception:
            return None
    family = row["cell"].split("_")[0]
    kernels = [f"{family}_forward"] + ([f"{family}_backward"] if row["mode"] == "train" else [])
    total = 0.0
    for kernel in kernels:
        try:
            text = describe(kernel, row["seq_len"], row["batch"], row["hidden"], row["hidden"], False,
                            getattr(torch, row["dtype"]))
        except Exception:
            return None
        found = re.search(r"expected ([\d.]+) us per step", text)
        if found is None:
            return None
        total += float(found.group(1))
    return total


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dry_run = "--dry-run" in argv or os.environ.get("FASTRNN_GPU_SUITE_DRY_RUN") == "1"
    positional = [a for a in argv if a != "--dry-run"]
    if len(positional) != 1:
        print("usage: bash bench/gpu_suite.sh OUT_DIR [--dry-run]", file=sys.stderr)
        return 2
    out = Path(positional[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stray = [p.name for p in out.iterdir() if p.name not in OUTPUT_FILES]
    if stray:
        print(f"{out} holds other files ({', '.join(stray[:5])}); give the suite an empty or its own folder",
              file=sys.stderr)
        return 2
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    suite = Suite(out, dry_run)
    if not dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU is visible; bench/gpu_suite.sh OUT --dry-run runs what needs none", file=sys.stderr)
            return 2
    print("\n".join(f"{s.name:<15}{s.budget_s:>4} s  {s.what}" for s in STAGES))
    print(f"{'total':<15}{sum(s.budget_s for s in STAGES):>4} s  (limit {TOTAL_BUDGET_S} s)", flush=True)
    code = suite.run()
    print((out / "summary.txt").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
