// `nodetune pretrain` / pretrainMaskedLM on a tiny random BERT with the real MiniLM tokenizer
// (test/helpers/tiny-model.ts): the run folder is a BertForMaskedLM folder that `train` fine-tunes,
// the loss falls, a stopped run resumes to exactly the uninterrupted one (dropout on, masks drawn
// per epoch), changed masking settings are refused on resume, and bad input is named.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pretrainMaskedLM, type PretrainOptions } from '../src/tasks/masked-lm/pretrain.js';
import type { LogEntry } from '../src/train/trainer.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readTexts } from '../src/data/index.js';
import { maskingFor } from '../src/tasks/masked-lm/task.js';
import type { Model } from '../src/model.js';
import { CLI, intentRows, writeIntentCsv, writeTinyModel } from './helpers/tiny-model.js';

let tmp = '';
let model = '';
let texts = '';
let csv = '';

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-pretrain-'));
  model = await writeTinyModel(join(tmp, 'model'), { dropout: true });
  const rows = intentRows(48, 5);
  texts = join(tmp, 'domain.txt');
  await writeFile(texts, rows.map((r) => r.text).join('\n') + '\n\n');
  csv = await writeIntentCsv(join(tmp, 'labelled.csv'), intentRows(24, 6)).then(() => join(tmp, 'labelled.csv'));
});

after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const ARGS = {
  num_train_epochs: 2, per_device_train_batch_size: 8, gradient_accumulation_steps: 2, learning_rate: 1e-3,
  logging_steps: 1, validation_split: 0.25, threads: 2, seed: 3,
};

async function run(output: string, extra: Partial<PretrainOptions> = {}, stopAt?: number): Promise<{ steps: LogEntry[]; result: Awaited<ReturnType<typeof pretrainMaskedLM>> }> {
  const steps: LogEntry[] = [];
  const result = await pretrainMaskedLM({
    model, train_file: texts, output_dir: output, ...ARGS, ...extra,
    onTrainer: (t) => t.on('step', (e: LogEntry) => {
      steps.push(e);
      if (e.step === stopAt) t.stop();
    }),
  });
  return { steps, result };
}

test('pretrain: a BertForMaskedLM run folder, the masked-token loss falls, eval loss and perplexity written', async () => {
  const out = join(tmp, 'run');
  const { steps, result } = await run(out, { num_train_epochs: 10, learning_rate: 5e-3 });
  assert.equal(result.train_examples, 36);
  assert.equal(result.eval_examples, 12);
  assert.ok(result.eval && result.eval.eval_tokens > 0);
  assert.ok(Math.abs(result.eval.perplexity - Math.exp(result.eval.loss)) < 1e-9);
  const first = steps.slice(0, 3).reduce((s, e) => s + e.loss, 0) / 3;
  const last = steps.slice(-3).reduce((s, e) => s + e.loss, 0) / 3;
  assert.ok(last < first - 0.5, `loss ${first} -> ${last}`);
  const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
  assert.deepEqual(cfg.architectures, ['BertForMaskedLM']);
  const keys = [...(await readSafetensors(join(out, 'model.safetensors'))).tensors.keys()];
  assert.ok(keys.includes('cls.predictions.bias') && keys.includes('cls.predictions.transform.dense.weight'));
  assert.ok(keys.includes('bert.pooler.dense.weight'), 'the source checkpoint\'s pooler is carried for a later classifier');
  assert.ok(!keys.some((k) => k.startsWith('cls.predictions.decoder')), 'the tied decoder is not written twice');
  for (const f of ['eval_results.json', 'training_log.jsonl', 'training_args.json', 'report.html', 'vocab.txt']) assert.ok(existsSync(join(out, f)), f);
  assert.match(await readFile(join(out, 'report.html'), 'utf8'), /<section id="perplexity">.*<svg/s);
  const args = JSON.parse(await readFile(join(out, 'training_args.json'), 'utf8'));
  assert.equal(args.mlm_probability, 0.15);
  // `train` fine-tunes the folder directly: the encoder and pooler are the pre-trained ones, only the classifier is new.
  const r = spawnSync(process.execPath, [CLI, 'train', '--model', out, '--train', csv, '--label-column', 'category', '--validation-split', '0.25', '--output', join(tmp, 'cls'), '--max-steps', '2', '--threads', '2'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /newly initialized: \['classifier.bias', 'classifier.weight'\]/);
});

test('pretrain: a run stopped mid-epoch resumes to exactly the uninterrupted losses (dropout on, masks per epoch)', async () => {
  const a = await run(join(tmp, 'a'));
  assert.equal(a.steps.length, 6, '5 micro-batches a epoch in windows of 2, 2, 1');
  const dirB = join(tmp, 'b');
  const b1 = await run(dirB, {}, 4);
  assert.equal(b1.result.interrupted, true);
  const b2 = await run(dirB, { resume_from_checkpoint: true });
  assert.deepEqual([...b1.steps, ...b2.steps].map((e) => e.loss), a.steps.map((e) => e.loss));
  assert.deepEqual([...b1.steps, ...b2.steps].map((e) => e.grad_norm), a.steps.map((e) => e.grad_norm));
  assert.equal(b2.result.eval!.loss, a.result.eval!.loss);
  // Masks differ between epochs: the same batch order with other masks gives other losses.
  const c = await run(join(tmp, 'c'), { seed: 4 });
  assert.notDeepEqual(c.steps.map((e) => e.loss), a.steps.map((e) => e.loss));
  await assert.rejects(run(dirB, { resume_from_checkpoint: true, mlm_probability: 0.3 }), /mlm_probability|--mlm-probability/);
});

test('pretrain: bad input is named before training', async () => {
  await assert.rejects(run(join(tmp, 'bad1'), { mlm_probability: 1.5 }), /mlm_probability 1.5: expected a number in \(0, 1\)/);
  await assert.rejects(run(join(tmp, 'bad2'), { device: 'cuda' }), /cuda/);
  const empty = join(tmp, 'empty.txt');
  await writeFile(empty, '\n  \n');
  await assert.rejects(pretrainMaskedLM({ model, train_file: empty, output_dir: join(tmp, 'bad3') }), /empty\.txt: no texts found/);
  // Held-out texts whose fixed evaluation masks choose nothing: refused before training, not scored NaN.
  await assert.rejects(run(join(tmp, 'bad6'), { mlm_probability: 1e-9 }), /held-out split\): its 12 texts get no masked token at mlm_probability 1e-9/);
  // Empty texts in a .jsonl are dropped like blank .txt lines (run_mlm); a missing key is still an error.
  const withEmpty = join(tmp, 'empty-rows.jsonl');
  await writeFile(withEmpty, '{"text": "a card question"}\n{"text": "  "}\n{"text": "my top up failed"}\n');
  assert.deepEqual(readTexts(withEmpty, { skipEmpty: true }).map((t) => t.line), [1, 3]);
  assert.throws(() => readTexts(withEmpty), /empty-rows\.jsonl:2.*"text" is empty/);
  const fake = { source: 'm', config: { vocab_size: 30522 }, tokenizer: { maskTokenId: 40000, vocabSize: 40001 } } as unknown as Model;
  assert.throws(() => maskingFor(fake, {}), /m: the tokenizer's \[MASK\] id 40000 is outside the model's vocabulary \(config.json vocab_size 30522\)/);
  const jsonl = join(tmp, 'texts.jsonl');
  await writeFile(jsonl, '{"text": "a card question"}\n{"body": "no text here"}\n');
  await assert.rejects(pretrainMaskedLM({ model, train_file: jsonl, output_dir: join(tmp, 'bad4') }), /texts\.jsonl:2/);
  const r = spawnSync(process.execPath, [CLI, 'pretrain', '--model', model, '--train', texts, '--output', join(tmp, 'bad5'), '--mlm-probability', 'x'], { encoding: 'utf8' });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /mlm-probability/);
});
