/**
 * `pull` against a local fake of the Hugging Face Hub (127.0.0.1, random
 * ports; nothing touches the network). The fake answers like the Hub:
 * /api/models/{repo}/revision/{rev}?blobs=true listings with lfs {sha256, size},
 * /{repo}/resolve/{rev}/{file} with 200 + ETag for regular files and a 302 to a
 * separate "CDN" origin with X-Linked-Size / X-Linked-Etag for LFS files,
 * Range requests, and X-Error-Code/X-Error-Message on errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { loadModelFolder, pull, resolveModel } from '../src/io/index.js';
import { registerPull } from '../src/cli/pull.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const TINY = join(ROOT, 'test/fixtures/tiny-bert');
const COMMIT = 'c0ffee0000000000000000000000000000000001';

interface RepoFile {
  data: Buffer;
  lfs: boolean;
}

interface Logged {
  origin: 'hub' | 'cdn';
  path: string;
  range?: string;
  auth?: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gitBlob = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

/** The fake Hub: one repo `acme/tiny-bert` at revision main, plus switches for faults. */
class FakeHub {
  readonly files = new Map<string, RepoFile>();
  readonly log: Logged[] = [];
  /** file → byte count after which the next full (non-Range) CDN response is cut. */
  readonly cutOnce = new Map<string, number>();
  /** Files whose CDN bytes are corrupted (same length, one byte flipped). */
  readonly corrupt = new Set<string>();
  private hub!: Server;
  private cdn!: Server;
  endpoint = '';
  cdnOrigin = '';

  async start(): Promise<void> {
    this.hub = createServer((req, res) => this.handleHub(req, res));
    this.cdn = createServer((req, res) => this.handleCdn(req, res));
    for (const s of [this.hub, this.cdn]) await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    this.endpoint = `http://127.0.0.1:${(this.hub.address() as AddressInfo).port}`;
    this.cdnOrigin = `http://127.0.0.1:${(this.cdn.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const s of [this.hub, this.cdn]) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  }

  private record(origin: Logged['origin'], req: IncomingMessage): void {
    this.log.push({ origin, path: req.url ?? '', range: req.headers.range, auth: req.headers.authorization });
  }

  private error(res: ServerResponse, status: number, code: string, message: string): void {
    res.writeHead(status, { 'x-error-code': code, 'x-error-message': message, 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: message }));
  }

  private handleHub(req: IncomingMessage, res: ServerResponse): void {
    this.record('hub', req);
    const url = new URL(req.url ?? '/', this.endpoint);
    const api = url.pathname.match(/^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/);
    const resolveM = url.pathname.match(/^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
    const [repo, rev] = api ? [api[1], decodeURIComponent(api[2])] : resolveM ? [resolveM[1], decodeURIComponent(resolveM[2])] : ['', ''];
    if (repo !== 'acme/tiny-bert') return this.error(res, 401, 'RepoNotFound', 'Repository not found');
    if (rev !== 'main' && rev !== COMMIT) return this.error(res, 404, 'RevisionNotFound', `Invalid rev id: ${rev}`);
    if (api) {
      const siblings = [...this.files].map(([name, f]) => ({
        rfilename: name,
        size: f.lfs ? 134 : f.data.length,
        blobId: f.lfs ? 'f'.repeat(40) : gitBlob(f.data),
        ...(f.lfs ? { lfs: { sha256: sha256(f.data), size: f.data.length, pointerSize: 134 } } : {}),
      }));
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ id: repo, sha: COMMIT, siblings }));
    }
    const name = decodeURIComponent(resolveM![3]);
    const f = this.files.get(name);
    if (!f) return this.error(res, 404, 'EntryNotFound', `${name} does not exist on "${rev}"`);
    if (f.lfs) {
      res.writeHead(302, {
        location: `${this.cdnOrigin}/repos/${sha256(f.data)}?name=${encodeURIComponent(name)}`,
        'x-linked-size': String(f.data.length),
        'x-linked-etag': `"${sha256(f.data)}"`,
        'x-repo-commit': COMMIT,
        etag: `"${sha256(f.data)}"`,
      });
      return void res.end();
    }
    this.send(req, res, f.data, { etag: `"${gitBlob(f.data)}"`, 'x-repo-commit': COMMIT });
  }

  private handleCdn(req: IncomingMessage, res: ServerResponse): void {
    this.record('cdn', req);
    const name = new URL(req.url ?? '/', this.cdnOrigin).searchParams.get('name') ?? '';
    const f = this.files.get(name);
    if (!f) return this.error(res, 404, 'NotFound', 'no such object');
    let data = f.data;
    if (this.corrupt.has(name)) {
      data = Buffer.from(data);
      data[data.length >> 1] ^= 0xff;
    }
    const cut = this.cutOnce.get(name);
    if (cut !== undefined && !req.headers.range) {
      this.cutOnce.delete(name);
      res.writeHead(200, { 'content-length': String(data.length), 'accept-ranges': 'bytes' });
      res.write(data.subarray(0, cut), () => setTimeout(() => res.destroy(), 30));
      return;
    }
    this.send(req, res, data, {});
  }

  /** 200, or 206 for `Range: bytes=N-`, as the Hub and its CDN do. */
  private send(req: IncomingMessage, res: ServerResponse, data: Buffer, headers: Record<string, string>): void {
    const m = req.headers.range?.match(/^bytes=(\d+)-$/);
    if (m) {
      const start = Number(m[1]);
      if (start >= data.length) {
        res.writeHead(416, { 'content-range': `bytes */${data.length}` });
        return void res.end();
      }
      res.writeHead(206, { ...headers, 'content-range': `bytes ${start}-${data.length - 1}/${data.length}`, 'content-length': String(data.length - start) });
      return void res.end(data.subarray(start));
    }
    res.writeHead(200, { ...headers, 'content-length': String(data.length), 'accept-ranges': 'bytes' });
    res.end(data);
  }
}

let hub: FakeHub;
let tmp = '';

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-hub-'));
  hub = new FakeHub();
  const vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', ...Array.from({ length: 95 }, (_, i) => `w${i}`)].join('\n') + '\n';
  hub.files.set('config.json', { data: await readFile(join(TINY, 'config.json')), lfs: false });
  hub.files.set('model.safetensors', { data: await readFile(join(TINY, 'model.safetensors')), lfs: true });
  hub.files.set('vocab.txt', { data: Buffer.from(vocab), lfs: false });
  hub.files.set('tokenizer_config.json', { data: Buffer.from('{"do_lower_case": true, "model_max_length": 64}'), lfs: false });
  hub.files.set('README.md', { data: Buffer.from('# not downloaded\n'), lfs: false });
  await hub.start();
});

test.after(async () => {
  await hub.stop();
  await rm(tmp, { recursive: true, force: true });
});

/** An http endpoint on a port nothing listens on (bound, then closed): connections are refused. */
async function deadEndpoint(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return `http://127.0.0.1:${port}`;
}

/** Options for a pull into a fresh cache folder (explicit, so HF_* variables of the machine do not leak in). */
async function freshOpts(extra: Record<string, unknown> = {}) {
  return { endpoint: hub.endpoint, cacheDir: await mkdtemp(join(tmp, 'cache-')), offline: false, token: '', maxRetries: 3, ...extra };
}

async function assertSameFiles(folder: string): Promise<void> {
  for (const name of ['config.json', 'model.safetensors', 'vocab.txt', 'tokenizer_config.json']) {
    assert.ok((await readFile(join(folder, name))).equals(hub.files.get(name)!.data), name);
  }
}

test('full download: files land in <cache>/<owner>--<name>/<revision>/, verified, and load as a model', async () => {
  const opts = await freshOpts({ token: 'hf_secret' });
  hub.log.length = 0;
  const res = await pull('acme/tiny-bert', opts);
  assert.equal(res.folder, join(opts.cacheDir, 'acme--tiny-bert', 'main'));
  assert.equal(res.commit, COMMIT);
  assert.deepEqual(res.downloaded.sort(), ['config.json', 'model.safetensors', 'tokenizer_config.json', 'vocab.txt']);
  await assertSameFiles(res.folder);
  assert.ok(!(await readdir(res.folder)).some((f) => f.endsWith('.incomplete') || f === 'README.md'));
  // The token goes to the Hub, never to the CDN the LFS redirect points at.
  assert.ok(hub.log.filter((l) => l.origin === 'hub').every((l) => l.auth === 'Bearer hf_secret'));
  assert.ok(hub.log.some((l) => l.origin === 'cdn') && hub.log.filter((l) => l.origin === 'cdn').every((l) => l.auth === undefined));
  const m = await loadModelFolder(res.folder);
  assert.deepEqual(m.newlyInitialized, []);
  // A second pull only asks for the listing.
  hub.log.length = 0;
  const again = await pull('acme/tiny-bert', opts);
  assert.deepEqual(again.downloaded, []);
  assert.deepEqual(hub.log.map((l) => l.path.split('?')[0]), ['/api/models/acme/tiny-bert/revision/main']);
});

test('a connection cut mid-file is resumed with a Range request', async () => {
  const size = hub.files.get('model.safetensors')!.data.length;
  hub.cutOnce.set('model.safetensors', size >> 1);
  hub.log.length = 0;
  const res = await pull('acme/tiny-bert', await freshOpts());
  await assertSameFiles(res.folder);
  const cdn = hub.log.filter((l) => l.origin === 'cdn');
  assert.equal(cdn.length, 2);
  assert.equal(cdn[0].range, undefined);
  const start = Number(cdn[1].range?.match(/^bytes=(\d+)-$/)?.[1]);
  assert.ok(start > 0 && start <= size >> 1, `resumed at ${cdn[1].range}`);
});

test('an interrupted pull keeps its partial file and the next pull resumes it', async () => {
  const opts = await freshOpts({ maxRetries: 0 });
  const size = hub.files.get('model.safetensors')!.data.length;
  hub.cutOnce.set('model.safetensors', size >> 2);
  await assert.rejects(pull('acme/tiny-bert', opts), /download of model\.safetensors from acme\/tiny-bert failed after 1 attempt\(s\): .*bytes kept in .*model\.safetensors\.incomplete, run pull again to resume/);
  const folder = join(opts.cacheDir, 'acme--tiny-bert', 'main');
  assert.ok(existsSync(join(folder, 'model.safetensors.incomplete')));
  assert.ok(!existsSync(join(folder, 'model.safetensors')));
  await assert.rejects(pull('acme/tiny-bert', { ...opts, offline: true }), /not fully cached/);
  hub.log.length = 0;
  await pull('acme/tiny-bert', opts);
  await assertSameFiles(folder);
  assert.match(hub.log.find((l) => l.origin === 'cdn')?.range ?? '', /^bytes=[1-9]\d*-$/);
});

test('sha256 mismatch is an error naming the file, expected and actual; nothing corrupt is kept', async () => {
  const opts = await freshOpts();
  hub.corrupt.add('model.safetensors');
  try {
    const good = hub.files.get('model.safetensors')!.data;
    const bad = Buffer.from(good);
    bad[bad.length >> 1] ^= 0xff;
    await assert.rejects(pull('acme/tiny-bert', opts), new RegExp(`model\\.safetensors: sha256 mismatch, expected ${sha256(good)}, got ${sha256(bad)}`));
    const folder = join(opts.cacheDir, 'acme--tiny-bert', 'main');
    assert.ok(!existsSync(join(folder, 'model.safetensors')) && !existsSync(join(folder, 'model.safetensors.incomplete')));
  } finally {
    hub.corrupt.delete('model.safetensors');
  }
});

test('offline: a complete cache is used without any request (HF_HUB_OFFLINE or Hub unreachable)', async () => {
  const opts = await freshOpts();
  const online = await pull('acme/tiny-bert', opts);
  hub.log.length = 0;
  const saved = process.env.HF_HUB_OFFLINE;
  process.env.HF_HUB_OFFLINE = '1';
  try {
    const res = await pull('acme/tiny-bert', { ...opts, offline: undefined });
    assert.equal(res.folder, online.folder);
    assert.equal(res.offlineReason, 'HF_HUB_OFFLINE is set');
    assert.equal(res.commit, COMMIT);
  } finally {
    if (saved === undefined) delete process.env.HF_HUB_OFFLINE;
    else process.env.HF_HUB_OFFLINE = saved;
  }
  assert.equal(hub.log.length, 0);
  const dead = await deadEndpoint();
  const res = await pull('acme/tiny-bert', { ...opts, endpoint: dead });
  assert.equal(res.offlineReason, `cannot reach ${dead}: fetch failed: ECONNREFUSED`);
  await assertSameFiles(res.folder);
});

test('offline and not cached: the error says offline and what is missing', async () => {
  const opts = await freshOpts({ offline: true });
  await assert.rejects(
    pull('acme/other', opts),
    new RegExp(`^Error: offline \\(HF_HUB_OFFLINE is set\\) and acme/other@main is not fully cached in ${join(opts.cacheDir, 'acme--other', 'main')}: missing config\\.json, model\\.safetensors, tokenizer\\.json, tokenizer_config\\.json, vocab\\.txt, special_tokens_map\\.json$`),
  );
  const dead = await deadEndpoint();
  await assert.rejects(pull('acme/other', { ...opts, offline: false, endpoint: dead }), (err: Error) =>
    err.message.startsWith(`offline (cannot reach ${dead}: fetch failed: ECONNREFUSED) and acme/other@main is not fully cached`),
  );
});

test('unknown repo and unknown revision are clear errors', async () => {
  await assert.rejects(
    pull('acme/missing', await freshOpts()),
    new RegExp(`^Error: repository 'acme/missing' not found at ${hub.endpoint} \\(HTTP 401: Repository not found\\); check the id, or set HF_TOKEN for a private repo$`),
  );
  await assert.rejects(pull('acme/tiny-bert', await freshOpts({ revision: 'v9' })), /^Error: revision 'v9' not found in acme\/tiny-bert at .* \(HTTP 404: Invalid rev id: v9\)$/);
  await assert.rejects(pull('not a repo', await freshOpts()), /'not a repo' is not a valid Hugging Face repo id/);
});

test('resolveModel: a folder is used as is, a repo id is pulled, a missing path is an error', async () => {
  assert.equal(await resolveModel(TINY), TINY);
  const opts = await freshOpts();
  assert.equal(await resolveModel('acme/tiny-bert', opts), join(opts.cacheDir, 'acme--tiny-bert', 'main'));
  await assert.rejects(resolveModel('./no/such/folder', opts), /model folder .*no\/such\/folder does not exist/);
});

test('nodetune pull prints the folder and honours --revision and --cache-dir', async () => {
  const cacheDir = await mkdtemp(join(tmp, 'cli-'));
  const program = new Command('nodetune').exitOverride();
  registerPull(program);
  const env = { HF_ENDPOINT: process.env.HF_ENDPOINT, HF_HUB_OFFLINE: process.env.HF_HUB_OFFLINE };
  process.env.HF_ENDPOINT = hub.endpoint;
  delete process.env.HF_HUB_OFFLINE;
  const out: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  const writeErr = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((s: string) => (out.push(String(s)), true)) as typeof process.stdout.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  try {
    await program.parseAsync(['node', 'nodetune', 'pull', 'acme/tiny-bert', '--revision', COMMIT, '--cache-dir', cacheDir]);
  } finally {
    process.stdout.write = write;
    process.stderr.write = writeErr;
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  const folder = join(cacheDir, 'acme--tiny-bert', COMMIT);
  assert.deepEqual(out, [`${folder}\n`]);
  await assertSameFiles(folder);
});
