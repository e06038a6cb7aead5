"""Every backend against nn.LSTM / nn.GRU / nn.RNN (tanh, relu) on every configuration axis: outputs, final states and the
gradients of the input, the initial states and every parameter."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

import fastrnn

from conftest import CUDA_SKIP, DEVICES, compare, detached, make_pair, random_inputs, rel_error, run, skip_unavailable
from tolerance import allowed_error, runs_tf32, tf32_matmuls, tf32_switch

BACKENDS = ["reference", "aten", "cpp", "triton", "cuda"]

# Awkward sizes on purpose: 1, primes, nothing a multiple of 16.
SHARED_CONFIGS = [
    dict(input_size=1, hidden_size=1),
    dict(input_size=13, hidden_size=17),
    dict(input_size=5, hidden_size=7, num_layers=3),
    dict(input_size=5, hidden_size=7, bidirectional=True),
    dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True, batch_first=True),
    dict(input_size=5, hidden_size=7, bias=False),
]
LSTM_ONLY_CONFIGS = [
    dict(input_size=5, hidden_size=7, proj_size=3),
    dict(input_size=5, hidden_size=7, proj_size=1, num_layers=2, bidirectional=True),
]
CONFIGS = [(cell, config) for cell in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") for config in SHARED_CONFIGS]
CONFIGS += [("LSTM", config) for config in LSTM_ONLY_CONFIGS]
CONFIG_IDS = [cell + "-" + "-".join(f"{k}={v}" for k, v in config.items()) for cell, config in CONFIGS]
MODES = ["batched", "no_state", "unbatched", "packed_sorted", "packed_unsorted"]


def skip_unavailable_or_twin(backend: str, device: str, cell: str, config: dict) -> None:
    """skip_unavailable; and in Triton's interpreter (on the CPU: slow, and how CI runs triton) the Elman relu
    rows keep one configuration (layers, both directions, batch_first): its kernels differ from tanh's by one
    constexpr, and tests/test_triton.py checks relu kernel by kernel. On a GPU every row runs."""
    skip_unavailable(backend, device, cell)
    if backend == "triton" and device == "cpu" and cell == "RNN_RELU" and config is not SHARED_CONFIGS[4]:
        pytest.skip("the interpreter runs one relu configuration; relu differs from tanh by one constexpr")


def inputs_for(module, mode: str, batch: int, seq_len: int, device, dtype, seed: int):
    if mode == "unbatched":
        return random_inputs(module, batch, seq_len, unbatched=True, device=device, dtype=dtype, seed=seed)
    lengths = None
    if mode.startswith("packed"):
        gen = torch.Generator().manual_seed(seed)
        lengths = [seq_len] + torch.randint(1, seq_len + 1, (batch - 1,), generator=gen).tolist()
        lengths = sorted(lengths, reverse=True) if mode == "packed_sorted" else lengths[1:] + lengths[:1]
    return random_inputs(module, batch, seq_len, lengths=lengths, with_state=mode != "no_state",
                         enforce_sorted=mode == "packed_sorted", device=device, dtype=dtype, seed=seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch,seq_len", [(1, 1), (3, 11)])
def test_matches_torch_in_float64(device, backend, cell, config, mode, batch, seq_len):
    skip_unavailable_or_twin(backend, device, cell, config)
    seed = zlib.crc32(repr((cell, mode, batch, seq_len, config)).encode())  # reproducible across runs
    torch.manual_seed(seed)
    ours, theirs = make_pair(cell, backend, device, torch.float64, **config)
    x, hx = inputs_for(ours, mode, batch, seq_len, device, torch.float64, seed)
    errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert ours.last_backend == backend
    assert max(errors.values()) < 1e-10, errors


def _to_cpu(x, hx):
    x = x.to("cpu")
    return x, None if hx is None else (tuple(h.cpu() for h in hx) if isinstance(hx, tuple) else hx.cpu())


# On a GPU float32 runs twice: torch.backends.cudnn.allow_tf32 explicitly off, and on (the switch cuDNN
# and both kernel backends follow; see tests/tolerance.py).
DEVICE_TF32 = [pytest.param("cpu", False, id="cpu"),
               pytest.param("cuda", False, marks=CUDA_SKIP, id="cuda-ieee"),
               pytest.param("cuda", True, marks=CUDA_SKIP, id="cuda-tf32")]


@pytest.mark.parametrize("device,tf32", DEVICE_TF32)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("mode", ["batched", "packed_unsorted"])
def test_float32_error_bounded_by_torch_error(device, tf32, backend, cell, config, mode):
    """In float32 each result's error against the float64 answer is at most about torch's own; where our
    kernels run on TF32, at most about that of the reference recurrence on TF32-rounded operands (cuDNN
    may choose IEEE float32 kernels while ours use TF32)."""
    skip_unavailable_or_twin(backend, device, cell, config)
    with tf32_switch(tf32):
        torch.manual_seed(7)
        ours, theirs = make_pair(cell, backend, device, torch.float32, **config)
        oracle = make_pair(cell, "reference", device, torch.float64, **config)[1]
        oracle.load_state_dict(theirs.state_dict())
        x, hx = inputs_for(oracle, mode, 5, 23, device, torch.float64, seed=11)
        exact = run(oracle, *detached(x, hx))
        x32, hx32 = detached(x, hx)
        x32 = x32.to(torch.float32) if not hasattr(x32, "batch_sizes") else type(x32)(x32.data.float(), *x32[1:])
        hx32 = None if hx32 is None else (tuple(h.float() for h in hx32) if isinstance(hx32, tuple) else hx32.float())
        ours_err = compare(run(ours, *detached(x32, hx32)), exact)
        bars = [compare(run(theirs, *detached(x32, hx32)), exact)]
        if device == "cuda" and backend in ("cuda", "triton") and runs_tf32(torch.float32):
            # On the CPU, where autograd runs the backward in this thread, inside the rounding mode.
            tf32_reference = make_pair(cell, "reference", "cpu", torch.float32, **config)[0]
            tf32_reference.load_state_dict(theirs.state_dict())
            x_cpu, hx_cpu = _to_cpu(*detached(x32, hx32))
            with tf32_matmuls():
                bars.append(compare(run(tf32_reference, x_cpu, hx_cpu), exact))
    for name in exact:
        limit = allowed_error(torch.float32, *(bar[name] for bar in bars))
        assert ours_err[name] <= limit, (name, ours_err[name], [bar[name] for bar in bars])


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_long_sequence_does_not_drift(cell):
    torch.manual_seed(3)
    ours, theirs = make_pair(cell, "reference", "cpu", torch.float64, input_size=4, hidden_size=6, bidirectional=True)
    x, hx = random_inputs(ours, 2, 1500, seed=5)
    errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert max(errors.values()) < 1e-10, errors


# Dropout lives in the module, the same for every kernel backend: the others (the interpreted Triton one is
# slow) run one layout each.
DROPOUT_CASES = [("reference", mode, dtype) for mode in ("batched", "unbatched", "packed_unsorted")
                 for dtype in (torch.float64, torch.float32)]
DROPOUT_CASES += [(backend, "packed_unsorted", torch.float64) for backend in ("cpp", "triton")]


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_RELU"])
@pytest.mark.parametrize("backend,mode,dtype", DROPOUT_CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_dropout_draws_the_masks_nn_draws_on_the_cpu(backend, cell, mode, dtype):
    """Under the same seed, training-mode dropout between layers zeroes the same elements as nn.LSTM/nn.GRU
    on the CPU (float32 may take torch's oneDNN path; the masks must agree there too), so outputs,
    states and every gradient agree. Packed input draws its mask over the packed rows, as torch does."""
    skip_unavailable(backend, "cpu", cell)
    torch.manual_seed(11)
    ours, theirs = make_pair(cell, backend, "cpu", dtype, input_size=4, hidden_size=6, num_layers=3,
                             bidirectional=True, batch_first=True, dropout=0.3)
    x, hx = inputs_for(ours, mode, 5, 7, "cpu", dtype, seed=4)
    torch.manual_seed(12)
    got = run(ours, *detached(x, hx))
    torch.manual_seed(12)
    expected = run(theirs, *detached(x, hx))
    errors = compare(got, expected)
    assert max(errors.values()) < (1e-10 if dtype == torch.float64 else 1e-5), errors
    torch.manual_seed(13)
    assert rel_error(run(ours, *detached(x, hx))["output"], expected["output"]) > 1e-2  # another seed, other masks


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_dropout_sits_between_layers(cell):
    """Training-mode dropout is applied to every layer's output but the last, as in nn.LSTM: the
    3-layer module equals three 1-layer modules with F.dropout between them under the same seed."""
    torch.manual_seed(0)
    cls = fastrnn.LSTM if cell == "LSTM" else fastrnn.GRU
    stacked = cls(4, 6, num_layers=3, dropout=0.5, bidirectional=True, dtype=torch.float64, backend="reference")
    singles = [cls(4 if i == 0 else 12, 6, bidirectional=True, dtype=torch.float64, backend="reference") for i in range(3)]
    for i, single in enumerate(singles):
        single.load_state_dict({k.replace(f"_l{i}", "_l0"): v for k, v in stacked.state_dict().items() if f"_l{i}" in k})
    x = torch.randn(9, 2, 4, dtype=torch.float64)

    torch.manual_seed(1)
    out = stacked(x)[0]
    torch.manual_seed(1)
    manual = x
    for i, single in enumerate(singles):
        manual = single(manual)[0]
        if i < 2:
            manual = F.dropout(manual, 0.5, training=True)
    assert rel_error(out, manual) < 1e-12
    assert rel_error(stacked.eval()(x)[0], out) > 1e-3  # eval mode switches dropout off
    torch.manual_seed(1)
    assert rel_error(stacked.train()(x)[0], out) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("mode", ["batched", "packed_unsorted", "unbatched"])
def test_inference_under_no_grad_matches_torch(backend, cell, config, mode):
    """Without gradients the layers take the inference path (no autograd node, nothing kept for a
    backward): outputs and final states still equal nn's."""
    skip_unavailable_or_twin(backend, "cpu", cell, config)
    seed = zlib.crc32(repr(("no_grad", cell, mode, config)).encode())
    torch.manual_seed(seed)
    ours, theirs = make_pair(cell, backend, "cpu", torch.float64, **config)
    x, hx = inputs_for(ours, mode, 4, 9, "cpu", torch.float64, seed)
    with torch.no_grad():
        (out, states), (expected_out, expected_states) = ours(x, hx), theirs(x, hx)
    states = states if isinstance(states, tuple) else (states,)
    expected_states = expected_states if isinstance(expected_states, tuple) else (expected_states,)
    out = out.data if hasattr(out, "batch_sizes") else out
    expected_out = expected_out.data if hasattr(expected_out, "batch_sizes") else expected_out
    for a, b in zip((out, *states), (expected_out, *expected_states)):
        assert not a.requires_grad and rel_error(a, b) < 1e-10
