"""One-step calls (T = 1, as a streaming or decoding loop makes them) on the CPU: a fastrnn layer called one step
at a time against nn's cell (issue 21's target: no slower than nn.LSTMCell / nn.GRUCell) and nn's layer.

    python -m bench.one_step [--cells lstm gru] [--hidden H ...] [--batch B ...] [--rounds R]

Per (cell, hidden, batch), three modes: `inference` (one call under torch.no_grad), `forward` (one call with the
weights requiring gradients, nothing differentiated) and `train` (a loop of 16 calls, the sum of their outputs
differentiated; per step). Each competitor's best round of a tight loop, in thread CPU time on 1 thread (which
time-slicing on a shared machine does not inflate), the rounds interleaved; `nn-cell / fastrnn` is the speed-up
over nn's cell."""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fastrnn

TRAIN_STEPS = 16
LAYERS = {"lstm": (fastrnn.LSTM, nn.LSTM, nn.LSTMCell), "gru": (fastrnn.GRU, nn.GRU, nn.GRUCell),
          "rnn_tanh": (fastrnn.RNN, nn.RNN, nn.RNNCell)}


def _competitors(cell: str, hidden: int, batch: int, mode: str):
    ours_type, layer_type, cell_type = LAYERS[cell]
    torch.manual_seed(0)
    modules = {"fastrnn": ours_type(hidden, hidden), "nn-cell": cell_type(hidden, hidden),
               "nn-layer": layer_type(hidden, hidden)}
    two = cell == "lstm"
    steps = torch.randn(TRAIN_STEPS if mode == "train" else 1, 1, batch, hidden)
    zeros = torch.zeros(1, batch, hidden)

    def one_call(name):
        module = modules[name]
        if name == "nn-cell":
            x, state = steps[0, 0], (zeros[0], zeros[0]) if two else zeros[0]
            return lambda: module(x, state)
        x, state = steps[0], (zeros, zeros) if two else zeros
        return lambda: module(x, state)

    def loop(name):
        module, is_cell = modules[name], name == "nn-cell"

        def run():
            state, loss = None, 0
            for x in steps:
                if is_cell:
                    state = module(x[0], state)
                    y = state[0] if two else state
                else:
                    y, state = module(x, state)
                loss = loss + y.sum()
            loss.backward()
        return run

    return {name: (loop(name) if mode == "train" else one_call(name)) for name in modules}


def _best_us(fn, calls: int, rounds_done: float) -> float:
    for _ in range(max(1, calls // 10)):
        fn()
    start = time.thread_time_ns()
    for _ in range(calls):
        fn()
    return min(rounds_done, (time.thread_time_ns() - start) / calls / 1e3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", choices=sorted(LAYERS), default=["lstm", "gru"])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", choices=["inference", "forward", "train"],
                        default=["inference", "forward", "train"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (a train round: calls / 50 loops)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; us per call (train: per step), best of {args.rounds} interleaved "
          "rounds, thread CPU time")
    for cell in args.cells:
        for hidden in args.hidden:
            for batch in args.batch:
                for mode in args.modes:
                    competitors = _competitors(cell, hidden, batch, mode)
                    calls = max(1, args.calls // 50) if mode == "train" else args.calls
                    best = dict.fromkeys(competitors, float("inf"))
                    with torch.no_grad() if mode == "inference" else torch.enable_grad():
                        for _ in range(args.rounds):
                            for name, fn in competitors.items():
                                best[name] = _best_us(fn, calls, best[name])
                    scale = TRAIN_STEPS if mode == "train" else 1
                    line = "  ".join(f"{name} {us / scale:.1f}" for name, us in best.items())
                    print(f"{cell} H {hidden} B {batch} {mode}: {line}  nn-cell / fastrnn "
                          f"{best['nn-cell'] / best['fastrnn']:.2f}")


if __name__ == "__main__":
    main()
