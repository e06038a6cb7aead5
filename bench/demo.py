"""fastrnn demo: which backends run here, do they match torch, and how fast are they against torch.

    python -m bench.demo              # ~30 s on 2 CPU cores
    python -m bench.demo --quick      # tiny shapes, ~5 s (for smoke tests)
    python -m bench.demo --device cpu # force a device (default: cuda if available, else cpu)

1. Header: device, versions, git commit, date, and `fastrnn.explain(device)`.
2. Correctness: for LSTM and GRU and every *available* fastrnn backend, a fastrnn layer and an
   nn.LSTM/nn.GRU holding the same weights are run on the same inputs; outputs, final states and
   the gradients of the input, the initial states and every parameter are compared, and the largest
   relative error ||ours - torch|| / ||torch|| is checked against a per-dtype threshold.
3. Timing: forward (no_grad) and forward+backward of torch's nn module and of each available fastrnn
   backend (plus `auto`): torch.utils.benchmark.Timer.blocked_autorange after a warm-up, in a few
   interleaved rounds per row, median over the pooled blocks; ratios are torch time / fastrnn time.

Exits 1 if any correctness check fails or any timed run raises; 0 otherwise.
This is a stand-in until a real benchmark suite exists: one shape per device, nothing more.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils import benchmark

import fastrnn
from fastrnn import backends

REPO_ROOT = Path(__file__).resolve().parent.parent
CELLS = {"LSTM": (fastrnn.LSTM, nn.LSTM), "GRU": (fastrnn.GRU, nn.GRU)}
# Backends one can ask for by name (everything but "auto", which is timed as its own row).
NAMED_BACKENDS = tuple(b for b in backends.BACKENDS if b != "auto")
THRESHOLDS = {torch.float64: 1e-10, torch.float32: 1e-4}
DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16"}


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    seq_len: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False

    def describe(self) -> str:
        return (f"B={self.batch} T={self.seq_len} I={self.input_size} H={self.hidden_size} "
                f"layers={self.num_layers}{' bidirectional' if self.bidirectional else ''}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to run on one device: the correctness shape and dtypes, the timing shape and dtypes."""

    check_shape: Shape
    check_dtypes: tuple[torch.dtype, ...]
    time_shape: Shape
    time_dtypes: tuple[torch.dtype, ...]
    min_run_time: float  # seconds per measurement, for blocked_autorange
    rounds: int  # interleaved passes over all rows of a group; their blocks are pooled


@dataclasses.dataclass(frozen=True)
class CheckResult:
    cell: str
    dtype: torch.dtype
    backend: str
    max_error: float
    worst: str  # the compared tensor with the largest error (or the exception, if it raised)
    passed: bool


@dataclasses.dataclass(frozen=True)
class TimingRow:
    cell: str
    dtype: torch.dtype
    label: str
    forward: benchmark.Measurement | None
    train: benchmark.Measurement | None
    error: str | None = None  # the exception, if a timed run raised
    baseline: bool = False  # torch's own nn module: what the 'x nn' ratios of its group divide


# --- setup ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None,
                        help="torch device to run on (default: cuda if available, else cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and short measurements (a few seconds); for smoke tests")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's own choice); 1 is "
                             "steadier on a CPU shared with other work")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        args.device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch.cuda.is_available() is False on this machine")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: only cpu and cuda are supported by this demo")
    return args


def make_plan(device: torch.device, quick: bool) -> Plan:
    on_gpu = device.type == "cuda"
    check_dtypes = (torch.float64, torch.float32) if on_gpu else (torch.float64,)
    time_dtypes = (torch.float32, torch.bfloat16) if on_gpu else (torch.float32,)
    if quick:
        return Plan(Shape(2, 5, 8, 16, num_layers=2, bidirectional=True), check_dtypes,
                    Shape(4, 20, 32, 32), time_dtypes, min_run_time=0.03, rounds=2)
    check_shape = Shape(8, 50, 64, 128, num_layers=2, bidirectional=True)
    if on_gpu:
        return Plan(check_shape, check_dtypes, Shape(64, 256, 512, 512), time_dtypes, min_run_time=0.3, rounds=3)
    return Plan(check_shape, check_dtypes, Shape(16, 100, 128, 128), time_dtypes, min_run_time=0.4, rounds=3)


# --- header --------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU: {model}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(repo: Path) -> str:
    """Short HEAD commit, with '+uncommitted changes' if the tree is dirty; 'unknown' if not a repo."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} (+uncommitted changes)" if dirty else commit


def tf32_settings() -> str:
    """The fp32 precision settings that decide whether float32 GEMMs / cuDNN RNNs may use TF32."""
    def get(path: str) -> str:
        obj = torch.backends
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return str(obj)
        except (AttributeError, RuntimeError):
            return "n/a"
    return f"cuda.matmul.fp32_precision={get('cuda.matmul.fp32_precision')}, cudnn.rnn.fp32_precision={get('cudnn.rnn.fp32_precision')}"


def load_average() -> str:
    try:
        loads = os.getloadavg()
    except (AttributeError, OSError):
        return "n/a"
    return f"{loads[0]:.2f} / {loads[1]:.2f} / {loads[2]:.2f} (1/5/15 min) on {os.cpu_count()} logical cores"


def header(device: torch.device) -> str:
    lines = [
        "fastrnn demo",
        f"  device  : {device} - {device_name(device)}",
        f"  python  : {platform.python_version()}",
        f"  torch   : {torch.__version__}",
        f"  fastrnn : {fastrnn.__version__}",
        f"  triton  : {package_version('triton') or 'not installed'}",
        f"  CUDA    : {torch.version.cuda or 'none (CPU build of torch)'}",
    ]
    if device.type == "cuda":
        lines.append(f"  cuDNN   : {torch.backends.cudnn.version()}")
        lines.append(f"  TF32    : {tf32_settings()} (timings run with these; correctness forces ieee)")
    lines += [
        f"  commit  : {git_commit(REPO_ROOT)}",
        f"  date    : {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"  load    : {load_average()}",
        "",
        fastrnn.explain(device),
    ]
    return "\n".join(lines)


def available_backends(device: torch.device) -> tuple[list[str], list[tuple[str, str]]]:
    """(the named backends that can run on `device`, [(backend, why not) for those that can't])."""
    usable, skipped = [], []
    for name in NAMED_BACKENDS:
        reason = backends.unavailable_reason(name, device)
        if reason is None:
            usable.append(name)
        else:
            skipped.append((name, reason))
    return usable, skipped


# --- building layers and inputs ------------------------------------------------------------------


def make_layer(cell: str, backend: str | None, shape: Shape, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A fastrnn layer on `backend`, or torch's nn layer if `backend` is None."""
    ours_cls, torch_cls = CELLS[cell]
    config = dict(input_size=shape.input_size, hidden_size=shape.hidden_size, num_layers=shape.num_layers,
                  bidirectional=shape.bidirectional, device=device, dtype=dtype)
    layer = torch_cls(**config) if backend is None else ours_cls(**config, backend=backend)
    layer.flatten_parameters()  # cuDNN's packed weights on GPU; no-op on CPU
    return layer


def make_pair(cell: str, backend: str, shape: Shape, dtype: torch.dtype, device: torch.device):
    """(fastrnn layer on `backend`, nn layer) of `shape`, holding equal weights."""
    theirs = make_layer(cell, None, shape, dtype, device)
    ours = make_layer(cell, backend, shape, dtype, device)
    ours.load_state_dict(theirs.state_dict())
    ours.flatten_parameters()
    return ours, theirs


def state_shapes(cell: str, shape: Shape) -> list[tuple[int, int, int]]:
    size = (shape.num_layers * (2 if shape.bidirectional else 1), shape.batch, shape.hidden_size)
    return [size, size] if cell == "LSTM" else [size]


def random_tensor(size, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> Tensor:
    return torch.randn(size, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def random_inputs(cell: str, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int):
    """Input (T, B, I), initial states, and random cotangents for (output, *final states)."""
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if shape.bidirectional else 1
    x = random_tensor((shape.seq_len, shape.batch, shape.input_size), dtype, device, gen)
    states = [random_tensor(s, dtype, device, gen) for s in state_shapes(cell, shape)]
    cotangents = [random_tensor((shape.seq_len, shape.batch, directions * shape.hidden_size), dtype, device, gen)]
    cotangents += [random_tensor(s, dtype, device, gen) for s in state_shapes(cell, shape)]
    return x, states, cotangents


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """On CUDA, force IEEE float32 (no TF32) in GEMMs and cuDNN RNNs, restoring the settings after."""
    if device.type != "cuda":
        yield
        return
    targets = [torch.backends.cuda.matmul, torch.backends.cudnn.rnn]
    saved = [t.fp32_precision for t in targets]
    try:
        for t in targets:
            t.fp32_precision = "ieee"
        yield
    finally:
        for t, value in zip(targets, saved):
            t.fp32_precision = value


# --- correctness ---------------------------------------------------------------------------------


def outputs_and_grads(module: nn.Module, x: Tensor, states: list[Tensor], cotangents: list[Tensor]) -> dict[str, Tensor]:
    """Run `module` on fresh leaf copies of the inputs; return outputs, final states and all gradients."""
    x = x.detach().clone().requires_grad_()
    states = [s.detach().clone().requires_grad_() for s in states]
    output, finals = module(x, tuple(states) if len(states) == 2 else states[0])
    finals = list(finals) if isinstance(finals, tuple) else [finals]
    params = dict(module.named_parameters())
    grads = torch.autograd.grad([output, *finals], [x, *states, *params.values()], cotangents)
    state_names = ["h", "c"][: len(states)]
    results = {"output": output, **{f"{n}_n": f for n, f in zip(state_names, finals)}}
    results["grad input"] = grads[0]
    results.update({f"grad {n}_0": g for n, g in zip(state_names, grads[1:1 + len(states)])})
    results.update({f"grad {name}": g for name, g in zip(params, grads[1 + len(states):])})
    return {name: t.detach() for name, t in results.items()}


def rel_error(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b|| in float64; any NaN/inf makes it inf."""
    a, b = a.double().cpu(), b.double().cpu()
    if a.shape != b.shape or not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def check_backend(cell: str, backend: str, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int) -> CheckResult:
    threshold = THRESHOLDS[dtype]
    try:
        torch.manual_seed(seed)
        ours, theirs = make_pair(cell, backend, shape, dtype, device)
        x, states, cotangents = random_inputs(cell, shape, dtype, device, seed)
        with exact_float32(device):
            got = outputs_and_grads(ours, x, states, cotangents)
            want = outputs_and_grads(theirs, x, states, cotangents)
    except Exception as error:  # report, count as a failure, carry on with the others
        return CheckResult(cell, dtype, backend, float("inf"), f"raised {type(error).__name__}: {error}", False)
    if ours.last_backend != backend:
        return CheckResult(cell, dtype, backend, float("inf"), f"ran backend {ours.last_backend!r} instead", False)
    errors = {name: rel_error(got[name], want[name]) for name in want}
    worst = max(errors, key=errors.get)
    return CheckResult(cell, dtype, backend, errors[worst], worst, errors[worst] < threshold)


def run_checks(plan: Plan, usable: list[str], device: torch.device) -> list[CheckResult]:
    results = []
    for dtype in plan.check_dtypes:
        for cell in CELLS:
            for backend in usable:
                result = check_backend(cell, backend, plan.check_shape, dtype, device, seed=len(results))
                print(format_check(result), flush=True)
                results.append(result)
    return results


def format_check(r: CheckResult) -> str:
    verdict = "PASS" if r.passed else "FAIL"
    worst = "bit-identical to torch" if r.max_error == 0 else f"worst: {r.worst}"
    return (f"  {r.cell:<4}  {DTYPE_NAMES[r.dtype]:<8}  {r.backend:<9}  max rel err {r.max_error:9.2e}"
            f"  (threshold {THRESHOLDS[r.dtype]:.0e}; {worst})  {verdict}")


# --- timing --------------------------------------------------------------------------------------


def forward_fn(module: nn.Module, x: Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return module(x)
    return run


def train_step_fn(module: nn.Module, x: Tensor, grad_output: Tensor) -> Callable[[], object]:
    """Forward + backward to every parameter (the input does not require grad, as in training)."""
    params = list(module.parameters())

    def run() -> object:
        output, _ = module(x)
        return torch.autograd.grad(output, params, grad_output)
    return run


def measure(fn: Callable[[], object], min_run_time: float, warmup: int = 3) -> benchmark.Measurement:
    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time)


@dataclasses.dataclass
class TimedLayer:
    """One row being timed: the layer, its two benchmark callables, and the measurements so far."""

    backend: str | None  # None: torch's nn module
    module: nn.Module
    forward_fn: Callable[[], object]
    train_fn: Callable[[], object]
    forward: list[benchmark.Measurement] = dataclasses.field(default_factory=list)
    train: list[benchmark.Measurement] = dataclasses.field(default_factory=list)
    error: str | None = None


def prepare_layer(cell: str, backend: str | None, shape: Shape, dtype: torch.dtype, device: torch.device) -> TimedLayer:
    module = make_layer(cell, backend, shape, dtype, device)
    gen = torch.Generator().manual_seed(0)
    directions = 2 if shape.bidirectional else 1
    x = random_tensor((shape.seq_len, shape.batch, shape.input_size), dtype, device, gen)
    grad_output = random_tensor((shape.seq_len, shape.batch, directions * shape.hidden_size), dtype, device, gen)
    return TimedLayer(backend, module, forward_fn(module, x), train_step_fn(module, x, grad_output))


def measure_round(layer: TimedLayer, min_run_time: float) -> None:
    """Add one forward and one forward+backward measurement to `layer` (or record why it raised)."""
    if layer.error is not None:
        return
    try:
        layer.forward.append(measure(layer.forward_fn, min_run_time))
        layer.train.append(measure(layer.train_fn, min_run_time))
    except Exception as error:
        layer.error = f"{type(error).__name__}: {error}"


def pooled(measurements: list[benchmark.Measurement]) -> benchmark.Measurement | None:
    """All blocks of all rounds as one measurement (median and IQR over the pooled blocks)."""
    return benchmark.Measurement.merge(measurements)[0] if measurements else None


def row_label(cell: str, backend: str | None, module: nn.Module) -> str:
    """torch's module, a named fastrnn backend, or auto with the backend its forward actually ran."""
    if backend is None:
        return f"torch nn.{cell}"
    if backend == "auto":
        return f"fastrnn backend=auto (-> {module.last_backend})"
    return f"fastrnn backend={backend}"


def run_timings(plan: Plan, usable: list[str], device: torch.device) -> list[TimingRow]:
    """Per (dtype, cell) group: torch's nn module (the baseline), each usable backend, then auto,
    measured in `plan.rounds` interleaved passes so that drifting machine load hits all rows alike."""
    rows = []
    for dtype in plan.time_dtypes:
        for cell in CELLS:
            group = [prepare_layer(cell, b, plan.time_shape, dtype, device) for b in (None, *usable, "auto")]
            for _ in range(plan.rounds):
                for layer in group:
                    measure_round(layer, plan.min_run_time)
            for layer in group:
                error = layer.error
                rows.append(TimingRow(cell, dtype, row_label(cell, layer.backend, layer.module),
                                      None if error else pooled(layer.forward), None if error else pooled(layer.train),
                                      error, baseline=layer.backend is None))
    return rows


def relative_iqr(m: benchmark.Measurement) -> float:
    """Interquartile range of the block times as a fraction of the median: how noisy the number is."""
    return m.iqr / m.median if m.median > 0 else float("inf")


def noisy_measurements(rows: list[TimingRow], limit: float = 0.1) -> int:
    return sum(relative_iqr(m) > limit for r in rows if r.error is None for m in (r.forward, r.train))


def format_table(rows: list[TimingRow]) -> str:
    """One table; 'x nn' = torch nn time / this row's time (>1: faster than torch's nn module)."""
    head = (f"  {'cell':<4}  {'dtype':<8}  {'implementation':<32}  {'fwd ms':>9} {'IQR':>5}  {'x nn':>5}"
            f"  {'fwd+bwd ms':>10} {'IQR':>5}  {'x nn':>5}")
    lines = [head, "  " + "-" * (len(head) - 2)]
    baseline: dict[tuple[str, torch.dtype], TimingRow] = {}
    for row in rows:
        if row.baseline:
            baseline[(row.cell, row.dtype)] = row
        base = baseline.get((row.cell, row.dtype))
        prefix = f"  {row.cell:<4}  {DTYPE_NAMES[row.dtype]:<8}  {row.label:<32}"
        if row.error is not None:
            lines.append(f"{prefix}  error: {row.error}")
            continue
        cells = []
        for attr in ("forward", "train"):
            m = getattr(row, attr)
            ref = getattr(base, attr) if base is not None and base.error is None else None
            ratio = f"{ref.median / m.median:5.2f}" if ref is not None else "  n/a"
            cells.append((m.median * 1e3, f"{relative_iqr(m):4.0%}", ratio))
        (fwd, fwd_iqr, fwd_ratio), (train, train_iqr, train_ratio) = cells
        lines.append(f"{prefix}  {fwd:9.3f} {fwd_iqr:>5}  {fwd_ratio}  {train:10.3f} {train_iqr:>5}  {train_ratio}")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    plan = make_plan(device, args.quick)
    print(header(device))

    usable, skipped = available_backends(device)
    print(f"\nCorrectness vs torch nn ({plan.check_shape.describe()}; outputs, final states, "
          f"grads of input, initial states and all parameters)")
    for name, reason in skipped:
        print(f"  skipped backend {name}: {reason}")
    checks = run_checks(plan, usable, device)

    print(f"\nTiming ({plan.time_shape.describe()}; torch.utils.benchmark.Timer.blocked_autorange, "
          f"min_run_time={plan.min_run_time}s after 3 warm-up calls, {plan.rounds} interleaved rounds per row, "
          f"median over the pooled blocks; {torch.get_num_threads()} CPU threads)")
    print(f"  auto resolves to {backends.resolve('auto', device)!r} on {device}")
    rows = run_timings(plan, usable, device)  # prints nothing; the table comes at the end

    failed = [c for c in checks if not c.passed]
    errored = [r for r in rows if r.error is not None]
    print("\nResults: forward under torch.no_grad; fwd+bwd = forward + autograd.grad to all parameters.")
    print("'x nn' = torch nn time / this row's time (>1 means faster than torch's nn module, <1 slower);")
    print("IQR = interquartile range of the pooled blocks as a fraction of the median.")
    print(format_table(rows))
    noisy = noisy_measurements(rows)
    if noisy:
        print(f"Note: {noisy} of {2 * (len(rows) - len(errored))} measurements have IQR > 10% of the median; "
              f"load average now {load_average()}. Treat those ratios as rough.")
    print(f"\nCorrectness: {len(checks) - len(failed)}/{len(checks)} checks passed"
          + (f"; FAILED: {', '.join(f'{c.cell}/{DTYPE_NAMES[c.dtype]}/{c.backend}' for c in failed)}" if failed else ""))
    if errored:
        print(f"Timing: {len(errored)} run(s) raised (see table)")
    print(f"Total time: {time.perf_counter() - started:.1f} s")
    return 1 if failed or errored else 0


if __name__ == "__main__":
    sys.exit(main())
