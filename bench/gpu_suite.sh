#!/usr/bin/env bash
# On a machine with a CUDA GPU, from anywhere: build fastrnn for this GPU, run the GPU tests, the kernels
# under compute-sanitizer and the benchmark at DESIGN.md's anchor shapes, within 8 minutes in all (each
# stage under its own time limit), everything written to OUT_DIR (at most 8 files; summary.txt first).
# --dry-run (or FASTRNN_GPU_SUITE_DRY_RUN=1) runs, on any machine, every stage's logic that needs no GPU
# and prints the stage budgets. Stages, budgets and files: bench/gpu_suite.py.
#
#   bash bench/gpu_suite.sh OUT_DIR [--dry-run]
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
exec "${PYTHON:-python3}" -m bench.gpu_suite "$@"
