"""setup.py's build of fastrnn._C: kept objects (re-installs recompile only what changed), the switch that
skips the CUDA kernels, and the report of what a build did (fastrnn/_build_report.py)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import pytest
import torch
from setuptools import Distribution

from fastrnn import _build, _build_report

SETUP = _build.ROOT / "setup.py"


def _setup_kwargs(monkeypatch, **env) -> dict:
    """What setup.py passes to setuptools.setup() in this environment (nothing is built)."""
    home = _build.cuda_home()
    if home:
        monkeypatch.setenv("CUDA_HOME", home)  # setup.py sets it so; keep it from outliving the test
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST", _build.DEFAULT_CUDA_ARCHS))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    captured = {}
    monkeypatch.setattr("setuptools.setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.setattr(sys, "argv", [str(SETUP), "build_ext"])
    # setup.py puts fastrnn/ first on sys.path (to load _build alone), where fastrnn/triton would then
    # shadow the real triton for the rest of the session: restored after the test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    runpy.run_path(str(SETUP), run_name="__main__")
    if "ext_modules" not in captured:
        pytest.skip("setup.py builds no extension here (no torch or no C++ compiler); it said why on stderr")
    return captured


def _build_temp(kwargs) -> str:
    command = kwargs["cmdclass"]["build_ext"](Distribution({"name": "fastrnn", "ext_modules": kwargs["ext_modules"]}))
    command.finalize_options()
    return command.build_temp


def test_objects_are_kept_per_python_torch_and_kernel_set(monkeypatch):
    kwargs = _setup_kwargs(monkeypatch)
    (extension,) = kwargs["ext_modules"]
    kernels = "cuda" if any(source.endswith(".cu") for source in extension.sources) else "cpu"
    expected = _build.ROOT / "build" / "fastrnn-ext" / f"{sys.implementation.cache_tag}-torch{torch.__version__}-{kernels}"
    assert _build_temp(kwargs) == str(expected)  # not a temporary folder: ninja finds its objects again


def test_fastrnn_build_cuda_0_builds_the_cpu_kernels_only(monkeypatch):
    kwargs = _setup_kwargs(monkeypatch, FASTRNN_BUILD_CUDA="0")
    (extension,) = kwargs["ext_modules"]
    assert extension.sources == _build.cpu_sources()
    assert _build_temp(kwargs).endswith("-cpu")


@pytest.fixture
def report_files(tmp_path, monkeypatch):
    monkeypatch.setattr(_build_report, "LOG", tmp_path / "fastrnn-build.log")
    monkeypatch.setattr(_build_report, "RECORD", tmp_path / "fastrnn-build.json")
    monkeypatch.setattr(_build_report, "_terminal", lambda: None)
    return tmp_path


NINJA_LINES = ["[1/2] c++ -MMD -c /src/csrc/cpu/a.cpp -o /b/a.o -O2\n", "warning: something\n",
               "[2/2] nvcc -c /src/csrc/cuda/b.cu -o /b/b.o\n"]


def _write_to_fd_1(lines) -> None:
    """What torch does with ninja: a child process writing to the build's file descriptor 1."""
    subprocess.run([sys.executable, "-c", f"import sys; sys.stdout.write({''.join(lines)!r})"], check=True)


def test_report_logs_the_compilers_output_counts_what_it_compiled_and_records_it(report_files, capfd):
    with _build_report.report("fastrnn._C with test kernels", 5, "build/fastrnn-ext/key"):
        _write_to_fd_1(NINJA_LINES)
    out, err = capfd.readouterr()
    assert out == "".join(NINJA_LINES)  # passed on: pip -v and a failed build still show it
    log = (report_files / "fastrnn-build.log").read_text()
    assert all(line in log for line in NINJA_LINES)
    assert "compiled 2 of 5 sources, reused 3 from build/fastrnn-ext/key" in err
    record = json.loads((report_files / "fastrnn-build.json").read_text())
    assert (record["ok"], record["compiled"], record["sources"]) == (True, 2, 5)
    summary = _build_report.summary()
    assert summary.startswith("fastrnn._C with test kernels; built ")
    assert "compiling 2 of 5 sources (3 reused from build/fastrnn-ext/key)" in summary and str(report_files) in summary


def test_report_of_a_failed_build_says_so(report_files, capfd):
    with pytest.raises(RuntimeError, match="Error compiling"):
        with _build_report.report("fastrnn._C", 1, "build/x"):
            _write_to_fd_1(["a.cpp:1:1: error: expected ';'\n"])
            raise RuntimeError("Error compiling objects for extension")
    out, err = capfd.readouterr()
    assert "error: expected ';'" in out and "the build failed" in err
    assert _build_report.summary().startswith("the latest build") and "failed" in _build_report.summary()
    assert json.loads((report_files / "fastrnn-build.json").read_text())["ok"] is False
