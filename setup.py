"""Builds fastrnn and its compiled kernels, the extension fastrnn._C.

fastrnn._C always holds the fused C++ CPU kernels (csrc/cpu/) when torch is importable here and a C++
compiler is found; it also holds the CUDA kernels (csrc/cuda/) when torch is a CUDA build, the CUDA
toolkit (nvcc) is found and FASTRNN_BUILD_CUDA is not 0. Whatever cannot be built is said, and the
package installs without it: the kernels are then compiled on first use (fastrnn/_ext.py), or their
backends report why they cannot run. Arch list: TORCH_CUDA_ARCH_LIST (default "8.0;9.0"); parallel
jobs: MAX_JOBS.

The compiled objects are kept in build/fastrnn-ext/<python>-torch<version>-<cpu|cuda>/, which ninja
updates incrementally: a re-install recompiles only the sources changed since (pip's editable installs
would otherwise compile everything afresh in a temporary folder each time). What the build does is
logged in build/fastrnn-build.log and summed up by fastrnn.explain() (fastrnn/_build_report.py).
"""

import os
import shutil
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastrnn"))
import _build  # noqa: E402  (fastrnn/_build.py: the source lists and flags, shared with the on-first-use build)
import _build_report  # noqa: E402  (fastrnn/_build_report.py: the log, the progress lines, the record)

BUILD_CUDA = "FASTRNN_BUILD_CUDA"  # "0": build the CPU kernels only, even where nvcc and a CUDA torch are found


def _say(message: str) -> None:
    print(f"fastrnn setup: {message}", file=sys.stderr)


def _build_command(base, what: str, sources: int, key: str):
    """torch's BuildExtension, compiling into a kept folder per Python, torch and kernel set, and
    reporting what it builds (the log, a line per compiled source, the record explain() shows)."""
    build_dir = os.path.join("build", "fastrnn-ext", key)

    class BuildFastrnn(base):
        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(_build.ROOT, build_dir)

        def run(self):
            with _build_report.report(what, sources, build_dir):
                super().run()

    return BuildFastrnn.with_options(use_ninja=True)


def extension_kwargs() -> dict:
    if _build.cuda_home() and not os.environ.get("CUDA_HOME"):
        # torch guesses the toolkit from nvcc's folder, wrong when nvcc on PATH is a wrapper script.
        os.environ["CUDA_HOME"] = _build.cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable while building (install torch first and use --no-build-isolation); "
             "installing without fastrnn._C (it will be compiled on first use)")
        return {}
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        _say(f"no C++ compiler ({compiler}) found; installing without fastrnn._C")
        return {}
    skip_cuda = os.environ.get(BUILD_CUDA, "1") == "0"
    with_cuda = (torch.version.cuda is not None and CUDA_HOME is not None and bool(_build.cuda_sources())
                 and not skip_cuda)
    if not with_cuda:
        why = ("torch is a CPU build" if torch.version.cuda is None else
               "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)" if CUDA_HOME is None else
               "csrc/ has no CUDA sources" if not _build.cuda_sources() else
               f"{BUILD_CUDA}=0 (on a GPU the first use of backend='cuda' compiles them)")
        what = f"fastrnn._C with the CPU kernels only: {why}"
        sources = _build.cpu_sources()
        extension = CppExtension(name="fastrnn._C", sources=sources, include_dirs=[_build.CSRC],
                                 extra_compile_args=_build.CXX_FLAGS, extra_link_args=_build.LINK_FLAGS)
    else:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _build.DEFAULT_CUDA_ARCHS)
        what = (f"fastrnn._C with the CPU and CUDA kernels for arch {os.environ['TORCH_CUDA_ARCH_LIST']} "
                f"(CUDA at {CUDA_HOME}; {BUILD_CUDA}=0 skips the CUDA kernels)")
        sources = _build.cpu_sources() + _build.cuda_sources()
        extension = CUDAExtension(name="fastrnn._C", sources=sources,
                                  include_dirs=[_build.CSRC], define_macros=[("FASTRNN_WITH_CUDA", None)],
                                  extra_compile_args={"cxx": _build.CXX_FLAGS, "nvcc": _build.NVCC_FLAGS},
                                  extra_link_args=_build.LINK_FLAGS)
    key = f"{sys.implementation.cache_tag}-torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}"
    return {"ext_modules": [extension], "cmdclass": {"build_ext": _build_command(BuildExtension, what, len(sources), key)}}


setup(**extension_kwargs())
