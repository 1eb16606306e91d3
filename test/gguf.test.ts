/**
 * GGUF reader, dequantizers, writer and the Llama mapping.
 *
 * References (test/fixtures/gguf, made by scripts/reference/gguf_fixtures.py): files written
 * by gguf-py's GGUFWriter, float32 values from gguf.quants.dequantize (compared bit for bit),
 * and transformers' config and dequantized state dict of the real SmolLM2-135M-Instruct Q4_1
 * GGUF (whole-tensor sha256). Malformed files follow published reports on llama.cpp's own
 * GGUF parser: oversized string/array lengths and counts, too many dims, dimension products
 * that overflow, offsets past the end, bad alignment, unknown types, truncation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DEQUANTIZABLE_TYPES,
  dequantize,
  floatToHalfBits,
  ggufLlamaConfig,
  ggufToHfName,
  hfTensorsToGguf,
  hfToGgufName,
  openGguf,
  openGgufModel,
  permuteQK,
  quantizeQ8_0,
  readGgufHeader,
  readGgufModel,
  readSafetensors,
  unpermuteQK,
  writeGguf,
  type GgufArray,
  type GgufValue,
} from '../src/io/index.js';
import { loadCausalLM } from '../src/llm/load.js';
import { tinyMetadata, tinyModel, writeTinyLlamaGguf } from './helpers/tiny-llama-gguf.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FIX = join(ROOT, 'test/fixtures/gguf');
const SMOLLM2_DIR = join(ROOT, '.cache/models/SmolLM2-135M-Instruct');
const SMOLLM2 = join(SMOLLM2_DIR, 'SmolLM2-135M-Instruct.Q4_1.gguf');

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nodetune-gguf-'));
});
test.after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function put(name: string, bytes: Uint8Array | string): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, bytes);
  return p;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** readGgufHeader(path) must reject quickly, naming the file and matching `pattern`, without a large allocation. */
async function rejectsWith(path: string, pattern: string): Promise<void> {
  const before = process.memoryUsage().arrayBuffers;
  const t0 = performance.now();
  await assert.rejects(readGgufHeader(path), (err: Error) => {
    assert.match(err.message, new RegExp(`^${escape(path)}: `), 'message starts with the file');
    assert.match(err.message, new RegExp(pattern));
    return true;
  });
  assert.ok(performance.now() - t0 < 2000, 'rejected quickly');
  assert.ok(process.memoryUsage().arrayBuffers - before < 32 * 1024 * 1024, 'no large buffer was allocated');
}

// ---------------------------------------------------------------------------------------
// A byte builder for hand-made (and malformed) GGUF files.

class Bytes {
  private parts: Buffer[] = [];
  get length(): number {
    return this.parts.reduce((n, p) => n + p.length, 0);
  }
  u8(v: number): this {
    this.parts.push(Buffer.from([v]));
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint | number): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.parts.push(b);
    return this;
  }
  str(s: string | Buffer): this {
    const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    return this.u64(b.length).raw(b);
  }
  raw(b: Uint8Array | number[]): this {
    this.parts.push(Buffer.from(b));
    return this;
  }
  pad(alignment = 32): this {
    const n = (alignment - (this.length % alignment)) % alignment;
    return this.raw(new Uint8Array(n));
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

function header(nTensors: bigint | number, nKv: bigint | number, version = 3): Bytes {
  return new Bytes().raw(Buffer.from('GGUF')).u32(version).u64(nTensors).u64(nKv);
}

const T_U8 = 0, T_U32 = 4, T_BOOL = 7, T_STR = 8, T_ARR = 9;
const F32 = 0, Q8_0 = 8;

/** A well-formed file with one key and one F32 tensor of `ne`, data filled in. */
function oneTensor(ne: number[], opts: { type?: number; offset?: number; data?: number } = {}): Buffer {
  const b = header(1, 1).str('general.architecture').u32(T_STR).str('llama');
  b.str('w').u32(ne.length);
  for (const d of ne) b.u64(d);
  b.u32(opts.type ?? F32).u64(opts.offset ?? 0).pad();
  return b.raw(new Uint8Array(opts.data ?? ne.reduce((a, c) => a * c, 1) * 4)).done();
}

// ---------------------------------------------------------------------------------------
// Metadata: the JSON form scripts/reference/gguf_fixtures.py writes ("typed").

const f32b = new Float32Array(1);
const u32b = new Uint32Array(f32b.buffer);
const f64b = new Float64Array(1);

function jsonItem(type: string, v: unknown): unknown {
  switch (type) {
    case 'float32':
      f32b[0] = v as number;
      return u32b[0];
    case 'float64':
      f64b[0] = v as number;
      return Buffer.from(f64b.buffer).reverse().toString('hex');
    case 'uint64':
    case 'int64':
      return String(v);
    case 'array':
      return jsonArray(v as GgufArray);
    default:
      return v;
  }
}

function jsonArray(a: GgufArray): unknown {
  return { type: 'array', itemType: a.itemType, items: Array.from(a.items as ArrayLike<unknown>, (x) => jsonItem(a.itemType, x)) };
}

function toJson(v: GgufValue): unknown {
  return v.type === 'array' ? jsonArray(v.value) : { type: v.type, value: jsonItem(v.type, v.value) };
}

const TYPED: Record<string, new (n: number) => ArrayLike<unknown> & { [i: number]: unknown }> = {
  uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int16: Int16Array, uint32: Uint32Array, int32: Int32Array,
  float32: Float32Array, float64: Float64Array, uint64: BigUint64Array, int64: BigInt64Array,
};

function fromJsonItem(type: string, v: unknown): unknown {
  switch (type) {
    case 'float32':
      u32b[0] = v as number;
      return f32b[0];
    case 'float64':
      return Buffer.from(v as string, 'hex').readDoubleBE(0);
    case 'uint64':
    case 'int64':
      return BigInt(v as string);
    case 'array':
      return fromJsonArray(v as { itemType: string; items: unknown[] });
    default:
      return v;
  }
}

function fromJsonArray(j: { itemType: string; items: unknown[] }): GgufArray {
  const items = j.items.map((x) => fromJsonItem(j.itemType, x));
  const Typed = TYPED[j.itemType];
  if (!Typed) return { itemType: j.itemType, items } as GgufArray;
  const t = new Typed(items.length);
  items.forEach((x, i) => (t[i] = x));
  return { itemType: j.itemType, items: t } as unknown as GgufArray;
}

function fromJson(j: { type: string; value?: unknown; itemType?: string; items?: unknown[] }): GgufValue {
  if (j.type === 'array') return { type: 'array', value: fromJsonArray(j as { itemType: string; items: unknown[] }) };
  return { type: j.type, value: fromJsonItem(j.type, j.value) } as GgufValue;
}

const expectedMetadata = JSON.parse(readFileSync(join(FIX, 'metadata.json'), 'utf8')) as Record<string, never>;

// ---------------------------------------------------------------------------------------
// Reading files written by gguf-py

test('metadata of every value type (arrays, nested arrays of mixed item types) reads as gguf-py wrote it', async () => {
  for (const file of ['quant-blocks.gguf', 'writer-reference.gguf']) {
    const h = await readGgufHeader(join(FIX, file));
    assert.equal(h.version, 3);
    assert.equal(h.alignment, 32);
    assert.deepEqual([...h.metadata.keys()], ['general.architecture', ...Object.keys(expectedMetadata)]);
    assert.deepEqual(h.metadata.get('general.architecture'), { type: 'string', value: 'llama' });
    for (const [key, want] of Object.entries(expectedMetadata)) assert.deepEqual(toJson(h.metadata.get(key)!), want, key);
  }
  const h = await readGgufHeader(join(FIX, 'quant-blocks.gguf'));
  const f32 = h.metadata.get('test.array_float32')!;
  assert.ok(f32.type === 'array' && f32.value.items instanceof Float32Array, 'float32 arrays come as Float32Array');
  assert.equal(h.metadata.get('test.string')!.value, 'h\u00e9llo w\u00f6rld \u4f60\u597d \u{1f999}\n\t"q"');
});

test('tensor infos: names, ggml types, torch shapes, GGUF dims, aligned offsets inside the file', async () => {
  const h = await readGgufHeader(join(FIX, 'quant-blocks.gguf'));
  assert.deepEqual(
    h.tensors.map((t) => t.name),
    ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K', 'Q5_K', 'Q6_K', 'Q2_K'],
  );
  for (const t of h.tensors) {
    assert.equal(t.type, t.name);
    assert.deepEqual(t.shape, [2, 256]);
    assert.deepEqual(t.ne, [256, 2]);
    assert.equal(t.nElements, 512);
    assert.equal((t.offset - h.dataOffset) % 32, 0);
  }
  assert.equal(h.dataOffset % 32, 0);
  const w = await readGgufHeader(join(FIX, 'writer-reference.gguf'));
  assert.deepEqual(
    w.tensors.map((t) => [t.name, t.type, t.shape]),
    [['t.f32', 'F32', [3, 5]], ['t.f32_1d', 'F32', [7]], ['t.f16', 'F16', [2, 64]], ['t.q8_0', 'Q8_0', [3, 64]], ['t.q8_0_3d', 'Q8_0', [2, 2, 32]]],
  );
});

test('GGUF v2 (same layout, older version field) reads like v3', async () => {
  const bytes = await readFile(join(FIX, 'writer-reference.gguf'));
  bytes.writeUInt32LE(2, 4);
  const h = await readGgufHeader(await put('v2.gguf', bytes));
  assert.equal(h.version, 2);
  assert.equal(h.tensors.length, 5);
  assert.deepEqual(toJson(h.metadata.get('test.array_nested_mixed')!), expectedMetadata['test.array_nested_mixed']);
});

test('dequantization of F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K is bit-exact with gguf.quants.dequantize', async () => {
  const expected = await readSafetensors(join(FIX, 'quant-expected.safetensors'));
  assert.deepEqual([...expected.tensors.keys()].sort(), [...DEQUANTIZABLE_TYPES].sort());
  const f = await openGguf(join(FIX, 'quant-blocks.gguf'));
  try {
    for (const [name, want] of expected.tensors) {
      const got = await f.readTensor(name);
      const w = want.data as Float32Array;
      assert.equal(got.length, w.length, name);
      // Compare bit patterns: -0 vs 0 and every last-place rounding count.
      const gb = new Uint32Array(got.buffer, got.byteOffset, got.length);
      const wb = new Uint32Array(w.buffer, w.byteOffset, w.length);
      let bad = -1;
      for (let i = 0; i < gb.length && bad < 0; i++) if (gb[i] !== wb[i]) bad = i;
      assert.equal(bad, -1, `${name}: first mismatch at ${bad}: ${got[bad]} vs ${w[bad]}`);
    }
  } finally {
    await f.close();
  }
});

test('a type that is not dequantized is an error naming the file, tensor and type', async () => {
  const f = await openGguf(join(FIX, 'quant-blocks.gguf'));
  try {
    await assert.rejects(f.readTensor('Q2_K'), /quant-blocks\.gguf: tensor 'Q2_K': type Q2_K cannot be dequantized \(supported: F32, F16, BF16, Q8_0/);
    assert.equal((await f.readTensorBytes('Q2_K')).byteLength, 168, 'its raw bytes are still readable');
    await assert.rejects(f.readTensor('nope'), /no tensor 'nope' in the file/);
  } finally {
    await f.close();
  }
  await assert.rejects(f.readTensor('F32'), /the file is closed/);
  assert.throws(() => dequantize('IQ2_XXS', new Uint8Array(66), 256, 'x'), /tensor 'x': type IQ2_XXS cannot be dequantized/);
  assert.throws(() => dequantize('Q8_0', new Uint8Array(33), 32, 'x'), /tensor 'x': Q8_0 data of 32 elements needs 34 bytes, got 33/);
});

// ---------------------------------------------------------------------------------------
// Writing

async function writerInputs() {
  const input = await readSafetensors(join(FIX, 'writer-input.safetensors'));
  const get = (n: string) => input.tensors.get(n)! as { shape: number[]; data: Float32Array };
  return [
    { name: 't.f32', type: 'F32' as const, ...get('t.f32') },
    { name: 't.f32_1d', type: 'F32' as const, ...get('t.f32_1d') },
    { name: 't.f16', type: 'F16' as const, ...get('t.f16') },
    { name: 't.q8_0', type: 'Q8_0' as const, ...get('t.q8_0') },
    { name: 't.q8_0_3d', type: 'Q8_0' as const, shape: get('t.q8_0_3d').shape, data: () => get('t.q8_0_3d').data },
  ];
}

test('writer output is byte-identical to gguf-py GGUFWriter (metadata of every type, F32, F16 and Q8_0 from gguf.quants.quantize)', async () => {
  const metadata = new Map<string, GgufValue>([['general.architecture', { type: 'string', value: 'llama' }]]);
  for (const [k, v] of Object.entries(expectedMetadata)) metadata.set(k, fromJson(v));
  const out = join(dir, 'written.gguf');
  await writeGguf(out, { metadata, tensors: await writerInputs() });
  const ours = await readFile(out);
  const ref = await readFile(join(FIX, 'writer-reference.gguf'));
  assert.equal(ours.length, ref.length);
  const first = ours.findIndex((b, i) => b !== ref[i]);
  assert.equal(first, -1, `first differing byte at ${first}`);
  assert.deepEqual(await readdir(dir).then((f) => f.filter((n) => n.endsWith('.tmp'))), [], 'no temporary file left');
});

test('F16 rounding (ties to even, subnormals, overflow to inf) and Q8_0 (round half away from zero, d = 0) match numpy / gguf-py', async () => {
  const ref = await openGguf(join(FIX, 'writer-reference.gguf'));
  const input = await readSafetensors(join(FIX, 'writer-input.safetensors'));
  try {
    const f16in = input.tensors.get('t.f16')!.data as Float32Array;
    const f16ref = await ref.readTensorBytes('t.f16');
    for (let i = 0; i < f16in.length; i++) {
      assert.equal(floatToHalfBits(f16in[i]), f16ref[2 * i] | (f16ref[2 * i + 1] << 8), `value ${f16in[i]}`);
    }
    const q8in = input.tensors.get('t.q8_0')!.data as Float32Array;
    assert.deepEqual(quantizeQ8_0(q8in), new Uint8Array(await ref.readTensorBytes('t.q8_0')));
  } finally {
    await ref.close();
  }
  assert.equal(floatToHalfBits(65520), 0x7c00);
  assert.equal(floatToHalfBits(65519.99), 0x7bff);
  assert.equal(floatToHalfBits(2 ** -25), 0, '2^-25 ties to even: 0');
  assert.equal(floatToHalfBits(3 * 2 ** -25), 2, '3·2^-25 ties to even: 2·2^-24');
  assert.equal(floatToHalfBits(-0), 0x8000);
  assert.equal(floatToHalfBits(NaN) & 0x7e00, 0x7e00);
  const halves = quantizeQ8_0(Float32Array.from([127, 2.5, -2.5, 0.5, -0.5, ...new Array(27).fill(0)]));
  assert.deepEqual(Array.from(new Int8Array(halves.buffer, 2, 5)), [127, 3, -3, 1, -1]);
  assert.deepEqual(Array.from(quantizeQ8_0(new Float32Array(32))), new Array(34).fill(0), 'all-zero block: d = 0, q = 0');
});

test('write → read round trip: empty and nested arrays, raw tensors of any type, custom alignment', async () => {
  const blocks = await openGguf(join(FIX, 'quant-blocks.gguf'));
  const q4k = await blocks.readTensorBytes('Q4_K');
  const q2k = await blocks.readTensorBytes('Q2_K');
  await blocks.close();
  const metadata = new Map<string, GgufValue>([
    ['general.alignment', { type: 'uint32', value: 64 }],
    ['a.empty', { type: 'array', value: { itemType: 'string', items: [] } }],
    ['a.empty_u64', { type: 'array', value: { itemType: 'uint64', items: new BigUint64Array(0) } }],
    ['a.nested', { type: 'array', value: { itemType: 'array', items: [{ itemType: 'bool', items: [true] }, { itemType: 'array', items: [] }] } }],
    ['s', { type: 'string', value: '' }],
    ['i64', { type: 'int64', value: -5n }],
    // Large enough that the header buffer grows many times while being written.
    ['a.tokens', { type: 'array', value: { itemType: 'string', items: Array.from({ length: 20000 }, (_, i) => `tok${i}\u0120`) } }],
    ['a.scores', { type: 'array', value: { itemType: 'float32', items: Float32Array.from({ length: 5000 }, (_, i) => -i / 7) } }],
  ]);
  const x = Float32Array.from({ length: 96 }, (_, i) => Math.sin(i));
  const out = join(dir, 'roundtrip.gguf');
  await writeGguf(out, {
    metadata,
    tensors: [
      { name: 'q4k', shape: [2, 256], type: 'Q4_K', bytes: q4k },
      { name: 'x', shape: [3, 32], type: 'F32', data: x },
      { name: 'q2k', shape: [512], type: 'Q2_K', bytes: q2k },
      { name: 'scalar', shape: [], type: 'F32', data: Float32Array.of(7) },
    ],
  });
  const f = await openGguf(out);
  try {
    assert.equal(f.alignment, 64);
    assert.deepEqual([...f.metadata], [...metadata]);
    assert.deepEqual(f.tensors.map((t) => [t.name, t.type, t.shape, (t.offset - f.dataOffset) % 64]), [
      ['q4k', 'Q4_K', [2, 256], 0], ['x', 'F32', [3, 32], 0], ['q2k', 'Q2_K', [512], 0], ['scalar', 'F32', [], 0],
    ]);
    assert.equal(f.dataOffset % 64, 0);
    assert.deepEqual(new Uint8Array(await f.readTensorBytes('q4k')), new Uint8Array(q4k));
    assert.deepEqual(await f.readTensor('x'), x);
    assert.deepEqual(await f.readTensor('scalar'), Float32Array.of(7));
    assert.equal((await readFile(out)).length % 64, 0, 'the last tensor is padded too, as gguf-py and llama.cpp do');
  } finally {
    await f.close();
  }
});

test('writer rejects bad input naming the file and key or tensor, writes nothing, and leaves an existing file intact', async () => {
  const out = join(dir, 'bad.gguf');
  const meta = new Map<string, GgufValue>();
  const t = (o: object) => ({ name: 'w', shape: [1, 32], type: 'F32' as const, data: new Float32Array(32), ...o });
  const cases: Array<[Parameters<typeof writeGguf>[1], RegExp]> = [
    [{ metadata: meta, tensors: [t({}), t({})] }, /tensor 'w': duplicate tensor name/],
    [{ metadata: meta, tensors: [t({ name: 'x'.repeat(64) })] }, /is 64 bytes long; llama.cpp allows at most 63/],
    [{ metadata: meta, tensors: [t({ shape: [1, 0] })] }, /tensor 'w': shape must be at most 4 positive integers, got \[1,0\]/],
    [{ metadata: meta, tensors: [t({ shape: [1, 1, 1, 1, 32] })] }, /shape must be at most 4 positive integers/],
    [{ metadata: meta, tensors: [t({ type: 'Q8_0', shape: [2, 16] })] }, /tensor 'w': type Q8_0 needs the last dimension to be a multiple of 32, got shape \[2, 16\]/],
    [{ metadata: meta, tensors: [t({ shape: [2, 32] })] }, /tensor 'w': shape \[2, 32\] has 64 elements, but data has 32/],
    [{ metadata: meta, tensors: [t({ type: 'Q4_K' })] }, /float data can be written as F32, F16 or Q8_0, not Q4_K/],
    [{ metadata: meta, tensors: [{ name: 'r', shape: [256], type: 'Q4_K', bytes: new Uint8Array(10) }] }, /tensor 'r': Q4_K data of shape \[256\] is 144 bytes, got 10/],
    [{ metadata: new Map([['k', { type: 'uint8', value: 256 }]]), tensors: [] }, /metadata key 'k': uint8 value must be an integer in \[0, 255\], got 256/],
    [{ metadata: new Map([['k', { type: 'uint64', value: 5 as unknown as bigint }]]), tensors: [] }, /metadata key 'k': uint64 value must be a bigint/],
    [{ metadata: new Map([['k', { type: 'string', value: 'a\ud800' }]]), tensors: [] }, /metadata key 'k': string has a lone surrogate/],
    [{ metadata: new Map([['k', { type: 'array', value: { itemType: 'int8', items: [1, 300] } as unknown as GgufArray }]]), tensors: [] }, /metadata key 'k'\[1\]: int8 value must be an integer in \[-128, 127\], got 300/],
    [{ metadata: new Map([['general.alignment', { type: 'uint32', value: 48 }]]), tensors: [] }, /'general.alignment' must be a uint32 power of two, got uint32 48/],
    [{ metadata: [['k', { type: 'bool', value: true }], ['k', { type: 'bool', value: false }]], tensors: [] }, /metadata key 'k' is given twice/],
  ];
  for (const [contents, pattern] of cases) {
    await assert.rejects(writeGguf(out, contents), (err: Error) => {
      assert.match(err.message, new RegExp(`^${escape(out)}: `));
      assert.match(err.message, pattern);
      return true;
    });
    assert.equal(existsSync(out), false);
  }
  await writeFile(out, 'old');
  const failing = { name: 'w', shape: [32], type: 'F32' as const, data: () => Promise.reject(new Error('source gone')) };
  await assert.rejects(writeGguf(out, { metadata: meta, tensors: [failing] }), /could not write .*bad\.gguf: source gone/);
  assert.equal(await readFile(out, 'utf8'), 'old', 'the existing file is untouched');
  assert.deepEqual((await readdir(dir)).filter((n) => n.endsWith('.tmp')), []);
});

// ---------------------------------------------------------------------------------------
// Malformed files

test('not GGUF: wrong magic, Git LFS pointer, too short', async () => {
  await rejectsWith(await put('magic.gguf', Buffer.from('PK\x03\x04rest of a zip file......')), 'not a GGUF file: magic is "PK\\\\u0003\\\\u0004" \\(504b0304\\), expected "GGUF"');
  await rejectsWith(await put('lfs.gguf', 'version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 98362432\n'), 'is a Git LFS pointer file');
  await rejectsWith(await put('empty.gguf', ''), 'the file is 0 bytes, too short for the 4-byte GGUF magic');
});

test('versions: 1, 4 and big-endian files are refused by name', async () => {
  await rejectsWith(await put('v1.gguf', header(0, 0, 1).done()), 'header: GGUF version 1 is not supported');
  await rejectsWith(await put('v4.gguf', header(0, 0, 4).done()), 'header: unsupported GGUF version 4 \\(supported: 2 and 3\\)');
  await rejectsWith(await put('be.gguf', header(0, 0, 0x03000000).done()), 'this is a big-endian GGUF file, which is not supported');
});

test('huge tensor_count and metadata_kv_count are refused before anything is allocated', async () => {
  await rejectsWith(await put('nkv.gguf', header(0, 2n ** 63n).done()), `metadata_kv_count ${2n ** 63n} cannot fit: each key/value pair needs at least 14 bytes, and 0 bytes remain`);
  await rejectsWith(await put('ntensors.gguf', header(2n ** 64n - 1n, 0).raw(new Uint8Array(100)).done()), `tensor_count ${2n ** 64n - 1n} cannot fit: each tensor info needs at least 25 bytes, and 100 bytes remain`);
  await rejectsWith(await put('ntensors2.gguf', header(5, 0).raw(new Uint8Array(100)).done()), 'tensor_count 5 cannot fit');
});

test('huge string lengths (key, value, tensor name) are refused', async () => {
  await rejectsWith(await put('keylen.gguf', header(0, 1).u64(2n ** 64n - 1n).raw(new Uint8Array(20)).done()), `key #0: the key is ${2n ** 64n - 1n} bytes long, more than the limit of 65535`);
  await rejectsWith(await put('keylen2.gguf', header(0, 1).u64(1000).raw(new Uint8Array(20)).done()), 'key #0: the key is 1000 bytes long, but only 20 bytes remain in the file');
  await rejectsWith(await put('strlen.gguf', header(0, 1).str('k').u32(T_STR).u64(2n ** 62n).raw(new Uint8Array(8)).done()), `key 'k': the string value is ${2n ** 62n} bytes long, more than the limit of 268435456`);
  await rejectsWith(await put('strlen2.gguf', header(0, 1).str('k').u32(T_STR).u64(9).raw(new Uint8Array(8)).done()), "key 'k': the string value is 9 bytes long, but only 8 bytes remain");
  await rejectsWith(await put('namelen.gguf', header(1, 0).u64(2n ** 40n).raw(new Uint8Array(30)).done()), 'tensor #0: the tensor name is 1099511627776 bytes long, more than the limit of 65535');
  await rejectsWith(await put('namelen2.gguf', header(1, 0).u64(1000).raw(new Uint8Array(30)).done()), 'tensor #0: the tensor name is 1000 bytes long, but only 30 bytes remain');
});

test('huge array lengths, nesting too deep, unknown value types, bad bools', async () => {
  await rejectsWith(await put('arrlen.gguf', header(0, 1).str('k').u32(T_ARR).u32(T_U8).u64(2n ** 62n).raw(new Uint8Array(8)).done()), `key 'k': array of ${2n ** 62n} uint8 items is longer than the limit of 1073741824`);
  await rejectsWith(await put('arrlen2.gguf', header(0, 1).str('k').u32(T_ARR).u32(T_STR).u64(1000).raw(new Uint8Array(64)).done()), "key 'k': array of 1000 string items needs at least 8000 bytes, but only 64 bytes remain");
  await rejectsWith(await put('arrlen3.gguf', header(0, 1).str('k').u32(T_ARR).u32(T_U32).u64(17).raw(new Uint8Array(64)).done()), "array of 17 uint32 items needs at least 68 bytes, but only 64 bytes remain");
  const deep = header(0, 1).str('k').u32(T_ARR);
  for (let i = 0; i < 20; i++) deep.u32(T_ARR).u64(1);
  await rejectsWith(await put('deep.gguf', deep.u32(T_U8).u64(0).done()), "key 'k': arrays nested more than 16 deep");
  await rejectsWith(await put('vtype.gguf', header(0, 1).str('k').u32(13).u64(0).done()), "key 'k': unknown value type 13 \\(valid types are 0-12\\)");
  await rejectsWith(await put('itype.gguf', header(0, 1).str('k').u32(T_ARR).u32(99).u64(0).done()), "key 'k': array has unknown item type 99");
  await rejectsWith(await put('bool.gguf', header(0, 1).str('k').u32(T_BOOL).u8(2).done()), "key 'k': bool value is 2; it must be 0 or 1");
  await rejectsWith(await put('boolarr.gguf', header(0, 1).str('k').u32(T_ARR).u32(T_BOOL).u64(2).raw([1, 7]).done()), "key 'k': bool array item 1 is 7");
});

test('keys: duplicate, empty, invalid UTF-8', async () => {
  await rejectsWith(await put('dupkey.gguf', header(0, 2).str('a').u32(T_U8).u8(1).str('a').u32(T_U8).u8(2).done()), "key 'a': duplicate key");
  await rejectsWith(await put('emptykey.gguf', header(0, 1).str('').u32(T_U8).u8(1).raw(new Uint8Array(8)).done()), 'key #0: key is empty');
  await rejectsWith(await put('utf8key.gguf', header(0, 1).str(Buffer.from([0x61, 0xff])).u32(T_U8).u8(1).done()), 'key #0: the key is not valid UTF-8');
  await rejectsWith(await put('utf8val.gguf', header(0, 1).str('k').u32(T_STR).str(Buffer.from([0xc3])).done()), "key 'k': the string value is not valid UTF-8");
});

test('general.alignment: wrong type, zero, not a power of two', async () => {
  const withAlign = (type: number, write: (b: Bytes) => void) => {
    const b = header(0, 1).str('general.alignment').u32(type);
    write(b);
    return b.done();
  };
  await rejectsWith(await put('align-type.gguf', withAlign(T_U8, (b) => b.u8(32))), "key 'general.alignment': must be of type uint32, but is uint8");
  await rejectsWith(await put('align-0.gguf', withAlign(T_U32, (b) => b.u32(0))), "key 'general.alignment': alignment 0 is not a power of two");
  await rejectsWith(await put('align-48.gguf', withAlign(T_U32, (b) => b.u32(48))), 'alignment 48 is not a power of two');
});

test('tensor infos: n_dims > 4, zero and negative dims, dimension products that overflow or exceed the file', async () => {
  await rejectsWith(await put('ndims.gguf', oneTensor([1, 1, 1, 1, 1])), "tensor 'w': n_dims is 5; at most 4 dimensions are allowed");
  await rejectsWith(await put('dim0.gguf', oneTensor([4, 0])), "tensor 'w': dimension 1 is 0; every dimension must be at least 1");
  const neg = header(1, 0).str('w').u32(2).u64(4).u64(2n ** 64n - 3n).u32(F32).u64(0).pad().done();
  await rejectsWith(await put('dimneg.gguf', neg), `tensor 'w': dimension 1 is ${2n ** 64n - 3n} \\(-3 as int64\\); every dimension must be at least 1`);
  const overflow = header(1, 0).str('w').u32(3).u64(2n ** 32n).u64(2n ** 32n).u64(4).u32(F32).u64(0).pad().done();
  await rejectsWith(await put('overflow.gguf', overflow), "tensor 'w': dimensions \\[4294967296, 4294967296, \\.\\.\\.\\] multiply to more than 9223372036854775807 elements \\(int64 overflow\\)");
  const big = header(1, 0).str('w').u32(2).u64(2n ** 31n).u64(2n ** 31n).u32(F32).u64(0).pad().done();
  await rejectsWith(await put('big.gguf', big), "tensor 'w': shape \\[2147483648, 2147483648\\] of type F32 needs 18446744073709551616 bytes, more than the whole file");
});

test('tensor types: unknown and removed codes, rows that are not whole blocks', async () => {
  await rejectsWith(await put('ttype.gguf', oneTensor([32], { type: 99 })), "tensor 'w': unknown ggml type code 99");
  await rejectsWith(await put('ttype4.gguf', oneTensor([32], { type: 4 })), "tensor 'w': unknown ggml type code 4");
  await rejectsWith(await put('block.gguf', oneTensor([31, 2], { type: Q8_0 })), "tensor 'w': type Q8_0 stores blocks of 32 values, but the row length ne\\[0\\] = 31 is not a multiple of it");
});

test('tensor data: misaligned, past the end, overlapping; duplicate and over-long names', async () => {
  await rejectsWith(await put('misaligned.gguf', oneTensor([4], { offset: 16, data: 64 })), "tensor 'w': data offset 16 is not a multiple of the alignment 32");
  const past = oneTensor([100], { offset: 32, data: 400 });
  await rejectsWith(await put('past.gguf', past), `tensor 'w': data \\[offset ${past.length - 400 + 32}, 400 bytes\\] extends past the end of the file \\(${past.length} bytes\\)`);
  const short = oneTensor([100], { data: 399 });
  await rejectsWith(await put('short.gguf', short), `tensor 'w': data \\[offset ${short.length - 399}, 400 bytes\\] extends past the end of the file \\(${short.length} bytes\\)`);
  await rejectsWith(await put('offbig.gguf', oneTensor([4], { offset: 2 ** 52, data: 16 })), 'extends past the end of the file');
  const two = (name2: string, off2: number) =>
    header(2, 0).str('a').u32(1).u64(16).u32(F32).u64(0).str(name2).u32(1).u64(8).u32(F32).u64(off2).pad().raw(new Uint8Array(128)).done();
  await rejectsWith(await put('overlap.gguf', two('b', 32)), "tensor 'b': data at offset \\d+ overlaps tensor 'a' \\(offset \\d+, 64 bytes\\)");
  assert.equal((await readGgufHeader(await put('adjacent.gguf', two('b', 64)))).tensors.length, 2);
  await rejectsWith(await put('dupname.gguf', two('a', 64)), "tensor 'a': duplicate tensor name");
  const long = header(1, 0).str('n'.repeat(64)).u32(1).u64(8).u32(F32).u64(0).pad().raw(new Uint8Array(32)).done();
  await rejectsWith(await put('longname.gguf', long), "tensor #0: tensor name 'n{64}' is 64 bytes long; llama.cpp allows at most 63");
});

test('a file truncated at any byte before its last tensor ends is an error naming the file and the section', async () => {
  const full = await readFile(join(FIX, 'writer-reference.gguf'));
  const h = await readGgufHeader(join(FIX, 'writer-reference.gguf'));
  const last = h.tensors.reduce((a, t) => Math.max(a, t.offset + t.byteLength), 0);
  const p = join(dir, 'truncated.gguf');
  const sections = new Set<string>();
  const t0 = performance.now();
  for (let n = 0; n < last; n++) {
    await writeFile(p, full.subarray(0, n));
    await assert.rejects(readGgufHeader(p), (err: Error) => {
      assert.match(err.message, new RegExp(`^${escape(p)}: (header|key|tensor)`), `truncated at ${n}: ${err.message}`);
      assert.match(err.message, /truncated|extends past the end|too short|bytes remain|cannot fit/, `truncated at ${n}: ${err.message}`);
      sections.add(err.message.slice(p.length + 2).split(':')[0].replace(/'.*'/, "'…'").replace(/#\d+/, '#…'));
      return true;
    });
  }
  assert.deepEqual([...sections].sort(), ['header', 'key #…', "key '…'", 'tensor #…', "tensor '…'"]);
  assert.ok(performance.now() - t0 < 30_000);
});

// ---------------------------------------------------------------------------------------
// Llama mapping

test('tensor names GGUF ↔ Hugging Face', () => {
  const pairs: Array<[string, string]> = [
    ['token_embd.weight', 'model.embed_tokens.weight'],
    ['output_norm.weight', 'model.norm.weight'],
    ['output.weight', 'lm_head.weight'],
    ['blk.0.attn_norm.weight', 'model.layers.0.input_layernorm.weight'],
    ['blk.12.attn_q.weight', 'model.layers.12.self_attn.q_proj.weight'],
    ['blk.12.attn_q.bias', 'model.layers.12.self_attn.q_proj.bias'],
    ['blk.1.attn_k.weight', 'model.layers.1.self_attn.k_proj.weight'],
    ['blk.1.attn_v.bias', 'model.layers.1.self_attn.v_proj.bias'],
    ['blk.1.attn_output.weight', 'model.layers.1.self_attn.o_proj.weight'],
    ['blk.29.ffn_norm.weight', 'model.layers.29.post_attention_layernorm.weight'],
    ['blk.2.ffn_gate.weight', 'model.layers.2.mlp.gate_proj.weight'],
    ['blk.2.ffn_up.weight', 'model.layers.2.mlp.up_proj.weight'],
    ['blk.2.ffn_down.weight', 'model.layers.2.mlp.down_proj.weight'],
  ];
  for (const [g, h] of pairs) {
    assert.equal(ggufToHfName(g), h);
    assert.equal(hfToGgufName(h), g);
  }
  for (const n of ['rope_freqs.weight', 'blk.0.attn_qkv.weight', 'blk.x.attn_q.weight', 'output']) assert.equal(ggufToHfName(n), undefined, n);
  assert.equal(hfToGgufName('model.layers.0.self_attn.rotary_emb.inv_freq'), undefined);
});

test("q/k row permutation is convert_hf_to_gguf.py's reshape(n_head, 2, half).swapaxes(1, 2), and unpermute inverts it", () => {
  // 2 heads of 4 rows (half = 2), 1 column: HF rows 0..7 → GGUF order [0, 2, 1, 3 | 4, 6, 5, 7].
  assert.deepEqual(Array.from(permuteQK(Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7]), 8, 2)), [0, 2, 1, 3, 4, 6, 5, 7]);
  // 3 heads of 6 rows, 2 columns: rows move whole.
  const x = Float32Array.from({ length: 36 }, (_, i) => i);
  const p = permuteQK(x, 18, 3);
  assert.deepEqual(Array.from(p.subarray(0, 12)), [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]);
  assert.deepEqual(unpermuteQK(p, 18, 3), x);
  assert.throws(() => permuteQK(x, 18, 4), /18 rows do not split into 4 heads of an even size/);
});

test('llama: HF tensors written with hfTensorsToGguf (q/k permuted) read back unpermuted; config from metadata', async () => {
  const { cfg, tensors } = tinyModel({ lmHead: true });
  const config = { model_type: 'llama' as const, num_attention_heads: cfg.heads, num_key_value_heads: cfg.kv, tie_word_embeddings: false };
  const out = join(dir, 'tiny-llama.gguf');
  const toWrite = hfTensorsToGguf(config, tensors, 'F32');
  const q = toWrite.find((t) => t.name === 'blk.0.attn_q.weight')!;
  assert.notDeepEqual(q.data, tensors.get('model.layers.0.self_attn.q_proj.weight')!.data, 'q rows are permuted in the file');
  assert.deepEqual(q.data, permuteQK(tensors.get('model.layers.0.self_attn.q_proj.weight')!.data, cfg.heads * cfg.headDim, cfg.heads));
  await writeGguf(out, { metadata: tinyMetadata('llama', cfg, [['llama.rope.freq_base', { type: 'float32', value: 500000 }]]), tensors: toWrite });
  const model = await readGgufModel(out);
  assert.deepEqual(model.config, {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 40, hidden_size: 64, intermediate_size: 96,
    num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, hidden_act: 'silu',
    max_position_embeddings: 256, rms_norm_eps: Math.fround(1e-6), rope_theta: 500000, rope_scaling: null,
    tie_word_embeddings: false, attention_bias: false, mlp_bias: false, bos_token_id: 1, eos_token_id: 2,
  });
  assert.deepEqual([...model.tensors.keys()], [...tensors.keys()]);
  for (const [name, t] of tensors) assert.deepEqual(model.tensors.get(name), t, name);
  assert.deepEqual([...model.tokenizerMetadata.keys()], ['tokenizer.ggml.model', 'tokenizer.ggml.bos_token_id', 'tokenizer.ggml.eos_token_id']);
});

test('qwen2: not permuted, attention_bias from the bias tensors, tied embeddings, rope scaling, head_dim = hidden/heads', async () => {
  const { cfg, tensors } = tinyModel({ bias: true });
  const out = join(dir, 'tiny-qwen2.gguf');
  const config = { model_type: 'qwen2' as const, num_attention_heads: cfg.heads, num_key_value_heads: cfg.kv, tie_word_embeddings: true };
  const toWrite = hfTensorsToGguf(config, tensors, 'F32');
  assert.equal(toWrite.find((t) => t.name === 'blk.0.attn_q.weight')!.data, tensors.get('model.layers.0.self_attn.q_proj.weight')!.data);
  const yarn: Array<[string, GgufValue]> = [
    ['qwen2.rope.scaling.type', { type: 'string', value: 'yarn' }],
    ['qwen2.rope.scaling.factor', { type: 'float32', value: 4 }],
    ['qwen2.rope.scaling.original_context_length', { type: 'uint32', value: 32768 }],
  ];
  await writeGguf(out, { metadata: tinyMetadata('qwen2', cfg, yarn), tensors: toWrite });
  const model = await openGgufModel(out);
  try {
    assert.equal(model.config.model_type, 'qwen2');
    assert.deepEqual(model.config.architectures, ['Qwen2ForCausalLM']);
    assert.equal(model.config.attention_bias, true);
    assert.equal(model.config.tie_word_embeddings, true);
    assert.equal(model.config.head_dim, 16);
    assert.equal(model.config.rope_theta, 10000, 'default freq_base');
    assert.deepEqual(model.config.rope_scaling, { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32768 });
    for (const [name, t] of tensors) assert.deepEqual(await model.tensors.get(name)!.read(), t.data, name);
    assert.equal(model.tensors.get('model.layers.1.self_attn.k_proj.bias')!.type, 'F32', '1-D tensors are written F32');
  } finally {
    await model.close();
  }
  const q8 = hfTensorsToGguf(config, tensors, 'Q8_0');
  assert.deepEqual(q8.map((t) => t.type).filter((t, i, a) => a.indexOf(t) === i), ['Q8_0', 'F32']);
});

test('llama config errors name the file and the key or tensor', async () => {
  const { cfg, tensors } = tinyModel();
  const config = { model_type: 'llama' as const, num_attention_heads: cfg.heads, num_key_value_heads: cfg.kv, tie_word_embeddings: true };
  const good = hfTensorsToGguf(config, tensors, 'F32');
  const meta = (edit: (m: Map<string, GgufValue>) => void, arch = 'llama') => {
    const m = tinyMetadata(arch, cfg);
    edit(m);
    return m;
  };
  const cases: Array<[Map<string, GgufValue>, typeof good, RegExp]> = [
    [meta(() => undefined, 'gpt2'), good, /general\.architecture is 'gpt2'; supported: llama, qwen2/],
    [meta((m) => m.delete('llama.block_count')), good, /metadata key 'llama\.block_count' is missing/],
    [meta((m) => m.set('llama.block_count', { type: 'string', value: '2' })), good, /'llama\.block_count' must be an integer, but is of type string/],
    [meta((m) => m.set('llama.attention.head_count_kv', { type: 'uint32', value: 3 })), good, /head_count 4 is not a multiple of head_count_kv 3/],
    [meta((m) => m.set('llama.block_count', { type: 'uint32', value: 1 })), good, /tensor 'blk\.1\.attn_norm\.weight' is for layer 1, but block_count is 1/],
    [meta((m) => m.set('llama.block_count', { type: 'uint32', value: 3 })), good, /tensor 'blk\.2\.attn_norm\.weight' is missing/],
    [meta((m) => m.set('llama.feed_forward_length', { type: 'uint32', value: 95 })), good, /tensor 'blk\.0\.ffn_gate\.weight' has dims \[64, 96\]; the config implies \[64, 95\]/],
    [meta((m) => m.set('llama.vocab_size', { type: 'uint32', value: 41 })), good, /llama\.vocab_size 41 differs from the 40 rows of token_embd\.weight/],
    [meta((m) => m.set('llama.rope.scaling.type', { type: 'string', value: 'longrope' })), good, /'llama\.rope\.scaling\.type' is 'longrope'; supported: none, linear, yarn/],
    [meta(() => undefined), good.filter((t) => t.name !== 'token_embd.weight'), /tensor 'token_embd\.weight' is missing/],
  ];
  const p = join(dir, 'cfg.gguf');
  for (const [metadata, ts, pattern] of cases) {
    await writeGguf(p, { metadata, tensors: ts });
    await assert.rejects(openGgufModel(p), (err: Error) => {
      assert.match(err.message, new RegExp(`^${escape(p)}: `));
      assert.match(err.message, pattern);
      return true;
    });
  }
  const h = await readGgufHeader(p);
  assert.throws(() => ggufLlamaConfig(h), /token_embd\.weight' is missing/);
});

test('a GGUF whose weight holds a NaN or an infinity is refused at load, naming the tensor and its [row, column]', async () => {
  // llama.cpp loads such a file and answers with end-of-text tokens; nodetune says where the value is.
  const p = join(dir, 'nan.gguf');
  const name = 'model.layers.1.self_attn.v_proj.weight';
  for (const bad of [NaN, -Infinity]) {
    let at = 0;
    await writeTinyLlamaGguf(p, ROOT, {
      edit: (tensors) => {
        const v = tensors.get(name)!;
        at = 2 * v.shape[1] + 5;
        v.data[at] = bad;
      },
    });
    await assert.rejects(loadCausalLM(p, { threads: 1, trainable: false }), new RegExp(`^Error: ${escape(p)}: tensor 'model\\.layers\\.1\\.self_attn\\.v_proj\\.weight' holds a non-finite value \\(${bad}\\) at index ${at} \\[2, 5\\]$`));
  }
  await writeTinyLlamaGguf(p, ROOT);
  const lm = await loadCausalLM(p, { threads: 1, trainable: false });
  await lm.engine.dispose();
});

// ---------------------------------------------------------------------------------------
// The real model

const expectedModel = JSON.parse(readFileSync(join(FIX, 'smollm2-expected.json'), 'utf8')) as {
  config: Record<string, unknown>;
  state_dict_keys: number;
  tensors: Record<string, { shape: number[]; rows: number[][]; sum: number; sum_of_squares: number; sha256: string }>;
};
const skipReal = existsSync(SMOLLM2_DIR) ? false : `${SMOLLM2_DIR} is absent: run bash scripts/fetch-llm.sh (scripts/setup.sh does)`;

test('SmolLM2-135M-Instruct Q4_1 GGUF: config equals transformers; Q8_0, Q4_1 (q/k unpermuted) and F32 tensors equal its dequantized state dict', { skip: skipReal }, async (t) => {
  const t0 = performance.now();
  const model = await openGgufModel(SMOLLM2);
  const tOpen = performance.now() - t0;
  try {
    const { rope_theta, rope_type, ...fields } = expectedModel.config;
    assert.equal(rope_type, 'default');
    assert.equal(model.config.rope_scaling, null);
    assert.equal(model.config.rope_theta, rope_theta);
    for (const [k, v] of Object.entries(fields)) assert.deepEqual(model.config[k as keyof typeof model.config], v, k);
    assert.equal(model.tensors.size + (model.config.tie_word_embeddings ? 1 : 0), expectedModel.state_dict_keys, 'same tensors as the HF state dict (lm_head tied)');
    assert.deepEqual(model.unmappedTensors, []);
    const types = new Map<string, number>();
    for (const m of model.tensors.values()) types.set(m.type, (types.get(m.type) ?? 0) + 1);
    assert.deepEqual(Object.fromEntries(types), { Q8_0: 1, F32: 61, Q4_1: 210 });
    assert.equal(model.tokenizerMetadata.get('tokenizer.ggml.tokens')?.type, 'array');
    assert.match(String(model.tokenizerMetadata.get('tokenizer.chat_template')?.value), /<\|im_start\|>/);

    for (const [name, want] of Object.entries(expectedModel.tensors)) {
      const mt = model.tensors.get(name)!;
      assert.deepEqual(mt.shape, want.shape, name);
      const data = await mt.read();
      const cols = want.shape.length > 1 ? want.shape.slice(1).reduce((a, b) => a * b, 1) : data.length;
      want.rows.forEach((row, r) => assert.deepEqual(Array.from(data.subarray(r * cols, r * cols + row.length)), row, `${name} row ${r}`));
      let sum = 0;
      let sq = 0;
      for (const x of data) {
        sum += x;
        sq += x * x;
      }
      assert.ok(Math.abs(sum - want.sum) <= 1e-9 * Math.max(1, Math.abs(want.sum)) + 1e-6, `${name} sum ${sum} vs ${want.sum}`);
      assert.ok(Math.abs(sq - want.sum_of_squares) <= 1e-9 * want.sum_of_squares, `${name} sum of squares`);
      const hash = createHash('sha256').update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)).digest('hex');
      assert.equal(hash, want.sha256, `${name}: every float32 bit equals transformers' dequantized tensor`);
    }

    const t1 = performance.now();
    let n = 0;
    for (const m of model.tensors.values()) n += (await m.read()).length;
    const tAll = performance.now() - t1;
    assert.equal(n, 134_515_008);
    t.diagnostic(`open + header ${tOpen.toFixed(0)} ms; read + dequantize all ${n} weights ${tAll.toFixed(0)} ms`);
  } finally {
    await model.close();
  }
});
