"""The CUDA kernels on a GPU: the checks the emulator runs (tests/test_cuda_emulated.py), at the shapes
and lengths only a GPU reaches. Everything here needs a CUDA GPU and the extension built with its CUDA
kernels, and skips with the reason otherwise. (Module-level agreement with nn.LSTM/nn.GRU on every layer
option runs for backend="cuda" on the GPU in tests/test_conformance.py.) bench/gpu_suite.sh also runs the
kernels under compute-sanitizer's memcheck and racecheck. Error bounds: tests/tolerance.py (float32 with
TF32 off and on, each against a reference in the same arithmetic).
"""

from __future__ import annotations

import pytest
import torch

import fastrnn
from fastrnn import _ext
from fastrnn.backends import cuda as cuda_backend
from fastrnn.backends import reference, unavailable_reason

from conftest import CUDA_SKIP, GPU_GRID, compare, detached, make_pair, random_inputs, rel_error, run
from cuda_checks import DTYPES, _cast, _randn, check_cell, check_gru, check_lstm, check_rnn
from tolerance import allowed_error, precisions, reference as in_kernel_arithmetic, tf32_switch

# float32 twice: allow_tf32 explicitly off (IEEE bound) and on (TF32 bound; see tests/tolerance.py).
PRECISIONS = precisions(DTYPES)

REASON = unavailable_reason("cuda", "cuda") if torch.cuda.is_available() else "needs a CUDA GPU; this machine has none"
if REASON is None:
    REASON = _ext.cuda_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cuda backend unavailable: {REASON}")

STRATEGIES = {"persistent": 1, "stepwise": 2}


@pytest.fixture(scope="module")
def kernels():
    module = _ext.cuda_extension()
    module.cuda_set_poison_outputs(True)  # unwritten outputs show as NaN
    yield module
    module.cuda_set_poison_outputs(False)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype,tf32", PRECISIONS)
@pytest.mark.parametrize("batch", GPU_GRID["batch"])
@pytest.mark.parametrize("hidden", GPU_GRID["hidden"])
@pytest.mark.parametrize("seq_len", GPU_GRID["seq_len"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_gpu_grid(kernels, strategy, cell, seq_len, hidden, batch, dtype, tf32):
    """The same grid as the Triton backend's GPU tests (conftest.GPU_GRID), under each strategy (persistent
    where it fits), float32 with TF32 off and on."""
    plan = dict(strategy=STRATEGIES[strategy], allow_tf32=tf32)
    if strategy == "persistent":
        kind = {"LSTM": 0, "GRU": 2}.get(cell, 4)
        described = kernels.cuda_describe_plan(kind, seq_len, batch, hidden, hidden, False, str(dtype)[6:],
                                               allow_tf32=tf32)
        if not described.startswith("persistent"):
            pytest.skip(f"the persistent plan does not fit this shape: {described}")
    if cell == "LSTM":
        check_lstm(kernels, dtype, seq_len, batch, hidden, proj=0, reverse=False, ragged=batch > 1,
                   seed=seq_len + hidden, device="cuda", **plan)
    elif cell == "GRU":
        check_gru(kernels, dtype, seq_len, batch, hidden, bias=True, reverse=True, ragged=batch > 1,
                  seed=seq_len + hidden, device="cuda", **plan)
    else:
        check_rnn(kernels, dtype, seq_len, batch, hidden, relu=cell == "RNN_RELU", reverse=cell == "RNN_TANH",
                  ragged=batch > 1, seed=seq_len + hidden, device="cuda", **plan)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype,tf32", PRECISIONS)
def test_projection_on_gpu(kernels, strategy, dtype, tf32):
    check_lstm(kernels, dtype, seq_len=33, batch=40, hidden=200, proj=72, reverse=True, ragged=True, seed=3,
               device="cuda", strategy=STRATEGIES[strategy], allow_tf32=tf32)


@pytest.mark.parametrize("dtype,tf32", PRECISIONS)
@pytest.mark.parametrize("batch,input_size,hidden", [(1, 32, 64), (37, 100, 200), (128, 256, 512)])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_cell_step_on_gpu(kernels, mode, batch, input_size, hidden, dtype, tf32):
    """The fused cell step at decoder shapes (one row) and past a CTA's slice and row block."""
    check_cell(kernels, mode, dtype, batch, input_size, hidden, bias=True, seed=hidden, device="cuda", allow_tf32=tf32)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_cell_modules_on_gpu_match_torch(mode):
    """fastrnn's cells on backend="cuda" against nn's on the GPU, a few steps with autograd, in float64."""
    torch.manual_seed(5)
    kind = {"LSTM": "LSTMCell", "GRU": "GRUCell"}.get(mode, "RNNCell")
    ours = getattr(fastrnn, kind)(9, 33, backend="cuda", device="cuda", dtype=torch.float64)
    theirs = getattr(torch.nn, kind)(9, 33, device="cuda", dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    xs = torch.randn(4, 6, 9, device="cuda", dtype=torch.float64)
    results = []
    for cell in (ours, theirs):
        state, loss = None, 0
        for x in xs:
            state = cell(x, state)
            loss = loss + (state[0] if mode == "LSTM" else state).square().sum()
        results.append(torch.autograd.grad(loss, list(cell.parameters())))
    assert ours.last_backend == "cuda"
    for a, b in zip(*results):
        assert rel_error(a, b) < 1e-12


def test_tf32_follows_cudnn_switch(kernels):
    """float32 runs on TF32 while torch.backends.cudnn.allow_tf32 is on (its error then above the IEEE
    bound, within the TF32 one), in IEEE float32 while it is off."""
    gen = torch.Generator().manual_seed(4)
    xp, h0, c0, w_hh = (_randn(gen, 8, 6, 256), _randn(gen, 6, 64), _randn(gen, 6, 64), _randn(gen, 256, 64, scale=0.125))
    exact = reference.lstm_forward(xp, h0, c0, w_hh, None, None, False)[0]
    low = [t.float() for t in (xp, h0, c0, w_hh)]
    ieee = rel_error(reference.lstm_forward(*low, None, None, False)[0], exact)
    tf32 = rel_error(in_kernel_arithmetic(reference.lstm_forward, *low, None, None, False, tf32=True)[0], exact)
    args = [t.cuda() for t in low]
    errors = {}
    for allowed in (True, False):
        with tf32_switch(allowed):
            errors[allowed] = rel_error(cuda_backend.lstm_forward(*args, None, None, False)[0], exact)
    assert errors[False] <= allowed_error(torch.float32, ieee) < errors[True] <= allowed_error(torch.float32, tf32), \
        (errors, ieee, tf32)


@CUDA_SKIP
def test_backend_is_selected_by_name():
    model = fastrnn.LSTM(8, 32, num_layers=2, bidirectional=True, backend="cuda").cuda()
    out, _ = model(torch.randn(5, 3, 8, device="cuda"))
    assert model.last_backend == "cuda" and out.shape == (5, 3, 64)
    assert "cuda-plan lstm_forward" in fastrnn.explain("cuda")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_long_sequence_does_not_drift(strategy, cell):
    torch.manual_seed(3)
    ours, theirs = make_pair(cell, "cuda", "cuda", torch.float64, input_size=4, hidden_size=6)
    x, hx = random_inputs(ours, 2, 4096, device="cuda", seed=5)
    with cuda_backend.forced(strategy):
        errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_offsets_past_two_to_the_31(kernels, strategy):
    """T * B * 4H > 2**31 elements: every per-step offset must be computed in 64 bits."""
    seq_len, batch, hidden = 2100, 257, 1024
    assert seq_len * batch * 4 * hidden > 2**31
    gen = torch.Generator().manual_seed(9)
    xp = torch.randn(seq_len, batch, 4 * hidden, generator=gen, dtype=torch.bfloat16).cuda()
    h0, c0 = (torch.randn(batch, hidden, generator=gen).bfloat16().cuda() for _ in range(2))
    w_hh = (torch.randn(4 * hidden, hidden, generator=gen) * hidden ** -0.5).bfloat16().cuda()
    y, h_n, c_n, gates, c_all = kernels.lstm_forward_cuda(xp, h0, c0, w_hh, None, None, False,
                                                          strategy=STRATEGIES[strategy])
    tail = reference.lstm_forward(xp[-3:].float(), y[-4].float(), c_all[-4].float(), w_hh.float(), None, None, False)
    assert rel_error(y[-3:], tail[0]) < 2e-2 and rel_error(c_n, tail[2]) < 2e-2


def test_inputs_on_another_device_raise(kernels):
    args = _cast((torch.randn(3, 2, 12), torch.randn(2, 3), torch.randn(2, 3), torch.randn(12, 3)), torch.float32)
    args = [a.cuda() for a in args]
    args[1] = args[1].cpu()
    with pytest.raises(RuntimeError, match="h0 must be on cuda"):
        kernels.lstm_forward_cuda(*args, None, None, False)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype,tf32", precisions([torch.float32, torch.bfloat16]))
def test_small_shapes_for_compute_sanitizer(kernels, strategy, dtype, tf32):
    """A few small calls of every kernel (float32 on both the FMA and the TF32 path): what
    bench/gpu_suite.sh runs under compute-sanitizer's memcheck and racecheck (it selects this test by name)."""
    plan = dict(strategy=STRATEGIES[strategy], allow_tf32=tf32)
    check_lstm(kernels, dtype, seq_len=5, batch=19, hidden=37, proj=11, reverse=True, ragged=True, seed=6,
               device="cuda", **plan)
    check_gru(kernels, dtype, seq_len=5, batch=19, hidden=37, bias=True, reverse=False, ragged=True, seed=7,
              device="cuda", **plan)
    check_rnn(kernels, dtype, seq_len=5, batch=19, hidden=37, relu=True, reverse=True, ragged=True, seed=8,
              device="cuda", **plan)
    for mode in ("LSTM", "GRU", "RNN_RELU"):
        check_cell(kernels, mode, dtype, batch=19, input_size=13, hidden=37, bias=True, seed=9, device="cuda",
                   allow_tf32=tf32)
