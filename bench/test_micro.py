"""Micro-benchmarks of the recurrence ops alone, per backend and pass, for catching regressions.

Not part of the default test run (pytest's testpaths is tests/). Save a baseline, then compare:

    python -m pytest bench/test_micro.py --benchmark-autosave
    python -m pytest bench/test_micro.py --benchmark-compare --benchmark-compare-fail=median:10%
"""

from __future__ import annotations

import os

import pytest
import torch

from fastrnn import functional
from fastrnn.backends import unavailable_reason

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (T, B, H): a training-sized shape on the GPU, a small one on the CPU.
SEQ_LEN, BATCH, HIDDEN = (256, 64, 512) if DEVICE == "cuda" else (32, 16, 64)
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _skip_unless_runs(backend: str) -> None:
    reason = unavailable_reason(backend, DEVICE)
    if reason is not None:
        pytest.skip(reason)
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("timings of Triton's interpreter say nothing about the kernels")


def _randn(*shape, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(DTYPE)


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_lstm_recurrence(benchmark, backend, direction):
    _skip_unless_runs(backend)
    xp, h0, c0 = _randn(SEQ_LEN, BATCH, 4 * HIDDEN), _randn(BATCH, HIDDEN), _randn(BATCH, HIDDEN)
    w_hh = _randn(4 * HIDDEN, HIDDEN, scale=HIDDEN ** -0.5)
    outputs = functional.lstm_forward(xp, h0, c0, w_hh, None, None, False, backend)
    if direction == "forward":
        run = lambda: functional.lstm_forward(xp, h0, c0, w_hh, None, None, False, backend)  # noqa: E731
    else:
        y, h_n, c_n, gates, c_all = outputs
        c_prev = functional.previous_states(c_all, c0, None, False)
        dy, dh, dc = torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n)
        run = lambda: functional.lstm_backward(dy, dh, dc, c_prev, w_hh, None, gates, c_all, None, False, backend)  # noqa: E731
    benchmark(lambda: (run(), _sync()))


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_gru_recurrence(benchmark, backend, direction):
    _skip_unless_runs(backend)
    xp, h0 = _randn(SEQ_LEN, BATCH, 3 * HIDDEN), _randn(BATCH, HIDDEN)
    w_hh, b_hn = _randn(3 * HIDDEN, HIDDEN, scale=HIDDEN ** -0.5), _randn(HIDDEN)
    outputs = functional.gru_forward(xp, h0, w_hh, b_hn, None, False, backend)
    if direction == "forward":
        run = lambda: functional.gru_forward(xp, h0, w_hh, b_hn, None, False, backend)  # noqa: E731
    else:
        y, h_n, saved = outputs
        h_prev = functional.previous_states(y, h0, None, False)
        dy, dh = torch.randn_like(y), torch.randn_like(h_n)
        run = lambda: functional.gru_backward(dy, dh, h_prev, w_hh, saved, None, False, backend)  # noqa: E731
    benchmark(lambda: (run(), _sync()))
