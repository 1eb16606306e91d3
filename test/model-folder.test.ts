/**
 * Hugging Face model folders: key mapping (prefix / no prefix / legacy
 * gamma-beta / ignored heads and buffers), transformers' newly-initialised
 * report, config validation, and a save → load round trip. References: the
 * real all-MiniLM-L6-v2 checkpoint (bare BertModel) and the tiny-bert fixture
 * written by transformers' save_pretrained (scripts/reference/tiny_bert.py).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  formatNewlyInitializedMessage,
  loadModelFolder,
  readSafetensors,
  saveModelFolder,
  writeSafetensors,
  type TensorToWrite,
} from '../src/io/index.js';
import { assertModelFolder, readModelConfigJson } from '../src/io/model-folder.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MINILM = join(ROOT, '.cache/models/all-MiniLM-L6-v2');
const TINY = join(ROOT, 'test/fixtures/tiny-bert');

let tmp = '';
test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-mf-'));
});
test.after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function requireModel(): void {
  assert.ok(existsSync(join(MINILM, 'model.safetensors')), `all-MiniLM-L6-v2 missing at ${MINILM}: run scripts/fetch-model.sh`);
}

function sameBytes(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** vocab.txt of `n` tokens with BERT's special tokens, so a tiny model folder has a tokenizer. */
function tinyVocab(n: number): string {
  const toks = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', ...'abcdefghijklmnopqrstuvwxyz'];
  while (toks.length < n) toks.push(`tok${toks.length}`);
  return `${toks.join('\n')}\n`;
}

/**
 * A folder with the tiny-bert config (optionally patched) and the tiny-bert
 * checkpoint with its keys transformed by `edit` (return null to drop a key).
 */
async function tinyFolder(
  name: string,
  edit: (key: string) => string | null = (k) => k,
  patchConfig: Record<string, unknown> = {},
  extra: Record<string, TensorToWrite> = {},
): Promise<string> {
  const dir = join(tmp, name);
  const { tensors } = await readSafetensors(join(TINY, 'model.safetensors'));
  const out = new Map<string, TensorToWrite>();
  for (const [k, t] of tensors) {
    const nk = edit(k);
    if (nk !== null) out.set(nk, { shape: t.shape, data: t.data });
  }
  for (const [k, t] of Object.entries(extra)) out.set(k, t);
  const config = { ...JSON.parse(await readFile(join(TINY, 'config.json'), 'utf8')), ...patchConfig };
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  await writeFile(join(dir, 'vocab.txt'), tinyVocab(config.vocab_size));
  await writeSafetensors(join(dir, 'model.safetensors'), out, { format: 'pt' });
  return dir;
}

async function tinyOriginal(): Promise<Map<string, Float32Array>> {
  const { tensors } = await readSafetensors(join(TINY, 'model.safetensors'));
  return new Map([...tensors].map(([k, t]) => [k, t.data as Float32Array]));
}

test('all-MiniLM-L6-v2 (bare BertModel): 103 weights mapped, classifier newly initialised, position_ids unused', async () => {
  requireModel();
  const m = await loadModelFolder(MINILM);
  const raw = (await readSafetensors(join(MINILM, 'model.safetensors'))).tensors;
  assert.equal(m.config.num_labels, 2);
  assert.equal(m.weights.size, 105);
  assert.deepEqual(m.newlyInitialized, ['classifier.bias', 'classifier.weight']);
  assert.deepEqual(m.unused, ['embeddings.position_ids']);
  let mapped = 0;
  for (const [key, w] of m.weights) {
    if (key.startsWith('classifier.')) continue;
    assert.ok(key.startsWith('bert.'), key);
    assert.ok(sameBytes(w, raw.get(key.slice(5))!.data as Float32Array), `${key} differs from the checkpoint`);
    mapped++;
  }
  assert.equal(mapped, 103);
  assert.equal(
    formatNewlyInitializedMessage(m.folder, m.newlyInitialized),
    `Some weights of BertForSequenceClassification were not initialized from the model checkpoint at ${MINILM} and are newly initialized: ` +
      "['classifier.bias', 'classifier.weight']\nYou should probably TRAIN this model on a down-stream task to be able to use it for predictions and inference.",
  );
  assert.equal(m.tokenizer.maxPositionEmbeddings, 512);
});

test('new classifier: N(0, initializer_range) weight, zero bias, reproducible from the seed', async () => {
  requireModel();
  const a = await loadModelFolder(MINILM, { num_labels: 77, seed: 7 });
  const b = await loadModelFolder(MINILM, { num_labels: 77, seed: 7 });
  const c = await loadModelFolder(MINILM, { num_labels: 77, seed: 8 });
  const w = a.weights.get('classifier.weight')!;
  assert.equal(w.length, 77 * 384);
  assert.ok(a.weights.get('classifier.bias')!.every((v) => v === 0));
  const mean = w.reduce((s, v) => s + v, 0) / w.length;
  const std = Math.sqrt(w.reduce((s, v) => s + (v - mean) ** 2, 0) / w.length);
  // 29568 samples: the standard error of the mean is 1.2e-4, of the std about 0.4%.
  assert.ok(Math.abs(mean) < 6e-4, `mean ${mean}`);
  assert.ok(Math.abs(std / 0.02 - 1) < 0.03, `std ${std}`);
  assert.ok(sameBytes(w, b.weights.get('classifier.weight')!));
  assert.ok(!sameBytes(w, c.weights.get('classifier.weight')!));
  assert.deepEqual(a.config.id2label!['76'], 'LABEL_76');
});

test('load → save → load gives identical tensors, config and tokenizer files', async () => {
  requireModel();
  const id2label = { 0: 'card_arrival', 1: 'top_up_failed', 2: 'lost_or_stolen_card' };
  const a = await loadModelFolder(MINILM, { id2label, seed: 3 });
  const out = join(tmp, 'saved');
  await saveModelFolder(out, { config: a.config, weights: a.weights, tokenizerFrom: a.folder });
  assert.deepEqual((await readdir(out)).sort(), ['config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt']);
  const b = await loadModelFolder(out);
  assert.deepEqual(b.newlyInitialized, []);
  assert.deepEqual(b.unused, []);
  assert.deepEqual([...b.weights.keys()], [...a.weights.keys()]);
  for (const [k, w] of a.weights) assert.ok(sameBytes(w, b.weights.get(k)!), k);
  assert.deepEqual(b.config, { ...a.config, problem_type: 'single_label_classification' });
  for (const f of ['tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json']) {
    assert.ok((await readFile(join(out, f))).equals(await readFile(join(MINILM, f))), f);
  }
  const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
  assert.deepEqual(cfg.architectures, ['BertForSequenceClassification']);
  assert.equal(cfg.model_type, 'bert');
  assert.equal(cfg.problem_type, 'single_label_classification');
  assert.deepEqual(cfg.id2label, { '0': 'card_arrival', '1': 'top_up_failed', '2': 'lost_or_stolen_card' });
  assert.deepEqual(cfg.label2id, { card_arrival: 0, top_up_failed: 1, lost_or_stolen_card: 2 });
  const st = await readSafetensors(join(out, 'model.safetensors'));
  assert.deepEqual(st.metadata, { format: 'pt' }); // transformers refuses safetensors without it
  assert.deepEqual(st.tensors.get('classifier.weight')!.shape, [3, 384]);
  assert.deepEqual(b.tokenizer.encode('Where is my card?').input_ids, a.tokenizer.encode('Where is my card?').input_ids);
});

test('model_type other than bert is refused, naming the type and the file', async () => {
  const dir = await tinyFolder('roberta', (k) => k, { model_type: 'roberta' });
  await assert.rejects(
    loadModelFolder(dir),
    new RegExp(`^Error: model_type 'roberta' in ${escape(join(dir, 'config.json'))} is not supported \\(supported: bert\\)$`),
  );
});

test('missing required config fields are named', async () => {
  const dir = await tinyFolder('nohidden', (k) => k, { hidden_size: undefined, num_attention_heads: undefined });
  await assert.rejects(loadModelFolder(dir), new RegExp(`${escape(join(dir, 'config.json'))} is missing required field\\(s\\): hidden_size, num_attention_heads`));
});

test('tensor shape that disagrees with the config names the key and both shapes', async () => {
  const bare = await tinyFolder('bare120', (k) => k.replace(/^bert\./, ''), { vocab_size: 120 });
  await assert.rejects(
    loadModelFolder(bare),
    new RegExp(`^Error: ${escape(join(bare, 'model.safetensors'))}: tensor 'embeddings\\.word_embeddings\\.weight' \\(bert\\.embeddings\\.word_embeddings\\.weight\\) has shape \\[100, 32\\] but the config needs \\[120, 32\\]$`),
  );
  const dir = await tinyFolder('vocab120', (k) => k, { vocab_size: 120 });
  await assert.rejects(
    loadModelFolder(dir),
    /tensor 'bert\.embeddings\.word_embeddings\.weight' has shape \[100, 32\] but the config needs \[120, 32\]/,
  );
  const five = await tinyFolder('five', (k) => k);
  await assert.rejects(
    loadModelFolder(five, { num_labels: 3 }),
    /tensor 'classifier\.bias' has shape \[5\] but the config needs \[3\] \(pass num_labels matching the checkpoint\)/,
  );
});

test('a weight holding a NaN is refused, naming the file, the key and the [row, column]', async () => {
  const { tensors } = await readSafetensors(join(TINY, 'model.safetensors'));
  const w = tensors.get('bert.encoder.layer.1.attention.self.value.weight')!;
  const data = Float32Array.from(w.data as Float32Array);
  data[3 * w.shape[1] + 7] = NaN;
  const dir = await tinyFolder('nan', (k) => k, {}, { 'bert.encoder.layer.1.attention.self.value.weight': { shape: w.shape, data } });
  await assert.rejects(
    loadModelFolder(dir),
    new RegExp(`^Error: ${escape(join(dir, 'model.safetensors'))}: tensor 'bert\\.encoder\\.layer\\.1\\.attention\\.self\\.value\\.weight' holds a non-finite value \\(NaN\\) at index ${3 * w.shape[1] + 7} \\[3, 7\\]$`),
  );
});

test('HF-written BertForSequenceClassification (bert. prefix) loads completely', async () => {
  const dir = await tinyFolder('prefixed');
  const m = await loadModelFolder(dir);
  const orig = await tinyOriginal();
  assert.equal(m.config.num_labels, 5);
  assert.deepEqual(m.newlyInitialized, []);
  assert.deepEqual(m.unused, []);
  assert.equal(m.weights.size, orig.size);
  for (const [k, w] of orig) assert.ok(sameBytes(m.weights.get(k)!, w), k);
});

test('no prefix + legacy gamma/beta + cls head: mapped, renamed, reported', async () => {
  const legacy = (k: string) =>
    k.startsWith('classifier.') ? null : k.slice('bert.'.length).replace(/LayerNorm\.weight$/, 'LayerNorm.gamma').replace(/LayerNorm\.bias$/, 'LayerNorm.beta');
  const dir = await tinyFolder('legacy', legacy, {}, { 'cls.predictions.bias': { shape: [100], data: new Float32Array(100) } });
  const raw = (await readSafetensors(join(dir, 'model.safetensors'))).tensors;
  assert.ok(raw.has('embeddings.LayerNorm.gamma') && raw.has('encoder.layer.1.output.LayerNorm.beta'));
  const m = await loadModelFolder(dir, { num_labels: 5 });
  const orig = await tinyOriginal();
  assert.deepEqual(m.newlyInitialized, ['classifier.bias', 'classifier.weight']);
  assert.deepEqual(m.unused, ['cls.predictions.bias']);
  for (const [k, w] of orig) if (!k.startsWith('classifier.')) assert.ok(sameBytes(m.weights.get(k)!, w), k);
});

test('the same weight with and without the prefix is an error', async () => {
  const dir = await tinyFolder('both', (k) => k, {}, { 'pooler.dense.bias': { shape: [32], data: new Float32Array(32) } });
  await assert.rejects(loadModelFolder(dir), /checkpoint has both 'bert\.pooler\.dense\.bias' and 'pooler\.dense\.bias' for bert\.pooler\.dense\.bias/);
});

test('pytorch_model.bin without model.safetensors: only safetensors is read', async () => {
  const dir = await tinyFolder('bin');
  await copyFile(join(dir, 'model.safetensors'), join(dir, 'pytorch_model.bin'));
  await rm(join(dir, 'model.safetensors'));
  await assert.rejects(loadModelFolder(dir), new RegExp(`${escape(dir)}: no model.safetensors; it has pytorch_model.bin, but nodetune reads only safetensors weights`));
});

test('labels: id2label option sets num_labels; disagreeing num_labels is an error', async () => {
  const dir = await tinyFolder('labels', (k) => (k.startsWith('classifier.') ? null : k));
  const m = await loadModelFolder(dir, { id2label: { 0: 'neg', 1: 'pos' } });
  assert.equal(m.config.num_labels, 2);
  assert.deepEqual(m.config.label2id, { neg: 0, pos: 1 });
  const byName = await loadModelFolder(dir, { label2id: { pos: 1, neg: 0 } });
  assert.deepEqual(byName.config.id2label, { '0': 'neg', '1': 'pos' });
  await assert.rejects(loadModelFolder(dir, { num_labels: 3, id2label: { 0: 'neg', 1: 'pos' } }), /num_labels 3 disagrees with the 2 labels/);
  await assert.rejects(loadModelFolder(join(tmp, 'nope')), /model folder .*nope does not exist/);
});

test('a folder without config.json is "not a model folder" (code ENOENT, path as given), suggesting a subfolder that has one', async () => {
  const parent = join(tmp, 'models');
  const inner = await tinyFolder(join('models', 'tiny'));
  const expected = `${parent} is not a model folder: config.json is missing (expected a Hugging Face model folder: config.json, model.safetensors, tokenizer files)`;
  await assert.rejects(loadModelFolder(parent), (e: NodeJS.ErrnoException) => {
    assert.equal(e.message, `${expected}; did you mean ${inner}?`);
    assert.equal(e.code, 'ENOENT');
    assert.equal(e.path, parent);
    return true;
  });
  const empty = join(tmp, 'empty-folder');
  await mkdir(empty);
  await assert.rejects(readModelConfigJson(empty), { message: expected.replace(parent, empty), code: 'ENOENT', path: empty });
  const file = join(inner, 'vocab.txt');
  assert.throws(() => assertModelFolder(file), { message: `${file} is a file, expected a model folder`, code: 'ENOTDIR', path: file });
  // A PEFT adapter (an sft run folder) given where a model belongs: how to load it on its base.
  const adapter = join(tmp, 'an-adapter');
  await mkdir(adapter);
  await writeFile(join(adapter, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', base_model_name_or_path: 'HuggingFaceTB/SmolLM2-135M-Instruct' }));
  const hint = `; it is a PEFT LoRA adapter (adapter_config.json): load its base model HuggingFaceTB/SmolLM2-135M-Instruct with this folder as the LoRA adapter (nodetune generate --model HuggingFaceTB/SmolLM2-135M-Instruct --lora ${adapter})`;
  assert.throws(() => assertModelFolder(adapter), { message: `${expected.replace(parent, adapter)}${hint}`, code: 'ENOENT', path: adapter });
  await writeFile(join(adapter, 'adapter_config.json'), '{ not json');
  assert.throws(() => assertModelFolder(adapter), { message: `${expected.replace(parent, adapter)}${hint.replaceAll('HuggingFaceTB/SmolLM2-135M-Instruct', '<base model>')}` });
});

test('config.json with a JSON syntax error: file, line and column of the culprit', async () => {
  const dir = await tinyFolder('bad-json');
  const cfg = join(dir, 'config.json');
  // Trailing comma (V8 gives a position) and a missing value (V8 gives none: found by the prefix search).
  for (const [text, where, reason] of [
    ['{\n  "model_type": "bert",\n  "hidden_size": 32,\n}\n', '4:1', 'Expected double-quoted property name'],
    ['{\n  "model_type": "bert",\n  "hidden_size": }\n', '3:18', "Unexpected token '}'"],
    ['{"model_type": "bert"', '1:22', "Expected ',' or '}' after property value"],
    ['', '1:1', 'Unexpected end of JSON input'],
  ]) {
    await writeFile(cfg, text);
    await assert.rejects(loadModelFolder(dir), { message: `${cfg}:${where}: invalid JSON: ${reason}` }, JSON.stringify(text));
  }
});
