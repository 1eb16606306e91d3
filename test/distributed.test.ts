// Data-parallel training (src/train/distributed.ts, native/engine/distributed.*): a shard of a
// batch run with its rowOffset gives, summed, the gradients of the whole batch with dropout on
// (BERT and LoRA); `--nproc 2` (2 MPI ranks × 1 thread) trains what 1 process × 1 thread trains,
// per-step losses and final weights within 1e-6 relative, for the classifier (dropout, gradient
// accumulation, an uneven last batch that leaves rank 1 no row, sharded evaluation) and for LoRA on
// SmolLM2; a rank killed mid-run stops the job with mpirun naming it and --resume continues with
// the uninterrupted losses; a hung rank makes the other stop within --ddp-timeout, naming it;
// Ctrl-C stops every rank after the same step with checkpoint-last saved.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine, loadAddon, type Batch } from '../src/engine.js';
import { parseLlamaConfig } from '../src/models/llama.js';
import { shardBatch, shardRange } from '../src/train/distributed.js';
import { CLI, ROOT, intentRows, writeIntentCsv, writeTinyModel } from './helpers/tiny-model.js';
import { loadTinyBertFixture, fixtureEngine, relErr, tensors } from './helpers/tiny-bert-fixture.js';

const mpirun = spawnSync('mpirun', ['--version'], { encoding: 'utf8' });
const noMpi = mpirun.status !== 0 ? 'mpirun is not installed (bash scripts/setup.sh installs Open MPI)'
  : !loadAddon().mpiCompiled ? 'the addon was built without MPI (install libopenmpi-dev and rebuild)' : false;
const gguf = join(ROOT, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');

let tmp: string;
let model: string;
let trainCsv: string;
let evalCsv: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-ddp-'));
  model = await writeTinyModel(join(tmp, 'tiny'), { dropout: true, hidden_size: 64 });
  trainCsv = join(tmp, 'train.csv');
  evalCsv = join(tmp, 'eval.csv');
  // 201 = 25 batches of 8 and one of 1 row: rank 1 of 2 gets no row of the last batch.
  await writeIntentCsv(trainCsv, intentRows(201, 1));
  await writeIntentCsv(evalCsv, intentRows(41, 2));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

interface Run {
  status: number | null;
  stderr: string;
  stdout: string;
}

function nodetune(...args: string[]): Promise<Run> {
  return nodetuneIn({}, ...args);
}

/** detached: in its own process group (as a terminal's foreground job), `onStart` gets its pid. */
function nodetuneIn(o: { detached?: boolean; onStart?: (pid: number) => void }, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, FORCE_COLOR: '0' }, detached: o.detached });
    o.onStart?.(child.pid!);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

function ok(r: Run): Run {
  assert.equal(r.status, 0, `nodetune exited with ${r.status}\n${r.stderr.slice(-3000)}`);
  return r;
}

const logOf = (dir: string) => readFileSync(join(dir, 'training_log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss: number; grad_norm: number });

/** Per-step losses and gradient norms of `b` within `tol` relative of `a`, step for step. */
function sameLog(a: string, b: string, tol: number): void {
  const la = logOf(a);
  const lb = logOf(b);
  assert.equal(lb.length, la.length, 'as many log lines');
  for (let i = 0; i < la.length; i++) {
    assert.equal(lb[i].step, la[i].step);
    for (const k of ['loss', 'grad_norm'] as const) {
      assert.ok(Math.abs(lb[i][k] - la[i][k]) <= tol * Math.abs(la[i][k]), `step ${la[i].step} ${k}: ${lb[i][k]} vs ${la[i][k]}`);
    }
  }
}

/**
 * The weights of `file` in `b` against `a`: ||b - a|| / ||a|| over all tensors together (L2), at
 * most `tol`; returns that and the worst single tensor's. Summing the ranks' partial gradients
 * rounds differently from one GEMM over the whole batch; where a gradient is round-off itself
 * (BERT's key bias: softmax ignores it) or a small difference of large terms (LoRA A's first
 * steps), AdamW's m / sqrt(v) scales that round-off up to a fraction of the learning rate, so a
 * single small tensor can differ more than the model does.
 */
async function sameWeights(a: string, b: string, file: string, tol: number): Promise<{ model: number; worstTensor: number; worstName: string }> {
  const wa = await tensors(join(a, file));
  const wb = await tensors(join(b, file));
  assert.deepEqual([...wb.keys()].sort(), [...wa.keys()].sort());
  let num = 0;
  let den = 0;
  let worstTensor = 0;
  let worstName = '';
  for (const [name, t] of wa) {
    const u = wb.get(name)!;
    let n = 0;
    let d = 0;
    for (let i = 0; i < t.length; i++) {
      n += (u[i] - t[i]) ** 2;
      d += t[i] ** 2;
    }
    num += n;
    den += d;
    const e = Math.sqrt(n / Math.max(d, 1e-30));
    if (e > worstTensor) [worstTensor, worstName] = [e, name];
  }
  const model = Math.sqrt(num / den);
  assert.ok(model <= tol, `weights differ by ${model} (L2, all tensors; worst tensor ${worstName}: ${worstTensor})`);
  return { model, worstTensor, worstName };
}

test('shardRange splits rows contiguously, the first ranks one more; shardBatch keeps T and sets rowOffset', () => {
  assert.deepEqual([0, 1].map((r) => shardRange(11, r, 2)), [[0, 6], [6, 11]]);
  assert.deepEqual([0, 1].map((r) => shardRange(1, r, 2)), [[0, 1], [1, 1]]);
  assert.deepEqual([0, 1, 2].map((r) => shardRange(7, r, 3)), [[0, 3], [3, 5], [5, 7]]);
  const b: Batch = { input_ids: Int32Array.from({ length: 12 }, (_, i) => i), attention_mask: new Int32Array(12).fill(1), labels: Int32Array.of(7, 8, 9), batchSize: 3, seqLen: 4 };
  const s = shardBatch(b, 1, 3);
  assert.deepEqual([...s.input_ids], [4, 5, 6, 7, 8, 9, 10, 11]);
  assert.deepEqual([...s.labels!], [8, 9], 'per-sequence labels');
  assert.equal(s.rowOffset, 1);
  assert.equal(s.seqLen, 4);
  const tok = shardBatch({ ...b, labels: Int32Array.from({ length: 12 }, (_, i) => 100 + i) }, 2, 3);
  assert.deepEqual([...tok.labels!], [108, 109, 110, 111], 'per-token labels');
});

/** Gradients of every trainable tensor after `run`. */
async function gradients(engine: Engine, run: () => Promise<void>): Promise<Map<string, Float32Array>> {
  await engine.zeroGrad();
  engine.setCounters({ optimizerStep: 0, microStep: 0 });
  await run();
  return new Map(engine.parameterNames().filter((n) => engine.isTrainable(n)).map((n) => [n, engine.getGradient(n)]));
}

/** Whole batch vs its two shards (each at micro step 0, as two ranks run them), with or without rowOffset. */
async function shardedGradients(engine: Engine, batch: Batch, split: number, weights: [number, number], withOffset: boolean) {
  const whole = await gradients(engine, async () => void (await engine.accumulate(batch)));
  const parts = await gradients(engine, async () => {
    for (const [lo, hi, w] of [[0, split, weights[0]], [split, batch.batchSize, weights[1]]] as const) {
      engine.setCounters({ optimizerStep: 0, microStep: 0 });
      const shard = shardBatch(batch, lo, hi);
      await engine.accumulate(withOffset ? shard : { ...shard, rowOffset: 0 }, { lossScale: w });
    }
  });
  return Math.max(...[...whole].map(([n, g]) => relErr(parts.get(n)!, g)));
}

test('BERT with dropout: two shards with their rowOffset sum to the whole batch\'s gradients (without it they do not)', async () => {
  const f = await loadTinyBertFixture();
  const config = { ...f.config, hidden_dropout_prob: 0.2, attention_probs_dropout_prob: 0.2, classifier_dropout: 0.2 };
  const engine = fixtureEngine(f, { config, seed: 5, threads: 1 });
  try {
    const B = f.batch.batchSize;
    const split = Math.ceil(B / 2);
    const w: [number, number] = [split / B, (B - split) / B];
    const err = await shardedGradients(engine, f.batch, split, w, true);
    assert.ok(err < 1e-5, `sharded vs whole gradients: ${err}`);
    const wrong = await shardedGradients(engine, f.batch, split, w, false);
    assert.ok(wrong > 1e-3, `without rowOffset the second shard draws other masks: ${wrong}`);
  } finally {
    await engine.dispose();
  }
});

test('Llama LoRA with lora_dropout: two shards with their rowOffset sum to the whole batch\'s gradients', async () => {
  const dir = join(ROOT, 'test/fixtures/tiny-llama');
  const config = parseLlamaConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), dir);
  const engine = new Engine({ config, lora: { r: 4, lora_alpha: 8, lora_dropout: 0.3, target_modules: 'all-linear' }, seed: 3, threads: 1 });
  try {
    for (const [name, t] of await tensors(join(dir, 'model.safetensors'))) if (engine.parameterNames().includes(name)) engine.setWeight(name, t);
    // Non-zero B so every adapter's gradient flows to A and to the input.
    for (const name of engine.parameterNames().filter((n) => n.includes('lora_B'))) {
      const n = engine.parameterShape(name).reduce((a, b) => a * b, 1);
      engine.setWeight(name, Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 0.05));
    }
    const B = 4;
    const T = 9;
    const ids = Int32Array.from({ length: B * T }, (_, i) => 3 + ((i * 37) % 200));
    const labels = Int32Array.from(ids, (id, i) => (i % T < 3 ? -100 : id));
    const batch: Batch = { input_ids: ids, attention_mask: new Int32Array(B * T).fill(1), labels, batchSize: B, seqLen: T };
    const targets = (lo: number, hi: number) => (hi - lo) * (T - 3); // labels[3..T-1] of each row, predicted from positions 2..T-2
    const total = targets(0, B);
    const err = await shardedGradients(engine, batch, 1, [targets(0, 1) / total, targets(1, B) / total], true);
    assert.ok(err < 1e-5, `sharded vs whole LoRA gradients: ${err}`);
    const wrong = await shardedGradients(engine, batch, 1, [targets(0, 1) / total, targets(1, B) / total], false);
    assert.ok(wrong > 1e-3, `without rowOffset: ${wrong}`);
  } finally {
    await engine.dispose();
  }
});

test('bad use is an error: a negative rowOffset, allReduce outside an MPI world, a non-boolean allReduce', async () => {
  const f = await loadTinyBertFixture();
  const engine = fixtureEngine(f, { threads: 1 });
  try {
    await assert.rejects(engine.accumulate({ ...f.batch, rowOffset: -1 }), /batch\.rowOffset must be an integer in \[0, 2147483647\]/);
    await assert.rejects(engine.accumulate({ ...f.batch, rowOffset: 1.5 }), /batch\.rowOffset must be an integer/);
    await engine.accumulate(f.batch);
    await assert.rejects(engine.step({ learningRate: 1e-3, allReduce: true }), /call distributedInit\(\) first/);
    await assert.rejects(engine.step({ learningRate: 1e-3, allReduce: 'yes' as unknown as boolean }), /options\.allReduce must be true or false/);
  } finally {
    await engine.dispose();
  }
});

const CLASSIFIER = () => ['train', '--model', model, '--train', trainCsv, '--eval', evalCsv, '--text-column', 'text', '--label-column', 'category',
  '--threads', '1', '--logging-steps', '1', '--max-steps', '20', '--batch-size', '8', '--gradient-accumulation-steps', '2', '--learning-rate', '1e-3',
  '--warmup-ratio', '0.1', '--eval-strategy', 'steps', '--eval-steps', '7', '--seed', '11'];

test('train --nproc 2 (dropout, accumulation 2, rank 1 without a row in the last batch) = 1 process: losses, evaluations and weights within 1e-6', { skip: noMpi, timeout: 120_000 }, async () => {
  const one = join(tmp, 'one');
  const two = join(tmp, 'two');
  ok(await nodetune(...CLASSIFIER(), '--output', one));
  const r = ok(await nodetune(...CLASSIFIER(), '--output', two, '--nproc', '2'));
  assert.equal((r.stderr.match(/nodetune train: result/g) ?? []).length, 1, 'rank 0 alone prints the result');
  assert.ok(logOf(one).length === 20 && logOf(one).some((e, i) => i > 0 && e.loss !== logOf(one)[0].loss));
  sameLog(one, two, 1e-6);
  const evalsOne = JSON.parse(await readFile(join(one, 'checkpoint-last', 'trainer_state.json'), 'utf8')).eval_history;
  const evalsTwo = JSON.parse(await readFile(join(two, 'checkpoint-last', 'trainer_state.json'), 'utf8')).eval_history;
  assert.equal(evalsTwo.length, evalsOne.length);
  for (let i = 0; i < evalsOne.length; i++) {
    assert.equal(evalsTwo[i].accuracy, evalsOne[i].accuracy, 'sharded evaluation: the same predictions');
    assert.ok(Math.abs(evalsTwo[i].loss - evalsOne[i].loss) <= 1e-6 * evalsOne[i].loss);
  }
  const w = await sameWeights(one, two, 'model.safetensors', 1e-6);
  process.stderr.write(`train --nproc 2 vs 1: weights within ${w.model.toExponential(2)} (L2; worst tensor ${w.worstName} ${w.worstTensor.toExponential(2)})\n`);
});

test('sft --nproc 2: LoRA on SmolLM2 (lora_dropout 0.1, 9 chats in batches of 4, 20 steps) = 1 process within 1e-6', { skip: noMpi || (!existsSync(gguf) && `${gguf} is missing`), timeout: 300_000 }, async () => {
  const chat = (text: string, label: string) => JSON.stringify({ messages: [{ role: 'user', content: text }, { role: 'assistant', content: label }] });
  const rows = ['my card has not arrived', 'top up by card', 'exchange rate today', 'card still not here', 'fee for card top up', 'which rate do you use', 'where is my card', 'add money with card', 'convert euros'];
  const labels = ['card_arrival', 'top_up', 'exchange_rate'];
  const file = join(tmp, 'chats.jsonl');
  await writeFile(file, rows.map((t, i) => chat(t, labels[i % 3])).join('\n') + '\n');
  const args = (out: string) => ['sft', '--model', gguf, '--train', file, '--output', out, '--max-steps', '20', '--batch-size', '4',
    '--lora-r', '4', '--lora-alpha', '8', '--lora-dropout', '0.1', '--lora-layers', '28-29', '--threads', '1', '--logging-steps', '1', '--report-samples', '0', '--adam-epsilon', '1e-6'];
  const one = join(tmp, 'sft-one');
  const two = join(tmp, 'sft-two');
  ok(await nodetune(...args(one)));
  ok(await nodetune(...args(two), '--nproc', '2'));
  sameLog(one, two, 1e-6);
  const w = await sameWeights(one, two, 'adapter_model.safetensors', 1e-6);
  process.stderr.write(`sft --nproc 2 vs 1: adapters within ${w.model.toExponential(2)} (L2; worst tensor ${w.worstName} ${w.worstTensor.toExponential(2)})\n`);
});

/** The node processes mpirun started for --output `out`, by rank. */
function ranksOf(out: string): Map<number, number> {
  const found = new Map<number, number>();
  const ps = spawnSync('pgrep', ['-f', out], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).map(Number);
  for (const pid of ps) {
    try {
      const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      const rank = env.find((e) => e.startsWith('OMPI_COMM_WORLD_RANK='));
      if (rank) found.set(Number(rank.split('=')[1]), pid);
    } catch {
      // gone
    }
  }
  return found;
}

/** Waits until checkpoint-last of `out` holds at least `step` steps; then the pids of its ranks. */
async function ranksAfterCheckpoint(out: string, step: number, running: Promise<Run>): Promise<Map<number, number>> {
  let done = false;
  void running.then(() => (done = true));
  for (;;) {
    assert.ok(!done, 'the run ended before it was interrupted');
    try {
      const s = JSON.parse(readFileSync(join(out, 'checkpoint-last', 'trainer_state.json'), 'utf8'));
      if (s.global_step >= step) return ranksOf(out);
    } catch {
      // not yet written
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

const LONG = () => ['train', '--model', model, '--train', trainCsv, '--text-column', 'text', '--label-column', 'category', '--threads', '1',
  '--logging-steps', '1', '--max-steps', '600', '--batch-size', '8', '--learning-rate', '5e-4', '--eval-strategy', 'no', '--save-steps', '50', '--nproc', '2'];

test('a rank killed mid-run: the job stops non-zero naming it; --resume continues with the uninterrupted losses', { skip: noMpi, timeout: 180_000 }, async () => {
  const full = join(tmp, 'full');
  ok(await nodetune(...LONG(), '--output', full));
  const out = join(tmp, 'killed');
  const running = nodetune(...LONG(), '--output', out);
  const ranks = await ranksAfterCheckpoint(out, 100, running);
  assert.ok(ranks.has(1), `rank 1 found (${[...ranks]})`);
  process.kill(ranks.get(1)!, 'SIGKILL');
  const r = await running;
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /process rank 1 .* exited on signal 9/);
  assert.match(r.stderr, /checkpoint-last holds the last saved step: continue with the same command and --resume/);
  const saved = JSON.parse(readFileSync(join(out, 'checkpoint-last', 'trainer_state.json'), 'utf8')).global_step;
  assert.ok(saved >= 100 && saved < 600, `checkpoint-last at step ${saved}`);
  ok(await nodetune(...LONG(), '--output', out, '--resume'));
  sameLog(full, out, 0);
  await sameWeights(full, out, 'model.safetensors', 0);
});

test('a hung rank: the other stops within --ddp-timeout with an error naming it', { skip: noMpi, timeout: 120_000 }, async () => {
  const out = join(tmp, 'hung');
  const running = nodetune(...LONG(), '--output', out, '--ddp-timeout', '2');
  const ranks = await ranksAfterCheckpoint(out, 50, running);
  process.kill(ranks.get(1)!, 'SIGSTOP');
  const stoppedAt = performance.now();
  const r = await running;
  const waited = (performance.now() - stoppedAt) / 1000;
  assert.notEqual(r.status, 0);
  // Stopped before the collective: "did not reach"; inside it (after its arrival message): "stopped responding during".
  assert.match(r.stderr, /nodetune \(rank 0 of 2\): rank 1 (did not reach|stopped responding during) the (gradient|loss) all-reduce of optimizer step \d+/);
  assert.match(r.stderr, /within 2 s/);
  assert.ok(waited < 30, `stopped after ${waited.toFixed(1)} s`);
  assert.ok(existsSync(join(out, 'checkpoint-last', 'trainer_state.json')), 'checkpoint-last stays');
});

test('Ctrl-C on --nproc 2: every rank stops after the same step, checkpoint-last is saved, exit 130', { skip: noMpi, timeout: 120_000 }, async () => {
  const out = join(tmp, 'ctrl-c');
  let pid = 0;
  // The terminal sends SIGINT to its whole foreground process group.
  const running = nodetuneIn({ detached: true, onStart: (p) => (pid = p) }, ...LONG(), '--max-steps', '100000', '--output', out);
  await ranksAfterCheckpoint(out, 50, running);
  process.kill(-pid, 'SIGINT');
  const r = await running;
  assert.equal(r.status, 130, r.stderr.slice(-2000));
  assert.match(r.stderr, /interrupted at step (\d+): resume with --resume/);
  const step = Number(/interrupted at step (\d+)/.exec(r.stderr)![1]);
  assert.equal(JSON.parse(readFileSync(join(out, 'checkpoint-last', 'trainer_state.json'), 'utf8')).global_step, step);
  assert.equal((r.stderr.match(/interrupted: saving checkpoint-last/g) ?? []).length, 1, 'rank 0 alone says so');
  assert.doesNotMatch(r.stderr, /non-zero/, 'no rank failed');
});

test('the launcher: a SIGTERM ends the whole job (no rank left running); bad flags are refused once before mpirun starts; no resume hint without a checkpoint', { skip: noMpi, timeout: 120_000 }, async () => {
  const out = join(tmp, 'term');
  let pid = 0;
  const running = nodetuneIn({ onStart: (p) => (pid = p) }, ...LONG(), '--max-steps', '100000', '--output', out);
  await ranksAfterCheckpoint(out, 50, running);
  process.kill(pid, 'SIGTERM');
  const r = await running;
  assert.equal(r.status, 143);
  for (let i = 0; i < 50 && ranksOf(out).size > 0; i++) await new Promise((res) => setTimeout(res, 100));
  assert.equal(ranksOf(out).size, 0, 'no rank outlives the launcher');

  const bad = await nodetune(...LONG(), '--output', join(tmp, 'never'), '--ddp-timeout', '0');
  assert.notEqual(bad.status, 0);
  assert.equal((bad.stderr.match(/--ddp-timeout 0: expected a number of seconds > 0/g) ?? []).length, 1, bad.stderr);
  assert.doesNotMatch(bad.stderr, /MPI_ABORT|mpirun/);
  const missing = await nodetune(...LONG().map((a) => (a === trainCsv ? join(tmp, 'nope.csv') : a)), '--output', join(tmp, 'never'));
  assert.match(missing.stderr, /--train .*nope\.csv: no such file/);

  const broken = join(tmp, 'broken-model');
  const failed = await nodetune(...LONG().map((a) => (a === model ? broken : a)), '--output', join(tmp, 'never2'));
  assert.notEqual(failed.status, 0);
  assert.match(failed.stderr, /the 2 ranks stopped \(mpirun exit code \d+; the messages above say why\)\n/);
  assert.doesNotMatch(failed.stderr, /--resume/, 'no checkpoint, no resume hint');
});
