// The native engine against Hugging Face transformers on a small random BERT
// (test/fixtures/tiny-bert, made by scripts/reference/tiny_bert.py in float64),
// plus its contracts: gradient accumulation, dropout determinism, freezing,
// the event loop during a step, and the errors bad batches get.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkDevice, Engine, firstNonFinite, loadAddon, type Batch } from '../src/engine.js';
import { firstNonFiniteIndex } from '../src/io/finite.js';
import type { BertConfig } from '../src/config.js';
import { checkThreeAdamWSteps, fixtureEngine, loadTinyBertFixture, relErr, tensors, type TinyBertFixture } from './helpers/tiny-bert-fixture.js';
import { loadModel } from '../src/model.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

type Fixture = TinyBertFixture;
const loadFixture = loadTinyBertFixture;

function makeEngine(f: Fixture, extra: Partial<BertConfig> = {}, options = {}): Engine {
  const engine = fixtureEngine(f, { config: { ...f.config, ...extra }, seed: 7, threads: 2, ...options });
  for (const name of engine.parameterNames()) assert.ok(f.weights.has(name), `fixture lacks ${name}`);
  return engine;
}

test('parameters: names, shapes and count match the Hugging Face checkpoint', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  const names = engine.parameterNames();
  assert.deepEqual([...names].sort(), [...f.weights.keys()].filter((k) => !k.includes('position_ids')).sort());
  assert.deepEqual(engine.parameterShape('classifier.weight'), [5, 32]);
  let n = 0;
  for (const [k, w] of f.weights) if (names.includes(k)) n += w.length;
  assert.equal(engine.numParameters(), n);
  for (const name of names) assert.deepEqual(engine.getWeight(name), f.weights.get(name));
  await engine.dispose();
});

test('forward: logits and loss match HF transformers (float64 reference) within 1e-4', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  const { logits, loss } = await engine.forward(f.batch);
  assert.ok(relErr(logits, f.expected.get('logits')!) < 1e-4, `logits rel err ${relErr(logits, f.expected.get('logits')!)}`);
  assert.ok(Math.abs(loss! - f.expected.get('loss')![0]) / f.expected.get('loss')![0] < 1e-4);
  await engine.dispose();
});

test('backward: every parameter gradient matches HF within 1e-4 relative', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  const { loss } = await engine.accumulate(f.batch);
  assert.ok(Math.abs(loss - f.expected.get('loss')![0]) < 1e-5);
  const names = engine.parameterNames();
  assert.equal(names.length, 41);
  for (const name of names) {
    const ref = f.expected.get(`grad.${name}`);
    assert.ok(ref, `fixture lacks grad.${name}`);
    const err = relErr(engine.getGradient(name), ref);
    assert.ok(err < 1e-4, `grad of ${name}: rel err ${err}`);
  }
  await engine.dispose();
});

test('class weights and label smoothing: loss and classifier gradient match torch CrossEntropyLoss', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f, {}, {
    class_weights: Float32Array.from(f.meta.class_weights),
    label_smoothing_factor: f.meta.label_smoothing,
  });
  const { loss } = await engine.accumulate(f.batch);
  const refLoss = f.expected.get('ce_weighted.loss')![0];
  assert.ok(Math.abs(loss - refLoss) / refLoss < 1e-5, `loss ${loss} vs ${refLoss}`);
  const err = relErr(engine.getGradient('classifier.weight'), f.expected.get('ce_weighted.grad.classifier.weight')!);
  assert.ok(err < 1e-4, `classifier grad rel err ${err}`);
  await engine.dispose();
});

test('AdamW: 3 steps with weight decay and clipping match torch.optim.AdamW', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  await checkThreeAdamWSteps(engine, f.batch, f.meta.optimizer.lr, f.meta.train_log, f.expected);
  assert.equal(engine.getCounters().optimizerStep, 3);
  await engine.dispose();
});

test('gradient accumulation: two half batches with lossScale 0.5 equal one batch', async () => {
  const f = await loadFixture();
  // Four examples: the fixture's three plus a copy of the first with another label.
  const T = f.batch.seqLen;
  const cat = (a: Int32Array, b: Int32Array) => Int32Array.from([...a, ...b]);
  const full: Batch = {
    input_ids: cat(f.batch.input_ids, f.batch.input_ids.subarray(0, T)),
    attention_mask: cat(f.batch.attention_mask!, f.batch.attention_mask!.subarray(0, T)),
    token_type_ids: cat(f.batch.token_type_ids!, f.batch.token_type_ids!.subarray(0, T)),
    labels: Int32Array.from([...f.batch.labels!, 3]),
    batchSize: 4,
    seqLen: T,
  };
  const half = (i: number): Batch => ({
    input_ids: full.input_ids.slice(i * 2 * T, (i + 1) * 2 * T),
    attention_mask: full.attention_mask!.slice(i * 2 * T, (i + 1) * 2 * T),
    token_type_ids: full.token_type_ids!.slice(i * 2 * T, (i + 1) * 2 * T),
    labels: full.labels!.slice(i * 2, i * 2 + 2),
    batchSize: 2,
    seqLen: T,
  });
  const one = makeEngine(f);
  const two = makeEngine(f);
  await one.accumulate(full);
  await two.accumulate(half(0), { lossScale: 0.5 });
  await two.accumulate(half(1), { lossScale: 0.5 });
  for (const name of one.parameterNames()) {
    const err = relErr(two.getGradient(name), one.getGradient(name));
    assert.ok(err < 1e-5, `${name}: rel err ${err}`);
  }
  await one.step({ learningRate: 1e-2 });
  await two.step({ learningRate: 1e-2 });
  // After AdamW, an element moves by about lr × sign(g), so the weights agree
  // to a small fraction of one update even where g is tiny and noisy.
  for (const name of one.parameterNames()) {
    const a = two.getWeight(name);
    const b = one.getWeight(name);
    const maxAbs = a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);
    assert.ok(maxAbs < 1e-2 * 1e-2, `${name}: weights differ by ${maxAbs} after one step`);
  }
  await one.dispose();
  await two.dispose();
});

test('dropout: the same seed gives identical losses, another seed differs', async () => {
  const f = await loadFixture();
  const withDropout = { hidden_dropout_prob: 0.1, attention_probs_dropout_prob: 0.1 };
  const run = async (seed: number) => {
    const engine = makeEngine(f, withDropout, { seed });
    const losses: number[] = [];
    for (let s = 0; s < 3; s++) losses.push((await engine.trainStep(f.batch, { learningRate: 1e-3 })).loss);
    await engine.dispose();
    return losses;
  };
  const a = await run(1);
  const b = await run(1);
  const c = await run(2);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  // dropout is really on: the first loss differs from the dropout-free one
  assert.ok(Math.abs(a[0] - f.meta.train_log[0].loss) > 1e-6);
});

test('freezing: a frozen parameter gets no gradient and no update', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  const frozen = 'bert.encoder.layer.0.attention.self.query.weight';
  engine.setTrainable(frozen, false);
  for (const name of engine.parameterNames()) if (name.startsWith('bert.embeddings')) engine.setTrainable(name, false);
  await engine.accumulate(f.batch);
  assert.ok(engine.getGradient(frozen).every((x) => x === 0));
  // the rest of layer 0 still matches the reference gradient
  const name = 'bert.encoder.layer.0.attention.self.key.weight';
  assert.ok(relErr(engine.getGradient(name), f.expected.get(`grad.${name}`)!) < 1e-4);
  await engine.step({ learningRate: 1e-2 });
  assert.deepEqual(engine.getWeight(frozen), f.weights.get(frozen));
  assert.deepEqual(engine.getWeight('bert.embeddings.word_embeddings.weight'), f.weights.get('bert.embeddings.word_embeddings.weight'));
  assert.notDeepEqual(engine.getWeight(name), f.weights.get(name));
  await engine.dispose();
});

test('the event loop keeps running during a training step', async () => {
  const config: BertConfig = {
    vocab_size: 1000, hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 1024,
    max_position_embeddings: 128, type_vocab_size: 2, layer_norm_eps: 1e-12, hidden_dropout_prob: 0.1,
    attention_probs_dropout_prob: 0.1, initializer_range: 0.02, num_labels: 3,
  };
  const engine = new Engine({ config, threads: 2 });
  const B = 16, T = 128;
  const batch: Batch = {
    input_ids: Int32Array.from({ length: B * T }, (_, i) => (i * 7) % 1000),
    labels: Int32Array.from({ length: B }, (_, i) => i % 3),
    batchSize: B,
    seqLen: T,
  };
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const start = Date.now();
  await engine.trainStep(batch, { learningRate: 1e-4 });
  const elapsed = Date.now() - start;
  clearInterval(timer);
  assert.ok(elapsed > 20, `step too fast to observe (${elapsed} ms)`);
  assert.ok(ticks >= 3, `only ${ticks} timer ticks in ${elapsed} ms: the step blocked the event loop`);
  await engine.dispose();
});

test('long calls run on one native thread: calls from several engines at once start no new OpenMP threads', { skip: process.platform !== 'linux' && 'counts /proc/self/task' }, async () => {
  // libgomp keeps an OpenMP team per thread that opens a parallel region; calls spread over
  // libuv's pool threads each grew a team of their own (threads - 1 more workers per pool thread).
  const config: BertConfig = {
    vocab_size: 100, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 256,
    max_position_embeddings: 64, type_vocab_size: 2, layer_norm_eps: 1e-12, hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0, initializer_range: 0.02, num_labels: 3,
  };
  const B = 8, T = 64;
  const batch: Batch = {
    input_ids: Int32Array.from({ length: B * T }, (_, i) => (i * 7) % 100),
    labels: Int32Array.from({ length: B }, (_, i) => i % 3),
    batchSize: B,
    seqLen: T,
  };
  const threads = async () => (await readdir('/proc/self/task')).length;
  const engines = Array.from({ length: 4 }, () => new Engine({ config, threads: 2 }));
  await engines[0].forward(batch); // libuv's pool threads (all at the first call) and one OpenMP team exist now
  const before = await threads();
  for (let round = 0; round < 5; round++) await Promise.all(engines.map((e) => e.forward(batch)));
  assert.equal(await threads(), before, 'OpenMP threads were started for calls on other threads');
  await Promise.all(engines.map((e) => e.dispose()));
});

test('bad batches throw errors naming the argument and the expected value', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  const good = f.batch;
  const bad = async (patch: Partial<Batch> & Record<string, unknown>, re: RegExp) =>
    assert.rejects(engine.trainStep({ ...good, ...patch } as Batch, { learningRate: 1e-3 }), re);
  await bad({ input_ids: good.input_ids.slice(1) }, /batch\.input_ids has length 20, expected batchSize × seqLen = 3 × 7 = 21/);
  await bad({ input_ids: Array.from(good.input_ids) as unknown as Int32Array }, /batch\.input_ids must be an Int32Array/);
  const big = good.input_ids.slice();
  big[9] = 100;
  await bad({ input_ids: big }, /input_ids\[1\]\[2\] = 100 is out of range: expected 0 <= id < vocab_size \(100\)/);
  const neg = good.input_ids.slice();
  neg[0] = -1;
  await bad({ input_ids: neg }, /input_ids\[0\]\[0\] = -1 is out of range/);
  const tt = good.token_type_ids!.slice();
  tt[3] = 2;
  await bad({ token_type_ids: tt }, /token_type_ids\[0\]\[3\] = 2 is out of range: expected 0 <= id < type_vocab_size \(2\)/);
  const mask = good.attention_mask!.slice();
  mask[4] = 3;
  await bad({ attention_mask: mask }, /attention_mask\[0\]\[4\] = 3: expected 0 or 1/);
  await bad({ labels: Int32Array.from([1, 5, 0]) }, /labels\[1\] = 5 is out of range: expected 0 <= label < num_labels \(5\) or -100/);
  await bad({ labels: Int32Array.from([1, 2]) }, /batch\.labels has length 2, expected batchSize = 3/);
  await bad({ labels: undefined }, /batch\.labels is required/);
  const T = 65;
  await bad(
    { input_ids: new Int32Array(T), attention_mask: undefined, token_type_ids: undefined, labels: Int32Array.from([0]), batchSize: 1, seqLen: T },
    /sequence length T=65 exceeds max_position_embeddings=64/,
  );
  await assert.rejects(engine.trainStep(good, {} as { learningRate: number }), /options\.learningRate must be a number/);
  assert.throws(() => engine.setWeight('classifier.weight', new Float32Array(3)), /classifier\.weight'\): got 3 values, expected 160 \(shape \[5, 32\]\)/);
  assert.throws(() => engine.getWeight('bert.nope'), /unknown parameter 'bert\.nope'/);
  // the engine still works after all that
  const { logits } = await engine.forward(good);
  assert.ok(relErr(logits, f.expected.get('logits')!) < 1e-4);
  await engine.dispose();
  await assert.rejects(engine.forward(good), /the engine has been disposed/);
  assert.throws(() => engine.getWeight('classifier.weight'), /the engine has been disposed/);
});

test('bad configs throw naming the field', () => {
  const base: BertConfig = {
    vocab_size: 10, hidden_size: 30, num_hidden_layers: 1, num_attention_heads: 4, intermediate_size: 8,
    max_position_embeddings: 8, type_vocab_size: 2, layer_norm_eps: 1e-12, hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0, initializer_range: 0.02, num_labels: 2,
  };
  assert.throws(() => new Engine({ config: base }), /hidden_size \(30\) must be a multiple of config\.num_attention_heads \(4\)/);
  assert.throws(() => new Engine({ config: { ...base, hidden_size: 32, num_labels: 0 } }), /config\.num_labels must be a positive integer, got 0/);
  assert.throws(() => new Engine({ config: { ...base, hidden_size: 32, hidden_dropout_prob: 1 } }), /hidden_dropout_prob must be in \[0, 1\)/);
  assert.throws(
    () => new Engine({ config: { ...base, hidden_size: 32 }, class_weights: new Float32Array(3) }),
    /class_weights has 3 entries, expected num_labels = 2/,
  );
  assert.throws(() => new Engine({ config: { ...base, hidden_size: 32, layer_norm_eps: NaN } }), /config\.layer_norm_eps must be a finite number >= 0/);
});

// A config or batch too large for the machine must throw before memory is
// touched: with overcommit, a huge zero-filled allocation succeeds and the
// kernel's OOM killer ends the process instead (no exception to report).
test('configs and batches larger than the available memory throw naming their sizes instead of being OOM-killed', async () => {
  const base: BertConfig = {
    vocab_size: 8, hidden_size: 65536, num_hidden_layers: 1000, num_attention_heads: 1, intermediate_size: 8,
    max_position_embeddings: 8, type_vocab_size: 2, layer_norm_eps: 1e-12, hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0, initializer_range: 0.02, num_labels: 2,
  };
  // ~1.7e13 parameters: 69 TB of float32 weights alone.
  assert.throws(() => new Engine({ config: base }), /this config \([\d.e+]+ M parameters: vocab_size 8, hidden_size 65536, num_hidden_layers 1000, intermediate_size 8\) needs \d+ MiB, but only \d+ MiB of memory is available/);
  // 1024 heads of size 1 at T=512: the (B, NH, T, T) probabilities of batch 64 are 69 GB per layer.
  const wide = new Engine({ config: { ...base, hidden_size: 1024, num_attention_heads: 1024, num_hidden_layers: 1, max_position_embeddings: 512 } });
  const B = 64, T = 512;
  const batch = { input_ids: new Int32Array(B * T).fill(1), attention_mask: new Int32Array(B * T).fill(1), token_type_ids: new Int32Array(B * T), labels: new Int32Array(B), batchSize: B, seqLen: T };
  await assert.rejects(wide.forward(batch), /activations for batchSize=64, seqLen=512 \(use a smaller batch size or max_length\) needs \d+ MiB, but only \d+ MiB of memory is available/);
  // The engine is still usable with a batch that fits.
  const small = { ...batch, input_ids: batch.input_ids.subarray(0, 2 * 8), attention_mask: batch.attention_mask.subarray(0, 2 * 8), token_type_ids: batch.token_type_ids.subarray(0, 2 * 8), labels: batch.labels.subarray(0, 2), batchSize: 2, seqLen: 8 };
  const { logits } = await wide.forward(small);
  assert.equal(logits.length, 4);
  assert.ok(logits.every(Number.isFinite));
  await wide.dispose();
});

test('devices: unknown names, bf16 on the CPU and CUDA without a CUDA build are clear errors', async () => {
  const f = await loadFixture();
  assert.throws(() => new Engine({ config: f.config, device: 'tpu' }), /unknown device 'tpu': expected 'cpu', 'cuda' or 'cuda:N'/);
  assert.throws(() => new Engine({ config: f.config, device: 'cuda:x' }), /device 'cuda:x': expected 'cuda:N'/);
  assert.throws(() => new Engine({ config: f.config, precision: 'bf16' }), /precision 'bf16' needs device 'cuda'/);
  // checkDevice's arguments of another type are named, not replaced by the defaults
  assert.throws(() => checkDevice(123 as unknown as string), /^Error: checkDevice: device \('cpu', 'cuda' or 'cuda:N'\) must be a string, got a number$/);
  assert.throws(() => checkDevice('cpu', 5 as unknown as string), /precision \('fp32', 'bf16' or 'q8_0'\) must be a string, got a number/);
  assert.throws(() => checkDevice('cpu', 'fp32', 'yes' as unknown as boolean), /causalLM must be a boolean, got a string/);
  checkDevice(undefined, undefined, undefined);
  const engine = new Engine({ config: f.config });
  assert.equal(engine.device(), 'cpu');
  await engine.dispose();
  if (!loadAddon().cudaCompiled) {
    assert.throws(() => new Engine({ config: f.config, device: 'cuda' }), /this build of nodetune has no CUDA backend/);
  } else {
    // built with CUDA: either a GPU is there, or the error says there is none
    try {
      const gpu = new Engine({ config: f.config, device: 'cuda' });
      assert.match(gpu.device(), /^cuda:0/);
      await gpu.dispose();
    } catch (err) {
      assert.match((err as Error).message, /CUDA/);
    }
  }
});

test('a non-finite gradient skips the update: weights, moments and the step count stay', async () => {
  const f = await loadFixture();
  const engine = makeEngine(f);
  await engine.trainStep(f.batch, { learningRate: 1e-3 });
  const before = engine.getWeight('classifier.weight');
  const moments = engine.getOptimizerState('classifier.weight');
  // loss scales near float32's max: the loss stays finite, the summed gradients overflow
  for (let i = 0; i < 4; i++) {
    const { loss } = await engine.accumulate(f.batch, { lossScale: 3e38 });
    assert.ok(Number.isFinite(loss));
  }
  const { gradNorm } = await engine.step({ learningRate: 1e-3 });
  assert.ok(!Number.isFinite(gradNorm), `grad norm ${gradNorm}`);
  assert.deepEqual(engine.getWeight('classifier.weight'), before);
  assert.deepEqual(engine.getOptimizerState('classifier.weight'), moments);
  assert.equal(engine.getCounters().optimizerStep, 1);
  assert.ok(engine.getGradient('classifier.weight').every((g) => g === 0));
  await engine.dispose();
});

test('bad optimizer options and misuse throw naming the option', async () => {
  const f = await loadFixture();
  assert.throws(() => new Engine(undefined as never), /config must be an object/);
  assert.throws(() => new Engine({ config: f.config, adam_beta1: 5 }), /adam_beta1 must be in \[0, 1\), got 5/);
  assert.throws(() => new Engine({ config: f.config, adam_epsilon: 0 }), /adam_epsilon must be > 0/);
  assert.throws(() => new Engine({ config: f.config, weight_decay: -1 }), /weight_decay must be >= 0/);
  assert.throws(() => new Engine({ config: f.config, threads: -1 }), /threads must be >= 0/);
  assert.throws(() => new Engine({ config: f.config, label_smoothing_factor: 2 }), /label_smoothing_factor must be in \[0, 1\]/);
  const engine = makeEngine(f);
  await assert.rejects(engine.accumulate(f.batch, { lossScale: NaN }), /lossScale must be a finite number >= 0/);
  await assert.rejects(engine.accumulate(f.batch, { lossScale: Infinity }), /lossScale must be a finite number >= 0/);
  assert.throws(() => engine.setCounters({ optimizerStep: 1e20, microStep: 0 }), /optimizerStep must be an integer in \[0, 2\^53\)/);
  await engine.dispose();
});

test('all-MiniLM-L6-v2 + a fixed head: logits on 29 sentences padded in one batch match HF within 1e-4', async () => {
  const folder = join(root, '.cache/models/all-MiniLM-L6-v2');
  const fx = join(root, 'test/fixtures/minilm-head');
  const meta = JSON.parse(await readFile(join(fx, 'sentences.json'), 'utf8'));
  const model = await loadModel(folder, { num_labels: meta.num_labels, threads: 2, log: () => undefined });
  for (const [name, w] of await tensors(join(fx, 'head.safetensors'))) model.engine.setWeight(name, w);
  const rows = meta.sentences as Array<{ text: string; input_ids: number[]; attention_mask: number[]; token_type_ids: number[] }>;
  const [B, T] = meta.shape as [number, number];
  // our tokenizer gives the same padded batch as HF's
  const enc = model.tokenizer.encodeBatch(rows.map((r) => r.text), null, { maxLength: 128 });
  assert.deepEqual([enc.batchSize, enc.seqLen], [B, T]);
  assert.deepEqual(Array.from(enc.input_ids), rows.flatMap((r) => r.input_ids));
  const { logits } = await model.engine.forward(enc);
  const ref = (await tensors(join(fx, 'logits.safetensors'))).get('logits')!;
  const maxAbs = logits.reduce((m, x, i) => Math.max(m, Math.abs(x - ref[i])), 0);
  assert.ok(maxAbs < 1e-4, `max |Δ| ${maxAbs}`);
  await model.engine.dispose();
});

test('firstNonFinite: the first NaN or infinity, in any chunk of the native pass (as a JS loop finds it), or -1', () => {
  const a = new Float32Array(3 * 4096 + 5);
  assert.equal(firstNonFinite(a), -1);
  assert.equal(firstNonFinite(new Float32Array(0)), -1);
  for (const i of [0, 4095, 4096, 3 * 4096 + 4]) {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const b = Float32Array.from(a);
      b[i] = bad;
      b[b.length - 1] = NaN;  // a later one is not the first
      assert.equal(firstNonFinite(b), i, `${bad} at ${i}`);
      assert.equal(firstNonFinite(b), firstNonFiniteIndex(b));
    }
  }
  const big = new Float32Array(10);
  big[3] = 3.4e38;  // finite, however large
  assert.equal(firstNonFinite(big), -1);
  assert.throws(() => firstNonFinite([1, NaN] as unknown as Float32Array), /^TypeError: firstNonFinite: expected a Float32Array, got an array$/);
});

test('loadModel refuses engine options it cannot honour before it reports newly initialized weights', async () => {
  // The warning tells the user to TRAIN the model; a load that then fails must not say so first.
  const folder = join(root, '.cache/models/all-MiniLM-L6-v2');
  const lines: string[] = [];
  await assert.rejects(loadModel(folder, { num_labels: 3, precision: 'q8_0', log: (l) => lines.push(l) }), /precision 'q8_0' is for causal LMs' generation/);
  assert.equal(lines.length, 0, lines.join('\n'));
  const model = await loadModel(folder, { num_labels: 3, threads: 1, log: (l) => lines.push(l) });
  assert.equal(lines.length, 1);
  assert.match(lines[0], /newly initialized: .*classifier\.weight/);
  await model.engine.dispose();
});

test('an option EngineOptions does not have (a typo) is an error naming it, not a silently different engine', async () => {
  const f = await loadTinyBertFixture();
  assert.throws(() => new Engine({ config: f.config, archtecture: 'BertForMaskedLM' } as unknown as ConstructorParameters<typeof Engine>[0]), /unknown option 'archtecture'; expected config and any of: .*architecture/);
  assert.throws(() => new Engine({ config: f.config, learning_rate: 1e-3 } as unknown as ConstructorParameters<typeof Engine>[0]), /unknown option 'learning_rate'/);
  const e = new Engine({ config: f.config, seed: 1, threads: 1, device: undefined });
  await e.dispose();
});
