"""Launch plans of the Triton backend: choosing, measuring, caching on disk, overriding, describing.

The measurement is exercised with a fake timer (no GPU here); that every plan tuning may pick computes
the right answer is tests/test_triton.py::test_every_tuning_candidate_is_correct.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("triton", reason="the Triton backend needs triton installed")

from fastrnn.triton import plans  # noqa: E402

GPU_PROBLEM = plans.Problem("lstm", "forward", 256, 256, "bfloat16", "ieee", 16, "Fake GPU sm_90")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTRNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTRNN_TRITON_STRATEGY", raising=False)
    monkeypatch.delenv("FASTRNN_TRITON_AUTOTUNE", raising=False)
    return tmp_path


class FakeTimer:
    """Stands in for triton.testing.do_bench: runs the function once, returns a time chosen per plan."""

    def __init__(self, monkeypatch, fastest: plans.Plan, failing: tuple = ()):
        self.measured: list[plans.Plan] = []
        self.fastest, self.failing = fastest, failing
        monkeypatch.setattr(plans.triton.testing, "do_bench", self.do_bench)

    def run(self, plan):
        if plan in self.failing:
            raise RuntimeError("out of shared memory")
        self.measured.append(plan)

    def do_bench(self, fn, **kwargs):
        fn()
        return 1.0 if self.measured[-1] == self.fastest else 2.0 + len(self.measured)


def test_plan_rejects_bad_values():
    with pytest.raises(ValueError, match="strategy must be one of"):
        plans.Plan("hidden-split")
    with pytest.raises(ValueError, match="block_h must be a power of two >= 16; got 24"):
        plans.Plan("stepwise", block_h=24)


def test_problem_key_buckets_the_batch_and_names_the_device():
    def key(batch):
        return plans.problem("gru", "backward", 64, 64, torch.float16, "ieee", batch, torch.device("cpu")).key()

    assert key(33) == key(64) != key(65)
    assert key(1).startswith("gru/backward/H64/R64/float16/ieee/B<=1/interpreter/triton-")


def test_candidates_fit_the_batch_and_cover_both_strategies():
    small = plans.candidates(GPU_PROBLEM)
    assert {plan.strategy for plan in small} == set(plans.STRATEGIES)
    assert max(plan.block_b for plan in small) == 16  # a batch of 16 needs no taller tile
    assert max(plan.block_b for plan in plans.candidates(dataclasses.replace(GPU_PROBLEM, batch_bucket=256))) == 64
    assert {plan.strategy for plan in plans.candidates(GPU_PROBLEM, "stepwise")} == {"stepwise"}


def test_measures_once_keeps_the_fastest_and_reuses_it_from_disk(monkeypatch, isolated_cache):
    fastest = plans.candidates(GPU_PROBLEM)[3]
    timer = FakeTimer(monkeypatch, fastest)
    assert plans.choose(GPU_PROBLEM, timer.run) == fastest
    assert set(timer.measured) == set(plans.candidates(GPU_PROBLEM))

    stored = json.loads((isolated_cache / "triton-plans.json").read_text())
    assert stored == {GPU_PROBLEM.key(): vars(fastest)}
    timer.measured.clear()
    monkeypatch.setattr(plans, "_cache", None)  # as a new process would: read back from the file
    assert plans.choose(GPU_PROBLEM, timer.run) == fastest
    assert timer.measured == []
    assert "tuned, cached in" in plans.describe(GPU_PROBLEM)


def test_plans_that_cannot_run_are_skipped(monkeypatch):
    candidates = plans.candidates(GPU_PROBLEM)
    timer = FakeTimer(monkeypatch, fastest=candidates[-1], failing=tuple(candidates[:-1]))
    assert plans.choose(GPU_PROBLEM, timer.run) == candidates[-1]
    timer = FakeTimer(monkeypatch, fastest=None, failing=tuple(candidates))
    other = dataclasses.replace(GPU_PROBLEM, device="Other GPU")
    with pytest.raises(RuntimeError, match="no Triton launch plan could run"):
        plans.choose(other, timer.run)


def test_unreadable_cache_is_ignored_with_a_warning(monkeypatch, isolated_cache, caplog):
    (isolated_cache / "triton-plans.json").write_text("{not json")
    fastest = plans.candidates(GPU_PROBLEM)[0]
    timer = FakeTimer(monkeypatch, fastest)
    assert plans.choose(GPU_PROBLEM, timer.run) == fastest
    assert "ignoring unreadable fastrnn plan cache" in caplog.text
    assert json.loads((isolated_cache / "triton-plans.json").read_text())[GPU_PROBLEM.key()] == vars(fastest)


def test_environment_or_only_restricts_the_strategy(monkeypatch):
    monkeypatch.setenv("FASTRNN_TRITON_STRATEGY", "persistent")
    fastest = plans.candidates(GPU_PROBLEM, "persistent")[1]
    timer = FakeTimer(monkeypatch, fastest)
    assert plans.choose(GPU_PROBLEM, timer.run) == fastest
    assert {plan.strategy for plan in timer.measured} == {"persistent"}
    monkeypatch.delenv("FASTRNN_TRITON_STRATEGY")
    with plans.only("stepwise"):
        assert plans.choose(GPU_PROBLEM, timer.run).strategy == "stepwise"
    assert plans.choose(GPU_PROBLEM, timer.run).strategy in plans.STRATEGIES  # tuned over both again
    monkeypatch.setenv("FASTRNN_TRITON_STRATEGY", "fastest")
    with pytest.raises(ValueError, match="FASTRNN_TRITON_STRATEGY must be one of persistent, stepwise"):
        plans.choose(GPU_PROBLEM, timer.run)


def test_autotune_off_uses_the_default_without_measuring(monkeypatch):
    monkeypatch.setenv("FASTRNN_TRITON_AUTOTUNE", "0")
    timer = FakeTimer(monkeypatch, fastest=None)
    assert plans.choose(GPU_PROBLEM, timer.run) == plans.default_plan(GPU_PROBLEM)
    assert timer.measured == []
    assert plans.describe(GPU_PROBLEM).endswith("(default)")


def test_interpreter_never_measures(monkeypatch):
    timer = FakeTimer(monkeypatch, fastest=None)
    prob = plans.problem("lstm", "forward", 8, 8, torch.float32, "ieee", 3, torch.device("cpu"))
    assert plans.choose(prob, timer.run) == plans.Plan("persistent")
    assert timer.measured == []


def test_forced_plan_wins_and_is_restored(monkeypatch):
    timer = FakeTimer(monkeypatch, fastest=None)
    plan = plans.Plan("stepwise", block_b=32, block_h=16)
    with plans.forced(plan):
        assert plans.choose(GPU_PROBLEM, timer.run) == plan
        assert plans.describe(GPU_PROBLEM) == f"{plan} (forced)"
        with plans.forced("persistent"):
            assert plans.choose(GPU_PROBLEM, timer.run) == plans.Plan("persistent")
        assert plans.choose(GPU_PROBLEM, timer.run) == plan
    assert timer.measured == []
    assert "default until the first call measures" in plans.describe(GPU_PROBLEM)
