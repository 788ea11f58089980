#!/usr/bin/env bash
# The main job, on a CPU, offline, in a few minutes: install, build a small Sudoku set, train the quickstart preset
# (config/train/eqr_sudoku_quickstart.yaml, 700 steps), evaluate a
# depth x breadth grid, print the table and where the plots are.
#   bash scripts/quickstart.sh
# Ctrl-C or SIGTERM stops it (training writes a checkpoint first); the same command continues where it stopped.
# Rerunning it reuses the venv, the data, the finished run and the finished evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."

# The folders name the recipe (50 givens, trained at D = 2): a folder left by an earlier recipe is never reused or
# overwritten.
DATA=data/sudoku-quickstart-g50
RUN=eqr_sudoku_quickstart_g50_d2
RUN_DIR=checkpoints/eqr/$RUN
OUT=eval_results/$RUN

# Each stage runs in the background so that a signal reaches this script at once; it is passed on as SIGTERM
# (training finishes its step and writes a checkpoint), a second one as SIGINT (stop at once).
child="" stopped=""
on_signal() {
  stopped="$1"
  if [ -n "$child" ]; then kill -s "$([ -n "${forwarded:-}" ] && echo INT || echo TERM)" "$child" 2>/dev/null || true; fi
  forwarded=1
}
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM
run() {
  set -m  # the stage gets a process group of its own: Ctrl-C reaches it only through on_signal
  "$@" &
  child=$!
  set +m
  local status=0
  while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break  # still running: the wait was cut short by a signal
  done
  child=""
  if [ -n "$stopped" ]; then
    echo "quickstart stopped by $stopped; run 'bash scripts/quickstart.sh' again to continue" >&2
    exit 130
  fi
  return "$status"
}
step() { printf '\n== %s\n' "$*" >&2; }

step "1/4 environment (.venv, requirements.txt)"
if [ ! -x .venv/bin/python ]; then
  run python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
run pip install -q -r requirements.txt
export WANDB_MODE="${WANDB_MODE:-disabled}" HF_HUB_OFFLINE=1

step "2/4 data: 1000 generated Sudoku puzzles (50 givens) x 8 augmentations, 256 test puzzles -> $DATA"
if [ ! -f "$DATA/test/dataset.json" ]; then
  run python -m dataset.build_sudoku_dataset --generate 1000 --generate-test 256 --num-aug 7 \
      --min-givens 50 --seed 0 --output-dir "$DATA"
fi
run python -m dataset.validate "$DATA"

step "3/4 training, 700 steps (a bar per step; the test exact accuracy on 128 puzzles every 350) -> $RUN_DIR"
resume=false
[ -f "$RUN_DIR/latest" ] && resume=true
run python pretrain.py --config-name train/eqr_sudoku_quickstart data_path="$DATA" run_name=$RUN resume="$resume"

# One pass over the grid (every smaller cell is read off the largest); answers do not depend on the batch size.
step "4/4 evaluation of the last checkpoint over depth x breadth on the first 128 test puzzles -> $OUT"
if [ -f "$OUT/results.json" ]; then
  echo "already evaluated: $OUT/results.csv (delete $OUT/ to evaluate again)" >&2
else
  run python evaluate.py checkpoint="$RUN_DIR/$(cat "$RUN_DIR/latest")" data_path="$DATA" \
      depths=[1,2,4,8] breadths=[1,4] global_batch_size=8 max_eval_steps=16 output_dir="$OUT" resume=true
fi
echo "pictures: $OUT/accuracy_heatmap.png, accuracy_vs_nfe.png, examples_solved.png, examples_failed.png;" \
     "training curves: $RUN_DIR/training_curves.png" >&2
