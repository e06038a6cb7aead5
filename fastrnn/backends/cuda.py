"""CUDA backend: the recurrence contract of `fastrnn.backends.reference` on the CUDA C++ kernels of
fastrnn._C (csrc/cuda/), for LSTM, GRU and the Elman RNN (tanh, relu): float64, float32 (on TF32 tensor cores while
torch.backends.cudnn.allow_tf32 is on, as nn.LSTM's cuDNN), float16 and bfloat16, on CUDA tensors.

Each call plans its launch per shape and device (csrc/cuda/plan.h): `persistent`, one cooperative
launch for all T steps in which each CTA keeps its slice of W_hh in shared memory and the CTAs meet at
a grid barrier per step, where the slice fits and the grid can be co-resident; else `stepwise`, one
fused GEMM + cell launch per step. The choice is visible (`describe_plan`, `fastrnn.explain()`) and
overridable: FASTRNN_CUDA_STRATEGY=persistent|stepwise, or `with forced(...)` for the strategy, the
number of CTAs, threads per CTA and the tiles.

The cells (`cell_forward`, `cell_backward`, for fastrnn.LSTMCell, GRUCell, RNNCell) run one fused step per
call: both gate GEMMs and the cell in one launch (csrc/cuda/cell_step.cu), then the pointwise backward;
`auto` does not pick them on a GPU until they are measured against nn's cells there.

What is verified without a GPU: the kernels compile for sm_80 and sm_90 within the resources that let
the persistent grid be co-resident on an H100 (tests/test_cuda_compiles.py), and their same sources run
in the project's SIMT emulator on CPU tensors against the reference, plainly and under ThreadSanitizer
and AddressSanitizer (tests/test_cuda_emulated.py, tests/test_cuda_sanitizers.py). Not yet verified:
a run on a GPU (tests/test_cuda_gpu.py and bench/gpu_suite.sh do that on the first GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from types import ModuleType

import torch

from .. import _ext
from . import cell_tf32_enabled, tf32_enabled

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
STRATEGIES = ("auto", "persistent", "stepwise")
STRATEGY_ENV = "FASTRNN_CUDA_STRATEGY"
VERIFIED = ("compiled for sm_80 and sm_90 and checked in the SIMT emulator on the CPU (plain, ThreadSanitizer, "
            "AddressSanitizer); not yet run on a GPU")


@dataclasses.dataclass(frozen=True)
class Launch:
    """How the kernels launch: strategy, CTAs (persistent), threads per CTA, batch rows per tile and
    reduction columns per shared-memory chunk; 0 (and "auto") let the planner choose."""

    strategy: str = "auto"
    ctas: int = 0
    threads: int = 0
    row_tile: int = 0
    k_chunk: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")


_forced: Launch | None = None


@contextlib.contextmanager
def forced(strategy: str = "auto", ctas: int = 0, threads: int = 0, row_tile: int = 0, k_chunk: int = 0):
    """Within the block every CUDA kernel call launches this way (a plan that cannot run raises)."""
    global _forced
    before, _forced = _forced, Launch(strategy, ctas, threads, row_tile, k_chunk)
    try:
        yield _forced
    finally:
        _forced = before


def current_launch() -> Launch:
    if _forced is not None:
        return _forced
    return Launch(os.environ.get(STRATEGY_ENV, "auto") or "auto")


def _knobs(dtype: torch.dtype) -> dict:
    launch = current_launch()
    return dict(allow_tf32=tf32_enabled(dtype),
                strategy=STRATEGIES.index(launch.strategy), ctas=launch.ctas, threads=launch.threads,
                row_tile=launch.row_tile, k_chunk=launch.k_chunk)


def unavailable_reason(device: torch.device) -> str | None:
    """Why the cuda backend cannot run on `device` (cheap: compiles nothing); see fastrnn.backends."""
    from . import unavailable_reason as registry_reason

    return registry_reason("cuda", device)


def _kernels() -> ModuleType:
    """The module holding the *_cuda entry points (tests swap in the emulated extension)."""
    module = _ext.cuda_extension()
    if module is None:
        raise RuntimeError(f"fastrnn's CUDA kernels are unavailable: {_ext.cuda_unavailable_reason()}")
    return module


# The shapes of the latest call of each kernel, for explain(): (steps, batch, hidden, state, projection, dtype).
last_problems: dict[str, tuple] = {}
KERNELS = ("lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward", "rnn_backward")


def describe_plan(kernel: str, steps: int, batch: int, hidden: int, state: int, projection: bool,
                  dtype: torch.dtype) -> str:
    """The launch plan the kernel would run for this problem on the current device, in words."""
    name = str(dtype).removeprefix("torch.")
    knobs = _knobs(dtype)
    return _kernels().cuda_describe_plan(KERNELS.index(kernel), steps, batch, hidden, state, projection, name, **knobs)


def _record(kernel: str, steps: int, batch: int, hidden: int, state: int, projection: bool, dtype,
            lengths=None) -> None:
    if lengths is not None and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        # The binding copies the lengths from host memory on every call: a graph would replay the copy of
        # the captured call's lengths, whatever a later batch holds.
        raise RuntimeError(
            "fastrnn cuda backend: a packed (variable-length) batch cannot be captured in a CUDA graph: its "
            "lengths are host data copied to the GPU on every call. Capture padded batches of equal length, or "
            "run packed ones outside the graph")
    last_problems[kernel] = (steps, batch, hidden, state, projection, dtype)


def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True, cache=None, scratch_xp=False):
    _record("lstm_forward", xp.shape[0], xp.shape[1], c0.shape[-1], h0.shape[-1], w_hr is not None, xp.dtype, lengths)
    return _kernels().lstm_forward_cuda(xp, h0, c0, w_hh, w_hr, lengths, reverse, save, **_knobs(xp.dtype))


def lstm_backward(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse, cache=None):
    _record("lstm_backward", dy.shape[0], dy.shape[1], c_all.shape[-1], dy.shape[-1], w_hr is not None, dy.dtype,
            lengths)
    return _kernels().lstm_backward_cuda(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse,
                                         **_knobs(dy.dtype))


def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True, cache=None):
    _record("gru_forward", xp.shape[0], xp.shape[1], h0.shape[-1], h0.shape[-1], False, xp.dtype, lengths)
    return _kernels().gru_forward_cuda(xp, h0, w_hh, b_hn, lengths, reverse, save, **_knobs(xp.dtype))


def gru_backward(dy, dh_n, h_prev, w_hh, saved, lengths, reverse, cache=None):
    _record("gru_backward", dy.shape[0], dy.shape[1], dy.shape[-1], dy.shape[-1], False, dy.dtype, lengths)
    return _kernels().gru_backward_cuda(dy, dh_n, h_prev, w_hh, saved, lengths, reverse, **_knobs(dy.dtype))


def rnn_forward(xp, h0, w_hh, relu, lengths, reverse, save=True, cache=None):
    _record("rnn_forward", xp.shape[0], xp.shape[1], h0.shape[-1], h0.shape[-1], False, xp.dtype, lengths)
    return _kernels().rnn_forward_cuda(xp, h0, w_hh, relu, lengths, reverse, save, **_knobs(xp.dtype))


def rnn_backward(dy, dh_n, y, w_hh, relu, lengths, reverse, cache=None):
    _record("rnn_backward", dy.shape[0], dy.shape[1], dy.shape[-1], dy.shape[-1], False, dy.dtype, lengths)
    return _kernels().rnn_backward_cuda(dy, dh_n, y, w_hh, relu, lengths, reverse, **_knobs(dy.dtype))


# --- the cells: one fused step per call (both gate GEMMs and the cell in one launch) ------------------


def cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, save=True, cache=None):
    """reference.cell_forward on the CUDA cell kernel (csrc/cuda/cell_step.cu); it reads W_ih and W_hh as they
    are, so `cache` is unused. Always one stepwise launch: the layers' strategy and CTA count do not apply."""
    launch = _forced
    tf32 = cell_tf32_enabled(x.dtype)  # as nn's cells' GEMMs: torch.backends.cuda.matmul.allow_tf32
    knobs = {} if launch is None else dict(threads=launch.threads, row_tile=launch.row_tile, k_chunk=launch.k_chunk)
    if len(states) == 2:
        h, c, saved = _kernels().cell_forward_cuda(mode, x, states[0], states[1], w_ih, w_hh, b_ih, b_hh, save, tf32,
                                                   **knobs)
        return (h, c), saved
    h, _, saved = _kernels().cell_forward_cuda(mode, x, states[0], None, w_ih, w_hh, b_ih, b_hh, save, tf32, **knobs)
    return (h,), saved


def cell_backward(mode, d_new, states, new, saved):
    """reference.cell_backward: (d gx, d gh, the direct part of each state's gradient or None)."""
    threads = 0 if _forced is None else _forced.threads
    if mode == "LSTM":
        dgates, _, _, dc = _kernels().cell_backward_cuda(mode, d_new[0], d_new[1], states[0], states[1], new[0], new[1],
                                                         saved, threads)
        return dgates, dgates, (None, dc)
    dgx, dgh, direct, _ = _kernels().cell_backward_cuda(mode, d_new[0], None, states[0], None, new[0], None, saved,
                                                        threads)
    return dgx, dgh, (direct if mode == "GRU" else None,)


def explain_lines() -> list[str]:
    """What explain() says about the cuda backend beyond available/unavailable."""
    lines = [f"  cuda-kernels: {VERIFIED}",
             f"  cuda-plans: per shape, persistent where W_hh's slice fits in shared memory and the grid "
             f"is co-resident, else stepwise ({STRATEGY_ENV} / fastrnn.backends.cuda.forced override; "
             "see csrc/cuda/plan.h)"]
    for kernel, (steps, batch, hidden, state, projection, dtype) in last_problems.items():
        try:
            plan = describe_plan(kernel, steps, batch, hidden, state, projection, dtype)
        except Exception as error:  # a plan that cannot run says why
            plan = f"cannot run: {error}"
        lines.append(f"  cuda-plan {kernel} T={steps} B={batch} H={hidden} R={state} {dtype}: {plan}")
    return lines
