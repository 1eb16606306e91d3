/**
 * Single-label classification metrics with scikit-learn's conventions
 * (sklearn.metrics: accuracy_score, precision_recall_fscore_support,
 * f1_score, confusion_matrix, classification_report), zero_division=0.
 *
 * Inputs are class ids: `labels` (true) and `predictions`, Int32Array of
 * length N, each id in [0, numLabels).
 */

export interface ClassScores {
  precision: number;
  recall: number;
  f1: number;
  /** Number of true examples of the class. */
  support: number;
}

/** The shape of eval_results.json. */
export interface EvalResults {
  accuracy: number;
  macro_f1: number;
  micro_f1: number;
  weighted_f1: number;
  /** Mean cross-entropy over the eval set (nats), when the caller has it. */
  loss?: number;
  per_class: Record<string, ClassScores>;
  /** confusion_matrix[true][predicted], numLabels × numLabels, in id order. */
  confusion_matrix: number[][];
  /** Label names in id order (rows/columns of confusion_matrix). */
  labels: string[];
}

export type Average = 'macro' | 'micro' | 'weighted';

/**
 * Counts per (true, predicted) pair: rows = true class, columns = predicted.
 * @throws Error if lengths differ, N = 0, or an id is outside [0, numLabels).
 */
export function confusionMatrix(labels: Int32Array, predictions: Int32Array, numLabels: number): number[][] {
  checkInputs(labels, predictions, numLabels);
  const m = Array.from({ length: numLabels }, () => new Array<number>(numLabels).fill(0));
  for (let i = 0; i < labels.length; i++) m[labels[i]][predictions[i]]++;
  return m;
}

/** Fraction of predictions equal to the label. @throws as confusionMatrix. */
export function accuracy(labels: Int32Array, predictions: Int32Array): number {
  checkInputs(labels, predictions, Infinity);
  let hits = 0;
  for (let i = 0; i < labels.length; i++) if (labels[i] === predictions[i]) hits++;
  return hits / labels.length;
}

/**
 * Precision, recall, F1 and support of every class 0..numLabels-1 (arrays indexed by id).
 * A 0/0 ratio is 0 (zero_division=0). @throws as confusionMatrix.
 */
export function perClassScores(labels: Int32Array, predictions: Int32Array, numLabels: number): ClassScores[] {
  return scoresFromMatrix(confusionMatrix(labels, predictions, numLabels));
}

/**
 * F1 averaged over classes present in labels OR predictions (scikit-learn's
 * default `labels=None`): 'macro' = unweighted mean, 'weighted' = mean weighted by
 * support, 'micro' = F1 of the pooled counts (= accuracy for single-label data).
 * @throws as confusionMatrix.
 */
export function f1Score(labels: Int32Array, predictions: Int32Array, numLabels: number, average: Average): number {
  return averageF1(confusionMatrix(labels, predictions, numLabels), average);
}

/**
 * Every metric of eval_results.json. `id2label` maps id (string key) to name and
 * fixes numLabels; per_class and confusion_matrix cover all of its classes.
 * @throws as confusionMatrix, or if id2label's keys are not 0..n-1.
 */
export function computeMetrics(
  labels: Int32Array,
  predictions: Int32Array,
  id2label: Record<string, string>,
  loss?: number,
): EvalResults {
  const names = labelNames(id2label);
  const matrix = confusionMatrix(labels, predictions, names.length);
  const scores = scoresFromMatrix(matrix);
  const per_class: Record<string, ClassScores> = {};
  names.forEach((name, c) => (per_class[name] = scores[c]));
  return {
    accuracy: trace(matrix) / labels.length,
    macro_f1: averageF1(matrix, 'macro'),
    micro_f1: averageF1(matrix, 'micro'),
    weighted_f1: averageF1(matrix, 'weighted'),
    ...(loss === undefined ? {} : { loss }),
    per_class,
    confusion_matrix: matrix,
    labels: names,
  };
}

function labelNames(id2label: Record<string, string>): string[] {
  const n = Object.keys(id2label).length;
  return Array.from({ length: n }, (_, i) => {
    if (!Object.hasOwn(id2label, String(i))) throw new Error(`id2label: key "${i}" is missing; expected keys 0..${n - 1}`);
    return id2label[String(i)];
  });
}

function scoresFromMatrix(m: number[][]): ClassScores[] {
  const n = m.length;
  return m.map((row, c) => {
    const tp = row[c];
    const support = row.reduce((a, b) => a + b, 0);
    let predicted = 0;
    for (let r = 0; r < n; r++) predicted += m[r][c];
    const precision = ratio(tp, predicted);
    const recall = ratio(tp, support);
    // F1 = 2·tp / (2·tp + fp + fn): equal to the harmonic mean, and 0 (not NaN) when p = r = 0.
    return { precision, recall, f1: ratio(2 * tp, support + predicted), support };
  });
}

function averageF1(m: number[][], average: Average): number {
  const total = m.reduce((a, row) => a + row.reduce((x, y) => x + y, 0), 0);
  if (average === 'micro') return ratio(2 * trace(m), 2 * total);
  const scores = scoresFromMatrix(m);
  const present = scores.filter((s, c) => s.support > 0 || m.some((row) => row[c] > 0));
  if (average === 'macro') return present.reduce((a, s) => a + s.f1, 0) / present.length;
  return present.reduce((a, s) => a + s.f1 * s.support, 0) / total;
}

function trace(m: number[][]): number {
  return m.reduce((a, row, i) => a + row[i], 0);
}

function ratio(num: number, den: number): number {
  return den === 0 ? 0 : num / den;
}

function checkInputs(labels: Int32Array, predictions: Int32Array, numLabels: number): void {
  if (labels.length !== predictions.length) {
    throw new Error(`metrics: labels has ${labels.length} entries but predictions has ${predictions.length}; expected equal lengths`);
  }
  if (labels.length === 0) throw new Error('metrics: no examples; expected at least one label/prediction pair');
  for (const [name, ids] of [['labels', labels], ['predictions', predictions]] as const) {
    const i = ids.findIndex((v) => !(v >= 0 && v < numLabels));
    if (i >= 0) throw new Error(`metrics: ${name}[${i}] = ${ids[i]}; expected a class id in [0, ${numLabels})`);
  }
}

/**
 * A plain-text table in the layout of scikit-learn's classification_report
 * (per-class precision, recall, f1-score, support; then accuracy, macro and
 * weighted averages), for the console. Unlike scikit-learn, the averages
 * rows use the F1 conventions above (classes present in labels or predictions).
 */
export function formatClassificationReport(r: EvalResults, digits = 4): string {
  const width = Math.max(12, ...r.labels.map((l) => l.length));
  const num = (x: number) => x.toFixed(digits).padStart(10);
  const total = Object.values(r.per_class).reduce((a, s) => a + s.support, 0);
  const head = `${''.padStart(width)} ${'precision'.padStart(10)} ${'recall'.padStart(10)} ${'f1-score'.padStart(10)} ${'support'.padStart(10)}`;
  const rows = r.labels.map((l) => {
    const s = r.per_class[l];
    return `${l.padStart(width)} ${num(s.precision)} ${num(s.recall)} ${num(s.f1)} ${String(s.support).padStart(10)}`;
  });
  const blank = ''.padStart(10);
  return [
    head,
    '',
    ...rows,
    '',
    `${'accuracy'.padStart(width)} ${blank} ${blank} ${num(r.accuracy)} ${String(total).padStart(10)}`,
    `${'macro f1'.padStart(width)} ${blank} ${blank} ${num(r.macro_f1)} ${String(total).padStart(10)}`,
    `${'weighted f1'.padStart(width)} ${blank} ${blank} ${num(r.weighted_f1)} ${String(total).padStart(10)}`,
  ].join('\n');
}
