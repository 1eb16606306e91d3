// The learning-rate range test (src/train/lr-find.ts) on a small random BERT classifier
// (test/helpers/tiny-model.ts): weights, AdamW moments and counters identical before and after,
// the rate reproducible with the seed, a diverging curve handled, the rule on synthetic curves, and
// learning_rate 'auto' in the Trainer (lr_find.json, the rate recorded and reused on resume) and
// in `nodetune lr-find`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, engineWeights, type Model } from '../src/model.js';
import { ClassificationTask } from '../src/tasks/classification.js';
import { Trainer, type EncodedExample, type LogEntry } from '../src/train/trainer.js';
import { lrFind, steepestIndex, LR_FIND_DIVISOR } from '../src/train/lr-find.js';
import { CLI, INTENTS, intentRows, writeIntentCsv, writeTinyModel } from './helpers/tiny-model.js';

const LABELS = Object.keys(INTENTS).sort();
let tmp = '';
let modelDir = '';
let csv = '';
let run = 0;
const outDir = () => join(tmp, `run-${++run}`);

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-lrfind-'));
  modelDir = await writeTinyModel(join(tmp, 'tiny'), { dropout: true });
  csv = join(tmp, 'train.csv');
  await writeIntentCsv(csv, intentRows(64, 9));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function tiny(): Promise<{ model: Model; rows: EncodedExample[] }> {
  const model = await loadModel(modelDir, { num_labels: LABELS.length, id2label: Object.fromEntries(LABELS.map((l, i) => [String(i), l])), seed: 42, threads: 2, log: () => undefined });
  const rows = intentRows(64, 9).map((r) => ({ ...model.tokenizer.encode(r.text, null, { maxLength: 32 }), label: LABELS.indexOf(r.category) }));
  return { model, rows };
}

test('lr-find leaves weights, AdamW moments and counters exactly as they were, and repeats with the seed', async () => {
  const { model, rows } = await tiny();
  const task = new ClassificationTask(model);
  // A few real steps first, so the moments and counters are not the zeros a fresh engine has.
  for (let i = 0; i < 3; i++) await model.engine.trainStep(task.collate(rows.slice(8 * i, 8 * i + 8)), { learningRate: 1e-3 });
  const weights = engineWeights(model.engine);
  const moments = new Map(model.engine.parameterNames().map((n) => [n, model.engine.getOptimizerState(n)]));
  const counters = model.engine.getCounters();
  const a = await lrFind(task, rows, { batch_size: 8, seed: 5, num_steps: 60, max_lr: 10 });
  assert.deepEqual(engineWeights(model.engine), weights);
  for (const [n, m] of moments) assert.deepEqual(model.engine.getOptimizerState(n), m, n);
  assert.deepEqual(model.engine.getCounters(), counters);
  for (const n of model.engine.parameterNames()) assert.ok(model.engine.getGradient(n).every((g) => g === 0), `${n}: gradients zeroed`);
  const b = await lrFind(task, rows, { batch_size: 8, seed: 5, num_steps: 60, max_lr: 10 });
  assert.deepEqual(b.losses, a.losses, 'the same seed gives the same curve');
  assert.equal(b.learning_rate, a.learning_rate);
  const c = await lrFind(task, rows, { batch_size: 8, seed: 6, num_steps: 60, max_lr: 10 });
  assert.notDeepEqual(c.losses, a.losses, 'another seed, other batches');
  // The rates grow geometrically from min_lr; the choice is the steepest point's rate.
  assert.equal(a.lrs[0], 1e-7);
  assert.ok(Math.abs(a.lrs[1] / a.lrs[0] - 10 ** (8 / 59)) < 1e-9);
  assert.equal(a.learning_rate, a.lrs[a.steepest_index]);
  await model.engine.dispose();
});

test('lr-find: a diverging curve stops at 4x the smoothed minimum; one that diverges at once is refused', async () => {
  const { model, rows } = await tiny();
  const task = new ClassificationTask(model);
  const r = await lrFind(task, rows, { batch_size: 8, num_steps: 100, min_lr: 1e-5, max_lr: 1e4, divisor: 10 });
  assert.notEqual(r.diverged_at, null, 'rates up to 1e4 diverge');
  assert.ok(r.lrs.length < 100);
  const minimum = Math.min(...r.smoothed);
  assert.ok(r.smoothed.at(-1)! > 4 * minimum || !Number.isFinite(r.losses.at(-1)!));
  assert.ok(r.steepest_index < r.smoothed.indexOf(minimum) + 1, 'the steepest point comes before the minimum');
  assert.ok(Math.abs(r.learning_rate - r.lrs[r.steepest_index] / 10) < 1e-15);
  await assert.rejects(lrFind(task, rows, { batch_size: 8, num_steps: 50, min_lr: 1e3, max_lr: 1e9 }), /diverged after \d+ steps, too few to read a rate from; start at a lower rate \(min_lr\)/);
  await assert.rejects(lrFind(task, rows, { batch_size: 8, min_lr: 1, max_lr: 0.1 }), /expected 0 < min_lr < max_lr/);
  await model.engine.dispose();
});

test('lr-find: stopping (Ctrl-C) mid-test restores the model and throws; accumulation takes that many micro-batches a step', async () => {
  const { model, rows } = await tiny();
  const task = new ClassificationTask(model);
  const weights = engineWeights(model.engine);
  let polls = 0;
  await assert.rejects(lrFind(task, rows, { batch_size: 8, shouldStop: () => ++polls > 5 }), /learning-rate range test interrupted after 5 steps; the model is as it was/);
  assert.deepEqual(engineWeights(model.engine), weights);
  const seen: number[] = [];
  const counted = Object.assign(Object.create(task), { collate: (ex: EncodedExample[]) => (seen.push(ex.length), task.collate(ex)) });
  const r = await lrFind(counted, rows, { batch_size: 4, accumulation: 2, num_steps: 60, max_lr: 10 });
  // Two micro-batches of 4 a step (one more step's pair when a non-finite loss ended the test).
  assert.ok(seen.length === 2 * r.lrs.length || seen.length === 2 * (r.lrs.length + 1), `${seen.length} micro-batches for ${r.lrs.length} steps`);
  assert.ok(seen.every((n) => n === 4));
  await assert.rejects(lrFind(task, rows, { batch_size: 8, divisor: 0 }), /divisor 0: expected a finite number > 0/);
  await model.engine.dispose();
});

test('steepestIndex: the most negative slope before the minimum, skipping the first tenth', () => {
  const lrs = Array.from({ length: 50 }, (_, i) => 10 ** (-6 + i / 10));
  // Flat, a fall steepest at i = 30, a minimum at 38, then a rise steeper than any fall.
  const loss = lrs.map((_, i) => (i < 20 ? 5 : i <= 38 ? 5 - 3 / (1 + Math.exp(-(i - 30))) : 2 + (i - 38) ** 2));
  assert.equal(steepestIndex(lrs, loss), 30);
  assert.equal(steepestIndex(lrs, lrs.map((_, i) => i)), -1, 'a curve that only rises has no falling point');
  // An early drop inside the first tenth (smoothing start-up) is not taken.
  const early = lrs.map((_, i) => (i < 3 ? 10 - 3 * i : i < 40 ? 4 - i / 20 : 10));
  assert.ok(steepestIndex(lrs, early) >= 5);
});

test("Trainer learning_rate 'auto': the range test picks the rate, lr_find.json records it, a resume reuses it", async () => {
  const { model, rows } = await tiny();
  const output = outDir();
  const found: number[] = [];
  const args = { output_dir: output, learning_rate: 'auto' as const, per_device_train_batch_size: 8, num_train_epochs: 2, logging_steps: 1, seed: 3 };
  const t1 = new Trainer(model, rows, null, args);
  t1.on('lr_find', (r) => found.push(r.learning_rate));
  const steps: LogEntry[] = [];
  t1.on('step', (e: LogEntry) => {
    steps.push(e);
    if (e.step === 5) t1.stop();
  });
  await t1.trainLoop();
  assert.equal(found.length, 1);
  assert.equal(t1.args.learning_rate, found[0]);
  assert.equal(t1.lrFound!.learning_rate, found[0]);
  assert.ok(found[0] > 0 && Number.isFinite(found[0]));
  assert.equal(found[0], t1.lrFound!.lrs[t1.lrFound!.steepest_index] / LR_FIND_DIVISOR);
  const saved = JSON.parse(await readFile(join(output, 'lr_find.json'), 'utf8'));
  assert.equal(saved.learning_rate, found[0]);
  const state = JSON.parse(await readFile(join(output, 'checkpoint-last', 'trainer_state.json'), 'utf8'));
  assert.equal(state.settings.learning_rate, found[0]);
  // Peak rate reached after the (zero) warmup: the first logged rate is the found one.
  assert.ok(Math.abs(steps[0].learning_rate - found[0]) <= found[0] * 0.1);
  await model.engine.dispose();
  const again = await tiny();
  const t2 = new Trainer(again.model, again.rows, null, { ...args, resume_from_checkpoint: true });
  t2.on('lr_find', () => assert.fail('a resumed run must not run the range test again'));
  await t2.trainLoop();
  assert.equal(t2.args.learning_rate, found[0]);
  assert.equal(t2.lrFound, null);
  await again.model.engine.dispose();
});

test('nodetune lr-find prints the rate and writes the curve; train with no rate flag runs it and reports it', async () => {
  const out = outDir();
  const r = spawnSync(process.execPath, [CLI, 'lr-find', '--model', modelDir, '--train', csv, '--label-column', 'category', '--batch-size', '8', '--max-lr', '10', '--threads', '2', '--output', out], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /learning rate\s+\d\.\d\de-\d/);
  assert.ok(Number(r.stdout.trim()) > 0, `stdout holds the rate alone: ${r.stdout}`);
  assert.match(r.stderr, /learning-rate range test: .*steepest at/);
  const saved = JSON.parse(await readFile(join(out, 'lr_find.json'), 'utf8'));
  assert.ok(saved.lrs.length > 10 && saved.lrs.length <= 100);
  assert.match(await readFile(join(out, 'report.html'), 'utf8'), /<section id="lr-find">.*<svg/s);
  const run2 = outDir();
  const t = spawnSync(process.execPath, [CLI, 'train', '--model', modelDir, '--train', csv, '--label-column', 'category', '--output', run2, '--max-steps', '3', '--threads', '2'], { encoding: 'utf8' });
  assert.equal(t.status, 0, t.stderr);
  assert.match(t.stderr, /learning-rate range test: /);
  assert.ok(existsSync(join(run2, 'lr_find.json')));
  assert.match(await readFile(join(run2, 'report.html'), 'utf8'), /<section id="lr-find">/);
  // --output holding a training run is refused before the test runs; a file too.
  const clash = spawnSync(process.execPath, [CLI, 'lr-find', '--model', modelDir, '--train', csv, '--label-column', 'category', '--output', run2], { encoding: 'utf8' });
  assert.notEqual(clash.status, 0);
  assert.match(clash.stderr, /--output .* already holds other files \(.*\); lr-find writes lr_find.json and report.html into a new folder or one of its own/);
  assert.ok(!clash.stderr.includes('range test:'), 'refused before the test ran');
  const bad = spawnSync(process.execPath, [CLI, 'train', '--model', modelDir, '--train', csv, '--output', outDir(), '--learning-rate', 'fast'], { encoding: 'utf8' });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /'fast' is not a number/);
});
