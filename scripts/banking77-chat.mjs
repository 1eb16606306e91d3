#!/usr/bin/env node
// Banking77 (data/banking77/*.csv: text, category) cast as chat for `nodetune sft`: a short fixed
// system prompt, the customer's message as the user turn, the intent label as the assistant turn.
// The training subset is stratified and seeded: the CSV is sorted by label, and taking its first
// rows would teach a handful of intents.
//
//   node scripts/banking77-chat.mjs --out DIR [--per-label N] [--seed 42] [--system TEXT] [--format chat|classifier]
//
// Writes DIR/train.jsonl (N messages per label, or every message without --per-label) and
// DIR/test.jsonl (all 3,080 test messages, in file order). --format classifier writes the same
// subset as {"text", "category"} rows instead, for `nodetune train` (few-shot runs).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { readDataset, mulberry32, shuffleInPlace } from '../dist/src/index.js';

export const SYSTEM_PROMPT = 'Classify the banking customer query by intent.';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    'per-label': { type: 'string' },
    seed: { type: 'string', default: '42' },
    system: { type: 'string', default: SYSTEM_PROMPT },
    data: { type: 'string', default: 'data/banking77' },
    format: { type: 'string', default: 'chat' },
  },
});
if (!['chat', 'classifier'].includes(values.format)) throw new Error(`--format ${values.format}: expected chat or classifier`);
if (!values.out) throw new Error('--out DIR is required');
const seed = Number(values.seed);
const perLabel = values['per-label'] === undefined ? Infinity : Number(values['per-label']);
if (!(perLabel >= 1)) throw new Error(`--per-label ${values['per-label']}: expected a positive integer`);

const row = (e) => (values.format === 'classifier' ? JSON.stringify({ text: e.text, category: e.label }) : chat(e));
const chat = (e) => JSON.stringify({
  messages: [
    { role: 'system', content: values.system },
    { role: 'user', content: e.text.trim() },
    { role: 'assistant', content: e.label },
  ],
});

const train = readDataset(join(values.data, 'train.csv'), { labelColumn: 'category' }).examples;
const byLabel = new Map();
for (const e of train) byLabel.set(e.label, [...(byLabel.get(e.label) ?? []), e]);
const rng = mulberry32(seed);
const picked = [];
for (const label of [...byLabel.keys()].sort()) {
  const list = byLabel.get(label);
  shuffleInPlace(list, rng);
  picked.push(...list.slice(0, perLabel));
}
shuffleInPlace(picked, rng);
const test = readDataset(join(values.data, 'test.csv'), { labelColumn: 'category' }).examples;
mkdirSync(values.out, { recursive: true });
writeFileSync(join(values.out, 'train.jsonl'), picked.map((e) => row(e) + '\n').join(''));
writeFileSync(join(values.out, 'test.jsonl'), test.map((e) => row(e) + '\n').join(''));
process.stderr.write(`banking77-chat: ${picked.length} train (${Number.isFinite(perLabel) ? `${perLabel} per label` : 'all'}), ${test.length} test ${values.format === 'chat' ? 'chats' : 'rows'} in ${values.out}\n`);
