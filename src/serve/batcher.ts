/**
 * Batches concurrent generation requests onto one LLM. The engine holds one generation at a time
 * (one KV cache), so requests that arrive while a batch generates wait, and the next batch takes
 * up to `maxBatch` of them at once: one prefill and one decode per step for all rows instead of
 * one generation per request.
 *
 * LLM.generate takes one set of options per call, so only requests whose options match (the
 * `key` the caller computes: sampling, stop strings, max tokens, tools when they are not in the
 * prompt) share a batch. The oldest waiting request always goes next, with the waiting requests
 * that match it; the others wait for a later batch, so no request starves.
 *
 * Static batching, not continuous: a batch runs until its longest row ends, and requests arriving
 * meanwhile wait for it (LLM offers no way to add a row to a running generation).
 */
import { randomInt } from 'node:crypto';
import type { GenerateOptions, GenerateResult, Prompt } from '../llm/llm.js';

/** What the batcher needs of an LLM (LLM.generate with an array of prompts). */
export interface BatchGenerator {
  generate(prompts: Prompt[], options?: GenerateOptions): Promise<GenerateResult[]>;
}

/** One request's generation. */
export interface BatchJob {
  prompt: Prompt;
  /** Options of the generation; signal and onTextChunk are the batcher's. */
  options: Omit<GenerateOptions, 'signal' | 'onTextChunk'>;
  /** Jobs with equal keys may share a batch: their `options` must give the same generation. */
  key: string;
  /** The request's client went away: the job leaves the queue, or its row stops being reported; a batch whose rows are all aborted stops. */
  signal?: AbortSignal;
  /** Each text delta of this job's row, as LLM's onTextChunk gives them. */
  onDelta?: (text: string) => void;
}

/** Thrown by submit() when `maxQueue` jobs already wait. */
export class QueueFullError extends Error {
  constructor(readonly maxQueue: number) {
    super(`the server is busy: ${maxQueue} requests are already waiting; retry later`);
  }
}

export interface BatcherOptions {
  /** Rows per engine batch at most (default 8). */
  maxBatch?: number;
  /** Jobs waiting (not running) at most; past it submit() rejects with QueueFullError (default 64). */
  maxQueue?: number;
}

/** Counters for /health and tests. */
export interface BatcherStats {
  /** LLM.generate calls made (each one engine prefill). */
  batches: number;
  /** Rows generated over all batches. */
  rows: number;
  /** Largest batch so far. */
  largestBatch: number;
}

interface Pending {
  job: BatchJob;
  resolve: (r: GenerateResult) => void;
  reject: (err: unknown) => void;
  aborted: boolean;
  /** A delta went out: the job cannot be run again from the start. */
  streamed: boolean;
  detach: () => void;
}

const abortedResult = (): GenerateResult => ({ text: '', tokens: [], finishReason: 'aborted', usage: { promptTokens: 0, completionTokens: 0 } });

export class GenerationBatcher {
  readonly maxBatch: number;
  readonly maxQueue: number;
  readonly stats: BatcherStats = { batches: 0, rows: 0, largestBatch: 0 };
  private readonly queue: Pending[] = [];
  private runningRows = 0;
  private scheduled = false;

  /**
   * @throws Error when maxBatch or maxQueue is not a positive integer.
   */
  constructor(private readonly llm: BatchGenerator, options: BatcherOptions = {}) {
    this.maxBatch = options.maxBatch ?? 8;
    this.maxQueue = options.maxQueue ?? 64;
    if (!Number.isInteger(this.maxBatch) || this.maxBatch < 1) throw new Error(`maxBatch must be a positive integer, got ${this.maxBatch}`);
    if (!Number.isInteger(this.maxQueue) || this.maxQueue < 1) throw new Error(`maxQueue must be a positive integer, got ${this.maxQueue}`);
  }

  /** Jobs waiting for a batch. */
  get queued(): number {
    return this.queue.length;
  }

  /** Rows in the batch generating now (0 when idle). */
  get running(): number {
    return this.runningRows;
  }

  /**
   * Queues a generation.
   * @returns its result; finishReason 'aborted' (and empty text when it never ran) once the signal fired.
   * @throws QueueFullError when maxQueue jobs wait; what LLM.generate throws for this job (a batch
   *   that fails is rerun one job at a time, so one bad job fails only itself).
   */
  submit(job: BatchJob): Promise<GenerateResult> {
    if (this.queue.length >= this.maxQueue) return Promise.reject(new QueueFullError(this.maxQueue));
    if (job.signal?.aborted) return Promise.resolve(abortedResult());
    return new Promise<GenerateResult>((resolve, reject) => {
      const p: Pending = { job, resolve, reject, aborted: false, streamed: false, detach: () => undefined };
      if (job.signal) {
        const onAbort = () => {
          p.aborted = true;
          const at = this.queue.indexOf(p);
          // Still waiting: it leaves the queue and costs the engine nothing.
          if (at >= 0) {
            this.queue.splice(at, 1);
            p.detach();
            resolve(abortedResult());
          }
        };
        job.signal.addEventListener('abort', onAbort, { once: true });
        p.detach = () => job.signal!.removeEventListener('abort', onAbort);
      }
      this.queue.push(p);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.runningRows > 0) return;
    this.scheduled = true;
    // One turn of the event loop lets requests that arrived together join the first batch.
    setImmediate(() => {
      this.scheduled = false;
      void this.next();
    });
  }

  /** The oldest job and the waiting jobs that match it, up to maxBatch. */
  private take(): Pending[] {
    const key = this.queue[0].job.key;
    const batch: Pending[] = [];
    for (let i = 0; i < this.queue.length && batch.length < this.maxBatch; ) {
      if (this.queue[i].job.key === key) batch.push(...this.queue.splice(i, 1));
      else i++;
    }
    return batch;
  }

  private async next(): Promise<void> {
    if (this.runningRows > 0 || this.queue.length === 0) return;
    const batch = this.take();
    this.runningRows = batch.length;
    try {
      await this.run(batch, true);
    } finally {
      this.runningRows = 0;
      for (const p of batch) p.detach();
      if (this.queue.length > 0) this.schedule();
    }
  }

  private async run(batch: Pending[], retry: boolean): Promise<void> {
    const controller = new AbortController();
    const stopIfAllGone = () => {
      if (batch.every((p) => p.aborted)) controller.abort();
    };
    for (const p of batch) p.job.signal?.addEventListener('abort', stopIfAllGone, { once: true });
    stopIfAllGone();
    const options: GenerateOptions = {
      ...batch[0].job.options,
      signal: controller.signal,
      onTextChunk: (text, row) => {
        const p = batch[row];
        if (p.aborted) return;
        p.streamed = true;
        p.job.onDelta?.(text);
      },
    };
    // Sampled requests without a seed draw one per batch, as OpenAI's differ call to call.
    if (options.seed === undefined && (options.temperature ?? 0) > 0) options.seed = randomInt(2 ** 31);
    this.stats.batches++;
    this.stats.rows += batch.length;
    this.stats.largestBatch = Math.max(this.stats.largestBatch, batch.length);
    try {
      const results = await this.llm.generate(batch.map((p) => p.job.prompt), options);
      batch.forEach((p, i) => p.resolve(p.aborted ? { ...results[i], finishReason: 'aborted' } : results[i]));
    } catch (err) {
      if (!retry || batch.length === 1) {
        for (const p of batch) p.reject(err);
        return;
      }
      for (const p of batch) {
        if (p.aborted) p.resolve(abortedResult());
        else if (p.streamed) p.reject(err);
        else await this.run([p], false);
      }
    } finally {
      for (const p of batch) p.job.signal?.removeEventListener('abort', stopIfAllGone);
    }
  }
}
