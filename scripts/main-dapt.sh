#!/usr/bin/env bash
# Domain-adaptive pre-training, measured: all-MiniLM-L6-v2 continues pre-training with the
# masked-LM loss on the 10,003 Banking77 training texts (labels unused; the 3,080 test texts are
# never seen), then both it and the original model are fine-tuned on the same few labelled
# messages per intent and scored on all 3,080 test messages. Each few-shot draw (SEEDS) is its own
# stratified sample; fine-tuning runs a fixed number of epochs with no evaluation during training,
# so nothing is selected on the test set. Output: runs/dapt/ (mlm/, one run folder per model and
# seed, summary.json) and a table on stdout.
#
#   bash scripts/main-dapt.sh [out]      (PER_LABEL=10 SEEDS="1 2 3" DAPT_EPOCHS=10 DAPT_LR=1e-4 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/dapt}"
per_label="${PER_LABEL:-10}"
seeds="${SEEDS:-1 2 3}"
dapt_epochs="${DAPT_EPOCHS:-10}"
dapt_lr="${DAPT_LR:-1e-4}"
threads="${THREADS:-2}"
cli=(node dist/src/cli/main.js)
base=.cache/models/all-MiniLM-L6-v2
mkdir -p "$out"

"${cli[@]}" pretrain --model "$base" --train data/banking77/train.csv --text-column text \
  --output "$out/mlm" --overwrite-output-dir --epochs "$dapt_epochs" --batch-size 32 \
  --learning-rate "$dapt_lr" --warmup-ratio 0.06 --weight-decay 0.01 --threads "$threads"

for seed in $seeds; do
  node scripts/banking77-chat.mjs --format classifier --per-label "$per_label" --seed "$seed" --out "$out/data-$seed"
  for model in original dapt; do
    from="$base"
    [ "$model" = dapt ] && from="$out/mlm"
    "${cli[@]}" train --model "$from" --train "$out/data-$seed/train.jsonl" --eval data/banking77/test.csv \
      --text-column text --label-column category --output "$out/$model-$seed" --overwrite-output-dir \
      --epochs 20 --batch-size 16 --learning-rate 2e-4 --warmup-ratio 0.1 --eval-strategy no \
      --seed "$seed" --threads "$threads"
  done
done

node --input-type=module - "$out" "$seeds" <<'EOF'
import { readFileSync, writeFileSync } from 'node:fs';
const [out, seeds] = process.argv.slice(2);
const acc = (run) => JSON.parse(readFileSync(`${out}/${run}/eval_results.json`, 'utf8')).accuracy;
const mlm = JSON.parse(readFileSync(`${out}/mlm/eval_results.json`, 'utf8'));
const rows = seeds.split(/\s+/).filter(Boolean).map((s) => ({ seed: Number(s), original: acc(`original-${s}`), dapt: acc(`dapt-${s}`) }));
const mean = (k) => rows.reduce((a, r) => a + r[k], 0) / rows.length;
const summary = { mlm_eval_loss: mlm.loss, mlm_perplexity: mlm.perplexity, rows, original_mean: mean('original'), dapt_mean: mean('dapt') };
writeFileSync(`${out}/summary.json`, JSON.stringify(summary, null, 1));
const pct = (x) => `${(100 * x).toFixed(2)}%`;
console.log('| few-shot seed | all-MiniLM-L6-v2 | + DAPT on Banking77 texts | difference |');
console.log('|---|---|---|---|');
for (const r of rows) console.log(`| ${r.seed} | ${pct(r.original)} | ${pct(r.dapt)} | ${((r.dapt - r.original) * 100).toFixed(2)} |`);
console.log(`| mean | ${pct(summary.original_mean)} | ${pct(summary.dapt_mean)} | ${((summary.dapt_mean - summary.original_mean) * 100).toFixed(2)} |`);
console.log(`masked-LM eval loss ${mlm.loss.toFixed(4)}, perplexity ${mlm.perplexity.toFixed(2)} (held-out 5% of the training texts)`);
EOF
