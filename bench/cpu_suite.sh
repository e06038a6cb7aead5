#!/usr/bin/env bash
# The CPU results of bench/RESULTS.md, from the repository root: the 'cpu' grid (LSTM and GRU, B in
# {1, 8, 32, 128}, H in {64, 256, 512}, T = 128, float32, inference and training), a packed
# (PackedSequence, lengths in [T/4, T]) and a 2-layer bidirectional case, each on 1 and on 2 threads;
# nn, fastrnn's cpp kernels and auto in the same process. Writes every run under OUT_DIR and prints one
# Markdown table per group (python -m bench.summary). Run it on a quiet machine: the kernels meet at a
# barrier every step, and so does torch's own code, so a busy core distorts both.
#
#   bash bench/cpu_suite.sh OUT_DIR [extra arguments for python -m bench]
set -euo pipefail
out=${1:?usage: bash bench/cpu_suite.sh OUT_DIR [bench arguments...]}
shift
mkdir -p "$out"
impls=(--impls fastrnn-cpp fastrnn-auto)

run() {  # run NAME THREADS ARGS...
  local name=$1 threads=$2
  shift 2
  python -m bench "${impls[@]}" --threads "$threads" --out "$out/$name-${threads}t" "$@" "${extra[@]}" \
    > "$out/$name-${threads}t.log" 2>&1 || echo "python -m bench ($name, $threads threads) exited $? (see $out/$name-${threads}t.log)"
}

extra=("$@")
for threads in 1 2; do
  run grid "$threads" --preset cpu
  run packed "$threads" --preset cpu --batch 8 32 --hidden 64 256 --min-length-fraction 0.25
  run bidir2 "$threads" --preset cpu --batch 8 32 --hidden 256 --layers 2 --bidirectional 1
done

for name in grid packed bidir2; do
  echo "## $name"
  python -m bench.summary "$out/$name-1t/results.json" "$out/$name-2t/results.json"
  echo
done
