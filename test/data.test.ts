import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  buildLabelMap,
  encodeLabels,
  makeBatches,
  mulberry32,
  readDataset,
  readTexts,
  stratifiedSplit,
  type Dataset,
} from '../src/data/index.js';

const BANKING = fileURLToPath(new URL('../../data/banking77/', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'nodetune-data-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;

/** Writes `content` to a fresh temp file with extension `ext`; returns its path. */
function file(content: string | Uint8Array, ext = 'csv'): string {
  const path = join(dir, `f${fileNo++}.${ext}`);
  writeFileSync(path, content);
  return path;
}

function throwsMatching(fn: () => unknown, ...patterns: RegExp[]): void {
  assert.throws(fn, (err: Error) => {
    for (const p of patterns) assert.match(err.message, p);
    return true;
  });
}

test('Banking77 reads cleanly: 10003 train / 3080 test examples, 77 labels', () => {
  const train = readDataset(join(BANKING, 'train.csv'), { labelColumn: 'category' });
  const testSet = readDataset(join(BANKING, 'test.csv'), { labelColumn: 'category' });
  // Counts and the label set as Python's csv module reads the same files.
  assert.equal(train.examples.length, 10003);
  assert.equal(testSet.examples.length, 3080);
  const categories: string[] = JSON.parse(readFileSync(join(BANKING, 'categories.json'), 'utf8'));
  const map = buildLabelMap(train);
  assert.equal(map.num_labels, 77);
  assert.deepEqual([...map.labels].sort(), [...categories].sort());
  assert.equal(encodeLabels(testSet, map).length, 3080);
  // CRLF records: no stray \r in labels; quoted multi-line text kept; lines as `grep -n` shows them.
  assert.ok(train.examples.every((e) => !e.label.includes('\r')));
  assert.deepEqual(train.examples[0], { text: 'I am still waiting on my card?', label: 'card_arrival', line: 2 });
  const multi = train.examples.find((e) => e.text === "\nI can't seem to be able to use my card\n\n\n");
  assert.equal(multi?.line, 1292);
  assert.equal(train.examples.at(-1)?.line, 10017);
});

test('BOM and CRLF: header is text,label (no \\ufeff, no \\r)', () => {
  const path = file('\ufefftext,label\r\nhello,pos\r\nbye,neg\r\n');
  const ds = readDataset(path);
  assert.deepEqual(ds.examples, [
    { text: 'hello', label: 'pos', line: 2 },
    { text: 'bye', label: 'neg', line: 3 },
  ]);
  assert.equal(ds.path, path);
});

test('quoted fields with newlines, doubled quotes and delimiters; blank lines skipped; lines tracked', () => {
  const csv = 'label,text\r\n\r\npos,"line one\r\nline two"\r\nneg,"he said ""no"", twice"\n\n\nneg,plain\nneg,"a\nb\nc"\npos,"x"';
  const ds = readDataset(file(csv));
  assert.deepEqual(
    ds.examples.map((e) => [e.line, e.text, e.label]),
    [
      [3, 'line one\r\nline two', 'pos'],
      [5, 'he said "no", twice', 'neg'],
      [8, 'plain', 'neg'],
      [9, 'a\nb\nc', 'neg'],
      [12, 'x', 'pos'],
    ],
  );
});

test('TSV and text pairs; labels trimmed, texts verbatim', () => {
  const ds = readDataset(file('premise\thypothesis\tlabel\n A man sleeps\tSomeone rests\t entailment \n', 'tsv'), {
    textColumn: 'premise',
    textPairColumn: 'hypothesis',
  });
  assert.deepEqual(ds.examples, [{ text: ' A man sleeps', textPair: 'Someone rests', label: 'entailment', line: 2 }]);
});

test('JSONL: objects per line, CRLF, blank lines, numeric labels; format option overrides the extension', () => {
  const path = file('{"text":"a","label":1}\r\n\r\n{"label":"x","text":"b","extra":true}\n', 'txt');
  const ds = readDataset(path, { format: 'jsonl' });
  assert.deepEqual(ds.examples, [
    { text: 'a', label: '1', line: 1 },
    { text: 'b', label: 'x', line: 3 },
  ]);
  throwsMatching(() => readDataset(path), /f\d+\.txt: .*extension "\.txt".*\.csv, \.tsv or \.jsonl/);
});

test('JSONL errors name file, line and key', () => {
  throwsMatching(() => readDataset(file('{"text":"a","label":"x"}\n{"text": "b",\n', 'jsonl')), /\.jsonl:2: not valid JSON/);
  throwsMatching(() => readDataset(file('{"text":"a","label":"x"}\n\n["a","x"]\n', 'jsonl')), /\.jsonl:3: expected a JSON object, got an array/);
  throwsMatching(
    () => readDataset(file('{"text":"a","label":"x"}\n{"sentence":"b","label":"y"}\n', 'jsonl')),
    /\.jsonl:2: key "text" is missing; keys found: "sentence", "label"/,
  );
  throwsMatching(() => readDataset(file('{"text":"a","label":null}\n', 'jsonl')), /\.jsonl:1: "label" is null; expected a string/);
});

test('missing column lists the columns found', () => {
  throwsMatching(
    () => readDataset(join(BANKING, 'test.csv')),
    /test\.csv:1: column "label" not found in the header; columns found: "text", "category"/,
  );
});

test('duplicate column is an error naming both positions (never last-wins)', () => {
  throwsMatching(
    () => readDataset(file('text,label,text\na,x,b\n')),
    /f\d+\.csv:1: column "text" appears more than once in the header \(columns 1 and 3\)/,
  );
});

test('empty text or label names file, line, column number and name', () => {
  throwsMatching(() => readDataset(file('text,label\na,x\n"  ",y\n')), /f\d+\.csv:3:1: "text" is empty/);
  throwsMatching(() => readDataset(file('text,label\na,x\n"multi\nline",\n')), /f\d+\.csv:3:2: "label" is empty/);
});

test('invalid UTF-8: byte offset, line and column of the first bad byte, never U+FFFD', () => {
  const enc = new TextEncoder();
  // A real U+FFFD (EF BF BD) earlier in the file must not be mistaken for the bad byte.
  const head = enc.encode('text,label\r\nok \ufffd,x\r\ncaf');
  const bytes = new Uint8Array([...head, 0xe9, ...enc.encode(' au lait,y\r\n')]);
  throwsMatching(() => readDataset(file(bytes)), new RegExp(`f\\d+\\.csv:3:4: invalid UTF-8 at byte offset ${head.length} \\(byte 0xE9\\)`));
  // A truncated 3-byte sequence at the very end.
  const tail = enc.encode('text,label\nab,€');
  throwsMatching(() => readDataset(file(tail.subarray(0, tail.length - 1))), new RegExp(`:2:4: invalid UTF-8 at byte offset ${tail.length - 3} \\(byte 0xE2\\)`));
});

test('ragged rows and unclosed quotes become file:line messages (line counted across quoted CRLFs)', () => {
  throwsMatching(
    () => readDataset(file('text,label\r\n"two\r\nlines",x\r\nok,y\r\nbad,row,extra\r\n')),
    /f\d+\.csv:5:3: row has 3 fields but the header has 2/,
  );
  throwsMatching(() => readDataset(file('text,label\na,x\nb\n')), /f\d+\.csv:3:2: row has 1 fields but the header has 2/);
  throwsMatching(() => readDataset(file('text,label\na,x\n\n"never closed,y\nc,z\n')), /f\d+\.csv:4: a quoted field that starts in this row is never closed/);
  throwsMatching(() => readDataset(file('text,label\n')), /f\d+\.csv: no examples found/);
});

const ds = (labels: string[], path = 'train.csv'): Dataset => ({
  path,
  examples: labels.map((label, i) => ({ text: `t${i}`, label, line: i + 2 })),
});

test('label map: strings sorted by code units, integers numerically and re-indexed from 0', () => {
  const strings = buildLabelMap(ds(['b', 'a', 'B', 'a']));
  assert.deepEqual(strings.labels, ['B', 'a', 'b']);
  assert.deepEqual(strings.id2label, { 0: 'B', 1: 'a', 2: 'b' });
  assert.deepEqual({ ...strings.label2id }, { B: 0, a: 1, b: 2 });
  assert.deepEqual(Object.keys(strings.id2label), ['0', '1', '2']);
  const ints = buildLabelMap(ds(['10', '2', '-1', '2']));
  assert.deepEqual(ints.labels, ['-1', '2', '10']);
  assert.deepEqual([...encodeLabels(ds(['10', '2', '-1']), ints)], [2, 1, 0]);
  assert.deepEqual(buildLabelMap(ds(['1', '5', '9'])).label2id['9'], 2);
  assert.deepEqual(buildLabelMap(ds(['1', 'x', '10', '2'])).labels, ['1', '10', '2', 'x']);
  assert.equal(buildLabelMap(ds(['constructor', '__proto__'])).label2id.__proto__, 0);
});

test("label map from a model config's label2id: case-insensitive, errors name file, line, known labels", () => {
  const label2id = { Negative: 1, Positive: 0 };
  const map = buildLabelMap(ds(['positive', 'NEGATIVE']), label2id);
  assert.deepEqual(map.labels, ['Positive', 'Negative']);
  assert.deepEqual([...encodeLabels(ds(['NEGATIVE', 'positive']), map)], [1, 0]);
  throwsMatching(
    () => buildLabelMap(ds(['positive', 'neutral']), label2id),
    /train\.csv:3: label "neutral" is not in the model config's label2id; known labels: Positive, Negative/,
  );
  // HF's placeholder LABEL_0.. map carries no meaning: ignored when the data uses other names.
  assert.deepEqual(buildLabelMap(ds(['pos', 'neg']), { LABEL_0: 0, LABEL_1: 1 }).labels, ['neg', 'pos']);
  throwsMatching(() => buildLabelMap(ds(['a']), { a: 0, b: 2 }), /config label2id: "b" → 2; expected ids 0\.\.1/);
  throwsMatching(() => buildLabelMap(ds(['a']), { a: 0, A: 1 }), /"a" and "A" differ only in case/);
});

test('eval labels not seen in training: error names file, line and label', () => {
  const map = buildLabelMap(ds(['a', 'b']));
  throwsMatching(() => encodeLabels(ds(['a', 'c'], 'eval.csv'), map), /eval\.csv:3: label "c" was not seen in training; known labels: a, b/);
});

test('stratifiedSplit: seeded, proportional per label, a partition of the input in input order', () => {
  const train = readDataset(join(BANKING, 'train.csv'), { labelColumn: 'category' }).examples;
  const a = stratifiedSplit(train, { evalFraction: 0.1, seed: 7 });
  assert.equal(a.eval.length, Math.ceil(0.1 * train.length));
  assert.equal(a.train.length + a.eval.length, train.length);
  const lines = [...a.train, ...a.eval].map((e) => e.line).sort((x, y) => x - y);
  assert.deepEqual(lines, train.map((e) => e.line));
  assert.ok(a.eval.every((e, i) => i === 0 || a.eval[i - 1].line < e.line));
  const count = (xs: { label: string }[]) => xs.reduce((m, e) => m.set(e.label, (m.get(e.label) ?? 0) + 1), new Map<string, number>());
  const all = count(train);
  const held = count(a.eval);
  for (const [label, n] of all) assert.ok(Math.abs((held.get(label) ?? 0) - 0.1 * n) <= 1, `${label}: ${held.get(label)} of ${n}`);
  const b = stratifiedSplit(train, { evalFraction: 0.1, seed: 7 });
  assert.deepEqual(b.eval.map((e) => e.line), a.eval.map((e) => e.line));
  const c = stratifiedSplit(train, { evalFraction: 0.1, seed: 8 });
  assert.notDeepEqual(c.eval.map((e) => e.line), a.eval.map((e) => e.line));
});

test('stratifiedSplit keeps every label in train; rejects bad fractions', () => {
  const { train, eval: held } = stratifiedSplit(ds(['a', 'a', 'b', 'c', 'c', 'c']).examples, { evalFraction: 0.5, seed: 1 });
  assert.equal(held.length, 3);
  assert.deepEqual([...new Set(train.map((e) => e.label))].sort(), ['a', 'b', 'c']);
  assert.throws(() => stratifiedSplit(ds(['a', 'b']).examples, { evalFraction: 1 }), /evalFraction 1; expected a number in \(0, 1\)/);
});

test('makeBatches: a seeded permutation per (seed, epoch), length-grouped, longest batch first', () => {
  const rng = mulberry32(5);
  const lengths = Array.from({ length: 1000 }, () => 5 + Math.floor(rng() * 60));
  const opts = { batchSize: 16, seed: 3, epoch: 0 };
  const batches = makeBatches(lengths, opts);
  assert.equal(batches.length, Math.ceil(1000 / 16));
  assert.deepEqual(batches.flat().sort((a, b) => a - b), lengths.map((_, i) => i));
  assert.deepEqual(makeBatches(lengths, opts), batches);
  assert.notDeepEqual(makeBatches(lengths, { ...opts, epoch: 1 }), batches);
  assert.notDeepEqual(makeBatches(lengths, { ...opts, seed: 4 }), batches);
  assert.equal(lengths[batches[0][0]], Math.max(...lengths));
  for (const b of batches) assert.ok(b.every((i, k) => k === 0 || lengths[b[k - 1]] >= lengths[i]), 'sorted within a batch');
  // Grouping must cut padded tokens (Σ batch size × longest in batch) well below random batching.
  const padded = (bs: number[][]) => bs.reduce((s, b) => s + b.length * Math.max(...b.map((i) => lengths[i])), 0);
  const random = makeBatches(lengths, { ...opts, groupByLength: false });
  assert.deepEqual(random.flat().sort((a, b) => a - b), lengths.map((_, i) => i));
  assert.ok(padded(batches) < 0.75 * padded(random), `${padded(batches)} vs ${padded(random)}`);
});

test('makeBatches without shuffle: input order, or longest first when grouping', () => {
  const lengths = [3, 9, 1, 9, 4];
  assert.deepEqual(makeBatches(lengths, { batchSize: 2, shuffle: false, groupByLength: false }), [[0, 1], [2, 3], [4]]);
  assert.deepEqual(makeBatches(lengths, { batchSize: 2, shuffle: false }), [[1, 3], [4, 0], [2]]);
  assert.throws(() => makeBatches(lengths, { batchSize: 0 }), /batchSize 0; expected a positive integer/);
});

test('mulberry32 matches the reference C implementation', () => {
  // Values printed by Tommy Ettinger's C mulberry32 (uint32 state), compiled with gcc.
  const a = mulberry32(42);
  assert.deepEqual([a(), a(), a(), a()].map((x) => x * 2 ** 32), [2581720956, 1925393290, 3661312704, 2876485805]);
  const b = mulberry32(0xdeadbeef);
  assert.deepEqual([b(), b()].map((x) => x * 2 ** 32), [4043151706, 1147597007]);
});

test('readTexts (predict input) reads like readDataset: strict UTF-8, CSV errors with file:line, mixed line ends; empty input is an error', () => {
  const enc = new TextEncoder();
  const head = enc.encode('first\ncaf');
  const bad = new Uint8Array([...head, 0xe9, 0x0a]);
  throwsMatching(() => readTexts(file(bad, 'txt')), new RegExp(`f\\d+\\.txt:2:4: invalid UTF-8 at byte offset ${head.length} \\(byte 0xE9\\)`));
  throwsMatching(() => readTexts(file(bad, 'csv')), /f\d+\.csv:2:4: invalid UTF-8/);
  throwsMatching(() => readTexts(file('text\r\n"two\r\nlines"\r\nok\r\n"never closed\n')), /f\d+\.csv:5: a quoted field that starts in this row is never closed/);
  throwsMatching(() => readTexts(file('id,body\n1,hello\n')), /f\d+\.csv:1: column "text" not found in the header; columns found: "id", "body"/);
  // Mixed CRLF / LF / CR, with a label column present but not needed.
  const csv = readTexts(file('\ufefftext,label\r\na b,x\nc d,y\r\n\r\n"e\nf",z\rg,w\n'));
  assert.deepEqual(csv, [{ text: 'a b', line: 2 }, { text: 'c d', line: 3 }, { text: 'e\nf', line: 5 }, { text: 'g', line: 7 }]);
  assert.deepEqual(readTexts(file('one\r\ntwo\n\n  \rthree', 'txt')).map((r) => [r.text, r.line]), [['one', 1], ['two', 2], ['three', 5]]);
  assert.deepEqual(readTexts(file('{"text":"x"}\r\n\n{"text":"y"}\n', 'jsonl')).map((r) => r.text), ['x', 'y']);
  throwsMatching(() => readTexts(file('{"body":"x"}\n', 'jsonl')), /f\d+\.jsonl:1: key "text" is missing/);
  for (const [content, ext] of [['', 'txt'], ['\n  \n\r\n', 'txt'], ['text\n', 'csv'], ['\n', 'jsonl']]) {
    throwsMatching(() => readTexts(file(content, ext)), new RegExp(`f\\d+\\.${ext}: no texts found`));
  }
  assert.deepEqual(readTexts('<stdin>', { bytes: enc.encode('a\nb\n'), format: 'lines' }).map((r) => r.text), ['a', 'b']);
  throwsMatching(() => readTexts('<stdin>', { bytes: new Uint8Array([0x61, 0xff]), format: 'lines' }), /<stdin>:1:2: invalid UTF-8 at byte offset 1/);
});
