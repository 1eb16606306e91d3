#!/usr/bin/env bash
# The tool-calling job: SmolLM2-135M-Instruct fine-tuned with LoRA on 200 of the 300
# glaive-toolcall-demo conversations (ShareGPT; tools rendered the Hermes way, since SmolLM2's
# chat template has none), then each function call of the 100 held-out conversations generated
# from the conversation before it and scored — parseable-call rate, function-name accuracy,
# exact-arguments accuracy — for the base model and the fine-tuned one, on the same file.
# Output: runs/glaive-toolcall/ (the run) and runs/glaive-toolcall-base/ (the base's scores).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/glaive-toolcall}"
data="${out}-data"
model=.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
start=$(date +%s)
node scripts/glaive-toolcall-split.mjs --out "$data" --held-out 100
node dist/src/cli/main.js eval --model "$model" --data "$data/heldout.jsonl" --no-loss \
  --max-new-tokens 96 --generation-batch-size 16 --threads 2 --output "${out}-base" > /dev/null
node dist/src/cli/main.js sft --model "$model" \
  --train "$data/train.jsonl" --eval "$data/heldout.jsonl" --output "$out" --overwrite-output-dir \
  --lora-r 16 --lora-alpha 32 --lora-layers "${LAYERS:-15-29}" --max-length 1024 \
  --epochs "${EPOCHS:-2}" --batch-size 4 --learning-rate "${LR:-1e-3}" \
  --eval-strategy no --max-new-tokens 96 --generation-batch-size 16 --threads 2 --logging-steps 10
echo "main:toolcall took $(( $(date +%s) - start )) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
node -e "
const b = require('./${out}-base/eval_results.json'), f = require('./$out/eval_results.json');
const pct = (x) => (100 * x).toFixed(1) + '%';
for (const k of ['parseable_call_rate', 'function_name_accuracy', 'arguments_accuracy', 'exact_match']) console.log(k.padEnd(24), 'base', pct(b[k]).padStart(6), ' fine-tuned', pct(f[k]).padStart(6));
"
