// The `nodetune` command line end to end, as a user runs it (a child process):
// train a small random BERT on a synthetic 4-intent dataset until it has
// learned it, check every file of the output folder, evaluate and predict with
// the result, --config files, and bad input rejected before any training.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parameterShapes, type BertConfig } from '../src/config.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { CLI, INTENTS, MINILM_DIR, intentRows, writeIntentCsv, writeTinyModel } from './helpers/tiny-model.js';

const LABELS = Object.keys(INTENTS).sort(); // card, password, refund, transfer
const TOKENIZER_FILES = ['tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json'];

let tmp: string;
let model: string;
let trainCsv: string;
let evalCsv: string;
let out: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-cli-'));
  // H64: at H32 a model trained from random weights sometimes stalls with two intents merged for many epochs.
  model = await writeTinyModel(join(tmp, 'tiny'), { dropout: true, hidden_size: 64 });
  trainCsv = join(tmp, 'train.csv');
  evalCsv = join(tmp, 'eval.csv');
  await writeIntentCsv(trainCsv, intentRows(400, 1));
  await writeIntentCsv(evalCsv, intentRows(60, 2));
  out = join(tmp, 'out');
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function nodetune(...args: string[]): CliResult {
  return nodetuneWithStdin('', ...args);
}

function nodetuneWithStdin(input: string, ...args: string[]): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { input, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: CliResult): CliResult {
  assert.equal(r.status, 0, `nodetune exited with ${r.status}\n${r.stderr}`);
  return r;
}

const json = (path: string) => JSON.parse(readFileSync(path, 'utf8'));
const COLUMNS = ['--text-column', 'text', '--label-column', 'category'];

test('train: a random tiny BERT learns the 4 intents (accuracy ≥ 0.9) and the output folder is complete and valid', async () => {
  const r = ok(
    nodetune(
      'train', '--model', model, '--train', trainCsv, '--eval', evalCsv, ...COLUMNS, '--output', out,
      '--epochs', '4', '--batch-size', '8', '--learning-rate', '2e-3', '--warmup-ratio', '0.1', '--threads', '2', '--seed', '3',
    ),
  );
  assert.match(r.stderr, /train: 400 examples .*; eval: 60; labels: 4/);
  assert.match(r.stderr, /accuracy\s+\d\.\d{4}/);

  const results = json(join(out, 'eval_results.json'));
  assert.ok(results.accuracy >= 0.9, `accuracy ${results.accuracy} (chance is 0.25)`);
  assert.deepEqual(results.labels, LABELS);
  assert.deepEqual(Object.keys(results.per_class).sort(), LABELS);
  const cm = results.confusion_matrix as number[][];
  assert.equal(cm.length, 4);
  assert.equal(cm.flat().reduce((a, b) => a + b, 0), 60);
  assert.equal(results.accuracy, cm.reduce((s, row, i) => s + row[i], 0) / 60);
  for (const [i, label] of LABELS.entries()) {
    const c = results.per_class[label];
    assert.equal(c.support, cm[i].reduce((a, b) => a + b, 0));
    assert.ok(c.precision >= 0 && c.precision <= 1 && c.recall >= 0 && c.recall <= 1);
  }
  const meanF1 = LABELS.reduce((s, l) => s + results.per_class[l].f1, 0) / 4;
  assert.ok(Math.abs(results.macro_f1 - meanF1) < 1e-12);
  assert.ok(Math.abs(results.micro_f1 - results.accuracy) < 1e-12, 'single-label micro F1 is the accuracy');
  assert.ok(results.weighted_f1 >= 0.9);
  assert.ok(Number.isFinite(results.loss) && results.loss > 0 && results.loss < Math.log(4));

  const config = json(join(out, 'config.json'));
  assert.deepEqual(config.architectures, ['BertForSequenceClassification']);
  assert.equal(config.model_type, 'bert');
  assert.deepEqual(config.id2label, { 0: 'card', 1: 'password', 2: 'refund', 3: 'transfer' });
  assert.deepEqual(Object.keys(config.id2label), ['0', '1', '2', '3']);
  assert.deepEqual(config.label2id, { card: 0, password: 1, refund: 2, transfer: 3 });
  // transformers derives num_labels from id2label and does not write it; if present it must agree.
  assert.ok(config.num_labels === undefined || config.num_labels === 4);
  assert.equal(config.problem_type, 'single_label_classification');
  assert.equal(config.hidden_size, 64);

  const { tensors, metadata } = await readSafetensors(join(out, 'model.safetensors'));
  assert.equal(metadata.format, 'pt');
  const shapes = parameterShapes({ ...config, num_labels: 4 } as BertConfig);
  assert.deepEqual([...tensors.keys()].sort(), shapes.map(([k]) => k).sort());
  for (const [k, shape] of shapes) assert.deepEqual(tensors.get(k)!.shape, shape, k);
  assert.deepEqual(tensors.get('classifier.weight')!.shape, [4, 64]);
  assert.ok([...tensors.values()].every((t) => t.dtype === 'F32' && (t.data as Float32Array).every(Number.isFinite)));

  for (const f of TOKENIZER_FILES) assert.ok((await readFile(join(out, f))).equals(await readFile(join(MINILM_DIR, f))), `${f} copied`);

  const lines = readFileSync(join(out, 'training_log.jsonl'), 'utf8').trim().split('\n');
  const log = lines.map((l) => JSON.parse(l) as Record<string, number>);
  assert.deepEqual(log.map((e) => e.step), Array.from({ length: 20 }, (_, i) => 10 * (i + 1)), '200 steps, logged every 10');
  for (const e of log) {
    for (const k of ['step', 'epoch', 'loss', 'learning_rate', 'grad_norm', 'samples_per_second']) {
      assert.ok(typeof e[k] === 'number' && Number.isFinite(e[k]), `training_log.jsonl step ${e.step}: ${k}`);
    }
  }
  assert.equal(log.at(-1)!.epoch, 4);
  assert.ok(log.at(-1)!.loss < log[0].loss / 4, `loss fell from ${log[0].loss} to ${log.at(-1)!.loss}`);

  const html = readFileSync(join(out, 'report.html'), 'utf8');
  assert.match(html, /^<!DOCTYPE html>/i);
  assert.match(html, /<svg/);
  assert.ok(!existsSync(join(out, 'checkpoint-best')), 'the best checkpoint became the output model');
});

test('eval on the saved folder reproduces eval_results.json', () => {
  const evalOut = join(tmp, 'eval-out');
  const r = ok(nodetune('eval', '--model', out, '--data', evalCsv, ...COLUMNS, '--threads', '2', '--output', evalOut));
  const trained = json(join(out, 'eval_results.json'));
  const again = json(join(evalOut, 'eval_results.json'));
  assert.equal(again.accuracy, trained.accuracy);
  assert.equal(again.macro_f1, trained.macro_f1);
  assert.deepEqual(again.confusion_matrix, trained.confusion_matrix);
  assert.ok(Math.abs(again.loss - trained.loss) <= 1e-6 * trained.loss, `loss ${again.loss} vs ${trained.loss}`);
  for (const label of LABELS) assert.match(r.stdout, new RegExp(`\\b${label}\\b`));
  assert.match(r.stderr, new RegExp(`accuracy\\s+${trained.accuracy.toFixed(4)}`));
});

test('predict --top-k 2 prints one JSON line per text with the learned intent first', async () => {
  // The last line starts with '{': in a plain-text file it is a text, not JSON.
  const texts = ['please help me with a refund', 'my card is not working again', 'why does the transfer take so long', 'i would like to check my password', '{card} still not working'];
  const input = join(tmp, 'texts.txt');
  await writeFile(input, texts.join('\n') + '\n');
  const r = ok(nodetune('predict', '--model', out, '--input', input, '--top-k', '2', '--threads', '2'));
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.length, texts.length);
  lines.forEach((p, i) => {
    assert.equal(p.text, texts[i]);
    assert.equal(p.label, ['refund', 'card', 'transfer', 'password', 'card'][i], `"${texts[i]}"`);
    assert.equal(p.top_k.length, 2);
    assert.equal(p.top_k[0].label, p.label);
    assert.equal(p.top_k[0].score, p.score);
    assert.ok(p.score > p.top_k[1].score && p.top_k[1].score >= 0 && p.score <= 1);
    assert.ok(LABELS.includes(p.top_k[1].label) && p.top_k[1].label !== p.label);
  });
  // JSONL on stdin.
  const piped = ok(nodetuneWithStdin('{"text": "a wire transfer to my bank"}\n', 'predict', '--model', out, '--input', '-', '--threads', '2'));
  const [line] = piped.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(line.text, 'a wire transfer to my bank');
  assert.equal(line.label, 'transfer');
  assert.equal(line.top_k.length, 1);
});

test('--config file.yaml supplies flags; flags on the command line win', async () => {
  const cfgOut = join(tmp, 'from-config');
  const cfg = join(tmp, 'train.yaml');
  await writeFile(
    cfg,
    [
      `model: ${model}`, `train: ${trainCsv}`, `eval: ${evalCsv}`, 'text_column: text', 'label-column: category', `output: ${cfgOut}`,
      'max_steps: 5', 'learning_rate: 0.001', 'lr_scheduler_type: constant', 'logging-steps: 1', 'batch-size: 8', 'threads: 2', '',
    ].join('\n'),
  );
  ok(nodetune('train', '--config', cfg, '--max-steps', '3'));
  const log = readFileSync(join(cfgOut, 'training_log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(log.map((e) => e.step), [1, 2, 3], '--max-steps 3 on the command line beats max_steps: 5');
  assert.deepEqual(log.map((e) => e.learning_rate), [0.001, 0.001, 0.001], 'learning_rate and lr_scheduler_type from the file');
  const bad = join(tmp, 'bad.yaml');
  await writeFile(bad, 'learning_rate: 0.001\nlearning_rat: 2\n');
  const r = nodetune('train', '--config', bad);
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`--config ${bad}: unknown key 'learning_rat'`));
  await writeFile(bad, 'logging_steps: 0\n');
  const zero = nodetune('train', '--config', bad);
  assert.equal(zero.status, 1);
  assert.ok(zero.stderr.includes(`--config ${bad}: 'logging_steps': '0' is not a positive integer.`), zero.stderr);
});

test('sizes and step counts must be positive integers: --batch-size 0 and friends exit 1 naming the flag', () => {
  for (const flag of ['--batch-size', '--gradient-accumulation-steps', '--logging-steps', '--threads']) {
    const r = nodetune('train', '--model', model, '--train', trainCsv, '--output', join(tmp, 'never'), flag, '0');
    assert.equal(r.status, 1, flag);
    assert.ok(r.stderr.includes(`option '${flag} <n>' argument '0' is invalid. '0' is not a positive integer.`), r.stderr);
  }
  const r = nodetune('predict', '--model', out, '--input', evalCsv, '--top-k', '0');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /'--top-k <k>' argument '0' is invalid/);
  assert.ok(nodetune('train').stderr.includes('missing required options --model, --train, --output (give them as flags or in --config)'));
  assert.ok(nodetune('train', '--model', model, '--train', trainCsv).stderr.includes('missing required option --output (give it as a flag or in --config)'));
  for (const command of [['predict', '--input', evalCsv], ['eval', '--data', evalCsv], ['serve'], ['train', '--train', trainCsv, '--output', join(tmp, 'never')]]) {
    const m = nodetune(command[0], '--model', out, ...command.slice(1), '--max-length', '1');
    assert.equal(m.status, 1, command[0]);
    assert.ok(m.stderr.includes(`option '--max-length <n>' argument '1' is invalid. '1' is below 2: [CLS] and [SEP] take two tokens.`), m.stderr);
  }
  assert.ok(!existsSync(join(tmp, 'never')));
});

/** Writes `lines` to `name` in tmp; runs train on it (as --train, or as --eval with the good train file). */
async function badRun(name: string, lines: string[], as: 'train' | 'eval'): Promise<{ r: CliResult; path: string; output: string }> {
  const path = join(tmp, name);
  await writeFile(path, lines.join('\n') + '\n');
  const output = join(tmp, `out-${name}`);
  const files = as === 'train' ? ['--train', path, '--eval', evalCsv] : ['--train', trainCsv, '--eval', path];
  const r = nodetune('train', '--model', model, ...files, ...COLUMNS, '--output', output, '--threads', '2');
  return { r, path, output };
}

for (const { name, as, lines, error } of [
  {
    name: 'missing-column.csv',
    as: 'train' as const,
    lines: ['text,label', 'my card is lost,card'],
    error: (p: string) => `${p}:1: column "category" not found in the header; columns found: "text", "label"`,
  },
  {
    name: 'duplicate-column.csv',
    as: 'train' as const,
    lines: ['text,category,text', 'my card is lost,card,again'],
    error: (p: string) => `${p}:1: column "text" appears more than once in the header (columns 1 and 3)`,
  },
  {
    name: 'empty-label.csv',
    // A quoted field spanning lines 2-3 and a quoted comma, so the line count has to follow the CSV records.
    as: 'train' as const,
    lines: ['text,category', '"my card', 'is lost",card', '"refund, please",refund', 'where is my transfer,  '],
    error: (p: string) => `${p}:5:2: "category" is empty; expected non-empty text`,
  },
  {
    name: 'unseen-eval-label.csv',
    as: 'eval' as const,
    lines: ['text,category', 'my card is lost,card', 'can i get a loan,loan'],
    error: (p: string) => `${p}:3: label "loan" was not seen in training; known labels: card, password, refund, transfer`,
  },
]) {
  test(`bad input is rejected before training: ${name}`, async () => {
    const { r, path, output } = await badRun(name, lines, as);
    assert.equal(r.status, 1, r.stderr);
    assert.ok(r.stderr.includes(`nodetune: ${error(path)}`), r.stderr);
    assert.ok(!r.stderr.includes('newly initialized'), 'failed before the model was loaded');
    assert.ok(!existsSync(join(output, 'model.safetensors')) && !existsSync(join(output, 'checkpoint-last')), 'no model written');
  });
}

const quick = (output: string, ...more: string[]) =>
  nodetune('train', '--model', model, '--train', trainCsv, '--eval', evalCsv, ...COLUMNS, '--output', output, '--max-steps', '2', '--batch-size', '8', '--threads', '2', ...more);

test('--overwrite-output-dir never deletes the model it is asked to train: --output that is or holds --model is refused first', async () => {
  const dir = join(tmp, 'self');
  ok(quick(dir));
  const before = readdirSync(join(dir, 'checkpoint-last')).sort();
  // Continuing from a run's own checkpoint into the same run folder, and a model folder as its own output.
  for (const from of [join(dir, 'checkpoint-last'), dir]) {
    const r = nodetune('train', '--model', from, '--train', trainCsv, ...COLUMNS, '--output', dir, '--overwrite-output-dir', '--max-steps', '1', '--threads', '2');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--overwrite-output-dir would delete the model being trained: --model .* is --output .* or inside it; choose another --output/);
  }
  assert.deepEqual(readdirSync(join(dir, 'checkpoint-last')).sort(), before, 'nothing deleted');
  assert.ok(existsSync(join(dir, 'model.safetensors')));
});

test('re-training into a previous run: an error naming the folder and both flags; --overwrite-output-dir removes stale onnx/ and eval_results.json', async () => {
  const dir = join(tmp, 'rerun');
  ok(quick(dir));
  const oldLog = readFileSync(join(dir, 'training_log.jsonl'), 'utf8');
  const r = quick(dir);
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`--output ${dir} already holds a previous run .*pass --resume to continue it or --overwrite-output-dir to replace it`));
  assert.ok(!r.stderr.includes('newly initialized'), 'failed before the model was loaded');
  assert.equal(readFileSync(join(dir, 'training_log.jsonl'), 'utf8'), oldLog, 'the old log survives a refused run');
  await writeFile(join(tmp, 'stale.onnx'), 'x');
  const { mkdir, copyFile } = await import('node:fs/promises');
  await mkdir(join(dir, 'onnx'));
  await copyFile(join(tmp, 'stale.onnx'), join(dir, 'onnx', 'model.onnx'));
  const again = [...COLUMNS, '--output', dir, '--max-steps', '2', '--batch-size', '8', '--threads', '2', '--eval-strategy', 'no', '--validation-split', '0'];
  ok(nodetune('train', '--model', model, '--train', trainCsv, ...again, '--overwrite-output-dir'));
  assert.ok(!existsSync(join(dir, 'onnx')), 'stale onnx/ removed');
  assert.ok(!existsSync(join(dir, 'eval_results.json')), 'no eval set: no eval_results.json, and no stale one');
  assert.ok(existsSync(join(dir, 'model.safetensors')));
});

test('the onnx backend refuses an onnx/model.onnx whose logits width disagrees with config.json', async () => {
  const { cp } = await import('node:fs/promises');
  const dir = join(tmp, 'stale-onnx');
  await cp(out, dir, { recursive: true });
  ok(nodetune('export', '--model', dir));
  const config = json(join(dir, 'config.json'));
  config.id2label = { 0: 'a', 1: 'b', 2: 'c' };
  config.label2id = { a: 0, b: 1, c: 2 };
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  const input = join(tmp, 'one.txt');
  await writeFile(input, 'my card is lost\n');
  const r = nodetune('predict', '--model', dir, '--input', input, '--backend', 'onnx');
  assert.equal(r.status, 1);
  assert.ok(r.stderr.includes(`${join(dir, 'onnx', 'model.onnx')} gives 4 logits but ${join(dir, 'config.json')} has num_labels 3`), r.stderr);
  assert.match(r.stderr, /re-run `nodetune export --model /);
});

test('one-class training data is an error naming the file and the label', async () => {
  const { r, path } = await badRun('one-class.csv', ['text,category', 'my card is lost,card', 'card not working,card'], 'train');
  assert.equal(r.status, 1);
  assert.ok(r.stderr.includes(`${path}: only one label found ("card"); classification needs at least 2 distinct labels`), r.stderr);
});

test('predict: invalid UTF-8 and empty input are errors naming the file; EPIPE (| head) exits quietly', async () => {
  const bad = join(tmp, 'latin1.txt');
  await writeFile(bad, Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x0a]));
  const r = nodetune('predict', '--model', out, '--input', bad, '--threads', '2');
  assert.equal(r.status, 1);
  assert.ok(r.stderr.includes(`${bad}:1:4: invalid UTF-8 at byte offset 3 (byte 0xE9)`), r.stderr);
  const empty = join(tmp, 'empty.csv');
  await writeFile(empty, 'text\n\n');
  const e = nodetune('predict', '--model', out, '--input', empty, '--threads', '2');
  assert.equal(e.status, 1);
  assert.ok(e.stderr.includes(`${empty}: no texts found`), e.stderr);
  const many = join(tmp, 'many.txt');
  await writeFile(many, Array.from({ length: 3000 }, (_, i) => `my card number ${i} is lost`).join('\n'));
  const piped = spawnSync('bash', ['-c', `set -o pipefail; "${process.execPath}" "${CLI}" predict --model "${out}" --input "${many}" --threads 2 | head -2`], { encoding: 'utf8' });
  assert.equal(piped.stdout.trim().split('\n').length, 2);
  assert.ok(!/EPIPE|Error/.test(piped.stderr), piped.stderr);
  assert.equal(piped.status, 0);
});

test('--resume checks the settings against trainer_state.json before loading weights; corrupt state names the file; no checkpoint creates nothing', async () => {
  const dir = join(tmp, 'resume-check');
  ok(quick(dir));
  const r = quick(dir, '--resume', '--max-steps', '4', '--batch-size', '4', '--seed', '7');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--batch-size: checkpoint 8, now 4/);
  assert.match(r.stderr, /--max-steps: checkpoint 2, now 4/);
  assert.match(r.stderr, /--seed: checkpoint 42, now 7/);
  assert.ok(!r.stderr.includes('newly initialized'), 'before any weights were loaded');
  const threeLabels = join(tmp, 'three.csv');
  await writeIntentCsv(threeLabels, intentRows(400, 1).filter((row) => row.category !== 'card'));
  const l = nodetune('train', '--model', model, '--train', threeLabels, '--eval', evalCsv, ...COLUMNS, '--output', dir, '--resume', '--max-steps', '2', '--batch-size', '8');
  assert.equal(l.status, 1);
  assert.ok(l.stderr.includes('the checkpoint has 4 labels, the data 3') || l.stderr.includes('not seen in training'), l.stderr);
  const statePath = join(dir, 'checkpoint-last', 'trainer_state.json');
  await writeFile(statePath, '');
  const c = quick(dir, '--resume');
  assert.equal(c.status, 1);
  assert.ok(c.stderr.includes(`${statePath}: not valid JSON`), c.stderr);
  const none = join(tmp, 'never-resumed');
  const n = quick(none, '--resume');
  assert.equal(n.status, 1);
  assert.match(n.stderr, /cannot resume/);
  assert.ok(!existsSync(none), 'the output folder was not created');
  const cfgDir = join(tmp, 'corrupt-config');
  const { cp } = await import('node:fs/promises');
  await cp(model, cfgDir, { recursive: true });
  await writeFile(join(cfgDir, 'config.json'), '{"hidden_size": ');
  const cc = nodetune('train', '--model', cfgDir, '--train', trainCsv, ...COLUMNS, '--output', join(tmp, 'cc'));
  assert.equal(cc.status, 1);
  assert.ok(cc.stderr.includes(`${join(cfgDir, 'config.json')}:1:17: invalid JSON: Unexpected end of JSON input`), cc.stderr);
  const ce = nodetune('eval', '--model', cfgDir, '--data', evalCsv, ...COLUMNS);
  assert.equal(ce.status, 1);
  assert.ok(ce.stderr.includes(`${join(cfgDir, 'config.json')}:1:17: invalid JSON: Unexpected end of JSON input`), ce.stderr);
});

test('--config takes Hugging Face TrainingArguments names; booleans as yes/no; unknown keys list flag names', async () => {
  const dir = join(tmp, 'hf-config');
  const cfg = join(tmp, 'hf.yaml');
  await writeFile(
    cfg,
    [
      `model: ${model}`, `train: ${trainCsv}`, `eval: ${evalCsv}`, 'label_column: category', `output_dir: ${dir}`,
      'per_device_train_batch_size: 8', 'per_device_eval_batch_size: 16', 'num_train_epochs: 1', 'max_steps: 3', 'learning_rate: 0.001',
      'lr_scheduler_type: constant', 'logging_steps: 1', 'warmup_ratio: 0', 'weight_decay: 0.0', 'max_grad_norm: 1.0', 'gradient_accumulation_steps: 1',
      'seed: 5', 'eval_steps: 3', 'save_steps: 3', 'eval_strategy: steps', 'metric_for_best_model: macro_f1', 'early_stopping_patience: 0',
      'label_smoothing_factor: 0.0', 'resume_from_checkpoint: no', 'overwrite_output_dir: "false"', 'threads: 2', '',
    ].join('\n'),
  );
  const r = ok(nodetune('train', '--config', cfg));
  assert.match(r.stderr, /train: 400 examples/);
  const log = readFileSync(join(dir, 'training_log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(log.map((e) => e.step), [1, 2, 3]);
  assert.deepEqual(log.map((e) => e.learning_rate), [0.001, 0.001, 0.001]);
  const state = json(join(dir, 'checkpoint-last', 'trainer_state.json'));
  assert.equal(state.settings.per_device_train_batch_size, 8);
  assert.equal(state.settings.seed, 5);
  // 'resume_from_checkpoint: no' did not turn resume on; 'overwrite_output_dir: yes' now replaces the run.
  await writeFile(cfg, readFileSync(cfg, 'utf8').replace('overwrite_output_dir: "false"', 'overwrite_output_dir: yes'));
  ok(nodetune('train', '--config', cfg));
  const bad = join(tmp, 'bad-hf.yaml');
  await writeFile(bad, 'batchsize: 2\n');
  const u = nodetune('train', '--config', bad);
  assert.equal(u.status, 1);
  assert.match(u.stderr, /unknown key 'batchsize' \(expected a flag name: .*\bbatch-size\b.*learning-rate.*; or a Hugging Face name: per_device_train_batch_size/);
  assert.ok(!/batchSize|learningRate/.test(u.stderr), u.stderr);
  await writeFile(bad, 'resume: maybe\n');
  assert.match(nodetune('train', '--config', bad).stderr, /'resume': expected true or false/);
});

test('Ctrl-C during train prints "interrupted at step X: resume with --resume" and exits 130', async () => {
  const { spawn } = await import('node:child_process');
  const dir = join(tmp, 'interrupted');
  const child = spawn(process.execPath, [CLI, 'train', '--model', model, '--train', trainCsv, '--eval', evalCsv, ...COLUMNS, '--output', dir,
    '--max-steps', '100000', '--batch-size', '8', '--logging-steps', '1', '--threads', '2']);
  let stderr = '';
  let sent = false;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (!sent && stderr.includes('step 1/')) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  assert.equal(code, 130, stderr);
  const m = /interrupted at step (\d+): resume with --resume/.exec(stderr);
  assert.ok(m, stderr);
  assert.ok(!stderr.includes('nodetune train: result'), 'no normal result table');
  assert.equal(json(join(dir, 'checkpoint-last', 'trainer_state.json')).global_step, Number(m[1]));
});

test('range checks name the flag before the model is loaded; --output a file; missing paths name their flag', async () => {
  const never = join(tmp, 'never-ranges');
  for (const [flag, value, msg] of [
    ['--adam-beta1', '1', '--adam-beta1 1: expected a number in [0, 1)'],
    ['--adam-beta2', '-0.1', '--adam-beta2 -0.1: expected a number in [0, 1)'],
    ['--adam-epsilon', '0', '--adam-epsilon 0: expected a number > 0'],
    ['--weight-decay', '-1', '--weight-decay -1: expected a number ≥ 0'],
    ['--max-grad-norm', '-1', '--max-grad-norm -1: expected a number ≥ 0'],
    ['--label-smoothing', '1.5', '--label-smoothing 1.5: expected a number in [0, 1]'],
    ['--validation-split', '1', '--validation-split 1: expected a number in (0, 1), or 0 for no split'],
    ['--max-steps', '0', '--max-steps 0: expected -1 (use --epochs) or an integer > 0'],
    ['--seed', '1e20', '--seed 100000000000000000000: expected a safe integer'],
    ['--lr-scheduler-type', 'inverse_time', '--decay-rate is required for --lr-scheduler-type inverse_time'],
  ]) {
    const r = nodetune('train', '--model', model, '--train', trainCsv, '--output', never, flag, value);
    assert.equal(r.status, 1, flag);
    assert.ok(r.stderr.includes(`nodetune: ${msg}`), `${flag}: ${r.stderr}`);
  }
  assert.ok(!existsSync(never));
  const file = join(tmp, 'a-file');
  await writeFile(file, 'x');
  const f = nodetune('train', '--model', model, '--train', trainCsv, ...COLUMNS, '--output', file);
  assert.ok(f.stderr.includes(`--output ${file} is a file`), f.stderr);
  const missing = join(tmp, 'no-such.csv');
  const m = nodetune('train', '--model', model, '--train', missing, ...COLUMNS, '--output', never);
  assert.ok(m.stderr.includes(`nodetune: --train ${missing} does not exist`), m.stderr);
  const noModel = join(tmp, 'no-such-model');
  const mm = nodetune('train', '--model', noModel, '--train', trainCsv, ...COLUMNS, '--output', never);
  assert.equal(mm.stderr, `nodetune: --model ${noModel} does not exist\n`);
  const d = nodetune('predict', '--model', out, '--input', tmp);
  assert.ok(d.stderr.includes(`nodetune: --input ${tmp} is a folder, expected a file`), d.stderr);
  const w = ok(quick(join(tmp, 'capped'), '--max-length', '100000'));
  assert.match(w.stderr, /warning: --max-length 100000 is above the model's max_position_embeddings; capped at \d+/);
});

test('export, serve, predict, eval: a missing --model folder, or a file, exits 1 naming the flag; export --output under a file names --output', async () => {
  const missing = join(tmp, 'no-such-model');
  const file = join(tmp, 'model-file.txt');
  await writeFile(file, 'not a model folder');
  // A timeout, so a serve that started listening anyway fails the test instead of hanging it.
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, FORCE_COLOR: '0' } });
  const texts = join(tmp, 'texts.txt');
  await writeFile(texts, 'hello\n');
  for (const [command, ...extra] of [['export'], ['serve', '--port', '0'], ['predict', '--input', texts], ['eval', '--data', texts]]) {
    const m = run(command, '--model', missing, ...extra);
    assert.equal(m.status, 1, `${command}: ${m.stderr}`);
    assert.equal(m.stderr, `nodetune: --model ${missing} does not exist\n`, command);
    const f = run(command, '--model', file, ...extra);
    assert.equal(f.status, 1, `${command}: ${f.stderr}`);
    assert.equal(f.stderr, `nodetune: --model ${file} is a file, expected a folder\n`, command);
  }
  // The paths named are the ones the user gave (not <output>/onnx).
  const o = run('export', '--model', out, '--output', join(file, 'onnx-out'));
  assert.equal(o.status, 1, o.stderr);
  assert.equal(o.stderr, `nodetune: --output ${join(file, 'onnx-out')}: ${file} is a file, expected a folder\n`);
  const of = run('export', '--model', out, '--output', file);
  assert.equal(of.status, 1, of.stderr);
  assert.equal(of.stderr, `nodetune: --output ${file} is a file, expected a folder\n`);
  const op = run('export', '--model', out, '--opset', '16');
  assert.equal(op.status, 1, op.stderr);
  assert.equal(op.stderr, 'nodetune: --opset 16: expected 17-23\n');
  assert.ok(!existsSync(missing));
});

test('a folder without config.json: every command says it is not a model folder, naming --model', async () => {
  const empty = join(tmp, 'not-a-model');
  await mkdir(empty);
  const texts = join(tmp, 'one-text.txt');
  await writeFile(texts, 'hello\n');
  const never = join(tmp, 'never-not-a-model');
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, FORCE_COLOR: '0' } });
  const want = `nodetune: --model ${empty} is not a model folder: config.json is missing (expected a Hugging Face model folder: config.json, model.safetensors, tokenizer files)\n`;
  for (const [command, ...extra] of [
    ['train', '--train', trainCsv, ...COLUMNS, '--output', never],
    ['eval', '--data', evalCsv, ...COLUMNS],
    ['predict', '--input', texts],
    ['export'],
    ['serve', '--port', '0'],
  ]) {
    const r = run(command, '--model', empty, ...extra);
    assert.equal(r.status, 1, `${command}: ${r.stderr}`);
    assert.equal(r.stderr, want, command);
  }
  // --model from --config is checked too.
  const cfg = join(tmp, 'predict-not-a-model.yaml');
  await writeFile(cfg, `model: ${empty}\ninput: ${texts}\n`);
  assert.equal(run('predict', '--config', cfg).stderr, want);
  assert.ok(!existsSync(never));
});

test('--config with a syntax error names the file, line and column', async () => {
  const bad = join(tmp, 'syntax.json');
  for (const [text, where, reason] of [
    ['{\n  "top_k": 2,\n  model: "x"\n}\n', '3:3', 'Expected double-quoted property name'],
    ['{"top_k": }', '1:11', "Unexpected token '}'"],
  ]) {
    await writeFile(bad, text);
    const r = nodetune('predict', '--config', bad);
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `nodetune: --config ${bad}:${where}: invalid JSON: ${reason}\n`);
  }
  const yaml = join(tmp, 'syntax.yaml');
  await writeFile(yaml, 'top_k: 2\n  model: x\n');
  const y = nodetune('predict', '--config', yaml);
  assert.equal(y.status, 1);
  assert.equal(y.stderr, `nodetune: --config ${yaml}:1:8: invalid YAML: Nested mappings are not allowed in compact mappings\n`);
});

test('predict and serve warn, as train does, when --max-length is above max_position_embeddings (64 here), and keep working', async () => {
  const input = join(tmp, 'card.txt');
  await writeFile(input, 'my card is lost\n');
  const warning = "warning: --max-length 100000 is above the model's max_position_embeddings; capped at 64";
  const capped = ok(nodetune('predict', '--model', out, '--input', input, '--max-length', '100000', '--threads', '2'));
  assert.ok(capped.stderr.includes(warning), capped.stderr);
  const plain = ok(nodetune('predict', '--model', out, '--input', input, '--threads', '2'));
  assert.ok(!plain.stderr.includes('warning'), plain.stderr);
  assert.equal(capped.stdout, plain.stdout, 'capped at the default length');
  assert.equal(JSON.parse(plain.stdout).label, 'card');

  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, [CLI, 'serve', '--model', out, '--backend', 'native', '--port', '0', '--max-length', '100000', '--threads', '2']);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let stdout = '';
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
        const m = / at (http:\/\/\S+)/.exec(stdout);
        if (m) resolve(m[1]);
      });
      child.on('close', () => reject(new Error(`serve exited before listening: ${stderr}`)));
    });
    assert.ok(stderr.includes(warning), stderr);
    const res = await fetch(`${url}/classify`, { method: 'POST', body: JSON.stringify({ text: 'my card is lost' }) });
    const served = ((await res.json()) as { predictions: Array<Array<{ label: string; score: number }>> }).predictions[0][0];
    const predicted = JSON.parse(plain.stdout);
    assert.equal(served.label, predicted.label);
    assert.ok(Math.abs(served.score - predicted.score) < 1e-5, `serve ${served.score} vs predict ${predicted.score}`);
  } finally {
    child.kill('SIGTERM');
  }
  assert.equal(await exited, 0, stderr);
});

test('no eval set: the result table is printed without metrics', () => {
  const r = ok(nodetune('train', '--model', model, '--train', trainCsv, ...COLUMNS, '--output', join(tmp, 'no-eval'), '--validation-split', '0',
    '--eval-strategy', 'no', '--max-steps', '2', '--batch-size', '8', '--threads', '2'));
  assert.match(r.stderr, /nodetune train: result/);
  assert.match(r.stderr, /eval\s+none/);
  assert.ok(!/accuracy/.test(r.stderr));
});

test('number flags take decimal notation only: 0x10, 0b11, 1_000 and Infinity are refused naming the value', async () => {
  const { num, learningRate } = await import('../src/cli/common.js');
  for (const ok of ['3', '-2.5', '.5', '5.', '3e-4', '1E+3', ' 7 ']) assert.equal(num(ok), Number(ok), ok);
  for (const bad of ['0x10', '0b11', '0o7', '1_000', 'Infinity', '', ' ', '1e', 'e3', '--1']) {
    assert.throws(() => num(bad), new RegExp(`'${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' is not a number`), bad);
  }
  assert.throws(() => learningRate('0x10'), /is not a number/);
  assert.equal(learningRate('AUTO'), 'auto');
});
