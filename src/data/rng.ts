/**
 * The one seeded PRNG of the TypeScript side: data order (shuffles, splits,
 * length-grouped batches). Everything that must be reproducible from a seed
 * draws from here, never from Math.random.
 *
 * Generator: mulberry32 (Tommy Ettinger, public domain): 32-bit state, period
 * 2^32, passes gjrand/PractRand to 2^32 outputs; plenty for permuting datasets
 * of up to a few million rows. Streams are separated by hashing (seed, salt...)
 * with the murmur3 32-bit finaliser, so epoch 3 of seed 42 does not overlap
 * epoch 4 in any obvious way.
 */

/** A generator of uniform floats in [0, 1) with 2^-32 resolution. */
export type Rng = () => number;

/**
 * mulberry32 seeded with `seed` (only its low 32 bits are used).
 * The k-th call returns the k-th output divided by 2^32.
 */
export function mulberry32(seed: number): Rng {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  };
}

/** murmur3 fmix32: a bijective avalanche mix of a 32-bit integer. */
function fmix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * A 32-bit seed for an independent stream, derived from a user seed and
 * integer salts (e.g. a stream id and the epoch). Deterministic.
 */
export function deriveSeed(seed: number, ...salts: number[]): number {
  let h = fmix32((seed >>> 0) ^ 0x9e3779b9);
  for (const s of salts) h = fmix32((h ^ (s >>> 0)) + 0x9e3779b9);
  return h;
}

/** A uniform integer in [0, n), n ≤ 2^32. */
export function randomInt(rng: Rng, n: number): number {
  return Math.floor(rng() * n);
}

/** Fisher–Yates (Durstenfeld) shuffle of an array or typed array, in place. */
export function shuffleInPlace<T>(items: { length: number; [i: number]: T }, rng: Rng): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = randomInt(rng, i + 1);
    const tmp = items[i];
    items[i] = items[j];
    items[j] = tmp;
  }
}
