"""How things are measured: inputs, the correctness check, timing (wall and thread CPU time) and peak memory.
The peak and the floor: bench/peak.py."""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import statistics
import time

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fastrnn import cells

from .cases import Case
from .decoder import DecoderLoop

# Error allowed on top of "3 x nn's own error against float64", per dtype.
ERROR_FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


# --- inputs -----------------------------------------------------------------------------------


def torch_module(case: Case, device: torch.device) -> nn.Module:
    """The case's nn module: the layer, or the decoder loop of nn's cell."""
    cell = cells.cell(case.mode)
    factory = dict(device=device, dtype=case.torch_dtype)
    if case.decoder:
        return DecoderLoop(cell.torch_cell(case.input_size, case.hidden, **factory))
    extra = {"nonlinearity": cell.nonlinearity} if cell.nonlinearity else {}
    return cell.torch_layer(case.input_size, case.hidden, num_layers=case.layers, bidirectional=case.bidirectional,
                            **factory, **extra)


def make_input(case: Case, device: torch.device, seed: int = 0):
    """Random time-major input; a PackedSequence (unsorted lengths) for variable-length cases."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.seq_len, case.batch, case.input_size, generator=gen).to(device, case.torch_dtype)
    if case.min_length_fraction is None:
        return x
    shortest = max(1, math.ceil(case.min_length_fraction * case.seq_len))
    lengths = torch.randint(shortest, case.seq_len + 1, (case.batch,), generator=gen)
    lengths[0] = case.seq_len
    return pack_padded_sequence(x, lengths, enforce_sorted=False)


def input_tensor(x) -> torch.Tensor:
    return x.data if isinstance(x, PackedSequence) else x


def with_grad(x):
    """A copy of the input that requires grad (a PackedSequence keeps its batch sizes and order)."""
    data = input_tensor(x).detach().clone().requires_grad_(True)
    return PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices) if isinstance(x, PackedSequence) else data


def to_dtype(x, dtype: torch.dtype):
    if isinstance(x, PackedSequence):
        return PackedSequence(x.data.to(dtype), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    return x.to(dtype)


# --- what each mode runs ----------------------------------------------------------------------


def forward_fn(module: nn.Module, x):
    def run():
        with torch.no_grad():
            module(x)
    return run


def train_step_fn(module: nn.Module, x):
    """Forward and backward to the input and every parameter (gradients are not accumulated)."""
    x = with_grad(x)
    params = [p for p in module.parameters() if p.requires_grad]

    def run():
        out, state = module(x)
        states = state if isinstance(state, tuple) else (state,)
        loss = input_tensor(out).float().sum() + sum(s.float().sum() for s in states)
        torch.autograd.grad(loss, [input_tensor(x), *params])
    return run


# --- correctness --------------------------------------------------------------------------------


def results(module: nn.Module, x, seed: int = 1) -> list[torch.Tensor]:
    """Output, final states and the gradients of input and parameters under a random linear loss."""
    x = with_grad(x)
    out, state = module(x)
    tensors = [input_tensor(out), *(state if isinstance(state, tuple) else (state,))]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)).sum() for t in tensors)
    grads = torch.autograd.grad(loss, [input_tensor(x), *module.parameters()])
    return [t.detach() for t in tensors] + list(grads)


def max_relative_error(got: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    worst = 0.0
    for a, b in zip(got, exact):
        a, b = a.double(), b.double()
        if not torch.isfinite(a).all():
            return math.inf
        worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-300)).item())
    return worst


@dataclasses.dataclass
class Baseline:
    """What every competitor of a case is checked against: nn's float64 answer, and nn's own error in
    the case's dtype (the bar). Computed once per case."""

    exact: list[torch.Tensor]
    torch_error: float
    forward_count: int  # the first tensors of exact are the forward's: output and final states
    torch_forward_error: float  # nn's own error over those alone: the bar of an inference-only competitor


def baseline(torch_rnn: nn.RNNBase, x) -> Baseline:
    exact = results(copy.deepcopy(torch_rnn).double(), to_dtype(x, torch.float64))
    ours = results(torch_rnn, x)
    count = len(forward_results(torch_rnn, x))
    return Baseline(exact, max_relative_error(ours, exact), count, max_relative_error(ours[:count], exact[:count]))


def forward_results(module: nn.Module, x) -> list[torch.Tensor]:
    """Output and final states of an inference call (no gradient)."""
    with torch.no_grad():
        out, state = module(x)
    return [input_tensor(out), *(state if isinstance(state, tuple) else (state,))]


@dataclasses.dataclass
class Check:
    error: float  # max relative error over outputs, states and every gradient, against float64
    torch_error: float  # the same for nn in the case's dtype: the bar
    ok: bool


def check(module: nn.Module, x, bar: Baseline) -> Check:
    """Compare against float64 nn; pass when the error is at most 3x nn's own in this dtype (+ a floor)."""
    error = max_relative_error(results(module, x), bar.exact)
    return Check(error, bar.torch_error, error <= 3 * bar.torch_error + ERROR_FLOOR[input_tensor(x).dtype])


def check_forward(module: nn.Module, x, bar: Baseline, torch_rnn: nn.RNNBase, bar_dtype: torch.dtype | None = None) -> Check:
    """An inference-only competitor: output and final states against float64, held to 3x nn's own error over
    the same tensors (+ the floor). With bar_dtype (a runtime that computes in bfloat16 on fp32 input), the
    bar is nn's own error run in that dtype (weights and input rounded to it), and its floor."""
    count = bar.forward_count
    exact = bar.exact[:count]
    error = max_relative_error(forward_results(module, x), exact)
    if bar_dtype is None:
        torch_error, dtype = bar.torch_forward_error, input_tensor(x).dtype
    else:
        reduced = copy.deepcopy(torch_rnn).to(bar_dtype)
        torch_error, dtype = max_relative_error(forward_results(reduced, to_dtype(x, bar_dtype)), exact), bar_dtype
    return Check(error, torch_error, error <= 3 * torch_error + ERROR_FLOOR[dtype])


# --- timing and memory --------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    median_ms: float
    low_ms: float  # 20th percentile
    high_ms: float  # 80th percentile
    peak_mb: float | None  # peak GPU memory allocated by one call, beyond what was allocated before
    cpu_ms: float | None = None  # median CPU time of the calling thread per call (CPU runs)

    @classmethod
    def of(cls, samples: "Samples") -> "Timing":
        times = sorted(samples.times_ms)
        cpu = statistics.median(samples.cpu_ms) if samples.cpu_ms else None
        return cls(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), samples.peak_mb, cpu)


def time_fn(fn, device: torch.device, min_seconds: float) -> Timing:
    return Timing.of(sample_times(fn, device, min_seconds))


@dataclasses.dataclass
class Samples:
    """Per-call times (ms) of one function, possibly gathered over several rounds."""

    times_ms: list[float]
    peak_mb: float | None = None
    cpu_ms: list[float] = dataclasses.field(default_factory=list)  # per call, the calling thread's CPU time

    def extend(self, more: "Samples") -> None:
        self.times_ms += more.times_ms
        self.cpu_ms += more.cpu_ms
        if more.peak_mb is not None:
            self.peak_mb = max(self.peak_mb or 0.0, more.peak_mb)


def sample_times(fn, device: torch.device, min_seconds: float) -> Samples:
    """Call fn for about min_seconds after a warm-up: CUDA events per call on a GPU; on the CPU blocks of calls
    (as torch.utils.benchmark's blocked_autorange), each giving the per-call wall time and CPU time of the
    calling thread."""
    if device.type == "cuda":
        return _time_cuda(fn, min_seconds)
    return _time_cpu(fn, min_seconds)


BLOCK_SECONDS = 0.01  # a CPU block: enough calls to last this long (one call when a call takes longer)
MIN_BLOCKS = 5


def _time_cpu(fn, min_seconds: float) -> Samples:
    fn()  # warm-up
    start = time.perf_counter_ns()
    fn()
    number = max(1, int(BLOCK_SECONDS * 1e9 / max(time.perf_counter_ns() - start, 1)))
    times, cpu, spent = [], [], 0
    enabled = gc.isenabled()
    gc.disable()  # as timeit: no collection inside a timed block
    try:
        while len(times) < MIN_BLOCKS or spent < min_seconds * 1e9:
            wall0, cpu0 = time.perf_counter_ns(), time.thread_time_ns()
            for _ in range(number):
                fn()
            cpu1, wall1 = time.thread_time_ns(), time.perf_counter_ns()
            times.append((wall1 - wall0) / number / 1e6)
            cpu.append((cpu1 - cpu0) / number / 1e6)
            spent += wall1 - wall0
    finally:
        if enabled:
            gc.enable()
    return Samples(times, cpu_ms=cpu)



def _time_cuda(fn, min_seconds: float) -> Samples:
    """CUDA events around each call, after warm-up; at least 10 calls and min_seconds of them."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    times, spent = [], 0.0
    while len(times) < 10 or spent < min_seconds * 1e3:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        spent += times[-1]
        if len(times) >= 1000:
            break
    return Samples(times, peak_mb)


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
