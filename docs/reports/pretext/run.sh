#!/usr/bin/env bash
# Trains a method from its gin_configs/METHOD/synthetic_shapes.gin, exports step 0
# (random init) and the end, and probes both linearly on block3 and pre_logits (as the
# non-contrastive methods' docs/reports/noncontrastive/run.sh does).
# Usage: bash docs/reports/pretext/run.sh METHOD [STEPS] [OUT] [SEED] [GIN_BINDING ...]
set -euo pipefail
method=$1
steps=${2:-1000}
out=${3:-runs/$method}
seed=${4:-0}
shift $(( $# < 4 ? $# : 4 ))
extra=()
for binding in "$@"; do extra+=(--gin_bindings="$binding"); done
rm -rf "$out"
mkdir -p "$(dirname "$out")"
start=$(date +%s)
keras-ssl-train --gin_file="gin_configs/$method/synthetic_shapes.gin" --model_dir="$out" \
  --gin_bindings="keras_ssl.train.train_steps = $steps" \
  --gin_bindings="keras_ssl.train.seed = $seed" "${extra[@]}" > "$out.train.log" 2>&1
keras-ssl-export --model_dir="$out" --step=0 > /dev/null
keras-ssl-eval --saved_model="$out/export/step_0" --saved_model="$out/export/step_$steps" \
  --dataset=synthetic_shapes/TCV- --layers=block3,pre_logits \
  --max_train_examples=2000 --max_test_examples=1000 --output="$out/eval" > "$out.eval.log" 2>&1
echo "$method (seed $seed): $(( $(date +%s) - start )) s"
grep "^step $steps/" "$out.train.log" || true
cat "$out/eval/results.md"
