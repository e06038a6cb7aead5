"""Builds the CUDA kernels for the project's SIMT emulator (csrc/emulation/), for the tests:

- `extension()`: the binding (csrc/binding.cpp, its CUDA section) and csrc/cuda/*.cu compiled as host C++
  by g++, loaded as a torch extension whose *_cuda functions take CPU tensors (torch.utils.cpp_extension
  .load; torch caches the build, ninja rebuilds what changed);
- `driver(sanitizer)`: the same kernels in a command-line program without torch (csrc/emulation/driver.cpp),
  plain or built with ThreadSanitizer or AddressSanitizer + UndefinedBehaviorSanitizer, cached under
  ~/.cache/fastrnn/simt by a hash of the sources and flags.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fastrnn"))
import _build  # noqa: E402  (fastrnn/_build.py alone: the source lists and flags)

sys.path.pop(0)

CSRC = ROOT / "csrc"
CACHE = Path(os.environ.get("FASTRNN_SIMT_CACHE", Path.home() / ".cache" / "fastrnn" / "simt"))
# The driver and every emulated kernel family (the emulated extension's sources, less the binding).
DRIVER_SOURCES = ["emulation/driver.cpp",
                  *(str(Path(source).relative_to("csrc")) for source in _build.emulation_sources()
                    if Path(source).name != "binding.cpp")]
SANITIZER_FLAGS = {
    "none": ["-O2"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
    "address": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
}
SANITIZER_ENV = {
    "none": {},
    "thread": {"TSAN_OPTIONS": "halt_on_error=0:exitcode=66:report_signal_unsafe=0"},
    "address": {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=67", "UBSAN_OPTIONS": "print_stacktrace=1"},
}


def skip_reason() -> str | None:
    """Why the emulated kernels cannot be built here, or None."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "no C++ compiler (g++) to build the SIMT-emulated CUDA kernels"
    if _build.cuda_headers() is None:
        return ("the SIMT emulator compiles the kernels against the CUDA toolkit's headers (cuda_bf16.h, cuda/atomic), "
                "and no CUDA toolkit is found (set CUDA_HOME)")
    return None


def _flags() -> list[str]:
    return _build.EMULATION_FLAGS + [f"-I{path}" for path in _build.cuda_headers()]


@functools.lru_cache(maxsize=None)
def extension():
    """The emulated extension: lstm_forward_cuda(...) and the rest, on CPU tensors."""
    from torch.utils.cpp_extension import load

    tag = hashlib.sha1(str(ROOT).encode()).hexdigest()[:8]  # one build folder per checkout
    return load(name=f"fastrnn_simt_{tag}", sources=_build.absolute(_build.emulation_sources()),
                extra_include_paths=[_build.CSRC], extra_cflags=_flags())


def _digest(flags: list[str]) -> str:
    digest = hashlib.sha256(" ".join(flags).encode())
    for folder in ("cuda", "emulation"):
        for path in sorted((CSRC / folder).iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
    digest.update((CSRC / "cell.h").read_bytes())
    version = subprocess.run([os.environ.get("CXX", "g++"), "--version"], capture_output=True, text=True).stdout
    return hashlib.sha256(digest.hexdigest().encode() + version.encode()).hexdigest()[:16]


def sanitizer_runtime_reason(sanitizer: str) -> str | None:
    """None if a program built with this sanitizer links and runs here, else why not."""
    if sanitizer == "none":
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    probe = CACHE / f"probe-{sanitizer}"
    source = CACHE / "probe.cpp"
    source.write_text("#include <thread>\nint main() { std::thread t([] {}); t.join(); return 0; }\n")
    compiler = os.environ.get("CXX", "g++")
    built = subprocess.run([compiler, *SANITIZER_FLAGS[sanitizer], "-pthread", str(source), "-o", str(probe)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        return f"g++ cannot build with -fsanitize={sanitizer} here: {built.stderr.strip().splitlines()[-1:]}"
    ran = subprocess.run([str(probe)], capture_output=True, text=True, env={**os.environ, **SANITIZER_ENV[sanitizer]})
    if ran.returncode != 0:
        return f"a -fsanitize={sanitizer} program does not run here: {(ran.stderr.strip().splitlines() or ['?'])[0]}"
    return None


_failed_builds: dict[str, str] = {}


def driver(sanitizer: str = "none") -> Path:
    """The driver program built with `sanitizer` ("none", "thread" or "address"), compiled if need be (a
    failed build is reported again without retrying it)."""
    if sanitizer in _failed_builds:
        raise RuntimeError(_failed_builds[sanitizer])
    try:
        return _driver(sanitizer)
    except RuntimeError as error:
        _failed_builds[sanitizer] = str(error)
        raise


@functools.lru_cache(maxsize=None)
def _driver(sanitizer: str) -> Path:
    compiler = os.environ.get("CXX", "g++")
    flags = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pthread", *SANITIZER_FLAGS[sanitizer], *_flags(),
             f"-I{CSRC}"]
    target = CACHE / f"driver-{sanitizer}-{_digest(flags)}"
    if target.exists():
        return target
    build = CACHE / f"build-{target.name}"
    build.mkdir(parents=True, exist_ok=True)

    def compile_one(source: str) -> Path:
        obj = build / (Path(source).stem + ".o")
        done = subprocess.run([compiler, *flags, "-c", str(CSRC / source), "-o", str(obj)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building {source} for the {sanitizer} driver failed:\n{done.stderr[-4000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=2) as pool:
        objects = list(pool.map(compile_one, DRIVER_SOURCES))
    linked = subprocess.run([compiler, *flags, *map(str, objects), "-o", str(build / "driver")], capture_output=True,
                            text=True)
    if linked.returncode != 0:
        raise RuntimeError(f"linking the {sanitizer} driver failed:\n{linked.stderr[-4000:]}")
    os.replace(build / "driver", target)
    shutil.rmtree(build, ignore_errors=True)
    return target


def run_driver(sanitizer: str, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(driver(sanitizer)), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **SANITIZER_ENV[sanitizer], **env})
