/**
 * Batches as lists of example indices, so batching is independent of the
 * tokenizer: the caller pads each batch (BertTokenizer.encodeBatch).
 */
import { deriveSeed, mulberry32, shuffleInPlace } from './rng.js';

/** Salt of the batching stream (distinct from the split stream). */
const BATCH_STREAM = 2;

export interface BatchOptions {
  /** Examples per batch (the last batch may be smaller). */
  batchSize: number;
  /** Seed of the data order. Default 42. */
  seed?: number;
  /** Epoch number (0-based); each epoch gets its own order. Default 0. */
  epoch?: number;
  /** Group examples of similar length to cut padding. Default true. */
  groupByLength?: boolean;
  /** Random order (training). False: deterministic order for evaluation. Default true. */
  shuffle?: boolean;
}

/**
 * Splits examples 0..lengths.length-1 into batches of indices; deterministic for (seed, epoch).
 *
 * `lengths[i]` is example i's unpadded length in tokens (any monotone proxy works).
 * - shuffle + groupByLength (training default), after Hugging Face's
 *   `get_length_grouped_indices` (trainer_pt_utils.py): a seeded permutation is cut
 *   into mega-batches of mult × batchSize examples (mult = min(⌊N / (4 × batchSize)⌋, 50),
 *   at least 1), each sorted by length (longest first) and cut into batches; then the
 *   batch order is shuffled and the batch holding the longest example is moved first,
 *   so the largest (B, T) arena is allocated up front and out-of-memory shows at step 0.
 * - shuffle without grouping: a seeded permutation cut into batches.
 * - no shuffle: input order, or sorted by length (longest first, stable) when grouping —
 *   for evaluation, where order does not matter but padding does.
 * @returns arrays of example indices; every index appears exactly once.
 * @throws Error if batchSize is not a positive integer.
 */
export function makeBatches(lengths: ArrayLike<number>, options: BatchOptions): number[][] {
  const { batchSize, seed = 42, epoch = 0, groupByLength = true, shuffle = true } = options;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`makeBatches: batchSize ${batchSize}; expected a positive integer`);
  const n = lengths.length;
  const byLengthDesc = (a: number, b: number) => lengths[b] - lengths[a] || a - b;
  const order = Array.from({ length: n }, (_, i) => i);
  if (!shuffle) return chunk(groupByLength ? order.sort(byLengthDesc) : order, batchSize);
  const rng = mulberry32(deriveSeed(seed, BATCH_STREAM, epoch));
  shuffleInPlace(order, rng);
  if (!groupByLength) return chunk(order, batchSize);
  const megaSize = Math.max(1, Math.min(Math.floor(n / (batchSize * 4)), 50)) * batchSize;
  const batches = chunk(order, megaSize).flatMap((mega) => chunk(mega.sort(byLengthDesc), batchSize));
  shuffleInPlace(batches, rng);
  let maxLength = -Infinity;
  for (let i = 0; i < n; i++) maxLength = Math.max(maxLength, lengths[i]);
  const longest = batches.findIndex((b) => lengths[b[0]] === maxLength);
  if (longest > 0) [batches[0], batches[longest]] = [batches[longest], batches[0]];
  return batches;
}

function chunk<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
