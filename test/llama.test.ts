// The native Llama-family engine against Hugging Face transformers + PEFT on
// tiny random models (test/fixtures/tiny-llama: GQA, llama3 rope scaling, tied
// embeddings; test/fixtures/tiny-qwen2: q/k/v biases, untied lm_head), made in
// float64 by scripts/reference/tiny_llama.py: logits, loss, every gradient,
// 3 AdamW steps with clipping and token-normalised gradient accumulation, the
// same with LoRA (all-linear) and rsLoRA; plus the engine's own contracts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkDevice, Engine, loadAddon, type Batch } from '../src/engine.js';
import { bf16Unsupported } from './helpers/bf16.js';
import { llamaParameterShapes, parseLlamaConfig, peftKey, resolveLoraTargets, type LlamaConfig, type LoraConfig } from '../src/models/llama.js';
import { relErr, tensors } from './helpers/tiny-bert-fixture.js';
import { dequantize, quantizeQ8_0 } from '../src/io/gguf-quants.js';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), '../../test/fixtures');

interface Rows {
  input_ids: number[][];
  attention_mask: number[][];
  labels: number[][];
}
interface Fixture {
  name: string;
  config: LlamaConfig;
  weights: Map<string, Float32Array>;
  loraInit: Map<string, Float32Array>;
  expected: Map<string, Float32Array>;
  batch: Batch;
  micro: Batch[];
  meta: {
    optimizer: { lr: number; betas: [number, number]; eps: number; weight_decay: number; max_grad_norm: number; steps: number };
    micro_batches: Array<Rows & { num_targets: number }>;
    num_items_in_batch: number;
    param_groups: { no_decay: string[] };
    lora: { config: LoraConfig };
  };
}

function toBatch(rows: Rows): Batch {
  return {
    input_ids: Int32Array.from(rows.input_ids.flat()),
    attention_mask: Int32Array.from(rows.attention_mask.flat()),
    labels: Int32Array.from(rows.labels.flat()),
    batchSize: rows.input_ids.length,
    seqLen: rows.input_ids[0].length,
  };
}

const cache = new Map<string, Promise<Fixture>>();
function load(name: 'tiny-llama' | 'tiny-qwen2'): Promise<Fixture> {
  if (!cache.has(name)) {
    cache.set(name, (async () => {
      const dir = join(fixtures, name);
      const json = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
      const meta = JSON.parse(await readFile(join(dir, 'batch.json'), 'utf8'));
      return {
        name,
        config: parseLlamaConfig(json, join(dir, 'config.json')),
        weights: await tensors(join(dir, 'model.safetensors')),
        loraInit: await tensors(join(dir, 'lora_init.safetensors')),
        expected: await tensors(join(dir, 'expected.safetensors')),
        batch: toBatch(meta),
        micro: meta.micro_batches.map(toBatch),
        meta,
      };
    })());
  }
  return cache.get(name)!;
}

// NODETUNE_TEST_DEVICE=cuda runs these Hugging Face parity tests on the CUDA
// decoder engine (test/gpu/run.sh does, on a GPU machine); the default is the CPU.
const testDevice = process.env.NODETUNE_TEST_DEVICE ?? 'cpu';

function makeEngine(f: Fixture, lora?: LoraConfig, extra: Record<string, unknown> = {}): Engine {
  const o = f.meta.optimizer;
  const engine = new Engine({
    config: f.config,
    lora,
    seed: 7,
    threads: 2,
    device: testDevice,
    adam_beta1: o.betas[0],
    adam_beta2: o.betas[1],
    adam_epsilon: o.eps,
    weight_decay: o.weight_decay,
    max_grad_norm: o.max_grad_norm,
    ...extra,
  });
  for (const name of engine.parameterNames()) {
    const w = f.weights.get(name) ?? f.loraInit.get(name);
    assert.ok(w, `${f.name}: the fixture has no tensor ${name}`);
    engine.setWeight(name, w);
  }
  return engine;
}

/** The logits of real tokens only (HF's padded-query logits are its own artefact). */
function realLogits(logits: ArrayLike<number>, mask: Int32Array, V: number): number[] {
  const out: number[] = [];
  for (let n = 0; n < mask.length; n++) if (mask[n]) for (let v = 0; v < V; v++) out.push(logits[n * V + v]);
  return out;
}

function close(got: number, want: number, tol: number, what: string) {
  assert.ok(Math.abs(got - want) <= tol * Math.abs(want), `${what}: got ${got}, want ${want} (rel ${Math.abs(got - want) / Math.abs(want)})`);
}

/** 3 optimizer steps, each over both micro-batches, scaled by their share of the step's targets. */
async function replay(f: Fixture, engine: Engine, prefix: string) {
  const total = f.meta.micro_batches.reduce((s, m) => s + m.num_targets, 0);
  assert.equal(total, f.meta.num_items_in_batch);
  for (let step = 1; step <= f.meta.optimizer.steps; step++) {
    let loss = 0;
    for (let i = 0; i < f.micro.length; i++) {
      const share = f.meta.micro_batches[i].num_targets / total;
      loss += (await engine.accumulate(f.micro[i], { lossScale: share })).loss * share;
    }
    const { gradNorm } = await engine.step({ learningRate: f.meta.optimizer.lr });
    close(loss, f.expected.get(`${prefix}step${step}.loss`)![0], 1e-5, `${f.name} ${prefix}step ${step} loss`);
    close(gradNorm, f.expected.get(`${prefix}step${step}.grad_norm`)![0], 1e-4, `${f.name} ${prefix}step ${step} grad norm`);
  }
}

for (const name of ['tiny-llama', 'tiny-qwen2'] as const) {
  test(`${name}: parameter names, shapes and count are Hugging Face's`, async () => {
    const f = await load(name);
    const engine = makeEngine(f);
    const shapes = llamaParameterShapes(f.config);
    assert.deepEqual([...engine.parameterNames()].sort(), shapes.map(([n]) => n).sort());
    assert.deepEqual([...f.weights.keys()].sort(), shapes.map(([n]) => n).sort());
    for (const [n, s] of shapes) assert.deepEqual(engine.parameterShape(n), s, n);
    assert.equal(engine.numParameters(), shapes.reduce((s, [, sh]) => s + sh.reduce((a, b) => a * b, 1), 0));
    await engine.dispose();
  });

  test(`${name}: logits of real tokens and the loss match transformers (float64) within 1e-4`, async () => {
    const f = await load(name);
    const engine = makeEngine(f);
    const { logits, loss } = await engine.forward(f.batch);
    const V = f.config.vocab_size;
    assert.equal(logits.length, f.batch.batchSize * f.batch.seqLen * V);
    const err = relErr(realLogits(logits, f.batch.attention_mask!, V), realLogits(f.expected.get('logits')!, f.batch.attention_mask!, V));
    assert.ok(err < 1e-4, `logits rel err ${err}`);
    close(loss!, f.expected.get('loss')![0], 1e-4, 'loss');
    const lossOnly = await engine.forward(f.batch, { logits: false });
    assert.equal(lossOnly.logits, undefined);
    assert.equal(lossOnly.loss, loss);
    await engine.dispose();
  });

  test(`${name}: every gradient of full fine-tuning matches transformers within 1e-4`, async () => {
    const f = await load(name);
    const engine = makeEngine(f);
    // An inference forward first lays the activations out as one set shared by every layer; the
    // backward needs each layer's own, so accumulate must lay them out again.
    await engine.forward(f.batch);
    const { loss } = await engine.accumulate(f.batch);
    close(loss, f.expected.get('loss')![0], 1e-5, 'loss');
    for (const n of engine.parameterNames()) {
      const err = relErr(engine.getGradient(n), f.expected.get(`grad.${n}`)!);
      assert.ok(err < 1e-4, `grad of ${n}: rel err ${err}`);
    }
    await engine.dispose();
  });

  test(`${name}: 3 AdamW steps (decay groups, clipping, accumulation normalised by the step's target count) match torch`, async () => {
    const f = await load(name);
    const engine = makeEngine(f);
    await replay(f, engine, '');
    // AdamW moves every element by about lr a step whatever the size of its
    // gradient, so an element whose gradient is below float32 resolution
    // (k_proj.bias's highest-frequency rotary channels: ~1e-8 against 0.07)
    // moves in a float32-noise direction. Such a tensor is held to 2% of the
    // largest move three steps can make instead of 1e-4 of its values.
    const o = f.meta.optimizer;
    let strict = 0;
    for (const n of engine.parameterNames()) {
      const got = engine.getWeight(n), want = f.expected.get(`after3.${n}`)!;
      const err = relErr(got, want);
      const abs = Math.max(...got.map((x, i) => Math.abs(x - want[i])));
      if (err < 1e-4) strict++;
      assert.ok(err < 1e-4 || abs < 0.02 * o.lr * o.steps, `${n} after 3 steps: rel err ${err}, max abs diff ${abs}`);
    }
    assert.ok(strict >= engine.parameterNames().length - 3, `${strict} of ${engine.parameterNames().length} tensors within 1e-4`);
    await engine.dispose();
  });

  test(`${name}: LoRA (r 4, alpha 8, all-linear) logits, loss, every A and B gradient and 3 steps match PEFT`, async () => {
    const f = await load(name);
    const engine = makeEngine(f, f.meta.lora.config);
    const loraNames = engine.parameterNames().filter((n) => n.includes('.lora_'));
    assert.deepEqual([...loraNames].sort(), [...f.loraInit.keys()].sort());
    for (const n of engine.parameterNames()) assert.equal(engine.isTrainable(n), n.includes('.lora_'), n);
    const V = f.config.vocab_size;
    const { logits, loss } = await engine.forward(f.batch);
    const err = relErr(realLogits(logits, f.batch.attention_mask!, V), realLogits(f.expected.get('lora.logits')!, f.batch.attention_mask!, V));
    assert.ok(err < 1e-4, `LoRA logits rel err ${err}`);
    close(loss!, f.expected.get('lora.loss')![0], 1e-4, 'LoRA loss');
    await engine.accumulate(f.batch);
    for (const n of loraNames) {
      const e = relErr(engine.getGradient(n), f.expected.get(`lora.grad.${n}`)!);
      assert.ok(e < 1e-4, `grad of ${n}: rel err ${e}`);
    }
    await engine.zeroGrad();
    await replay(f, engine, 'lora.');
    for (const n of loraNames) {
      const e = relErr(engine.getWeight(n), f.expected.get(`lora.after3.${n}`)!);
      assert.ok(e < 1e-4, `${n} after 3 steps: rel err ${e}`);
    }
    for (const [n, w] of f.weights) assert.deepEqual(engine.getWeight(n), w, `base weight ${n} changed`);
    await engine.dispose();
  });

  test(`${name}: rsLoRA scales by alpha / sqrt(r)`, async () => {
    const f = await load(name);
    const engine = makeEngine(f, { ...f.meta.lora.config, use_rslora: true });
    const { loss } = await engine.forward(f.batch, { logits: false });
    close(loss!, f.expected.get('rslora.loss')![0], 1e-4, 'rsLoRA loss');
    await engine.dispose();
  });
}

test('left- and right-padded rows give the same logits for their real tokens', async () => {
  const f = await load('tiny-llama');
  const engine = makeEngine(f);
  const ids = [7, 30, 99, 4, 250];
  const T = 8, V = f.config.vocab_size;
  const right = [...ids, 0, 0, 0], left = [0, 0, 0, ...ids];
  const mask = (row: number[], real: (t: number) => boolean) => row.map((_, t) => (real(t) ? 1 : 0));
  const batch: Batch = {
    input_ids: Int32Array.from([...right, ...left]),
    attention_mask: Int32Array.from([...mask(right, (t) => t < 5), ...mask(left, (t) => t >= 3)]),
    batchSize: 2,
    seqLen: T,
  };
  const { logits } = await engine.forward(batch);
  const r = logits.subarray(0, 5 * V), l = logits.subarray((T + 3) * V, (2 * T) * V);
  assert.ok(relErr(l, r) < 1e-5, `left vs right padding: rel err ${relErr(l, r)}`);
  await engine.dispose();
});

test('gradient checkpointing gives the same gradients (LoRA with dropout)', async () => {
  const f = await load('tiny-qwen2');
  const lora = { ...f.meta.lora.config, lora_dropout: 0.1 };
  const grads = async (gradient_checkpointing: boolean) => {
    const engine = makeEngine(f, lora, { gradient_checkpointing });
    const { loss } = await engine.accumulate(f.batch);
    const g = engine.parameterNames().filter((n) => n.includes('lora_')).map((n) => [...engine.getGradient(n)]);
    await engine.dispose();
    return { loss, g };
  };
  const a = await grads(false), b = await grads(true);
  assert.equal(b.loss, a.loss);
  assert.deepEqual(b.g, a.g);
});

test('a new LoRA adapter starts as PEFT does: B zero (the base model unchanged), A uniform in ±1/sqrt(in_features)', async () => {
  const f = await load('tiny-llama');
  const engine = new Engine({ config: f.config, lora: { r: 8, lora_alpha: 16, target_modules: ['q_proj', 'v_proj'] }, seed: 3, threads: 1 });
  const names = engine.parameterNames().filter((n) => n.includes('lora_'));
  assert.equal(names.length, 2 * 2 * f.config.num_hidden_layers);
  const A = engine.getWeight(peftKey(0, 'q_proj', 'A'));
  const bound = 1 / Math.sqrt(f.config.hidden_size);
  assert.ok(A.every((x) => Math.abs(x) <= bound) && Math.max(...A.map(Math.abs)) > 0.9 * bound);
  assert.ok(engine.getWeight(peftKey(1, 'v_proj', 'B')).every((x) => x === 0));
  const again = new Engine({ config: f.config, lora: { r: 8, lora_alpha: 16, target_modules: ['q_proj', 'v_proj'] }, seed: 3, threads: 1 });
  assert.deepEqual(again.getWeight(peftKey(0, 'q_proj', 'A')), A, 'same seed, same A');
  // Frozen base weights have no gradient or optimizer buffers to make trainable.
  assert.throws(() => engine.setTrainable('model.layers.0.self_attn.q_proj.weight', true), /frozen when the engine was built/);
  await engine.dispose();
  await again.dispose();
});

test('bad input gets an Error naming what is wrong', async () => {
  const f = await load('tiny-llama');
  const engine = makeEngine(f);
  const T = 4;
  const batch = (ids: number[], seqLen = T): Batch => ({ input_ids: Int32Array.from(ids), batchSize: 1, seqLen, labels: Int32Array.from(ids) });
  await assert.rejects(engine.forward(batch([1, 2, 256, 3])), /input_ids\[0\]\[2\] = 256 is out of range: expected 0 <= id < vocab_size \(256\)/);
  await assert.rejects(engine.forward(batch(Array(65).fill(1), 65)), /T=65 exceeds max_position_embeddings=64/);
  await assert.rejects(engine.forward({ ...batch([1, 2, 3, 4]), attention_mask: Int32Array.from([1, 1, -1, 1]) }), /attention_mask\[0\]\[2\] = -1: expected 0 \(padding\), 1, or a packed example's segment number >= 1/);
  await assert.rejects(engine.accumulate({ ...batch([1, 2, 3, 4]), labels: Int32Array.from([1, 2, -5, 4]) }), /labels\[0\]\[2\] = -5 is out of range/);
  await assert.rejects(engine.accumulate({ ...batch([1, 2, 3, 4]), labels: Int32Array.from([1]) }), /labels has length 1, expected batchSize × seqLen = 1 × 4 = 4/);
  await engine.dispose();
  assert.throws(() => resolveLoraTargets(['q_prj']), /unknown module 'q_prj' \(did you mean 'q_proj'\?\)/);
  assert.throws(() => new Engine({ config: f.config, lora: { r: 0, lora_alpha: 8, target_modules: 'all-linear' } }), /lora r must be a positive integer, got 0/);
  assert.throws(() => new Engine({ config: f.config, lora: { r: 4, lora_alpha: 8, target_modules: ['lm_head'] } }), /lm_head cannot be adapted/);
  assert.throws(() => new Engine({ config: { ...f.config, num_key_value_heads: 3 } }), /num_attention_heads \(4\) must be a multiple of config.num_key_value_heads \(3\)/);
  assert.throws(() => parseLlamaConfig({ ...f.config, num_key_value_heads: 3 } as unknown as Record<string, unknown>, 'config.json'), /config.json: num_attention_heads 4 is not a multiple of num_key_value_heads 3/);
  assert.throws(() => parseLlamaConfig({ ...f.config, rope_scaling: { rope_type: 'yarn', factor: 4 } } as unknown as Record<string, unknown>, 'config.json'), /rope_scaling type 'yarn' is not supported/);
});

test('packing: two examples in one row (segments 1 and 2) give the loss and gradients of the two rows apart', async () => {
  const f = await load('tiny-qwen2');
  const lora = f.meta.lora.config;
  const a = [5, 17, 33, 92, 41], b = [7, 250, 18];
  const la = [-100, -100, 33, 92, 41], lb = [-100, 250, 18];
  const apart: Batch = {
    input_ids: Int32Array.from([...a, ...b, 0, 0]),
    attention_mask: Int32Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 0]),
    labels: Int32Array.from([...la, ...lb, -100, -100]),
    batchSize: 2, seqLen: 5,
  };
  const packed: Batch = {
    input_ids: Int32Array.from([...a, ...b]),
    attention_mask: Int32Array.from([1, 1, 1, 1, 1, 2, 2, 2]),
    // b's first token keeps a real label: the engine never predicts across a segment's end
    labels: Int32Array.from([...la, 7, 250, 18]),
    batchSize: 1, seqLen: 8,
  };
  const run = async (batch: Batch) => {
    const engine = makeEngine(f, lora);
    const { loss } = await engine.accumulate(batch);
    const g = engine.parameterNames().filter((n) => n.includes('lora_')).map((n) => engine.getGradient(n));
    await engine.dispose();
    return { loss, g };
  };
  const x = await run(apart), y = await run(packed);
  close(y.loss, x.loss, 1e-6, 'packed loss');
  for (let i = 0; i < x.g.length; i++) assert.ok(relErr(y.g[i], x.g[i]) < 1e-5, `gradient ${i}: rel err ${relErr(y.g[i], x.g[i])}`);
});

test('layers_to_transform adapts only those layers, with the gradients of the same adapters among all-layer ones', async () => {
  const f = await load('tiny-llama');
  const some = makeEngineWith(f, { ...f.meta.lora.config, layers_to_transform: [1] });
  assert.ok(some.parameterNames().filter((n) => n.includes('lora_')).every((n) => n.includes('.layers.1.')));
  const all = makeEngine(f, f.meta.lora.config);
  // Zero B on layer 0: the all-layer model computes the same function.
  for (const n of all.parameterNames()) if (n.includes('.layers.0.') && n.includes('lora_B')) all.setWeight(n, new Float32Array(all.getWeight(n).length));
  await some.accumulate(f.batch);
  await all.accumulate(f.batch);
  for (const n of some.parameterNames().filter((x) => x.includes('lora_'))) {
    assert.ok(relErr(some.getGradient(n), all.getGradient(n)) < 1e-5, n);
  }
  assert.throws(() => new Engine({ config: f.config, lora: { ...f.meta.lora.config, layers_to_transform: [2] } }), /layers_to_transform names layer 2: expected 0 <= layer < num_hidden_layers \(2\)/);
  await some.dispose();
  await all.dispose();
});

function makeEngineWith(f: Fixture, lora: LoraConfig): Engine {
  const engine = new Engine({ config: f.config, lora, seed: 7, threads: 2, device: testDevice });
  for (const name of engine.parameterNames()) {
    const w = f.weights.get(name) ?? f.loraInit.get(name);
    if (w) engine.setWeight(name, w);
  }
  return engine;
}

// precision 'bf16' on the CPU: the frozen base's GEMMs read bf16 copies of its
// weights and bf16-rounded activations (oneDNN; AMX-BF16 or AVX512_BF16). The
// reference is still transformers + PEFT in float64; the tolerances are those
// of bf16 inputs (unit roundoff 2^-9 ≈ 2e-3, accumulated over a few layers).
const cpuBf16 = bf16Unsupported();

for (const name of ['tiny-llama', 'tiny-qwen2'] as const) {
  test(`${name}: LoRA on a bf16 base: logits, loss and every A and B gradient within bf16 tolerance of PEFT (float64)`, async () => {
    const f = await load(name);
    if (cpuBf16) {
      // This CPU or build cannot: the engine says why instead of running slowly or wrongly.
      assert.match(cpuBf16, /^precision 'bf16' on the CPU: (this CPU has neither AVX512_BF16 nor AMX-BF16|this build of nodetune has no oneDNN)/);
      assert.throws(() => makeEngine(f, f.meta.lora.config, { precision: 'bf16' }), (e: Error) => e.message === cpuBf16);
      return;
    }
    const engine = makeEngine(f, f.meta.lora.config, { precision: 'bf16' });
    const V = f.config.vocab_size;
    const { logits, loss } = await engine.forward(f.batch);
    const err = relErr(realLogits(logits, f.batch.attention_mask!, V), realLogits(f.expected.get('lora.logits')!, f.batch.attention_mask!, V));
    assert.ok(err < 2e-2 && err > 0, `bf16 LoRA logits rel err ${err}`);
    close(loss!, f.expected.get('lora.loss')![0], 1e-3, 'bf16 LoRA loss');
    await engine.accumulate(f.batch);
    for (const n of engine.parameterNames().filter((x) => x.includes('.lora_'))) {
      const e = relErr(engine.getGradient(n), f.expected.get(`lora.grad.${n}`)!);
      assert.ok(e < 3e-2, `bf16 grad of ${n}: rel err ${e}`);
    }
    // The fp32 weights stay the masters: reading them back gives what was written.
    for (const [n, w] of f.weights) assert.deepEqual(engine.getWeight(n), w, `base weight ${n} changed`);
    // A weight written after the first step is read in bf16 from then on.
    const head = f.config.tie_word_embeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    engine.setWeight(head, new Float32Array(f.weights.get(head)!.length));
    const zero = await engine.forward(f.batch);
    assert.ok(zero.logits.every((x) => x === 0), 'a zeroed lm_head gives zero logits');
    await engine.dispose();
  });
}

// precision 'q8_0': the frozen linear layers and the lm_head read Q8_0 copies
// (ggml's blocks of 32 int8 with an fp16 scale) and quantize their inputs the
// same way (native/cpu/q8_0.cpp, checked against ggml's formulas by gradcheck).
// Each rounding is at most half a step of 1/127 of its block's largest
// magnitude, so the logits stay within a few percent of PEFT's float64 ones.
for (const name of ['tiny-llama', 'tiny-qwen2'] as const) {
  test(`${name}: LoRA on a q8_0 base: logits within Q8_0 tolerance of PEFT (float64); weights held as gguf-py's Q8_0; training refused`, async () => {
    const f = await load(name);
    const engine = makeEngine(f, f.meta.lora.config, { precision: 'q8_0', device: 'cpu' });
    const V = f.config.vocab_size;
    const { logits, loss } = await engine.forward(f.batch);
    const err = relErr(realLogits(logits, f.batch.attention_mask!, V), realLogits(f.expected.get('lora.logits')!, f.batch.attention_mask!, V));
    // Measured: 2.9e-2 (tiny-llama), 3.2e-2 (tiny-qwen2); the loss 7.8e-4 and 2.0e-3.
    assert.ok(err < 6e-2 && err > 1e-4, `q8_0 LoRA logits rel err ${err}`);
    close(loss!, f.expected.get('lora.loss')![0], 1e-2, 'q8_0 LoRA loss (through the Q8_0 head)');
    // Six copies of the batch in one: 144 rows through the int8 kernel 4 at a time, each copy within
    // the same tolerance.
    const k = 6, B = f.batch.batchSize, T = f.batch.seqLen;
    const rep = (a: Int32Array) => Int32Array.from({ length: k * a.length }, (_, i) => a[i % a.length]);
    const big = await engine.forward({ input_ids: rep(f.batch.input_ids), attention_mask: rep(f.batch.attention_mask!), batchSize: k * B, seqLen: T });
    for (let c = 0; c < k; c++) {
      const copy = big.logits.subarray(c * B * T * V, (c + 1) * B * T * V);
      const e = relErr(realLogits(copy, f.batch.attention_mask!, V), realLogits(f.expected.get('lora.logits')!, f.batch.attention_mask!, V));
      assert.ok(e < 6e-2 && e > 1e-4, `q8_0 LoRA logits of copy ${c} in a batch of ${k * B * T} rows: rel err ${e}`);
    }
    // The layers' linear weights, the token embedding and an untied lm_head are held as Q8_0 only: they
    // read back as gguf-py's Q8_0 of what was written (src/io/gguf-quants.ts, checked against gguf-py
    // in gguf.test.ts); the rest as written.
    for (const [n, w] of f.weights) {
      const held = /\.(q|k|v|o|gate|up|down)_proj\.weight$|^model\.embed_tokens\.weight$|^lm_head\.weight$/.test(n);
      assert.deepEqual(engine.getWeight(n), held ? dequantize('Q8_0', quantizeQ8_0(w), w.length) : w, n);
    }
    await assert.rejects(engine.accumulate(f.batch), /^Error: precision 'q8_0' reads the base in Q8_0 for generation only \(forward, prefill and decode\): train with precision 'fp32' or 'bf16'$/);
    await assert.rejects(engine.step({ learningRate: 1e-3 }), /precision 'q8_0' reads the base in Q8_0 for generation only/);
    assert.equal(engine.getCounters().optimizerStep, 0);
    // Q8_0's fp16 block scale cannot hold NaN, infinity or |w| > 65504 x 127: refused, nothing written.
    const q = 'model.layers.0.self_attn.q_proj.weight';
    const before = engine.getWeight(q);
    for (const bad of [NaN, Infinity, 1e7]) {
      const w = Float32Array.from(f.weights.get(q)!);
      w[f.config.hidden_size + 5] = bad;
      assert.throws(() => engine.setWeight(q, w), /'model\.layers\.0\.self_attn\.q_proj\.weight'\[1, 5\] is .*: precision 'q8_0' quantizes this weight to Q8_0, whose fp16 block scale needs finite values within \+-8\.3e6 \(65504 x 127\); nothing was written/);
    }
    assert.deepEqual(engine.getWeight(q), before);
    // A weight written after the first forward is read by the next.
    const head = f.config.tie_word_embeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    engine.setWeight(head, new Float32Array(f.weights.get(head)!.length));
    const zero = await engine.forward(f.batch);
    assert.ok(zero.logits.every((x) => x === 0), 'a zeroed lm_head gives zero logits');
    await engine.dispose();
  });
}

test('a NaN weight gives NaN logits and loss, as in transformers: attention does not turn a row of NaN scores into a padding row', async () => {
  const f = await load('tiny-llama');
  const engine = makeEngine(f, undefined, { trainable: false });
  const q = 'model.layers.0.self_attn.q_proj.weight';
  const w = engine.getWeight(q);
  w[5] = NaN;  // head 0's first query channel: every score of head 0 is NaN
  engine.setWeight(q, w);
  const { logits, loss } = await engine.forward(f.batch);
  assert.ok(Number.isNaN(loss), `loss ${loss}`);
  const V = f.config.vocab_size;
  assert.ok(realLogits(logits, f.batch.attention_mask!, V).every(Number.isNaN), 'every real token\'s logits are NaN');
  await engine.dispose();
});

test("precision 'q8_0' on the AVX2 paths (NODETUNE_Q8_ISA=avx2): the q8_0 tests of this file again, in a process of their own", { skip: process.env.NODETUNE_Q8_ISA ? 'this is that process' : false }, () => {
  // NODE_TEST_CONTEXT (set by the runner) would make the child report to a parent runner instead of stdout.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const r = spawnSync(process.execPath, ['--test', '--test-reporter=tap', '--test-name-pattern=q8_0', fileURLToPath(import.meta.url)], {
    encoding: 'utf8', env: { ...env, NODETUNE_Q8_ISA: 'avx2' }, timeout: 300_000,
  });
  assert.equal(r.status, 0, r.stdout.split('\n').filter((l) => /^not ok|error|rel err/.test(l)).join('\n'));
  assert.match(r.stdout, /^# pass [1-9]/m);
  assert.match(r.stdout, /^# fail 0$/m);
});

test("precision 'q8_0': a frozen base on the CPU only (LoRA or trainable: false), causal LMs only, dimensions in blocks of 32", async () => {
  const f = await load('tiny-llama');
  assert.throws(() => makeEngine(f, undefined, { precision: 'q8_0', device: 'cpu' }),
    /^Error: precision 'q8_0' holds a frozen base in Q8_0 for generation: build the engine with options.trainable = false \(or LoRA adapters to apply\), or train in 'fp32' or 'bf16'$/);
  assert.throws(() => makeEngine(f, undefined, { precision: 'q8_0', device: 'cuda', trainable: false }),
    /^Error: precision 'q8_0' runs on the CPU only: on device 'cuda' use 'bf16' or 'fp32'$/);
  assert.throws(() => checkDevice('cpu', 'q8_0'), /^Error: precision 'q8_0' is for causal LMs' generation: the encoder engines run in fp32 \(or bf16 on CUDA\)$/);
  assert.doesNotThrow(() => checkDevice('cpu', 'q8_0', true));
  assert.throws(() => checkDevice('cpu', 'int4', true), /^Error: precision 'int4' is not supported: expected 'fp32', 'bf16' or 'q8_0'$/);
  const odd = { ...f.config, hidden_size: 48, num_attention_heads: 3, num_key_value_heads: 1 };
  assert.throws(() => new Engine({ config: odd, precision: 'q8_0', trainable: false }),
    /^Error: precision 'q8_0' quantizes in blocks of 32 inputs: config hidden_size must be a multiple of 32, got 48$/);
  // The same logits from prefill + decode as from forward over the whole sequence (the decode path's Q8_0 products).
  const frozen = makeEngine(f, undefined, { trainable: false, precision: 'q8_0', device: 'cpu' });
  const ids = Array.from(f.batch.input_ids.subarray(0, 12));
  const V = f.config.vocab_size;
  const whole = await frozen.forward({ input_ids: Int32Array.from(ids), attention_mask: new Int32Array(12).fill(1), batchSize: 1, seqLen: 12 });
  const pre = await frozen.prefill({ input_ids: Int32Array.from(ids.slice(0, 8)), attention_mask: new Int32Array(8).fill(1), batchSize: 1, seqLen: 8 }, { maxNewTokens: 4 });
  let worst = relErr(pre.logits, whole.logits.subarray(7 * V, 8 * V));
  for (let t = 8; t < 12; t++) {
    const step = await frozen.decode(Int32Array.of(ids[t]));
    if (t < 11) worst = Math.max(worst, relErr(step.logits, whole.logits.subarray(t * V, (t + 1) * V)));
  }
  assert.ok(worst < 1e-5, `q8_0 decode vs forward: rel err ${worst}`);
  await frozen.dispose();
});

test("device 'cuda': the CUDA decoder engine where the addon has the CUDA backend, else a clear error", async () => {
  const f = await load('tiny-llama');
  if (!loadAddon().cudaCompiled) {
    assert.throws(() => makeEngine(f, undefined, { device: 'cuda' }), /this build of nodetune has no CUDA backend/);
    return;
  }
  // Built with CUDA: a GPU gives an engine on it, no driver or device a thrown Error that says so.
  let gpu: Engine | undefined;
  try {
    gpu = makeEngine(f, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, { device: 'cuda', precision: 'bf16' });
  } catch (err) {
    assert.match((err as Error).message, /CUDA device 0 requested, but .*(driver|device)/);
    return;
  }
  assert.match(gpu.device(), /^cuda:0 \(.*, bf16\)$/);
  await gpu.dispose();
});

test("precision 'bf16' on the CPU: a frozen base only (LoRA or trainable: false), causal LMs only", async () => {
  const f = await load('tiny-llama');
  // (checked before whether this CPU has bf16 GEMMs at all)
  assert.throws(() => makeEngine(f, undefined, { precision: 'bf16' }),
    /^Error: precision 'bf16' on the CPU holds a frozen base in bf16 and needs LoRA \(options.lora\) or an engine that trains nothing \(options.trainable = false\): full fine-tuning on the CPU trains in fp32$/);
  assert.throws(() => checkDevice('cpu', 'bf16'), /^Error: precision 'bf16' needs device 'cuda': the CPU encoder engine trains in fp32$/);
});

test('trainable: false builds an engine that trains nothing: the same logits, no gradient buffers, training refused; with bf16 its weights are read in bf16', async () => {
  const f = await load('tiny-llama');
  const full = makeEngine(f);
  const frozen = makeEngine(f, undefined, { trainable: false });
  assert.ok(frozen.parameterNames().every((n) => !frozen.isTrainable(n)));
  const a = await full.forward(f.batch), b = await frozen.forward(f.batch);
  assert.deepEqual(b.logits, a.logits);
  assert.equal(b.loss, a.loss);
  assert.throws(() => frozen.setTrainable('model.norm.weight', true), /frozen when the engine was built \(a LoRA base weight, or options.trainable = false\)/);
  await assert.rejects(frozen.accumulate(f.batch), /built with options.trainable = false/);
  assert.throws(() => makeEngine(f, f.meta.lora.config, { trainable: false }), /trains nothing, but options.lora adds adapters/);
  if (!cpuBf16) {
    const bf16 = makeEngine(f, undefined, { trainable: false, precision: 'bf16' });
    const c = await bf16.forward(f.batch);
    const V = f.config.vocab_size;
    const err = relErr(realLogits(c.logits, f.batch.attention_mask!, V), realLogits(f.expected.get('logits')!, f.batch.attention_mask!, V));
    assert.ok(err < 2e-2 && err > 0, `bf16 logits rel err ${err} against transformers float64`);
    await bf16.dispose();
  }
  await full.dispose();
  await frozen.dispose();
});
