"""The CPU kernels' instruction-set variants use only the instructions their CPUs have.

fastrnn._C runs the AVX-512 variant only where the CPU has AVX-512 (csrc/cpu/dispatch.cpp), so an
older CPU executes only the AVX2 or the portable variant: those must contain no AVX-512 (or, for the
portable one, no AVX) instruction. Each is compiled here alone, as the build compiles it, and its
machine code is read back with objdump. (-O1 keeps this quick; the target pragma that decides which
instructions may appear is the same at every optimisation level.)
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastrnn import _build

pytestmark = [
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the instruction-set variants exist on x86-64 only"),
    pytest.mark.skipif(shutil.which("c++") is None or shutil.which("objdump") is None,
                       reason="needs a C++ compiler and objdump"),
]

# Registers only a wider instruction set has: AVX-512's zmm and opmask registers, AVX's ymm.
FORBIDDEN = {"isa_generic.cpp": r"%[yz]mm|%k[1-7]\b", "isa_avx2.cpp": r"%zmm|%k[1-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b"}


@pytest.mark.parametrize("source", sorted(FORBIDDEN))
def test_variant_uses_only_its_instruction_set(source, tmp_path):
    obj = tmp_path / (Path(source).stem + ".o")
    compiled = subprocess.run(["c++", "-std=c++17", "-O1", "-ffp-contract=fast", "-fPIC", "-c",
                               str(Path(_build.CSRC) / "cpu" / source), "-o", str(obj)],
                              capture_output=True, text=True, timeout=600)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                                 check=True).stdout
    instructions = [line for line in disassembly.splitlines() if re.match(r"\s+[0-9a-f]+:\t", line)]
    assert len(instructions) > 1000, "the variant compiled to almost nothing"
    offending = [line.strip() for line in instructions if re.search(FORBIDDEN[source], line)]
    assert not offending, f"{source} uses instructions beyond its set, e.g. {offending[:5]}"


def test_the_check_sees_avx512_where_it_is(tmp_path):
    """The check can fail: the vector type under the AVX-512 variant's target pragma, read the same way,
    shows zmm registers."""
    source = tmp_path / "probe.cpp"
    source.write_text('#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")\n'
                      '#include "cpu/simd.h"\n'
                      "using V = fastrnn::cpu::Vec<float, 16>;\n"
                      'extern "C" void probe(float* out, const float* a) { (V::load(a) * V::load(a + 16)).store(out); }\n')
    obj = tmp_path / "probe.o"
    subprocess.run(["c++", "-std=c++17", "-O1", "-fPIC", "-I", _build.CSRC, "-c", str(source), "-o", str(obj)],
                   check=True, timeout=120)
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                                 check=True).stdout
    assert re.search(FORBIDDEN["isa_avx2.cpp"], disassembly)


def test_pair_products_appear_only_in_the_avx512_bf16_variant():
    """vdpbf16ps (AVX512_BF16) is in the built extension, inside the avx512_bf16 variant's functions and
    nowhere else: the dispatcher reaches that variant only on a CPU that has the instruction."""
    from fastrnn import _ext

    if _ext.unavailable_reason():
        pytest.skip(_ext.unavailable_reason())
    disassembly = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", _ext.extension().__file__],
                                 capture_output=True, text=True, check=True, timeout=300).stdout
    function, using = "", set()
    for line in disassembly.splitlines():
        header = re.match(r"[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif "vdpbf16ps" in line:
            using.add(function)
    assert using, "no vdpbf16ps in the extension: the avx512_bf16 variant's GEMMs do not use the pair products"
    # gemm.h's helpers have internal linkage outside the variant's namespace; its bfloat16-panel overload
    # of accumulate exists only where FASTRNN_BF16_DOT is defined, in the avx512_bf16 translation unit.
    pair_accumulate = re.compile(r"accumulate<.*bfloat16 const\*, long, long, fastrnn::cpu::bfloat16 const\*")
    outside = sorted(f for f in using if "avx512_bf16::" not in f and not pair_accumulate.search(f))
    assert not outside, f"vdpbf16ps outside the avx512_bf16 variant: {outside[:3]}"
