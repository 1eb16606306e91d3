#!/usr/bin/env node
// The tool-calling job's data: data/glaive-toolcall-demo (300 ShareGPT conversations, read by
// nodetune's own ShareGPT reader) split, seeded, into training conversations and held-out ones.
// The held-out conversations become one eval record per function call — the conversation up to
// the call, with the call as the answer to generate — so every call is scored on its own
// (--all-turns: one record per assistant turn, plain replies too). Both files are written in the OpenAI chat format (messages,
// tool_calls, tool results, tools).
//
//   node scripts/glaive-toolcall-split.mjs --out DIR [--held-out 100] [--seed 42] [--all-turns]
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { readSftFile, mulberry32, shuffleInPlace } from '../dist/src/index.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    'held-out': { type: 'string', default: '100' },
    'all-turns': { type: 'boolean', default: false },
    seed: { type: 'string', default: '42' },
    data: { type: 'string', default: 'data/glaive-toolcall-demo/glaive_toolcall_en_demo.json' },
  },
});
if (!values.out) throw new Error('--out DIR is required');
const records = readSftFile(values.data).records;
const order = records.map((_, i) => i);
shuffleInPlace(order, mulberry32(Number(values.seed)));
const heldOut = order.slice(0, Number(values['held-out'])).sort((a, b) => a - b);
const train = order.slice(Number(values['held-out'])).sort((a, b) => a - b);

const openAi = (messages, tools) => JSON.stringify({
  messages: messages.map((m) => (m.tool_calls
    ? { role: 'assistant', content: m.content || null, tool_calls: m.tool_calls.map((c) => ({ type: 'function', function: { name: c.function.name, arguments: JSON.stringify(c.function.arguments) } })) }
    : { role: m.role, content: m.content })),
  ...(tools ? { tools } : {}),
});
const evalLines = [];
let calls = 0;
for (const i of heldOut) {
  const r = records[i];
  for (const k of r.trainable) {
    if (!values['all-turns'] && !r.messages[k].tool_calls) continue;
    evalLines.push(openAi(r.messages.slice(0, k + 1), r.tools));
    if (r.messages[k].tool_calls) calls++;
  }
}
mkdirSync(values.out, { recursive: true });
writeFileSync(join(values.out, 'train.jsonl'), train.map((i) => openAi(records[i].messages, records[i].tools) + '\n').join(''));
writeFileSync(join(values.out, 'heldout.jsonl'), evalLines.map((l) => l + '\n').join(''));
process.stderr.write(`glaive-toolcall-split: ${train.length} training conversations; ${heldOut.length} held out → ${evalLines.length} answers to generate, ${calls} of them tool calls, in ${values.out}\n`);
