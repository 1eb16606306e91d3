/**
 * Reader and writer for the safetensors format (https://github.com/huggingface/safetensors,
 * "Format" section): an unsigned 64-bit little-endian header length N, N bytes
 * of UTF-8 JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`,
 * then the raw little-endian tensor bytes, offsets relative to the end of the header.
 *
 * The reader treats the file as untrusted: the header is validated completely
 * (size bound, JSON, dtypes, byte counts, contiguous offsets, file length)
 * before any tensor memory is allocated.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { writeFileAtomic } from './atomic.js';

/** The safetensors dtypes this reader decodes. */
export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32';

/** Typed array a tensor is decoded to: floats widen/narrow to Float32Array, I64 to BigInt64Array, I32 to Int32Array. */
export type TensorData = Float32Array | Int32Array | BigInt64Array;

/** One tensor as read: `dtype` is the dtype stored in the file, `data` is row-major with `shape`. */
export interface Tensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: TensorData;
}

/** A tensor to write; its dtype follows from the array type (F32, I32, I64). */
export interface TensorToWrite {
  shape: number[];
  data: TensorData;
}

export interface SafetensorsContents {
  /** Tensors in the order of their data offsets in the file. */
  tensors: Map<string, Tensor>;
  /** The `__metadata__` string map ({} when absent). */
  metadata: Record<string, string>;
}

/** Bytes per element of each supported dtype. */
export const DTYPE_SIZE: Readonly<Record<SafetensorsDtype, number>> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4 };

/** Upper bound on the JSON header size, as in the reference implementation (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

const LFS_MAGIC = 'version https://git-lfs';
const ZIP_MAGIC = Buffer.from([0x50, 0x4b, 0x03, 0x04]);

interface HeaderEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  begin: number;
  end: number;
}

function fail(path: string, what: string): never {
  throw new Error(`safetensors file ${path}: ${what}`);
}

function assertLittleEndianHost(): void {
  // The typed arrays below alias file bytes directly, which is only right on little-endian hosts.
  if (endianness() !== 'LE') throw new Error('safetensors: big-endian hosts are not supported');
}

/** Recognise files that are commonly mistaken for safetensors, so the error says what the file is. */
function sniffWrongFormat(path: string, head: Buffer): void {
  if (head.subarray(0, LFS_MAGIC.length).toString('latin1') === LFS_MAGIC) {
    fail(path, 'is a Git LFS pointer file, not the weights; run `git lfs pull` in the repository (or download the file itself)');
  }
  if (head.length >= 4 && head.subarray(0, 4).equals(ZIP_MAGIC)) {
    fail(path, 'looks like a zip archive (e.g. a PyTorch .bin/.pt checkpoint), not safetensors');
  }
}

function product(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function isNonNegInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function parseEntry(path: string, name: string, raw: unknown): HeaderEntry {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(path, `header entry '${name}' is not an object`);
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (typeof dtype !== 'string') fail(path, `tensor '${name}' has no string dtype`);
  if (!(dtype in DTYPE_SIZE)) {
    fail(path, `tensor '${name}' has unsupported dtype '${dtype}' (supported: ${Object.keys(DTYPE_SIZE).join(', ')})`);
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
    fail(path, `tensor '${name}' shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt) || offsets[0] > offsets[1]) {
    fail(path, `tensor '${name}' data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offsets)}`);
  }
  const entry: HeaderEntry = { name, dtype: dtype as SafetensorsDtype, shape, begin: offsets[0], end: offsets[1] };
  const expected = product(shape) * DTYPE_SIZE[entry.dtype];
  if (entry.end - entry.begin !== expected) {
    fail(
      path,
      `tensor '${name}' with shape [${shape.join(', ')}] and dtype ${dtype} needs ${expected} bytes, ` +
        `but data_offsets [${entry.begin}, ${entry.end}] span ${entry.end - entry.begin} bytes`,
    );
  }
  return entry;
}

function parseMetadata(path: string, raw: unknown): Record<string, string> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(path, '__metadata__ must be an object of strings');
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') fail(path, `__metadata__ value for '${k}' must be a string, got ${JSON.stringify(v)}`);
  }
  return raw as Record<string, string>;
}

/**
 * Parse and validate the JSON header. Entries come back sorted by data offset,
 * checked to tile [0, dataBytes) without gaps or overlaps.
 */
function parseHeader(path: string, json: Buffer, dataBytes: number): { entries: HeaderEntry[]; metadata: Record<string, string> } {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch {
    fail(path, 'header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    fail(path, `header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(path, 'header JSON must be an object');
  let metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') metadata = parseMetadata(path, raw);
    else entries.push(parseEntry(path, name, raw));
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expectedStart = 0;
  for (const e of entries) {
    if (e.begin !== expectedStart) {
      fail(path, `tensor '${e.name}' data_offsets start at ${e.begin}, expected ${expectedStart} (offsets must be contiguous from 0)`);
    }
    expectedStart = e.end;
  }
  if (expectedStart !== dataBytes) {
    fail(path, `tensors end at byte ${expectedStart} of the data section, but the file has ${dataBytes} data bytes after the header`);
  }
  return { entries, metadata };
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero and subnormals
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Copy (possibly unaligned) bytes into a fresh typed array of the same byte length. */
function copyInto<T extends ArrayBufferView>(out: T, bytes: Uint8Array): T {
  new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(bytes);
  return out;
}

/** Decode raw little-endian bytes of one tensor (`bytes.byteLength` must be a multiple of the dtype size). */
export function decodeTensorBytes(dtype: SafetensorsDtype, bytes: Uint8Array): TensorData {
  assertLittleEndianHost();
  const n = bytes.byteLength / DTYPE_SIZE[dtype];
  switch (dtype) {
    case 'F32':
      return copyInto(new Float32Array(n), bytes);
    case 'I32':
      return copyInto(new Int32Array(n), bytes);
    case 'I64':
      return copyInto(new BigInt64Array(n), bytes);
    case 'F64':
      return Float32Array.from(copyInto(new Float64Array(n), bytes));
    case 'BF16': {
      // bfloat16 is the top half of a float32: shift the 16 bits into place.
      const src = copyInto(new Uint16Array(n), bytes);
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
      return out;
    }
    case 'F16': {
      const src = copyInto(new Uint16Array(n), bytes);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(src[i]);
      return out;
    }
  }
}

/**
 * Read a safetensors file completely.
 *
 * Dtypes F32, F16, BF16, F64 decode to Float32Array (F64 rounds to nearest
 * float32), I64 to BigInt64Array, I32 to Int32Array; `dtype` keeps the stored
 * dtype. Zero-size tensors are allowed.
 *
 * @param path file to read.
 * @returns tensors in file-offset order and the `__metadata__` map.
 * @throws Error naming the file when it is a Git LFS pointer or a zip archive,
 *   the header length exceeds 100,000,000 bytes or the file, the header is not
 *   JSON, a dtype is unknown, a tensor's byte count disagrees with shape × dtype
 *   size, offsets are not contiguous from 0, the file does not end at the last
 *   offset, or a `__metadata__` value is not a string.
 */
export async function readSafetensors(path: string): Promise<SafetensorsContents> {
  assertLittleEndianHost();
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new Error(`safetensors file ${path}: cannot open (${(err as Error).message})`, { cause: err });
  }
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(Math.min(size, 64));
    await readFully(fh, head, 0);
    sniffWrongFormat(path, head);
    if (size < 8) fail(path, `is ${size} bytes, too short for the 8-byte header length`);
    const headerLen = head.readBigUInt64LE(0);
    if (headerLen > BigInt(MAX_HEADER_BYTES)) fail(path, `header length ${headerLen} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
    const n = Number(headerLen);
    if (8 + n > size) fail(path, `header length ${n} runs past the end of the file (${size} bytes)`);
    const json = Buffer.alloc(n);
    await readFully(fh, json, 8);
    const dataStart = 8 + n;
    const { entries, metadata } = parseHeader(path, json, size - dataStart);
    const tensors = new Map<string, Tensor>();
    for (const e of entries) {
      tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: await readTensor(fh, e, dataStart) });
    }
    return { tensors, metadata };
  } finally {
    await fh.close();
  }
}

/** Read one tensor; F32/I32/I64 go straight into their typed array, other dtypes through a byte buffer. */
async function readTensor(fh: FileHandle, e: HeaderEntry, dataStart: number): Promise<TensorData> {
  const count = (e.end - e.begin) / DTYPE_SIZE[e.dtype];
  const direct = e.dtype === 'F32' ? new Float32Array(count) : e.dtype === 'I32' ? new Int32Array(count) : e.dtype === 'I64' ? new BigInt64Array(count) : null;
  if (direct) {
    await readFully(fh, new Uint8Array(direct.buffer), dataStart + e.begin);
    return direct;
  }
  const bytes = Buffer.allocUnsafe(e.end - e.begin);
  await readFully(fh, bytes, dataStart + e.begin);
  return decodeTensorBytes(e.dtype, bytes);
}

async function readFully(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.byteLength) {
    const { bytesRead } = await fh.read(buf, done, buf.byteLength - done, position + done);
    if (bytesRead === 0) throw new Error(`unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
}

function dtypeOf(data: TensorData): SafetensorsDtype {
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof Int32Array) return 'I32';
  if (data instanceof BigInt64Array) return 'I64';
  throw new Error('unsupported tensor array type');
}

/**
 * Serialise tensors to safetensors bytes: header length, JSON header padded
 * with spaces to a multiple of 8 bytes, then tensor data in the given order.
 *
 * @throws Error naming the tensor when its shape does not match its length, or
 *   a metadata value is not a string.
 */
export function encodeSafetensors(
  tensors: Map<string, TensorToWrite> | Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Uint8Array[] {
  assertLittleEndianHost();
  const list = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`safetensors metadata value for '${k}' must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  const chunks: Uint8Array[] = [];
  for (const [name, t] of list) {
    if (name === '__metadata__') throw new Error("'__metadata__' is reserved and cannot be a tensor name");
    if (!t.shape.every(isNonNegInt) || product(t.shape) !== t.data.length) {
      throw new Error(`tensor '${name}': shape [${t.shape.join(', ')}] does not match its ${t.data.length} elements`);
    }
    const dtype = dtypeOf(t.data);
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
    chunks.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Buffer.alloc(Math.ceil(json.length / 8) * 8, 0x20);
  json.copy(padded);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(padded.length));
  return [len, padded, ...chunks];
}

/**
 * Write tensors to a safetensors file atomically (temporary file in the same
 * folder, fsync, rename). Float32Array → F32, Int32Array → I32, BigInt64Array → I64.
 *
 * @param path destination; its folder must exist.
 * @param tensors name → {shape, data}; written in iteration order.
 * @param metadata optional `__metadata__` (transformers requires {format: 'pt'} to load a model).
 * @throws Error naming the file or tensor on invalid input or I/O failure.
 */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, TensorToWrite> | Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Promise<void> {
  let chunks: Uint8Array[];
  try {
    chunks = encodeSafetensors(tensors, metadata);
  } catch (err) {
    throw new Error(`safetensors file ${path}: ${(err as Error).message}`, { cause: err });
  }
  await writeFileAtomic(path, chunks);
}
