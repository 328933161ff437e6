#!/usr/bin/env bash
# Trains each non-contrastive method from its synthetic_shapes config at one budget,
# exports step 0 (random init) and the end, and probes both linearly.
# Usage: bash docs/reports/noncontrastive/run.sh [STEPS] [OUT] [METHOD ...]
set -euo pipefail
steps=${1:-500}
out=${2:-runs/noncontrastive}
shift $(( $# < 2 ? $# : 2 ))
methods=${*:-byol simsiam barlow_twins vicreg dino swav}
mkdir -p "$out"
for method in $methods; do
  run="$out/$method"
  rm -rf "$run"
  start=$(date +%s)
  keras-ssl-train --gin_file="gin_configs/$method/synthetic_shapes.gin" --model_dir="$run" \
    --gin_bindings="keras_ssl.train.train_steps = $steps" \
    --gin_bindings="keras_ssl.knn_monitor.every_steps = 250" > "$run.train.log" 2>&1 \
    || { echo "$method: training failed (see $run.train.log)"; continue; }
  keras-ssl-export --model_dir="$run" --step=0 > /dev/null
  keras-ssl-eval --saved_model="$run/export/step_0" --saved_model="$run/export/step_$steps" \
    --dataset=synthetic_shapes/TCV- --layers=block3,pre_logits \
    --max_train_examples=2000 --max_test_examples=1000 --output="$run/eval" > "$run.eval.log" 2>&1
  echo "$method: $(( $(date +%s) - start )) s"
  grep -E "knn_accuracy|embedding_std" "$run.train.log" | tail -1 || true
  cat "$run/eval/results.md"
done
