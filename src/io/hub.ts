/**
 * Download model folders from the Hugging Face Hub into a local cache, with
 * Node's fetch. Follows the Hub's HTTP interface as huggingface_hub uses it:
 *
 *   GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true
 *       → { sha, siblings: [{ rfilename, size, blobId, lfs?: { sha256, size } }] }
 *   GET {endpoint}/{repo}/resolve/{rev}/{file}
 *       → 200 for regular files; 302 to a CDN for LFS files, with X-Linked-Size
 *         and X-Linked-Etag (the sha256) on the redirect; Range supported.
 *
 * Files go to <cacheDir>/<owner>--<name>/<revision>/ (downloaded to
 * `<file>.incomplete`, resumed with a Range header, checked against the known
 * size and sha256 — or the git blob sha1 for non-LFS files — then renamed into
 * place). A manifest written last marks the folder complete; it is what
 * offline use (HF_HUB_OFFLINE=1, or the Hub unreachable) relies on.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { writeFileAtomic } from './atomic.js';

/** Files a model folder needs, downloaded when the repository has them. */
export const MODEL_FILES = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json'] as const;
/**
 * What a causal LM's folder adds, downloaded when the repository has them: generation defaults
 * (eos_token_id lists, max_new_tokens) and chat templates saved beside tokenizer_config.json
 * (transformers >= 4.43: chat_template.jinja, chat_template.json, additional_chat_templates/*.jinja).
 */
export const LLM_FILES = ['generation_config.json', 'chat_template.jinja', 'chat_template.json'] as const;
const EXTRA_TEMPLATE = /^additional_chat_templates\/[\w-][\w.-]*\.jinja$/;
export const DEFAULT_ENDPOINT = 'https://huggingface.co';
const MANIFEST = '.nodetune-manifest.json';
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

export interface PullOptions {
  /** Branch, tag or commit (default 'main'). */
  revision?: string;
  /** Cache root holding <owner>--<name>/<revision>/ (default $NODETUNE_CACHE, else ~/.cache/nodetune/hub). */
  cacheDir?: string;
  /** Hub URL (default $HF_ENDPOINT, else https://huggingface.co). */
  endpoint?: string;
  /** Access token (default $HF_TOKEN); sent only to the endpoint's origin. */
  token?: string;
  /** Use only the cache (default: $HF_HUB_OFFLINE is 1/true/yes/on). */
  offline?: boolean;
  /** Download attempts per file after the first, each resuming where the last stopped (default 3). */
  maxRetries?: number;
  /** Milliseconds to wait for the repository listing (default 15000). */
  timeoutMs?: number;
  /** Called as bytes arrive; total is undefined when the size is unknown. */
  onProgress?: (file: string, received: number, total: number | undefined) => void;
}

export interface PullResult {
  /** Absolute path of the model folder. */
  folder: string;
  repoId: string;
  revision: string;
  /** Commit sha the files come from (from the Hub listing). */
  commit: string | undefined;
  /** Files present in the folder. */
  files: string[];
  /** Files fetched over the network in this call. */
  downloaded: string[];
  /** Why the cache was used without contacting the Hub; undefined when online. */
  offlineReason: string | undefined;
}

interface Sibling {
  rfilename: string;
  size?: number;
  blobId?: string;
  lfs?: { sha256?: string; oid?: string; size?: number };
}

interface ManifestEntry {
  size: number;
  sha256?: string;
  blobId?: string;
}

interface Manifest {
  repo_id: string;
  revision: string;
  commit?: string;
  endpoint: string;
  files: Record<string, ManifestEntry>;
}

interface Ctx {
  repoId: string;
  revision: string;
  endpoint: string;
  token?: string;
  maxRetries: number;
  onProgress?: PullOptions['onProgress'];
}

function envTrue(v: string | undefined): boolean {
  return ['1', 'true', 'yes', 'on'].includes((v ?? '').trim().toLowerCase());
}

/** Cache root: explicit option, $NODETUNE_CACHE, else ~/.cache/nodetune/hub. */
export function defaultCacheDir(): string {
  return process.env.NODETUNE_CACHE || join(homedir(), '.cache', 'nodetune', 'hub');
}

/** Folder for one repo revision: <cacheDir>/<owner>--<name>/<revision with '/' as '--'>. */
export function repoCacheFolder(cacheDir: string, repoId: string, revision: string): string {
  return resolve(cacheDir, repoId.replace(/\//g, '--'), revision.replace(/\//g, '--'));
}

/** @throws Error when `repoId` is not `name` or `owner/name` of letters, digits, '-', '_', '.'. */
export function validateRepoId(repoId: string): void {
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(repoId) || repoId.includes('--') || repoId.includes('..') || repoId.length > 96) {
    throw new Error(`'${repoId}' is not a valid Hugging Face repo id (expected owner/name, e.g. sentence-transformers/all-MiniLM-L6-v2)`);
  }
}

class HttpError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

/** True for failures to reach the server at all (DNS, refused, reset, timeout) as opposed to HTTP answers. */
function isNetworkError(err: unknown): boolean {
  if (err instanceof HttpError || !(err instanceof Error)) return false;
  return (err.name === 'TypeError' && err.message === 'fetch failed') || err.name === 'TimeoutError' || err.name === 'AbortError' || 'code' in err;
}

function describe(err: unknown): string {
  const e = err as Error & { cause?: Error & { code?: string } };
  return e.cause ? `${e.message}: ${e.cause.code ?? e.cause.message}` : e.message;
}

function authHeaders(url: string, ctx: Ctx): Record<string, string> {
  const h: Record<string, string> = { 'user-agent': 'nodetune' };
  if (ctx.token && new URL(url).origin === new URL(ctx.endpoint).origin) h.authorization = `Bearer ${ctx.token}`;
  return h;
}

function stripEtag(v: string | null): string | undefined {
  return v ? v.replace(/^W\//, '').replace(/"/g, '') : undefined;
}

/** GET following redirects by hand, so the X-Linked-* headers of the Hub's redirect are kept. */
async function getFollowing(url: string, ctx: Ctx, extra: Record<string, string>): Promise<{ res: Response; linkedSize?: number; linkedEtag?: string }> {
  let linkedSize: number | undefined;
  let linkedEtag: string | undefined;
  for (let hop = 0; hop < 10; hop++) {
    const res = await fetch(url, { headers: { ...authHeaders(url, ctx), ...extra }, redirect: 'manual' });
    const size = res.headers.get('x-linked-size');
    if (size) linkedSize = Number(size);
    linkedEtag = stripEtag(res.headers.get('x-linked-etag')) ?? linkedEtag;
    if (!REDIRECTS.has(res.status)) return { res, linkedSize, linkedEtag };
    await res.body?.cancel();
    const loc = res.headers.get('location');
    if (!loc) throw new HttpError(`${url}: redirect without a Location header`, res.status);
    url = new URL(loc, url).href;
  }
  throw new Error(`${url}: too many redirects`);
}

function hubErrorText(res: Response): string {
  const msg = res.headers.get('x-error-message');
  return `HTTP ${res.status}${msg ? `: ${msg}` : ''}`;
}

async function fetchRepoInfo(ctx: Ctx, timeoutMs: number): Promise<{ sha?: string; siblings: Sibling[] }> {
  const url = `${ctx.endpoint}/api/models/${ctx.repoId}/revision/${encodeURIComponent(ctx.revision)}?blobs=true`;
  const res = await fetch(url, { headers: authHeaders(url, ctx), signal: AbortSignal.timeout(timeoutMs) });
  if (res.ok) {
    const body = (await res.json()) as { sha?: string; siblings?: Sibling[] };
    if (!Array.isArray(body.siblings)) throw new HttpError(`${url}: listing has no siblings`, res.status);
    return { sha: body.sha, siblings: body.siblings };
  }
  await res.body?.cancel();
  const code = res.headers.get('x-error-code');
  if (code === 'RevisionNotFound') throw new HttpError(`revision '${ctx.revision}' not found in ${ctx.repoId} at ${ctx.endpoint} (${hubErrorText(res)})`, res.status);
  if (code === 'GatedRepo') throw new HttpError(`${ctx.repoId} is gated: accept its terms on ${ctx.endpoint}/${ctx.repoId} and set HF_TOKEN (${hubErrorText(res)})`, res.status);
  if (res.status === 401 || res.status === 404) {
    throw new HttpError(`repository '${ctx.repoId}' not found at ${ctx.endpoint} (${hubErrorText(res)}); check the id, or set HF_TOKEN for a private repo`, res.status);
  }
  throw new HttpError(`${url}: ${hubErrorText(res)}`, res.status);
}

async function hashFile(path: string, algo: 'sha256' | 'gitblob'): Promise<string> {
  const h = createHash(algo === 'sha256' ? 'sha256' : 'sha1');
  if (algo === 'gitblob') h.update(`blob ${(await stat(path)).size}\0`);
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Check size and hashes of a downloaded file. @throws Error naming the file, expected and actual. */
async function verify(path: string, file: string, want: Partial<ManifestEntry>): Promise<ManifestEntry> {
  const size = (await stat(path)).size;
  if (want.size !== undefined && size !== want.size) throw new Error(`${file}: size mismatch, expected ${want.size} bytes, got ${size}`);
  if (want.sha256) {
    const got = await hashFile(path, 'sha256');
    if (got !== want.sha256) throw new Error(`${file}: sha256 mismatch, expected ${want.sha256}, got ${got}`);
  }
  if (want.blobId) {
    const got = await hashFile(path, 'gitblob');
    if (got !== want.blobId) throw new Error(`${file}: git blob sha1 mismatch, expected ${want.blobId}, got ${got}`);
  }
  return { size, sha256: want.sha256, blobId: want.blobId };
}

async function sizeOf(path: string): Promise<number> {
  return (await stat(path).catch(() => null))?.size ?? 0;
}

/** One download attempt into `partial`, resuming from its current length. */
async function downloadOnce(url: string, partial: string, file: string, want: Partial<ManifestEntry>, ctx: Ctx): Promise<Partial<ManifestEntry>> {
  let start = await sizeOf(partial);
  if (want.size !== undefined && start > want.size) {
    await unlink(partial);
    start = 0;
  }
  if (want.size !== undefined && start === want.size && start > 0) return want;
  const { res, linkedSize, linkedEtag } = await getFollowing(url, ctx, start > 0 ? { range: `bytes=${start}-` } : {});
  const learned: Partial<ManifestEntry> = {
    size: want.size ?? linkedSize,
    sha256: want.sha256 ?? (linkedEtag && /^[0-9a-f]{64}$/.test(linkedEtag) ? linkedEtag : undefined),
    blobId: want.blobId,
  };
  if (res.status === 416) {
    await res.body?.cancel();
    await unlink(partial).catch(() => undefined);
    throw new Error(`${file}: server refused to resume at byte ${start}; restarting`);
  }
  if (res.status === 401 || res.status === 403 || res.status === 404) {
    await res.body?.cancel();
    throw new HttpError(`${file}: ${url} answered ${hubErrorText(res)}`, res.status);
  }
  if (res.status !== 200 && res.status !== 206) {
    await res.body?.cancel();
    throw new Error(`${file}: ${url} answered ${hubErrorText(res)}`);
  }
  let append = res.status === 206;
  if (append && !(res.headers.get('content-range') ?? '').startsWith(`bytes ${start}-`)) {
    await res.body?.cancel();
    throw new Error(`${file}: resume at byte ${start} got Content-Range '${res.headers.get('content-range')}'`);
  }
  if (!append) start = 0; // the server ignored Range: start over
  const length = Number(res.headers.get('content-length') ?? NaN);
  const total = learned.size ?? (Number.isFinite(length) ? start + length : undefined);
  let received = start;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      received += chunk.length;
      ctx.onProgress?.(file, received, total);
      cb(null, chunk);
    },
  });
  if (!res.body) throw new Error(`${file}: empty response body`);
  await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), counter, createWriteStream(partial, { flags: append ? 'a' : 'w' }));
  return learned;
}

/** Download `file` into `dir` (resuming, with retries) and verify it. */
async function downloadFile(dir: string, file: string, sib: Sibling, ctx: Ctx): Promise<ManifestEntry> {
  const target = join(dir, file);
  const partial = `${target}.incomplete`;
  await mkdir(dirname(target), { recursive: true });
  const url = `${ctx.endpoint}/${ctx.repoId}/resolve/${encodeURIComponent(ctx.revision)}/${file.split('/').map(encodeURIComponent).join('/')}`;
  let want: Partial<ManifestEntry> = { size: sib.lfs?.size ?? sib.size, sha256: sib.lfs?.sha256 ?? sib.lfs?.oid, blobId: sib.lfs ? undefined : sib.blobId };
  for (let attempt = 0; ; attempt++) {
    try {
      want = await downloadOnce(url, partial, file, want, ctx);
      break;
    } catch (err) {
      if (err instanceof HttpError || attempt >= ctx.maxRetries) {
        const kept = existsSync(partial) ? `; ${await sizeOf(partial)} bytes kept in ${partial}, run pull again to resume` : '';
        throw new Error(`download of ${file} from ${ctx.repoId} failed after ${attempt + 1} attempt(s): ${describe(err)}${kept}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
    }
  }
  let entry: ManifestEntry;
  try {
    entry = await verify(partial, file, want);
  } catch (err) {
    await unlink(partial).catch(() => undefined); // corrupt: the next pull starts over
    throw err;
  }
  await rename(partial, target);
  return entry;
}

async function readManifest(dir: string): Promise<Manifest | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')) as Manifest;
  } catch {
    return undefined;
  }
}

/** The cached folder when complete. @throws Error saying why the cache was needed and what is missing. */
async function fromCache(dir: string, repoId: string, revision: string, reason: string): Promise<PullResult> {
  const manifest = await readManifest(dir);
  const missing: string[] = [];
  if (!manifest) missing.push(...MODEL_FILES.filter((f) => !existsSync(join(dir, f))));
  else for (const [f, e] of Object.entries(manifest.files)) if ((await sizeOf(join(dir, f))) !== e.size) missing.push(f);
  if (!manifest || missing.length) {
    const what = missing.length ? `missing ${missing.join(', ')}` : 'the download never completed';
    throw new Error(`offline (${reason}) and ${repoId}@${revision} is not fully cached in ${dir}: ${what}`);
  }
  return { folder: dir, repoId, revision, commit: manifest.commit, files: Object.keys(manifest.files), downloaded: [], offlineReason: reason };
}

/** Which listed files to fetch; sharded checkpoints add their index's shards later. */
function chooseFiles(siblings: Sibling[], repoId: string): string[] {
  const names = new Set(siblings.map((s) => s.rfilename));
  if (!names.has('config.json')) throw new Error(`${repoId} has no config.json; is it a transformers model repository?`);
  if (!names.has('model.safetensors') && !names.has('model.safetensors.index.json')) {
    const other = ['pytorch_model.bin', 'tf_model.h5', 'flax_model.msgpack'].filter((f) => names.has(f));
    throw new Error(
      `${repoId} has no model.safetensors${other.length ? ` (only ${other.join(', ')})` : ''}; nodetune reads only safetensors. ` +
        'A converted copy may exist on a pull-request revision (--revision refs/pr/N).',
    );
  }
  const files: string[] = [...MODEL_FILES, ...LLM_FILES].filter((f) => names.has(f));
  files.push(...[...names].filter((f) => EXTRA_TEMPLATE.test(f) && !f.includes('..')).sort());
  if (!names.has('model.safetensors')) files.push('model.safetensors.index.json');
  return files;
}

/**
 * Download (or find in the cache) the files of a Hugging Face model repo:
 * config.json, model.safetensors (or model.safetensors.index.json and every
 * shard its weight_map names), tokenizer.json, tokenizer_config.json, vocab.txt,
 * special_tokens_map.json, and for causal LMs generation_config.json and the
 * chat template files (LLM_FILES, additional_chat_templates/*.jinja) — those the repo has.
 *
 * Environment: HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, NODETUNE_CACHE (options win).
 *
 * @returns the local folder and what was downloaded.
 * @throws Error for an invalid repo id; repository or revision not found
 *   (HTTP 401/404, message says so); a repo without config.json or
 *   safetensors weights; a model.safetensors.index.json that is not JSON, has
 *   no weight_map object, or names a shard that is not a plain .safetensors
 *   file name of the repo; a size or sha256 mismatch (file, expected, actual);
 *   a download that keeps failing (partial data kept for the next call); and,
 *   offline or with the Hub unreachable, a cache that lacks files (listed).
 */
export async function pull(repoId: string, opts: PullOptions = {}): Promise<PullResult> {
  validateRepoId(repoId);
  const revision = opts.revision ?? 'main';
  const ctx: Ctx = {
    repoId,
    revision,
    endpoint: (opts.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, ''),
    token: opts.token ?? (process.env.HF_TOKEN || undefined),
    maxRetries: opts.maxRetries ?? 3,
    onProgress: opts.onProgress,
  };
  const dir = repoCacheFolder(opts.cacheDir ?? defaultCacheDir(), repoId, revision);
  if (opts.offline ?? envTrue(process.env.HF_HUB_OFFLINE)) return fromCache(dir, repoId, revision, 'HF_HUB_OFFLINE is set');
  let info;
  try {
    info = await fetchRepoInfo(ctx, opts.timeoutMs ?? 15000);
  } catch (err) {
    if (isNetworkError(err)) return fromCache(dir, repoId, revision, `cannot reach ${ctx.endpoint}: ${describe(err)}`);
    throw err;
  }
  const bySibling = new Map(info.siblings.map((s) => [s.rfilename, s]));
  const files = chooseFiles(info.siblings, repoId);
  await mkdir(dir, { recursive: true });
  const old = await readManifest(dir);
  await unlink(join(dir, MANIFEST)).catch(() => undefined); // the folder is incomplete until the new manifest lands
  const entries: Record<string, ManifestEntry> = {};
  const downloaded: string[] = [];
  for (let i = 0; i < files.length; i++) {
    const file = files[i];
    const sib = bySibling.get(file)!;
    let entry = await cachedEntry(dir, file, sib, old);
    if (!entry) {
      entry = await downloadFile(dir, file, sib, ctx);
      downloaded.push(file);
    }
    entries[file] = entry;
    if (file === 'model.safetensors.index.json') files.push(...(await shardsOf(join(dir, file), bySibling, repoId)));
  }
  const manifest: Manifest = { repo_id: repoId, revision, commit: info.sha, endpoint: ctx.endpoint, files: entries };
  await writeFileAtomic(join(dir, MANIFEST), JSON.stringify(manifest, null, 2));
  return { folder: dir, repoId, revision, commit: info.sha, files: Object.keys(entries), downloaded, offlineReason: undefined };
}

/** The manifest entry of an already-present file when it matches the listing; undefined → download. */
async function cachedEntry(dir: string, file: string, sib: Sibling, old: Manifest | undefined): Promise<ManifestEntry | undefined> {
  const prev = old?.files[file];
  const size = sib.lfs?.size ?? sib.size;
  const sha256 = sib.lfs?.sha256 ?? sib.lfs?.oid;
  const blobId = sib.lfs ? undefined : sib.blobId;
  if (!prev || !existsSync(join(dir, file)) || (await sizeOf(join(dir, file))) !== prev.size) return undefined;
  if ((size !== undefined && size !== prev.size) || (sha256 && sha256 !== prev.sha256) || (blobId && blobId !== prev.blobId)) return undefined;
  return prev;
}

/**
 * The shard files a model.safetensors.index.json names (transformers' sharded checkpoints).
 * The index is untrusted: each shard must be a plain file name (no folder, no '..', nothing
 * hidden) ending in .safetensors, so nothing is written outside the model folder.
 * @throws Error naming the index and the bad value, or the shards the repo lacks.
 */
async function shardsOf(indexPath: string, siblings: Map<string, Sibling>, repoId: string): Promise<string[]> {
  const where = `${repoId}: model.safetensors.index.json`;
  let index: unknown;
  try {
    index = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (err) {
    throw new Error(`${where} is not valid JSON (${(err as Error).message})`, { cause: err });
  }
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (map === null || typeof map !== 'object' || Array.isArray(map)) throw new Error(`${where}: weight_map must be an object of tensor name → shard file`);
  const shards = [...new Set(Object.values(map as Record<string, unknown>))];
  if (shards.length === 0) throw new Error(`${where}: weight_map names no shards`);
  for (const s of shards) {
    if (typeof s !== 'string' || !/^[\w-][\w.-]*\.safetensors$/.test(s) || s.includes('..')) {
      throw new Error(`${where}: weight_map names a shard ${JSON.stringify(s)}; expected a plain file name ending in .safetensors`);
    }
  }
  const absent = (shards as string[]).filter((s) => !siblings.has(s));
  if (absent.length) throw new Error(`${where} names shards the repo lacks: ${absent.join(', ')}`);
  return shards as string[];
}

/**
 * A local model folder as is, or a Hub repo id pulled into the cache.
 *
 * @throws Error when a path-like argument does not exist (code ENOENT, path = the
 *   argument, like an fs error), or as pull().
 */
export async function resolveModel(idOrFolder: string, opts: PullOptions = {}): Promise<string> {
  const st = await stat(idOrFolder).catch(() => null);
  if (st?.isDirectory()) return resolve(idOrFolder);
  if (st) throw new Error(`${idOrFolder} is a file; expected a model folder or a Hugging Face repo id`);
  if (/^[.~/\\]/.test(idOrFolder) || idOrFolder.split('/').length > 2) {
    // code and path as fs errors carry them, so the CLI can name the flag that held the path
    throw Object.assign(new Error(`model folder ${resolve(idOrFolder)} does not exist`), { code: 'ENOENT', path: idOrFolder });
  }
  return (await pull(idOrFolder, opts)).folder;
}
