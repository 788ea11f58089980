#!/usr/bin/env bash
# One evaluation cell with config/eval/depth_breadth.yaml, as the authors' scripts/eval.sh: D16 B1 unless overridden.
#   scripts/eval.sh CHECKPOINT [evaluate.py overrides...]
#   scripts/eval.sh downloaded_checkpoints/sudoku-extreme/eqr.pth halt_max_steps=64
#   scripts/eval.sh CHECKPOINT halt_max_steps=64 different_init=128 convergence_top_k=1 global_batch_size=16
# The paper's whole depth x breadth sweep, on several GPUs or nodes: scripts/eval_sweep.sh.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -lt 1 ]] && exit 2 || exit 0
fi
checkpoint="$1"
shift

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" evaluate.py eval_yaml=config/eval/depth_breadth.yaml "checkpoint=${checkpoint}" "$@"
