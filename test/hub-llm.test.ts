/**
 * `pull` of a causal-LM repository against a local fake of the Hugging Face Hub (as in
 * test/hub.test.ts: 127.0.0.1, the Hub's listing and resolve URLs, LFS files redirected with
 * X-Linked-Size / X-Linked-Etag): generation_config.json, special_tokens_map.json, the chat
 * template files and a sharded checkpoint (model.safetensors.index.json and every shard it
 * names) are fetched; LLM.load(repo id) loads the pulled folder and generates what the same
 * model from a local folder generates; an index naming a shard outside the folder is refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pull } from '../src/io/hub.js';
import { readSafetensors, encodeSafetensors } from '../src/io/safetensors.js';
import { LLM } from '../src/llm/llm.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const TINY = join(ROOT, 'test/fixtures/tiny-llama');
const TOKENIZER = join(ROOT, 'test/fixtures/llm-tokenizer/small/gpt-2');
const COMMIT = 'c0ffee0000000000000000000000000000000002';
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gitBlob = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

/** Repos by id → files (name → bytes, LFS or not). */
const repos = new Map<string, Map<string, { data: Buffer; lfs: boolean }>>();
const requested: string[] = [];
let server: Server;
let endpoint = '';
let tmp = '';

function handle(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', endpoint);
  requested.push(decodeURIComponent(url.pathname));
  const cdn = url.pathname.match(/^\/cdn\/([^/]+\/[^/]+)\/(.+)$/);
  const api = url.pathname.match(/^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/);
  const get = url.pathname.match(/^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
  const repo = repos.get((cdn ?? api ?? get)?.[1] ?? '');
  if (!repo) {
    res.writeHead(401, { 'x-error-code': 'RepoNotFound', 'x-error-message': 'Repository not found' });
    return void res.end();
  }
  if (api) {
    const siblings = [...repo].map(([rfilename, f]) => ({
      rfilename,
      size: f.lfs ? 134 : f.data.length,
      blobId: f.lfs ? 'f'.repeat(40) : gitBlob(f.data),
      ...(f.lfs ? { lfs: { sha256: sha256(f.data), size: f.data.length } } : {}),
    }));
    res.writeHead(200, { 'content-type': 'application/json' });
    return void res.end(JSON.stringify({ sha: COMMIT, siblings }));
  }
  const name = decodeURIComponent((cdn ?? get)![cdn ? 2 : 3]);
  const f = repo.get(name);
  if (!f) {
    res.writeHead(404, { 'x-error-code': 'EntryNotFound' });
    return void res.end();
  }
  if (get && f.lfs) {
    res.writeHead(302, { location: `/cdn/${get[1]}/${encodeURIComponent(name)}`, 'x-linked-size': String(f.data.length), 'x-linked-etag': `"${sha256(f.data)}"` });
    return void res.end();
  }
  res.writeHead(200, { 'content-length': String(f.data.length) });
  res.end(f.data);
}

const bytes = (chunks: Uint8Array[]) => Buffer.concat(chunks.map((c) => Buffer.from(c.buffer, c.byteOffset, c.byteLength)));

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-hub-llm-'));
  // The tiny Llama split in two shards, as transformers' save_pretrained(max_shard_size=...) does.
  const { tensors } = await readSafetensors(join(TINY, 'model.safetensors'));
  const names = [...tensors.keys()].sort();
  const half = names.length >> 1;
  const shardFiles = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const weight_map: Record<string, string> = {};
  const files = new Map<string, { data: Buffer; lfs: boolean }>();
  shardFiles.forEach((file, s) => {
    const part = new Map(names.slice(s ? half : 0, s ? undefined : half).map((n) => [n, { dtype: 'F32' as const, shape: tensors.get(n)!.shape, data: tensors.get(n)!.data as Float32Array }]));
    for (const n of part.keys()) weight_map[n] = file;
    files.set(file, { data: bytes(encodeSafetensors(part, { format: 'pt' })), lfs: true });
  });
  files.set('model.safetensors.index.json', { data: Buffer.from(JSON.stringify({ metadata: { total_size: 0 }, weight_map })), lfs: false });
  files.set('config.json', { data: await readFile(join(TINY, 'config.json')), lfs: false });
  files.set('generation_config.json', { data: Buffer.from(JSON.stringify({ eos_token_id: [2, 3], max_new_tokens: 5 })), lfs: false });
  files.set('tokenizer.json', { data: await readFile(join(TOKENIZER, 'tokenizer.json')), lfs: true });
  files.set('tokenizer_config.json', { data: await readFile(join(TOKENIZER, 'tokenizer_config.json')), lfs: false });
  files.set('special_tokens_map.json', { data: Buffer.from('{"eos_token": "<|endoftext|>"}'), lfs: false });
  files.set('chat_template.jinja', { data: Buffer.from('{% for m in messages %}<{{ m.role[0] }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<a>{% endif %}'), lfs: false });
  files.set('additional_chat_templates/tool_use.jinja', { data: Buffer.from('{{ messages | length }}'), lfs: false });
  files.set('README.md', { data: Buffer.from('# not downloaded\n'), lfs: false });
  files.set('pytorch_model.bin', { data: Buffer.from('not downloaded'), lfs: true });
  repos.set('acme/tiny-llm', files);
  // The same repo with an index that points outside the model folder.
  const evil = new Map(files);
  evil.set('model.safetensors.index.json', { data: Buffer.from(JSON.stringify({ weight_map: { 'model.norm.weight': '../../evil.safetensors' } })), lfs: false });
  repos.set('acme/evil-index', evil);
  const nested = new Map(files);
  nested.set('model.safetensors.index.json', { data: Buffer.from(JSON.stringify({ weight_map: { 'model.norm.weight': 'sub/x.safetensors' } })), lfs: false });
  nested.set('sub/x.safetensors', { data: Buffer.from('x'), lfs: false });
  repos.set('acme/nested-index', nested);
  const absent = new Map(files);
  absent.delete('model-00002-of-00002.safetensors');
  repos.set('acme/missing-shard', absent);
  server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

test.after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(tmp, { recursive: true, force: true });
});

const opts = async () => ({ endpoint, cacheDir: await mkdtemp(join(tmp, 'cache-')), offline: false, token: '', maxRetries: 0 });

test('pull of an LLM repo: generation_config, special tokens map, chat templates and every shard of a sharded checkpoint', async () => {
  const res = await pull('acme/tiny-llm', await opts());
  const want = [
    'additional_chat_templates/tool_use.jinja',
    'chat_template.jinja',
    'config.json',
    'generation_config.json',
    'model-00001-of-00002.safetensors',
    'model-00002-of-00002.safetensors',
    'model.safetensors.index.json',
    'special_tokens_map.json',
    'tokenizer.json',
    'tokenizer_config.json',
  ];
  assert.deepEqual([...res.downloaded].sort(), want);
  for (const f of want) assert.ok((await readFile(join(res.folder, f))).equals(repos.get('acme/tiny-llm')!.get(f)!.data), f);
  assert.ok(!existsSync(join(res.folder, 'README.md')) && !existsSync(join(res.folder, 'pytorch_model.bin')));
  assert.deepEqual((await readdir(res.folder)).filter((f) => f.endsWith('.incomplete')), []);
  // Complete: a second pull downloads nothing, and offline the cache serves it.
  assert.deepEqual((await pull('acme/tiny-llm', { ...(await opts()), cacheDir: dirname(dirname(res.folder)) })).downloaded, []);
  assert.equal((await pull('acme/tiny-llm', { ...(await opts()), cacheDir: dirname(dirname(res.folder)), offline: true })).folder, res.folder);
});

test('LLM.load(repo id) pulls the sharded repo and generates what the same model from a local folder generates', async () => {
  const local = await mkdtemp(join(tmp, 'local-'));
  for (const f of ['config.json', 'model.safetensors']) await copyFile(join(TINY, f), join(local, f));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) await copyFile(join(TOKENIZER, f), join(local, f));
  await writeFile(join(local, 'generation_config.json'), JSON.stringify({ eos_token_id: [2, 3], max_new_tokens: 5 }));
  const env = { HF_ENDPOINT: process.env.HF_ENDPOINT, NODETUNE_CACHE: process.env.NODETUNE_CACHE, HF_HUB_OFFLINE: process.env.HF_HUB_OFFLINE };
  process.env.HF_ENDPOINT = endpoint;
  process.env.NODETUNE_CACHE = await mkdtemp(join(tmp, 'env-cache-'));
  delete process.env.HF_HUB_OFFLINE;
  let hub: LLM | undefined, folder: LLM | undefined;
  try {
    hub = await LLM.load('acme/tiny-llm', { threads: 1 });
    folder = await LLM.load(local, { threads: 1 });
    assert.equal(hub.source.path, join(process.env.NODETUNE_CACHE, 'acme--tiny-llm', 'main'));
    assert.deepEqual(hub.tokenizer.eosTokenIds, [2, 3]);
    // generation_config.json's max_new_tokens is the default.
    const a = await hub.generate('xyz');
    const b = await folder.generate('xyz');
    assert.deepEqual(a, b);
    assert.ok(a.tokens.length >= 1 && a.tokens.length <= 5, `${a.tokens}`);
    assert.equal(a.finishReason, a.tokens.length === 5 && ![2, 3].includes(a.tokens[4]) ? 'length' : 'stop');
    // The pulled chat template is the tokenizer's (the tiny model's 256 ids cover these texts' tokens).
    const chat = await hub.generate([{ role: 'user', content: 'q' }], { maxNewTokens: 2 });
    assert.equal(chat.usage.promptTokens, hub.tokenizer.encode('<u>q\n<a>', { addSpecialTokens: false }).length);
  } finally {
    await hub?.dispose();
    await folder?.dispose();
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

test('an index naming a shard outside the folder, in a subfolder, or absent from the repo is refused before any shard is fetched', async () => {
  requested.length = 0;
  await assert.rejects(
    pull('acme/evil-index', await opts()),
    /^Error: acme\/evil-index: model\.safetensors\.index\.json: weight_map names a shard "\.\.\/\.\.\/evil\.safetensors"; expected a plain file name ending in \.safetensors$/,
  );
  await assert.rejects(pull('acme/nested-index', await opts()), /weight_map names a shard "sub\/x\.safetensors"; expected a plain file name/);
  await assert.rejects(pull('acme/missing-shard', await opts()), /^Error: acme\/missing-shard: model\.safetensors\.index\.json names shards the repo lacks: model-00002-of-00002\.safetensors$/);
  assert.ok(!requested.some((p) => p.includes('evil.safetensors') || p.includes('sub/x') || p.includes('model-0000')), requested.join('\n'));
  assert.ok(!existsSync(join(tmp, 'evil.safetensors')));
});
