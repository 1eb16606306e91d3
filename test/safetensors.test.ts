/**
 * safetensors reader/writer: malformed files are rejected with messages that
 * name the file and the fault; dtype decoding follows IEEE 754 binary16 and
 * bfloat16 bit layouts; files written by the Python safetensors library
 * (the real MiniLM checkpoint, the tiny-bert fixture) read back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, writeFileAtomic, writeSafetensors } from '../src/io/index.js';
import { parameterShapes, BERT_DEFAULTS } from '../src/config.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MINILM = join(ROOT, '.cache/models/all-MiniLM-L6-v2');

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nodetune-st-'));
});
test.after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A safetensors file from a header (object or raw JSON text) and data bytes. */
function build(header: unknown, data: number[] | Buffer = []): Buffer {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, Buffer.from(data)]);
}

async function put(name: string, bytes: Buffer | string): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, bytes);
  return p;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

async function rejectsWith(path: string, pattern: string): Promise<void> {
  await assert.rejects(readSafetensors(path), (err: Error) => {
    assert.match(err.message, new RegExp(escape(path)), 'message names the file');
    assert.match(err.message, new RegExp(pattern));
    return true;
  });
}

test('Git LFS pointer file is recognised and the fix named', async () => {
  const p = await put('lfs.safetensors', 'version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2140\nsize 90868376\n');
  await rejectsWith(p, 'is a Git LFS pointer file, not the weights; run `git lfs pull`');
});

test('zip archive (PyTorch checkpoint) is recognised', async () => {
  const p = await put('zip.safetensors', Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x14, 0, 0, 0, 8, 0, 0, 0]));
  await rejectsWith(p, 'looks like a zip archive \\(e.g. a PyTorch .bin/.pt checkpoint\\), not safetensors');
});

test('header length over 100,000,000 and past the end of the file', async () => {
  const big = Buffer.alloc(16);
  big.writeBigUInt64LE(100_000_001n);
  await rejectsWith(await put('big.safetensors', big), 'header length 100000001 exceeds the limit of 100000000 bytes');
  const past = Buffer.alloc(40);
  past.writeBigUInt64LE(1000n);
  await rejectsWith(await put('past.safetensors', past), 'header length 1000 runs past the end of the file \\(40 bytes\\)');
  await rejectsWith(await put('short.safetensors', Buffer.from([1, 2, 3])), 'is 3 bytes, too short for the 8-byte header length');
});

test('invalid JSON header', async () => {
  await rejectsWith(await put('json.safetensors', build('{"w": {"dtype": "F32",')), 'header is not valid JSON');
  await rejectsWith(await put('array.safetensors', build('[1, 2]')), 'header JSON must be an object');
});

test('offsets not contiguous from 0 name the tensor and the expected start', async () => {
  const h = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [12, 20] } };
  await rejectsWith(await put('gap.safetensors', build(h, new Array(20).fill(0))), "tensor 'b' data_offsets start at 12, expected 8");
  const h2 = { a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } };
  await rejectsWith(await put('nozero.safetensors', build(h2, new Array(8).fill(0))), "tensor 'a' data_offsets start at 4, expected 0");
});

test('byte count disagreeing with shape x dtype names tensor, shape, dtype and both counts', async () => {
  const h = { w: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 20] } };
  await rejectsWith(
    await put('count.safetensors', build(h, new Array(20).fill(0))),
    "tensor 'w' with shape \\[2, 3\\] and dtype F32 needs 24 bytes, but data_offsets \\[0, 20\\] span 20 bytes",
  );
});

test('file not ending at the last offset', async () => {
  const h = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  await rejectsWith(await put('tail.safetensors', build(h, new Array(12).fill(0))), 'tensors end at byte 8 of the data section, but the file has 12 data bytes');
});

test('non-string __metadata__ value and unknown dtype', async () => {
  const h = { __metadata__: { format: 'pt', epoch: 3 }, a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } };
  await rejectsWith(await put('meta.safetensors', build(h, [0, 0, 0, 0])), "__metadata__ value for 'epoch' must be a string, got 3");
  const h2 = { a: { dtype: 'F8_E4M3', shape: [4], data_offsets: [0, 4] } };
  await rejectsWith(await put('dtype.safetensors', build(h2, [0, 0, 0, 0])), "tensor 'a' has unsupported dtype 'F8_E4M3' \\(supported: F32, F16, BF16, F64, I64, I32\\)");
});

test('BF16 and F16 decode by their bit layouts, including subnormal, inf and nan', async () => {
  const bf = [0x80, 0x3f, 0x00, 0xc0, 0x80, 0x7f, 0x80, 0xff, 0xc0, 0x7f]; // 1, -2, +inf, -inf, nan
  const f16 = [0xff, 0x7b, 0x01, 0x00, 0x00, 0x3c, 0x00, 0xfc, 0x00, 0x7e, 0x00, 0x80, 0x00, 0x04]; // 65504, 2^-24, 1, -inf, nan, -0, 2^-14
  const h = {
    bf: { dtype: 'BF16', shape: [5], data_offsets: [0, 10] },
    h: { dtype: 'F16', shape: [7], data_offsets: [10, 24] },
  };
  const { tensors } = await readSafetensors(await put('half.safetensors', build(h, [...bf, ...f16])));
  const b = tensors.get('bf')!;
  assert.equal(b.dtype, 'BF16');
  assert.deepEqual(Array.from(b.data as Float32Array), [1, -2, Infinity, -Infinity, NaN]);
  const f = tensors.get('h')!;
  assert.equal(f.dtype, 'F16');
  assert.ok(f.data instanceof Float32Array);
  assert.deepEqual(Array.from(f.data), [65504, Math.fround(5.960464477539063e-8), 1, -Infinity, NaN, -0, 2 ** -14]);
});

test('F64 narrows to float32; I64 and I32 keep integer arrays; unaligned data is fine', async () => {
  const f64 = Buffer.alloc(16);
  f64.writeDoubleLE(0.1, 0);
  f64.writeDoubleLE(-1e300, 8);
  const i64 = Buffer.alloc(16);
  i64.writeBigInt64LE(-5n, 0);
  i64.writeBigInt64LE(2n ** 40n, 8);
  const i32 = Buffer.alloc(4);
  i32.writeInt32LE(-7);
  const h = {
    __metadata__: { note: 'x' }, // odd header length: tensor data starts unaligned
    d: { dtype: 'F64', shape: [2], data_offsets: [0, 16] },
    l: { dtype: 'I64', shape: [2, 1], data_offsets: [16, 32] },
    i: { dtype: 'I32', shape: [1], data_offsets: [32, 36] },
  };
  const { tensors, metadata } = await readSafetensors(await put('ints.safetensors', build(h, Buffer.concat([f64, i64, i32]))));
  assert.deepEqual(metadata, { note: 'x' });
  assert.deepEqual(Array.from(tensors.get('d')!.data as Float32Array), [Math.fround(0.1), -Infinity]);
  assert.equal(tensors.get('d')!.dtype, 'F64');
  assert.deepEqual(tensors.get('l')!.data, BigInt64Array.from([-5n, 2n ** 40n]));
  assert.deepEqual(tensors.get('l')!.shape, [2, 1]);
  assert.deepEqual(tensors.get('i')!.data, Int32Array.from([-7]));
});

test('round trip write → read is identical; header padded to 8 bytes; zero-size tensors', async () => {
  const p = join(dir, 'rt.safetensors');
  const w = Float32Array.from({ length: 12 }, (_, i) => Math.fround(Math.sin(i) * 1e-3));
  const tensors = new Map([
    ['w', { shape: [3, 4], data: w }],
    ['empty', { shape: [0, 4], data: new Float32Array(0) }],
    ['scalar', { shape: [], data: Float32Array.from([3.5]) }],
    ['ids', { shape: [3], data: BigInt64Array.from([0n, 1n, -2n]) }],
    ['mask', { shape: [2], data: Int32Array.from([1, 0]) }],
  ]);
  await writeSafetensors(p, tensors, { format: 'pt' });
  const bytes = await readFile(p);
  const n = Number(bytes.readBigUInt64LE(0));
  assert.equal(n % 8, 0);
  assert.match(bytes.subarray(8, 8 + n).toString(), /^\{.*\} *$/);
  const back = await readSafetensors(p);
  assert.deepEqual(back.metadata, { format: 'pt' });
  assert.deepEqual([...back.tensors.keys()].sort(), [...tensors.keys()].sort());
  for (const [name, t] of tensors) {
    assert.deepEqual(back.tensors.get(name)!.shape, t.shape, name);
    assert.deepEqual(back.tensors.get(name)!.data, t.data, name);
  }
  assert.equal(back.tensors.get('w')!.dtype, 'F32');
  assert.equal(back.tensors.get('ids')!.dtype, 'I64');
  assert.equal(back.tensors.get('mask')!.dtype, 'I32');
});

test('writer is atomic: a failed write keeps the old file and leaves no temporary file', async () => {
  const sub = await mkdtemp(join(dir, 'atomic-'));
  const p = join(sub, 'model.safetensors');
  await writeSafetensors(p, { a: { shape: [2], data: Float32Array.from([1, 2]) } });
  const before = await readFile(p);
  await assert.rejects(
    writeSafetensors(p, { a: { shape: [3], data: Float32Array.from([1, 2]) } }),
    new RegExp(`${escape(p)}: tensor 'a': shape \\[3\\] does not match its 2 elements`),
  );
  assert.deepEqual(await readFile(p), before);
  // An I/O failure after the first chunk reached the temporary file: the old file must survive intact.
  const bad = [Buffer.from('partial bytes'), 42 as unknown as Uint8Array];
  await assert.rejects(writeFileAtomic(p, bad), new RegExp(`could not write ${escape(p)}`));
  assert.deepEqual(await readFile(p), before);
  assert.deepEqual(await readdir(sub), ['model.safetensors']);
});

test('reads files written by Python safetensors: tiny-bert fixture and the real MiniLM checkpoint', async () => {
  const tiny = await readSafetensors(join(ROOT, 'test/fixtures/tiny-bert/model.safetensors'));
  assert.equal(tiny.metadata.format, 'pt');
  assert.equal(tiny.tensors.size, 41);
  const file = join(MINILM, 'model.safetensors');
  assert.ok(existsSync(file), `${file} missing: run scripts/fetch-model.sh`);
  const { tensors, metadata } = await readSafetensors(file);
  assert.deepEqual(metadata, { format: 'pt' });
  assert.equal(tensors.size, 104);
  const pos = tensors.get('embeddings.position_ids')!;
  assert.equal(pos.dtype, 'I64');
  assert.deepEqual(pos.shape, [1, 512]);
  assert.deepEqual(pos.data, BigInt64Array.from({ length: 512 }, (_, i) => BigInt(i)));
  const config = JSON.parse(await readFile(join(MINILM, 'config.json'), 'utf8'));
  for (const [key, shape] of parameterShapes({ ...BERT_DEFAULTS, ...config, num_labels: 2 })) {
    if (key.startsWith('classifier.')) continue;
    const t = tensors.get(key.slice('bert.'.length));
    assert.ok(t, `${key} missing`);
    assert.equal(t.dtype, 'F32');
    assert.deepEqual(t.shape, shape, key);
  }
});
