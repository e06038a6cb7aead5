"""What backend="auto" runs: the rule, per device and workload, stated once (and shown by explain()).

On a CPU the fused C++ kernels ("cpp") run where `python -m bench` measured them faster than torch's
own code (bench/RESULTS.md, CPU section): every GRU and Elman RNN (torch's CPU code for both is a generic
per-step path),
every packed LSTM (likewise), padded LSTMs of one sequence or small enough that the per-step cost
dominates, padded LSTM training up to batch 4, padded LSTM inferences up to batch 8 (on two threads or more also
small ones up to batch 32), and every one-step call (T = 1, as a streaming or decoding loop makes them), which runs as the
fused cell step on weights packed once; larger padded LSTMs keep torch's oneDNN LSTM. On a GPU a kernel backend runs only once it has been measured
faster than cuDNN there (none has yet). Under torch.compile, which cannot trace torch's RNN code,
auto runs a traceable custom op instead: the cpp kernels on a CPU, the reference loop elsewhere; on a
CPU an inference the rule gives to oneDNN runs torch's code as an opaque op (fastrnn::torch_rnn_inference,
chosen in modules.py), since that op has no backward.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch

CPP_DTYPES = (torch.float32, torch.float64)  # the dtypes auto gives to the cpp kernels
OTHER_CPU_DTYPES = (torch.bfloat16, torch.float16)  # those it leaves to torch's code, but for the rows below

# bfloat16 layers (T > 1) on the cpp kernels: how many depends on this CPU's bfloat16 pair products
# (vdpbf16ps), whose multiply-add rate csrc/cpu/dispatch.cpp measures once against its fp32 FMAs.
#
# Where they are at least as fast as fp32 FMAs (FAST_PAIR_PRODUCTS; an AMD EPYC Zen 5 here, 1.85x), every GRU
# and Elman layer, the padded batch-1 LSTM, and padded LSTM training up to batch 8 or from hidden 512.
# Measured with `python -m bench --preset cpu --dtypes bfloat16 --threads 1` (B 1-128, H 64-512, T 128; and
# `--cells rnn_tanh`) at commit c991301 on that CPU, and `--threads 2` at f8a6bb1: the GRU 1.25-33x inference
# and 1.07-44x training in all 12 rows; the Elman layer (tanh) 1.24-17x inference and 1.12-33x training in all
# 12 rows (beside a build on the other core); the LSTM at batch 1 1.26-1.67x inference and 1.67-4.5x training;
# beyond batch 1 it lost inference to oneDNN's bfloat16 LSTM (0.73-0.94x) but won training at B 8 (1.11-2.87x,
# 1 and 2 threads) and H 512 (1.22-2.33x), not at B 32-128 below H 512 (0.85-2.22x: 0.85, 0.89 and 0.94 among them).
FAST_PAIR_PRODUCTS = 1.0
LSTM_BFLOAT16_TRAINING_MAX_BATCH = 8
LSTM_BFLOAT16_TRAINING_MIN_HIDDEN = 512
#
# Where they are slower, up to this batch x hidden size. Measured with `python -m bench --cells gru rnn_tanh
# --dtypes bfloat16 --batch 1 8 16 32 64 --hidden 128 256 512 --seq-len 128 --impls fastrnn-cpp --threads 1`
# at commit fe3c845 on a Xeon with AMX (pair products 0.5x its FMAs; nn's bfloat16 GEMMs at their strongest):
# the GRU 1.12-9.3x inference and 1.5-19x training up to B x H = 8192, 0.93/0.82x inference at 16384/32768
# (B 32 and 64, H 512); the Elman layer 1.03-16x in every row (to B 64, H 512); bfloat16 LSTMs keep oneDNN's
# LSTM there (3x faster than the cpp kernels at B 32 inference).
#
# One-step calls keep nn's cells either way.
CPP_BFLOAT16_MAX_BATCH_X_HIDDEN = {"GRU": 8192, "RNN_TANH": 32768, "RNN_RELU": 32768}


@functools.cache
def pair_products_per_fma() -> float:
    """This CPU's vdpbf16ps multiply-add rate over its fp32 FMA rate, as the cpp kernels measured it (0: none,
    or no kernels)."""
    from .. import _ext

    if _ext.build_reason() is not None:
        return 0.0
    module = _ext.extension()
    return module.cpu_pair_products_per_fma() if module is not None else 0.0


def pair_products_are_fast() -> bool:
    return pair_products_per_fma() >= FAST_PAIR_PRODUCTS


def _cpu_prefers_cpp_in_bfloat16(workload: Workload) -> bool:
    if is_one_step(workload):
        return False
    if pair_products_are_fast():
        if workload.cell != "LSTM":
            return True
        if workload.packed:
            return False
        return workload.batch == 1 or (workload.training and (workload.batch <= LSTM_BFLOAT16_TRAINING_MAX_BATCH or
                                                              workload.hidden >= LSTM_BFLOAT16_TRAINING_MIN_HIDDEN))
    return workload.batch * workload.hidden <= CPP_BFLOAT16_MAX_BATCH_X_HIDDEN.get(workload.cell, 0)


# A padded LSTM runs on the cpp kernels for one sequence (batch 1), and for any batch up to this batch x
# hidden size; otherwise oneDNN's LSTM was as fast or faster. Measured with `python -m bench --cells lstm
# --batch 1 8 --hidden 64 256 512 --seq-len 128 --impls fastrnn-cpp --threads 1|2` at commit fbc2310: batch 1
# won at every H, inference and training, 1.07-1.38x on 1 thread and 1.08-1.93x on 2; batch 8 lost in most
# rows (0.70-0.98x; bench/RESULTS.md had the same beyond B x H = 64).
LSTM_CPP_MAX_BATCH_X_HIDDEN = 64
# An inference (nothing recorded for a backward) of a padded LSTM runs on the cpp kernels up to this batch.
# Measured on a Zen 5 core with `python -m bench --cells lstm --batch 8 32 --hidden 64 256 512 --seq-len 128
# --modes forward train --impls fastrnn-cpp --threads 1|2` at commit 5d8c319 (the 4 + 4 row tiles): batch 8
# inference 1.01-1.06x oneDNN's LSTM on 1 thread and 1.05-2.08x on 2; training there 0.97-0.98x on 1 thread
# (kept on oneDNN); batch 32 inference 0.90-0.97x on 1 thread.
LSTM_CPP_INFERENCE_MAX_BATCH = 8
# Training (a forward that records a backward) of a padded LSTM runs on the cpp kernels up to this batch, past
# batch x hidden <= 64. Measured on an Intel Ice Lake core with `python -m bench --cells lstm --batch 2 3 4 6
# --hidden 64 128 256 512 --seq-len 128 --modes train --impls fastrnn-cpp --threads 1|2` at commit f288d21 (after
# 3498c1b, the 2-row tiles' single loads): cpp over oneDNN 0.98-1.54x at B 2-4 on 1 thread (the 0.98 at B 4 H 128,
# a row flagged for spread) and 1.18-1.83x on 2; at B 6 1.08-1.17x and 1.09-1.32x, at B 8 1.03-1.18x (1 thread).
# On a Zen 5 core batch 1 won (1.07-1.38x) and batch 8 tied (0.97-0.98x, commit 5d8c319); B 2-4 were not measured
# there, so the rule stops at 4, where Ice Lake's margins are widest.
LSTM_CPP_TRAINING_MAX_BATCH = 4
# auto's preference on a CUDA device, before torch's own code (cuDNN). A kernel backend joins this list
# only once the bench suite has measured it faster than cuDNN on a GPU; none has been timed on one yet.
CUDA_ORDER: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Workload:
    """What auto's choice depends on, for one forward."""

    cell: str  # the cell's mode (cells.Cell.mode): "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
    dtype: torch.dtype  # the dtype the layer computes in
    batch: int
    hidden: int
    packed: bool
    steps: int = 0  # T, the longest sequence (0: not known)
    projection: bool = False  # an LSTM with proj_size
    training: bool = False  # the forward records a backward (grad mode on, and the weights require gradients)
    threads: int = 1  # the threads the forward's kernels may use (torch.get_num_threads())
    input_size: int = 0  # the widest layer input (0: not known, taken as hidden)


def threads_now() -> int:
    """torch.get_num_threads(), for a Workload: while torch.compile traces, read once and kept out of the graph
    as a constant (Dynamo cannot put an int-returning torch function in one), like the choice it feeds."""
    return torch.get_num_threads()


threads_now._dynamo_marked_constant = True


def _cpu_prefers_cpp(workload: Workload | None) -> bool:
    if workload is None:
        return True  # no shape to judge by (the choice made once while torch.compile traces): the typical small-model case
    if workload.dtype == torch.bfloat16:
        return _cpu_prefers_cpp_in_bfloat16(workload)
    if workload.dtype not in CPP_DTYPES:
        return False
    if workload.cell != "LSTM" or workload.packed or is_one_step(workload):
        return True
    if workload.batch == 1 or workload.batch * workload.hidden <= LSTM_CPP_MAX_BATCH_X_HIDDEN:
        return True
    if workload.training:
        return workload.batch <= LSTM_CPP_TRAINING_MAX_BATCH
    return workload.batch <= LSTM_CPP_INFERENCE_MAX_BATCH or _projects_in_steps(workload)


# An inference whose input projection the cpp kernels run inside the steps (cpp.projects_in_steps) runs there at
# any batch: measured on an Intel Ice Lake core against nn's oneDNN LSTM (T = 128, I = H, commits c764c75-74c61e9,
# bench/RESULTS.md "The input projection inside the steps"): 1 thread, the peers bench 1.05-1.15x at B 32-128 and
# H 64-256, module A/B runs 1.02-1.16x, and 0.91-0.92x at H 256 in one loaded run of few calls (within oneDNN's
# drift on this machine); 2 threads 1.00-1.94x. The weights outside the rule (H 512 at B 32) were level with
# oneDNN on the projection ahead (0.94-0.99x) and stay on it.
# (It takes in all the rule for two threads had before it: B <= 32 and B x H <= 2048, where the cpp kernels had
# won 1.06-1.39x with the projection ahead, commits 8c1e949 and 5d8c319.)
def _projects_in_steps(workload: Workload) -> bool:
    from . import cpp

    return not workload.projection and cpp.projects_in_steps(
        "LSTM", workload.dtype, workload.batch, workload.input_size or workload.hidden, workload.hidden,
        workload.threads)


# A one-step call runs as the fused cell step: `python -m bench --cells gru lstm --seq-len 1` style timings
# (thread CPU time, 1 thread, commit a5b66c3) had the cell step ahead of nn.GRU/nn.LSTM (ATen, oneDNN) and of
# the layer kernel, which packs W_hh on every call, at every B in {1, 8, 32, 128} and H in {64, 256, 512}.
def is_one_step(workload: Workload) -> bool:
    """Whether a forward is one step of padded input without a projection: what the cell step runs."""
    return workload.steps == 1 and not workload.packed and not workload.projection


def choose(device: torch.device, workload: Workload | None, compiling: bool,
           available: Callable[[str], bool]) -> str:
    """The backend auto runs; `available(name)` says whether a backend can run on `device`."""
    if device.type == "cuda":
        choice = next((name for name in CUDA_ORDER if available(name)), "aten")
    elif device.type == "cpu" and _cpu_prefers_cpp(workload) and available("cpp"):
        choice = "cpp"
    else:
        choice = "aten"
    if choice == "aten" and compiling:
        if device.type == "cpu" and (workload is None or workload.dtype in CPP_DTYPES) and available("cpp"):
            return "cpp"
        return "reference"
    return choice


def choose_compiled(device: torch.device, available: Callable[[str], bool]) -> str:
    """What auto runs under torch.compile: decided once while tracing, without the shape (the layer asks
    with no workload), so one backend for every traced forward on `device`."""
    return choose(device, None, True, available)


def compiled_inference_runs_torch(device: torch.device, workload: Workload) -> bool:
    """Whether an inference under torch.compile runs torch's own code, as the opaque op
    fastrnn::torch_rnn_inference, instead of choose_compiled(): where auto gives the padded workload to
    torch's code eagerly on a CPU in a dtype the cpp kernels take. The layer also needs that nothing
    requires a gradient (the op has no backward), no autocast and no training-mode dropout
    (fastrnn/modules.py); the eager question ignores availability, as the layer's does."""
    return (device.type == "cpu" and not workload.packed and workload.dtype in CPP_DTYPES
            and choose(device, workload, False, lambda name: True) == "aten")


def _dtype_names(dtypes) -> str:
    return "/".join(str(dtype).removeprefix("torch.") for dtype in dtypes)


def kinds(device: torch.device) -> list[tuple[str, Workload]]:
    """The kinds of workload the rule tells apart on `device`, each in words with one concrete example:
    explain() shows the rule's outcome for each example (one kind per branch of choose())."""
    if device.type != "cpu":
        return [("any LSTM, GRU or RNN, any shape and dtype", Workload("LSTM", torch.float32, 16, 256, False))]
    dtypes, small = _dtype_names(CPP_DTYPES), LSTM_CPP_MAX_BATCH_X_HIDDEN
    return [
        (f"GRU, {dtypes}, any shape", Workload("GRU", torch.float32, 64, 512, False)),
        (f"RNN (tanh, relu), {dtypes}, any shape", Workload("RNN_TANH", torch.float32, 64, 512, False)),
        (f"LSTM, {dtypes}, packed (PackedSequence)", Workload("LSTM", torch.float32, 64, 512, True)),
        (f"LSTM, {dtypes}, padded, batch 1", Workload("LSTM", torch.float32, 1, 512, False)),
        (f"LSTM, {dtypes}, padded, batch x hidden <= {small}", Workload("LSTM", torch.float32, 4, small // 4, False)),
        (f"LSTM, {dtypes}, padded, inference, batch <= {LSTM_CPP_INFERENCE_MAX_BATCH}",
         Workload("LSTM", torch.float32, LSTM_CPP_INFERENCE_MAX_BATCH, 512, False)),
        (f"LSTM, {dtypes}, padded, inference, no proj_size, its projection inside the steps (fastrnn.explain's "
         "input projections)", Workload("LSTM", torch.float32, 32, 256, False)),
        (f"LSTM, {dtypes}, padded, inference, batch > {LSTM_CPP_INFERENCE_MAX_BATCH} and batch x hidden > {small}, "
         "otherwise", Workload("LSTM", torch.float32, LSTM_CPP_INFERENCE_MAX_BATCH + 1, 512, False)),
        (f"LSTM, {dtypes}, padded, training, batch <= {LSTM_CPP_TRAINING_MAX_BATCH}",
         Workload("LSTM", torch.float32, LSTM_CPP_TRAINING_MAX_BATCH, 512, False, training=True)),
        (f"LSTM, {dtypes}, padded, training, batch > {LSTM_CPP_TRAINING_MAX_BATCH} and batch x hidden > {small}",
         Workload("LSTM", torch.float32, LSTM_CPP_TRAINING_MAX_BATCH + 1, small, False, training=True)),
        (f"LSTM, GRU or RNN, {dtypes}, one step (T = 1), padded, no projection",
         Workload("LSTM", torch.float32, 64, 512, False, steps=1)),
        *bfloat16_kinds(),
        (f"LSTM, GRU or RNN in {_dtype_names(OTHER_CPU_DTYPES)} otherwise", Workload("LSTM", torch.bfloat16, 8, small, False)),
    ]


def bfloat16_kinds() -> list[tuple[str, Workload]]:
    """The bfloat16 kinds the cpp kernels take on this CPU (see CPP_BFLOAT16_MAX_BATCH_X_HIDDEN)."""
    if pair_products_are_fast():
        return [("GRU or RNN (tanh, relu) in bfloat16, any shape, T > 1 (pair products >= FMAs here)",
                 Workload("GRU", torch.bfloat16, 64, 512, False)),
                ("LSTM in bfloat16, padded, batch 1, T > 1 (pair products >= FMAs here)",
                 Workload("LSTM", torch.bfloat16, 1, 256, False)),
                (f"LSTM in bfloat16, padded, training, batch <= {LSTM_BFLOAT16_TRAINING_MAX_BATCH} or hidden >= "
                 f"{LSTM_BFLOAT16_TRAINING_MIN_HIDDEN}, T > 1 (pair products >= FMAs here)",
                 Workload("LSTM", torch.bfloat16, 8, 256, False, training=True))]
    return [(f"GRU in bfloat16, batch x hidden <= {CPP_BFLOAT16_MAX_BATCH_X_HIDDEN['GRU']}, T > 1",
             Workload("GRU", torch.bfloat16, 8, 256, False)),
            (f"RNN (tanh, relu) in bfloat16, batch x hidden <= {CPP_BFLOAT16_MAX_BATCH_X_HIDDEN['RNN_TANH']}, T > 1",
             Workload("RNN_TANH", torch.bfloat16, 8, 256, False))]


@dataclasses.dataclass(frozen=True)
class Pick:
    """The rule's outcome for one kind of workload."""

    kind: str
    eager: str  # training and inference alike
    compiled_training: str
    compiled_inference: str


def picks(device: torch.device, available: Callable[[str], bool]) -> list[Pick]:
    """What auto runs on `device` for each kind of workload, computed by the rule on each kind's example."""
    compiled = choose_compiled(device, available)
    return [Pick(kind, choose(device, example, False, available), compiled,
                 "aten" if compiled_inference_runs_torch(device, dataclasses.replace(example, training=False)) else compiled)
            for kind, example in kinds(device)]
