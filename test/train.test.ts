// The training loop (src/train/trainer.ts, src/train/finetune.ts) on a small
// random BERT (test/helpers/tiny-model.ts): exact resume, gradient
// accumulation, the schedule's step count, NaN losses, freezing, class weights
// and label smoothing against an independent loss computation, early stopping.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, engineWeights, type LoadModelOptions, type Model } from '../src/model.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { getScheduler } from '../src/train/schedule.js';
import { makeBatches } from '../src/data/index.js';
import { fineTune, LOCK_FILE, type FineTuneOptions } from '../src/train/finetune.js';
import { Trainer, collate, recoverUnfinishedSaves, validateTrainingArguments, type EncodedExample, type LogEntry, type TrainingArguments } from '../src/train/trainer.js';
import { ClassificationTask } from '../src/tasks/classification.js';
import { INTENTS, intentRows, writeIntentCsv, writeTinyModel, type IntentRow } from './helpers/tiny-model.js';

const THREADS = 2;
const LABELS = Object.keys(INTENTS).sort();
const ID2LABEL = Object.fromEntries(LABELS.map((l, i) => [String(i), l]));

let tmp: string;
let withDropout: string;
let noDropout: string;
let run = 0;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-train-'));
  withDropout = await writeTinyModel(join(tmp, 'tiny-dropout'), { dropout: true });
  noDropout = await writeTinyModel(join(tmp, 'tiny-plain'), { dropout: false, bare: true });
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const outDir = () => join(tmp, `run-${++run}`);

function load(dir: string, extra: LoadModelOptions = {}): Promise<Model> {
  return loadModel(dir, { num_labels: LABELS.length, id2label: ID2LABEL, seed: 42, threads: THREADS, log: () => undefined, ...extra });
}

function encode(model: Model, rows: IntentRow[]): EncodedExample[] {
  return rows.map((r) => ({ ...model.tokenizer.encode(r.text, null, { maxLength: 64 }), label: LABELS.indexOf(r.category) }));
}

interface Run {
  steps: LogEntry[];
  weights: Map<string, Float32Array>;
  counters: { optimizerStep: number; microStep: number };
  result: Awaited<ReturnType<Trainer['trainLoop']>>;
}

/** One Trainer run on a freshly loaded model; `onStep` sees every 'step' event. */
async function train(
  modelDir: string,
  rows: IntentRow[],
  evalRows: IntentRow[] | null,
  args: TrainingArguments,
  onStep?: (e: LogEntry, trainer: Trainer) => void,
  engine: LoadModelOptions = {},
): Promise<Run> {
  const model = await load(modelDir, engine);
  try {
    const trainer = new Trainer(model, encode(model, rows), evalRows && encode(model, evalRows), args);
    const steps: LogEntry[] = [];
    trainer.on('step', (e: LogEntry) => {
      steps.push(e);
      onStep?.(e, trainer);
    });
    const result = await trainer.trainLoop();
    return { steps, weights: engineWeights(model.engine), counters: model.engine.getCounters(), result };
  } finally {
    await model.engine.dispose();
  }
}

async function logLines(dir: string): Promise<Array<Record<string, number>>> {
  const text = await readFile(join(dir, 'training_log.jsonl'), 'utf8');
  return text
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, number>);
}

const withoutTiming = (e: Record<string, number>) => ({ ...e, samples_per_second: 0 });

function assertSameWeights(a: Map<string, Float32Array>, b: Map<string, Float32Array>, what: string): void {
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [name, w] of a) assert.ok(Buffer.from(w.buffer).equals(Buffer.from(b.get(name)!.buffer)), `${what}: ${name} differs`);
}

/**
 * Run A trains `total` steps without a break; run B stops itself after `stopAt`
 * steps, and a fresh model + Trainer resumes from checkpoint-last. Dropout is
 * on, so equal losses need the dropout RNG counters, AdamW moments, data
 * position and schedule restored exactly.
 */
async function checkResume(args: Omit<TrainingArguments, 'output_dir'>, total: number, stopAt: number): Promise<void> {
  const rows = intentRows(40, 21);
  const evalRows = intentRows(12, 22);
  const a = await train(withDropout, rows, evalRows, { ...args, output_dir: outDir() });
  assert.equal(a.steps.length, total);
  const dirB = outDir();
  const b1 = await train(withDropout, rows, evalRows, { ...args, output_dir: dirB }, (e, t) => {
    if (e.step === stopAt) t.stop();
  });
  assert.equal(b1.steps.length, stopAt, 'stop() ends the run after the current optimizer step');
  const state = JSON.parse(await readFile(join(dirB, 'checkpoint-last/trainer_state.json'), 'utf8')) as { global_step: number };
  assert.equal(state.global_step, stopAt);
  const b2 = await train(withDropout, rows, evalRows, { ...args, output_dir: dirB, resume_from_checkpoint: true });
  assert.equal(b2.steps[0].step, stopAt + 1, 'the resumed run starts at the next optimizer step');
  const b = [...b1.steps, ...b2.steps];
  assert.deepEqual(b.map((e) => e.loss), a.steps.map((e) => e.loss), 'losses equal the uninterrupted run exactly');
  assert.deepEqual(b.map((e) => e.grad_norm), a.steps.map((e) => e.grad_norm));
  assert.deepEqual(b.map((e) => e.learning_rate), a.steps.map((e) => e.learning_rate));
  assert.deepEqual(b.map((e) => e.epoch), a.steps.map((e) => e.epoch));
  assertSameWeights(b2.weights, a.weights, 'final weights');
  assert.deepEqual(b2.counters, a.counters);
  assert.deepEqual(
    b2.result.evals.map((e) => [e.step, e.epoch, e.loss, e.accuracy]),
    a.result.evals.map((e) => [e.step, e.epoch, e.loss, e.accuracy]),
  );
  assert.ok(new Set(a.steps.map((e) => e.loss)).size > total / 2, 'the losses are not constant (the comparison is meaningful)');
  await assertDropoutActive(rows, args, a.steps[0].loss);
}

/** The first training loss differs from the dropout-free loss of the same batch, so dropout is really on. */
async function assertDropoutActive(rows: IntentRow[], args: Omit<TrainingArguments, 'output_dir'>, firstLoss: number): Promise<void> {
  const model = await load(withDropout);
  try {
    const examples = encode(model, rows);
    const accumulation = args.gradient_accumulation_steps ?? 1;
    const batches = makeBatches(examples.map((e) => e.input_ids.length), { batchSize: args.per_device_train_batch_size!, seed: args.seed, epoch: 0 });
    let inference = 0;
    const window = batches.slice(0, accumulation);
    const n = window.reduce((k, b) => k + b.length, 0);
    for (const idx of window) inference += ((await model.engine.forward(collate(idx.map((i) => examples[i]), model.tokenizer.padTokenId))).loss! * idx.length) / n;
    assert.ok(Math.abs(inference - firstLoss) > 1e-4, `training loss ${firstLoss} vs dropout-free ${inference}`);
  } finally {
    await model.engine.dispose();
  }
}

test('resume mid-epoch with dropout on: losses, weights and evaluations equal an uninterrupted run exactly', async () => {
  // 40 examples, batch 8: 5 optimizer steps per epoch, 15 in all; stop in epoch 2.
  const args = { num_train_epochs: 3, per_device_train_batch_size: 8, learning_rate: 2e-3, warmup_steps: 3, logging_steps: 4, seed: 7 };
  await checkResume(args, 15, 7);
});

test('resume at an epoch boundary under gradient accumulation (windows 2, 2, 1)', async () => {
  // 5 micro-batches per epoch, accumulation 2: optimizer steps 1-3 are epoch 1; stop right at its end.
  const args = { num_train_epochs: 3, per_device_train_batch_size: 8, gradient_accumulation_steps: 2, learning_rate: 2e-3, logging_steps: 2, seed: 8 };
  await checkResume(args, 9, 3);
});

test('training_log.jsonl after a resume equals the uninterrupted log (logging window spans the stop)', async () => {
  const rows = intentRows(40, 23);
  const args = { num_train_epochs: 2, per_device_train_batch_size: 8, learning_rate: 1e-3, logging_steps: 4, seed: 9, eval_strategy: 'no' as const };
  const dirA = outDir();
  await train(withDropout, rows, null, { ...args, output_dir: dirA });
  const dirB = outDir();
  await train(withDropout, rows, null, { ...args, output_dir: dirB }, (e, t) => {
    if (e.step === 6) t.stop();
  });
  await train(withDropout, rows, null, { ...args, output_dir: dirB, resume_from_checkpoint: true });
  const logA = await logLines(dirA);
  assert.deepEqual(logA.map((e) => e.step), [4, 8, 10]);
  assert.deepEqual((await logLines(dirB)).map(withoutTiming), logA.map(withoutTiming));
});

/** ‖Δa − Δb‖ / ‖Δa‖ over all parameters, Δ = weights after − `initial`. */
function relativeUpdateError(initial: Map<string, Float32Array>, a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  let err = 0;
  let norm = 0;
  for (const [name, w0] of initial) {
    const x = a.get(name)!;
    const y = b.get(name)!;
    for (let i = 0; i < w0.length; i++) {
      err += (x[i] - y[i]) ** 2;
      norm += (x[i] - w0[i]) ** 2;
    }
  }
  return Math.sqrt(err / norm);
}

/** max |a − b| / max |a| over all parameters. */
function maxRelativeDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  let diff = 0;
  let scale = 0;
  for (const [name, x] of a) {
    const y = b.get(name)!;
    for (let i = 0; i < x.length; i++) {
      diff = Math.max(diff, Math.abs(x[i] - y[i]));
      scale = Math.max(scale, Math.abs(x[i]));
    }
  }
  return diff / scale;
}

for (const [n, big, small] of [
  [4, 4, 2],
  [3, 3, 2], // uneven windows (2 + 1): each micro-batch's loss is weighted by its share of the examples
] as const) {
  test(`gradient accumulation: batch ${big} × 1 and batch ${small} × 2 micro-batches give the same optimizer step (${n} examples)`, async () => {
    const rows = intentRows(n, 31 + n);
    const lengths = new Set(rows.map((r) => r.text.split(' ').length));
    assert.ok(lengths.size > 1, 'examples of different lengths, so the micro-batches are padded differently');
    // adam_epsilon 1 ≫ |g|: the first AdamW step is lr·g/(|g| + 1) ≈ a plain gradient step. With the default
    // epsilon it is ≈ lr·sign(g), which turns float rounding in near-zero gradients (e.g. attention key biases,
    // whose exact gradient is 0) into full-size differences, and hides a wrongly scaled gradient.
    const engine = { adam_epsilon: 1 };
    const common = { max_steps: 1, group_by_length: false, eval_strategy: 'no' as const, learning_rate: 1, seed: 5, logging_steps: 1 };
    const a = await train(noDropout, rows, null, { ...common, output_dir: outDir(), per_device_train_batch_size: big }, undefined, engine);
    const b = await train(noDropout, rows, null, { ...common, output_dir: outDir(), per_device_train_batch_size: small, gradient_accumulation_steps: 2 }, undefined, engine);
    assert.deepEqual(a.counters, { optimizerStep: 1, microStep: 1 });
    assert.deepEqual(b.counters, { optimizerStep: 1, microStep: 2 });
    assert.ok(Math.abs(a.steps[0].loss - b.steps[0].loss) <= 1e-6 * a.steps[0].loss, `loss ${a.steps[0].loss} vs ${b.steps[0].loss}`);
    assert.ok(Math.abs(a.steps[0].grad_norm - b.steps[0].grad_norm) <= 1e-5 * a.steps[0].grad_norm, `grad_norm ${a.steps[0].grad_norm} vs ${b.steps[0].grad_norm}`);
    const rel = maxRelativeDiff(a.weights, b.weights);
    assert.ok(rel <= 1e-6, `parameters differ by ${rel} (relative)`);
    const initial = engineWeights((await load(noDropout)).engine);
    const update = relativeUpdateError(initial, a.weights, b.weights);
    assert.ok(update <= 1e-4, `the two updates differ by ${update} (relative)`);
    assert.ok(maxRelativeDiff(initial, a.weights) > 1e-3, 'the step moved the parameters');
  });
}

test('a final partial accumulation window still steps; the schedule counts optimizer steps', async () => {
  // 10 examples, batch 2: 5 micro-batches per epoch; accumulation 2 → windows 2, 2, 1 → 3 steps per epoch.
  const rows = intentRows(10, 41);
  const args: TrainingArguments = {
    output_dir: outDir(),
    num_train_epochs: 2,
    per_device_train_batch_size: 2,
    gradient_accumulation_steps: 2,
    learning_rate: 1e-3,
    warmup_steps: 2,
    logging_steps: 1,
    eval_strategy: 'no',
  };
  let totalSteps = 0;
  const r = await train(noDropout, rows, null, args, (_, t) => (totalSteps = t.totalSteps));
  assert.equal(totalSteps, 6);
  assert.deepEqual(r.steps.map((e) => e.step), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(r.counters, { optimizerStep: 6, microStep: 10 });
  assert.deepEqual(r.steps.map((e) => e.epoch), [0.4, 0.8, 1, 1.4, 1.8, 2]);
  const schedule = getScheduler({ name: 'linear', learningRate: 1e-3, numTrainingSteps: 6, warmupSteps: 2 });
  assert.deepEqual(r.steps.map((e) => e.learning_rate), [0, 1, 2, 3, 4, 5].map((s) => schedule.lrAt(s)));
  assert.deepEqual((await logLines(args.output_dir)).map((e) => e.step), [1, 2, 3, 4, 5, 6]);
});

test('fractional num_train_epochs trains ceil(epochs × steps per epoch) steps; undefined arguments keep their defaults', async () => {
  // 10 examples, batch 2: 5 steps per epoch; 1.5 epochs → 8 steps (HF: math.ceil(num_train_epochs × steps per epoch)).
  const r = await train(noDropout, intentRows(10, 42), null, {
    output_dir: outDir(),
    num_train_epochs: 1.5,
    per_device_train_batch_size: 2,
    eval_strategy: 'no',
    learning_rate: undefined,
    logging_steps: undefined,
  });
  assert.deepEqual(r.steps.map((e) => e.step), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(r.steps[0].learning_rate, 5e-5, 'the default learning_rate');
});

test('bad TrainingArguments are rejected before the model is loaded, naming the argument', async () => {
  const rows = intentRows(8, 43);
  const cases: Array<[Partial<FineTuneOptions>, RegExp]> = [
    [{ gradient_accumulation_steps: 0 }, /^Error: gradient_accumulation_steps 0: expected a positive integer$/],
    [{ logging_steps: 2.5 }, /^Error: logging_steps 2\.5: expected a positive integer$/],
    [{ per_device_eval_batch_size: -1 }, /^Error: per_device_eval_batch_size -1: expected a positive integer$/],
    [{ num_train_epochs: 0 }, /^Error: num_train_epochs 0: expected a number > 0 \(or max_steps > 0\)$/],
    [{ metric_for_best_model: 'f1' }, /^Error: metric_for_best_model 'f1' is not one of: accuracy, macro_f1, micro_f1, weighted_f1, loss$/],
    [{ learning_rate: -1e-3 }, /^Error: learning_rate -0.001; expected a finite number >= 0$/],
    [{ early_stopping_patience: -1 }, /^Error: early_stopping_patience -1: expected an integer ≥ 0/],
    [{ early_stopping_patience: 2, eval_strategy: 'no' }, /^Error: early_stopping_patience 2 needs evaluations; eval_strategy is 'no'/],
    // The engine would reject it too, but only after the model is loaded.
    [{ adam_beta2: 1.5 }, /^Error: adam_beta2 1\.5: expected a number in \[0, 1\)$/],
    [{ label_smoothing_factor: 1.5 }, /^Error: label_smoothing_factor 1\.5: expected a number in \[0, 1\] \(torch\.nn\.CrossEntropyLoss\)$/],
    [{ class_weights: [1, -2, 1, 1] }, /^Error: class_weights\[1\] -2: expected a finite number ≥ 0$/],
  ];
  for (const [bad, message] of cases) {
    let loaded = false;
    await assert.rejects(fineTuneRows(rows, { ...bad, log: () => (loaded = true) }), message);
    assert.equal(loaded, false, `${JSON.stringify(bad)}: rejected before loading the model`);
  }
});

test('output_dir is locked while a run trains: a live owner is an error naming its pid, a dead owner\'s lock is taken over and removed', async () => {
  const rows = intentRows(16, 45);
  const csv = `${outDir()}.csv`;
  await writeIntentCsv(csv, rows);
  const out = outDir();
  await mkdir(out, { recursive: true });
  const options: FineTuneOptions = { model: noDropout, train_file: csv, label_column: 'category', output_dir: out, validation_split: 0, eval_strategy: 'no', threads: THREADS, max_steps: 1 };
  await writeFile(join(out, LOCK_FILE), `${process.pid}\n`);
  await assert.rejects(fineTune(options), new RegExp(`--output ${out} is in use by another nodetune run \\(pid ${process.pid},`));
  assert.ok(!existsSync(join(out, 'model.safetensors')));
  // --overwrite-output-dir must not delete a live run's files either.
  await writeFile(join(out, 'training_log.jsonl'), '{}\n');
  await assert.rejects(fineTune({ ...options, overwrite_output_dir: true }), /is in use by another nodetune run/);
  assert.ok(existsSync(join(out, 'training_log.jsonl')));
  await rm(join(out, 'training_log.jsonl'));
  // A process that has exited: its pid is free (or reused by then, which only makes this test fail loudly).
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
  await writeFile(join(out, LOCK_FILE), `${dead}\n`);
  await fineTune(options);
  assert.ok(existsSync(join(out, 'model.safetensors')));
  assert.ok(!existsSync(join(out, LOCK_FILE)), 'the lock is removed when the run ends');
});

test('device, precision, resume/overwrite and an empty validation split are rejected before the model loads, leaving no output', async () => {
  const rows = intentRows(4, 44); // one example per intent: none can be held out
  const cases: Array<[Partial<FineTuneOptions>, RegExp]> = [
    [{ device: 'gpu' }, /^Error: unknown device 'gpu': expected 'cpu', 'cuda' or 'cuda:N'$/],
    [{ device: 'cuda:x' }, /^Error: device 'cuda:x': expected 'cuda:N' with N a device number$/],
    [{ precision: 'bf16' }, /^Error: precision 'bf16' needs device 'cuda': the CPU encoder engine trains in fp32$/],
    [{ resume_from_checkpoint: true, overwrite_output_dir: true }, /^Error: --resume and --overwrite-output-dir contradict each other/],
    // From JavaScript a misspelled key would otherwise train with the default.
    [{ learningrate: 1 } as Partial<FineTuneOptions>, /^Error: fineTune: unknown option 'learningrate' \(did you mean learning_rate\?\)$/],
    [{ batch_size: 8 } as Partial<FineTuneOptions>, /^Error: fineTune: unknown option 'batch_size' \(did you mean per_device_train_batch_size or per_device_eval_batch_size\?\)$/],
    [{ freeze_layers: 5 }, /^Error: --freeze-layers 5: expected 0\.\.num_hidden_layers \(2\)$/],
    [{ validation_split: 0.1, eval_strategy: 'epoch' }, /--validation-split 0\.1 of 4 examples leaves no evaluation examples; pass --eval FILE, a larger --validation-split, or --validation-split 0/],
  ];
  const csv = `${outDir()}.csv`;
  await writeIntentCsv(csv, rows);
  for (const [bad, message] of cases) {
    let loaded = false;
    const out = outDir();
    const options: FineTuneOptions = { model: noDropout, train_file: csv, label_column: 'category', output_dir: out, validation_split: 0, eval_strategy: 'no', threads: THREADS };
    await assert.rejects(fineTune({ ...options, ...bad, log: () => (loaded = true) }), message);
    assert.equal(loaded, false, `${JSON.stringify(bad)}: rejected before loading the model`);
    assert.ok(!existsSync(out), `${JSON.stringify(bad)}: nothing written to ${out}`);
  }
});

test('optimizer and seed arguments out of range are rejected naming the argument; defaults and edge values pass', () => {
  const base = { output_dir: 'unused' };
  const cases: Array<[Partial<TrainingArguments>, RegExp]> = [
    [{ learning_rate: NaN }, /^Error: learning_rate NaN; expected a finite number >= 0$/],
    [{ learning_rate: Infinity }, /^Error: learning_rate Infinity; expected a finite number >= 0$/],
    [{ weight_decay: -0.01 }, /^Error: weight_decay -0\.01: expected a finite number ≥ 0$/],
    [{ weight_decay: Infinity }, /^Error: weight_decay Infinity: expected a finite number ≥ 0$/],
    [{ adam_beta1: 1 }, /^Error: adam_beta1 1: expected a number in \[0, 1\)$/],
    [{ adam_beta1: -0.1 }, /^Error: adam_beta1 -0\.1: expected a number in \[0, 1\)$/],
    [{ adam_beta2: 1.5 }, /^Error: adam_beta2 1\.5: expected a number in \[0, 1\)$/],
    [{ adam_beta2: NaN }, /^Error: adam_beta2 NaN: expected a number in \[0, 1\)$/],
    [{ adam_epsilon: 0 }, /^Error: adam_epsilon 0: expected a finite number > 0$/],
    [{ adam_epsilon: Infinity }, /^Error: adam_epsilon Infinity: expected a finite number > 0$/],
    [{ max_grad_norm: -1 }, /^Error: max_grad_norm -1: expected a finite number ≥ 0 \(0 = no clipping\)$/],
    [{ max_grad_norm: NaN }, /^Error: max_grad_norm NaN: expected a finite number ≥ 0/],
    [{ seed: 1.5 }, /^Error: seed 1\.5: expected an integer/],
    [{ seed: 2 ** 60 }, /^Error: seed 1152921504606847000: expected an integer/],
    // From JavaScript or a parsed config file a number may arrive as text.
    [{ adam_beta1: '0.9' as unknown as number }, /^Error: adam_beta1 "0\.9": expected a number in \[0, 1\)$/],
  ];
  for (const [bad, message] of cases) {
    assert.throws(() => validateTrainingArguments({ ...base, ...bad }), message, JSON.stringify(bad));
  }
  validateTrainingArguments(base);
  // HF defaults, and the edges of each range: no decay, no clipping, no momentum, lr 0 (allowed as in HF), a negative seed.
  validateTrainingArguments({ ...base, learning_rate: 5e-5, weight_decay: 0, adam_beta1: 0.9, adam_beta2: 0.999, adam_epsilon: 1e-8, max_grad_norm: 1, seed: 42 });
  validateTrainingArguments({ ...base, learning_rate: 0, adam_beta1: 0, adam_beta2: 0, max_grad_norm: 0, seed: -7 });
});

test('a NaN loss stops training with a clear error; the checkpoint saved before it loads and resumes', async () => {
  const rows = intentRows(16, 51);
  const args: TrainingArguments = { output_dir: outDir(), num_train_epochs: 2, per_device_train_batch_size: 4, save_steps: 2, eval_strategy: 'no', learning_rate: 1e-3 };
  const last = join(args.output_dir, 'checkpoint-last');
  await assert.rejects(
    train(noDropout, rows, null, args, (e, t) => {
      if (e.step === 3) t.model.engine.setWeight('classifier.weight', new Float32Array(LABELS.length * 32).fill(NaN));
    }),
    (err: Error) => {
      assert.match(err.message, /^training stopped: the loss became NaN at optimizer step 4 \(epoch 1\); no update was applied/);
      assert.ok(err.message.includes(`The last good checkpoint is ${last}`), err.message);
      return true;
    },
  );
  const state = JSON.parse(await readFile(join(last, 'trainer_state.json'), 'utf8')) as { global_step: number };
  assert.equal(state.global_step, 2);
  const saved = await loadModel(last, { threads: THREADS, log: () => undefined });
  try {
    assert.deepEqual(saved.config.id2label, ID2LABEL);
    for (const [name, w] of engineWeights(saved.engine)) assert.ok(w.every(Number.isFinite), `${name} is finite in checkpoint-last`);
  } finally {
    await saved.engine.dispose();
  }
  const resumed = await train(noDropout, rows, null, { ...args, resume_from_checkpoint: true });
  assert.deepEqual(resumed.steps.map((e) => e.step), [3, 4, 5, 6, 7, 8]);
  assert.ok(resumed.steps.every((e) => Number.isFinite(e.loss)));
});

test('a learning rate that blows the weights up stops training naming the step and advising a lower rate', async () => {
  const rows = intentRows(16, 52);
  const args: TrainingArguments = { output_dir: outDir(), max_steps: 4, per_device_train_batch_size: 4, eval_strategy: 'no', learning_rate: 1e30, lr_scheduler_type: 'constant' };
  await assert.rejects(train(noDropout, rows, null, args), /^Error: training stopped: the loss became (NaN|Infinity) at optimizer step \d .*\(none saved yet\).*lower --learning-rate/);
  assert.ok(!existsSync(join(args.output_dir, 'checkpoint-last')), 'no checkpoint of the broken weights');
});

/** fineTune on a CSV of `rows`, no eval set; returns the first step's loss. */
async function fineTuneRows(rows: IntentRow[], extra: Partial<FineTuneOptions>): Promise<{ out: string; loss: number; model: string }> {
  const out = outDir();
  const csv = `${out}.csv`;
  await writeIntentCsv(csv, rows);
  let loss = NaN;
  await fineTune({
    model: noDropout,
    train_file: csv,
    label_column: 'category',
    output_dir: out,
    validation_split: 0,
    eval_strategy: 'no',
    threads: THREADS,
    learning_rate: 1e-2,
    onTrainer: (t) => t.once('step', (e: LogEntry) => (loss = e.loss)),
    ...extra,
  });
  return { out, loss, model: noDropout };
}

async function weightsOf(folder: string): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [k, t] of (await readSafetensors(join(folder, 'model.safetensors'))).tensors) out.set(k.startsWith('bert.') || k.startsWith('classifier.') ? k : `bert.${k}`, t.data as Float32Array);
  return out;
}

const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

test('freezing: --freeze embeddings + --freeze-layers 1 keeps those weights bit-identical; the rest moves', async () => {
  const rows = intentRows(24, 61);
  const before = await weightsOf(noDropout);
  const check = async (extra: Partial<FineTuneOptions>, frozen: (k: string) => boolean) => {
    const { out } = await fineTuneRows(rows, { max_steps: 3, per_device_train_batch_size: 8, ...extra });
    const after = await weightsOf(out);
    let moved = 0;
    for (const [k, w] of before) {
      if (frozen(k)) assert.ok(same(w, after.get(k)!), `${JSON.stringify(extra)}: ${k} is frozen but changed`);
      else if (k.endsWith('.weight') && !k.includes('word_embeddings')) {
        assert.ok(!same(w, after.get(k)!), `${JSON.stringify(extra)}: ${k} is trainable but did not move`);
        moved++;
      }
    }
    return moved;
  };
  const layer = (k: string) => Number(/encoder\.layer\.(\d+)\./.exec(k)?.[1] ?? -1);
  const a = await check({ freeze_embeddings: true, freeze_layers: 1 }, (k) => k.startsWith('bert.embeddings.') || layer(k) === 0);
  assert.equal(a, 8 + 1, 'the 8 weight tensors of layer 1 and the pooler moved');
  // Every encoder layer frozen but the embeddings trainable: gradients must still flow through the frozen layers.
  const b = await check({ freeze_layers: 2 }, (k) => layer(k) >= 0);
  assert.equal(b, 3 + 1, 'position/token-type embeddings, their LayerNorm and the pooler moved');
  await assert.rejects(fineTuneRows(rows, { freeze_layers: 3 }), /--freeze-layers 3: expected 0\.\.num_hidden_layers \(2\)/);
});

test('max_length above max_position_embeddings (64 here) is capped with a warning naming the value asked for, or the default 128', async () => {
  // One text of ~100 tokens: training on it only works when the cap is applied (the engine rejects T > 64).
  const rows = [...intentRows(8, 71), { text: `${'my card is not working '.repeat(20)}card`, category: 'card' }];
  const warnings = async (extra: Partial<FineTuneOptions>) => {
    const lines: string[] = [];
    await fineTuneRows(rows, { max_steps: 2, per_device_train_batch_size: 9, log: (l) => lines.push(l), ...extra });
    return lines.filter((l) => l.startsWith('warning:'));
  };
  assert.deepEqual(await warnings({}), ["warning: max_length 128 (the default) is above the model's max_position_embeddings; capped at 64"]);
  assert.deepEqual(await warnings({ max_length: 100 }), ["warning: --max-length 100 is above the model's max_position_embeddings; capped at 64"]);
  assert.deepEqual(await warnings({ max_length: 64 }), [], 'no warning at the limit');
});

/** torch.nn.CrossEntropyLoss(weight, label_smoothing) with mean reduction, in float64, from logits (N, C). */
function crossEntropy(logits: Float32Array, labels: number[], C: number, weight?: number[], eps = 0): number {
  let num = 0;
  let den = 0;
  labels.forEach((y, i) => {
    const row = Array.from(logits.subarray(i * C, (i + 1) * C));
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
    const w = (c: number) => weight?.[c] ?? 1;
    const smooth = row.reduce((s, v, c) => s + w(c) * (lse - v), 0) / C;
    num += (1 - eps) * w(y) * (lse - row[y]) + eps * smooth;
    den += w(y);
  });
  return num / den;
}

test("class_weights 'balanced' and label smoothing: the first loss equals torch's CrossEntropyLoss on the starting model's logits", async () => {
  // Imbalanced: refund 6, card 3, transfer 2, password 1 → balanced weights n / (C × count).
  const pool = intentRows(48, 71);
  const take = (c: string, k: number) => pool.filter((r) => r.category === c).slice(0, k);
  const rows = [...take('refund', 6), ...take('card', 3), ...take('transfer', 2), ...take('password', 1)];
  // A briefly fine-tuned model, so the logits are far from uniform (at a fresh head every loss is ≈ ln 4).
  const base = (await fineTuneRows(rows, { max_steps: 8, per_device_train_batch_size: 4 })).out;
  const opts = { model: base, max_steps: 1, per_device_train_batch_size: 16 };
  const plain = await fineTuneRows(rows, opts);
  const balanced = await fineTuneRows(rows, { ...opts, class_weights: 'balanced' });
  const smoothed = await fineTuneRows(rows, { ...opts, label_smoothing_factor: 0.2 });
  const both = await fineTuneRows(rows, { ...opts, class_weights: 'balanced', label_smoothing_factor: 0.2 });

  // The starting point of those runs, forward on the CSV's texts.
  const model = await loadModel(base, { threads: THREADS, log: () => undefined });
  try {
    assert.deepEqual(model.config.id2label, ID2LABEL);
    const written = await writeIntentCsv(join(tmp, 'imbalanced-check.csv'), rows);
    const examples = encode(model, written);
    const { logits } = await model.engine.forward(collate(examples, model.tokenizer.padTokenId));
    const labels = examples.map((e) => e.label);
    const counts = LABELS.map((_, c) => labels.filter((y) => y === c).length);
    const weights = counts.map((k) => rows.length / (LABELS.length * k));
    assert.deepEqual(weights, [1, 3, 0.5, 1.5]); // card, password, refund, transfer
    const C = LABELS.length;
    const close = (got: number, want: number, what: string) => assert.ok(Math.abs(got - want) <= 1e-5 * want, `${what}: ${got} vs ${want}`);
    close(plain.loss, crossEntropy(logits, labels, C), 'default');
    close(balanced.loss, crossEntropy(logits, labels, C, weights), 'balanced');
    close(smoothed.loss, crossEntropy(logits, labels, C, undefined, 0.2), 'label smoothing 0.2');
    close(both.loss, crossEntropy(logits, labels, C, weights, 0.2), 'balanced + smoothing');
    assert.ok(Math.abs(balanced.loss - plain.loss) > 0.01 * plain.loss, `class weights change the loss (${balanced.loss} vs ${plain.loss})`);
    assert.ok(Math.abs(smoothed.loss - plain.loss) > 0.01 * plain.loss, `label smoothing changes the loss (${smoothed.loss} vs ${plain.loss})`);
  } finally {
    await model.engine.dispose();
  }
  await assert.rejects(fineTuneRows(rows, { ...opts, class_weights: [1, 2] }), /class_weights has 2 values, expected one per label \(4\)/);
});

test('early stopping: with a metric that cannot improve, patience 2 stops after 3 evaluations', async () => {
  // A learning rate of 1e-30 leaves every float32 weight (and so the accuracy) unchanged.
  const rows = intentRows(16, 81);
  const evalRows = intentRows(8, 82);
  const args: TrainingArguments = {
    output_dir: outDir(),
    num_train_epochs: 10,
    per_device_train_batch_size: 8,
    learning_rate: 1e-30,
    lr_scheduler_type: 'constant',
    early_stopping_patience: 2,
  };
  const r = await train(noDropout, rows, evalRows, args);
  assert.equal(r.result.stoppedEarly, true);
  assert.deepEqual(r.result.evals.map((e) => e.step), [2, 4, 6]);
  assert.equal(r.result.bestStep, 2);
  assert.equal(r.steps.length, 6, 'stopped after epoch 3 of 10');
  assert.equal(new Set(r.result.evals.map((e) => e.accuracy)).size, 1);
  assert.ok(existsSync(join(args.output_dir, 'checkpoint-best/model.safetensors')));
});

test('a non-finite evaluation (nothing to score) is never the best model: a later finite one is', async () => {
  const model = await load(noDropout);
  const rows = encode(model, intentRows(16, 83));
  const task = new ClassificationTask(model);
  let calls = 0;
  const nanFirst: typeof task = Object.assign(Object.create(task), {
    evaluate: async (examples: EncodedExample[], bs: number) => {
      const r = await task.evaluate(examples, bs);
      return calls++ === 0 ? { ...r, loss: NaN } : r;
    },
  });
  const trainer = new Trainer(nanFirst, rows, rows.slice(0, 8), { output_dir: outDir(), num_train_epochs: 2, per_device_train_batch_size: 8, learning_rate: 1e-3, metric_for_best_model: 'loss' });
  const r = await trainer.trainLoop();
  assert.equal(r.evals.length, 2);
  assert.ok(Number.isNaN(r.evals[0].loss!));
  assert.equal(r.bestStep, 4, 'the finite evaluation at step 4, not the NaN at step 2');
  await model.engine.dispose();
});

test('a stop() (Ctrl-C) that comes after the last step interrupts nothing: the run is complete and evaluated', async () => {
  const rows = intentRows(16, 84);
  const args: TrainingArguments = { output_dir: outDir(), num_train_epochs: 1, per_device_train_batch_size: 8, learning_rate: 1e-3 };
  let trainer: Trainer | undefined;
  const r = await train(noDropout, rows, intentRows(8, 85), args, (e, t) => {
    trainer = t;
    if (e.step === 2) t.stop(); // the last of 2 steps
  });
  assert.equal(trainer!.interrupted, false);
  assert.deepEqual(r.result.evals.map((e) => e.step), [2]);
  // One step earlier it is an interruption: no final evaluation.
  let early: Trainer | undefined;
  const r2 = await train(noDropout, rows, intentRows(8, 85), { ...args, output_dir: outDir() }, (e, t) => {
    early = t;
    if (e.step === 1) t.stop();
  });
  assert.equal(early!.interrupted, true);
  assert.deepEqual(r2.result.evals, []);
});

test('Trainer resume compares the saved settings before loading any checkpoint tensor', async () => {
  const rows = intentRows(16, 31);
  const args: TrainingArguments = { output_dir: outDir(), max_steps: 2, per_device_train_batch_size: 4, eval_strategy: 'no' };
  await train(noDropout, rows, null, args);
  await assert.rejects(
    train(noDropout, rows, null, { ...args, resume_from_checkpoint: true, per_device_train_batch_size: 8, learning_rate: 1e-3 }),
    (err: Error) => /--batch-size: checkpoint 4, now 8/.test(err.message) && /--learning-rate: checkpoint 0.00005, now 0.001/.test(err.message),
  );
  await assert.rejects(train(noDropout, rows.slice(1), null, { ...args, resume_from_checkpoint: true }), /training examples: checkpoint 16, now 15/);
});

test('a save cut short by a kill is undone: a missing checkpoint-last comes back from its .old- folder, .tmp-/.old- leftovers go', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'nodetune-saves-'));
  try {
    // Killed between the two renames of checkpoint-last: only the old (complete) and the new (maybe partial) exist.
    await mkdir(join(dir, 'checkpoint-last.old-41'));
    await writeFile(join(dir, 'checkpoint-last.old-41', 'trainer_state.json'), '{"global_step":7}');
    await mkdir(join(dir, 'checkpoint-last.tmp-41'));
    // Killed while writing checkpoint-best's new folder: the current one stays.
    await mkdir(join(dir, 'checkpoint-best'));
    await mkdir(join(dir, 'checkpoint-best.tmp-52'));
    await mkdir(join(dir, 'checkpoint-7-other'));
    await recoverUnfinishedSaves(dir);
    assert.deepEqual(readdirSync(dir).sort(), ['checkpoint-7-other', 'checkpoint-best', 'checkpoint-last']);
    assert.equal(JSON.parse(readFileSync(join(dir, 'checkpoint-last', 'trainer_state.json'), 'utf8')).global_step, 7);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
