#!/usr/bin/env bash
# The paper's depth x breadth sweep (D in 1..64, B in 1..128) as ONE grid evaluation.
#   scripts/eval_sweep.sh CHECKPOINT [evaluate.py overrides...]
#   NPROC_PER_NODE=8 scripts/eval_sweep.sh hf://locuslab/EqR-model/sudoku-extreme/eqr.pth
#   scripts/eval_sweep.sh ckpt.pt output_dir=eval_results/run1 resume=true    # continue a killed sweep
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on every node (see docs/evaluation.md).
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -lt 1 ]] && exit 2 || exit 0
fi
checkpoint="$1"
shift

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
NNODES="${NNODES:-1}"

grid=(eval=paper_grid "checkpoint=${checkpoint}")
if [[ "${NNODES}" == "1" ]]; then
  exec "${PYTHON}" -m utils.torchrun --standalone --nproc-per-node "${NPROC_PER_NODE}" \
    evaluate.py "${grid[@]}" "$@"
fi
exec "${PYTHON}" -m utils.torchrun --nnodes "${NNODES}" --node-rank "${NODE_RANK:?set NODE_RANK}" \
  --nproc-per-node "${NPROC_PER_NODE}" --rdzv-backend c10d \
  --rdzv-endpoint "${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}" --rdzv-id "${RDZV_ID:-eqr-eval}" \
  evaluate.py "${grid[@]}" "$@"
