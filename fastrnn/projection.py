"""The input projection x W^T + b on the CPU: the cpp kernels' own for small products, beyond them oneDNN's
GEMM where it measures faster than torch's matmul.

torch's float32 CPU matmul is MKL's sgemm, which on some CPUs (AMD's, measured: about 90 GFLOP/s a core
against oneDNN's 200 on a Zen 5 core) runs well under the core's FMA peak; oneDNN's linear, which torch
ships for its own compiled graphs (torch.ops.mkldnn._linear_pointwise), does not. Which to run is
measured once per process on the running CPU (`choice()`), on a projection-sized problem, or set by
FASTRNN_PROJECTION_GEMM=onednn|matmul (the two round differently in the last bits; matmul also keeps the
small products on torch's matmul). Products up to OWN_MAX_WORK run on the cpp kernels' (csrc/cpu/projection.h)
whichever was measured: oneDNN's linear costs ~12 us a call before any arithmetic, as much as a short layer's
whole projection, and the own kernel also beat MKL's matmul where MKL runs well (an Intel core).

Only the eager float32 CPU path changes: under torch.compile, tracing, export, torch.func transforms, for
other dtypes and devices, or tensor subclasses, the projection is F.linear. The backward is plain torch ops
(differentiable again where create_graph asks for it).
"""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ext

_PLAIN = (Tensor, torch.nn.Parameter)


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# oneDNN is taken only when clearly faster, so that a noisy measurement does not flip the choice (and with it
# the last bits of every result) from one run to the next; FASTRNN_PROJECTION_GEMM=onednn|matmul fixes it.
CLEARLY_FASTER = 0.75
ENVIRONMENT_VARIABLE = "FASTRNN_PROJECTION_GEMM"


@functools.cache
def choice() -> str:
    """"onednn" or "matmul": oneDNN's linear where it ran in at most 3/4 of torch's matmul's time on this CPU,
    measured once (about 50 ms) on a (2048, 256) x (256, 1024) float32 problem in the calling thread's CPU time,
    best of 3 runs each; or what FASTRNN_PROJECTION_GEMM says."""
    forced = _forced()
    if forced is not None:
        if forced == "onednn" and not torch.backends.mkldnn.is_available():
            raise RuntimeError(f"{ENVIRONMENT_VARIABLE}=onednn, but this torch has no oneDNN (torch.backends.mkldnn)")
        return forced
    if not torch.backends.mkldnn.is_available():
        return "matmul"
    try:
        gen = torch.Generator().manual_seed(0)
        x, weight = torch.randn(2048, 256, generator=gen), torch.randn(1024, 256, generator=gen)
        bias = torch.randn(1024, generator=gen)
        expected = F.linear(x, weight, bias)
        if not torch.allclose(_onednn_linear(x, weight, bias), expected, rtol=1e-4, atol=1e-4):
            return "matmul"
    except (RuntimeError, AttributeError):  # a torch without the op, or a CPU oneDNN refuses
        return "matmul"

    def best(fn) -> int:
        times = []
        for _ in range(3):
            start = time.thread_time_ns()
            fn(x, weight, bias)
            times.append(time.thread_time_ns() - start)
        return min(times)

    return "onednn" if best(_onednn_linear) <= CLEARLY_FASTER * best(F.linear) else "matmul"


@functools.cache
def _forced() -> str | None:
    """What FASTRNN_PROJECTION_GEMM sets ("onednn" or "matmul"), or None where it is unset; read once per
    process, as `choice()` is measured once (reading the environment costs ~1 us, on every projection)."""
    forced = os.environ.get(ENVIRONMENT_VARIABLE)
    if forced is not None and forced not in ("onednn", "matmul"):
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be 'onednn' or 'matmul', got {forced!r}")
    return forced


def _eligible(*tensors: Tensor | None) -> bool:
    """Whether oneDNN may run this projection: eager mode, plain float32 CPU tensors, no transform."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active():
        return False
    for tensor in tensors:  # a loop, not all(generator): this runs on every projection
        if tensor is not None and (type(tensor) not in _PLAIN or tensor.dtype != torch.float32 or
                                   tensor.device.type != "cpu"):
            return False
    return True


class _Linear(torch.autograd.Function):
    """x weight^T + bias (+ bias2) by `product` (oneDNN's linear or the cpp kernels'), differentiated as F.linear."""

    @staticmethod
    def forward(ctx, product, x, weight, bias, bias2):
        ctx.save_for_backward(x, weight)
        return product(x, weight, bias, bias2)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_x = matmul(grad, weight) if needs[1] else None
        d_weight = matmul(grad.T, x) if needs[2] else None
        d_bias = grad.sum(0) if needs[3] or needs[4] else None
        return None, d_x, d_weight, d_bias if needs[3] else None, d_bias if needs[4] else None


def _onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None, bias2: Tensor | None) -> Tensor:
    return _onednn_linear(x, weight, _summed(bias, bias2))


def _summed(bias: Tensor | None, bias2: Tensor | None) -> Tensor | None:
    return bias if bias2 is None else bias2 if bias is None else bias + bias2


# oneDNN's linear computes a @ b from both operands' transposed copies (the cpp kernels' transpose; torch's
# strided copy where they are not built). On a Zen 5 core, 1 thread, against torch's matmul: the weight
# gradients (G, T*B) x (T*B, X) won from 2^21 multiply-adds (1.25-1.54x at 2^21-2^22, 1.8-2.2x from 2^23) but
# for narrow outputs (G x X = 64 x 16: 0.79-0.98x up to 2^23); the input gradients (T*B, G) x (G, X) won from
# 2^21 at every width (1.1x there, 1.5-2.2x from 2^22). Below either bound torch's matmul runs.
MATMUL_MIN_WORK = 2**21
MATMUL_MIN_OUTPUTS = 4096


def _matmul_on_onednn(rows: int, depth: int, columns: int, *tensors: Tensor) -> bool:
    """Whether a (rows, depth) x (depth, columns) product of these tensors runs on oneDNN's linear: an eligible call
    autograd does not record (create_graph=True records plain ops), large enough, on a CPU where oneDNN won."""
    if torch.is_grad_enabled() or not _eligible(*tensors):
        return False  # (eligibility first: under torch.compile the sizes may be symbolic)
    return rows * depth * columns >= MATMUL_MIN_WORK and rows * columns >= MATMUL_MIN_OUTPUTS and choice() == "onednn"


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b of 2-D float32 CPU tensors (the backward's weight gradients), on oneDNN where `choice()` chose it
    and the product is large; plain a @ b where autograd records the product (create_graph=True)."""
    if not _matmul_on_onednn(a.shape[0], a.shape[1], b.shape[1], a, b):
        return a @ b
    return _onednn_linear(_contiguous(a), _contiguous(b.T), None)


def transposed_product(pieces: list[Tensor], b: Tensor) -> Tensor:
    """torch.cat(pieces, dim=1).T @ b: a weight gradient sum_t dG_t^T X_t whose gate gradients dG come in column
    pieces (the GRU's d_r, d_z from one tensor and d_hn from another). On oneDNN the cpp kernels copy each piece
    transposed into its rows of the one operand, where torch.cat would first copy them side by side."""
    rows = sum(piece.shape[1] for piece in pieces)
    # (eligibility before the extension: under torch.compile this traces, and the sizes may be symbolic)
    kernels = _transposer() if _matmul_on_onednn(rows, b.shape[0], b.shape[1], *pieces, b) else None
    if kernels is None or any(piece.stride(-1) != 1 for piece in pieces):
        return matmul((pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)).T, b)
    return _onednn_linear(kernels.transposed_cpu(pieces), _contiguous(b.T), None)


def _transposer():
    """The cpp kernels' extension where it has the transpose (None: not built, or a build from before it)."""
    kernels = _ext.extension()
    return kernels if kernels is not None and hasattr(kernels, "transposed_cpu") else None


def _contiguous(t: Tensor) -> Tensor:
    """t with contiguous rows. The weight gradients' operands are transposes of contiguous matrices (T*B rows of
    gate gradients or inputs), which the cpp kernels' transpose copies 2.5x faster than torch's strided copy
    (measured on a Zen 5 core: 6 ms for 16384 x 1024 against 15)."""
    if t.stride(0) == 1 and t.stride(1) >= t.shape[0] and not t.is_contiguous():
        kernels = _transposer()
        if kernels is not None:
            return kernels.transposed_cpu([t.T])
    return t.contiguous()


# oneDNN's linear costs ~12 us a call however small the product (torch's matmul ~3 us): below this many
# multiply-adds torch's matmul wins (measured on a Zen 5 core: 4e5 0.6x, 1.6e6 1.24x, 2.5e7 2.05x in oneDNN's
# favour). Single steps and short sequences stay on torch's matmul where the cpp kernels are not built.
LINEAR_MIN_WORK = 2**20

# Up to this many multiply-adds the cpp kernels' own projection runs (csrc/cpu/projection.h: about 1 us of
# fixed cost, then the step GEMM's microkernel on W packed once per weight version), unless
# FASTRNN_PROJECTION_GEMM=matmul. Measured on a Zen 5 core, AVX-512, against oneDNN's linear, 1 thread:
# (128 x 64) x (64 x 256) 20.7 us against 29.4, 128 x 256 x 1024 278 against 296, 1024 x 256 x 1024 level
# (2240 / 2179), 4096 x 256 x 1024 0.85x; 2 threads: 11.9 / 22.7, 149 / 164, 1148 / 1129, 128 x 512 x 2048
# 666 / 590 (before its panels were read in L2-sized chunks and its depth in blocks). On an Ice Lake core
# (AVX-512), 1 thread, against torch's matmul (MKL, which runs well there): 128 x 64 x 256 35.0 us against
# 39.7, 128 x 256 x 1024 485 / 524, 1024 x 64 x 256 268 / 290, 4096 x 64 x 256 1115 / 1222; beyond 2^26
# 1.02-1.09x matmul's time (before the chunks, 128 x 512 x 2048 took 1.69x: W streamed from L3). The
# narrower variants do not run it: forced onto AVX2 on that core (2 rows of 4 vectors a tile,
# load-bound) it took 1.6-2.5x oneDNN's time from 2^21 to 2^28 multiply-adds, the portable code 3.2-5.2x.
OWN_MAX_WORK = {"avx512": 2**26, "avx512_bf16": 2**26}
OWN_MAX_WORK_NARROW = 0


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, cache: dict | None = None,
           bias2: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias + bias2) (either bias may be None): on the cpp kernels' projection for small
    products (unless FASTRNN_PROJECTION_GEMM=matmul), beyond them on oneDNN where `choice()` measured it faster,
    eligible calls only. `cache`: the layer's dict
    for prepared weights (fastrnn/backends/cpp.py), where the cpp projection keeps W's panels between calls."""
    if x.dim() < 2 or not _eligible(x, weight, bias, bias2):
        return F.linear(x, weight, _summed(bias, bias2))  # (eligibility first: under torch.compile the sizes may be symbolic)
    work = x.numel() * weight.shape[0]
    product = None
    kernels = _own_projection(work)
    if kernels is not None:
        panels = _weight_panels(kernels, cache)
        product = lambda x, w, b, b2: kernels.linear_cpu(x, w, b, b2, panels)  # noqa: E731
    elif choice() == "onednn" and work >= LINEAR_MIN_WORK:
        product = _onednn_product
    if product is None:
        return F.linear(x, weight, _summed(bias, bias2))
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    bias2 = None if bias2 is None else bias2.contiguous()
    out = _Linear.apply(product, rows, weight, bias, bias2) if torch.is_grad_enabled() else \
        product(rows, weight, bias, bias2)
    return out.view(*x.shape[:-1], weight.shape[0])


def _own_projection(work: int):
    """The cpp kernels' extension where its projection takes a product of `work` multiply-adds, else None
    (larger, not built, or a build from before it)."""
    limit = own_max_work()
    return _ext.extension() if limit and work <= limit else None


def own_max_work() -> int:
    """The largest product (multiply-adds) an eligible projection runs on the cpp kernels' own here and now (0:
    none: not built, an instruction set without AVX-512, or FASTRNN_PROJECTION_GEMM=matmul)."""
    kernels = _ext.extension()
    if kernels is None or not hasattr(kernels, "linear_cpu") or _forced() == "matmul":
        return 0
    return _own_max_work(kernels)


def _own_max_work(kernels) -> int:
    isa = kernels.cpu_instruction_set()  # the variant the call runs on: chosen, or the widest one ("auto")
    if isa == "auto":
        isa = _widest_instruction_set(kernels)
    return OWN_MAX_WORK.get(isa, OWN_MAX_WORK_NARROW)


@functools.cache
def _widest_instruction_set(kernels) -> str:
    return kernels.cpu_supported_instruction_sets().split(",")[0]


def _weight_panels(kernels, cache: dict | None):
    """The projection weight's kept panels in a layer's `cache` (None: packed for each call)."""
    if cache is None:
        return None
    panels = cache.get("ih")
    if panels is None:
        panels = cache["ih"] = kernels.CpuWeightPanels()
    return panels
