#!/usr/bin/env bash
# The GPU check in one go, on a machine with one CUDA GPU (< 5 minutes there):
#   1. set up from the repo: .venv (make setup, torch with CUDA) and bench/.venv-peers (TRL),
#      each only if it is not there yet;
#   2. bench/gpu_check.py: the engine's CUDA/bf16 checks, then B1 and B2 against TRL and
#      transformers' generate on the GPU, written as the "GPU check" section of bench/RESULTS.md.
#
#   bash bench/gpu_check.sh             # run it
#   bash bench/gpu_check.sh --dry-run   # print what would run; needs no GPU and installs nothing
#
# TORCH_INDEX picks the torch build for setup (default: the package index's CUDA build);
# STEP_LIMIT bounds each step in seconds (default 270).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
LIMIT="${STEP_LIMIT:-270}"
PY="${EVSYS_PY:-.venv/bin/python}"  # the environment to run with (set up by make setup)

step() {  # print a step; run it unless --dry-run
  echo "+ $*"
  if [ "$DRY" = 0 ]; then timeout "$LIMIT" "$@"; fi
}

for f in Makefile bench/gpu_check.py bench/bench_sdft.py bench/bench_engine.py; do
  [ -f "$f" ] || { echo "gpu_check: $f is missing; run this from an evsys checkout" >&2; exit 1; }
done

if [ "$DRY" = 0 ] && ! command -v nvidia-smi >/dev/null; then
  echo "gpu_check: no nvidia-smi on this machine: no GPU to check (the section stays 'not run')" >&2
  exit 1
fi
[ -x "$PY" ] || step make setup ${TORCH_INDEX:+TORCH_INDEX="$TORCH_INDEX"}
[ -x bench/.venv-peers/bin/python ] || step make bench-peers
if [ "$DRY" = 0 ]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device; install a CUDA build (TORCH_INDEX)")'
fi
if [ "$DRY" = 1 ]; then
  "$PY" bench/gpu_check.py --dry-run
else
  step "$PY" bench/gpu_check.py --reps 3
fi
