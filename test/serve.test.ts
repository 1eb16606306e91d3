// The HTTP server on a free loopback port: good requests against
// Classifier.classify, every kind of bad request with its status code and a
// JSON error (the server keeps answering), and a burst of concurrent requests.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { Command, CommanderError } from 'commander';
import { registerServe } from '../src/cli/serve.js';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Classifier, type Prediction } from '../src/classifier.js';
import { loadModelFolder, saveModelFolder } from '../src/io/model-folder.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { exportModelFolder } from '../src/onnx/folder.js';
import { startServer, type RunningServer } from '../src/serve/server.js';
import { BertTokenizer } from '../src/tokenizer/index.js';
import { CLI } from './helpers/tiny-model.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const minilmDir = join(root, '.cache/models/all-MiniLM-L6-v2');
const headDir = join(root, 'test/fixtures/minilm-head');
const texts = (JSON.parse(readFileSync(join(headDir, 'sentences.json'), 'utf8')) as { sentences: Array<{ text: string }> }).sentences
  .map((s) => s.text)
  .slice(0, 24);

const MAX_TEXTS = 8;
const MAX_BODY = 4096;

let tmp: string;
let folder: string;
let server: RunningServer;
let reference: Classifier;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-serve-'));
  folder = join(tmp, 'minilm-head');
  const { config, weights } = await loadModelFolder(minilmDir, { num_labels: 5 });
  for (const [k, t] of (await readSafetensors(join(headDir, 'head.safetensors'))).tensors) weights.set(k, t.data as Float32Array);
  await saveModelFolder(folder, { config, weights, tokenizerFrom: minilmDir });
  await exportModelFolder(folder);
  server = await startServer({ model: folder, port: 0, maxTexts: MAX_TEXTS, maxBodyBytes: MAX_BODY, maxLength: 128 });
  reference = await Classifier.load(folder, { maxLength: 128 });
});
after(async () => {
  await server?.close();
  await reference?.dispose();
  await rm(tmp, { recursive: true, force: true });
});

async function post(body: unknown, path = '/classify'): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(server.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json(), headers: res.headers };
}

function assertSamePredictions(got: Prediction[][], want: Prediction[][]): void {
  assert.equal(got.length, want.length);
  got.forEach((g, i) => {
    assert.deepEqual(g.map((p) => p.label), want[i].map((p) => p.label), `labels of text ${i}`);
    g.forEach((p, k) => assert.ok(Math.abs(p.score - want[i][k].score) < 1e-5, `score of text ${i}`));
  });
}

test('binds to loopback on the chosen free port; GET /health', async () => {
  assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  const res = await fetch(`${server.url}/health`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type')!, /^application\/json/);
  assert.deepEqual(await res.json(), { status: 'ok', model: 'minilm-head', labels: 5, backend: 'onnx' });
});

test('POST /classify with "text" and with "texts" + "top_k" matches Classifier.classify', async () => {
  const one = await post({ text: texts[0] });
  assert.equal(one.status, 200);
  assertSamePredictions(one.json.predictions, [await reference.classify(texts[0])]);
  const many = await post({ texts: texts.slice(0, 5), top_k: 3 });
  assert.equal(many.status, 200);
  assert.ok(many.json.predictions.every((p: Prediction[]) => p.length === 3));
  assertSamePredictions(many.json.predictions, await reference.classify(texts.slice(0, 5), { topK: 3 }));
});

test('bad requests get a JSON error and the right status; the server keeps serving', async () => {
  const cases: Array<[unknown, number, RegExp]> = [
    ['{"text": ', 400, /^invalid JSON/],
    ['[1, 2]', 400, /must be a JSON object/],
    [{}, 400, /exactly one of "text"/],
    [{ text: 'a', texts: ['b'] }, 400, /exactly one of "text"/],
    [{ text: 42 }, 400, /"text" must be a string, got number/],
    [{ texts: 'abc' }, 400, /"texts" must be a list of strings/],
    [{ texts: [] }, 400, /"texts" is empty/],
    [{ texts: ['ok', null] }, 400, /"texts"\[1\] must be a string, got null/],
    [{ texts: Array(MAX_TEXTS + 1).fill('x') }, 400, new RegExp(`has ${MAX_TEXTS + 1} entries; the limit is ${MAX_TEXTS}`)],
    [{ text: 'a', top_k: 0 }, 400, /"top_k" must be a positive integer/],
    [{ text: 'a', top_k: 1.5 }, 400, /"top_k" must be a positive integer/],
    [{ txt: 'a' }, 400, /unknown field "txt"/],
    [{ text: 'x'.repeat(MAX_BODY) }, 413, /exceeds the limit of 4096 bytes/],
  ];
  for (const [body, status, message] of cases) {
    const res = await post(body);
    assert.equal(res.status, status, JSON.stringify(body).slice(0, 60));
    assert.match(res.json.error, message);
  }
  const get = await fetch(`${server.url}/classify`);
  assert.equal(get.status, 405);
  assert.equal(get.headers.get('allow'), 'POST');
  assert.match((await get.json()).error, /GET is not allowed on \/classify/);
  const postHealth = await post({}, '/health');
  assert.equal(postHealth.status, 405);
  const missing = await fetch(`${server.url}/predict`);
  assert.equal(missing.status, 404);
  assert.match((await missing.json()).error, /no route \/predict/);
  assert.equal((await fetch(`${server.url}/health`)).status, 200);
});

test('a chunked body over the limit (no Content-Length) answers 413', async () => {
  const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(`${server.url}/classify`, { method: 'POST', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
      let data = '';
      res.on('data', (c) => (data += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: data }));
    });
    req.on('error', reject);
    req.write('{"text": "');
    for (let i = 0; i < 8; i++) req.write('y'.repeat(1000));
    req.end('"}');
  });
  assert.equal(status, 413);
  assert.match(JSON.parse(body).error, /exceeds the limit/);
  assert.equal((await post({ text: 'still alive' })).status, 200);
});

test('a burst of 50 concurrent requests is answered correctly', async () => {
  const bodies = Array.from({ length: 50 }, (_, i) =>
    i % 2 === 0 ? { text: texts[i % texts.length] } : { texts: [texts[i % texts.length], texts[(i * 5) % texts.length]], top_k: 2 },
  );
  const responses = await Promise.all(bodies.map((b) => post(b)));
  for (const [i, res] of responses.entries()) {
    assert.equal(res.status, 200);
    const b = bodies[i] as { text?: string; texts?: string[]; top_k?: number };
    const want = await reference.classify(b.texts ?? [b.text!], { topK: b.top_k ?? 1 });
    assertSamePredictions(res.json.predictions, want);
  }
});

test('nodetune serve rejects a bad port, backend or limit before loading anything', async () => {
  const parse = (args: string[]) => {
    const program = new Command('nodetune').exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
    registerServe(program);
    return program.parseAsync(['serve', '--model', tmp, ...args], { from: 'user' });
  };
  const fails = (re: RegExp) => (e: unknown) => e instanceof CommanderError && re.test(e.message);
  await assert.rejects(parse(['--port', '70000']), fails(/'70000' is not a TCP port/));
  await assert.rejects(parse(['--backend', 'tpu']), fails(/Allowed choices are onnx, native/));
  await assert.rejects(parse(['--max-texts', '0']), fails(/'0' must be at least 1/));
});

/** Runs `nodetune serve --model <folder> ...args` in-process; it rejects when the server cannot start. */
function cliServe(args: string[]): Promise<Command> {
  const program = new Command('nodetune').exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
  registerServe(program);
  return program.parseAsync(['serve', '--model', folder, '--threads', '1', ...args], { from: 'user' });
}

test('a host or port that cannot be bound is an error naming --host or --port; the running server is unaffected', async () => {
  // No DNS here answers ENOTFOUND, elsewhere a resolver may answer EAI_AGAIN: either way getaddrinfo and --host.
  await assert.rejects(cliServe(['--host', '999.1.1.1', '--port', '0']), (e: Error) => {
    assert.match(e.message, /^--host 999\.1\.1\.1: cannot listen there \(getaddrinfo E[A-Z_]+/);
    return true;
  });
  const port = new URL(server.url).port;
  await assert.rejects(cliServe(['--port', port]), { message: `--port ${port}: cannot listen there (listen EADDRINUSE: another process is listening there)` });
  await assert.rejects(startServer({ classifier: reference, port: Number(port) }), { message: `cannot listen on 127.0.0.1:${port} (listen EADDRINUSE)`, code: 'EADDRINUSE' });
  assert.equal((await post({ text: 'still serving' })).status, 200);
});

test('predict and serve truncate at the same default (max_position_embeddings, at most 512): they agree on a text over 128 tokens', async () => {
  const long = texts.join(' ').replace(/\s+/g, ' '); // one line: predict reads one text per line
  const tokenizer = await BertTokenizer.fromFolder(folder, { maxPositionEmbeddings: 512 });
  const tokens = tokenizer.encode(long, null, { maxLength: 512 }).input_ids.length;
  assert.ok(tokens > 128 && tokens <= 512, `${tokens} tokens`);
  const input = join(tmp, 'long.txt');
  await writeFile(input, `${long}\n`);
  const r = spawnSync(process.execPath, [CLI, 'predict', '--model', folder, '--input', input, '--backend', 'onnx', '--top-k', '5', '--threads', '2'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!r.stderr.includes('warning'), r.stderr);
  const predicted: Prediction[] = JSON.parse(r.stdout).top_k;
  const defaults = await startServer({ model: folder, port: 0, threads: 2 });
  let served: Prediction[][];
  try {
    const res = await fetch(`${defaults.url}/classify`, { method: 'POST', body: JSON.stringify({ text: long, top_k: 5 }) });
    served = ((await res.json()) as { predictions: Prediction[][] }).predictions;
  } finally {
    await defaults.close();
  }
  assertSamePredictions([predicted], served);
  // predict's former default of 128 tokens gives other scores on this text.
  const at128 = await reference.classify(long, { topK: 5 });
  const diff = Math.max(...at128.map((p) => Math.abs(p.score - predicted.find((q) => q.label === p.label)!.score)));
  assert.ok(diff > 1e-3, `128 vs full-length scores differ by only ${diff}`);
});
