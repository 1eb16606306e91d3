// The tiny-bert fixture (test/fixtures/tiny-bert: a random 2-layer BERT, one
// padded batch and Hugging Face float64 reference values, made by
// scripts/reference/tiny_bert.py) and the error metric its checks use; shared
// by test/engine.test.ts and the GPU parity script test/gpu/parity.mjs.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BertConfig } from '../../src/config.js';
import { Engine, type Batch, type EngineOptions } from '../../src/engine.js';
import { readSafetensors } from '../../src/io/safetensors.js';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures');

/** A scripts/reference BERT fixture: its model, batch.json (the batch and `meta`) and reference tensors. */
export interface BertFixture<M = object> {
  config: BertConfig;
  weights: Map<string, Float32Array>;
  expected: Map<string, Float32Array>;
  batch: Batch;
  meta: M & {
    optimizer: { lr: number; betas: [number, number]; eps: number; weight_decay: number; max_grad_norm: number };
    train_log: Array<{ loss: number; grad_norm: number }>;
  };
}

export type TinyBertFixture = BertFixture<{ class_weights: number[]; label_smoothing: number }>;

/** The float32 tensors of a safetensors file by name. */
export async function tensors(path: string): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, t] of (await readSafetensors(path)).tensors) {
    if (t.data instanceof Float32Array) out.set(name, t.data);
  }
  return out;
}

/**
 * test/fixtures/<name>: config (num_labels from id2label when it has one), weights, reference
 * tensors and the (B, T) batch; labels as batch.json holds them (B per sequence, or B×T per token).
 */
export async function loadBertFixture<M>(name: string): Promise<BertFixture<M>> {
  const dir = join(fixtures, name);
  const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as BertConfig;
  config.num_labels = Object.keys(config.id2label ?? {}).length || config.num_labels;
  const meta = JSON.parse(await readFile(join(dir, 'batch.json'), 'utf8'));
  const flat = (rows: number[] | number[][]) => Int32Array.from(rows.flat());
  const batch: Batch = {
    input_ids: flat(meta.input_ids),
    attention_mask: flat(meta.attention_mask),
    token_type_ids: flat(meta.token_type_ids),
    labels: flat(meta.labels),
    batchSize: meta.input_ids.length,
    seqLen: meta.input_ids[0].length,
  };
  return {
    config,
    weights: await tensors(join(dir, 'model.safetensors')),
    expected: await tensors(join(dir, 'expected.safetensors')),
    batch,
    meta,
  };
}

/** The classifier fixture, test/fixtures/tiny-bert. */
export function loadTinyBertFixture(): Promise<TinyBertFixture> {
  return loadBertFixture('tiny-bert');
}

/**
 * An Engine with the fixture's AdamW and clipping settings (the reference
 * optimizer's) and its weights; `options` (config, seed, threads, device, ...)
 * override. A parameter the fixture lacks keeps the engine's initial value.
 */
export function fixtureEngine(f: BertFixture, options: Partial<{ config: BertConfig } & EngineOptions> = {}): Engine {
  const o = f.meta.optimizer;
  const engine = new Engine({
    config: f.config,
    adam_beta1: o.betas[0],
    adam_beta2: o.betas[1],
    adam_epsilon: o.eps,
    weight_decay: o.weight_decay,
    max_grad_norm: o.max_grad_norm,
    ...options,
  });
  for (const name of engine.parameterNames()) {
    const w = f.weights.get(name);
    if (w) engine.setWeight(name, w);
  }
  return engine;
}

/**
 * max |a - b| / max |b|, the per-tensor relative error. A reference below
 * 1e-9 (the key bias gradient is analytically zero: softmax ignores a shift
 * shared by all keys) is compared absolutely, against float32 round-off.
 * Infinity for different lengths or a non-finite value in `a`, so a check fails.
 */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  if (den < 1e-9) return num < 1e-9 ? 0 : Infinity;
  return num / den;
}

/**
 * Three engine.trainStep calls on `batch` at `lr`, each loss and pre-clip gradient norm within
 * 1e-4 relative of the reference `trainLog`, then every weight within `tolerance(name)` of the
 * reference `after3.<name>` (torch.optim.AdamW with HF Trainer's parameter groups).
 */
export async function checkThreeAdamWSteps(
  engine: Engine,
  batch: Batch,
  lr: number,
  trainLog: ReadonlyArray<{ loss: number; grad_norm: number }>,
  expected: Map<string, Float32Array>,
  tolerance: (name: string) => number = () => 1e-4,
): Promise<void> {
  for (let s = 0; s < 3; s++) {
    const { loss, gradNorm } = await engine.trainStep(batch, { learningRate: lr });
    const ref = trainLog[s];
    assert.ok(Math.abs(loss - ref.loss) / ref.loss < 1e-4, `step ${s + 1} loss ${loss} vs ${ref.loss}`);
    assert.ok(Math.abs(gradNorm - ref.grad_norm) / ref.grad_norm < 1e-4, `step ${s + 1} norm ${gradNorm} vs ${ref.grad_norm}`);
  }
  for (const name of engine.parameterNames()) {
    const err = relErr(engine.getWeight(name), expected.get(`after3.${name}`)!);
    assert.ok(err < tolerance(name), `${name} after 3 steps: rel err ${err} (tolerance ${tolerance(name)})`);
  }
}
