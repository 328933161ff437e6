#!/usr/bin/env bash
# The quickstart: installs everything into .venv, pretrains Rotation on the
# embedded synthetic_shapes dataset for a few CPU minutes, exports the model at
# step 0 (random init) and at the end, and prints linear-probe accuracies of
# both on block2, block3 and pre_logits. The probes use one l2 (0.01) rather
# than choosing from the grid: a weak l2 takes the solver many more
# iterations, and the choice would triple the evaluation's time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

run_dir=${RUN_DIR:-runs/quickstart}
rm -rf "$run_dir"
start=$(date +%s)
keras-ssl-train --gin_file=gin_configs/quickstart.gin --model_dir="$run_dir"
trained=$(date +%s)
keras-ssl-export --model_dir="$run_dir" --step=0
final=$(ls -d "$run_dir"/export/step_* | sort -t_ -k2 -n | tail -1)
keras-ssl-eval \
  --saved_model="$run_dir/export/step_0" --saved_model="$final" \
  --dataset=synthetic_shapes/TCV- --layers=block2,block3,pre_logits \
  --max_train_examples=1000 --max_test_examples=500 --l2_grid=0.01 \
  --plots=false --progress=false --output="$run_dir/eval"
echo "training took $(( trained - start )) s, export and evaluation $(( $(date +%s) - trained )) s"
echo "quickstart finished in $(( $(date +%s) - start )) s; results in $run_dir/eval/results.md"
