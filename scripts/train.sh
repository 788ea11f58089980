#!/usr/bin/env bash
# Launch pretrain.py under torchrun on this machine.
#   scripts/train.sh <config> [key=value ...]
#   NPROC_PER_NODE=8 scripts/train.sh eqr_sudoku
# <config> may be eqr_sudoku, train/eqr_sudoku or config/train/eqr_sudoku.yaml. W&B is off unless WANDB_MODE=online
# (or wandb_mode=online). Extra torchrun flags (multi-node rendezvous) go in TORCHRUN_ARGS; without them: --standalone.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -lt 1 ]] && exit 2 || exit 0
fi

name="${1%.yaml}"
shift
name="${name#config/}"
[[ "$name" == train/* ]] || name="train/$name"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ! -f "config/$name.yaml" ]]; then
  echo "error: config/$name.yaml: no such training config (see config/train/)" >&2
  exit 2
fi

export WANDB_MODE="${WANDB_MODE:-disabled}"
# utils/torchrun.py is torchrun that ends a bad input at the workers' one `error:` line
exec "${PYTHON:-python}" -m utils.torchrun ${TORCHRUN_ARGS:---standalone} --nproc-per-node "${NPROC_PER_NODE:-1}" \
  pretrain.py --config-name "$name" "$@"
