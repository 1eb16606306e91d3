import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { computeMetrics } from '../src/metrics/index.js';
import { renderReport, writeReport, type ReportData } from '../src/report/index.js';
import { ticks } from '../src/report/svg.js';

const tmp = mkdtempSync(join(tmpdir(), 'nodetune-report-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const VOID = new Set(['meta', 'br', 'hr', 'img', 'input', 'link']);

/**
 * Checks that the page is well-formed XML apart from the doctype: every tag closed in
 * order, void elements self-closed, only the five XML entities. Returns the tag names seen.
 */
function assertWellFormed(html: string): string[] {
  assert.ok(html.startsWith('<!DOCTYPE html>\n'), 'doctype first');
  const body = html.slice('<!DOCTYPE html>\n'.length).replace(/<style>[^<]*<\/style>/, '<style></style>');
  const stack: string[] = [];
  const seen: string[] = [];
  for (const m of body.matchAll(/<(\/?)([a-zA-Z][\w-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|<|&(?!(?:amp|lt|gt|quot|#39);)/g)) {
    if (m[2] === undefined) assert.fail(`stray "${m[0]}" at offset ${m.index}: ${body.slice(m.index! - 40, m.index! + 40)}`);
    const [, close, name, , selfClose] = m;
    seen.push(name);
    if (close) assert.equal(stack.pop(), name, `closing </${name}> at offset ${m.index}`);
    else if (!selfClose) {
      assert.ok(!VOID.has(name), `void <${name}> must be self-closed`);
      stack.push(name);
    }
  }
  assert.deepEqual(stack, [], 'all elements closed');
  return seen;
}

function polylinePoints(html: string, name: string): Array<[number, number]> {
  const m = new RegExp(`<polyline class="series" data-name="${name}"[^>]* points="([^"]*)"`).exec(html);
  assert.ok(m, `polyline ${name}`);
  return m[1].split(' ').map((p) => p.split(',').map(Number) as [number, number]);
}

function sample(labels: string[], y: number[], p: number[]): ReportData {
  const id2label = Object.fromEntries(labels.map((l, i) => [String(i), l]));
  const losses = [2.3, 1.9, 2.0, 1.1, 0.7, 0.72, 0.4];
  return {
    title: 'MiniLM <Banking77> & co',
    trainLog: losses.map((loss, i) => ({ step: 10 * i, epoch: i / 3, loss, learning_rate: 1e-4 * (1 - i / 7), grad_norm: 1 })),
    evalHistory: [
      { epoch: 1, step: 30, accuracy: 0.5, macro_f1: 0.4, loss: 1.5 },
      { epoch: 2, step: 60, accuracy: 0.9231, macro_f1: 0.9, loss: 0.6 },
    ],
    finalEval: computeMetrics(Int32Array.from(y), Int32Array.from(p), id2label, 0.6),
    config: { learning_rate: 1e-4, model: 'all-MiniLM-L6-v2' },
  };
}

test('writeReport writes a self-contained, well-formed report.html with every section', () => {
  const out = join(tmp, 'run', 'nested');
  const data = sample(['pos', 'neg', 'a<b & "c"'], [0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2]);
  const path = writeReport(out, data);
  assert.equal(path, join(out, 'report.html'));
  assert.ok(existsSync(path));
  const html = readFileSync(path, 'utf8');
  const tags = assertWellFormed(html);
  assert.ok(!tags.includes('script') && !tags.includes('link') && !tags.includes('img'), 'no external resources');
  assert.deepEqual([...html.matchAll(/https?:\/\/[^"]*/g)].map((m) => m[0]).filter((u) => u !== 'http://www.w3.org/2000/svg'), []);
  assert.doesNotMatch(html, /url\(|@import|@font-face/);
  const ids = [...html.matchAll(/<section id="([^"]+)">/g)].map((m) => m[1]);
  assert.deepEqual(ids, ['summary', 'loss', 'learning-rate', 'eval-history', 'confusion-matrix', 'per-class', 'config']);
  assert.match(html, /<title>MiniLM &lt;Banking77&gt; &amp; co<\/title>/);
  assert.ok(!html.includes('a<b'), 'label names escaped');
  assert.match(html, /accuracy <b>71\.43%<\/b>/);
  assert.match(html, /<tr><td>2<\/td><td>60<\/td><td>92\.31%<\/td><td>90\.00%<\/td><td>0\.6000<\/td><\/tr>/);
  assert.match(html, /&quot;learning_rate&quot;: 0\.0001/);
});

test('loss and learning-rate curves plot every logged step, higher values drawn higher', () => {
  const data = sample(['x', 'y'], [0, 1], [0, 1]);
  const html = renderReport(data);
  for (const [name, values] of [
    ['train loss', data.trainLog.map((e) => e.loss)],
    ['learning rate', data.trainLog.map((e) => e.learning_rate)],
  ] as const) {
    const pts = polylinePoints(html, name);
    assert.equal(pts.length, values.length);
    pts.forEach(([x], i) => assert.ok(i === 0 || x > pts[i - 1][0], `${name}: x increases`));
    // SVG y grows downwards: ordering by value must invert ordering by y.
    for (let i = 1; i < pts.length; i++) assert.equal(Math.sign(pts[i][1] - pts[i - 1][1]), -Math.sign(values[i] - values[i - 1]));
  }
  const evalDots = /<g class="series" data-name="eval loss"[^>]*>((?:<circle[^>]*\/>)*)<\/g>/.exec(html);
  assert.equal(evalDots?.[1].match(/<circle/g)?.length, 2);
});

test('confusion matrix heat map: one cell per non-zero count, tooltips with label names and counts', () => {
  const html = renderReport(sample(['pos', 'neg', 'mid'], [0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2]));
  const cells = [...html.matchAll(/<g class="cell"><rect [^>]*><title>([^<]*)<\/title><\/rect>(?:<text[^>]*>(\d+)<\/text>)?<\/g>/g)];
  assert.deepEqual(cells.map((m) => m[1]), ['pos → pos: 1', 'pos → neg: 1', 'neg → neg: 2', 'mid → pos: 1', 'mid → mid: 2']);
  assert.deepEqual(cells.map((m) => m[2]), ['1', '1', '2', '1', '2'], 'small matrices print counts');
});

test('77 labels stay readable: 9 px text, 12 px cells, in a scrolling box', () => {
  const labels = Array.from({ length: 77 }, (_, i) => `intent_number_${i}`);
  const y = labels.map((_, i) => i);
  const html = renderReport(sample(labels, y, y.map((i) => (i % 5 === 0 ? (i + 1) % 77 : i))));
  assertWellFormed(html);
  const svg = /<div class="scroll">(<svg[^>]*>)/.exec(html);
  assert.match(svg?.[1] ?? '', /font-size="9"/);
  assert.equal([...html.matchAll(/<g class="cell"><rect [^>]*width="12" height="12"/g)].length, 77);
  for (const l of ['intent_number_0', 'intent_number_76']) assert.equal(html.split(`>${l}</text>`).length - 1, 2, `${l} on both axes`);
});

test('empty history still renders every section', () => {
  const html = renderReport({ title: 't', trainLog: [], evalHistory: [] });
  assertWellFormed(html);
  assert.match(html, /No data for cross-entropy loss/);
  assert.match(html, /No evaluations/);
  assert.match(html, /No final evaluation/);
});

test('axis ticks are 1/2/5 × 10^k steps inside the range', () => {
  assert.deepEqual(ticks(0, 939), [0, 200, 400, 600, 800]);
  assert.deepEqual(ticks(0, 5e-5), [0, 1e-5, 2e-5, 3e-5, 4e-5, 5e-5]);
  assert.deepEqual(ticks(0.35, 2.3), [0.5, 1, 1.5, 2]);
  assert.deepEqual(ticks(3, 3), [3]);
});
