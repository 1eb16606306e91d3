// `nodetune sft`, `nodetune eval` and `nodetune export` on a causal LM as a user runs them (child
// processes) on the real SmolLM2-135M-Instruct GGUF with a handful of Banking77 chats: the run
// folder is complete (PEFT adapter, llama.cpp LoRA GGUF, eval_results.json with generation
// metrics, training_log.jsonl with tokens/s, report.html with sample generations, a checkpoint
// of the adapters only); eval on the run folder reproduces the run's numbers and the base model
// scores differently; the merged Hugging Face export computes what the adapter on its base
// computes; the merged GGUF is Q8_0; data and flag errors are named before the model loads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors } from '../src/io/safetensors.js';
import { readGgufHeader } from '../src/io/gguf.js';
import { bf16Unsupported } from './helpers/bf16.js';
import { loadCausalLM } from '../src/llm/load.js';
import { loadSftModel } from '../src/tasks/causal-lm/model.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = join(root, 'dist/src/cli/main.js');
const gguf = join(root, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
const missing = existsSync(gguf) ? false : `${gguf} is missing: run bash scripts/fetch-llm.sh (setup does)`;

let tmp: string;
let trainFile: string;
let evalFile: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-sft-cli-'));
  const chat = (text: string, label: string) => JSON.stringify({ messages: [{ role: 'system', content: 'Classify the banking query.' }, { role: 'user', content: text }, { role: 'assistant', content: label }] });
  const rows: Array<[string, string]> = [
    ['I am still waiting on my card?', 'card_arrival'],
    ['How do I top up with apple pay?', 'top_up_by_card_charge'],
    ['My card has not arrived yet', 'card_arrival'],
    ['Can I add money with my card?', 'top_up_by_card_charge'],
    ['What is the exchange rate?', 'exchange_rate'],
    ['When will my card get here?', 'card_arrival'],
    ['Which rate do you use to exchange?', 'exchange_rate'],
    ['Top up with a card, is there a fee?', 'top_up_by_card_charge'],
  ];
  trainFile = join(tmp, 'train.jsonl');
  evalFile = join(tmp, 'eval.jsonl');
  await writeFile(trainFile, rows.map(([t, l]) => chat(t, l)).join('\n') + '\n');
  await writeFile(evalFile, [chat('Where is my new card?', 'card_arrival'), chat('How much is the exchange rate today?', 'exchange_rate'), chat('Is topping up by card free?', 'top_up_by_card_charge')].join('\n') + '\n');
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function nodetune(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 180_000, env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('nodetune sft → eval → export on SmolLM2 with 8 chats and 2 steps', { skip: missing }, async () => {
  const out = join(tmp, 'run');
  const r = nodetune('sft', '--model', gguf, '--train', trainFile, '--eval', evalFile, '--output', out, '--max-steps', '2', '--batch-size', '4',
    '--learning-rate', '1e-3', '--lora-r', '4', '--lora-alpha', '8', '--lora-layers', '28-29', '--threads', '2', '--logging-steps', '1', '--choices-from-labels', '--report-samples', '2');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /train .*train\.jsonl: 8 examples, \d+ tokens, \d+ target tokens; 0 truncated at max_length 1024/);
  assert.match(r.stderr, /LoRA r 4, alpha 8, q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, layers 28,29: \d+ trainable parameters/);
  assert.match(r.stderr, /generation constrained to 3 choices/);
  assert.match(r.stderr, /step 2\/2 .* tokens\/s ETA/);
  assert.match(r.stderr, /exact match\s+\d+\.\d+% of 3/);
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'adapter_model.gguf', 'eval_results.json', 'eval_generations.jsonl', 'training_log.jsonl', 'training_args.json', 'report.html', 'checkpoint-last/optimizer.safetensors']) {
    assert.ok(existsSync(join(out, f)), `${f} is written`);
  }
  const adapterConfig = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8'));
  assert.equal(adapterConfig.base_model_name_or_path, gguf);
  assert.deepEqual(adapterConfig.layers_to_transform, [28, 29]);
  const adapter = (await readSafetensors(join(out, 'adapter_model.safetensors'))).tensors;
  assert.equal(adapter.size, 2 * 7 * 2, 'A and B of 7 modules on 2 layers');
  assert.equal((await readGgufHeader(join(out, 'adapter_model.gguf'))).tensors.length, 2 * 7 * 2);
  const results = JSON.parse(await readFile(join(out, 'eval_results.json'), 'utf8'));
  assert.equal(results.generated, 3);
  assert.equal(results.choices, 3);
  assert.ok(results.exact_match >= 0 && results.exact_match <= 1 && results.loss > 0 && results.eval_tokens > 0);
  const gens = (await readFile(join(out, 'eval_generations.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  assert.ok(gens.every((g) => ['card_arrival', 'exchange_rate', 'top_up_by_card_charge'].includes(g.prediction)), 'constrained answers are labels');
  const log = (await readFile(join(out, 'training_log.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(log.map((e) => e.step), [1, 2]);
  assert.ok(log.every((e) => e.tokens_per_second > 0 && Number.isFinite(e.loss)));
  const html = await readFile(join(out, 'report.html'), 'utf8');
  assert.match(html, /<section id="samples">.*before training.*after training/s);
  assert.match(html, /exact match <b>/);

  // eval on the run folder gives the run's numbers; the base model, other ones.
  const e = nodetune('eval', '--model', out, '--data', evalFile, '--choices-from-labels', '--threads', '2', '--output', join(tmp, 'eval-run'));
  assert.equal(e.status, 0, e.stderr);
  const again = JSON.parse(await readFile(join(tmp, 'eval-run', 'eval_results.json'), 'utf8'));
  assert.equal(again.exact_match, results.exact_match);
  assert.ok(Math.abs(again.loss - results.loss) < 1e-6, `${again.loss} vs ${results.loss}`);
  const base = nodetune('eval', '--model', gguf, '--data', evalFile, '--choices-from-labels', '--threads', '2');
  assert.equal(base.status, 0, base.stderr);
  assert.notEqual(JSON.parse(base.stdout).loss, results.loss);

  // The merged HF folder computes what the adapter on its base does.
  const hf = nodetune('export', '--model', out, '--format', 'hf', '--output', join(tmp, 'merged'));
  assert.equal(hf.status, 0, hf.stderr);
  const merged = await loadCausalLM(join(tmp, 'merged'), { threads: 2 });
  const withAdapter = await loadSftModel(out, { threads: 2 });
  const ids = withAdapter.tokenizer.encode('<|im_start|>user\nWhere is my card?<|im_end|>\n<|im_start|>assistant\n', { addSpecialTokens: false });
  const batch = { input_ids: Int32Array.from(ids), attention_mask: new Int32Array(ids.length).fill(1), batchSize: 1, seqLen: ids.length };
  const a = (await merged.engine.forward(batch)).logits;
  const b = (await withAdapter.engine.forward(batch)).logits;
  let worst = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  assert.ok(worst < 1e-4 * scale, `merged vs adapter logits differ by ${worst} (scale ${scale})`);
  await merged.engine.dispose();
  await withAdapter.engine.dispose();
  const g = nodetune('export', '--model', out, '--format', 'gguf', '--type', 'q8_0');
  assert.equal(g.status, 0, g.stderr);
  const header = await readGgufHeader(join(out, 'model-q8_0.gguf'));
  assert.equal(header.metadata.get('general.file_type')?.value, 7);
});

test('sft: bad data and contradictory flags are named before the model loads; a run folder is not overwritten by accident', { skip: missing }, async () => {
  const bad = join(tmp, 'bad.jsonl');
  await writeFile(bad, '{"messages": [{"role": "user", "content": "hi"}]}\n');
  const r = nodetune('sft', '--model', gguf, '--train', bad, '--output', join(tmp, 'never'));
  assert.equal(r.status, 1);
  assert.equal(r.stderr, `nodetune: ${bad}:1: messages has no assistant message to learn from\n`);
  const f = nodetune('sft', '--model', gguf, '--train', trainFile, '--output', join(tmp, 'never'), '--full', '--lora-r', '8');
  assert.equal(f.stderr, 'nodetune: full_finetune trains every weight; lora_r only apply to LoRA\n');
  const m = nodetune('sft', '--model', gguf, '--train', trainFile, '--output', join(tmp, 'never'), '--metric-for-best-model', 'accuracy');
  assert.match(m.stderr, /metric_for_best_model 'accuracy' is not one of: loss, perplexity/);
  const l = nodetune('sft', '--model', gguf, '--train', trainFile, '--output', join(tmp, 'never'), '--lora-layers', '3-1');
  assert.match(l.stderr, /'3-1' is an empty range/);
  // --config takes flag names and Hugging Face / PEFT names; unknown keys are named.
  const cfg = join(tmp, 'sft.yaml');
  await writeFile(cfg, `model: ${gguf}\ntrain: ${trainFile}\noutput: ${join(tmp, 'never')}\nlora_r: 8\nper_device_train_batch_size: 2\nlora-dropout: 0.1\nlora_rank: 8\n`);
  const c = nodetune('sft', '--config', cfg);
  assert.equal(c.status, 1);
  assert.match(c.stderr, /--config .*sft\.yaml: unknown key 'lora_rank' \(expected a flag name: .*lora-r.*; or a Hugging Face name: .*per_device_train_batch_size/);
  assert.ok(!existsSync(join(tmp, 'never')));
  // A folder holding a previous run's files (made here, so this test stands alone).
  const out = join(tmp, 'previous-run');
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'training_log.jsonl'), '');
  const again = nodetune('sft', '--model', gguf, '--train', trainFile, '--output', out);
  assert.equal(again.status, 1);
  assert.match(again.stderr, /already holds a previous run .*pass --resume to continue it or --overwrite-output-dir to replace it/);
});

test('sft --precision bf16: the frozen base in bf16 where the CPU has bf16 GEMMs, losses within bf16 tolerance of fp32', { skip: missing }, async () => {
  const run = (precision: string) => nodetune('sft', '--model', gguf, '--train', trainFile, '--output', join(tmp, `run-${precision}`), '--max-steps', '2',
    '--batch-size', '4', '--learning-rate', '1e-3', '--lora-r', '4', '--lora-alpha', '8', '--lora-dropout', '0', '--lora-layers', '28-29',
    '--threads', '2', '--logging-steps', '1', '--report-samples', '0', '--precision', precision);
  const unsupported = bf16Unsupported();
  const bf16 = run('bf16');
  if (unsupported) {
    assert.notEqual(bf16.status, 0);
    assert.ok(bf16.stderr.includes(unsupported), bf16.stderr);
    return;
  }
  assert.equal(bf16.status, 0, bf16.stderr);
  assert.match(bf16.stderr, /on cpu \(bf16 base\); LoRA r 4/);
  const fp32 = run('fp32');
  assert.equal(fp32.status, 0, fp32.stderr);
  const losses = async (precision: string) =>
    (await readFile(join(tmp, `run-${precision}`, 'training_log.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l).loss as number);
  const [a, b] = [await losses('bf16'), await losses('fp32')];
  assert.equal(a.length, 2);
  for (let i = 0; i < 2; i++) assert.ok(Math.abs(a[i] - b[i]) < 1e-2 * b[i], `step ${i + 1}: bf16 loss ${a[i]} vs fp32 ${b[i]}`);
  // An fp32 run resumed in bf16 would not give its losses again: the precision is a resume setting.
  const resumed = nodetune('sft', '--model', gguf, '--train', trainFile, '--output', join(tmp, 'run-fp32'), '--max-steps', '2',
    '--batch-size', '4', '--learning-rate', '1e-3', '--lora-r', '4', '--lora-alpha', '8', '--lora-dropout', '0', '--lora-layers', '28-29',
    '--threads', '2', '--resume', '--precision', 'bf16');
  assert.notEqual(resumed.status, 0);
  assert.match(resumed.stderr, /settings differ from the checkpoint[^]*--precision: checkpoint fp32, now bf16/);
  // Full fine-tuning has no frozen base to hold in bf16: said in the CLI's words, before the model loads.
  const full = nodetune('sft', '--model', gguf, '--train', trainFile, '--output', join(tmp, 'run-full'), '--full', '--precision', 'bf16');
  assert.notEqual(full.status, 0);
  assert.match(full.stderr, /--precision bf16 on the CPU keeps the base frozen in bf16, so it needs LoRA: drop --full, or --precision bf16/);
});
