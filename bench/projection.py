"""The input projection's three GEMMs on the CPU, side by side: the cpp kernels' own (W's panels kept, as a layer
keeps them), torch's matmul and oneDNN's linear, on the products `fastrnn.projection.linear` chooses among.

    python -m bench.projection [--threads N] [--rounds R] [--shapes ROWSxDEPTHxCOLUMNS ...]

Prints, per (rows x depth x columns) product, each GEMM's best round (the median call of the round, thread CPU
time on 1 thread, wall time on more) and the own kernel's time over matmul's; the rounds are interleaved, so a
machine whose speed drifts biases no ratio. Where the cpp kernels are not built, their column is missing."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fastrnn import _ext, projection

SHAPES = [(128, 64, 256), (128, 64, 192), (128, 256, 1024), (128, 512, 2048), (1024, 64, 256), (1024, 256, 1024),
          (4096, 64, 256), (4096, 256, 1024), (1024, 512, 2048), (4096, 512, 2048)]


def _median_call_us(fn, calls: int, clock) -> float:
    times = []
    for _ in range(calls):
        start = clock()
        fn()
        times.append(clock() - start)
    return sorted(times)[len(times) // 2] / 1e3


def _shape(text: str) -> tuple[int, int, int]:
    try:
        rows, depth, columns = (int(n) for n in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a product is ROWSxDEPTHxCOLUMNS, e.g. 128x64x256; got {text!r}") from None
    return rows, depth, columns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", type=_shape, nargs="+", default=SHAPES)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.thread_time_ns if args.threads == 1 else time.perf_counter_ns
    kernels = _ext.extension()
    print(f"threads {args.threads}; projection.choice() = {projection.choice()!r}; own kernel up to "
          f"{projection.own_max_work()} multiply-adds; times in us, best of {args.rounds} interleaved rounds")
    for rows, depth, columns in args.shapes:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(rows, depth, generator=gen), torch.randn(columns, depth, generator=gen),
                   torch.randn(columns, generator=gen))
        gemms = {"matmul": lambda: F.linear(x, w, b), "onednn": lambda: projection._onednn_linear(x, w, b)}
        if kernels is not None:
            panels = kernels.CpuWeightPanels()
            gemms["own"] = lambda: kernels.linear_cpu(x, w, b, None, panels)
            gemms["own"]()  # packs W once, as a layer's first call does
        work = rows * depth * columns
        calls = max(3, min(200, int(3e8 / work)))
        best = dict.fromkeys(gemms, float("inf"))
        for _ in range(args.rounds):
            for name, fn in gemms.items():
                best[name] = min(best[name], _median_call_us(fn, calls, clock))
        line = "  ".join(f"{name} {us:.1f} ({2 * work / us / 1e3:.0f} GFLOP/s)" for name, us in best.items())
        ratio = f"  own/matmul {best['own'] / best['matmul']:.2f}" if "own" in best else ""
        print(f"{rows} x {depth} x {columns} (2^{work.bit_length() - 1}): {line}{ratio}")


if __name__ == "__main__":
    main()
