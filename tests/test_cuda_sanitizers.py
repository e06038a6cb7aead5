"""The emulated CUDA kernels under ThreadSanitizer and under AddressSanitizer + UndefinedBehaviorSanitizer:
zero reports, and results that still match the reference. Then the checks themselves: each bug planted
in csrc/emulation/selftest.h is caught, by the emulator or by the sanitizer meant for it.

The sanitizers must instrument the whole program, so the kernels run in a small C++ driver without
torch (csrc/emulation/driver.cpp, built and cached by tests/simt_build.py): the test writes each case's
inputs to files, the driver runs the kernels on them and writes the outputs back.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fastrnn import functional
from fastrnn.backends import reference

import simt_build
from conftest import rel_error

REASON = simt_build.skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"SIMT emulator unavailable: {REASON}")

FLOOR = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
REPORTS = ("ThreadSanitizer", "AddressSanitizer", "runtime error:", "LeakSanitizer")

# A small subset of tests/test_cuda_emulated.py's grid that still walks every kernel, both strategies, the
# tensor-core, TF32 and FMA paths, several CTAs, row tiles and reduction chunks, ragged lengths, reverse.
CASES = {
    "lstm-bf16-proj-persistent-3ctas": dict(cell="lstm", dtype=torch.bfloat16, steps=4, batch=5, hidden=7, extra=3,
                                            reverse=True, ragged=True, strategy=1, ctas=3, threads=64),
    "lstm-f64-tiles-persistent-2ctas": dict(cell="lstm", dtype=torch.float64, steps=3, batch=37, hidden=19, extra=0,
                                            reverse=False, ragged=True, strategy=1, ctas=2, threads=32, row_tile=16,
                                            k_chunk=16),
    "gru-tf32-stepwise": dict(cell="gru", dtype=torch.float32, steps=4, batch=5, hidden=7, extra=1, reverse=False,
                              ragged=True, strategy=2, threads=64, allow_tf32=1),
    "gru-f16-persistent-4ctas": dict(cell="gru", dtype=torch.float16, steps=4, batch=5, hidden=9, extra=1, reverse=True,
                                     ragged=False, strategy=1, ctas=4, threads=64),
    # extra: 1 for relu, 0 for tanh
    "rnn-relu-bf16-persistent-3ctas": dict(cell="rnn", dtype=torch.bfloat16, steps=4, batch=5, hidden=35, extra=1,
                                           reverse=True, ragged=True, strategy=1, ctas=3, threads=64),
    "rnn-tanh-f64-stepwise-tiles": dict(cell="rnn", dtype=torch.float64, steps=3, batch=37, hidden=19, extra=0,
                                        reverse=False, ragged=True, strategy=2, threads=32, row_tile=16, k_chunk=16),
}


def _write(folder, name, tensor):
    tensor.contiguous().view(torch.uint8).numpy().tofile(folder / f"{name}.bin")


def _read(folder, name, like):
    data = np.fromfile(folder / f"{name}.out", dtype=np.uint8)
    return torch.from_numpy(data).view(like.dtype).reshape(like.shape)


def _prepare(case: dict, folder):
    """Writes the forward and backward case folders; returns what to compare their outputs with."""
    gen = torch.Generator().manual_seed(17)
    dtype, T, B, H, extra = case["dtype"], case["steps"], case["batch"], case["hidden"], case["extra"]

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    lengths = None
    if case["ragged"]:
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0], lengths[-1] = T, 0
        lengths = lengths.sort(descending=True).values
    if case["cell"] == "lstm":
        R = extra or H
        inputs = dict(xp=randn(T, B, 4 * H), h0=randn(B, R), c0=randn(B, H), w_hh=randn(4 * H, R, scale=R ** -0.5),
                      w_hr=randn(R, H, scale=H ** -0.5) if extra else None)
        forward = reference.lstm_forward
        out_names = ("y", "h_n", "c_n", "gates", "c_all")
    elif case["cell"] == "gru":
        R = H
        inputs = dict(xp=randn(T, B, 3 * H), h0=randn(B, H), w_hh=randn(3 * H, H, scale=H ** -0.5),
                      b_hn=randn(H) if extra else None)
        forward = reference.gru_forward
        out_names = ("y", "h_n", "saved")
    else:
        R, relu = H, bool(extra)
        inputs = dict(xp=randn(T, B, H), h0=randn(B, H), w_hh=randn(H, H, scale=H ** -0.5))

        def forward(xp, h0, w_hh, lengths, reverse):
            return reference.rnn_forward(xp, h0, w_hh, relu, lengths, reverse)
        out_names = ("y", "h_n")
    low = {k: None if v is None else v.to(dtype) for k, v in inputs.items()}
    exact_out = forward(*inputs.values(), lengths, case["reverse"])
    low_out = forward(*low.values(), lengths, case["reverse"])

    # The backward's inputs: the reference's own forward in `dtype`, and random output gradients.
    grads = [randn(*t.shape) for t in exact_out[: 3 if case["cell"] == "lstm" else 2]]
    if case["cell"] == "lstm":
        def backward_inputs(out, grad, w):
            c_prev = functional.previous_states(out[4], w["c0"], lengths, case["reverse"])
            return dict(dy=grad[0], dh_n=grad[1], dc_n=grad[2], c_prev=c_prev, w_hh=w["w_hh"], w_hr=w["w_hr"],
                        gates=out[3], c_all=out[4])
        backward, grad_names = reference.lstm_backward, ("dgates", "dh_all", "dh0", "dc0")
    elif case["cell"] == "gru":
        def backward_inputs(out, grad, w):
            h_prev = functional.previous_states(out[0], w["h0"], lengths, case["reverse"])
            return dict(dy=grad[0], dh_n=grad[1], h_prev=h_prev, w_hh=w["w_hh"], saved=out[2])
        backward, grad_names = reference.gru_backward, ("dxp", "dhn", "dh0")
    else:
        def backward_inputs(out, grad, w):
            return dict(dy=grad[0], dh_n=grad[1], y=out[0], w_hh=w["w_hh"])

        def backward(dy, dh_n, y, w_hh, lengths, reverse):
            return reference.rnn_backward(dy, dh_n, y, w_hh, relu, lengths, reverse)
        grad_names = ("dxp", "dh0")
    exact_back_in = backward_inputs(exact_out, grads, inputs)
    low_back_in = backward_inputs(low_out, [g.to(dtype) for g in grads], low)
    exact_grads = backward(*exact_back_in.values(), lengths, case["reverse"])
    low_grads = backward(*low_back_in.values(), lengths, case["reverse"])
    if case.get("allow_tf32"):
        # TF32 products (10-bit mantissa) are bounded by what a bfloat16 (7-bit) computation does.
        coarse = {k: None if v is None else v.to(torch.bfloat16) for k, v in inputs.items()}
        low_out = forward(*coarse.values(), lengths, case["reverse"])
        coarse_back_in = backward_inputs(low_out, [g.to(torch.bfloat16) for g in grads], coarse)
        low_grads = backward(*coarse_back_in.values(), lengths, case["reverse"])

    expected = []
    for kernel, tensors, names, exact, low_ref in [
        (f"{case['cell']}_forward", low, out_names, exact_out, low_out),
        (f"{case['cell']}_backward", low_back_in, grad_names, exact_grads, low_grads),
    ]:
        sub = folder / kernel
        sub.mkdir()
        settings = dict(kernel=kernel, dtype=DTYPE_NAMES[dtype], steps=T, batch=B, hidden=H, state=R,
                        projection=int(case["cell"] == "lstm" and bool(extra)), reverse=int(case["reverse"]),
                        strategy=case["strategy"], ctas=case.get("ctas", 0), threads=case["threads"],
                        row_tile=case.get("row_tile", 0), k_chunk=case.get("k_chunk", 0),
                        allow_tf32=case.get("allow_tf32", 0), relu=int(case["cell"] == "rnn" and bool(extra)))
        (sub / "case.txt").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        for name, tensor in tensors.items():
            if tensor is not None:
                _write(sub, name, tensor)
        if lengths is not None:
            _write(sub, "lengths", lengths.to(torch.int32))
        expected.append((sub, names, exact, low_ref))
    return expected


def _assert_clean(done, what):
    output = done.stdout + done.stderr
    assert done.returncode == 0 and not any(report in output for report in REPORTS), f"{what}:\n{output[-6000:]}"


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
@pytest.mark.parametrize("case", CASES)
def test_kernels_run_clean_under_sanitizer(tmp_path, sanitizer, case):
    reason = simt_build.sanitizer_runtime_reason(sanitizer)
    if reason is not None:
        pytest.skip(reason)
    expected = _prepare(CASES[case], tmp_path)
    done = simt_build.run_driver(sanitizer, "run", *(str(sub) for sub, *_ in expected))
    _assert_clean(done, f"{case} under -fsanitize={sanitizer}")
    dtype = CASES[case]["dtype"]
    for sub, names, exact, low_ref in expected:
        for name, truth, theirs in zip(names, exact, low_ref):
            if truth.numel() == 0:
                continue
            ours = _read(sub, name, theirs.to(dtype))
            bound = 2 * rel_error(theirs, truth) + FLOOR[theirs.dtype]
            assert rel_error(ours, truth) <= bound, (sub.name, name, rel_error(ours, truth), bound)


# The cell step: several row blocks and unit slices (threads 64, row tile 16, chunks of 16), on the tensor-core
# and FMA paths.
CELL_CASES = {"LSTM-bf16": ("LSTM", torch.bfloat16), "GRU-f16": ("GRU", torch.float16),
              "RNN_RELU-f64": ("RNN_RELU", torch.float64)}


def _cell_case(folder, kernel, mode, dtype, batch, input_size, hidden, tensors):
    folder.mkdir()
    settings = dict(kernel=kernel, mode=mode, input=input_size, dtype=DTYPE_NAMES[dtype], steps=1, batch=batch,
                    hidden=hidden, state=hidden, projection=0, reverse=0, strategy=2, ctas=0, threads=64, row_tile=16,
                    k_chunk=16, allow_tf32=0)
    (folder / "case.txt").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    for name, tensor in tensors.items():
        if tensor is not None:
            _write(folder, name, tensor.to(dtype))


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
@pytest.mark.parametrize("case", CELL_CASES)
def test_cell_step_runs_clean_under_sanitizer(tmp_path, sanitizer, case):
    reason = simt_build.sanitizer_runtime_reason(sanitizer)
    if reason is not None:
        pytest.skip(reason)
    mode, dtype = CELL_CASES[case]
    batch, input_size, hidden = 19, 13, 11
    lstm, gates = mode == "LSTM", {"LSTM": 4, "GRU": 3}.get(mode, 1)
    gen = torch.Generator().manual_seed(23)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    x, h, c = randn(batch, input_size), randn(batch, hidden), randn(batch, hidden) if lstm else None
    weights = (randn(gates * hidden, input_size, scale=input_size ** -0.5), randn(gates * hidden, hidden,
               scale=hidden ** -0.5), randn(gates * hidden), randn(gates * hidden))
    states = (h, c) if lstm else (h,)
    low = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    exact_new, exact_saved = reference.cell_forward(mode, x, states, *weights)
    low_new, low_saved = reference.cell_forward(mode, low(x), tuple(map(low, states)), *map(low, weights))
    d_new = [randn(batch, hidden) for _ in states]
    exact_back = reference.cell_backward(mode, d_new, states, exact_new, exact_saved)
    low_back = reference.cell_backward(mode, [low(d) for d in d_new], tuple(map(low, states)), low_new, low_saved)
    _cell_case(tmp_path / "forward", "cell_forward", mode, dtype, batch, input_size, hidden,
               dict(x=x, h=h, c=c, w_ih=weights[0], w_hh=weights[1], b_ih=weights[2], b_hh=weights[3]))
    # The backward reads the reference forward's results in `dtype`, as tests/cuda_checks.py's check_cell does.
    _cell_case(tmp_path / "backward", "cell_backward", mode, dtype, batch, input_size, hidden,
               dict(dh=d_new[0], dc=d_new[1] if lstm else None, h=h, c=c, h_new=low_new[0],
                    c_new=low_new[1] if lstm else None, saved=low_saved if gates > 1 else None))
    done = simt_build.run_driver(sanitizer, "run", str(tmp_path / "forward"), str(tmp_path / "backward"))
    _assert_clean(done, f"{case} cell step under -fsanitize={sanitizer}")
    forward = [("h_new", exact_new[0], low_new[0])] + ([("c_new", exact_new[1], low_new[1])] if lstm else []) + \
        ([("saved", exact_saved, low_saved)] if gates > 1 else [])
    backward = [("dgx", exact_back[0], low_back[0])] + \
        ([("dgh", exact_back[1], low_back[1]), ("direct", exact_back[2][0], low_back[2][0])] if mode == "GRU" else []) + \
        ([("dc_prev", exact_back[2][1], low_back[2][1])] if lstm else [])
    for sub, names in (("forward", forward), ("backward", backward)):
        for name, truth, theirs in names:
            ours = _read(tmp_path / sub, name, theirs)
            bound = 2 * rel_error(theirs, truth) + FLOOR[dtype]
            assert rel_error(ours, truth) <= bound, (sub, name, rel_error(ours, truth), bound)


# --- the checks themselves ---------------------------------------------------------------------------

CAUGHT_BY_THE_EMULATOR = {
    "divergent_syncthreads": r"reached __syncthreads at selftest.h:\d+ while \d+ thread\(s\) of its block wait at "
                             r"__syncthreads at selftest.h:\d+ \(divergent barrier\)",
    "early_return": r"returned from the kernel.*divergent barrier|after 1 thread\(s\) of its block returned",
    "missing_block_at_grid_barrier": r"deadlock: grid barrier: 1 of 2 blocks arrived",
    "divergent_warp_collective": r"__syncwarp at selftest.h:\d+ \(divergent barrier\)",
    "misaligned_wmma": r"wmma::load_matrix_sync at selftest.h:\d+: pointer not 256-bit aligned",
    "wmma_past_shared_memory": r"touches bytes \[0, 512\) of a dynamic shared memory of 256 bytes \(out of range\)",
    "shared_overflow": r"wrote 0 byte\(s\) before and 4 byte\(s\) past its 128 bytes of dynamic shared memory",
    "async_copy_not_waited": r"reached __syncthreads at selftest.h:\d+ with 1 asynchronous copies in flight \(the first "
                             r"issued at selftest.h:\d+\): wait for them",
    "misaligned_async_copy": r"asynchronous copy of 16 bytes at selftest.h:\d+: source or destination not 16-byte aligned",
    # A copy lands only at its wait: what a read overtaking it finds is the poison (NaN), whatever the timing.
    "async_copy_read_before_wait": r"read an asynchronous copy's destination before its wait",
    "prefetch_read_before_wait": r"read a prefetch's destination before its wait",
    "two_copies_to_one_address": r"to a destination whose copy issued at selftest.h:\d+ has not landed",
}


@pytest.mark.parametrize("name", CAUGHT_BY_THE_EMULATOR)
def test_emulator_reports_planted_bug(name):
    done = simt_build.run_driver("none", "selftest", name, timeout=120, FASTRNN_SIMT_TIMEOUT_S="2")
    assert done.returncode == 3, done.stdout + done.stderr
    assert re.search(CAUGHT_BY_THE_EMULATOR[name], done.stderr), done.stderr


@pytest.mark.parametrize("name", ["missing_syncthreads", "missing_grid_barrier"])
def test_thread_sanitizer_reports_planted_race(name):
    reason = simt_build.sanitizer_runtime_reason("thread")
    if reason is not None:
        pytest.skip(reason)
    plain = simt_build.run_driver("none", "selftest", name, timeout=120)
    assert plain.returncode == 0  # a race need not show in a plain run: that is what ThreadSanitizer is for
    done = simt_build.run_driver("thread", "selftest", name, timeout=300)
    assert "WARNING: ThreadSanitizer: data race" in done.stderr and "selftest.h" in done.stderr, done.stderr[-4000:]


# AddressSanitizer reports each where it happens: a write past the shared memory (its guards are poisoned),
# and a read of an asynchronous copy's or a prefetch's destination before the wait that lands it.
@pytest.mark.parametrize("name", ["shared_overflow", "async_copy_read_before_wait", "prefetch_read_before_wait"])
def test_address_sanitizer_reports_a_poisoned_access_where_it_happens(name):
    reason = simt_build.sanitizer_runtime_reason("address")
    if reason is not None:
        pytest.skip(reason)
    done = simt_build.run_driver("address", "selftest", name, timeout=300)
    assert "ERROR: AddressSanitizer: use-after-poison" in done.stderr and "selftest.h" in done.stderr, done.stderr[-4000:]


def test_grid_barrier_orders_blocks_under_thread_sanitizer():
    reason = simt_build.sanitizer_runtime_reason("thread")
    if reason is not None:
        pytest.skip(reason)
    _assert_clean(simt_build.run_driver("thread", "selftest", "exchange_behind_grid_barrier", timeout=300),
                  "the grid barrier's own exchange")
