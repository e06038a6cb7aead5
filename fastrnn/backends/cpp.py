"""C++ CPU backend: the recurrence contract of `fastrnn.backends.reference`, on the fused CPU kernels of
fastrnn._C (csrc/cpu/): the whole T-step loop in C++, per step a register-blocked GEMM with the cell in
its epilogue, one parallel region per layer-direction; float32, float64 and bfloat16 (computed in float32)
on CPU tensors."""

from __future__ import annotations

import torch

from .. import _ext, cells

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the cpp backend runs on CPU tensors; got a {device.type} tensor"
    return _ext.build_reason()


def _kernels():
    module = _ext.extension()
    if module is None:
        raise RuntimeError(f"fastrnn's C++ kernels are unavailable: {_ext.unavailable_reason()}")
    return module


# --- the layers: W_hh (and W_hr) packed once per weight version --------------------------------------
# A layer kernel reads W_hh as packed panels, whose packing costs about as much as a few steps. `cache`:
# the dict a module keeps per layer-direction (modules.py), which holds one fastrnn._C.CpuWeightPanels per
# weight; the kernels read its panels while the weight is unchanged (same storage, version, dtype and
# shape) and repack otherwise. None (a functional call, torch.compile's ops): pack on every call.


def _panels(cache, slot):
    if cache is None:
        return None
    panels = cache.get(slot)
    if panels is None:
        panels = cache[slot] = _kernels().CpuWeightPanels()
    return panels


def packed_weight_bytes(module) -> int:
    """Bytes of packed weights the layer kernels keep for `module` and its submodules."""
    return sum(panels.nbytes for sub in module.modules() for cache in sub.__dict__.get("_layer_panels", {}).values()
               for panels in cache.values())


def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True, cache=None, scratch_xp=False):
    # scratch_xp (padded input only): the saved gates are written over xp instead of a buffer of their own.
    return _kernels().lstm_forward_cpu(xp, h0, c0, w_hh, w_hr, lengths, reverse, save, _panels(cache, "hh"),
                                       None if w_hr is None else _panels(cache, "hr"), scratch_xp and lengths is None)


# --- an inference with its input projection inside the steps ---------------------------------------------
# Each step's tile then starts from the bias and adds x_t W_ih^T before h W_hh^T (every cell): no (T, B, G)
# projected input written and read back, twice the depth per tile, and on two threads the projection is split
# with the units. It wins where the weights of both GEMMs stay in the thread's L2 from step to step, or where the
# batch is large enough to hide reading them from further out; a large projection GEMM ahead of the steps wins
# elsewhere. Measured on an Ice Lake core, float32, T = 128, I = H, against the projection ahead (bench/RESULTS.md,
# "The input projection inside the steps"): 1 thread, B 8-128 at H 64 1.13-1.59x (LSTM, GRU, Elman), H 256 B 32-128
# 1.08-1.39x, but the LSTM at H 256 B 4-16 0.72-0.98x and H 512 B 8-16 0.77x; B 2 level (0.94-1.02x), B 1 0.89-0.97x.
IN_STEPS_RESIDENT_BYTES = 1 << 20  # W_ih and W_hh per thread
IN_STEPS_MIN_BATCH = 4
IN_STEPS_LARGE_BATCH = 32
IN_STEPS_LARGE_BATCH_BYTES = 2 << 20
_IN_STEPS_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def projects_in_steps(mode: str, dtype: torch.dtype, batch: int, input_size: int, hidden: int, threads: int) -> bool:
    """Whether an inference layer-direction runs on lstm_forward_projecting, gru_forward_projecting or
    rnn_forward_projecting (padded input, no proj_size)."""
    gates = _IN_STEPS_GATES.get(mode)
    if gates is None or dtype not in (torch.float32, torch.float64) or batch < IN_STEPS_MIN_BATCH:
        return False
    per_thread = gates * hidden * (input_size + hidden) * dtype.itemsize // max(1, threads)
    return per_thread <= IN_STEPS_RESIDENT_BYTES or (batch >= IN_STEPS_LARGE_BATCH and
                                                     per_thread <= IN_STEPS_LARGE_BATCH_BYTES)


def lstm_forward_projecting(x, w_ih, b_ih, b_hh, h0, c0, w_hh, lengths, reverse, cache=None):
    """The inference recurrence of lstm_forward on x (T, B, I) itself, x W_ih^T + b_ih + b_hh computed in its
    steps; W_ih's panels kept beside the projection's in the cache's "ih". Returns (y, h_n, c_n)."""
    return _kernels().lstm_forward_projecting_cpu(x, w_ih, b_ih, b_hh, h0, c0, w_hh, lengths, reverse, False,
                                                  _panels(cache, "ih"), _panels(cache, "hh"))[:3]


def gru_forward_projecting(x, w_ih, b_ih, b_hh, h0, w_hh, lengths, reverse, cache=None):
    """gru_forward's inference on x itself, as lstm_forward_projecting (b_hn kept in the reset product). Returns
    (y, h_n)."""
    return _kernels().gru_forward_projecting_cpu(x, w_ih, b_ih, b_hh, h0, w_hh, lengths, reverse, False,
                                                 _panels(cache, "ih"), _panels(cache, "hh"))[:2]


def rnn_forward_projecting(x, w_ih, b_ih, b_hh, h0, w_hh, relu, lengths, reverse, cache=None):
    """rnn_forward's inference on x itself, as lstm_forward_projecting. Returns (y, h_n)."""
    return _kernels().rnn_forward_projecting_cpu(x, w_ih, b_ih, b_hh, h0, w_hh, relu, lengths, reverse,
                                                 _panels(cache, "ih"), _panels(cache, "hh"))


def lstm_backward(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse, cache=None):
    return _kernels().lstm_backward_cpu(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse,
                                        _panels(cache, "hh"), None if w_hr is None else _panels(cache, "hr"))


def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True, cache=None):
    return _kernels().gru_forward_cpu(xp, h0, w_hh, b_hn, lengths, reverse, save, _panels(cache, "hh"))


def gru_backward(dy, dh_n, h_prev, w_hh, saved, lengths, reverse, cache=None):
    return _kernels().gru_backward_cpu(dy, dh_n, h_prev, w_hh, saved, lengths, reverse, _panels(cache, "hh"))


def rnn_forward(xp, h0, w_hh, relu, lengths, reverse, save=True, cache=None):
    return _kernels().rnn_forward_cpu(xp, h0, w_hh, relu, lengths, reverse, save, _panels(cache, "hh"))


def rnn_backward(dy, dh_n, y, w_hh, relu, lengths, reverse, cache=None):
    return _kernels().rnn_backward_cpu(dy, dh_n, y, w_hh, relu, lengths, reverse, _panels(cache, "hh"))


def stack_panels(caches: list[dict]) -> list:
    """(W_ih's, W_hh's) panels of each layer-direction's cache, as stack_inference takes them: the objects the layer
    functions use (the projection's "ih", the recurrence's "hh"), made where a cache has none yet."""
    return [panels for cache in caches for panels in (_panels(cache, "ih"), _panels(cache, "hh"))]


def stack_inference(mode, input, states, weights, panels, layers, bidirectional, batch_first, own_projection_limit,
                    in_steps=()):
    """An inference's whole layer stack in one call (padded input, no proj_size, save=False throughout): per
    layer-direction the input projection (the own kernel for float32 products up to own_projection_limit
    multiply-adds, torch's matmul beyond; inside the steps where in_steps says so, one bool per layer-direction)
    and the recurrence, as the layer functions run them. input (T, B, I) or (B, T, I); states: () or nn's
    (L * D, B, H) tensors; weights: (w_ih, w_hh, b_ih, b_hh) per layer-direction; panels: stack_panels. Returns
    (output, [final states])."""
    return _kernels().stack_inference_cpu(mode, input, states, weights, panels, layers, bidirectional, batch_first,
                                          own_projection_limit, list(in_steps))


# --- the cells: one step per call, on weights packed once ------------------------------------------
# A decoder calls these once per step, so the path is kept short: the module is looked up once, and a
# cache entry is one tuple compare per weight.

_module = None


def _cell_kernels():
    global _module
    if _module is None:
        _module = _kernels()
    return _module


def _packed(kernels, cache, slot, w, gates, isa):
    """w packed for the cell kernels, from `cache` while w is unchanged: its storage (data_ptr), its
    in-place version (an optimizer step, load_state_dict), dtype, shape and the instruction set (whose
    vector width is the packing's). The entry keeps w alive, so its address cannot be reused."""
    key = (w.data_ptr(), w._version, w.dtype, w.shape, isa)
    entry = cache.get(slot)
    if entry is None or entry[0] != key:
        entry = cache[slot] = (key, kernels.cell_pack_cpu(w, gates), w)
    return entry[1]


def _cell_packings(kernels, cache, w_ih, w_hh, gates):
    """(packed w_ih, packed w_hh) for the cell kernels: from `cache` while the weights are unchanged (None: packed
    for this call)."""
    if cache is None:
        return kernels.cell_pack_cpu(w_ih, gates), kernels.cell_pack_cpu(w_hh, gates)
    isa = kernels.cpu_instruction_set()
    return _packed(kernels, cache, "ih", w_ih, gates, isa), _packed(kernels, cache, "hh", w_hh, gates, isa)


def _cell_results(h, c, saved, gates, x):
    """The kernels' (h, c, saved) as (new states, saved): the Elman cell keeps nothing (reference's (0,) tensor)."""
    if gates == 4:
        return (h, c), saved
    return (h,), saved if gates == 3 else x.new_empty(0)


def cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, save=True, cache=None):
    """reference.cell_forward on the C++ cell kernels; `cache` (a dict the caller owns and keeps, or None:
    pack on every call) holds the packed weights between calls."""
    kernels = _module or _cell_kernels()
    gates = cells.CELLS[mode].gates
    packed_ih, packed_hh = _cell_packings(kernels, cache, w_ih, w_hh, gates)
    h, c, saved = kernels.cell_forward_cpu(mode, x, states[0], states[1] if gates == 4 else None, packed_ih,
                                           packed_hh, b_ih, b_hh, save)
    return _cell_results(h, c, saved, gates, x)


def layer_step(mode, x, states, w_ih, w_hh, b_ih, b_hh, batch_first, save, cache):
    """cell_forward for one step (T = 1) of a one-layer, one-direction layer in the layer's own shapes: x (1, B, I),
    or (B, 1, I) when batch_first, and states (1, B, H). Returns (output in x's layout, new states, saved)."""
    kernels = _module or _cell_kernels()
    gates = cells.CELLS[mode].gates
    packed_ih, packed_hh = _cell_packings(kernels, cache, w_ih, w_hh, gates)
    output, h_n, c_n, saved = kernels.layer_step_cpu(mode, x, states[0], states[1] if gates == 4 else None, packed_ih,
                                                     packed_hh, b_ih, b_hh, batch_first, save)
    return (output, *_cell_results(h_n, c_n, saved, gates, x))


def cell_backward(mode, d_new, states, new, saved):
    """reference.cell_backward: (d gx, d gh, the direct part of each state's gradient or None)."""
    kernels = _module or _cell_kernels()
    if mode == "LSTM":
        dgates, _, _, dc = kernels.cell_backward_cpu(mode, d_new[0], d_new[1], states[0], states[1], new[0], new[1],
                                                     saved)
        return dgates, dgates, (None, dc)
    dgx, dgh, direct, _ = kernels.cell_backward_cpu(mode, d_new[0], None, states[0], None, new[0], None, saved)
    return dgx, dgh, (direct if mode == "GRU" else None,)
