"""Launch plans for the Triton recurrence: which strategy and tile sizes run a given problem.

A plan is a strategy (see fastrnn/triton/lstm.py: "persistent", one launch per layer-direction with
each program owning batch rows; or "stepwise", one launch per phase and step over batch x unit tiles)
plus tile sizes. Which wins depends on the shape: persistent uses cdiv(B, BLOCK_B) programs, so at
small batch it leaves most SMs idle, while stepwise pays a launch per phase and step.

On a GPU the plan is measured: the first call for a problem times every candidate on the real
inputs (triton.testing.do_bench) and keeps the fastest, in memory and in a JSON file on disk
(FASTRNN_CACHE_DIR, else $XDG_CACHE_HOME/fastrnn, else ~/.cache/fastrnn), so later processes skip
the tuning. The key is (cell, pass, H, R, dtype, fp32 precision, batch bucket, GPU, Triton version):
tiles depend on H and dtype, the strategy also on the batch, bucketed to powers of two so that a
new batch size does not retune. Nothing here recompiles per batch size or length.

Overrides, for experiments and for tests:
- FASTRNN_TRITON_STRATEGY=persistent|stepwise restricts the candidates to one strategy;
- FASTRNN_TRITON_AUTOTUNE=0 skips the measurement and uses the default plan (or the cached one);
- `with plans.only("stepwise"):` does what FASTRNN_TRITON_STRATEGY does, inside the block;
- `with plans.forced(Plan(...))` (or a strategy name) runs exactly that plan inside the block.
`describe(...)` says which plan a problem would get and where it came from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import triton
import triton.testing
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

log = logging.getLogger(__name__)

STRATEGIES = ("persistent", "stepwise")


@dataclasses.dataclass(frozen=True)
class Plan:
    strategy: str
    block_b: int = 16  # batch rows per tile (tl.dot needs >= 16)
    block_h: int = 32  # hidden (or projected) units per tile
    block_k: int = 32  # reduction chunk of the recurrent GEMM
    num_warps: int = 4

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}; got {self.strategy!r}")
        for name in ("block_b", "block_h", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16; got {value}")

    def __str__(self) -> str:
        return f"{self.strategy}(B{self.block_b} H{self.block_h} K{self.block_k} w{self.num_warps})"


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a plan is chosen for (the tuning key), built by `problem()`."""

    cell: str  # "lstm" | "gru" | "rnn"
    pass_: str  # "forward" | "backward"
    hidden: int
    state: int  # R: proj_size, or hidden
    dtype: str
    precision: str  # fp32 matmuls: "tf32" | "ieee"
    batch_bucket: int
    device: str  # GPU name and compute capability, or "interpreter"

    def key(self) -> str:
        return "/".join([self.cell, self.pass_, f"H{self.hidden}", f"R{self.state}", self.dtype, self.precision,
                         f"B<={self.batch_bucket}", self.device, f"triton-{triton.__version__}"])


def problem(cell: str, pass_: str, hidden: int, state: int, dtype: torch.dtype, precision: str, batch: int,
            device: torch.device) -> Problem:
    device_name = _gpu_label(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else "interpreter"
    bucket = 1 << max(batch - 1, 0).bit_length()
    return Problem(cell, pass_, hidden, state, str(dtype).removeprefix("torch."), precision, bucket, device_name)


@functools.lru_cache(maxsize=None)
def _gpu_label(index: int) -> str:
    """GPU name and compute capability; asked once per device, since a plan is chosen on every call."""
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm_{major}{minor}"


def default_plan(prob: Problem) -> Plan:
    """The plan before (or without) measurement. A guess, replaced by tuning on a GPU: stepwise where
    persistent would run fewer than 16 programs over a hidden size of 256 or more."""
    if prob.device != "interpreter" and triton.cdiv(prob.batch_bucket, 16) < 16 and prob.hidden >= 256:
        return Plan("stepwise", block_b=16, block_h=32, block_k=64)
    return Plan("persistent")


def _default_within(prob: Problem, strategy: str | None) -> Plan:
    plan = default_plan(prob)
    return plan if strategy in (None, plan.strategy) else Plan(strategy)


def candidates(prob: Problem, strategy: str | None = None) -> list[Plan]:
    """The plans tuning measures: tiles no taller than the batch needs, per allowed strategy."""
    block_bs = [b for b in (16, 32, 64) if b == 16 or b <= prob.batch_bucket]
    plans = []
    if strategy in (None, "persistent"):
        plans += [Plan("persistent", b, h, 32, 4 if b * h <= 1024 else 8) for b in block_bs for h in (32, 64)]
    if strategy in (None, "stepwise"):
        plans += [Plan("stepwise", b, h, 64, 4) for b in block_bs for h in (16, 32, 64)]
    return plans


# --- overrides -------------------------------------------------------------------------------------

_forced: Plan | None = None


@contextlib.contextmanager
def forced(plan: Plan | str) -> Iterator[None]:
    """Run every Triton recurrence with `plan` (or a strategy name's default tiles) inside the block.

    Process-wide, not per thread: autograd runs CUDA backward passes on its own threads.
    """
    global _forced
    previous, _forced = _forced, Plan(plan) if isinstance(plan, str) else plan
    try:
        yield
    finally:
        _forced = previous


_only: str | None = None


@contextlib.contextmanager
def only(strategy: str) -> Iterator[None]:
    """Inside the block, choose among `strategy`'s plans only (tuned as usual), like FASTRNN_TRITON_STRATEGY."""
    global _only
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    previous, _only = _only, strategy
    try:
        yield
    finally:
        _only = previous


def _allowed_strategy() -> str | None:
    if _only is not None:
        return _only
    strategy = os.environ.get("FASTRNN_TRITON_STRATEGY") or None
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"FASTRNN_TRITON_STRATEGY must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    return strategy


def _restriction(prob: Problem) -> tuple[str | None, str]:
    """The strategy allowed now (None: any) and the cache key of `prob` under that restriction."""
    strategy = _allowed_strategy()
    return strategy, prob.key() if strategy is None else f"{prob.key()}/only-{strategy}"


def _autotune_enabled() -> bool:
    return os.environ.get("FASTRNN_TRITON_AUTOTUNE", "1") not in ("0", "false", "no", "off")


# --- the on-disk cache ---------------------------------------------------------------------------------


def cache_path() -> Path:
    return _cache_path(os.environ.get("FASTRNN_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME"))


@functools.lru_cache(maxsize=8)
def _cache_path(root: str | None, xdg_cache_home: str | None, home: str | None) -> Path:
    """Built once per environment: resolving the home folder costs more than the rest of choosing a plan."""
    if root is None:
        root = Path(xdg_cache_home or Path.home() / ".cache") / "fastrnn"
    return Path(root) / "triton-plans.json"


class PlanCache:
    """Tuned plans by problem key, mirrored to a JSON file (written whole, atomically, after each entry)."""

    def __init__(self, path: Path):
        self.path = path
        self._plans: dict[str, Plan] = {}
        self._lock = threading.Lock()
        self._loaded = False

    def _read_file(self) -> dict[str, Plan]:
        try:
            raw = json.loads(self.path.read_text())
            return {key: Plan(**fields) for key, fields in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as error:
            log.warning("ignoring unreadable fastrnn plan cache %s (%s); plans will be re-tuned", self.path, error)
            return {}

    def get(self, key: str) -> Plan | None:
        with self._lock:
            if not self._loaded:
                self._plans = {**self._read_file(), **self._plans}
                self._loaded = True
            return self._plans.get(key)

    def put(self, key: str, plan: Plan) -> None:
        with self._lock:
            self._plans[key] = plan
            merged = {**self._read_file(), **self._plans}  # keep what other processes tuned meanwhile
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as handle:
                    json.dump({k: dataclasses.asdict(p) for k, p in sorted(merged.items())}, handle, indent=1)
                os.replace(handle.name, self.path)
            except OSError as error:
                log.warning("could not write the fastrnn plan cache %s (%s); tuning will repeat next process",
                            self.path, error)


_cache: PlanCache | None = None


def cache() -> PlanCache:
    global _cache
    if _cache is None or _cache.path is not cache_path():
        _cache = PlanCache(cache_path())
    return _cache


# --- choosing ----------------------------------------------------------------------------------------


def _measure(plans: list[Plan], run: Callable[[Plan], object]) -> tuple[Plan, dict[Plan, float]]:
    """Time each plan (median ms) on the caller's inputs; plans that fail to compile or run are skipped."""
    times = {}
    for plan in plans:
        try:
            times[plan] = triton.testing.do_bench(lambda: run(plan), warmup=5, rep=25, return_mode="median")
        except (RuntimeError, OutOfResources, CompilationError) as error:  # e.g. too much shared memory
            log.warning("fastrnn: launch plan %s cannot run here, skipped (%s)", plan, error)
    if not times:
        raise RuntimeError(f"no Triton launch plan could run; tried {', '.join(map(str, plans))}")
    return min(times, key=times.get), times


def choose(prob: Problem, run: Callable[[Plan], object]) -> Plan:
    """The plan for `prob`: forced, else cached, else measured (GPU, tuning on, not capturing), else default.

    `run(plan)` must execute the problem with that plan without side effects on the caller's tensors.
    """
    if _forced is not None:
        return _forced
    strategy, key = _restriction(prob)
    plan = cache().get(key)
    if plan is not None:
        return plan
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()  # no syncs inside a graph
    can_measure = prob.device != "interpreter" and not capturing
    if not (can_measure and _autotune_enabled()):
        return _default_within(prob, strategy)
    plan, times = _measure(candidates(prob, strategy), run)
    log.info("fastrnn: tuned %s -> %s (%s)", key, plan,
             ", ".join(f"{p}: {ms:.3f} ms" for p, ms in sorted(times.items(), key=lambda item: item[1])))
    cache().put(key, plan)
    return plan


def describe(prob: Problem) -> str:
    """Which plan `prob` gets now, and why (for users asking what runs)."""
    if _forced is not None:
        return f"{_forced} (forced)"
    strategy, key = _restriction(prob)
    plan = cache().get(key)
    if plan is not None:
        return f"{plan} (tuned, cached in {cache().path})"
    plan = _default_within(prob, strategy)
    if prob.device == "interpreter" or not _autotune_enabled():
        return f"{plan} (default)"
    return f"{plan} (default until the first call measures {len(candidates(prob, strategy))} candidates)"
