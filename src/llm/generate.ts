/**
 * The batched decoding loop (Hugging Face generate() with a KV cache): the
 * prompts go to the engine once (prefill, left-padded), then one native
 * decode step per new token for every unfinished row, each step a Promise,
 * so the event loop keeps running between tokens. Token choice is
 * src/llm/sampling.ts; what ends a row (eos ids, max_new_tokens, a stop
 * predicate for stop strings, a constraint that completed) is decided here.
 */
import { logSoftmaxTop, Sampler, type SamplingOptions } from './sampling.js';

/** What the loop needs of an engine (src/engine.ts Engine with a causal-LM config). */
export interface DecoderEngine {
  /** (B, T) left-padded prompts → each row's last logits (B × V). */
  prefill(batch: { input_ids: Int32Array; attention_mask: Int32Array; batchSize: number; seqLen: number }, opts: { maxNewTokens: number }): Promise<{ logits: Float32Array }>;
  /** One token per row (B) → the next logits (B × V). */
  decode(tokens: Int32Array): Promise<{ logits: Float32Array }>;
}

/** Restricts each row's next token (constrained decoding: choices, grammars). */
export interface TokenConstraint {
  /** Ids allowed after `generated` (null: any). An empty set ends the row. */
  allowed(generated: readonly number[]): ReadonlySet<number> | null;
}

export interface GenerateIdsOptions extends SamplingOptions {
  /** New tokens per row at most (HF max_new_tokens). */
  maxNewTokens: number;
  /** A row ends after producing one of these (included in its output). */
  eosTokenIds: readonly number[];
  /** HF min_new_tokens: the eos ids are suppressed until a row has this many (default 0). */
  minNewTokens?: number;
  /** Padding id for the prompt batch (any valid id: padded keys are masked). */
  padTokenId: number;
  /** Called with a row's ids so far; true ends the row (stop strings). */
  stop?: (row: number, generated: readonly number[]) => boolean;
  /** Per-row constraint (one for every row, or an array). */
  constraint?: TokenConstraint | ReadonlyArray<TokenConstraint | undefined>;
  /** Stops every row (HF StoppingCriteria / an AbortSignal from the caller). */
  signal?: AbortSignal;
  /**
   * Also report each token's log-probability under the model (log-softmax of its logits, before
   * repetition penalty, temperature, filters or constraints) and this many most likely
   * alternatives (0: none). Undefined: no log-probabilities.
   */
  logprobs?: number;
}

export type FinishReason = 'stop' | 'length' | 'constraint' | 'aborted';

/** One emitted token. `finish` is set on a row's last event. */
export interface TokenEvent {
  row: number;
  token: number;
  finish?: FinishReason;
  /** With options.logprobs: the token's log-probability, and the top alternatives as [id, logprob]. */
  logprob?: number;
  top?: Array<[number, number]>;
}

/**
 * Generates for every prompt, yielding tokens as they come (row order within a step).
 * @param vocabSize V, the width of a logits row.
 * @throws Error for an empty prompt, maxNewTokens < 1, or what the engine throws.
 */
export async function* generateIds(engine: DecoderEngine, vocabSize: number, prompts: ReadonlyArray<readonly number[]>, o: GenerateIdsOptions): AsyncGenerator<TokenEvent> {
  if (!Number.isInteger(o.maxNewTokens) || o.maxNewTokens < 1) throw new Error(`maxNewTokens must be a positive integer, got ${o.maxNewTokens}`);
  const B = prompts.length;
  if (B === 0) return;
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new Error(`prompt ${i} is empty: it needs at least one token (a BOS token, or text)`);
  });
  const T = Math.max(...prompts.map((p) => p.length));
  const input_ids = new Int32Array(B * T).fill(o.padTokenId);
  const attention_mask = new Int32Array(B * T);
  prompts.forEach((p, i) => {
    input_ids.set(p, i * T + T - p.length);
    attention_mask.fill(1, i * T + T - p.length, (i + 1) * T);
  });
  const samplers = prompts.map((_, i) => new Sampler(o, i));
  const constraint = (i: number) => (Array.isArray(o.constraint) ? o.constraint[i] : (o.constraint as TokenConstraint | undefined));
  const eos = new Set(o.eosTokenIds);
  const out: number[][] = prompts.map(() => []);
  const done = prompts.map(() => false);
  let { logits } = await engine.prefill({ input_ids, attention_mask, batchSize: B, seqLen: T }, { maxNewTokens: o.maxNewTokens });
  const next = new Int32Array(B);
  for (let step = 0; step < o.maxNewTokens; step++) {
    for (let i = 0; i < B; i++) {
      if (done[i]) {
        next[i] = o.padTokenId;  // keeps the batch rectangular; its output is ignored
        continue;
      }
      if (o.signal?.aborted) {
        done[i] = true;
        yield { row: i, token: -1, finish: 'aborted' };
        continue;
      }
      const c = constraint(i);
      const allowed = c?.allowed(out[i]) ?? undefined;
      if (allowed && allowed.size === 0) {
        done[i] = true;
        yield { row: i, token: -1, finish: 'constraint' };
        continue;
      }
      const row = logits.subarray(i * vocabSize, (i + 1) * vocabSize);
      // Of the model's own distribution: before the row is changed below.
      const lp = o.logprobs !== undefined ? { ...logSoftmaxTop(row, o.logprobs), raw: Float32Array.from(row) } : undefined;
      if (out[i].length < (o.minNewTokens ?? 0)) for (const id of eos) row[id] = -Infinity;
      const token = samplers[i].next(row, o.repetitionPenalty && o.repetitionPenalty !== 1 ? [...prompts[i], ...out[i]] : [], allowed ?? undefined);
      out[i].push(token);
      next[i] = token;
      let finish: FinishReason | undefined;
      if (eos.has(token) || o.stop?.(i, out[i])) finish = 'stop';
      else if (step + 1 === o.maxNewTokens) finish = 'length';
      if (finish) done[i] = true;
      yield { row: i, token, finish, ...(lp ? { logprob: lp.raw[token] - lp.logZ, top: lp.top } : {}) };
    }
    if (done.every(Boolean) || step + 1 === o.maxNewTokens) break;
    ({ logits } = await engine.decode(next));
  }
}
