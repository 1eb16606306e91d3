// The exported folder as transformers.js (v4, offline) loads it: the
// text-classification pipeline on all-MiniLM-L6-v2 + the fixture head must give
// softmax(HF logits) from test/fixtures/minilm-head within 1e-4, top label included.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { env, pipeline } from '@huggingface/transformers';
import { loadModelFolder, saveModelFolder } from '../src/io/model-folder.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { exportModelFolder } from '../src/onnx/folder.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const minilmDir = join(root, '.cache/models/all-MiniLM-L6-v2');
const headDir = join(root, 'test/fixtures/minilm-head');

interface SentencesFixture {
  tokenizer_call: { max_length: number };
  sentences: Array<{ text: string; attention_mask: number[] }>;
  logits: number[][];
}

let tmp: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-tjs-'));
  // A fine-tuned folder as nodetune saves it, then `nodetune export` on it.
  const { config, weights } = await loadModelFolder(minilmDir, { num_labels: 5 });
  for (const [k, t] of (await readSafetensors(join(headDir, 'head.safetensors'))).tensors) weights.set(k, t.data as Float32Array);
  await saveModelFolder(join(tmp, 'minilm-head'), { config, weights, tokenizerFrom: minilmDir });
  await exportModelFolder(join(tmp, 'minilm-head'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function softmax(row: number[]): number[] {
  const m = Math.max(...row);
  const e = row.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

test('exported folder has the transformers.js layout', () => {
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'onnx/model.onnx']) {
    assert.ok(existsSync(join(tmp, 'minilm-head', f)), `${f} missing`);
  }
});

test('transformers.js text-classification pipeline reproduces softmax(HF logits) within 1e-4', async (t) => {
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = tmp;
  const fixture = JSON.parse(readFileSync(join(headDir, 'sentences.json'), 'utf8')) as SentencesFixture;
  // The fixture truncated at max_length 128; transformers.js truncates at
  // model_max_length (512), so a sentence HF cut short is not comparable.
  const cut = fixture.tokenizer_call.max_length;
  const rows = fixture.sentences.map((s, i) => ({ ...s, i })).filter((s) => s.attention_mask.reduce((a, b) => a + b, 0) < cut);
  assert.equal(rows.length, fixture.sentences.length - 1);
  const classify = await pipeline('text-classification', 'minilm-head', { dtype: 'fp32' });
  try {
    const out = (await classify(
      rows.map((r) => r.text),
      { top_k: 5 },
    )) as unknown as Array<Array<{ label: string; score: number }>>;
    assert.equal(out.length, rows.length);
    let worst = 0;
    rows.forEach((r, n) => {
      const probs = softmax(fixture.logits[r.i]);
      const best = probs.indexOf(Math.max(...probs));
      assert.equal(out[n][0].label, `LABEL_${best}`, `top label of sentence ${r.i} ${JSON.stringify(r.text)}`);
      assert.equal(out[n].length, 5);
      for (const { label, score } of out[n]) worst = Math.max(worst, Math.abs(score - probs[Number(label.slice(6))]));
    });
    t.diagnostic(`max |Δ score| transformers.js vs softmax(HF logits): ${worst.toExponential(2)}`);
    assert.ok(worst < 1e-4, `max |Δ score| ${worst}`);
  } finally {
    await classify.dispose();
  }
});

test('external data: a folder exported with model.onnx_data runs in transformers.js with the same scores', async () => {
  env.allowRemoteModels = false;
  env.localModelPath = tmp;
  const result = await exportModelFolder(join(tmp, 'minilm-head'), { output: join(tmp, 'minilm-ext'), externalDataThreshold: 0 });
  assert.equal(result.externalDataPath, join(tmp, 'minilm-ext', 'onnx', 'model.onnx_data'));
  const config = JSON.parse(readFileSync(join(tmp, 'minilm-ext', 'config.json'), 'utf8'));
  assert.deepEqual(config['transformers.js_config'], { use_external_data_format: { 'model.onnx': 1 } });
  const fixture = JSON.parse(readFileSync(join(headDir, 'sentences.json'), 'utf8')) as SentencesFixture;
  const classify = await pipeline('text-classification', 'minilm-ext', { dtype: 'fp32' });
  try {
    const out = (await classify(fixture.sentences.slice(0, 3).map((s) => s.text))) as unknown as Array<{ label: string; score: number }>;
    out.forEach((p, i) => {
      const probs = softmax(fixture.logits[i]);
      const best = probs.indexOf(Math.max(...probs));
      assert.equal(p.label, `LABEL_${best}`);
      assert.ok(Math.abs(p.score - probs[best]) < 1e-4);
    });
  } finally {
    await classify.dispose();
  }
  // In place: an external export marks config.json, an inline one unmarks it and drops the data file.
  const folder = join(tmp, 'minilm-head');
  const marker = () => JSON.parse(readFileSync(join(folder, 'config.json'), 'utf8'))['transformers.js_config'];
  await exportModelFolder(folder, { externalDataThreshold: 0 });
  assert.deepEqual(marker(), { use_external_data_format: { 'model.onnx': 1 } });
  await exportModelFolder(folder);
  assert.equal(marker(), undefined);
  assert.equal(existsSync(join(folder, 'onnx', 'model.onnx_data')), false);
});
