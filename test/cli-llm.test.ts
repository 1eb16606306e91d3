// `nodetune generate` and `nodetune chat` as a user runs them (child processes) on the real
// SmolLM2-135M-Instruct GGUF: the printed text equals LLM.generate's in this process, chat keeps
// and resets its history over stdin, an sft run folder loads as its base + adapter, and bad
// flags are named.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../src/llm/llm.js';
import { writeRandomVProjAdapter } from './helpers/random-adapter.js';
import type { ChatMessage } from '../src/chat/template.js';
import { bf16Unsupported } from './helpers/bf16.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = join(root, 'dist/src/cli/main.js');
const gguf = join(root, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
const missing = existsSync(gguf) ? false : `${gguf} is missing: run bash scripts/fetch-llm.sh (setup does)`;

function nodetune(input: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { input, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

let shared: LLM | undefined;
async function llm(): Promise<LLM> {
  shared ??= await LLM.load(gguf, { threads: 2 });
  return shared;
}
const line = (text: string) => (text.endsWith('\n') ? text : `${text}\n`);

test('nodetune generate prints what LLM.generate gives: raw prompt, --stop, and --chat with --system', { skip: missing }, async () => {
  const m = await llm();
  const raw = nodetune('', 'generate', '--model', gguf, '--prompt', 'The capital of France is', '--max-new-tokens', '8', '--threads', '2');
  assert.equal(raw.status, 0, raw.stderr);
  assert.equal(raw.stdout, line((await m.generate('The capital of France is', { maxNewTokens: 8 })).text));
  const stopped = nodetune('', 'generate', '--model', gguf, '--prompt', 'The capital of France is', '--max-new-tokens', '8', '--stop', '.', 'answer', '--threads', '2');
  assert.equal(stopped.stdout, ' Paris\n');
  const messages: ChatMessage[] = [{ role: 'system', content: 'Answer in one word.' }, { role: 'user', content: 'What is the capital of Italy?' }];
  const chat = nodetune('', 'generate', '--model', gguf, '--chat', '--system', 'Answer in one word.', '--prompt', 'What is the capital of Italy?', '--max-new-tokens', '12', '--threads', '2');
  assert.equal(chat.status, 0, chat.stderr);
  assert.equal(chat.stdout, line((await m.generate(messages, { maxNewTokens: 12 })).text));
});

test('nodetune chat over stdin: replies stream, history is kept, /reset clears it, /exit ends', { skip: missing }, async () => {
  const m = await llm();
  const u1 = { role: 'user', content: 'What is the capital of France?' };
  const u2 = { role: 'user', content: 'And of Italy?' };
  const o = { maxNewTokens: 12 };
  const r1 = await m.generate([u1], o);
  const r2 = await m.generate([u1, { role: 'assistant', content: r1.text }, u2], o);
  const r3 = await m.generate([u2], o);
  const res = nodetune(`${u1.content}\n${u2.content}\n/reset\n\n${u2.content}\n/exit\nWhat is 2+2?\n`, 'chat', '--model', gguf, '--max-new-tokens', '12', '--threads', '2', '--verbose');
  assert.equal(res.status, 0, res.stderr);
  assert.equal(res.stdout, [r1, r2, r3].map((r) => line(r.text)).join(''));
  const usage = [...res.stderr.matchAll(/\[(\d+) prompt tokens, (\d+) new, (\w+)\]/g)].map((x) => [Number(x[1]), Number(x[2]), x[3]]);
  assert.deepEqual(usage, [r1, r2, r3].map((r) => [r.usage.promptTokens, r.usage.completionTokens, r.finishReason]));
  assert.match(res.stderr, /\(history cleared\)/);
  // End of input (Ctrl-D) ends the chat after the last reply.
  const eof = nodetune(`${u1.content}\n`, 'chat', '--model', gguf, '--max-new-tokens', '12', '--threads', '2');
  assert.equal(eof.status, 0, eof.stderr);
  assert.equal(eof.stdout, line(r1.text));
});

test('generate --model <sft run folder> is its base with the adapter on it (as --model <base> --lora <run>); a base that cannot load is named', { skip: missing }, async () => {
  const config = (await llm()).config;
  const run = await mkdtemp(join(tmpdir(), 'nodetune-generate-run-'));
  const orphan = await mkdtemp(join(tmpdir(), 'nodetune-generate-orphan-'));
  try {
    // A run folder as `nodetune sft` leaves it: the adapter, its base named by base_model_name_or_path.
    await writeRandomVProjAdapter(run, config, gguf, 777);
    const prompt = ['--prompt', 'The capital of France is', '--max-new-tokens', '8', '--threads', '2'];
    const viaRun = nodetune('', 'generate', '--model', run, ...prompt);
    assert.equal(viaRun.status, 0, viaRun.stderr);
    const viaLora = nodetune('', 'generate', '--model', gguf, '--lora', run, ...prompt);
    assert.equal(viaRun.stdout, viaLora.stdout);
    const plain = nodetune('', 'generate', '--model', gguf, ...prompt);
    assert.notEqual(viaRun.stdout, plain.stdout, 'the adapter changes the greedy answer');
    const missingBase = join(orphan, 'no-such-base');
    await writeRandomVProjAdapter(orphan, config, missingBase, 777);
    const bad = nodetune('', 'generate', '--model', orphan, ...prompt);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, new RegExp(`${orphan}: cannot load its base model ${missingBase} \\(adapter_config\\.json base_model_name_or_path\\)`));
  } finally {
    await rm(run, { recursive: true, force: true });
    await rm(orphan, { recursive: true, force: true });
  }
});

test('generate/chat flag errors name the flag; --help lists both commands', { skip: missing }, () => {
  const bad = (args: string[], re: RegExp) => {
    const r = nodetune('', ...args);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
  };
  bad(['generate', '--model', 'no/such/model.gguf', '--prompt', 'x'], /--model no\/such\/model\.gguf does not exist/);
  bad(['generate', '--model', gguf], /missing required option --prompt/);
  bad(['generate', '--prompt', 'x'], /missing required option --model/);
  bad(['generate', '--model', gguf, '--prompt', 'x', '--top-p', '2'], /option '--top-p <p>' argument '2' is invalid\. '2' must be in \(0, 1\]/);
  bad(['generate', '--model', gguf, '--prompt', 'x', '--max-new-tokens', '0'], /option '--max-new-tokens <n>' argument '0' is invalid/);
  bad(['generate', '--model', gguf, '--prompt', 'x', '--system', 'y'], /--system needs --chat/);
  bad(['generate', '--model', gguf, '--prompt', 'x', '--max-new-tokens', '9000', '--threads', '2'], /^nodetune: --max-new-tokens 9000 leaves no room for a prompt within the model's max_position_embeddings 8192 \(at most 8191\)$/m);
  bad(['generate', '--model', gguf, '--prompt', 'x y z '.repeat(3000), '--max-new-tokens', '8000', '--threads', '2'], /--prompt: the prompt is \d+ tokens; with --max-new-tokens 8000 that exceeds the model's max_position_embeddings 8192/);
  bad(['chat', '--model', gguf, '--temperature', 'hot'], /option '--temperature <t>' argument 'hot' is invalid/);
  const help = nodetune('', '--help');
  assert.match(help.stdout, /generate \[options\]\s+generate text with a causal LM/);
  assert.match(help.stdout, /chat \[options\]\s+chat with a causal LM in the terminal/);
});

test('nodetune bench generate runs both sides at two batch sizes (tiny N) and prints the report as JSON', { skip: missing }, () => {
  const r = nodetune('', 'bench', 'generate', '--new-tokens', '2', '--batch', '1,2', '--threads', '2', '--json');
  assert.equal(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout) as { suite: string; rows: Array<Record<string, number | string | null>>; context: Record<string, unknown> };
  assert.equal(report.suite, 'generate');
  assert.deepEqual(report.rows.map((x) => x.B), [1, 2]);
  for (const row of report.rows) {
    for (const k of ['prefill', 'decode', 'ms_step']) assert.ok((row[k] as number) > 0, `${k}: ${row[k]}`);
    // llama.cpp may be unavailable on a machine without its prebuilt binary: then the row says why.
    if (row.cpp_status === null) assert.ok((row.cpp_decode as number) > 0 && (row.same as number) >= 1, JSON.stringify(row));
    else assert.equal(typeof row.cpp_status, 'string');
  }
  const bad = nodetune('', 'bench', 'generate', '--new-tokens', '1', '--no-llama-cpp');
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /--new-tokens must be an integer >= 2/);
  const q8 = nodetune('', 'bench', 'generate', '--new-tokens', '2', '--batch', '1', '--threads', '2', '--no-llama-cpp', '--precision', 'q8_0', '--json');
  assert.equal(q8.status, 0, q8.stderr);
  const q8report = JSON.parse(q8.stdout) as { rows: Array<Record<string, number>>; context: Record<string, unknown> };
  assert.ok(q8report.rows[0].decode > 0);
  assert.match(JSON.stringify(q8report.context), /Q8_0 weights/);
});

test.after(async () => {
  await shared?.dispose();
});

test('generate --precision bf16 reads the weights in bf16 (LLM.load precision) where the CPU can, and says why where it cannot', { skip: missing }, async () => {
  const unsupported = bf16Unsupported();
  const r = nodetune('', 'generate', '--model', gguf, '--prompt', 'The capital of France is', '--max-new-tokens', '8', '--stop', '.', '--threads', '2', '--precision', 'bf16');
  if (unsupported) {
    assert.notEqual(r.status, 0);
    assert.ok(r.stderr.includes(unsupported), r.stderr);
    return;
  }
  assert.equal(r.status, 0, r.stderr);
  const m = await LLM.load(gguf, { threads: 2, precision: 'bf16' });
  assert.equal(r.stdout, line((await m.generate('The capital of France is', { maxNewTokens: 8, stop: ['.'] })).text));
  assert.equal(r.stdout, ' Paris\n', 'the fp32 answer too');
  await m.dispose();
  const e = nodetune('', 'eval', '--model', join(root, '.cache/models/all-MiniLM-L6-v2'), '--data', 'x.csv', '--precision', 'bf16');
  assert.match(e.stderr, /--precision is for a causal LM; the classifier .* is evaluated in fp32/);
});

test('generate --precision q8_0 reads Q8_0 weights (LLM.load precision); training and the classifier refuse it', { skip: missing }, async () => {
  const r = nodetune('', 'generate', '--model', gguf, '--prompt', 'The capital of France is', '--max-new-tokens', '8', '--stop', '.', '--threads', '2', '--precision', 'q8_0');
  assert.equal(r.status, 0, r.stderr);
  const m = await LLM.load(gguf, { threads: 2, precision: 'q8_0' });
  assert.equal(r.stdout, line((await m.generate('The capital of France is', { maxNewTokens: 8, stop: ['.'] })).text));
  assert.equal(r.stdout, ' Paris\n', 'the fp32 answer too');
  await m.dispose();
  const e = nodetune('', 'eval', '--model', join(root, '.cache/models/all-MiniLM-L6-v2'), '--data', 'x.csv', '--precision', 'q8_0');
  assert.match(e.stderr, /--precision is for a causal LM; the classifier .* is evaluated in fp32/);
  const s = nodetune('', 'sft', '--model', gguf, '--data', 'x.jsonl', '--precision', 'q8_0');
  assert.match(s.stderr, /option '--precision <p>' argument 'q8_0' is invalid. Allowed choices are fp32, bf16/);
});

test('generate --device cuda reaches the engine factory: no CUDA backend, or no GPU, is one clear line', { skip: missing }, () => {
  const r = nodetune('', 'generate', '--model', gguf, '--prompt', 'hi', '--max-new-tokens', '2', '--device', 'cuda', '--precision', 'bf16');
  if (r.status === 0) return;  // a CUDA build on a machine with a GPU
  assert.match(r.stderr, /^nodetune: (device 'cuda' was requested, but this build of nodetune has no CUDA backend|CUDA device 0 requested, but )/);
  const bad = nodetune('', 'generate', '--model', gguf, '--prompt', 'hi', '--device', 'tpu');
  assert.match(bad.stderr, /unknown device 'tpu': expected 'cpu', 'cuda' or 'cuda:N'/);
});
