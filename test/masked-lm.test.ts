// BertForMaskedLM against Hugging Face transformers (test/fixtures/tiny-bert-mlm, made by
// scripts/reference/tiny_bert_mlm.py in float64): logits, loss, every gradient (the tied
// decoder's share of the word embeddings included) and 3 AdamW steps with a fixed mask; the
// masking collator's statistics; the model folder in and out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Engine, type Batch } from '../src/engine.js';
import { loadModel, saveModel } from '../src/model.js';
import { loadModelFolder } from '../src/io/model-folder.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { maskExample, type MaskingOptions } from '../src/tasks/masked-lm/masking.js';
import { collateMasked } from '../src/tasks/masked-lm/task.js';
import { checkThreeAdamWSteps, fixtureEngine, loadBertFixture, relErr, type BertFixture } from './helpers/tiny-bert-fixture.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const dir = join(root, 'test/fixtures/tiny-bert-mlm');

type Fixture = BertFixture<{
  float32_after3_rel_err: Record<string, number>;
  from_classifier_checkpoint: { missing_keys: string[]; unexpected_keys: string[] };
}>;

const loadFixture = () => loadBertFixture<Fixture['meta']>('tiny-bert-mlm') as Promise<Fixture>;

function makeEngine(f: Fixture): Engine {
  const engine = fixtureEngine(f, { architecture: 'BertForMaskedLM', seed: 7, threads: 2 });
  for (const name of engine.parameterNames()) assert.ok(f.weights.has(name), `fixture lacks ${name}`);
  return engine;
}

test('masked LM: parameters are the checkpoint keys (no pooler, decoder tied to the word embeddings)', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  assert.deepEqual([...engine.parameterNames()].sort(), [...f.weights.keys()].sort());
  assert.deepEqual(engine.parameterShape('cls.predictions.bias'), [100]);
  assert.throws(() => engine.getWeight('cls.predictions.decoder.weight'), /BertForMaskedLM key such as/);
  await engine.dispose();
});

test('masked LM: logits and loss match HF transformers (float64) within 1e-4', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  const { logits, loss } = await engine.forward(f.batch);
  const errLogits = relErr(logits, f.expected.get('logits')!);
  assert.ok(errLogits < 1e-4, `logits rel err ${errLogits}`);
  const ref = f.expected.get('loss')![0];
  assert.ok(Math.abs(loss! - ref) / ref < 1e-4, `loss ${loss} vs ${ref}`);
  const lossOnly = await engine.forward(f.batch, { logits: false });
  assert.equal(lossOnly.loss, loss);
  await engine.dispose();
});

test('masked LM: every gradient matches HF within 1e-4, the padding row of the word embeddings from the decoder only', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  const { loss } = await engine.accumulate(f.batch);
  assert.ok(Math.abs(loss - f.expected.get('loss')![0]) < 1e-5);
  for (const name of engine.parameterNames()) {
    const err = relErr(engine.getGradient(name), f.expected.get(`grad.${name}`)!);
    assert.ok(err < 1e-4, `grad of ${name}: rel err ${err}`);
  }
  // Row 0 ([PAD]) gets nothing from the lookup but all of the tied decoder's part.
  const C = f.config.hidden_size;
  const row0 = engine.getGradient('bert.embeddings.word_embeddings.weight').subarray(0, C);
  const decoderRow0 = f.expected.get('grad_part.cls.predictions.decoder.weight')!.subarray(0, C);
  assert.ok(Math.max(...decoderRow0.map(Math.abs)) > 1e-3, 'the fixture exercises the padding row');
  assert.ok(relErr(row0, decoderRow0) < 1e-4, `padding row rel err ${relErr(row0, decoderRow0)}`);
  await engine.dispose();
});

test('masked LM: 3 AdamW steps (clipped) match torch.optim.AdamW with HF Trainer groups', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  // AdamW's g / sqrt(v) magnifies the round-off of near-zero gradients: torch's own float32 run
  // lands up to 1.1e-4 from float64 on a tensor here, so each tensor may be off by 1e-4 plus twice that.
  await checkThreeAdamWSteps(engine, f.batch, f.meta.optimizer.lr, f.meta.train_log, f.expected, (name) => 1e-4 + 2 * f.meta.float32_after3_rel_err[name]);
  await engine.dispose();
});

test('masked LM: gradient accumulation of two halves (each scaled by its masked-token share) equals one batch', async () => {
  const f = await loadFixture();
  const T = f.batch.seqLen;
  const rows = (b: Batch, r0: number, r1: number): Batch => ({
    input_ids: b.input_ids.slice(r0 * T, r1 * T),
    attention_mask: b.attention_mask!.slice(r0 * T, r1 * T),
    token_type_ids: b.token_type_ids!.slice(r0 * T, r1 * T),
    labels: b.labels!.slice(r0 * T, r1 * T),
    batchSize: r1 - r0,
    seqLen: T,
  });
  const count = (b: Batch) => b.labels!.filter((y) => y !== -100).length;
  const a = rows(f.batch, 0, 1);
  const b = rows(f.batch, 1, 3);
  const total = count(a) + count(b);
  const one = makeEngine(f);
  const two = makeEngine(f);
  await one.accumulate(f.batch);
  await two.accumulate(a, { lossScale: count(a) / total });
  await two.accumulate(b, { lossScale: count(b) / total });
  for (const name of one.parameterNames()) {
    const err = relErr(two.getGradient(name), one.getGradient(name));
    assert.ok(err < 1e-5, `${name}: rel err ${err}`);
  }
  await one.dispose();
  await two.dispose();
});

test('masked LM: bad labels and head options are refused by name', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  const bad = { ...f.batch, labels: f.batch.labels!.slice() };
  bad.labels[3] = 100;
  await assert.rejects(engine.accumulate(bad), /labels\[0\]\[3\] = 100 is out of range: expected a token id in \[0, vocab_size = 100\) or -100/);
  await assert.rejects(engine.accumulate({ ...f.batch, labels: Int32Array.from([1, 2, 3]) }), /labels/);
  await engine.dispose();
  assert.throws(() => new Engine({ config: f.config, architecture: 'BertForMaskedLM', label_smoothing_factor: 0.1 }), /BertForMaskedLM's loss is the plain cross-entropy/);
  assert.throws(() => new Engine({ config: f.config, architecture: 'BertForMaskedLM' as 'BertForMaskedLM', device: 'cuda' }), /cuda|CUDA/);
  assert.throws(() => new Engine({ config: f.config, architecture: 'BertForPreTraining' as 'BertForMaskedLM' }), /options.architecture 'BertForPreTraining' is not supported/);
});

test('masking: 15% of maskable tokens, 80/10/10, never a special token; seeded per (epoch, example)', () => {
  const special = new Set([0, 100, 101, 102, 103]);
  const o: MaskingOptions = { mlm_probability: 0.15, whole_word_mask: false, seed: 42, specialIds: special, maskTokenId: 103, vocabSize: 30522 };
  let maskable = 0;
  let chosen = 0;
  let toMask = 0;
  let unchanged = 0;
  let random = 0;
  let specialChosen = 0;
  for (let i = 0; i < 4000; i++) {
    // [CLS] 30 ordinary tokens [SEP] [PAD] [PAD]: ids 1000.. never equal the mask id
    const ids = [101, ...Array.from({ length: 30 }, (_, k) => 1000 + ((i * 31 + k) % 20000)), 102, 0, 0];
    const m = maskExample({ input_ids: ids, index: i, line: i + 1 }, 3, o);
    maskable += 30;
    for (let t = 0; t < ids.length; t++) {
      if (m.labels[t] === -100) {
        assert.equal(m.input_ids[t], ids[t]);
        continue;
      }
      chosen++;
      if (special.has(ids[t])) specialChosen++;
      assert.equal(m.labels[t], ids[t]);
      if (m.input_ids[t] === 103) toMask++;
      else if (m.input_ids[t] === ids[t]) unchanged++;
      else random++;
    }
    assert.equal(m.masked, m.labels.filter((y) => y !== -100).length);
  }
  assert.equal(specialChosen, 0);
  // 120,000 maskable tokens: the binomial standard deviations are ~0.1% (chosen) and ~0.4-0.7% (the split).
  assert.ok(Math.abs(chosen / maskable - 0.15) < 0.005, `chosen ${chosen / maskable}`);
  assert.ok(Math.abs(toMask / chosen - 0.8) < 0.01, `[MASK] ${toMask / chosen}`);
  assert.ok(Math.abs(random / chosen - 0.1) < 0.01, `random ${random / chosen}`);
  assert.ok(Math.abs(unchanged / chosen - 0.1) < 0.01, `unchanged ${unchanged / chosen}`);
  const e = { input_ids: [101, 5000, 5001, 5002, 5003, 5004, 5005, 5006, 5007, 102], index: 7, line: 8 };
  assert.deepEqual(maskExample(e, 2, o), maskExample(e, 2, o), 'same (seed, epoch, index): same masks');
  const epochs = new Set(Array.from({ length: 20 }, (_, ep) => maskExample(e, ep, o).labels.join(',')));
  assert.ok(epochs.size > 5, 'each epoch masks anew');
});

test('whole-word masking: a chosen word is masked in all its pieces, at ~15% of words', () => {
  const special = new Set([0, 101, 102, 103]);
  // Words of 1-3 pieces: ids >= 20000 are "##" continuations.
  const o: MaskingOptions = {
    mlm_probability: 0.15, whole_word_mask: true, seed: 1, specialIds: special, maskTokenId: 103, vocabSize: 30000, isContinuation: (id) => id >= 20000,
  };
  let words = 0;
  let chosenWords = 0;
  for (let i = 0; i < 3000; i++) {
    const ids = [101];
    const spans: Array<[number, number]> = [];
    for (let w = 0; w < 10; w++) {
      const start = ids.length;
      ids.push(1000 + w);
      for (let p = 0; p < (i + w) % 3; p++) ids.push(20000 + p);
      spans.push([start, ids.length]);
    }
    ids.push(102);
    const m = maskExample({ input_ids: ids, index: i, line: 1 }, 0, o);
    for (const [a, b] of spans) {
      const labelled = Array.from(m.labels.subarray(a, b)).map((y) => y !== -100);
      assert.ok(labelled.every((x) => x === labelled[0]), `word at ${a}-${b} of example ${i} partly masked`);
      words++;
      if (labelled[0]) chosenWords++;
    }
  }
  assert.ok(Math.abs(chosenWords / words - 0.15) < 0.01, `words chosen ${chosenWords / words}`);
});

test('collate: right padding, attention mask, labels -100 on padding', () => {
  const b = collateMasked([
    { input_ids: Int32Array.from([101, 103, 102]), labels: Int32Array.from([-100, 7, -100]), masked: 1 },
    { input_ids: Int32Array.from([101, 102]), labels: Int32Array.from([-100, -100]), masked: 0 },
  ], 0);
  assert.deepEqual([...b.input_ids], [101, 103, 102, 101, 102, 0]);
  assert.deepEqual([...b.attention_mask!], [1, 1, 1, 1, 1, 0]);
  assert.deepEqual([...b.labels!], [-100, 7, -100, -100, -100, -100]);
});

test('model folder: a classifier checkpoint loads as BertForMaskedLM with a new head (HF missing keys), and the MLM folder round-trips', async () => {
  const f = await loadFixture();
  const tmp = await mkdtemp(join(tmpdir(), 'nodetune-mlm-'));
  // The tiny classifier checkpoint, given this fixture's vocabulary so that it is a loadable folder.
  await mkdir(join(tmp, 'classifier'));
  for (const file of ['config.json', 'model.safetensors']) await copyFile(join(root, 'test/fixtures/tiny-bert', file), join(tmp, 'classifier', file));
  await copyFile(join(dir, 'vocab.txt'), join(tmp, 'classifier', 'vocab.txt'));
  const fromClassifier = await loadModelFolder(join(tmp, 'classifier'), { architecture: 'BertForMaskedLM' });
  const hf = f.meta.from_classifier_checkpoint;
  // HF also lists cls.predictions.decoder.bias, the tied alias of cls.predictions.bias.
  assert.deepEqual(fromClassifier.newlyInitialized, hf.missing_keys.filter((k) => k !== 'cls.predictions.decoder.bias'));
  assert.deepEqual(fromClassifier.unused, [...hf.unexpected_keys].sort());
  assert.deepEqual([...fromClassifier.carried.keys()].sort(), ['bert.pooler.dense.bias', 'bert.pooler.dense.weight']);
  assert.ok(fromClassifier.weights.get('cls.predictions.transform.LayerNorm.weight')!.every((x) => x === 1));
  assert.ok(fromClassifier.weights.get('cls.predictions.bias')!.every((x) => x === 0));

  try {
    // The HF masked-LM folder (no pooler, tied keys absent) loads with nothing new, nothing unused.
    const lines: string[] = [];
    const model = await loadModel(dir, { architecture: 'BertForMaskedLM', log: (l) => lines.push(l) });
    assert.deepEqual(model.newlyInitialized, []);
    assert.deepEqual(model.unused, []);
    assert.deepEqual(lines, []);
    await saveModel(model, join(tmp, 'mlm'));
    const cfg = JSON.parse(await readFile(join(tmp, 'mlm', 'config.json'), 'utf8'));
    assert.deepEqual(cfg.architectures, ['BertForMaskedLM']);
    assert.equal(cfg.id2label, undefined);
    const saved = (await readSafetensors(join(tmp, 'mlm', 'model.safetensors'))).tensors;
    assert.deepEqual([...saved.keys()].sort(), [...f.weights.keys()].sort());
    for (const [k, t] of saved) assert.deepEqual(t.data, f.weights.get(k), k);
    await model.engine.dispose();
    // The saved masked LM fine-tunes as a classifier: encoder kept, classifier (and here the pooler) new.
    const cls = await loadModel(join(tmp, 'mlm'), { num_labels: 3, log: () => undefined });
    assert.deepEqual(cls.unused.sort(), ['cls.predictions.bias', 'cls.predictions.transform.LayerNorm.bias', 'cls.predictions.transform.LayerNorm.weight', 'cls.predictions.transform.dense.bias', 'cls.predictions.transform.dense.weight']);
    assert.deepEqual(cls.engine.getWeight('bert.encoder.layer.1.output.dense.weight'), f.weights.get('bert.encoder.layer.1.output.dense.weight'));
    await cls.engine.dispose();
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});
