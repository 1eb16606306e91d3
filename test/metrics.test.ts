import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  accuracy,
  computeMetrics,
  confusionMatrix,
  f1Score,
  formatClassificationReport,
  perClassScores,
} from '../src/metrics/index.js';

const i32 = (xs: number[]) => Int32Array.from(xs);
const close = (actual: number, expected: number, what: string) =>
  assert.ok(Math.abs(actual - expected) <= 1e-12, `${what}: ${actual} vs ${expected}`);
const closeAll = (actual: number[], expected: number[], what: string) => {
  assert.equal(actual.length, expected.length, what);
  actual.forEach((a, i) => close(a, expected[i], `${what}[${i}]`));
};

test('macro-F1 over classes in labels or predictions: [2,1,0,0] vs [2,1,0,1] gives 7/9', () => {
  const y = i32([2, 1, 0, 0]);
  const p = i32([2, 1, 0, 1]);
  // Class 0: P=1, R=1/2, F1=2/3; class 1: P=1/2, R=1, F1=2/3; class 2: F1=1. Class 3 is absent from both.
  close(f1Score(y, p, 4, 'macro'), 7 / 9, 'macro');
  close(f1Score(y, p, 4, 'weighted'), 0.75, 'weighted');
  close(f1Score(y, p, 4, 'micro'), 0.75, 'micro');
  close(accuracy(y, p), 0.75, 'accuracy');
});

// Expected values below were computed once with scikit-learn 1.9.1 (numpy default_rng(7)):
//   precision_recall_fscore_support(y, p, labels=range(n), zero_division=0), f1_score(y, p, average=...,
//   zero_division=0), accuracy_score(y, p), confusion_matrix(y, p, labels=range(n)).
const CASES = [
  {
    name: '6 classes; class 4 only predicted, class 5 never seen',
    n: 6,
    y: [3, 2, 2, 3, 2, 3, 3, 0, 0, 1, 1, 3, 3, 0, 1, 3, 0, 3, 0, 1, 3, 1, 1, 1, 2, 1, 3, 1, 1, 2, 2, 2, 2, 3, 3, 3, 2, 2, 1, 3],
    p: [2, 1, 4, 0, 4, 3, 0, 0, 2, 0, 0, 2, 4, 2, 4, 4, 4, 3, 2, 2, 1, 2, 1, 1, 4, 0, 0, 0, 4, 3, 4, 1, 3, 1, 2, 0, 3, 4, 3, 0],
    accuracy: 0.125,
    macro: 0.11372549019607843,
    micro: 0.125,
    weighted: 0.15137254901960784,
    precision: [0.1, 0.3333333333333333, 0.0, 0.3333333333333333, 0.0, 0.0],
    recall: [0.2, 0.18181818181818182, 0.0, 0.14285714285714285, 0.0, 0.0],
    f1: [0.13333333333333333, 0.23529411764705882, 0.0, 0.2, 0.0, 0.0],
    support: [5, 11, 10, 14, 0, 0],
    cm: [[1, 0, 3, 0, 1, 0], [4, 2, 2, 1, 2, 0], [0, 2, 0, 3, 5, 0], [5, 2, 3, 2, 2, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],
  },
  {
    name: '8 classes, 60 examples, 60% correct',
    n: 8,
    y: [4, 2, 7, 7, 1, 4, 7, 6, 5, 5, 0, 5, 3, 0, 1, 4, 5, 4, 4, 6, 5, 2, 5, 4, 0, 0, 5, 3, 4, 2, 1, 1, 3, 6, 3, 3, 4, 7, 3, 4, 3, 4, 3, 5, 4, 5, 7, 1, 4, 3, 2, 1, 0, 3, 6, 0, 3, 7, 7, 1],
    p: [2, 2, 6, 4, 1, 2, 1, 2, 5, 5, 0, 3, 3, 0, 1, 4, 5, 4, 4, 6, 5, 5, 5, 4, 0, 3, 5, 3, 4, 2, 5, 7, 3, 6, 1, 3, 4, 4, 3, 4, 5, 2, 3, 6, 4, 5, 2, 1, 4, 5, 2, 7, 2, 3, 4, 0, 3, 7, 7, 1],
    accuracy: 0.65,
    macro: 0.6190580253080253,
    micro: 0.65,
    weighted: 0.653004218004218,
    precision: [1.0, 0.6666666666666666, 0.3333333333333333, 0.8, 0.75, 0.6363636363636364, 0.5, 0.5],
    recall: [0.6666666666666666, 0.5714285714285714, 0.75, 0.7272727272727273, 0.75, 0.7777777777777778, 0.5, 0.2857142857142857],
    f1: [0.8, 0.6153846153846154, 0.46153846153846156, 0.7619047619047619, 0.75, 0.7, 0.5, 0.36363636363636365],
    support: [6, 7, 4, 11, 12, 9, 4, 7],
    cm: [[4, 0, 1, 1, 0, 0, 0, 0], [0, 4, 0, 0, 0, 1, 0, 2], [0, 0, 3, 0, 0, 1, 0, 0], [0, 1, 0, 8, 0, 2, 0, 0], [0, 0, 3, 0, 9, 0, 0, 0], [0, 0, 0, 1, 0, 7, 1, 0], [0, 0, 1, 0, 1, 0, 2, 0], [0, 1, 1, 0, 2, 0, 1, 2]],
  },
];

for (const c of CASES) {
  test(`matches scikit-learn: ${c.name}`, () => {
    const y = i32(c.y);
    const p = i32(c.p);
    close(accuracy(y, p), c.accuracy, 'accuracy');
    close(f1Score(y, p, c.n, 'macro'), c.macro, 'macro');
    close(f1Score(y, p, c.n, 'micro'), c.micro, 'micro');
    close(f1Score(y, p, c.n, 'weighted'), c.weighted, 'weighted');
    assert.deepEqual(confusionMatrix(y, p, c.n), c.cm);
    const scores = perClassScores(y, p, c.n);
    closeAll(scores.map((s) => s.precision), c.precision, 'precision');
    closeAll(scores.map((s) => s.recall), c.recall, 'recall');
    closeAll(scores.map((s) => s.f1), c.f1, 'f1');
    assert.deepEqual(scores.map((s) => s.support), c.support);
  });
}

test('computeMetrics builds the eval_results.json shape keyed by label name', () => {
  const c = CASES[0];
  const id2label = { 0: 'zero', 1: 'one', 2: 'two', 3: 'three', 4: 'four', 5: 'five' };
  const r = computeMetrics(i32(c.y), i32(c.p), id2label, 1.25);
  assert.deepEqual(Object.keys(r), ['accuracy', 'macro_f1', 'micro_f1', 'weighted_f1', 'loss', 'per_class', 'confusion_matrix', 'labels']);
  assert.deepEqual(r.labels, ['zero', 'one', 'two', 'three', 'four', 'five']);
  close(r.macro_f1, c.macro, 'macro_f1');
  close(r.weighted_f1, c.weighted, 'weighted_f1');
  close(r.micro_f1, c.micro, 'micro_f1');
  close(r.accuracy, c.accuracy, 'accuracy');
  assert.equal(r.loss, 1.25);
  assert.deepEqual(r.confusion_matrix, c.cm);
  close(r.per_class.one.recall, c.recall[1], 'one.recall');
  assert.deepEqual(r.per_class.five, { precision: 0, recall: 0, f1: 0, support: 0 });
  assert.equal('loss' in computeMetrics(i32([0]), i32([0]), { 0: 'a' }), false);
  const text = formatClassificationReport(r);
  assert.match(text, /^\s+precision\s+recall\s+f1-score\s+support$/m);
  assert.match(text, /^\s+one\s+0\.3333\s+0\.1818\s+0\.2353\s+11$/m);
  assert.match(text, /^\s+macro f1\s+0\.1137\s+40$/m);
});

test('bad inputs throw with the index and what was expected', () => {
  assert.throws(() => accuracy(i32([0, 1]), i32([0])), /labels has 2 entries but predictions has 1/);
  assert.throws(() => confusionMatrix(i32([0, 3]), i32([0, 1]), 3), /labels\[1\] = 3; expected a class id in \[0, 3\)/);
  assert.throws(() => f1Score(i32([0]), i32([-1]), 2, 'macro'), /predictions\[0\] = -1/);
  assert.throws(() => accuracy(i32([]), i32([])), /no examples/);
  assert.throws(() => computeMetrics(i32([0]), i32([0]), { 0: 'a', 2: 'c' }), /id2label: key "1" is missing; expected keys 0\.\.1/);
});
