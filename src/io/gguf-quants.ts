/**
 * ggml tensor types: block sizes, dequantization to float32 and the F16 / Q8_0 quantizers.
 *
 * Block layouts follow ggml's ggml-common.h (`block_q4_0`, `block_q4_K`, ...); the arithmetic
 * follows the `gguf` Python package (gguf-py `gguf/quants.py`, which llama.cpp keeps bit-exact
 * with ggml-quants.c), operation by operation in float32, so results are bit-identical to
 * `gguf.quants.dequantize` / `gguf.quants.quantize`. Every float32 operation is written as a
 * double operation rounded with Math.fround: a single +, - or * of two float32 values computed
 * in double and rounded once to float32 is the correctly rounded float32 result (double has
 * more than 2·24+2 significand bits), so no double-rounding error can creep in.
 */

/** Elements per block and bytes per block of a ggml type (gguf-py GGML_QUANT_SIZES). */
export interface GgmlTypeInfo {
  /** The ggml_type code stored in the file. */
  code: number;
  /** The ggml name, as gguf-py's GGMLQuantizationType spells it (F32, Q4_K, ...). */
  name: string;
  /** Elements per block (1 for plain types). */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

const QK_K = 256;

/** Every ggml type a GGUF file may name (ggml.h enum ggml_type; removed codes 4, 5, 31-33, 36-38 absent). */
export const GGML_TYPES: readonly GgmlTypeInfo[] = (
  [
    [0, 'F32', 1, 4],
    [1, 'F16', 1, 2],
    [2, 'Q4_0', 32, 18],
    [3, 'Q4_1', 32, 20],
    [6, 'Q5_0', 32, 22],
    [7, 'Q5_1', 32, 24],
    [8, 'Q8_0', 32, 34],
    [9, 'Q8_1', 32, 40],
    [10, 'Q2_K', QK_K, 84],
    [11, 'Q3_K', QK_K, 110],
    [12, 'Q4_K', QK_K, 144],
    [13, 'Q5_K', QK_K, 176],
    [14, 'Q6_K', QK_K, 210],
    [15, 'Q8_K', QK_K, 292],
    [16, 'IQ2_XXS', QK_K, 66],
    [17, 'IQ2_XS', QK_K, 74],
    [18, 'IQ3_XXS', QK_K, 98],
    [19, 'IQ1_S', QK_K, 50],
    [20, 'IQ4_NL', 32, 18],
    [21, 'IQ3_S', QK_K, 110],
    [22, 'IQ2_S', QK_K, 82],
    [23, 'IQ4_XS', QK_K, 136],
    [24, 'I8', 1, 1],
    [25, 'I16', 1, 2],
    [26, 'I32', 1, 4],
    [27, 'I64', 1, 8],
    [28, 'F64', 1, 8],
    [29, 'IQ1_M', QK_K, 56],
    [30, 'BF16', 1, 2],
    [34, 'TQ1_0', QK_K, 54],
    [35, 'TQ2_0', QK_K, 66],
    [39, 'MXFP4', 32, 17],
    [40, 'NVFP4', 64, 36],
    [41, 'Q1_0', 128, 18],
  ] as const
).map(([code, name, blockSize, typeSize]) => ({ code, name, blockSize, typeSize }));

const BY_CODE = new Map(GGML_TYPES.map((t) => [t.code, t]));
const BY_NAME = new Map(GGML_TYPES.map((t) => [t.name, t]));

/** The type with this ggml_type code, or undefined when the code is not a ggml type. */
export function ggmlTypeByCode(code: number): GgmlTypeInfo | undefined {
  return BY_CODE.get(code);
}

/** The type with this name (`'Q8_0'`), or undefined. */
export function ggmlTypeByName(name: string): GgmlTypeInfo | undefined {
  return BY_NAME.get(name);
}

/** The types {@link dequantize} decodes. */
export const DEQUANTIZABLE_TYPES: readonly string[] = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K', 'Q5_K', 'Q6_K'];

// One shared lookup table for binary16 → binary32 (65,536 entries, 256 KiB): every f16 value
// converts exactly, so a table is both exact and the fastest inner loop.
let halfTable: Float32Array | undefined;

function halfToFloatSlow(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Float32Array t with t[h] = the binary16 value with bits h (exact). */
export function halfToFloatTable(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloatSlow(h);
  }
  return halfTable;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * IEEE 754 binary16 bits of a float32 value, rounded to nearest, ties to even (numpy's
 * `astype(np.float16)` and ggml's GGML_FP32_TO_FP16): overflow gives ±inf, underflow
 * subnormals or ±0, NaN stays NaN (quiet).
 */
export function floatToHalfBits(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  // Unbiased exponent e = exp - 127; binary16 normals need e in [-14, 15].
  const e = exp - 127;
  if (e > 15) return sign | 0x7c00;
  if (e >= -14) {
    // Normal: keep 10 mantissa bits, round the 13 dropped ones to nearest even. A carry
    // out of the mantissa correctly bumps the exponent (and 65520 → inf).
    let h = ((e + 15) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
    return sign | h;
  }
  if (e < -25) return sign; // below half the smallest subnormal (2^-25): rounds to ±0
  // Subnormal: value = m · 2^-24 with m = full significand (24 bits) >> (−e − 1).
  const full = mant | 0x800000;
  const shift = -e - 1; // 14..24
  let h = full >>> shift;
  const rest = full & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (h & 1))) h++;
  return sign | h;
}

/** Where a dequantization error points: the tensor's name (errors name it). */
function fail(tensor: string, what: string): never {
  throw new Error(`tensor '${tensor}': ${what}`);
}

/**
 * Dequantize the raw bytes of one tensor to float32.
 *
 * @param type ggml type name (`'Q4_K'`) of the data.
 * @param bytes the tensor's data: `nElements / blockSize · typeSize` bytes, blocks back to back.
 * @param nElements number of values (a multiple of the type's block size).
 * @param tensor name used in error messages.
 * @returns Float32Array of `nElements` values in file order (ne[0] fastest, i.e. row-major
 *   over the reversed GGUF dims).
 * @throws Error naming the tensor and the type when the type is not one of
 *   {@link DEQUANTIZABLE_TYPES}, or when the byte count does not match `nElements`.
 */
export function dequantize(type: string, bytes: Uint8Array, nElements: number, tensor = '?'): Float32Array {
  const info = BY_NAME.get(type);
  if (!info) fail(tensor, `unknown ggml type '${type}'`);
  if (!DEQUANTIZABLE_TYPES.includes(type)) {
    fail(tensor, `type ${type} cannot be dequantized (supported: ${DEQUANTIZABLE_TYPES.join(', ')})`);
  }
  if (nElements % info.blockSize !== 0) fail(tensor, `${nElements} elements is not a multiple of the ${type} block size ${info.blockSize}`);
  const nBlocks = nElements / info.blockSize;
  if (bytes.byteLength !== nBlocks * info.typeSize) {
    fail(tensor, `${type} data of ${nElements} elements needs ${nBlocks * info.typeSize} bytes, got ${bytes.byteLength}`);
  }
  const out = new Float32Array(nElements);
  const H = halfToFloatTable();
  const b = bytes;
  switch (type) {
    case 'F32':
      new Uint8Array(out.buffer).set(b);
      break;
    case 'F16':
      for (let i = 0, j = 0; i < nElements; i++, j += 2) out[i] = H[b[j] | (b[j + 1] << 8)];
      break;
    case 'BF16': {
      const o = new Uint32Array(out.buffer);
      for (let i = 0, j = 0; i < nElements; i++, j += 2) o[i] = ((b[j] | (b[j + 1] << 8)) << 16) >>> 0;
      break;
    }
    case 'Q8_0':
      // block_q8_0: f16 d, int8 qs[32]; x = qs · d
      for (let blk = 0, p = 0, o = 0; blk < nBlocks; blk++, p += 34, o += 32) {
        const d = H[b[p] | (b[p + 1] << 8)];
        for (let i = 0; i < 32; i++) out[o + i] = Math.fround(((b[p + 2 + i] << 24) >> 24) * d);
      }
      break;
    case 'Q4_0':
      // block_q4_0: f16 d, qs[16]; x[j] = (lo nibble − 8)·d, x[j+16] = (hi nibble − 8)·d
      for (let blk = 0, p = 0, o = 0; blk < nBlocks; blk++, p += 18, o += 32) {
        const d = H[b[p] | (b[p + 1] << 8)];
        for (let j = 0; j < 16; j++) {
          const q = b[p + 2 + j];
          out[o + j] = Math.fround(d * ((q & 15) - 8));
          out[o + j + 16] = Math.fround(d * ((q >> 4) - 8));
        }
      }
      break;
    case 'Q4_1':
      // block_q4_1: f16 d, f16 m, qs[16]; x = q·d + m
      for (let blk = 0, p = 0, o = 0; blk < nBlocks; blk++, p += 20, o += 32) {
        const d = H[b[p] | (b[p + 1] << 8)];
        const m = H[b[p + 2] | (b[p + 3] << 8)];
        for (let j = 0; j < 16; j++) {
          const q = b[p + 4 + j];
          out[o + j] = Math.fround(Math.fround(d * (q & 15)) + m);
          out[o + j + 16] = Math.fround(Math.fround(d * (q >> 4)) + m);
        }
      }
      break;
    case 'Q5_0':
      // block_q5_0: f16 d, u32 qh (bit j = 5th bit of x[j]), qs[16]; x = (q − 16)·d
      for (let blk = 0, p = 0, o = 0; blk < nBlocks; blk++, p += 22, o += 32) {
        const d = H[b[p] | (b[p + 1] << 8)];
        const qh = (b[p + 2] | (b[p + 3] << 8) | (b[p + 4] << 16) | (b[p + 5] << 24)) >>> 0;
        for (let j = 0; j < 16; j++) {
          const q = b[p + 6 + j];
          out[o + j] = Math.fround(d * (((q & 15) | (((qh >>> j) & 1) << 4)) - 16));
          out[o + j + 16] = Math.fround(d * (((q >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16));
        }
      }
      break;
    case 'Q5_1':
      // block_q5_1: f16 d, f16 m, u32 qh, qs[16]; x = q·d + m
      for (let blk = 0, p = 0, o = 0; blk < nBlocks; blk++, p += 24, o += 32) {
        const d = H[b[p] | (b[p + 1] << 8)];
        const m = H[b[p + 2] | (b[p + 3] << 8)];
        const qh = (b[p + 4] | (b[p + 5] << 8) | (b[p + 6] << 16) | (b[p + 7] << 24)) >>> 0;
        for (let j = 0; j < 16; j++) {
          const q = b[p + 8 + j];
          out[o + j] = Math.fround(Math.fround(d * ((q & 15) | (((qh >>> j) & 1) << 4))) + m);
          out[o + j + 16] = Math.fround(Math.fround(d * ((q >> 4) | (((qh >>> (j + 16)) & 1) << 4))) + m);
        }
      }
      break;
    case 'Q4_K':
    case 'Q5_K':
      dequantizeQ45K(b, out, nBlocks, type === 'Q5_K');
      break;
    case 'Q6_K':
      dequantizeQ6K(b, out, nBlocks);
      break;
  }
  return out;
}

/**
 * block_q4_K: f16 d, f16 dmin, scales[12] (8 six-bit scales and 8 six-bit mins), qs[128];
 * block_q5_K adds qh[32] (the fifth bits) before qs. Sub-block j (32 values) is the low
 * (j even) or high (j odd) nibbles of qs[32·(j>>1) ..+32]; x = (d·sc[j])·q − dmin·mn[j].
 */
function dequantizeQ45K(b: Uint8Array, out: Float32Array, nBlocks: number, five: boolean): void {
  const H = halfToFloatTable();
  const size = five ? 176 : 144;
  const dl = new Float64Array(8);
  const ml = new Float64Array(8);
  for (let blk = 0, p = 0, o = 0; blk < nBlocks; blk++, p += size, o += QK_K) {
    const d = H[b[p] | (b[p + 1] << 8)];
    const dmin = H[b[p + 2] | (b[p + 3] << 8)];
    const s = p + 4;
    for (let i = 0; i < 4; i++) {
      // scales bytes 0-3: low 6 bits sc[0..3], top 2 bits = bits 4-5 of sc[4..7];
      // bytes 4-7 the same for the mins; bytes 8-11: low nibble sc[4..7], high nibble mn[4..7].
      const sd = b[s + i];
      const sm = b[s + 4 + i];
      const smd = b[s + 8 + i];
      dl[i] = Math.fround(d * (sd & 63));
      ml[i] = Math.fround(dmin * (sm & 63));
      dl[i + 4] = Math.fround(d * ((smd & 15) | ((sd >> 2) & 48)));
      ml[i + 4] = Math.fround(dmin * ((smd >> 4) | ((sm >> 2) & 48)));
    }
    const qh = p + 16;
    const qs = five ? p + 48 : p + 16;
    for (let j = 0; j < 8; j++) {
      const base = qs + 32 * (j >> 1);
      const shift = (j & 1) * 4;
      const dj = dl[j];
      const mj = ml[j];
      const oj = o + 32 * j;
      if (five) {
        for (let e = 0; e < 32; e++) {
          const q = ((b[base + e] >> shift) & 15) | (((b[qh + e] >> j) & 1) << 4);
          out[oj + e] = Math.fround(Math.fround(dj * q) - mj);
        }
      } else {
        for (let e = 0; e < 32; e++) out[oj + e] = Math.fround(Math.fround(dj * ((b[base + e] >> shift) & 15)) - mj);
      }
    }
  }
}

/**
 * block_q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], f16 d.
 * Value i of the 256 (half a = i>>7, k = i&127): low bits from ql[64a + (k&63)] (low nibble
 * for k < 64, high nibble otherwise), high bits from qh[32a + (k&31)] at bit pair k>>5;
 * x = (d·scales[i>>4])·(q − 32).
 */
function dequantizeQ6K(b: Uint8Array, out: Float32Array, nBlocks: number): void {
  const H = halfToFloatTable();
  const ds = new Float64Array(16);
  for (let blk = 0, p = 0, o = 0; blk < nBlocks; blk++, p += 210, o += QK_K) {
    const d = H[b[p + 208] | (b[p + 209] << 8)];
    for (let i = 0; i < 16; i++) ds[i] = Math.fround(d * ((b[p + 192 + i] << 24) >> 24));
    for (let i = 0; i < QK_K; i++) {
      const a = i >> 7;
      const k = i & 127;
      const lo = (b[p + 64 * a + (k & 63)] >> ((k >> 6) * 4)) & 15;
      const hi = (b[p + 128 + 32 * a + (k & 31)] >> ((k >> 5) * 2)) & 3;
      out[o + i] = Math.fround(ds[i >> 4] * ((lo | (hi << 4)) - 32));
    }
  }
}

/**
 * Quantize float32 values to Q8_0 blocks exactly as gguf-py `gguf.quants.quantize(x, Q8_0)`
 * (and ggml's quantize_row_q8_0_ref): per block of 32, d = amax/127, id = 1/d (0 when d = 0),
 * q = round-half-away-from-zero(x·id) as int8, d stored as f16 — all in float32.
 *
 * @param data float32 values; length a multiple of 32 (row length must be, for GGUF).
 * @returns Uint8Array of data.length/32 blocks of 34 bytes (f16 d, int8 qs[32]).
 * @throws Error when data.length is not a multiple of 32.
 */
export function quantizeQ8_0(data: Float32Array): Uint8Array {
  if (data.length % 32 !== 0) throw new Error(`Q8_0 needs a multiple of 32 values, got ${data.length}`);
  const nBlocks = data.length / 32;
  const out = new Uint8Array(nBlocks * 34);
  for (let blk = 0, p = 0, o = 0; blk < nBlocks; blk++, p += 32, o += 34) {
    let amax = 0;
    for (let i = 0; i < 32; i++) {
      const a = Math.abs(data[p + i]);
      if (a > amax) amax = a;
    }
    const d = Math.fround(amax / 127);
    const id = d === 0 ? 0 : Math.fround(1 / d);
    const h = floatToHalfBits(d);
    out[o] = h & 255;
    out[o + 1] = h >> 8;
    for (let i = 0; i < 32; i++) {
      const x = Math.fround(data[p + i] * id);
      // gguf-py np_roundf: floor(|x|) + floor(2·(|x| − floor(|x|))), sign restored.
      const ax = Math.abs(x);
      const fl = Math.floor(ax);
      const r = fl + Math.floor(2 * (ax - fl));
      out[o + 2 + i] = (x < 0 ? -r : r) & 255;
    }
  }
  return out;
}

/**
 * float32 → F16 bytes (little-endian binary16, round to nearest even, like numpy astype).
 *
 * @returns Uint8Array of 2·data.length bytes.
 */
export function quantizeF16(data: Float32Array): Uint8Array {
  const out = new Uint8Array(data.length * 2);
  for (let i = 0, j = 0; i < data.length; i++, j += 2) {
    const h = floatToHalfBits(data[i]);
    out[j] = h & 255;
    out[j + 1] = h >> 8;
  }
  return out;
}
