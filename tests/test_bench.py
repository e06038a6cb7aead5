"""The bench CLI (the README's main job) on the CPU: it runs, checks before it times, and reports."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch

from bench import cases, cli, implementations, load, measure, peak, peers, plot, report

TINY = ["--batch", "3", "--seq-len", "5", "--hidden", "8", "--min-seconds", "0.01", "--threads", "1"]


def test_quick_run_times_every_available_competitor(tmp_path):
    code = cli.main(TINY + ["--min-length-fraction", "0.4", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["commit"]
    rows = {(r["cell"], r["impl"], r["mode"]): r for r in data["rows"]}
    for cell in ("lstm", "gru"):
        for mode in ("forward", "train"):
            assert rows[(cell, "nn", mode)]["speedup_vs_nn"] == 1.0
            timed = rows[(cell, "fastrnn-reference", mode)]
            assert timed["status"] == "ok" and timed["ms"] > 0 and timed["speedup_vs_nn"] > 0
            assert timed["error"] <= 3 * timed["nn_error"] + 1e-5  # checked before timed
            assert rows[(cell, "cell-loop", mode)]["status"].startswith("skipped: a plain cell loop takes no PackedSequence")
            assert rows[(cell, "haste", mode)]["status"].startswith("skipped:")
            for compiled in ("cell-loop-compiled", "fastrnn-auto-compiled"):
                assert rows[(cell, compiled, mode)]["status"].startswith("skipped: left out of the quick preset")
    assert (tmp_path / "results.csv").read_text().startswith("case,impl,mode,status")


def test_compiled_competitors_are_checked_and_timed(tmp_path):
    impls = ["cell-loop", "cell-loop-compiled", "fastrnn-auto-compiled"]
    code = cli.main(TINY + ["--cells", "lstm", "--modes", "forward", "--impls", *impls, "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["impl"]: r["status"] for r in rows} == {"nn": "ok", **{impl: "ok" for impl in impls}}


class _WrongAnswer(implementations.Implementation):
    """A competitor that is fast because it skips the recurrence: must be shown as WRONG, not timed."""

    name = "wrong"

    def build(self, torch_module):
        class Skip(torch.nn.Module):
            def forward(self, x, hx=None):
                out, state = torch_module(x, hx)
                return out * 1.01, state
        return Skip()


def test_a_wrong_answer_is_reported_as_wrong_and_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "all_implementations", lambda: [implementations.TorchRNN(), _WrongAnswer()])
    code = cli.main(TINY + ["--cells", "gru", "--out", str(tmp_path)])
    assert code == 1
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    wrong = [r for r in rows if r["impl"] == "wrong"]
    assert wrong and all(r["status"].startswith("WRONG") and r["ms"] is None for r in wrong)


def test_list_names_every_competitor(capsys):
    assert cli.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for impl in implementations.all_implementations():
        assert impl.name in listed


def test_summary_tabulates_speed_ups_of_runs_side_by_side(tmp_path, capsys):
    from bench import summary

    code = cli.main(TINY + ["--cells", "gru", "--impls", "fastrnn-reference", "--out", str(tmp_path)])
    assert code == 0
    capsys.readouterr()
    results = tmp_path / "results.json"
    assert summary.main([str(results), str(results), "--impls", "fastrnn-reference"]) == 0
    printed = capsys.readouterr().out
    rows = {(r["impl"], r["mode"]): r for r in json.loads(results.read_text())["rows"]}
    for mode in ("forward", "train"):
        ours, base = rows[("fastrnn-reference", mode)], rows[("nn", mode)]
        line = next(line for line in printed.splitlines() if f"| {mode} |" in line)
        mark = "!" if ours["oversubscribed"] or base["oversubscribed"] else ""  # a busy machine's speed-up is marked
        assert line.count(f"{ours['ms']:.3f} ({ours['speedup_vs_nn']:.2f}x{mark})") == 2 and f"| {base['ms']:.3f} |" in line
    assert "python -m bench" in printed and "commit" in printed
    assert summary.main([str(tmp_path / "missing.json")]) == 2


def _row(case, impl, mode="forward", status="ok", ms=1.0, error=1e-7, **extra):
    timed = ms is not None
    return dict(case=case, cell="lstm", dtype="float32", batch=extra.pop("batch", 4), seq_len=8, hidden=16,
                input_size=16, layers=1, bidirectional=False, min_length_fraction=extra.pop("fraction", None),
                impl=impl, mode=mode, status=status, ms=ms, low_ms=ms and ms * 0.9, high_ms=ms and ms * 1.2,
                speedup_vs_nn=extra.pop("speedup", 1.0 if timed else None), us_per_step=ms and ms * 125,
                tokens_per_s=None, peak_mb=None, floor_ms=0.01, error=error if timed else None, nn_error=error)


def test_table_lists_each_skip_reason_once_explains_speedup_and_shows_errors():
    cases = ["lstm float32 B=4 T=8 H=16 I=16", "lstm float32 B=64 T=256 H=1024 I=1024 varlen>=0.25T"]
    rows = []
    for case in cases:
        rows += [_row(case, "nn", error=3.1e-7), _row(case, "fastrnn-triton-persistent", ms=4.0, speedup=0.25, error=4.2e-7),
                 _row(case, "fastrnn-cuda", status="skipped: no GPU here", ms=None),
                 _row(case, "haste", status="skipped: no GPU here", ms=None)]
    rows.append(_row(cases[0], "cell-loop", status="skipped: no PackedSequence", ms=None))
    text = report.table(rows)
    lines = text.splitlines()
    assert not any(line.startswith("lstm") and "skipped" in line for line in lines)  # none in the table
    assert text.count("no GPU here") == 1 and "fastrnn-cuda, haste: no GPU here" in text
    assert "cell-loop (in 1 of 2 cases): no PackedSequence" in text
    assert "speed-up" in lines[0] and "above 1 is faster than nn" in text and "0.25 = 4x slower" in text
    assert "3.1e-07" in text and "4.2e-07" in text
    timed = [line for line in lines if line.startswith("lstm")]
    assert len(timed) == 4 and len({line.index(" forward ") for line in timed}) == 1
    assert len({len(line) for line in timed}) == 1  # every column aligned, long varlen labels included


def test_environment_names_cuda_only_for_a_cuda_run(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert cli.environment(torch.device("cpu"), [])["cuda"] is None


def test_list_is_aligned(capsys):
    assert cli.main(["--list"]) == 0
    names = [impl.name for impl in implementations.all_implementations()]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split(" ")[0] in names]
    assert len(lines) == len(names)
    starts = {len(line) - len(line[len(line.split(" ")[0]):].lstrip()) for line in lines}
    assert len(starts) == 1  # every description starts in the same column


def test_plot_has_a_panel_per_timed_shape_and_mode_names_the_run_and_lists_what_is_not_drawn(tmp_path):
    case = "lstm float32 B=4 T=8 H=16 I=16"
    rows = [_row(case, impl, mode, batch=batch) for impl in ("nn", "fastrnn-reference")
            for mode in ("forward", "train") for batch in (4, 16)]
    rows += [_row(case, "fastrnn-cuda", mode, status="skipped: no GPU here", ms=None) for mode in ("forward", "train")]
    rows += [_row(case, "wrong-one", "forward", status="WRONG: error 1e-1 vs nn's 1e-7", ms=None),
             _row(case, "gru-only", "forward", status="ok", ms=None)]  # timed in no mode: no panel of its own
    panels, columns = plot.panel_grid(rows)
    assert len(panels) == 2 and columns == 2  # forward and train, side by side: no empty panel
    assert all(set(impls) == {"nn", "fastrnn-reference"} for impls in panels.values())
    notes = plot.not_drawn(rows)
    assert any("fastrnn-cuda" in note and "no GPU here" in note for note in notes)
    assert any("wrong-one" in note and "WRONG" in note for note in notes)
    environment = dict(device="CPU (x86_64, 2 threads)", torch="2.13.0", triton="3.9.0", commit="abc1234", date="2026-01-01")
    heading = plot.title(environment)
    assert all(value in heading for value in environment.values()) and "CUDA" not in heading
    assert plot.plot_time_vs_batch(tmp_path / "plot.png", rows, environment).stat().st_size > 10_000


def test_timing_rounds_interleave_the_competitors_and_pool_their_samples(tmp_path, monkeypatch):
    from bench import measure

    calls = []
    fake_ms = {"nn": 2.0, "fastrnn-reference": 1.0}

    def fake_sample_times(fn, device, min_seconds):
        if id(fn) not in fns_by_id:
            return measure.Samples([1.0])  # the floor's own measurements
        name = fns_by_id[id(fn)]
        calls.append((name, min_seconds))
        return measure.Samples([fake_ms[name] * (1 + len(calls) / 100)])

    fns_by_id = {}
    real_forward_fn = measure.forward_fn

    def forward_fn(module, x):
        fn = real_forward_fn(module, x)
        fns_by_id[id(fn)] = "nn" if isinstance(module, torch.nn.GRU) else "fastrnn-reference"
        return fn

    monkeypatch.setattr(measure, "sample_times", fake_sample_times)
    monkeypatch.setattr(measure, "forward_fn", forward_fn)
    code = cli.main(TINY + ["--cells", "gru", "--modes", "forward", "--impls", "fastrnn-reference", "--rounds", "3",
                            "--min-seconds", "0.3", "--out", str(tmp_path)])
    assert code == 0
    assert [name for name, _ in calls] == ["nn", "fastrnn-reference", "fastrnn-reference", "nn", "nn", "fastrnn-reference"]
    assert all(abs(seconds - 0.1) < 1e-12 for _, seconds in calls)  # min-seconds shared out over the rounds
    rows = {r["impl"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["nn"]["ms"] == pytest.approx(2.0 * 1.04)  # the median of its three rounds (calls 1, 4, 5)
    assert rows["fastrnn-reference"]["ms"] == pytest.approx(1.0 * 1.03)  # calls 2, 3, 6
    assert rows["fastrnn-reference"]["speedup_vs_nn"] == pytest.approx(2.08 / 1.03)
    assert cli.main(TINY + ["--rounds", "0"]) == 2


def test_help_explains_every_option_with_its_default_and_every_preset(capsys):
    parser = cli.build_parser()
    flags = {"--help", "--no-check", "--list"}  # switches: off unless given
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
        if not flags & set(action.option_strings):
            assert "default" in action.help, f"{action.option_strings} does not say its default"
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse rewraps the lines
    for preset, axes in cases.PRESETS.items():
        described = " ".join(cases.describe_preset(preset).split())
        assert f"{preset} {described}" in shown
        for axis, values in axes.items():  # each preset's axes, as the options that set them
            assert f"{cases.AXIS_OPTIONS[axis]} {' '.join(map(str, values))}" in described
        assert f"({len(cases.grid(**axes))} cases)" in described
    assert "leaves out cell-loop-compiled, fastrnn-auto-compiled" in shown


def test_the_cli_loads_no_compiler_machinery_before_it_times():
    # torch.utils.cpp_extension warns "No CUDA runtime is found" at import on a machine with nvcc and no GPU.
    probe = ("import sys, bench.cli; sys.exit('torch.utils.cpp_extension' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, f"importing bench.cli imported torch.utils.cpp_extension\n{done.stderr}"
    assert "No CUDA runtime is found" not in done.stderr


# --- the inference runtimes ---------------------------------------------------------------------

PEERS = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino"), "openvino-bf16": ("onnx", "openvino")}


def test_runtimes_are_checked_against_float64_and_timed_in_inference_or_skipped_with_the_reason(tmp_path):
    code = cli.main(TINY + ["--impls", *PEERS, "--out", str(tmp_path)])
    assert code == 0
    rows = {(r["cell"], r["impl"], r["mode"]): r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    for cell in ("lstm", "gru"):
        for name, packages in PEERS.items():
            forward, train = rows[(cell, name, "forward")], rows[(cell, name, "train")]
            missing = [package for package in packages if importlib.util.find_spec(package) is None]
            if missing:
                assert forward["status"] == train["status"] == f"skipped: {', '.join(missing)} not installed (pip install 'fastrnn[peers]')"
                continue
            if forward["status"].startswith("skipped: OpenVINO's default CPU precision here is"):
                assert name == "openvino-bf16"  # no bf16 on this CPU: the row would repeat openvino's
                continue
            assert forward["status"] == "ok" and forward["ms"] > 0 and forward["speedup_vs_nn"] > 0
            assert train["status"] == f"skipped: {peers.INFERENCE_ONLY}" and train["ms"] is None
            # checked before timed, on outputs and final states; bf16 against nn's own error in bfloat16
            floor = 1e-2 if name == "openvino-bf16" else 1e-5
            assert 0 < forward["error"] <= 3 * forward["nn_error"] + floor
            if name == "openvino-bf16":
                assert forward["nn_error"] > 1e-4  # the bar is a bfloat16 one, not float32's
    assert report.table(list(rows.values())).count(peers.INFERENCE_ONLY) == 1  # said once, under the table


def test_a_runtime_given_a_wrong_model_is_reported_as_wrong(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'fastrnn[peers]')")
    real_export = peers.export_onnx

    def export_perturbed(torch_module, example):
        wrong = type(torch_module)(torch_module.input_size, torch_module.hidden_size)
        with torch.no_grad():
            for mine, theirs in zip(wrong.parameters(), torch_module.parameters()):
                mine.copy_(theirs * 1.01)
        return real_export(wrong, example)

    monkeypatch.setattr(peers, "export_onnx", export_perturbed)
    code = cli.main(TINY + ["--cells", "gru", "--modes", "forward", "--impls", "onnxruntime", "--out", str(tmp_path)])
    assert code == 1
    row = next(r for r in json.loads((tmp_path / "results.json").read_text())["rows"] if r["impl"] == "onnxruntime")
    assert row["status"].startswith("WRONG") and row["ms"] is None


def test_runtimes_skip_what_they_cannot_run_with_the_reason(monkeypatch):
    from bench.cases import Case

    real_find_spec = importlib.util.find_spec
    with monkeypatch.context() as patch:  # as on a machine without the peers extra
        patch.setattr(importlib.util, "find_spec", lambda name: None if name == "openvino" else real_find_spec(name))
        reason = peers.OpenVINO().unavailable_reason(Case("lstm", "float32", 2, 3, 4, 4), torch.device("cpu"))
    assert reason == "openvino not installed (pip install 'fastrnn[peers]')"
    runtime = peers.OnnxRuntime()
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnx or onnxruntime not installed: every case is skipped for that (tested above)")
    cpu = torch.device("cpu")
    assert runtime.unavailable_reason(Case("lstm", "float32", 2, 3, 4, 4), cpu) is None
    assert "float32" in runtime.unavailable_reason(Case("lstm", "bfloat16", 2, 3, 4, 4), cpu)
    assert "PackedSequence" in runtime.unavailable_reason(Case("gru", "float32", 2, 3, 4, 4, min_length_fraction=0.5), cpu)
    assert "CPU" in runtime.unavailable_reason(Case("gru", "float32", 2, 3, 4, 4), torch.device("cuda"))


# --- the peak, the floor and each row's share of the peak ----------------------------------------


def test_the_header_reports_a_measured_cpu_peak_in_gflops(tmp_path, capsys):
    assert cli.main(TINY + ["--cells", "gru", "--modes", "forward", "--impls", "fastrnn-reference", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("peak (float32 rows)"))
    per_thread = float(re.search(r"([0-9.]+) GFLOP/s per thread", line).group(1))
    assert per_thread > 1.0 and "TFLOP" not in line  # measured, non-zero, in CPU units
    environment = json.loads((tmp_path / "results.json").read_text())["environment"]
    assert environment["peak_gflops"]["float32"]["gflops"] == pytest.approx(per_thread, rel=1e-3)


def test_flop_counts_include_the_input_projection_and_count_only_real_tokens():
    from bench.cases import Case

    lstm, gru = Case("lstm", "float32", 16, 32, 64, 48), Case("gru", "float32", 16, 32, 64, 48)
    assert peak.case_flops(lstm, "forward") == 2 * 4 * 64 * (48 + 64) * 16 * 32
    assert peak.case_flops(gru, "forward") == 2 * 3 * 64 * (48 + 64) * 16 * 32
    assert peak.case_flops(gru, "train") == 3 * peak.case_flops(gru, "forward")
    assert peak.case_flops(gru, "forward", tokens=100) == 2 * 3 * 64 * (48 + 64) * 100
    two_layers = Case("lstm", "float32", 1, 1, 8, 4, layers=2, bidirectional=True)
    assert peak.case_flops(two_layers, "forward") == 2 * 2 * 4 * 8 * ((4 + 8) + (16 + 8))


def test_no_row_is_faster_than_its_floor(tmp_path):
    # The quick preset's shape where the old floor (a matmul timed under load) sat above fastrnn-cpp's time.
    code = cli.main(["--batch", "16", "--seq-len", "32", "--hidden", "64", "--min-seconds", "0.05", "--threads", "1",
                     "--impls", "fastrnn-cpp", "fastrnn-auto", "onnxruntime", "openvino-bf16", "--out", str(tmp_path)])
    assert code == 0
    timed = [r for r in json.loads((tmp_path / "results.json").read_text())["rows"] if r["ms"] is not None]
    assert len(timed) >= 10
    for row in timed:
        assert row["floor_ms"] > 0 and row["ms"] >= row["floor_ms"], row
        assert 0 < row["pct_peak"] <= 100 and row["gflops"] == pytest.approx(
            peak.case_flops(_case_of(row), row["mode"]) / (row["ms"] * 1e6))


def _case_of(row):
    from bench.cases import Case

    return Case(row["cell"], row["dtype"], row["batch"], row["seq_len"], row["hidden"], row["input_size"], row["layers"],
                row["bidirectional"], row["min_length_fraction"])


# --- CPU time and the oversubscription flag -------------------------------------------------------


def test_cpu_time_is_the_calling_threads_and_a_waiting_call_is_flagged():
    busy = measure.sample_times(lambda: sum(range(20000)), torch.device("cpu"), 0.02)
    assert len(busy.cpu_ms) == len(busy.times_ms) >= measure.MIN_BLOCKS and all(c > 0 for c in busy.cpu_ms)
    waiting = measure.Timing.of(measure.sample_times(lambda: time.sleep(0.002), torch.device("cpu"), 0.02))
    assert waiting.median_ms >= 2.0 and waiting.cpu_ms < 0.5 * waiting.median_ms  # asleep: wall, but no CPU
    assert "CPU time" in load.oversubscribed(waiting.median_ms, waiting.low_ms, waiting.high_ms, waiting.cpu_ms)


def test_oversubscription_flag_on_synthetic_timings():
    assert load.oversubscribed(1.00, 0.95, 1.05, 0.98) is None  # tight, and the thread computed all along
    assert load.oversubscribed(1.00, 0.95, 1.05) is None  # more threads: no CPU time to compare
    assert "spread" in load.oversubscribed(0.6, 0.55, 237.0, 0.55)  # the quick run's p20-p80 of 0.55-237 ms
    assert "spread" in load.oversubscribed(1.0, 0.80, 1.10)
    assert "1.50x" in load.oversubscribed(1.5, 1.45, 1.55, 1.0)  # a third of the wall time off the CPU
    assert load.oversubscribed(1.09, 1.05, 1.10, 1.0) is None  # within the limits


def test_a_speedup_from_an_oversubscribed_row_or_nn_row_is_marked():
    case = "gru float32 B=4 T=8 H=16 I=16"
    busy = _row(case, "fastrnn-auto", ms=0.6, speedup=212.88)
    busy.update(low_ms=0.55, high_ms=237.0, oversubscribed=load.oversubscribed(0.6, 0.55, 237.0))
    quiet = _row(case, "fastrnn-cpp", ms=0.6, speedup=8.0)
    rows = [_row(case, "nn", ms=4.8), busy, quiet]
    lines = {line.split()[6]: line for line in report.table(rows).splitlines() if line.startswith("gru")}
    assert "0.600!" in lines["fastrnn-auto"] and "212.88!" in lines["fastrnn-auto"]
    assert "!" not in lines["fastrnn-cpp"] and "8.00" in lines["fastrnn-cpp"]
    rows[0]["oversubscribed"] = "p20-p80 spread 40% of the median"  # nn's own time was disturbed: every ratio is
    lines = {line.split()[6]: line for line in report.table(rows).splitlines() if line.startswith("gru")}
    assert "8.00!" in lines["fastrnn-cpp"] and "0.600 " in lines["fastrnn-cpp"]
    assert "oversubscribed" in report.table(rows)  # the legend says what the mark means


def test_projection_gemms_are_timed_side_by_side(capsys):
    from bench import projection as gemms
    from fastrnn import _ext

    gemms.main(["--rounds", "1", "--shapes", "7x13x29", "40x3x5"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("threads 1; projection.choice() = ") and len(lines) == 3
    for line, product in zip(lines[1:], ("7 x 13 x 29", "40 x 3 x 5")):
        assert line.startswith(product) and "matmul" in line and "onednn" in line
        assert ("own/matmul" in line) == (_ext.extension() is not None)
    with pytest.raises(SystemExit):
        gemms.main(["--shapes", "7x13"])


def test_one_step_calls_are_timed_against_nn_s_cell_and_layer(capsys):
    from bench import one_step

    one_step.main(["--cells", "gru", "lstm", "--hidden", "5", "--batch", "2", "--rounds", "1", "--calls", "50"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("torch ") and len(lines) == 1 + 2 * 3
    for line, (cell, mode) in zip(lines[1:], [(c, m) for c in ("gru", "lstm") for m in ("inference", "forward", "train")]):
        assert line.startswith(f"{cell} H 5 B 2 {mode}: fastrnn ") and "nn-cell" in line and "nn-layer" in line
        assert float(line.rsplit(" ", 1)[1]) > 0
