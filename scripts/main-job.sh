#!/usr/bin/env bash
# The main job: fine-tune all-MiniLM-L6-v2 on Banking77 (77 intents) for 3 epochs on the
# CPU, evaluate on the 3,080-example test set, keep the best checkpoint, export ONNX and
# classify two questions with it. Output: runs/banking77/ (a Hugging Face model folder,
# eval_results.json, training_log.jsonl, report.html, onnx/model.onnx).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/banking77}"
node dist/src/cli/main.js train \
  --model .cache/models/all-MiniLM-L6-v2 \
  --train data/banking77/train.csv --eval data/banking77/test.csv \
  --text-column text --label-column category \
  --output "$out" --overwrite-output-dir --epochs 3 --batch-size 16 --learning-rate 2e-4 --warmup-ratio 0.1
node dist/src/cli/main.js export --model "$out"
printf 'I still have not received my new card\nhow do I top up with apple pay?\n' |
  node dist/src/cli/main.js predict --model "$out" --input - --backend onnx --top-k 3
echo "report: $out/report.html"
