"""What the registry and explain() say about the cuda backend must be true in every situation a machine
can be in: no GPU, a CPU-only torch, an extension built with or without the CUDA kernels, nvcc present or
not, the on-first-use build forbidden. The situations are simulated; nothing is compiled."""

from __future__ import annotations

import pytest
import torch

import fastrnn
from fastrnn import _build, _ext, backends
from fastrnn.backends import cuda as cuda_backend


class _WithKernels:
    def lstm_forward_cuda(self, *args, **kwargs):
        raise AssertionError("not to be run")


class _WithoutKernels:
    pass


@pytest.fixture
def gpu_machine(monkeypatch):
    """A machine where torch sees a GPU and is a CUDA build; each test sets the rest."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv(_ext.BUILD_ON_FIRST_USE, raising=False)
    _ext._load_cuda.cache_clear()
    yield monkeypatch
    _ext._load_cuda.cache_clear()


def _situation(monkeypatch, prebuilt, nvcc=True, sources=True):
    monkeypatch.setattr(_ext, "_prebuilt", lambda: prebuilt)
    monkeypatch.setattr(_build, "nvcc", lambda: "/usr/local/cuda/bin/nvcc" if nvcc else None)
    monkeypatch.setattr(_build, "cuda_home", lambda: None)  # nothing here may touch the real toolkit
    monkeypatch.setattr(_build, "cuda_sources", lambda: ["csrc/cuda/lstm.cu"] if sources else [])


def test_prebuilt_with_kernels_runs(gpu_machine):
    _situation(gpu_machine, _WithKernels())
    assert backends.unavailable_reason("cuda", "cuda") is None


def test_prebuilt_without_kernels_and_no_nvcc_says_both(gpu_machine):
    _situation(gpu_machine, _WithoutKernels(), nvcc=False)
    reason = backends.unavailable_reason("cuda", "cuda")
    assert "built without the CUDA kernels" in reason and "no CUDA toolkit (nvcc)" in reason


def test_prebuilt_without_kernels_but_nvcc_compiles_on_first_use(gpu_machine):
    _situation(gpu_machine, _WithoutKernels(), nvcc=True)
    assert backends.unavailable_reason("cuda", "cuda") is None  # the build happens when the backend first runs


def test_first_use_build_forbidden(gpu_machine):
    _situation(gpu_machine, None, nvcc=True)
    gpu_machine.setenv(_ext.BUILD_ON_FIRST_USE, "0")
    reason = backends.unavailable_reason("cuda", "cuda")
    assert "not built by pip" in reason and f"{_ext.BUILD_ON_FIRST_USE}=0" in reason


def test_installation_without_sources(gpu_machine):
    _situation(gpu_machine, _WithoutKernels(), sources=False)
    assert "no csrc/cuda sources" in backends.unavailable_reason("cuda", "cuda")


def test_cpu_only_torch(gpu_machine):
    _situation(gpu_machine, _WithoutKernels())
    gpu_machine.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in backends.unavailable_reason("cuda", "cuda")


def test_failed_first_use_build_is_reported(gpu_machine):
    """An explicit backend="cuda" whose on-first-use build fails raises with that failure, not a hint to
    rebuild."""
    _situation(gpu_machine, _WithoutKernels())
    from torch.utils import cpp_extension

    def failing_load(**kwargs):
        raise RuntimeError("Error building extension 'fastrnn_C_cuda' (simulated)")

    gpu_machine.setattr(cpp_extension, "load", failing_load)
    with pytest.raises(fastrnn.BackendUnavailableError, match="compiling the CUDA kernels on first use failed"):
        backends.resolve("cuda", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")
def test_this_machine_without_a_gpu():
    assert backends.unavailable_reason("cuda", "cuda") == "no CUDA GPU is visible to torch"
    assert backends.unavailable_reason("cuda", "cpu") == "the cuda backend runs on CUDA tensors; got a cpu tensor"
    report = fastrnn.explain("cpu")
    assert f"cuda-kernels: {cuda_backend.VERIFIED}" in report
    assert "not yet run on a GPU" in report and "SIMT emulator" in report


def test_launch_overrides():
    with cuda_backend.forced("stepwise", threads=64):
        assert cuda_backend.current_launch() == cuda_backend.Launch("stepwise", threads=64)
        assert cuda_backend._knobs(torch.float16)["strategy"] == 2
    assert cuda_backend.current_launch().strategy in cuda_backend.STRATEGIES
    with pytest.raises(ValueError, match="strategy must be one of"):
        cuda_backend.Launch("fastest")


def test_strategy_from_the_environment(monkeypatch):
    monkeypatch.setenv(cuda_backend.STRATEGY_ENV, "persistent")
    assert cuda_backend._knobs(torch.float32)["strategy"] == 1


def test_a_packed_batch_under_cuda_graph_capture_is_refused_with_the_reason(monkeypatch):
    """The binding copies a packed batch's lengths from host memory each call, which a CUDA graph would replay
    with the captured call's lengths: under capture the call says so instead of recording a wrong graph (here
    the capture is simulated; a padded batch, no lengths, goes on to the kernels)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    xp, h0 = torch.zeros(3, 2, 12), torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match="packed .* cannot be captured in a CUDA graph"):
        cuda_backend.gru_forward(xp, h0, torch.zeros(12, 4), None, torch.tensor([3, 2]), False)

    class ReachedTheKernels(Exception):
        pass

    def kernels():
        raise ReachedTheKernels

    monkeypatch.setattr(cuda_backend, "_kernels", kernels)
    with pytest.raises(ReachedTheKernels):
        cuda_backend.gru_forward(xp, h0, torch.zeros(12, 4), None, None, False)
