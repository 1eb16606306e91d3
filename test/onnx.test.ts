// ONNX export checked by onnxruntime-node against Hugging Face transformers:
// test/fixtures/tiny-bert (float64 HF logits of a random 2-layer BERT) and
// test/fixtures/minilm-head (all-MiniLM-L6-v2 + a seeded 5-label head, HF
// float32 logits), plus the graph contract, dynamic axes, padding isolation,
// external data, and the native engine against onnxruntime.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import * as ort from 'onnxruntime-node';
import { registerExport } from '../src/cli/export.js';
import type { BertConfig } from '../src/config.js';
import { Engine } from '../src/engine.js';
import { loadModelFolder, saveModelFolder } from '../src/io/model-folder.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { exportOnnx } from '../src/onnx/export.js';
import { exportModelFolder } from '../src/onnx/folder.js';
import { decodeModel, type ModelProto } from '../src/onnx/schema.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const tinyDir = join(root, 'test/fixtures/tiny-bert');
const minilmHeadDir = join(root, 'test/fixtures/minilm-head');
const minilmDir = join(root, '.cache/models/all-MiniLM-L6-v2');

/** Rows of a (B, T) int batch, as in the fixtures' JSON. */
interface Rows {
  input_ids: number[][];
  attention_mask: number[][];
  token_type_ids: number[][];
}

let tmp: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-onnx-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function floatTensors(path: string): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, t] of (await readSafetensors(path)).tensors) if (t.data instanceof Float32Array) out.set(name, t.data);
  return out;
}

function tinyConfig(): BertConfig {
  const config = JSON.parse(readFileSync(join(tinyDir, 'config.json'), 'utf8')) as BertConfig;
  config.num_labels = Object.keys(config.id2label!).length;
  return config;
}

const tinyRows = (): Rows => JSON.parse(readFileSync(join(tinyDir, 'batch.json'), 'utf8'));

/** Runs an InferenceSession on int rows; returns logits (B, num_labels) flat. */
async function runOrt(session: ort.InferenceSession, rows: Rows): Promise<Float32Array> {
  const B = rows.input_ids.length;
  const T = rows.input_ids[0].length;
  const t = (r: number[][]) => new ort.Tensor('int64', BigInt64Array.from(r.flat(), (v) => BigInt(v)), [B, T]);
  const out = await session.run({
    input_ids: t(rows.input_ids),
    attention_mask: t(rows.attention_mask),
    token_type_ids: t(rows.token_type_ids),
  });
  assert.equal(out.logits.dims.length, 2);
  assert.equal(out.logits.dims[0], B);
  return out.logits.data as Float32Array;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length mismatch');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function row(flat: Float32Array, i: number, L: number): Float32Array {
  return flat.slice(i * L, (i + 1) * L);
}

/** Copies rows b of `rows`, cut or right-padded to length T with (pad id, mask 0, type 0). */
function reshapeRows(rows: Rows, pick: number[], T: number, padId: (b: number, t: number) => number = () => 0): Rows {
  const fit = (r: number[], fill: (t: number) => number) => Array.from({ length: T }, (_, t) => (t < r.length ? r[t] : fill(t)));
  return {
    input_ids: pick.map((b, i) => fit(rows.input_ids[b], (t) => padId(i, t))),
    attention_mask: pick.map((b) => fit(rows.attention_mask[b], () => 0)),
    token_type_ids: pick.map((b) => fit(rows.token_type_ids[b], () => 0)),
  };
}

async function exportTiny(name: string, opts: Parameters<typeof exportOnnx>[2] = {}) {
  const weights = await floatTensors(join(tinyDir, 'model.safetensors'));
  const path = join(tmp, name);
  const result = await exportOnnx({ config: tinyConfig(), weights }, path, opts);
  return { path, result, session: await ort.InferenceSession.create(path) };
}

const tinyExpected = async () => (await floatTensors(join(tinyDir, 'expected.safetensors'))).get('logits')!;

test('tiny-bert opset 17: onnxruntime logits match HF (float64) on a padded batch within 1e-4', async (t) => {
  const { session } = await exportTiny('tiny17.onnx');
  const logits = await runOrt(session, tinyRows());
  const d = maxAbsDiff(logits, await tinyExpected());
  t.diagnostic(`max |Δ logits| onnxruntime vs HF: ${d.toExponential(2)}`);
  assert.ok(d < 1e-4, `max |Δ| ${d}`);
  await session.release();
});

test('tiny-bert opset 20 uses the Gelu operator and matches HF within 1e-4', async () => {
  const { path, session } = await exportTiny('tiny20.onnx', { opset: 20 });
  const model = decodeModel(await readFile(path));
  const ops = new Set(model.graph.node.map((n) => n.op_type));
  assert.ok(ops.has('Gelu') && !ops.has('Erf'), 'opset 20 graph should use Gelu, not the Erf expansion');
  assert.equal(model.ir_version, 9);
  const logits = await runOrt(session, tinyRows());
  assert.ok(maxAbsDiff(logits, await tinyExpected()) < 1e-4);
  await session.release();
});

test('graph contract: int64 dynamic inputs, logits output, LayerNorm epsilon, erf GELU, metadata, IR version', async () => {
  const { path, session } = await exportTiny('contract.onnx');
  await session.release();
  const model: ModelProto = decodeModel(await readFile(path));
  assert.equal(model.ir_version, 8);
  assert.deepEqual(model.opset_import, [{ version: 17 }]);
  assert.equal(model.producer_name, 'nodetune');
  const meta = Object.fromEntries((model.metadata_props ?? []).map((e) => [e.key, e.value]));
  assert.equal(meta.producer, 'nodetune');
  assert.deepEqual(JSON.parse(meta.id2label), tinyConfig().id2label);
  const dims = (v: ModelProto['graph']['input'][number]) =>
    v.type.tensor_type.shape!.dim.map((d) => d.dim_param ?? d.dim_value);
  assert.deepEqual(
    model.graph.input.map((v) => [v.name, v.type.tensor_type.elem_type, dims(v)]),
    ['input_ids', 'attention_mask', 'token_type_ids'].map((n) => [n, 7, ['batch_size', 'sequence_length']]),
  );
  assert.deepEqual(
    model.graph.output.map((v) => [v.name, v.type.tensor_type.elem_type, dims(v)]),
    [['logits', 1, ['batch_size', 5]]],
  );
  const layerNorms = model.graph.node.filter((n) => n.op_type === 'LayerNormalization');
  assert.equal(layerNorms.length, 1 + 2 * 2);
  for (const n of layerNorms) assert.equal(n.attribute!.find((a) => a.name === 'epsilon')!.f, Math.fround(1e-12));
  const ops = model.graph.node.map((n) => n.op_type);
  assert.ok(ops.includes('Erf') && !ops.includes('Gelu'), 'opset 17 expands GELU with Erf');
  assert.ok(ops.includes('Range'), 'position ids come from Range over Shape(input_ids)');
  const word = model.graph.initializer.find((t) => t.name === 'bert.embeddings.word_embeddings.weight')!;
  assert.deepEqual([word.dims, word.data_type, word.raw_data!.byteLength], [[100, 32], 1, 100 * 32 * 4]);
});

test('dynamic axes: batch 1 unpadded and batch 5 at T=11 reproduce the HF fixture rows', async () => {
  const { session } = await exportTiny('dynamic.onnx');
  const expected = await tinyExpected();
  const rows = tinyRows();
  const one = await runOrt(session, reshapeRows(rows, [2], 3));
  assert.ok(maxAbsDiff(one, row(expected, 2, 5)) < 1e-4);
  const pick = [0, 1, 2, 1, 0];
  const five = await runOrt(session, reshapeRows(rows, pick, 11));
  pick.forEach((b, i) => assert.ok(maxAbsDiff(row(five, i, 5), row(expected, b, 5)) < 1e-4, `row ${i}`));
  await session.release();
});

test('padding never leaks: arbitrary ids under attention_mask 0 change logits by < 1e-5', async () => {
  const { session } = await exportTiny('padding.onnx');
  const rows = tinyRows();
  const unpadded = await runOrt(session, reshapeRows(rows, [1], 5));
  const padded = await runOrt(session, reshapeRows(rows, [1, 1], 40, (b, t) => (b === 0 ? 0 : (t * 37) % 100)));
  assert.ok(maxAbsDiff(unpadded, row(padded, 0, 5)) < 1e-5);
  assert.ok(maxAbsDiff(unpadded, row(padded, 1, 5)) < 1e-5);
  await session.release();
});

test('external data: a forced threshold writes page-aligned model.onnx_data that onnxruntime loads', async () => {
  const inline = await exportTiny('inline.onnx');
  const ext = await exportTiny('external.onnx', { externalDataThreshold: 0 });
  assert.equal(ext.result.externalDataPath, join(tmp, 'external.onnx_data'));
  assert.equal(inline.result.externalDataPath, undefined);
  const model = decodeModel(await readFile(ext.path));
  const external = model.graph.initializer.filter((t) => t.data_location === 1);
  const large = model.graph.initializer.filter((t) => t.dims.length === 2 && t.dims[0] * t.dims[1] * 4 >= 1024);
  assert.deepEqual(external.map((t) => t.name), large.map((t) => t.name), 'every tensor of ≥ 1 KiB goes external');
  assert.equal(external.length, 2 + 2 * 6 + 1); // word + position embeddings, 6 matrices per layer, pooler
  const dataBytes = (await stat(ext.result.externalDataPath!)).size;
  for (const t of external) {
    const kv = Object.fromEntries(t.external_data!.map((e) => [e.key, e.value]));
    assert.equal(kv.location, 'external.onnx_data');
    assert.equal(Number(kv.offset) % 4096, 0);
    assert.equal(Number(kv.length), t.dims.reduce((a, b) => a * b, 1) * 4);
    assert.ok(Number(kv.offset) + Number(kv.length) <= dataBytes);
    assert.equal(t.raw_data, undefined);
  }
  assert.ok(ext.result.modelBytes < inline.result.modelBytes / 4);
  const a = await runOrt(inline.session, tinyRows());
  const b = await runOrt(ext.session, tinyRows());
  assert.equal(maxAbsDiff(a, b), 0);
  assert.ok(maxAbsDiff(b, await tinyExpected()) < 1e-4);
  await Promise.all([inline.session.release(), ext.session.release()]);
  // Re-exporting inline removes the stale data file.
  await exportTiny('external.onnx');
  assert.equal(existsSync(join(tmp, 'external.onnx_data')), false);
});

test('export errors name the tensor, config field or opset', async () => {
  const weights = await floatTensors(join(tinyDir, 'model.safetensors'));
  const out = join(tmp, 'bad.onnx');
  const missing = new Map(weights);
  missing.delete('bert.encoder.layer.1.output.dense.bias');
  await assert.rejects(exportOnnx({ config: tinyConfig(), weights: missing }, out), /'bert\.encoder\.layer\.1\.output\.dense\.bias' is missing/);
  const short = new Map(weights).set('classifier.weight', new Float32Array(7));
  await assert.rejects(exportOnnx({ config: tinyConfig(), weights: short }, out), /'classifier\.weight' has 7 elements, expected shape \[5,32\]/);
  await assert.rejects(exportOnnx({ config: { ...tinyConfig(), hidden_act: 'relu' }, weights }, out), /hidden_act 'relu'/);
  for (const opset of [16, 24]) {
    await assert.rejects(exportOnnx({ config: tinyConfig(), weights }, out, { opset }), { message: `opset ${opset} is not supported (expected 17-23)` });
  }
  assert.equal(existsSync(out), false);
  // exportModelFolder checks the opset and the output before loading: the folder here does not even exist.
  await assert.rejects(exportModelFolder(join(tmp, 'no-model'), { opset: 16 }), { message: 'opset 16 is not supported (expected 17-23)' });
  const file = join(tmp, 'a-file.txt');
  await writeFile(file, 'x');
  await assert.rejects(exportModelFolder(join(tmp, 'no-model'), { output: file }), { message: `${file} is a file, expected a folder`, code: 'ENOTDIR', path: file });
});

/** all-MiniLM-L6-v2 with the fixture's head, as loadModelFolder gives it. */
async function minilmWithHead() {
  const { config, weights } = await loadModelFolder(minilmDir, { num_labels: 5 });
  for (const [k, v] of await floatTensors(join(minilmHeadDir, 'head.safetensors'))) weights.set(k, v);
  return { config, weights };
}

interface SentencesFixture {
  sentences: Array<{ text: string; input_ids: number[]; attention_mask: number[]; token_type_ids: number[] }>;
}

const minilmRows = (): Rows => {
  const s = (JSON.parse(readFileSync(join(minilmHeadDir, 'sentences.json'), 'utf8')) as SentencesFixture).sentences;
  return { input_ids: s.map((x) => x.input_ids), attention_mask: s.map((x) => x.attention_mask), token_type_ids: s.map((x) => x.token_type_ids) };
};

/**
 * The fixture's 29 rows are padded to T=128 for one long sentence; running
 * them as length-sorted groups of 8, each cut to its longest row, keeps
 * padding in every batch at a quarter of the compute (2-core machines).
 */
function lengthGroups(rows: Rows, size = 8): number[][] {
  const len = (b: number) => rows.attention_mask[b].reduce((a, m) => a + m, 0);
  const order = rows.input_ids.map((_, b) => b).sort((a, b) => len(a) - len(b));
  const groups: number[][] = [];
  for (let i = 0; i < order.length; i += size) groups.push(order.slice(i, i + size));
  return groups.map((g) => g.sort((a, b) => a - b));
}

/** Runs `forward` on each length group; returns logits (N, L) in fixture row order. */
async function runGrouped(rows: Rows, L: number, forward: (rows: Rows) => Promise<Float32Array>): Promise<Float32Array> {
  const out = new Float32Array(rows.input_ids.length * L);
  for (const group of lengthGroups(rows)) {
    const T = Math.max(...group.map((b) => rows.attention_mask[b].reduce((a, m) => a + m, 0)));
    const logits = await forward(reshapeRows(rows, group, T));
    group.forEach((b, i) => out.set(row(logits, i, L), b * L));
  }
  return out;
}

let minilmOnnx: Promise<{ model: Awaited<ReturnType<typeof minilmWithHead>>; logits: Float32Array }> | undefined;

/** MiniLM + head exported once for this file, and its onnxruntime logits on the fixture rows. */
function exportedMinilm() {
  minilmOnnx ??= (async () => {
    const model = await minilmWithHead();
    const path = join(tmp, 'minilm.onnx');
    await exportOnnx(model, path);
    const session = await ort.InferenceSession.create(path);
    const logits = await runGrouped(minilmRows(), 5, (r) => runOrt(session, r));
    await session.release();
    return { model, logits };
  })();
  return minilmOnnx;
}

test('all-MiniLM-L6-v2 + head: onnxruntime logits match HF within 1e-4 on 29 sentences (padded groups)', async (t) => {
  const { logits } = await exportedMinilm();
  const expected = (await floatTensors(join(minilmHeadDir, 'logits.safetensors'))).get('logits')!;
  const d = maxAbsDiff(logits, expected);
  t.diagnostic(`max |Δ logits| onnxruntime vs HF: ${d.toExponential(2)}`);
  assert.ok(d < 1e-4, `max |Δ| ${d}`);
});

/** Native engine forward of `rows` (dropout off). */
async function nativeLogits(model: { config: BertConfig; weights: Map<string, Float32Array> }, rows: Rows, L: number): Promise<Float32Array> {
  const engine = new Engine({ config: model.config, threads: 2 });
  for (const [k, v] of model.weights) engine.setWeight(k, v);
  const flat = (r: number[][]) => Int32Array.from(r.flat());
  try {
    return await runGrouped(rows, L, async (r) => {
      const out = await engine.forward({
        input_ids: flat(r.input_ids),
        attention_mask: flat(r.attention_mask),
        token_type_ids: flat(r.token_type_ids),
        batchSize: r.input_ids.length,
        seqLen: r.input_ids[0].length,
      });
      return out.logits;
    });
  } finally {
    await engine.dispose();
  }
}

test('native engine forward matches onnxruntime within 1e-4 (tiny-bert and MiniLM + head)', async (t) => {
  const tiny = { config: tinyConfig(), weights: await floatTensors(join(tinyDir, 'model.safetensors')) };
  const { session } = await exportTiny('native-tiny.onnx');
  const tinyOrt = await runOrt(session, tinyRows());
  await session.release();
  const engine = new Engine({ config: tiny.config, threads: 2 });
  for (const [k, v] of tiny.weights) engine.setWeight(k, v);
  const flat = (r: number[][]) => Int32Array.from(r.flat());
  const rows = tinyRows();
  const { logits } = await engine.forward({
    input_ids: flat(rows.input_ids),
    attention_mask: flat(rows.attention_mask),
    token_type_ids: flat(rows.token_type_ids),
    batchSize: 3,
    seqLen: 7,
  });
  await engine.dispose();
  assert.ok(maxAbsDiff(logits, tinyOrt) < 1e-4, `tiny: max |Δ| ${maxAbsDiff(logits, tinyOrt)}`);

  const minilm = await exportedMinilm();
  const native = await nativeLogits(minilm.model, minilmRows(), 5);
  const d = maxAbsDiff(native, minilm.logits);
  t.diagnostic(`max |Δ logits| native vs onnxruntime: tiny ${maxAbsDiff(logits, tinyOrt).toExponential(2)}, MiniLM ${d.toExponential(2)}`);
  assert.ok(d < 1e-4, `MiniLM: max |Δ| native vs onnxruntime ${d}`);
});

/** Runs `nodetune export ...args` in-process, capturing stdout. */
async function cliExport(args: string[]): Promise<string> {
  const program = new Command('nodetune').exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
  registerExport(program);
  let out = '';
  const write = process.stdout.write;
  process.stdout.write = ((chunk: string) => ((out += chunk), true)) as typeof process.stdout.write;
  try {
    await program.parseAsync(['export', ...args], { from: 'user' });
  } finally {
    process.stdout.write = write;
  }
  return out;
}

test('nodetune export: writes onnx/model.onnx + config and tokenizer files into --output; refuses an untrained head', async () => {
  const { model, logits } = await exportedMinilm();
  const src = join(tmp, 'cli-model');
  const dest = join(tmp, 'cli-out');
  await saveModelFolder(src, { ...model, tokenizerFrom: minilmDir });
  const printed = await cliExport(['--model', src, '--output', dest, '--opset', '18']);
  assert.match(printed, /onnx\/model\.onnx: opset 18, IR version 8/);
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'onnx/model.onnx']) {
    assert.ok(existsSync(join(dest, f)), `${f} missing`);
  }
  assert.equal(existsSync(join(dest, 'model.safetensors')), false);
  const session = await ort.InferenceSession.create(join(dest, 'onnx/model.onnx'));
  const rows = minilmRows();
  const group = lengthGroups(rows)[0];
  const T = Math.max(...group.map((b) => rows.attention_mask[b].reduce((a, m) => a + m, 0)));
  const got = await runOrt(session, reshapeRows(rows, group, T));
  await session.release();
  group.forEach((b, i) => assert.ok(maxAbsDiff(row(got, i, 5), row(logits, b, 5)) < 1e-5));
  await assert.rejects(cliExport(['--model', minilmDir, '--output', join(tmp, 'x')]), /has no classifier\.bias, classifier\.weight; fine-tune the model before exporting/);
  await assert.rejects(cliExport(['--model', src, '--opset', 'abc']), (e: unknown) => e instanceof CommanderError && /'abc' is not an integer/.test(e.message));
  await assert.rejects(cliExport(['--model', src, '--opset', '16']), { message: '--opset 16: expected 17-23' });
  const file = join(tmp, 'output-file.txt');
  await writeFile(file, 'x');
  await assert.rejects(cliExport(['--model', src, '--output', file]), { message: `--output ${file} is a file, expected a folder` });
  await assert.rejects(cliExport(['--model', src, '--output', join(file, 'sub')]), { message: `--output ${join(file, 'sub')}: ${file} is a file, expected a folder` });
});
