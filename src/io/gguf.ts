/**
 * GGUF reader and writer (ggml's docs/gguf.md; llama.cpp's ggml/src/gguf.cpp and the `gguf`
 * Python package are the implementations this follows and is tested against).
 *
 * Layout (little-endian; v2 and v3 share it — v3 only added big-endian files, which are
 * refused here): magic "GGUF", u32 version, u64 tensor_count, u64 metadata_kv_count, the
 * key/value pairs (u64-length UTF-8 key, u32 value type, value), the tensor infos (name,
 * u32 n_dims ≤ 4, u64 ne[n_dims] with ne[0] the fastest-varying dimension, u32 ggml type,
 * u64 offset relative to the data section), zero padding to `general.alignment` (default
 * 32), then the tensor data, each tensor at an aligned offset.
 *
 * The reader treats the file as untrusted. It reads through a file handle at offsets (never
 * the whole file), and checks every count, length, dimension, element count (in BigInt, so
 * nothing overflows), byte size and offset against the bytes the file actually has before it
 * allocates or uses it. Tensor data is read lazily, one tensor at a time. A bad file is an
 * Error whose message names the file, the key or tensor, and what is wrong.
 */
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { dirname } from 'node:path';
import { fsyncDir, tempPathFor } from './atomic.js';
import { dequantize, ggmlTypeByCode, ggmlTypeByName, quantizeF16, quantizeQ8_0, type GgmlTypeInfo } from './gguf-quants.js';

export {
  dequantize,
  quantizeQ8_0,
  quantizeF16,
  floatToHalfBits,
  ggmlTypeByCode,
  ggmlTypeByName,
  GGML_TYPES,
  DEQUANTIZABLE_TYPES,
  type GgmlTypeInfo,
} from './gguf-quants.js';

/** Metadata value types whose values are JS numbers. */
export type GgufNumberType = 'uint8' | 'int8' | 'uint16' | 'int16' | 'uint32' | 'int32' | 'float32' | 'float64';
/** Metadata value types whose values are bigints. */
export type GgufBigIntType = 'uint64' | 'int64';
/** Every GGUF metadata value type (gguf_metadata_value_type). */
export type GgufValueType = GgufNumberType | GgufBigIntType | 'bool' | 'string' | 'array';

interface NumericArrays {
  uint8: Uint8Array;
  int8: Int8Array;
  uint16: Uint16Array;
  int16: Int16Array;
  uint32: Uint32Array;
  int32: Int32Array;
  float32: Float32Array;
  float64: Float64Array;
  uint64: BigUint64Array;
  int64: BigInt64Array;
}

/**
 * A GGUF array: its item type and items. Numeric items come as the matching typed array
 * (float32 values exact in a Float32Array), strings as string[], and arrays of arrays as
 * GgufArray[] — each inner array carries its own item type, as in the file.
 */
export type GgufArray =
  | { [K in keyof NumericArrays]: { itemType: K; items: NumericArrays[K] } }[keyof NumericArrays]
  | { itemType: 'bool'; items: boolean[] }
  | { itemType: 'string'; items: string[] }
  | { itemType: 'array'; items: GgufArray[] };

/** One typed metadata value (float32 values are the exact float32 value as a JS number). */
export type GgufValue =
  | { type: GgufNumberType; value: number }
  | { type: GgufBigIntType; value: bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; value: GgufArray };

/** One tensor as described by the file's tensor info. */
export interface GgufTensorInfo {
  name: string;
  /** ggml type name (`'Q4_1'`); see GGML_TYPES. */
  type: string;
  /** GGUF dims, ne[0] fastest (as stored). */
  ne: number[];
  /** Row-major (torch/numpy) shape: ne reversed. */
  shape: number[];
  /** Number of values (product of ne; 1 for n_dims = 0). */
  nElements: number;
  /** Absolute file offset of the data, in bytes. */
  offset: number;
  /** Size of the data in bytes (nElements / block size · bytes per block). */
  byteLength: number;
}

/** What the header of a GGUF file says, validated. */
export interface GgufHeader {
  path: string;
  /** 2 or 3. */
  version: number;
  /** File size in bytes when it was read. */
  fileSize: number;
  /** Data alignment in bytes (general.alignment, default 32). */
  alignment: number;
  /** Absolute file offset of the data section. */
  dataOffset: number;
  /** Metadata in file order. */
  metadata: Map<string, GgufValue>;
  /** Tensor infos in file order. */
  tensors: GgufTensorInfo[];
}

/** Default data alignment when general.alignment is absent (gguf.md, GGUF_DEFAULT_ALIGNMENT). */
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** Longest tensor name llama.cpp accepts: GGML_MAX_NAME (64) less the NUL. */
export const GGUF_MAX_TENSOR_NAME_BYTES = 63;
/** Longest metadata key (gguf.md: "at most 2^16-1 bytes long"). */
export const GGUF_MAX_KEY_BYTES = 65535;
/** Longest metadata string read (a JS string cannot hold much more; real values are kilobytes). */
export const GGUF_MAX_STRING_BYTES = 256 * 1024 * 1024;
/** Most elements in one metadata array (llama.cpp's GGUF_MAX_ARRAY_ELEMENTS). */
export const GGUF_MAX_ARRAY_ELEMENTS = 1024 * 1024 * 1024;
/** Deepest nesting of arrays of arrays read (bounds recursion; real files nest at most once). */
export const GGUF_MAX_ARRAY_DEPTH = 16;
/** Most dimensions of a tensor (GGML_MAX_DIMS). */
export const GGUF_MAX_DIMS = 4;

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const VALUE_TYPES: readonly GgufValueType[] = [
  'uint8', 'int8', 'uint16', 'int16', 'uint32', 'int32', 'float32', 'bool', 'string', 'array', 'uint64', 'int64', 'float64',
];
const TYPE_CODE = new Map<GgufValueType, number>(VALUE_TYPES.map((t, i) => [t, i]));
/** Bytes per item of the fixed-size types. */
const FIXED_SIZE: Partial<Record<GgufValueType, number>> = {
  uint8: 1, int8: 1, bool: 1, uint16: 2, int16: 2, uint32: 4, int32: 4, float32: 4, uint64: 8, int64: 8, float64: 8,
};
// Least bytes a value of each type can occupy: a string is at least its u64 length, an array
// at least its u32 item type and u64 count. Bounds counts by what the file could hold.
function minValueBytes(t: GgufValueType): number {
  return FIXED_SIZE[t] ?? (t === 'string' ? 8 : 12);
}
const MIN_KV_BYTES = 8 + 1 + 4 + 1; // key length, a 1-byte key, value type, a 1-byte value
const MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8; // name length, 1-byte name, n_dims, type, offset
const INT64_MAX = (1n << 63n) - 1n;
const READ_CHUNK = 1 << 20;
const LFS_MAGIC = 'version https://git-lfs';
const utf8 = new TextDecoder('utf-8', { fatal: true });

function assertLittleEndianHost(): void {
  if (endianness() !== 'LE') throw new Error('GGUF: big-endian hosts are not supported');
}

/** Bytes of a file read through a handle in chunks, with a cursor; every read is bounds-checked. */
class Cursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  pos = 0;
  /** What is being read, for error messages ("key 'general.name'"). */
  where = 'header';

  constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    readonly size: number,
  ) {}

  fail(what: string): never {
    throw new Error(`${this.path}: ${this.where}: ${what}`);
  }

  remaining(): number {
    return this.size - this.pos;
  }

  /** Make bytes [pos, pos + n) available, or fail naming `what` when the file ends first. */
  async need(n: number, what: string): Promise<void> {
    if (this.pos + n <= this.bufStart + this.buf.length) return;
    if (n > this.size - this.pos) {
      this.fail(`${what} needs ${n} bytes at offset ${this.pos}, but the file ends at byte ${this.size} (truncated?)`);
    }
    const want = Math.min(Math.max(n, READ_CHUNK), this.size - this.pos);
    const next = Buffer.allocUnsafe(want);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await this.fh.read(next, got, want - got, this.pos + got);
      if (bytesRead === 0) this.fail(`the file ended at byte ${this.pos + got} while reading ${what} (was it truncated while being read?)`);
      got += bytesRead;
    }
    this.buf = next;
    this.bufStart = this.pos;
  }

  private at(): number {
    return this.pos - this.bufStart;
  }

  // The take* methods assume need() covered them.
  u8(): number {
    const v = this.buf[this.at()];
    this.pos += 1;
    return v;
  }
  u32(): number {
    const v = this.buf.readUInt32LE(this.at());
    this.pos += 4;
    return v;
  }
  u64(): bigint {
    const v = this.buf.readBigUInt64LE(this.at());
    this.pos += 8;
    return v;
  }
  bytes(n: number): Buffer {
    const s = this.at();
    this.pos += n;
    return this.buf.subarray(s, s + n);
  }

  async readU32(what: string): Promise<number> {
    await this.need(4, what);
    return this.u32();
  }
  async readU64(what: string): Promise<bigint> {
    await this.need(8, what);
    return this.u64();
  }

  /**
   * The string at the cursor when it lies wholly inside the buffer (length ≤ maxBytes), else
   * undefined with the cursor unmoved — lets the 100k-entry token lists parse without an
   * await per string.
   */
  takeBufferedString(what: string, maxBytes: number): string | undefined {
    const at = this.at();
    if (at + 8 > this.buf.length) return undefined;
    const len = this.buf.readBigUInt64LE(at);
    if (len > BigInt(maxBytes) || at + 8 + Number(len) > this.buf.length) return undefined;
    this.pos += 8;
    try {
      return utf8.decode(this.bytes(Number(len)));
    } catch {
      this.fail(`${what} is not valid UTF-8`);
    }
  }

  /** A gguf_string_t: u64 length, then that many bytes of UTF-8. */
  async readString(what: string, maxBytes: number): Promise<string> {
    const len = await this.readU64(`the length of ${what}`);
    if (len > BigInt(maxBytes)) this.fail(`${what} is ${len} bytes long, more than the limit of ${maxBytes}`);
    if (len > BigInt(this.remaining())) {
      this.fail(`${what} is ${len} bytes long, but only ${this.remaining()} bytes remain in the file (${this.size} bytes)`);
    }
    const n = Number(len);
    await this.need(n, what);
    try {
      return utf8.decode(this.bytes(n));
    } catch {
      this.fail(`${what} is not valid UTF-8`);
    }
  }
}

function valueTypeName(code: number): GgufValueType | undefined {
  return VALUE_TYPES[code];
}

async function readValue(c: Cursor, type: GgufValueType, depth: number): Promise<GgufValue> {
  if (type === 'array') return { type, value: await readArray(c, depth + 1) };
  if (type === 'string') return { type, value: await c.readString('the string value', GGUF_MAX_STRING_BYTES) };
  await c.need(FIXED_SIZE[type]!, `the ${type} value`);
  return readFixed(c, type);
}

function readFixed(c: Cursor, type: GgufValueType): GgufValue {
  const b = c.bytes(FIXED_SIZE[type]!);
  switch (type) {
    case 'uint8': return { type, value: b[0] };
    case 'int8': return { type, value: b.readInt8(0) };
    case 'uint16': return { type, value: b.readUInt16LE(0) };
    case 'int16': return { type, value: b.readInt16LE(0) };
    case 'uint32': return { type, value: b.readUInt32LE(0) };
    case 'int32': return { type, value: b.readInt32LE(0) };
    case 'float32': return { type, value: b.readFloatLE(0) };
    case 'float64': return { type, value: b.readDoubleLE(0) };
    case 'uint64': return { type, value: b.readBigUInt64LE(0) };
    case 'int64': return { type, value: b.readBigInt64LE(0) };
    case 'bool':
      if (b[0] > 1) c.fail(`bool value is ${b[0]}; it must be 0 or 1`);
      return { type, value: b[0] === 1 };
    default:
      throw new Error(`unreachable: ${type}`);
  }
}

const NUMERIC_ARRAY: { [K in keyof NumericArrays]: new (buf: ArrayBuffer) => NumericArrays[K] } = {
  uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int16: Int16Array, uint32: Uint32Array, int32: Int32Array,
  float32: Float32Array, float64: Float64Array, uint64: BigUint64Array, int64: BigInt64Array,
};

async function readArray(c: Cursor, depth: number): Promise<GgufArray> {
  if (depth > GGUF_MAX_ARRAY_DEPTH) c.fail(`arrays nested more than ${GGUF_MAX_ARRAY_DEPTH} deep`);
  const code = await c.readU32('the array item type');
  const itemType = valueTypeName(code);
  if (!itemType) c.fail(`array has unknown item type ${code} (valid types are 0-${VALUE_TYPES.length - 1})`);
  const count = await c.readU64('the array length');
  const minBytes = BigInt(minValueBytes(itemType));
  if (count > BigInt(GGUF_MAX_ARRAY_ELEMENTS)) c.fail(`array of ${count} ${itemType} items is longer than the limit of ${GGUF_MAX_ARRAY_ELEMENTS}`);
  if (count * minBytes > BigInt(c.remaining())) {
    c.fail(
      `array of ${count} ${itemType} items needs at least ${count * minBytes} bytes, ` +
        `but only ${c.remaining()} bytes remain in the file (${c.size} bytes)`,
    );
  }
  const n = Number(count);
  if (itemType === 'string') {
    const items: string[] = new Array(n);
    for (let i = 0; i < n; i++) {
      items[i] = c.takeBufferedString(`array item ${i}`, GGUF_MAX_STRING_BYTES) ?? (await c.readString(`array item ${i}`, GGUF_MAX_STRING_BYTES));
    }
    return { itemType, items };
  }
  if (itemType === 'array') {
    const items: GgufArray[] = new Array(n);
    for (let i = 0; i < n; i++) items[i] = await readArray(c, depth + 1);
    return { itemType, items };
  }
  const size = FIXED_SIZE[itemType]!;
  await c.need(n * size, `${n} ${itemType} array items`);
  const raw = c.bytes(n * size);
  if (itemType === 'bool') {
    const items: boolean[] = new Array(n);
    for (let i = 0; i < n; i++) {
      if (raw[i] > 1) c.fail(`bool array item ${i} is ${raw[i]}; it must be 0 or 1`);
      items[i] = raw[i] === 1;
    }
    return { itemType, items };
  }
  // Copy into a fresh, aligned buffer so the typed array can view it directly.
  const copy = new Uint8Array(n * size);
  copy.set(raw);
  return { itemType, items: new NUMERIC_ARRAY[itemType](copy.buffer) } as GgufArray;
}

function describeDim(v: bigint): string {
  return v > INT64_MAX ? `${v} (${v - (1n << 64n)} as int64)` : String(v);
}

function padTo(x: number, alignment: number): number {
  return Math.ceil(x / alignment) * alignment;
}

interface RawTensorInfo {
  name: string;
  type: GgmlTypeInfo;
  ne: number[];
  nElements: number;
  byteLength: number;
  relOffset: bigint;
}

async function readTensorInfo(c: Cursor, index: number, seen: Set<string>): Promise<RawTensorInfo> {
  c.where = `tensor #${index}`;
  const name = await c.readString('the tensor name', GGUF_MAX_KEY_BYTES);
  if (name.length === 0) c.fail('tensor name is empty');
  const nameBytes = Buffer.byteLength(name, 'utf8');
  if (nameBytes > GGUF_MAX_TENSOR_NAME_BYTES) {
    c.fail(`tensor name '${name.slice(0, 80)}' is ${nameBytes} bytes long; llama.cpp allows at most ${GGUF_MAX_TENSOR_NAME_BYTES}`);
  }
  c.where = `tensor '${name}'`;
  if (seen.has(name)) c.fail('duplicate tensor name');
  seen.add(name);
  const nDims = await c.readU32('n_dims');
  if (nDims > GGUF_MAX_DIMS) c.fail(`n_dims is ${nDims}; at most ${GGUF_MAX_DIMS} dimensions are allowed`);
  const ne: bigint[] = [];
  let product = 1n;
  for (let j = 0; j < nDims; j++) {
    const d = await c.readU64(`dimension ${j}`);
    if (d === 0n || d > INT64_MAX) c.fail(`dimension ${j} is ${describeDim(d)}; every dimension must be at least 1`);
    ne.push(d);
    product *= d;
    if (product > INT64_MAX) c.fail(`dimensions [${ne.join(', ')}${j + 1 < nDims ? ', ...' : ''}] multiply to more than ${INT64_MAX} elements (int64 overflow)`);
  }
  const code = await c.readU32('the ggml type');
  const type = ggmlTypeByCode(code);
  if (!type) c.fail(`unknown ggml type code ${code}`);
  const ne0 = ne.length > 0 ? ne[0] : 1n;
  if (ne0 % BigInt(type.blockSize) !== 0n) {
    c.fail(`type ${type.name} stores blocks of ${type.blockSize} values, but the row length ne[0] = ${ne0} is not a multiple of it`);
  }
  const byteLength = (product / BigInt(type.blockSize)) * BigInt(type.typeSize);
  if (byteLength > BigInt(c.size)) {
    c.fail(`shape [${ne.join(', ')}] of type ${type.name} needs ${byteLength} bytes, more than the whole file (${c.size} bytes)`);
  }
  const relOffset = await c.readU64('the data offset');
  // byteLength ≤ file size, so the element count (at most 256/2 · bytes for any type) is a safe integer.
  return { name, type, ne: ne.map(Number), nElements: Number(product), byteLength: Number(byteLength), relOffset };
}

/**
 * Read and validate the header of a GGUF file (metadata and tensor infos); no tensor data
 * is read.
 *
 * @param path a GGUF v2 or v3 little-endian file.
 * @returns the header; see {@link GgufHeader}.
 * @throws Error naming the file, the key or tensor, and the fault: not GGUF (or a Git LFS
 *   pointer), unsupported version or a big-endian file, counts or lengths the file cannot
 *   hold, truncation, invalid UTF-8, duplicate keys or tensor names, unknown value or ggml
 *   types, bad general.alignment, more than 4 dimensions, zero or negative dimensions,
 *   element-count overflow, a row length that is not a whole number of blocks, and tensor
 *   data that is misaligned, overlaps another tensor's or extends past the end of the file.
 */
export async function readGgufHeader(path: string): Promise<GgufHeader> {
  const fh = await openForRead(path);
  try {
    return await parseHeader(fh, path);
  } finally {
    await fh.close();
  }
}

async function openForRead(path: string): Promise<FileHandle> {
  assertLittleEndianHost();
  try {
    return await open(path, 'r');
  } catch (err) {
    throw new Error(`${path}: cannot open GGUF file: ${(err as Error).message}`, { cause: err });
  }
}

async function parseHeader(fh: FileHandle, path: string): Promise<GgufHeader> {
  const stat = await fh.stat();
  if (!stat.isFile()) throw new Error(`${path}: not a regular file`);
  const c: Cursor = new Cursor(fh, path, stat.size);
  await c.need(Math.min(24, c.size), 'the header');
  if (c.size >= LFS_MAGIC.length && c.bytes(LFS_MAGIC.length).toString('latin1') === LFS_MAGIC) {
    c.fail('is a Git LFS pointer file, not the model; run `git lfs pull` in the repository (or download the file itself)');
  }
  c.pos = 0;
  if (c.size < 4) c.fail(`the file is ${c.size} bytes, too short for the 4-byte GGUF magic`);
  const magic = c.u32();
  if (magic !== MAGIC) {
    const shown = Buffer.alloc(4);
    shown.writeUInt32LE(magic);
    c.fail(`not a GGUF file: magic is ${JSON.stringify(shown.toString('latin1'))} (${shown.toString('hex')}), expected "GGUF"`);
  }
  const version = await c.readU32('the version');
  if (version !== 0 && (version & 0xffff) === 0) {
    c.fail(`version field reads ${version}: this is a big-endian GGUF file, which is not supported (only little-endian)`);
  }
  if (version === 1) c.fail('GGUF version 1 is not supported (it used 32-bit lengths); convert the file to version 3');
  if (version !== 2 && version !== 3) c.fail(`unsupported GGUF version ${version} (supported: 2 and 3)`);
  const nTensors = await c.readU64('tensor_count');
  const nKv = await c.readU64('metadata_kv_count');
  const room = BigInt(c.remaining());
  if (nKv * BigInt(MIN_KV_BYTES) > room) {
    c.fail(`metadata_kv_count ${nKv} cannot fit: each key/value pair needs at least ${MIN_KV_BYTES} bytes, and ${room} bytes remain in the file`);
  }
  if (nTensors * BigInt(MIN_TENSOR_INFO_BYTES) + nKv * BigInt(MIN_KV_BYTES) > room) {
    c.fail(`tensor_count ${nTensors} cannot fit: each tensor info needs at least ${MIN_TENSOR_INFO_BYTES} bytes, and ${room} bytes remain in the file`);
  }

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < Number(nKv); i++) {
    c.where = `key #${i}`;
    const key = await c.readString('the key', GGUF_MAX_KEY_BYTES);
    if (key.length === 0) c.fail('key is empty');
    c.where = `key '${key}'`;
    if (metadata.has(key)) c.fail('duplicate key');
    const code = await c.readU32('the value type');
    const type = valueTypeName(code);
    if (!type) c.fail(`unknown value type ${code} (valid types are 0-${VALUE_TYPES.length - 1})`);
    metadata.set(key, await readValue(c, type, 0));
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const align = metadata.get('general.alignment');
  if (align) {
    c.where = "key 'general.alignment'";
    if (align.type !== 'uint32') c.fail(`must be of type uint32, but is ${align.type}`);
    alignment = align.value;
    if (alignment === 0 || (alignment & (alignment - 1)) !== 0) c.fail(`alignment ${alignment} is not a power of two`);
  }

  const raw: RawTensorInfo[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < Number(nTensors); i++) raw.push(await readTensorInfo(c, i, seen));
  const dataOffset = padTo(c.pos, alignment);

  const tensors: GgufTensorInfo[] = raw.map((t) => {
    c.where = `tensor '${t.name}'`;
    if (t.relOffset % BigInt(alignment) !== 0n) c.fail(`data offset ${t.relOffset} is not a multiple of the alignment ${alignment}`);
    const end = BigInt(dataOffset) + t.relOffset + BigInt(t.byteLength);
    if (end > BigInt(c.size)) {
      c.fail(
        `data [offset ${BigInt(dataOffset) + t.relOffset}, ${t.byteLength} bytes] extends past the end of the file (${c.size} bytes)`,
      );
    }
    return {
      name: t.name,
      type: t.type.name,
      ne: t.ne,
      shape: [...t.ne].reverse(),
      nElements: t.nElements,
      offset: dataOffset + Number(t.relOffset),
      byteLength: t.byteLength,
    };
  });
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const prev = byOffset[i - 1];
    const t = byOffset[i];
    if (t.offset < prev.offset + prev.byteLength) {
      c.where = `tensor '${t.name}'`;
      c.fail(`data at offset ${t.offset} overlaps tensor '${prev.name}' (offset ${prev.offset}, ${prev.byteLength} bytes)`);
    }
  }
  return { path, version, fileSize: c.size, alignment, dataOffset, metadata, tensors };
}

/**
 * An open GGUF file: the validated header plus lazy, per-tensor data reads. Close it when done.
 */
export class GgufFile implements GgufHeader {
  readonly path: string;
  readonly version: number;
  readonly fileSize: number;
  readonly alignment: number;
  readonly dataOffset: number;
  readonly metadata: Map<string, GgufValue>;
  readonly tensors: GgufTensorInfo[];
  private readonly byName: Map<string, GgufTensorInfo>;
  private closed = false;

  /** @internal use {@link openGguf}. */
  constructor(
    private readonly fh: FileHandle,
    header: GgufHeader,
  ) {
    this.path = header.path;
    this.version = header.version;
    this.fileSize = header.fileSize;
    this.alignment = header.alignment;
    this.dataOffset = header.dataOffset;
    this.metadata = header.metadata;
    this.tensors = header.tensors;
    this.byName = new Map(header.tensors.map((t) => [t.name, t]));
  }

  /** The tensor info of `name`, or undefined. */
  tensor(name: string): GgufTensorInfo | undefined {
    return this.byName.get(name);
  }

  private info(nameOrInfo: string | GgufTensorInfo): GgufTensorInfo {
    const name = typeof nameOrInfo === 'string' ? nameOrInfo : nameOrInfo.name;
    const t = this.byName.get(name);
    if (!t) throw new Error(`${this.path}: no tensor '${name}' in the file`);
    return t;
  }

  /**
   * The raw bytes of one tensor (blocks as stored).
   * @returns Uint8Array of `byteLength` bytes.
   * @throws Error naming the file and tensor when there is no such tensor, the file is closed,
   *   or the file got shorter since it was opened.
   */
  async readTensorBytes(nameOrInfo: string | GgufTensorInfo): Promise<Uint8Array> {
    const t = this.info(nameOrInfo);
    if (this.closed) throw new Error(`${this.path}: tensor '${t.name}': the file is closed`);
    const out = Buffer.allocUnsafe(t.byteLength);
    let got = 0;
    while (got < t.byteLength) {
      const { bytesRead } = await this.fh.read(out, got, t.byteLength - got, t.offset + got);
      if (bytesRead === 0) {
        throw new Error(`${this.path}: tensor '${t.name}': the file ended at byte ${t.offset + got} (it was ${this.fileSize} bytes when opened)`);
      }
      got += bytesRead;
    }
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  }

  /**
   * One tensor dequantized to float32.
   * @returns Float32Array of `nElements` values, row-major over `shape` (GGUF order, ne[0] fastest).
   * @throws Error naming the file, tensor and type when the type cannot be dequantized
   *   (see DEQUANTIZABLE_TYPES), or as {@link readTensorBytes}.
   */
  async readTensor(nameOrInfo: string | GgufTensorInfo): Promise<Float32Array> {
    const t = this.info(nameOrInfo);
    const bytes = await this.readTensorBytes(t);
    try {
      return dequantize(t.type, bytes, t.nElements, t.name);
    } catch (err) {
      throw new Error(`${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Close the file handle (idempotent). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}

/**
 * Open a GGUF file: read and validate its header (as {@link readGgufHeader}) and keep the
 * handle open for lazy tensor reads.
 * @throws as readGgufHeader; the handle is closed when validation fails.
 */
export async function openGguf(path: string): Promise<GgufFile> {
  const fh = await openForRead(path);
  try {
    return new GgufFile(fh, await parseHeader(fh, path));
  } catch (err) {
    await fh.close();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------
// Writing

/** A float32 tensor to write, converted to F32, F16 or Q8_0 on the way out. */
export interface GgufTensorToWrite {
  name: string;
  /** Row-major (torch/numpy) shape, at most 4 dims; written as ne = shape reversed. */
  shape: number[];
  type: 'F32' | 'F16' | 'Q8_0';
  /** The values, row-major; or a function giving them, called once when the tensor is written (so a large model need not be held twice). */
  data: Float32Array | (() => Float32Array | Promise<Float32Array>);
}

/** A tensor whose bytes are already in a ggml type (copied through as they are). */
export interface GgufRawTensorToWrite {
  name: string;
  shape: number[];
  /** Any ggml type name (GGML_TYPES). */
  type: string;
  bytes: Uint8Array;
}

/** What {@link writeGguf} writes. */
export interface GgufContents {
  /** Metadata in the order to write it. general.alignment (uint32), when present, sets the alignment. */
  metadata: Map<string, GgufValue> | Iterable<[string, GgufValue]>;
  tensors: Array<GgufTensorToWrite | GgufRawTensorToWrite>;
}

/** Little-endian bytes appended to a growing buffer. */
class ByteWriter {
  private buf = Buffer.alloc(4096);
  length = 0;

  private room(n: number): number {
    if (this.length + n > this.buf.length) {
      const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
      this.buf.copy(next, 0, 0, this.length);
      this.buf = next;
    }
    const at = this.length;
    this.length += n;
    return at;
  }
  // room() may replace this.buf, so it is called before this.buf is read.
  u8(v: number): void {
    const at = this.room(1);
    this.buf[at] = v;
  }
  u32(v: number): void {
    const at = this.room(4);
    this.buf.writeUInt32LE(v, at);
  }
  u64(v: bigint | number): void {
    const at = this.room(8);
    this.buf.writeBigUInt64LE(BigInt(v), at);
  }
  raw(b: Uint8Array): void {
    const at = this.room(b.length);
    this.buf.set(b, at);
  }
  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.raw(b);
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

const INT_RANGE: Record<string, [number, number]> = {
  uint8: [0, 255], int8: [-128, 127], uint16: [0, 65535], int16: [-32768, 32767],
  uint32: [0, 4294967295], int32: [-2147483648, 2147483647],
};
const BIG_RANGE: Record<GgufBigIntType, [bigint, bigint]> = { uint64: [0n, (1n << 64n) - 1n], int64: [-(1n << 63n), INT64_MAX] };

/** A caller's mistake in what it asked writeGguf to write (as opposed to a failed write). */
class GgufInputError extends Error {}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function checkString(s: unknown, what: () => string): string {
  if (typeof s !== 'string') throw new GgufInputError(`${what()}: expected a string, got ${typeof s}`);
  // TextEncoder would silently replace a lone surrogate with U+FFFD.
  if (LONE_SURROGATE.test(s)) throw new GgufInputError(`${what()}: string has a lone surrogate (not encodable as UTF-8)`);
  return s;
}

function writeScalar(w: ByteWriter, type: GgufValueType, v: unknown, what: () => string): void {
  if (type in INT_RANGE) {
    const [lo, hi] = INT_RANGE[type];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
      throw new GgufInputError(`${what()}: ${type} value must be an integer in [${lo}, ${hi}], got ${String(v)}`);
    }
  }
  switch (type) {
    case 'uint8': w.u8(v as number); return;
    case 'int8': w.u8((v as number) & 255); return;
    case 'uint16': case 'int16': { const b = Buffer.alloc(2); b.writeUInt16LE((v as number) & 0xffff); w.raw(b); return; }
    case 'uint32': w.u32(v as number); return;
    case 'int32': w.u32((v as number) >>> 0); return;
    case 'float32': case 'float64': {
      if (typeof v !== 'number') throw new GgufInputError(`${what()}: ${type} value must be a number, got ${typeof v}`);
      const b = Buffer.alloc(type === 'float32' ? 4 : 8);
      if (type === 'float32') b.writeFloatLE(v); else b.writeDoubleLE(v);
      w.raw(b);
      return;
    }
    case 'uint64': case 'int64': {
      const [lo, hi] = BIG_RANGE[type];
      if (typeof v !== 'bigint' || v < lo || v > hi) throw new GgufInputError(`${what()}: ${type} value must be a bigint in [${lo}, ${hi}], got ${String(v)}`);
      w.u64(BigInt.asUintN(64, v));
      return;
    }
    case 'bool':
      if (typeof v !== 'boolean') throw new GgufInputError(`${what()}: bool value must be true or false, got ${String(v)}`);
      w.u8(v ? 1 : 0);
      return;
    case 'string':
      w.string(checkString(v, what));
      return;
    default:
      throw new GgufInputError(`${what()}: unknown value type '${String(type)}'`);
  }
}

function writeArray(w: ByteWriter, a: GgufArray, what: () => string, depth: number): void {
  if (depth > GGUF_MAX_ARRAY_DEPTH) throw new GgufInputError(`${what()}: arrays nested more than ${GGUF_MAX_ARRAY_DEPTH} deep`);
  if (!a || typeof a !== 'object' || !TYPE_CODE.has(a.itemType)) {
    throw new GgufInputError(`${what()}: array must be { itemType, items } with a GGUF item type, got item type ${String(a?.itemType)}`);
  }
  const items = a.items as ArrayLike<unknown>;
  if (!items || typeof items.length !== 'number') throw new GgufInputError(`${what()}: array items must be an array`);
  w.u32(TYPE_CODE.get(a.itemType)!);
  w.u64(items.length);
  for (let i = 0; i < items.length; i++) {
    const at = (): string => `${what()}[${i}]`;
    if (a.itemType === 'array') writeArray(w, items[i] as GgufArray, at, depth + 1);
    else writeScalar(w, a.itemType, items[i], at);
  }
}

function tensorError(name: string, what: string): Error {
  return new GgufInputError(`tensor '${name}': ${what}`);
}

interface PlannedTensor {
  name: string;
  type: GgmlTypeInfo;
  ne: number[];
  nElements: number;
  byteLength: number;
  source: GgufTensorToWrite | GgufRawTensorToWrite;
}

function planTensor(t: GgufTensorToWrite | GgufRawTensorToWrite, seen: Set<string>): PlannedTensor {
  const name = checkString(t?.name, () => 'tensor name');
  if (name.length === 0) throw new GgufInputError('tensor name is empty');
  const nameBytes = Buffer.byteLength(name, 'utf8');
  if (nameBytes > GGUF_MAX_TENSOR_NAME_BYTES) {
    throw tensorError(name, `name is ${nameBytes} bytes long; llama.cpp allows at most ${GGUF_MAX_TENSOR_NAME_BYTES}`);
  }
  if (seen.has(name)) throw tensorError(name, 'duplicate tensor name');
  seen.add(name);
  const type = ggmlTypeByName(t.type);
  if (!type) throw tensorError(name, `unknown ggml type '${t.type}'`);
  const isFloat = 'data' in t;
  if (isFloat && !['F32', 'F16', 'Q8_0'].includes(t.type)) {
    throw tensorError(name, `float data can be written as F32, F16 or Q8_0, not ${t.type} (pass bytes for other types)`);
  }
  if (!Array.isArray(t.shape) || t.shape.length > GGUF_MAX_DIMS || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 1)) {
    throw tensorError(name, `shape must be at most ${GGUF_MAX_DIMS} positive integers, got ${JSON.stringify(t.shape)}`);
  }
  const ne = [...t.shape].reverse();
  const nElements = ne.reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(nElements)) throw tensorError(name, `shape [${t.shape.join(', ')}] has too many elements`);
  const rowLength = ne.length > 0 ? ne[0] : 1;
  if (rowLength % type.blockSize !== 0) {
    throw tensorError(name, `type ${type.name} needs the last dimension to be a multiple of ${type.blockSize}, got shape [${t.shape.join(', ')}]`);
  }
  const byteLength = (nElements / type.blockSize) * type.typeSize;
  if (!isFloat) {
    if (!(t.bytes instanceof Uint8Array) || t.bytes.byteLength !== byteLength) {
      throw tensorError(name, `${type.name} data of shape [${t.shape.join(', ')}] is ${byteLength} bytes, got ${t.bytes?.byteLength ?? 'no bytes'}`);
    }
  } else if (t.data instanceof Float32Array) {
    if (t.data.length !== nElements) throw tensorError(name, `shape [${t.shape.join(', ')}] has ${nElements} elements, but data has ${t.data.length}`);
  } else if (typeof t.data !== 'function') {
    throw tensorError(name, 'data must be a Float32Array or a function returning one');
  }
  return { name, type, ne, nElements, byteLength, source: t };
}

async function tensorBytes(p: PlannedTensor): Promise<Uint8Array> {
  const s = p.source;
  if ('bytes' in s) return s.bytes;
  const data = typeof s.data === 'function' ? await s.data() : s.data;
  if (!(data instanceof Float32Array) || data.length !== p.nElements) {
    throw tensorError(p.name, `data function must return a Float32Array of ${p.nElements} values, got ${data instanceof Float32Array ? data.length : typeof data}`);
  }
  if (p.type.name === 'F32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (p.type.name === 'F16') return quantizeF16(data);
  return quantizeQ8_0(data);
}

/**
 * The bytes before the data section: header, metadata, tensor infos, padding.
 * @throws Error naming the key or tensor when a value or tensor description is invalid.
 */
function encodeHeader(metadata: Array<[string, GgufValue]>, tensors: PlannedTensor[], alignment: number): Buffer {
  const w = new ByteWriter();
  w.u32(MAGIC);
  w.u32(3);
  w.u64(tensors.length);
  w.u64(metadata.length);
  for (const [key, v] of metadata) {
    const what = (): string => `metadata key '${key}'`;
    w.string(key);
    if (!v || typeof v !== 'object' || !TYPE_CODE.has(v.type)) throw new GgufInputError(`${what()}: value must be { type, value } with a GGUF value type, got ${JSON.stringify(v?.type)}`);
    w.u32(TYPE_CODE.get(v.type)!);
    if (v.type === 'array') writeArray(w, v.value, what, 1);
    else writeScalar(w, v.type, v.value, what);
  }
  let offset = 0;
  for (const t of tensors) {
    w.string(t.name);
    w.u32(t.ne.length);
    for (const d of t.ne) w.u64(d);
    w.u32(t.type.code);
    w.u64(offset);
    offset += padTo(t.byteLength, alignment);
  }
  const pad = padTo(w.length, alignment) - w.length;
  w.raw(new Uint8Array(pad));
  return w.bytes();
}

/**
 * Write a GGUF v3 file atomically (a temporary file in the same folder, fsynced, renamed
 * over `path`): header, metadata in the given order, tensor infos in the given order, and the
 * data, each tensor padded with zeros to the alignment — the layout gguf-py's GGUFWriter and
 * llama.cpp's gguf_write produce, byte for byte for the same content.
 *
 * F16 rounds to nearest even (numpy astype); Q8_0 follows ggml's quantize_row_q8_0_ref (see
 * quantizeQ8_0). Metadata values are checked against their types (integer ranges, bigint for
 * 64-bit integers, well-formed strings); arrays may be empty or nested.
 *
 * @throws Error naming the key or tensor when a value, name (empty, duplicate, over 63 bytes),
 *   shape (over 4 dims, non-positive, last dim not a whole number of blocks) or data length is
 *   invalid — before anything is written — or naming `path` when writing fails (the temporary
 *   file is removed and an existing file at `path` is left as it was).
 */
export async function writeGguf(path: string, contents: GgufContents): Promise<void> {
  assertLittleEndianHost(); // F32 data is written straight from the Float32Array's bytes
  let planned: { header: Buffer; tensors: PlannedTensor[]; alignment: number };
  try {
    planned = planFile(contents);
  } catch (err) {
    if (err instanceof GgufInputError) throw new Error(`${path}: ${err.message}`, { cause: err });
    throw err;
  }
  const { header, tensors, alignment } = planned;
  const tmp = tempPathFor(path);
  try {
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.write(header);
      for (const p of tensors) {
        const bytes = await tensorBytes(p);
        await fh.write(bytes);
        const pad = padTo(bytes.byteLength, alignment) - bytes.byteLength;
        if (pad > 0) await fh.write(new Uint8Array(pad));
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    if (err instanceof GgufInputError) throw new Error(`${path}: ${err.message}`, { cause: err });
    throw new Error(`could not write ${path}: ${(err as Error).message}`, { cause: err });
  }
  await fsyncDir(dirname(path));
}

/** Validate what to write and encode everything before the data section. */
function planFile(contents: GgufContents): { header: Buffer; tensors: PlannedTensor[]; alignment: number } {
  if (!contents || !contents.metadata || !Array.isArray(contents.tensors)) {
    throw new GgufInputError('contents must be { metadata, tensors: [] }');
  }
  const metadata = [...(contents.metadata instanceof Map ? contents.metadata.entries() : contents.metadata)];
  const keys = new Set<string>();
  for (const [key] of metadata) {
    checkString(key, () => 'metadata key');
    if (key.length === 0) throw new GgufInputError('metadata key is empty');
    if (Buffer.byteLength(key, 'utf8') > GGUF_MAX_KEY_BYTES) {
      throw new GgufInputError(`metadata key '${key.slice(0, 80)}...' is longer than ${GGUF_MAX_KEY_BYTES} bytes`);
    }
    if (keys.has(key)) throw new GgufInputError(`metadata key '${key}' is given twice`);
    keys.add(key);
  }
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const align = metadata.find(([k]) => k === 'general.alignment')?.[1];
  if (align) {
    if (align.type !== 'uint32' || align.value === 0 || (align.value & (align.value - 1)) !== 0) {
      throw new GgufInputError(`metadata key 'general.alignment' must be a uint32 power of two, got ${align.type} ${String(align.value)}`);
    }
    alignment = align.value;
  }
  const seen = new Set<string>();
  const tensors = contents.tensors.map((t) => planTensor(t, seen));
  return { header: encodeHeader(metadata, tensors, alignment), tensors, alignment };
}

// ---------------------------------------------------------------------------------------
// Typed metadata access

/**
 * A metadata value as a plain JS value: numbers, bigints, booleans, strings; arrays as JS
 * arrays (typed arrays converted), nested arrays as nested JS arrays. Undefined when absent.
 */
export function ggufPlain(metadata: Map<string, GgufValue>, key: string): unknown {
  const v = metadata.get(key);
  if (!v) return undefined;
  return v.type === 'array' ? plainArray(v.value) : v.value;
}

function plainArray(a: GgufArray): unknown[] {
  if (a.itemType === 'array') return a.items.map(plainArray);
  return Array.from(a.items as ArrayLike<unknown>);
}

/**
 * An integer metadata value (any integer type; 64-bit ones must be safe integers).
 * @throws Error naming the file and key when it is absent (and `fallback` undefined), not an integer type, or not a safe integer.
 */
export function ggufInteger(h: Pick<GgufHeader, 'path' | 'metadata'>, key: string, fallback?: number): number {
  const v = h.metadata.get(key);
  if (!v) {
    if (fallback !== undefined) return fallback;
    throw new Error(`${h.path}: metadata key '${key}' is missing`);
  }
  if (v.type in INT_RANGE) return v.value as number;
  if (v.type === 'uint64' || v.type === 'int64') {
    if (v.value > BigInt(Number.MAX_SAFE_INTEGER) || v.value < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new Error(`${h.path}: metadata key '${key}': ${v.value} is too large`);
    }
    return Number(v.value);
  }
  throw new Error(`${h.path}: metadata key '${key}' must be an integer, but is of type ${v.type}`);
}

/**
 * A float metadata value (float32 or float64; integers accepted).
 * @throws Error naming the file and key when absent (and no fallback) or not numeric.
 */
export function ggufFloat(h: Pick<GgufHeader, 'path' | 'metadata'>, key: string, fallback?: number): number {
  const v = h.metadata.get(key);
  if (!v) {
    if (fallback !== undefined) return fallback;
    throw new Error(`${h.path}: metadata key '${key}' is missing`);
  }
  if (v.type === 'float32' || v.type === 'float64') return v.value;
  return ggufInteger(h, key);
}

/**
 * A string metadata value.
 * @throws Error naming the file and key when absent (and no fallback) or not a string.
 */
export function ggufString(h: Pick<GgufHeader, 'path' | 'metadata'>, key: string, fallback?: string): string {
  const v = h.metadata.get(key);
  if (!v) {
    if (fallback !== undefined) return fallback;
    throw new Error(`${h.path}: metadata key '${key}' is missing`);
  }
  if (v.type !== 'string') throw new Error(`${h.path}: metadata key '${key}' must be a string, but is of type ${v.type}`);
  return v.value;
}
