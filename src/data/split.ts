/**
 * A seeded, stratified train/eval split, for when no eval file is given.
 */
import { deriveSeed, mulberry32, shuffleInPlace } from './rng.js';
import { sortedLabels } from './labels.js';

/** Salt of the split's random stream (distinct from the batching stream). */
const SPLIT_STREAM = 1;

export interface SplitOptions {
  /** Fraction of examples held out for evaluation, in (0, 1). Default 0.1. */
  evalFraction?: number;
  /** Seed of the split. Default 42. */
  seed?: number;
}

/**
 * Splits `examples` so that each label keeps (nearly) its proportion in both parts,
 * like scikit-learn's StratifiedShuffleSplit (not bit-identical to it):
 * the eval size is ceil(evalFraction × N) (scikit-learn's rounding of test_size),
 * shared among labels by largest remainder (ties: label order), and every label
 * keeps at least one example in train. Which examples go to eval is a seeded
 * shuffle per label. Both parts keep the input order.
 * @throws Error if evalFraction is not in (0, 1) or there are fewer than 2 examples.
 */
export function stratifiedSplit<T extends { label: string }>(examples: T[], options: SplitOptions = {}): { train: T[]; eval: T[] } {
  const evalFraction = options.evalFraction ?? 0.1;
  if (!(evalFraction > 0 && evalFraction < 1)) throw new Error(`stratifiedSplit: evalFraction ${evalFraction}; expected a number in (0, 1)`);
  if (examples.length < 2) throw new Error(`stratifiedSplit: ${examples.length} examples; expected at least 2`);
  const byLabel = new Map<string, number[]>();
  examples.forEach((e, i) => {
    const members = byLabel.get(e.label);
    if (members) members.push(i);
    else byLabel.set(e.label, [i]);
  });
  const labels = sortedLabels([...byLabel.keys()]);
  const counts = allocate(labels.map((l) => byLabel.get(l)!.length), Math.ceil(evalFraction * examples.length));
  const rng = mulberry32(deriveSeed(options.seed ?? 42, SPLIT_STREAM));
  const isEval = new Uint8Array(examples.length);
  labels.forEach((label, c) => {
    const members = byLabel.get(label)!;
    shuffleInPlace(members, rng);
    for (let k = 0; k < counts[c]; k++) isEval[members[k]] = 1;
  });
  return { train: examples.filter((_, i) => !isEval[i]), eval: examples.filter((_, i) => isEval[i]) };
}

/** Eval count per class: floor of the proportional quota, then largest remainders, each ≤ size − 1. */
function allocate(sizes: number[], total: number): number[] {
  const n = sizes.reduce((a, b) => a + b, 0);
  const quota = sizes.map((s) => (s * total) / n);
  const counts = quota.map((q, c) => Math.min(Math.floor(q), sizes[c] - 1));
  let left = total - counts.reduce((a, b) => a + b, 0);
  const frac = (c: number) => quota[c] - Math.floor(quota[c]);
  const order = sizes.map((_, c) => c).sort((a, b) => frac(b) - frac(a) || a - b);
  // Several rounds: classes capped at size − 1 hand their share to the others.
  for (let gave = true; left > 0 && gave; ) {
    gave = false;
    for (const c of order) {
      if (left > 0 && counts[c] < sizes[c] - 1) {
        counts[c]++;
        left--;
        gave = true;
      }
    }
  }
  return counts;
}
