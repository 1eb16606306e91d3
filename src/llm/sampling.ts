/**
 * Choosing the next token from a row of logits, as Hugging Face generate()
 * does (transformers generation/logits_process.py), in its order:
 * RepetitionPenaltyLogitsProcessor, then TemperatureLogitsWarper,
 * TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper, then a draw from the
 * softmax — or the argmax when sampling is off (temperature 0, HF's
 * do_sample=False). Draws come from a seeded generator, so a seed reproduces
 * a generation.
 */
import { mulberry32 } from '../data/rng.js';

/** Decoding options (Hugging Face GenerationConfig names, camel-cased as node-llama-cpp does). */
export interface SamplingOptions {
  /** 0 (default) = greedy; > 0 samples from softmax(logits / temperature). */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). */
  topK?: number;
  /** Keep the smallest set whose probability reaches topP (1 = off). */
  topP?: number;
  /** Drop tokens less likely than minP × the most likely one's probability (0 = off). */
  minP?: number;
  /** > 1 discourages tokens already in the prompt or output (CTRL, Keskar et al. 2019); 1 = off. */
  repetitionPenalty?: number;
  /** Seed of the draws (default 0). */
  seed?: number;
}

/** A value as an error message shows it: numbers as written (NaN, Infinity, not JSON's null). */
export function shown(v: unknown): string {
  return typeof v === 'number' || typeof v === 'bigint' ? String(v) : (JSON.stringify(v) ?? String(v));
}

/**
 * Checks the options and fills defaults.
 * @throws Error naming the option and the expected range.
 */
export function resolveSampling(o: SamplingOptions = {}): Required<SamplingOptions> {
  const r = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, seed: 0, ...o };
  const check = (ok: boolean, name: string, want: string, v: unknown) => {
    if (!ok) throw new Error(`${name} must be ${want}, got ${shown(v)}`);
  };
  check(typeof r.temperature === 'number' && r.temperature >= 0 && Number.isFinite(r.temperature), 'temperature', 'a finite number >= 0', r.temperature);
  check(Number.isInteger(r.topK) && r.topK >= 0, 'topK', 'an integer >= 0', r.topK);
  check(typeof r.topP === 'number' && r.topP > 0 && r.topP <= 1, 'topP', 'in (0, 1]', r.topP);
  check(typeof r.minP === 'number' && r.minP >= 0 && r.minP <= 1, 'minP', 'in [0, 1]', r.minP);
  check(typeof r.repetitionPenalty === 'number' && r.repetitionPenalty > 0 && Number.isFinite(r.repetitionPenalty), 'repetitionPenalty', 'a finite number > 0', r.repetitionPenalty);
  check(Number.isSafeInteger(r.seed), 'seed', 'an integer', r.seed);
  return r;
}

/** HF RepetitionPenaltyLogitsProcessor, in place: each seen token's logit divided (>0) or multiplied (<0) by the penalty. */
export function applyRepetitionPenalty(logits: Float32Array, seen: Iterable<number>, penalty: number): void {
  if (penalty === 1) return;
  for (const id of new Set(seen)) {
    const x = logits[id];
    logits[id] = x < 0 ? x * penalty : x / penalty;
  }
}

/** A token chooser with its own seeded generator (one per sequence). */
export class Sampler {
  private readonly o: Required<SamplingOptions>;
  private readonly rand: () => number;

  constructor(options: SamplingOptions = {}, stream = 0) {
    this.o = resolveSampling(options);
    // Distinct streams for the rows of a batch, all fixed by the one seed.
    this.rand = mulberry32((this.o.seed * 0x9e3779b1 + stream * 0x85ebca6b) >>> 0);
  }

  get greedy(): boolean {
    return this.o.temperature === 0;
  }

  /**
   * The next token id for one row of logits (V). `seen`: the ids so far
   * (prompt and output) for the repetition penalty. `allowed`, when given,
   * restricts the choice to those ids (constrained decoding).
   * Leaves `logits` modified.
   */
  next(logits: Float32Array, seen: Iterable<number> = [], allowed?: ReadonlySet<number>): number {
    if (this.greedy) {
      applyRepetitionPenalty(logits, seen, this.o.repetitionPenalty);
      if (allowed) for (let v = 0; v < logits.length; v++) if (!allowed.has(v)) logits[v] = -Infinity;
      return argmax(logits);
    }
    const { ids, probs } = this.distribution(logits, seen, allowed);
    let u = this.rand();
    for (let i = 0; i < ids.length; i++) {
      u -= probs[i];
      if (u < 0) return ids[i];
    }
    return ids[ids.length - 1];
  }

  /**
   * The distribution a sampled token is drawn from: the surviving ids, most
   * likely first, and their probabilities after every processor (HF's
   * scores after the warpers, softmaxed). For greedy decoding, the argmax alone.
   * Leaves `logits` modified.
   */
  distribution(logits: Float32Array, seen: Iterable<number> = [], allowed?: ReadonlySet<number>): { ids: number[]; probs: number[] } {
    applyRepetitionPenalty(logits, seen, this.o.repetitionPenalty);
    if (allowed) for (let v = 0; v < logits.length; v++) if (!allowed.has(v)) logits[v] = -Infinity;
    if (this.greedy) return { ids: [argmax(logits)], probs: [1] };
    const { temperature, topK, topP, minP } = this.o;
    // Candidates sorted by logit, descending; the warpers only ever cut the
    // tail. Tokens e^-40 less likely than the best cannot change any draw in
    // double precision, so they are not sorted at all.
    let best = -Infinity;
    for (let v = 0; v < logits.length; v++) if (logits[v] > best) best = logits[v];
    const cut = best - 40 * temperature;
    const idx: number[] = [];
    for (let v = 0; v < logits.length; v++) if (logits[v] >= cut && logits[v] > -Infinity) idx.push(v);
    idx.sort((a, b) => logits[b] - logits[a] || a - b);
    const z = idx.map((i) => logits[i] / temperature);
    let n = idx.length;
    if (topK > 0 && topK < n) {
      // torch.topk keeps ties with the k-th value too (HF removes only scores < kth).
      const kth = z[topK - 1];
      n = topK;
      while (n < z.length && z[n] === kth) n++;
    }
    const probs = softmax(z.slice(0, n));
    if (topP < 1) {
      // HF TopP: drop the low tail whose cumulative probability stays <= 1 - top_p.
      let tail = 0;
      let keep = n;
      for (let i = n - 1; i > 0; i--) {
        tail += probs[i];
        if (tail <= 1 - topP) keep = i;
        else break;
      }
      n = keep;
    }
    if (minP > 0) {
      const floor = minP * probs[0];
      let keep = 1;
      while (keep < n && probs[keep] >= floor) keep++;
      n = keep;
    }
    return { ids: idx.slice(0, n), probs: softmax(z.slice(0, n)) };
  }
}

/**
 * The model's log-probabilities of a logits row (log-softmax, before any sampling setting): the
 * log of its normaliser, and the `n` most likely ids with theirs (descending; ties to the lower id).
 * What OpenAI's logprobs report (its top_logprobs are this n).
 */
export function logSoftmaxTop(logits: ArrayLike<number>, n: number): { logZ: number; top: Array<[number, number]> } {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > m) m = logits[i];
  let s = 0;
  for (let i = 0; i < logits.length; i++) s += Math.exp(logits[i] - m);
  const logZ = m + Math.log(s);
  // n is small (OpenAI allows 20): keep the best n by insertion instead of sorting the vocabulary.
  const top: Array<[number, number]> = [];
  for (let i = 0; i < logits.length && n > 0; i++) {
    const v = logits[i];
    if (top.length === n && v <= top[n - 1][1]) continue;
    let k = top.length < n ? top.length : n - 1;
    top[k] = [i, v];
    while (k > 0 && top[k - 1][1] < v) {
      [top[k - 1], top[k]] = [top[k], top[k - 1]];
      k--;
    }
  }
  return { logZ, top: top.map(([id, v]) => [id, v - logZ]) };
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Softmax of scores sorted descending (z[0] is the maximum). */
function softmax(z: number[]): number[] {
  const m = z[0];
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}
