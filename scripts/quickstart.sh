#!/usr/bin/env bash
# The main job on a fresh machine, CPU only, no network: install, build a small offline Sudoku
# set, train the CPU EqR preset for a few minutes, evaluate a depth x breadth grid, print the
# table and write the plots. Rerunning it reuses the venv, the data and the finished run.
# Training and evaluation pick their CPU threads from the cores idle at start (threads=null), so a
# busy machine slows them by its share, not many times over; OMP_NUM_THREADS=N still decides if set.
#   bash scripts/quickstart.sh            (QUICKSTART_STEPS=3000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS="${QUICKSTART_STEPS:-3000}"
DATA=data/sudoku-cpu
RUN_DIR=checkpoints/eqr/quickstart
OUT=eval_results/quickstart

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install -q -r requirements.txt
export WANDB_MODE="${WANDB_MODE:-disabled}" HF_HUB_OFFLINE=1

# 1. data: 1000 generated puzzles with a unique solution, 7 augmentations each; 256 test puzzles
if [ ! -f "$DATA/test/dataset.json" ]; then
  python -m dataset.build_sudoku_dataset --generate 1000 --generate-test 256 --num-aug 7 \
      --min-givens 45 --seed 0 --output-dir "$DATA"
fi
python -m dataset.validate "$DATA"

# 2. train (resumes if a previous quickstart was interrupted)
resume=false
[ -f "$RUN_DIR/latest" ] && resume=true
python pretrain.py --config-name train/eqr_sudoku_cpu data_path="$DATA" run_name=quickstart \
    max_steps="$STEPS" resume="$resume"

# 3. evaluate the last checkpoint on a depth x breadth grid, in one pass, on the first 128 test puzzles
#    (batches of 8, so that the progress bar moves every few seconds; answers do not depend on the batch)
#    A finished evaluation is kept (evaluate.py never overwrites results).
if [ -f "$OUT/results.json" ]; then
  echo "already evaluated: $OUT/results.csv (delete $OUT/ to evaluate again)"
else
  python evaluate.py checkpoint="$RUN_DIR/$(cat "$RUN_DIR/latest")" data_path="$DATA" \
      depths=[1,2,4,8,16,32] breadths=[1,4,16] halt=true global_batch_size=8 max_eval_steps=16 \
      output_dir="$OUT"
fi
echo "plots and results: $OUT/"
