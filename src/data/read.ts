/**
 * Reading labelled text-classification datasets (CSV, TSV, JSONL) into memory,
 * validated before any training starts.
 */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { CsvError, parse } from 'csv-parse/sync';
import { decodeUtf8, lineOfOffset, lineStarts } from './text.js';

export type DatasetFormat = 'csv' | 'tsv' | 'jsonl';

export interface ReadDatasetOptions {
  /** Column (CSV/TSV header name, JSONL key) holding the text. Default 'text'. */
  textColumn?: string;
  /** Optional second text of a sentence pair (token_type_ids 1). */
  textPairColumn?: string;
  /** Column holding the label. Default 'label' (Banking77 uses 'category'). */
  labelColumn?: string;
  /** Overrides the format implied by the extension (.csv, .tsv/.tab, .jsonl/.ndjson). */
  format?: DatasetFormat;
}

/** One labelled example; `line` is the 1-based line of the file where its record starts. */
export interface Example {
  text: string;
  textPair?: string;
  label: string;
  line: number;
}

export interface Dataset {
  path: string;
  examples: Example[];
}

/** A record before column selection: named values and where it starts. */
interface RawRecord {
  line: number;
  get(column: string): { value: unknown; where: string } | undefined;
}

/**
 * Reads a dataset file synchronously (whole file in memory).
 *
 * - Bytes are decoded as strict UTF-8 first (a BOM is dropped); CSV/TSV go through
 *   csv-parse (RFC 4180 quoting, `""` escapes, quoted newlines, CRLF/LF/CR line
 *   ends, blank lines skipped, stray quotes inside unquoted fields kept as text).
 * - Texts are kept verbatim (the tokenizer normalises whitespace); labels are trimmed.
 *
 * @throws Error naming `path:line[:column]` and what was expected, for: unknown
 *   extension, invalid UTF-8 (byte offset too), missing column (lists the columns
 *   found), duplicate column (both positions), rows with the wrong number of fields,
 *   unclosed quotes, empty text/label, JSONL lines that are not JSON objects, missing
 *   JSONL keys, no examples at all.
 */
export function readDataset(path: string, options: ReadDatasetOptions = {}): Dataset {
  const textColumn = options.textColumn ?? 'text';
  const labelColumn = options.labelColumn ?? 'label';
  const columns = [textColumn, ...(options.textPairColumn ? [options.textPairColumn] : []), labelColumn];
  const records = readRecords(path, readFileSync(path), options.format ?? formatFromPath(path), columns);
  const examples = records.map((r) => toExample(r, path, textColumn, options.textPairColumn, labelColumn));
  if (examples.length === 0) throw new Error(`${path}: no examples found (expected a header and at least one row)`);
  return { path, examples };
}

export interface ReadTextsOptions {
  /** Column (CSV/TSV header name, JSONL key) holding the text. Default 'text'. Unused for 'lines'. */
  textColumn?: string;
  /** 'lines' = one text per non-blank line. Default: from the extension, 'lines' for any other. */
  format?: DatasetFormat | 'lines';
  /** The file's bytes when already read (stdin); `path` then only names the source in errors. */
  bytes?: Uint8Array;
  /** Drop records whose text is empty or blank, as blank lines are (unlabelled corpora, run_mlm); default false: an error. */
  skipEmpty?: boolean;
}

/** One unlabelled text and the 1-based line where its record starts. */
export interface TextRecord {
  text: string;
  line: number;
}

/**
 * Reads texts to classify (no labels) with the same strict UTF-8 decoding and the same
 * CSV/TSV/JSONL parsing as readDataset; any other extension is one text per line
 * (CRLF, LF or CR line ends; blank lines skipped; texts kept verbatim).
 * @throws Error naming `path:line[:column]` as readDataset does, or `path` when it holds no texts.
 */
export function readTexts(path: string, options: ReadTextsOptions = {}): TextRecord[] {
  const textColumn = options.textColumn ?? 'text';
  const bytes = options.bytes ?? readFileSync(path);
  const ext = extname(path).toLowerCase();
  const format = options.format ?? (['.csv', '.tsv', '.tab', '.jsonl', '.ndjson'].includes(ext) ? formatFromPath(path) : 'lines');
  let texts: TextRecord[];
  if (format === 'lines') {
    const { text } = decodeUtf8(bytes, path);
    texts = text.split(/\r\n|\n|\r/).flatMap((t, i) => (t.trim() === '' ? [] : [{ text: t, line: i + 1 }]));
  } else {
    const records = readRecords(path, bytes, format, [textColumn]);
    const blank = (r: RawRecord) => options.skipEmpty === true && typeof r.get(textColumn)?.value === 'string' && String(r.get(textColumn)!.value).trim() === '';
    texts = records.filter((r) => !blank(r)).map((r) => ({ text: requireText(r, path, textColumn), line: r.line }));
  }
  if (texts.length === 0) throw new Error(`${path}: no texts found (the input is empty${format === 'lines' ? ' or blank' : ' or has only a header'}); expected at least one text`);
  return texts;
}

/** Strictly decoded records of a CSV/TSV/JSONL file whose header must hold `columns`. */
function readRecords(path: string, bytes: Uint8Array, format: DatasetFormat, columns: string[]): RawRecord[] {
  const { text, bomLength } = decodeUtf8(bytes, path);
  return format === 'jsonl' ? jsonlRecords(text, path) : delimitedRecords(bytes.subarray(bomLength), path, format === 'tsv' ? '\t' : ',', columns);
}

/** The format implied by a file extension. @throws Error for an unknown extension. */
export function formatFromPath(path: string): DatasetFormat {
  const ext = extname(path).toLowerCase();
  if (ext === '.csv') return 'csv';
  if (ext === '.tsv' || ext === '.tab') return 'tsv';
  if (ext === '.jsonl' || ext === '.ndjson') return 'jsonl';
  throw new Error(`${path}: cannot tell the format from extension "${ext}"; expected .csv, .tsv or .jsonl (or pass format)`);
}

function toExample(r: RawRecord, path: string, textCol: string, pairCol: string | undefined, labelCol: string): Example {
  const text = requireText(r, path, textCol);
  const label = requireText(r, path, labelCol).trim();
  const ex: Example = { text, label, line: r.line };
  if (pairCol !== undefined) ex.textPair = requireText(r, path, pairCol);
  return ex;
}

function requireText(r: RawRecord, path: string, column: string): string {
  const cell = r.get(column);
  if (cell === undefined) throw new Error(`${path}:${r.line}: key "${column}" is missing`);
  const { value, where } = cell;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (typeof value !== 'string') {
    throw new Error(`${path}:${where}: "${column}" is ${JSON.stringify(value)}; expected a string`);
  }
  if (value.trim() === '') throw new Error(`${path}:${where}: "${column}" is empty; expected non-empty text`);
  return value;
}

/** CSV/TSV rows as records keyed by the header; the header must name each of `columns` exactly once. */
function delimitedRecords(bytes: Uint8Array, path: string, delimiter: string, columns: string[]): RawRecord[] {
  const starts = lineStarts(bytes);
  let lastEnd = 0;
  // A record starts at the first byte after the previous one that is not a line break (blank lines are skipped).
  const recordLine = (): number => {
    let i = lastEnd;
    while (bytes[i] === 0x0a || bytes[i] === 0x0d) i++;
    return lineOfOffset(starts, i);
  };
  const lines: number[] = [];
  let rows: string[][];
  try {
    rows = parse(bytes, {
      delimiter,
      record_delimiter: ['\r\n', '\n', '\r'],
      skip_empty_lines: true,
      relax_quotes: true,
      on_record: (record, context) => {
        lines.push(recordLine());
        lastEnd = context.bytes;
        return record;
      },
    });
  } catch (err) {
    throw csvErrorToError(err, path, recordLine(), delimiter);
  }
  if (rows.length === 0) throw new Error(`${path}: the file is empty; expected a header line`);
  const index = headerIndex(rows[0], `${path}:${lines[0]}`, columns);
  return rows.slice(1).map((fields, i) => ({
    line: lines[i + 1],
    get: (column: string) => ({ value: fields[index.get(column)!], where: `${lines[i + 1]}:${index.get(column)! + 1}` }),
  }));
}

function headerIndex(header: string[], where: string, columns: string[]): Map<string, number> {
  const index = new Map<string, number>();
  for (const column of columns) {
    const at = header.flatMap((name, i) => (name === column ? [i + 1] : []));
    if (at.length === 0) {
      const found = header.map((h) => JSON.stringify(h)).join(', ');
      throw new Error(`${where}: column "${column}" not found in the header; columns found: ${found}`);
    }
    if (at.length > 1) {
      throw new Error(`${where}: column "${column}" appears more than once in the header (columns ${at.join(' and ')}); expected exactly one`);
    }
    index.set(column, at[0] - 1);
  }
  return index;
}

/** csv-parse errors carry a line count that drifts on quoted CRLFs, so the record start line is passed in. */
function csvErrorToError(err: unknown, path: string, line: number, delimiter: string): Error {
  if (!(err instanceof CsvError)) return err instanceof Error ? err : new Error(String(err));
  const e = err as CsvError & { record?: unknown[]; column?: number };
  const sep = delimiter === '\t' ? 'tab' : `"${delimiter}"`;
  switch (err.code) {
    case 'CSV_RECORD_INCONSISTENT_FIELDS_LENGTH': {
      const expected = Number(/expect (\d+)/.exec(err.message)?.[1]);
      const got = e.record?.length ?? Number(/got (\d+)/.exec(err.message)?.[1]);
      return new Error(
        `${path}:${line}:${Math.min(expected, got) + 1}: row has ${got} fields but the header has ${expected}; ` +
          `quote fields that contain ${sep}, quotes or line breaks`,
      );
    }
    case 'CSV_QUOTE_NOT_CLOSED':
      return new Error(`${path}:${line}: a quoted field that starts in this row is never closed; expected a closing quote (")`);
    default:
      return new Error(`${path}:${line}:${(e.column ?? 0) + 1}: ${err.message}`);
  }
}

/** JSONL: one JSON object per line; blank lines skipped. */
function jsonlRecords(text: string, path: string): RawRecord[] {
  const records: RawRecord[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const src = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (src.trim() === '') return;
    let obj: unknown;
    try {
      obj = JSON.parse(src);
    } catch (err) {
      throw new Error(`${path}:${line}: not valid JSON (${(err as Error).message}); expected one JSON object per line`);
    }
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
      throw new Error(`${path}:${line}: expected a JSON object, got ${Array.isArray(obj) ? 'an array' : JSON.stringify(obj)}`);
    }
    const o = obj as Record<string, unknown>;
    records.push({
      line,
      get: (key) => {
        if (!Object.hasOwn(o, key)) {
          const found = Object.keys(o).map((k) => JSON.stringify(k)).join(', ');
          throw new Error(`${path}:${line}: key "${key}" is missing; keys found: ${found || '(none)'}`);
        }
        return { value: o[key], where: `${line}` };
      },
    });
  });
  return records;
}
