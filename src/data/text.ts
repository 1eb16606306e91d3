/**
 * Strict UTF-8 decoding and byte-offset → line mapping for dataset files.
 * Why not `readFileSync(path, 'utf8')`: Node silently turns bad bytes into
 * U+FFFD, and a Latin-1 file would train on garbage without a word.
 */

const BOM = '\ufeff';

/** Decoded file text and the length in bytes of the UTF-8 BOM it started with (0 or 3). */
export interface DecodedText {
  text: string;
  bomLength: number;
}

/**
 * Decodes `bytes` as UTF-8 (WHATWG Encoding, fatal mode) and strips a leading BOM.
 * @throws Error `path:line:column: invalid UTF-8 at byte offset N (0xXX) ...` for the first
 *   ill-formed byte sequence (line and column 1-based, column counted in characters,
 *   offset 0-based in the raw file).
 */
export function decodeUtf8(bytes: Uint8Array, path: string): DecodedText {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    const offset = firstInvalidUtf8Offset(bytes);
    const { line, column } = locateByte(bytes, offset);
    const hex = bytes[offset].toString(16).toUpperCase().padStart(2, '0');
    throw new Error(
      `${path}:${line}:${column}: invalid UTF-8 at byte offset ${offset} (byte 0x${hex}); ` +
        'expected a UTF-8 encoded file (re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`)',
    );
  }
  return text.startsWith(BOM) ? { text: text.slice(1), bomLength: 3 } : { text, bomLength: 0 };
}

/**
 * Offset of the first byte of the first ill-formed sequence in `bytes`, or -1.
 * The non-fatal decoder writes U+FFFD for it; every character before it is
 * valid, so re-encoding that prefix gives its exact byte length. A U+FFFD that
 * was really in the file (bytes EF BF BD) is skipped.
 */
export function firstInvalidUtf8Offset(bytes: Uint8Array): number {
  const text = new TextDecoder('utf-8', { ignoreBOM: true }).decode(bytes);
  const encoder = new TextEncoder();
  let from = 0;
  let byteOffset = 0;
  for (let i = text.indexOf('\ufffd'); i >= 0; i = text.indexOf('\ufffd', i + 1)) {
    byteOffset += encoder.encode(text.slice(from, i)).length;
    from = i;
    const genuine = bytes[byteOffset] === 0xef && bytes[byteOffset + 1] === 0xbf && bytes[byteOffset + 2] === 0xbd;
    if (!genuine) return byteOffset;
  }
  return -1;
}

/**
 * Offsets at which lines start in `bytes`: 0, and after every LF, CRLF or lone CR.
 * Int32Array, length = number of lines.
 */
export function lineStarts(bytes: Uint8Array): Int32Array {
  const starts = [0];
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b === 0x0a || (b === 0x0d && bytes[i + 1] !== 0x0a)) starts.push(i + 1);
  }
  return Int32Array.from(starts);
}

/** 1-based line of byte `offset`, by binary search in `starts` (from lineStarts). */
export function lineOfOffset(starts: Int32Array, offset: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo + 1;
}

/** 1-based line and character column of byte `offset` (the bytes before it must be valid UTF-8). */
function locateByte(bytes: Uint8Array, offset: number): { line: number; column: number } {
  const starts = lineStarts(bytes.subarray(0, offset));
  const line = starts.length;
  const prefix = new TextDecoder('utf-8', { ignoreBOM: true }).decode(bytes.subarray(starts[line - 1], offset));
  return { line, column: [...prefix].length + 1 };
}
