// Classifier on all-MiniLM-L6-v2 + the fixture head (test/fixtures/minilm-head):
// both backends reproduce softmax(HF logits) from raw text (tokenizer included),
// top-k, concurrent callers sharing batches, and the errors users get.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Classifier, type Prediction } from '../src/classifier.js';
import { loadModelFolder, saveModelFolder } from '../src/io/model-folder.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { exportModelFolder } from '../src/onnx/folder.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const minilmDir = join(root, '.cache/models/all-MiniLM-L6-v2');
const headDir = join(root, 'test/fixtures/minilm-head');

interface SentencesFixture {
  tokenizer_call: { max_length: number };
  sentences: Array<{ text: string }>;
  logits: number[][];
}
const fixture = JSON.parse(readFileSync(join(headDir, 'sentences.json'), 'utf8')) as SentencesFixture;
const texts = fixture.sentences.map((s) => s.text);
const maxLength = fixture.tokenizer_call.max_length;

let tmp: string;
let folder: string;
let onnx: Classifier;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-classifier-'));
  folder = join(tmp, 'minilm-head');
  const { config, weights } = await loadModelFolder(minilmDir, { id2label: { 0: 'card', 1: 'top_up', 2: 'fee', 3: 'declined', 4: 'pin' } });
  for (const [k, t] of (await readSafetensors(join(headDir, 'head.safetensors'))).tensors) weights.set(k, t.data as Float32Array);
  await saveModelFolder(folder, { config, weights, tokenizerFrom: minilmDir });
  await exportModelFolder(folder);
  onnx = await Classifier.load(folder, { backend: 'onnx', maxLength });
});
after(async () => {
  await onnx?.dispose();
  await rm(tmp, { recursive: true, force: true });
});

const LABELS = ['card', 'top_up', 'fee', 'declined', 'pin'];

function softmax(row: number[]): number[] {
  const m = Math.max(...row);
  const e = row.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Max |score − softmax(HF logits)| over all labels; asserts order and top label. */
function checkAgainstHF(preds: Prediction[][], indices: number[]): number {
  let worst = 0;
  preds.forEach((p, n) => {
    const probs = softmax(fixture.logits[indices[n]]);
    assert.equal(p[0].label, LABELS[probs.indexOf(Math.max(...probs))], `top label of sentence ${indices[n]}`);
    for (let k = 1; k < p.length; k++) assert.ok(p[k - 1].score >= p[k].score, 'sorted by descending score');
    for (const { label, score } of p) worst = Math.max(worst, Math.abs(score - probs[LABELS.indexOf(label)]));
  });
  return worst;
}

test('onnx backend: raw text → softmax(HF logits) within 1e-4 for all 29 fixture sentences', async (t) => {
  const preds = await onnx.classify(texts, { topK: 5 });
  assert.equal(preds.length, texts.length);
  assert.ok(preds.every((p) => p.length === 5));
  const worst = checkAgainstHF(preds, texts.map((_, i) => i));
  t.diagnostic(`max |Δ score| vs softmax(HF logits): ${worst.toExponential(2)}`);
  assert.ok(worst < 1e-4, `max |Δ score| ${worst}`);
});

test('a single string gives one list; topK defaults to 1 and clamps at num_labels', async () => {
  const one = await onnx.classify(texts[0]);
  assert.equal(one.length, 1);
  assert.ok(checkAgainstHF([one], [0]) < 1e-4);
  const all = await onnx.classify(texts[1], { topK: 50 });
  assert.deepEqual(all.map((p) => p.label).sort(), [...LABELS].sort());
  assert.ok(Math.abs(all.reduce((a, p) => a + p.score, 0) - 1) < 1e-9);
  assert.deepEqual(await onnx.classify([]), []);
  assert.deepEqual(onnx.labels, LABELS);
});

test('concurrent callers share batches and each gets its own texts back', async () => {
  const small = await Classifier.load(folder, { backend: 'onnx', maxLength, batchSize: 4 });
  try {
    // Every third call passes one string, the others a list of one or two texts.
    const calls = Array.from({ length: 40 }, (_, c) => {
      const single = c % 3 === 0;
      const idx = single || c % 2 === 0 ? [c % texts.length] : [c % texts.length, (c * 7 + 3) % texts.length];
      const run = single ? small.classify(texts[idx[0]], { topK: 5 }).then((p) => [p]) : small.classify(idx.map((i) => texts[i]), { topK: 5 });
      return { idx, run };
    });
    for (const { idx, run } of calls) {
      const preds = await run;
      assert.equal(preds.length, idx.length);
      assert.ok(checkAgainstHF(preds, idx) < 1e-4);
    }
  } finally {
    await small.dispose();
  }
});

test('native backend agrees with HF within 1e-4', async (t) => {
  const native = await Classifier.load(folder, { backend: 'native', maxLength, threads: 2 });
  try {
    assert.equal(native.backend, 'native');
    const idx = [0, 6, 9, 11, 14, 24, 28];
    const worst = checkAgainstHF(await native.classify(idx.map((i) => texts[i]), { topK: 5 }), idx);
    t.diagnostic(`max |Δ score| native vs softmax(HF logits): ${worst.toExponential(2)}`);
    assert.ok(worst < 1e-4, `max |Δ score| ${worst}`);
  } finally {
    await native.dispose();
  }
});

test('maxLength reports the length used: the default is max_position_embeddings (512); a larger request is capped there', async () => {
  assert.equal(onnx.maxLength, maxLength, 'an explicit value within the limit is kept');
  const long = `${'my card payment was declined at the shop again today '.repeat(60)}and i need a new pin`;
  const big = await Classifier.load(folder, { maxLength: 10000, threads: 1 });
  const plain = await Classifier.load(folder, { threads: 1 });
  try {
    assert.equal(big.maxLength, 512);
    assert.equal(plain.maxLength, 512);
    // A text of ~600 tokens runs (the position table has 512 rows) and scores as one cut at 512.
    assert.deepEqual(await big.classify(long, { topK: 5 }), await plain.classify(long, { topK: 5 }));
  } finally {
    await big.dispose();
    await plain.dispose();
  }
});

test('errors: missing onnx/model.onnx, bad text, bad topK, bad options, use after dispose', async () => {
  const bare = join(tmp, 'no-onnx');
  await cp(folder, bare, { recursive: true, filter: (src) => !src.includes('/onnx') });
  await assert.rejects(Classifier.load(bare), /onnx\/model\.onnx not found: run `nodetune export --model /);
  await assert.rejects(Classifier.load(folder, { backend: 'tpu' as never }), /backend 'tpu' is unknown/);
  await assert.rejects(Classifier.load(folder, { batchSize: 0 }), /batchSize 0 must be a positive integer/);
  await assert.rejects(onnx.classify(['ok', 42 as unknown as string]), /texts\[1\] is number, expected a string/);
  await assert.rejects(onnx.classify(['ok', 'fine', null as unknown as string]), /^Error: classify: texts\[2\] is null, expected a string$/);
  const notTexts: Array<[unknown, string]> = [[undefined, 'undefined'], [null, 'null'], [123, 'number'], [new Set(['a']), 'Set'], [{ 0: 'a' }, 'object']];
  for (const [input, type] of notTexts) {
    await assert.rejects(
      onnx.classify(input as string),
      { message: `classify: texts must be a string or an array of strings, got ${type}` },
      `classify(${String(input)})`,
    );
  }
  for (const backend of ['onnx', 'native'] as const) {
    for (const threads of [1.5, 0, -2]) {
      await assert.rejects(Classifier.load(folder, { backend, threads }), { message: `Classifier.load: threads ${threads} must be a positive integer` });
    }
  }
  await assert.rejects(onnx.classify('ok', { topK: 0 }), /topK 0 must be a positive integer/);
  const c = await Classifier.load(folder, { maxLength });
  await c.dispose();
  await assert.rejects(c.classify('hello'), /disposed/);
});
