"""What backend="auto" runs: the rule, per device and workload, stated once (and shown by explain()).

On a CPU the fused C++ kernels ("cpp") run where `python -m bench` measured them faster than torch's
own code (bench/RESULTS.md, CPU section): every GRU (torch's CPU GRU is a generic per-step path),
every packed LSTM (likewise), and padded LSTMs small enough that the per-step cost dominates; larger
padded LSTMs keep torch's oneDNN LSTM. On a GPU a kernel backend runs only once it has been measured
faster than cuDNN there (none has yet). Under torch.compile, which cannot trace torch's RNN code,
auto runs a traceable custom op instead: the cpp kernels on a CPU, the reference loop elsewhere; on a
CPU an inference the rule gives to oneDNN runs torch's code as an opaque op (fastrnn::torch_rnn_inference,
chosen in modules.py), since that op has no backward.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

CPP_DTYPES = (torch.float32, torch.float64)

# A padded LSTM runs on the cpp kernels up to this batch x hidden size; past it oneDNN's LSTM was as
# fast or faster (bench/RESULTS.md: at B=1, H=64 the kernels won 1.07-1.93x; from B=8 or H=256 on they lost
# in most rows, by up to 1.3x).
LSTM_CPP_MAX_BATCH_X_HIDDEN = 64

# auto's preference on a CUDA device, before torch's own code (cuDNN). A kernel backend joins this list
# only once the bench suite has measured it faster than cuDNN on a GPU; none has been timed on one yet.
CUDA_ORDER: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Workload:
    """What auto's choice depends on, for one forward."""

    cell: str  # "LSTM" or "GRU"
    dtype: torch.dtype  # the dtype the layer computes in
    batch: int
    hidden: int
    packed: bool


def _cpu_prefers_cpp(workload: Workload | None) -> bool:
    if workload is None:
        return True  # no shape to judge by (explain()): the typical small-model case
    if workload.dtype not in CPP_DTYPES:
        return False
    if workload.cell == "GRU" or workload.packed:
        return True
    return workload.batch * workload.hidden <= LSTM_CPP_MAX_BATCH_X_HIDDEN


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


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        order = ", ".join(CUDA_ORDER) or "none measured faster than cuDNN yet"
        return f"auto on cuda: the first available of [{order}], else aten (cuDNN)"
    if device.type == "cpu":
        return ("auto on cpu (float32/float64): cpp for every GRU and packed LSTM, and for padded LSTMs with "
                f"batch x hidden <= {LSTM_CPP_MAX_BATCH_X_HIDDEN}; aten (oneDNN) for larger padded LSTMs and other "
                "dtypes; under torch.compile cpp (reference for other dtypes), but torch's oneDNN LSTM, as an opaque op, "
                "for an inference the rule gives to aten")
    return f"auto on {device.type}: aten (torch's own code)"
