"""The cpp layer kernels' packed weights kept across calls (csrc/cpu/panel_cache.cpp, fastrnn/backends/cpp.py):
a module's W_hh and W_hr are packed once per weight version and read back bit for bit the same as a fresh
packing; every way a weight changes (an optimizer step, load_state_dict, in-place writes under no_grad, a new
tensor through .data, .to() with or without swapping tensors) gives nn's answer on the next call; the memory
goes with the module, and copies start without any; calls from several threads at once, in layouts of two
instruction sets, read only whole panels of the weight they were given.
"""

from __future__ import annotations

import copy
import gc
import io
import threading

import pytest
import torch

import fastrnn
from fastrnn import _ext
from fastrnn.backends import unavailable_reason

from conftest import CELLS, CPU_INSTRUCTION_SETS, rel_error

REASON = unavailable_reason("cpp", "cpu") or _ext.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpp backend unavailable: {REASON}")

from fastrnn.backends import cpp  # noqa: E402

# Every layer kernel: the LSTM with and without W_hr, the GRU, both Elman cells.
KINDS = [("LSTM", {}), ("LSTM", {"proj_size": 5}), ("GRU", {}), ("RNN_TANH", {}), ("RNN_RELU", {})]
KIND_IDS = ["lstm", "lstm-proj", "gru", "rnn-tanh", "rnn-relu"]


def _pair(mode, dtype=torch.float64, hidden=13, layers=2, bidirectional=True, **kwargs):
    ours_class, torch_class = CELLS[mode]
    theirs = torch_class(7, hidden, num_layers=layers, bidirectional=bidirectional, dtype=dtype, **kwargs)
    ours = ours_class(7, hidden, num_layers=layers, bidirectional=bidirectional, dtype=dtype, backend="cpp", **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _run(module, x, train):
    with torch.set_grad_enabled(train):
        y, _ = module(x)
        if not train:
            return [y]
        module.zero_grad(set_to_none=True)
        y.pow(2).sum().backward()
        return [y.detach(), *(p.grad for p in module.parameters())]


def _assert_matches_nn(ours, theirs, x, train):
    for got, want in zip(_run(ours, x, train), _run(theirs, x, train), strict=True):
        assert rel_error(got, want) < 1e-12


def _with_fresh_packing(fn):
    """fn() with the layer kernels packing per call, as a module without a cache would."""
    panels = cpp._panels
    cpp._panels = lambda cache, slot: None
    try:
        return fn()
    finally:
        cpp._panels = panels


@pytest.mark.parametrize("mode,kwargs", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("train", [False, True], ids=["inference", "train"])
def test_kept_panels_give_the_results_of_a_fresh_packing_bit_for_bit(mode, kwargs, train):
    torch.manual_seed(1)
    ours, _ = _pair(mode, torch.float32, **kwargs)
    x = torch.randn(6, 3, 7)
    fresh = _with_fresh_packing(lambda: _run(ours, x, train))
    first, second = _run(ours, x, train), _run(ours, x, train)  # packs, then reads what it kept
    assert cpp.packed_weight_bytes(ours) > 0
    for a, b, c in zip(fresh, first, second, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("mode,kwargs", KINDS, ids=KIND_IDS)
def test_every_change_of_a_weight_is_seen_on_the_next_call(mode, kwargs):
    torch.manual_seed(2)
    ours, theirs = _pair(mode, **kwargs)
    x = torch.randn(5, 4, 7, dtype=torch.float64)
    _assert_matches_nn(ours, theirs, x, train=False)
    # an optimizer step on both (in place: bumps each weight's version)
    for module in (ours, theirs):
        _run(module, x, train=True)
        torch.optim.SGD(module.parameters(), lr=0.5).step()
    _assert_matches_nn(ours, theirs, x, train=True)
    # load_state_dict: copy_ into the same storage
    other = CELLS[mode][1](7, 13, num_layers=2, bidirectional=True, dtype=torch.float64, **kwargs)
    ours.load_state_dict(other.state_dict())
    _assert_matches_nn(ours, other, x, train=False)
    # a write under no_grad
    with torch.no_grad():
        for a, b in zip(ours.parameters(), other.parameters(), strict=True):
            a.mul_(0.5)
            b.mul_(0.5)
    _assert_matches_nn(ours, other, x, train=False)
    # a new tensor behind the same Parameter (.data = ...), with the version it had
    for a, b in zip(ours.parameters(), other.parameters(), strict=True):
        a.data = b.detach().clone() * 2
        b.data = b.detach() * 2
    _assert_matches_nn(ours, other, x, train=False)
    # .to(): new Parameters in another dtype, and back
    ours.float()
    other.float()
    _assert_matches_nn(ours.double(), other.double(), x, train=True)
    # .to() swapping each Parameter's contents in place (the same Python objects)
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        ours.float()
        other.float()
        with torch.no_grad():
            ours.double()
            other.double()
            for a, b in zip(ours.parameters(), other.parameters(), strict=True):
                a.add_(1e-3)
                b.add_(1e-3)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
    _assert_matches_nn(ours, other, x, train=False)


def test_the_panels_go_with_the_module_and_copies_start_without():
    torch.manual_seed(3)
    ours, theirs = _pair("LSTM", torch.float32, hidden=33)
    x = torch.randn(3, 2, 7)
    with torch.no_grad():
        ours(x)
    held = cpp.packed_weight_bytes(ours)
    assert held >= 4 * (4 * 33 * 33 * 4)  # four W_hh of 4 * 33 rows of 33, at least their own size
    for clone in (copy.deepcopy(ours), torch.load(_saved(ours), weights_only=False)):
        assert cpp.packed_weight_bytes(clone) == 0
        with torch.no_grad():
            assert rel_error(clone(x)[0], theirs(x)[0]) < 1e-5
        assert cpp.packed_weight_bytes(clone) == held
    panels = [p for cache in ours._layer_panels.values() for p in cache.values()]
    assert panels and all(p.nbytes > 0 for p in panels)
    ours.double()  # the old tensors' panels are let go with them
    assert cpp.packed_weight_bytes(ours) == 0 and all(p.nbytes > 0 for p in panels)


def _saved(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return buffer


def test_calls_without_a_cache_pack_per_call():
    torch.manual_seed(3)
    w_hh = torch.nn.Parameter(torch.randn(3 * 9, 9))
    xp, h0 = torch.randn(4, 2, 3 * 9), torch.randn(2, 9)
    y, _, _ = cpp.gru_forward(xp, h0, w_hh, None, None, False)
    cache = {}
    y_kept, _, _ = cpp.gru_forward(xp, h0, w_hh, None, None, False, cache=cache)
    assert torch.equal(y, y_kept) and cache["hh"].nbytes > 0


BF16_ISAS = [isa for isa in CPU_INSTRUCTION_SETS if isa in ("avx512_bf16", "avx512")]


@pytest.mark.skipif("avx512_bf16" not in CPU_INSTRUCTION_SETS, reason="needs AVX512_BF16 for two bfloat16 layouts")
def test_threads_calling_one_module_in_two_layouts_read_whole_panels():
    """bfloat16 weights in two layouts at once (the pair products' and fp32 panels), from four Python threads
    that release the GIL in the kernels, with a new weight version half-way: each result is the one a lone
    call with fresh packing gives on one of the two instruction sets."""
    torch.manual_seed(4)
    kernels = _ext.extension()
    # one layer-direction: one kernel call per forward, so one instruction set per result
    ours, _ = _pair("GRU", torch.bfloat16, hidden=48, layers=1, bidirectional=False)
    x = torch.randn(9, 3, 7, dtype=torch.bfloat16)
    before = kernels.cpu_instruction_set()

    def expected():
        out = {}
        for isa in ("avx512_bf16", "avx512"):
            kernels.set_cpu_instruction_set(isa)
            out[isa] = _with_fresh_packing(lambda: _run(ours, x, False)[0])
        return out

    try:
        want = expected()
        kernels.set_cpu_instruction_set(before)
        failures, barrier = [], threading.Barrier(4)

        def worker(index):
            barrier.wait()
            for _ in range(30):
                # the instruction set is global: the threads only look, the main thread flips it
                got = _run(ours, x, False)[0]
                if not any(torch.equal(got, answer) for answer in want.values()):
                    failures.append(index)

        team = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in team:
            thread.start()
        for round in range(20):
            kernels.set_cpu_instruction_set(BF16_ISAS[round % len(BF16_ISAS)])
            if round == 10:
                with torch.no_grad():
                    for p in ours.parameters():
                        p.copy_(p)  # same values, a new version: every thread repacks
        for thread in team:
            thread.join()
    finally:
        kernels.set_cpu_instruction_set(before)
    assert not failures


@pytest.mark.parametrize("mode,kwargs", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_an_inference_in_chunks_of_steps_gives_nns_answer(mode, kwargs, packed, monkeypatch):
    """Large inferences run the projection and the steps chunk by chunk (functional.CHUNK_ELEMENTS), the state
    carried across: every output and final state as nn's, with lengths that end inside a chunk, at a chunk's
    edge and so before the last chunk, both directions, two layers and an initial state. (A padded LSTM whose
    projection runs inside its steps has nothing to chunk: here it projects ahead, as larger weights would.)"""
    from fastrnn import functional
    from fastrnn.backends import cpp
    from torch.nn.utils.rnn import pack_padded_sequence

    monkeypatch.setattr(cpp, "projects_in_steps", lambda *args: False)

    torch.manual_seed(5)
    ours, theirs = _pair(mode, **kwargs)
    steps, batch = 11, 5
    x = torch.randn(steps, batch, 7, dtype=torch.float64)
    layers = 4
    state = getattr(ours, "proj_size", 0) or 13
    hx = torch.randn(layers, batch, state, dtype=torch.float64)
    if mode == "LSTM":
        hx = (hx, torch.randn(layers, batch, 13, dtype=torch.float64))
    if packed:  # mostly full rows, so the layer keeps the padded layout that chunks
        x = pack_padded_sequence(x, torch.tensor([11, 11, 10, 9, 9]), enforce_sorted=True)
    with torch.no_grad():
        whole = ours(x, hx)
        # three steps a chunk (11 = 3 + 3 + 3 + 2; rows of 9 end at a chunk's edge, the row of 10 inside one)
        gates = {"LSTM": 4, "GRU": 3}.get(mode, 1)
        monkeypatch.setattr(functional, "CHUNK_ELEMENTS", 3 * batch * gates * 13)
        calls = []
        inner = functional.input_projection
        monkeypatch.setattr(functional, "input_projection", lambda *a: calls.append(1) or inner(*a))
        chunked, want = ours(x, hx), theirs(x, hx)
    assert len(calls) == 4 * 4, "not one projection per chunk (4) and layer-direction (4)"
    flat = lambda out: [t.data if hasattr(t, "batch_sizes") else t  # noqa: E731
                        for t in (out[0], *(out[1] if isinstance(out[1], tuple) else (out[1],)))]
    for got, ref, same in zip(flat(chunked), flat(want), flat(whole), strict=True):
        assert rel_error(got, ref) < 1e-12 and rel_error(got, same) < 1e-12
