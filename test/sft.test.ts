// The causal-LM task in the one Trainer loop (src/tasks/causal-lm/task.ts, src/train/trainer.ts)
// on the tiny random Llama (test/fixtures/tiny-llama, LoRA): token-normalised gradient
// accumulation equals one big batch (and differs from example-count weighting), packed rows
// train and evaluate as their examples apart, a run stopped and resumed gives the uninterrupted
// losses exactly with LoRA dropout on, checkpoints hold only the adapters and their moments,
// resume settings are compared, and full fine-tuning checkpoints every weight.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Engine } from '../src/engine.js';
import { parseLlamaConfig, type LlamaConfig, type LoraConfig } from '../src/models/llama.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { resolveLoraConfig } from '../src/models/llama.js';
import type { CausalLM } from '../src/llm/load.js';
import type { LlmTokenizer } from '../src/tokenizer/bpe.js';
import { Trainer, type LogEntry, type TrainingArguments } from '../src/train/trainer.js';
import { CausalLMTask, evaluateCausalLMLoss, type CausalLMEvalResults } from '../src/tasks/causal-lm/task.js';
import { collateSft, packExamples, IGNORE_INDEX, type SftRow } from '../src/tasks/causal-lm/encode.js';
import { mulberry32 } from '../src/data/rng.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const dir = join(root, 'test/fixtures/tiny-llama');
const config: LlamaConfig = parseLlamaConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), join(dir, 'config.json'));
let weights: Map<string, { data: unknown }>;
let tmp: string;
let runs = 0;
before(async () => {
  weights = (await readSafetensors(join(dir, 'model.safetensors'))).tensors;
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-sft-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});
const outDir = () => join(tmp, `run-${++runs}`);

const LORA: LoraConfig = { r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: 'all-linear' };

/** A CausalLM over the tiny Llama; its tokenizer is a stub (these tests feed token ids). */
function tinyLM(lora?: LoraConfig): CausalLM {
  const engine = new Engine({ config, lora, seed: 7, threads: 2, weight_decay: 0, max_grad_norm: 1 });
  for (const name of engine.parameterNames()) {
    const w = weights.get(name);
    if (w) engine.setWeight(name, w.data as Float32Array);
  }
  const tokenizer = {
    padTokenId: 0, eosTokenId: 2, eosTokenIds: [2],
    toFiles: () => ({ tokenizerJson: { model: { type: 'BPE' } }, tokenizerConfig: {} }),
  } as unknown as LlmTokenizer;
  return { config, tokenizer, engine, source: { kind: 'folder', path: dir }, generationConfig: {} };
}

/** Rows of random tokens: a prompt (no labels) then an answer (labels), lengths 6..20. */
function rows(n: number, seed: number): SftRow[] {
  const u = mulberry32(seed);
  return Array.from({ length: n }, () => {
    const len = 6 + Math.floor(u() * 15);
    const prompt = 2 + Math.floor(u() * (len - 3));
    const ids = Array.from({ length: len }, () => 3 + Math.floor(u() * 250));
    const labels = ids.map((id, t) => (t >= prompt ? id : IGNORE_INDEX));
    return { input_ids: Int32Array.from(ids), labels: Int32Array.from(labels), numTargets: len - prompt, numExamples: 1 };
  });
}

function task(lm: CausalLM, lora?: LoraConfig, settings = {}): CausalLMTask {
  return new CausalLMTask(lm, { lora: lora ? resolveLoraConfig(lora) : undefined, baseModel: dir, settings });
}

/** One Trainer run on a fresh tiny model; lora null = full fine-tuning. */
async function trainRun(train: SftRow[], evalRows: SftRow[] | null, args: TrainingArguments, adapters: LoraConfig | null = LORA, onStep?: (e: LogEntry, t: Trainer<SftRow, CausalLMEvalResults>) => void) {
  const lora = adapters ?? undefined;
  const lm = tinyLM(lora);
  try {
    const trainer = new Trainer(task(lm, lora), train, evalRows, args);
    const steps: LogEntry[] = [];
    trainer.on('step', (e: LogEntry) => {
      steps.push(e);
      onStep?.(e, trainer);
    });
    const result = await trainer.trainLoop();
    const names = lm.engine.parameterNames().filter((n) => lm.engine.isTrainable(n));
    return { steps, result, weights: new Map(names.map((n) => [n, lm.engine.getWeight(n)])), counters: lm.engine.getCounters() };
  } finally {
    await lm.engine.dispose();
  }
}

function maxRelDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  let worst = 0;
  for (const [name, x] of a) {
    const y = b.get(name)!;
    let num = 0, den = 0;
    for (let i = 0; i < x.length; i++) {
      num = Math.max(num, Math.abs(x[i] - y[i]));
      den = Math.max(den, Math.abs(x[i]));
    }
    worst = Math.max(worst, num / Math.max(den, 1e-12));
  }
  return worst;
}

const ONE_STEP: Omit<TrainingArguments, 'output_dir'> = { max_steps: 1, learning_rate: 1e-2, lr_scheduler_type: 'constant', eval_strategy: 'no', group_by_length: false };

test('token-normalised accumulation: 3 micro-batches of 2 rows give the step of one batch of 6; weighting by rows would not', async () => {
  const data = rows(6, 1);
  assert.ok(new Set(data.map((r) => r.numTargets)).size > 2, 'target counts differ between rows');
  const big = await trainRun(data, null, { ...ONE_STEP, output_dir: outDir(), per_device_train_batch_size: 6 });
  const acc = await trainRun(data, null, { ...ONE_STEP, output_dir: outDir(), per_device_train_batch_size: 2, gradient_accumulation_steps: 3 });
  assert.equal(big.steps.length, 1);
  assert.equal(acc.steps.length, 1);
  assert.ok(Math.abs(acc.steps[0].loss - big.steps[0].loss) < 1e-5 * big.steps[0].loss, `loss ${acc.steps[0].loss} vs ${big.steps[0].loss}`);
  assert.ok(Math.abs(acc.steps[0].grad_norm - big.steps[0].grad_norm) < 1e-4 * big.steps[0].grad_norm);
  assert.ok(maxRelDiff(acc.weights, big.weights) < 1e-4, `weights differ by ${maxRelDiff(acc.weights, big.weights)}`);
  // The same micro-batches weighted by their row count (the classifier's rule) step elsewhere.
  const lm = tinyLM(LORA);
  const order = acc.steps.length && [[0, 1], [2, 3], [4, 5]];
  let rowLoss = 0;
  for (const idx of order) {
    const list = idx.map((i) => data[i]);
    rowLoss += (await lm.engine.accumulate(collateSft(list, 0), { lossScale: list.length / 6 })).loss * (list.length / 6);
  }
  assert.ok(Math.abs(rowLoss - big.steps[0].loss) > 1e-3, `row-weighted loss ${rowLoss} equals the token-weighted ${big.steps[0].loss}; the test would not tell them apart`);
  await lm.engine.dispose();
});

test('packing: packed rows give the loss, gradient step and evaluation of the examples apart', async () => {
  const data = rows(8, 2);
  const packed = packExamples(data, 40);
  assert.ok(packed.length < data.length && packed.some((r) => r.numExamples > 1));
  const apart = await trainRun(data, null, { ...ONE_STEP, output_dir: outDir(), per_device_train_batch_size: 8 });
  const together = await trainRun(packed, null, { ...ONE_STEP, output_dir: outDir(), per_device_train_batch_size: 8 });
  assert.ok(Math.abs(together.steps[0].loss - apart.steps[0].loss) < 1e-5 * apart.steps[0].loss, `packed loss ${together.steps[0].loss} vs ${apart.steps[0].loss}`);
  assert.ok(maxRelDiff(together.weights, apart.weights) < 1e-4, `weights differ by ${maxRelDiff(together.weights, apart.weights)}`);
  const lm = tinyLM(LORA);
  const a = await evaluateCausalLMLoss(lm, data, 3, 0);
  const b = await evaluateCausalLMLoss(lm, packed, 2, 0);
  assert.equal(a.eval_tokens, b.eval_tokens);
  assert.ok(Math.abs(a.loss - b.loss) < 1e-5 * a.loss, `eval loss ${b.loss} vs ${a.loss}`);
  assert.ok(Math.abs(a.perplexity - Math.exp(a.loss)) < 1e-9);
  await lm.engine.dispose();
});

test('resume with LoRA dropout on: losses, evaluations and adapters equal an uninterrupted run; checkpoints hold only adapters', async () => {
  const lora = { ...LORA, lora_dropout: 0.1 };
  const train = rows(10, 3);
  const evalRows = rows(4, 4);
  const args = { num_train_epochs: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 5e-3, logging_steps: 1, eval_strategy: 'epoch' as const };
  const a = await trainRun(train, evalRows, { ...args, output_dir: outDir() }, lora);
  assert.equal(a.steps.length, 6, '5 micro-batches a epoch in windows of 2, 2, 1');
  const dirB = outDir();
  const b1 = await trainRun(train, evalRows, { ...args, output_dir: dirB }, lora, (e, t) => e.step === 4 && t.stop());
  assert.equal(b1.steps.length, 4);
  const last = join(dirB, 'checkpoint-last');
  assert.ok(existsSync(join(last, 'adapter_config.json')) && existsSync(join(last, 'adapter_model.safetensors')));
  assert.ok(!existsSync(join(last, 'model.safetensors')), 'no base weights in a LoRA checkpoint');
  const moments = [...(await readSafetensors(join(last, 'optimizer.safetensors'))).tensors.keys()];
  assert.ok(moments.length > 0 && moments.every((k) => /\.lora_[AB]\.weight\.exp_avg(_sq)?$/.test(k)), 'moments of the adapters only');
  const b2 = await trainRun(train, evalRows, { ...args, output_dir: dirB, resume_from_checkpoint: true }, lora);
  const b = [...b1.steps, ...b2.steps];
  assert.deepEqual(b.map((e) => e.loss), a.steps.map((e) => e.loss));
  assert.deepEqual(b.map((e) => e.grad_norm), a.steps.map((e) => e.grad_norm));
  assert.deepEqual(b2.result.evals.map((e) => [e.step, e.loss]), a.result.evals.map((e) => [e.step, e.loss]));
  assert.equal(maxRelDiff(b2.weights, a.weights), 0, 'adapters bit-identical');
  assert.deepEqual(b2.counters, a.counters);
  assert.ok(a.steps.every((e) => typeof e.tokens_per_second === 'number' && e.tokens_per_second > 0));
  const log = (await readFile(join(dirB, 'training_log.jsonl'), 'utf8')).trim().split('\n');
  assert.equal(log.length, 6);
  // A changed LoRA shape is named before any tensor loads.
  const other = tinyLM({ ...lora, r: 2 });
  const t2 = new Trainer(task(other, { ...lora, r: 2 }), train, evalRows, { ...args, output_dir: dirB, resume_from_checkpoint: true });
  await assert.rejects(t2.trainLoop(), /--lora-\* \(the LoRA configuration\): checkpoint \{"r":4/);
  await other.engine.dispose();
});

test('full fine-tuning: every weight trains and is checkpointed with its moments as a Hugging Face folder', async () => {
  const out = outDir();
  const r = await trainRun(rows(4, 5), null, { ...ONE_STEP, max_steps: 2, output_dir: out, per_device_train_batch_size: 2, learning_rate: 1e-3 }, null);
  assert.equal(r.steps.length, 2);
  const last = join(out, 'checkpoint-last');
  const saved = (await readSafetensors(join(last, 'model.safetensors'))).tensors;
  assert.ok(saved.has('model.layers.1.mlp.down_proj.weight') && !saved.has('lm_head.weight'), 'tied embeddings: no lm_head');
  assert.deepEqual(saved.get('model.norm.weight')!.data, r.weights.get('model.norm.weight'));
  const moments = (await readSafetensors(join(last, 'optimizer.safetensors'))).tensors;
  assert.equal(moments.size, 2 * r.weights.size);
  assert.equal(JSON.parse(await readFile(join(last, 'config.json'), 'utf8')).model_type, 'llama');
});

test("learning_rate 'auto' with LoRA: the range test's steepest rate itself (new adapters), only adapters restored and trained", async () => {
  const lm = tinyLM(LORA);
  try {
    const t = task(lm, LORA);
    assert.equal(t.lrFindDivisor, 1);
    assert.equal(task(lm).lrFindDivisor, undefined, 'full fine-tuning keeps the default divisor');
    const trainer = new Trainer(t, rows(24, 11), null, { output_dir: outDir(), learning_rate: 'auto', max_steps: 1, eval_strategy: 'no', per_device_train_batch_size: 4 });
    await trainer.trainLoop();
    const found = trainer.lrFound!;
    assert.equal(found.learning_rate, found.lrs[found.steepest_index]);
    assert.equal(trainer.args.learning_rate, found.learning_rate);
    assert.doesNotMatch(found.rule, /divided/);
  } finally {
    await lm.engine.dispose();
  }
});
