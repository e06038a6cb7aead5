#!/usr/bin/env bash
# On a machine with a CUDA GPU, from the repository root: build the extension, run the tests, run the
# benchmark, and keep every log under OUT_DIR. The last lines printed are a short summary.
#
#   bash bench/gpu_suite.sh OUT_DIR [extra arguments for python -m bench, e.g. --preset paper --cells lstm]
set -uo pipefail
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR [bench arguments...]}
shift
mkdir -p "$out"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
pip install --no-build-isolation --no-deps -e . > "$out/install.log" 2>&1
install_rc=$?
python -c "import fastrnn; print(fastrnn.explain('cuda'))" > "$out/explain.txt" 2>&1
python -m pytest -q -p no:cacheprovider tests > "$out/tests.log" 2>&1
tests_rc=$?
python -m bench --out "$out/bench" "$@" > "$out/bench.log" 2>&1
bench_rc=$?

# The CUDA kernels under compute-sanitizer: out-of-bounds and misaligned accesses (memcheck), shared-memory
# races (racecheck), barrier misuse (synccheck), reads of uninitialised global memory (initcheck).
sanitizer="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
command -v compute-sanitizer > /dev/null && sanitizer=$(command -v compute-sanitizer)
sanitizer_summary="compute-sanitizer: not found (looked for $sanitizer)"
if [ -x "$sanitizer" ]; then
  sanitizer_summary="compute-sanitizer:"
  for tool in memcheck racecheck synccheck initcheck; do
    "$sanitizer" --tool "$tool" --error-exitcode 99 --target-processes all \
      python -m pytest -q -p no:cacheprovider tests/test_cuda_gpu.py -k small_shapes_for_compute_sanitizer \
      > "$out/compute-sanitizer-$tool.log" 2>&1
    sanitizer_summary="$sanitizer_summary $tool rc=$?"
  done
fi

cat "$out/explain.txt"
echo "install rc=$install_rc; tests rc=$tests_rc: $(tail -n 1 "$out/tests.log"); bench rc=$bench_rc"
echo "$sanitizer_summary (logs: $out/compute-sanitizer-*.log)"
grep -E "^(case|lstm|gru) " "$out/bench.log" | tail -n 60
