#!/usr/bin/env bash
# The LLM main job: SmolLM2-135M-Instruct fine-tuned with LoRA on Banking77 cast as chat (a short
# fixed system prompt, the customer's message as the user turn, the intent label as the assistant
# turn), then every one of the 3,080 test messages answered by greedy generation constrained to
# the 77 labels and scored by exact match. Output: runs/banking77-llm/ (PEFT adapter, llama.cpp
# LoRA GGUF, eval_results.json whose exact_match is the score, eval_generations.jsonl,
# training_log.jsonl, report.html). `nodetune serve --model runs/banking77-llm` serves it.
#
# Settings (see README, "The LLM main job", for how they were chosen): PER_LABEL training
# messages per intent (stratified, seeded), LoRA r 16 / alpha 32 on all linear layers of the top
# LAYERS decoder layers only (backward stops there), 1 epoch at lr 3e-3, batch 16. PRECISION=bf16
# holds the frozen base in bf16 (CPUs with AMX-BF16 or AVX512_BF16; see README, "LLMs").
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/banking77-llm}"
data="${out}-data"
PER_LABEL="${PER_LABEL:-80}"
LAYERS="${LAYERS:-15-29}"
PRECISION="${PRECISION:-fp32}"
start=$(date +%s)
node scripts/banking77-chat.mjs --out "$data" --per-label "$PER_LABEL"
node dist/src/cli/main.js sft \
  --model .cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
  --train "$data/train.jsonl" --eval "$data/test.jsonl" --output "$out" --overwrite-output-dir \
  --lora-r 16 --lora-alpha 32 --lora-layers "$LAYERS" \
  --epochs 1 --batch-size 16 --learning-rate 3e-3 --max-length 128 \
  --eval-strategy no --max-eval-samples 200 --choices-from-labels --generation-batch-size 32 \
  --precision "$PRECISION" --threads 2 --logging-steps 25
echo "main:llm took $(( $(date +%s) - start )) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg)); exact match: $(node -e "console.log(require('./$out/eval_results.json').exact_match)")"
echo "report: $out/report.html"
