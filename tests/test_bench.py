"""The bench CLI (the README's main job) on the CPU: it runs, checks before it times, and reports."""

from __future__ import annotations

import json

import torch

from bench import cli, implementations

TINY = ["--batch", "3", "--seq-len", "5", "--hidden", "8", "--min-seconds", "0.01", "--threads", "1"]


def test_quick_run_times_every_available_competitor(tmp_path):
    code = cli.main(TINY + ["--min-length-fraction", "0.4", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["commit"]
    rows = {(r["cell"], r["impl"], r["mode"]): r for r in data["rows"]}
    for cell in ("lstm", "gru"):
        for mode in ("forward", "train"):
            assert rows[(cell, "nn", mode)]["x_nn"] == 1.0
            timed = rows[(cell, "fastrnn-reference", mode)]
            assert timed["status"] == "ok" and timed["ms"] > 0 and timed["x_nn"] > 0
            assert timed["error"] <= 3 * timed["nn_error"] + 1e-5  # checked before timed
            assert rows[(cell, "cell-loop", mode)]["status"].startswith("skipped: a plain cell loop takes no PackedSequence")
            assert rows[(cell, "haste", mode)]["status"].startswith("skipped:")
    assert (tmp_path / "results.csv").read_text().startswith("case,impl,mode,status")


def test_cell_loop_and_its_compiled_form_are_checked_and_timed(tmp_path):
    code = cli.main(TINY + ["--cells", "lstm", "--modes", "forward", "--impls", "cell-loop", "cell-loop-compiled",
                            "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["impl"]: r["status"] for r in rows} == {"nn": "ok", "cell-loop": "ok", "cell-loop-compiled": "ok"}


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
        assert line.count(f"{ours['ms']:.3f} ({ours['x_nn']:.2f}x)") == 2 and f"| {base['ms']:.3f} |" in line
    assert "python -m bench" in printed and "commit" in printed
    assert summary.main([str(tmp_path / "missing.json")]) == 2
