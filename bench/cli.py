"""python -m bench: time fastrnn against torch's nn.LSTM/nn.GRU (cuDNN on GPU) and the other ways to
run an RNN, in one process, on this machine's device; every competitor is checked against float64
before its time is reported.

    python -m bench                          # the quick preset: under half a minute, on whatever device is present
    python -m bench --preset paper           # B in {1,16,64,256}, H in {256,512,1024}, T in {256,1024}, 3 dtypes
    python -m bench --preset varlen          # PackedSequence batches with lengths drawn from [T/4, T]
    python -m bench --cells lstm --dtypes bfloat16 --batch 1 64 --hidden 1024 --seq-len 256 --modes train
    python -m bench --list                   # the competitors, and why any cannot run here

Writes results.json, results.csv and time_vs_batch.png to --out (default results/bench-<date>-<time>).
Exits 1 when a competitor gave a wrong answer or failed, so a wrong fast answer is never just a number.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
from pathlib import Path

import torch

import fastrnn

from . import load, measure, peak, report
from .cases import ALL_CELLS, DTYPES, PRESETS, Case, describe_preset, grid
from .implementations import Implementation, all_implementations
from .peers import INFERENCE_ONLY

MODES = ("forward", "train")

# Competitors a preset leaves out unless --impls names them, and why (reported as skipped).
_COMPILE_WARM_UP = ("left out of the {preset} preset: its torch.compile warm-up (30 s and more on a 2-core CPU) "
                    "takes longer than the rest of the preset; name it in --impls to run it")
LEFT_OUT = {preset: {name: _COMPILE_WARM_UP.format(preset=preset) for name in ("cell-loop-compiled", "fastrnn-auto-compiled")}
            for preset in ("quick", "cpu")}


def _presets_help() -> str:
    lines = ["presets (an axis option given on the command line replaces that axis of the preset; axes a preset does",
             "not set: input size = hidden size, 1 layer, one direction, padded batches):"]
    width = max(map(len, PRESETS))
    for name in PRESETS:
        lines.append(f"  {name:<{width}}  {describe_preset(name)}")
        if name in LEFT_OUT:
            lines.append(f"  {'':<{width}}  leaves out {', '.join(LEFT_OUT[name])} (their torch.compile warm-up); "
                         "--impls NAME runs one")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_presets_help())
    preset_axis = "default: the preset's"
    parser.add_argument("--preset", choices=list(PRESETS), default="quick",
                        help="the grid of cases to time, described below (default: %(default)s)")
    parser.add_argument("--cells", nargs="+", choices=list(ALL_CELLS),
                        help=f"layers (lstm, gru, rnn_tanh, rnn_relu) and decoder loops of T cell calls (lstmcell, "
                             f"grucell, rnncell) ({preset_axis})")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), help=f"dtypes to compute in ({preset_axis})")
    parser.add_argument("--batch", nargs="+", type=int, metavar="B", help=f"batch sizes ({preset_axis})")
    parser.add_argument("--seq-len", nargs="+", type=int, metavar="T", help=f"sequence lengths ({preset_axis})")
    parser.add_argument("--hidden", nargs="+", type=int, metavar="H", help=f"hidden sizes ({preset_axis})")
    parser.add_argument("--input-size", nargs="+", type=int, metavar="I",
                        help="input sizes (default: equal to the hidden size)")
    parser.add_argument("--layers", nargs="+", type=int, metavar="L", help="numbers of stacked layers (default: 1)")
    parser.add_argument("--bidirectional", nargs="+", type=int, choices=[0, 1],
                        help="0 = one direction, 1 = both (default: 0)")
    parser.add_argument("--min-length-fraction", nargs="+", type=float, metavar="F",
                        help="variable-length batches (PackedSequence): lengths drawn from [F*T, T] "
                             "(default: the preset's; none = padded batches of equal length)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help=f"forward = inference under no_grad; train = forward + backward "
                             f"(default: {' '.join(MODES)})")
    parser.add_argument("--impls", nargs="+", metavar="NAME",
                        help="competitors to run, besides nn, the base of every ratio (default: all the preset "
                             "runs; names and descriptions: --list)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")
    parser.add_argument("--min-seconds", type=float, default=0.3, metavar="S",
                        help="time spent timing each competitor per case and mode (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds per case, each competitor min-seconds/rounds per round "
                             "(the order rotated): a drifting machine then biases no ratio (default: %(default)s)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the check against float64 before timing (not recommended: a wrong answer is "
                             "then timed like a right one)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help=f"CPU threads for torch (default: torch's, {torch.get_num_threads()} here)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where results.json, results.csv and the plot go (default: results/bench-<date>-<time>)")
    parser.add_argument("--list", action="store_true",
                        help="list the competitors and what fastrnn's backends do here (fastrnn.explain()), and exit")
    return parser


def parse_args(argv):
    return build_parser().parse_args(argv)


def select_cases(args) -> list[Case]:
    axes = dict(PRESETS[args.preset])
    overrides = dict(cells=args.cells, dtypes=args.dtypes, batch=args.batch, seq_len=args.seq_len, hidden=args.hidden,
                     input_size=args.input_size, layers=args.layers, min_length_fraction=args.min_length_fraction,
                     bidirectional=None if args.bidirectional is None else [bool(b) for b in args.bidirectional])
    axes.update({k: v for k, v in overrides.items() if v is not None})
    return grid(**axes)


def environment(device: torch.device, argv: list[str]) -> dict:
    def command_output(*command):
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    commit = command_output("git", "rev-parse", "--short", "HEAD") or "unknown"
    if command_output("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " (+uncommitted changes)"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "driver": command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,  # torch's CUDA build says nothing of a CPU run
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "triton": triton_version,
        "fastrnn": fastrnn.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(argv),
    }
    if device.type == "cuda":
        info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    return info


def run_case(case: Case, impls, device, modes, min_seconds: float, checking: bool, machine_peak: peak.Peak | None,
             rounds: int = 1) -> list[dict]:
    """All competitors on one case: each is built and checked, then all are timed in `rounds` interleaved
    rounds (each its share of min_seconds per round, the order rotated), so that a machine whose speed
    drifts over seconds (a shared VM, a clock settling) biases no competitor's ratio to nn."""
    torch.manual_seed(0)
    torch_rnn = measure.torch_module(case, device)
    x = measure.make_input(case, device)
    base = dict(case=case.label(), cell=case.cell, dtype=case.dtype, batch=case.batch, seq_len=case.seq_len,
                hidden=case.hidden, input_size=case.input_size, layers=case.layers, bidirectional=case.bidirectional,
                min_length_fraction=case.min_length_fraction)
    bar = None  # the float64 baseline, computed for the first competitor that is checked
    status, errors, fns = {}, {}, {}
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    tokens = int(measure.input_tensor(x).shape[0]) if case.min_length_fraction is not None else None  # packed: real ones
    for impl in impls:
        status[impl.name], errors[impl.name] = "ok", (None, None)
        reason = impl.unavailable_reason(case, device)
        try:
            if reason is not None:
                status[impl.name] = f"skipped: {reason}"
                continue
            module = impl.build(torch_rnn)
            if checking:
                bar = bar or measure.baseline(torch_rnn, x)
                if impl.name == "nn":
                    errors[impl.name] = (bar.torch_error, bar.torch_error)  # nn's own error: the bar the others meet
                else:
                    with impl.scope():
                        verdict = (measure.check_forward(module, x, bar, torch_rnn, impl.bar_dtype) if impl.inference_only
                                   else measure.check(module, x, bar))
                    errors[impl.name] = (verdict.error, verdict.torch_error)
                    if not verdict.ok:
                        status[impl.name] = f"WRONG: error {verdict.error:.1e} vs nn's {verdict.torch_error:.1e}"
                        continue
            fns[impl.name] = {mode: measure.forward_fn(module, x) if mode == "forward" else measure.train_step_fn(module, x)
                              for mode in modes if mode == "forward" or not impl.inference_only}
        except Exception as failure:  # a competitor that crashes is reported, not fatal to the run
            status[impl.name] = _failed(failure)

    samples: dict[tuple[str, str], measure.Samples] = {}
    by_name = {impl.name: impl for impl in impls}
    for round_index in range(rounds):
        names = list(fns)
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if status[name] != "ok":
                continue
            try:
                for mode in fns[name]:
                    with by_name[name].scope():
                        timed = measure.sample_times(fns[name][mode], device, min_seconds / rounds)
                    samples.setdefault((name, mode), measure.Samples([])).extend(timed)
            except Exception as failure:
                status[name] = _failed(failure)

    nn_ms = {mode: measure.Timing.of(samples[("nn", mode)]).median_ms for mode in modes
             if ("nn", mode) in samples and status.get("nn") == "ok"}
    rows = []
    for impl in impls:
        error, nn_error = errors[impl.name]
        for mode in modes:
            flops = peak.case_flops(case, mode, tokens)
            row_status = status[impl.name]
            if impl.inference_only and mode != "forward" and not row_status.startswith("skipped"):
                row_status = f"skipped: {INFERENCE_ONLY}"
            row = dict(base, impl=impl.name, mode=mode, status=row_status, error=error, nn_error=nn_error,
                       ms=None, low_ms=None, high_ms=None, speedup_vs_nn=None, us_per_step=None, tokens_per_s=None,
                       peak_mb=None, threads=threads, cpu_ms=None, gflops=None, pct_peak=None,
                       floor_ms=peak.floor_ms(flops, machine_peak, threads), oversubscribed=None)
            if row_status == "ok" and (impl.name, mode) in samples:
                timing = measure.Timing.of(samples[(impl.name, mode)])
                cpu_ms = timing.cpu_ms if threads == 1 and device.type == "cpu" else None  # one thread: all its work
                row.update(ms=timing.median_ms, low_ms=timing.low_ms, high_ms=timing.high_ms,
                           us_per_step=timing.median_ms * 1e3 / case.seq_len,
                           tokens_per_s=case.batch * case.seq_len / (timing.median_ms / 1e3),
                           peak_mb=timing.peak_mb, cpu_ms=cpu_ms, gflops=flops / (timing.median_ms * 1e6),
                           pct_peak=None if row["floor_ms"] is None else 100 * row["floor_ms"] / timing.median_ms,
                           oversubscribed=load.oversubscribed(timing.median_ms, timing.low_ms, timing.high_ms, cpu_ms),
                           speedup_vs_nn=nn_ms[mode] / timing.median_ms if mode in nn_ms else None)
            rows.append(row)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _failed(failure: Exception) -> str:
    return f"FAILED: {type(failure).__name__}: {str(failure).splitlines()[0][:160]}"


class _LeftOut(Implementation):
    """A competitor the preset does not run: listed as skipped, with the reason."""

    def __init__(self, impl: Implementation, reason: str):
        self.name, self.description, self.reason = impl.name, impl.description, reason

    def unavailable_reason(self, case, device):
        return self.reason


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.rounds < 1:
        print(f"--rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = all_implementations()
    if args.list:
        width = max(len(impl.name) for impl in impls)
        for impl in impls:
            print(f"{impl.name:<{width}}  {impl.description}")
        print()
        print(fastrnn.explain(device))
        return 0
    if args.impls:
        unknown = set(args.impls) - {impl.name for impl in impls}
        if unknown:
            print(f"unknown implementation(s) {sorted(unknown)}; see --list", file=sys.stderr)
            return 2
        impls = [impl for impl in impls if impl.name == "nn" or impl.name in args.impls]  # nn: the ratio's base
    else:
        left_out = LEFT_OUT.get(args.preset, {})
        impls = [_LeftOut(impl, left_out[impl.name]) if impl.name in left_out else impl for impl in impls]

    cases = select_cases(args)
    env = environment(device, argv)
    print("\n".join(f"{key:>8}: {value}" for key, value in env.items() if value is not None))
    print(fastrnn.explain(device))
    peaks = {}
    for dtype in sorted({case.dtype for case in cases}):
        peaks[dtype] = peak.measure_peak(device, DTYPES[dtype])
        threads = torch.get_num_threads()
        print(peaks[dtype].header(dtype, threads) if peaks[dtype] else f"peak ({dtype} rows): not measured ({peak.NO_PEAK})")
    env["peak_gflops"] = {dtype: None if p is None else dict(gflops=p.gflops, per_thread=p.per_thread, source=p.source)
                          for dtype, p in peaks.items()}

    from tqdm import tqdm

    rows = []
    for case in tqdm(cases, desc="cases", unit="case", file=sys.stderr):
        rows += run_case(case, impls, device, args.modes, args.min_seconds, not args.no_check, peaks[case.dtype],
                         args.rounds)
    print(report.table(rows))
    out_dir = args.out or Path("results") / datetime.datetime.now().strftime("bench-%Y%m%d-%H%M%S")
    for path in report.write_all(out_dir, env, rows):
        print(f"wrote {path}")
    bad = [row for row in rows if row["status"].startswith(("WRONG", "FAILED"))]
    if bad:
        print(f"{len(bad)} row(s) WRONG or FAILED", file=sys.stderr)
    return 1 if bad else 0
