/**
 * What a training task tells the one Trainer loop (src/train/trainer.ts): how to pad a list of
 * encoded examples into a batch, how much each micro-batch weighs in an optimizer step's loss,
 * how to evaluate, and what a checkpoint holds. The loop itself (schedules, accumulation,
 * evaluation cadence, best/last checkpoints, early stopping, exact resume, NaN guard, stop())
 * knows nothing of classifiers or language models — the same split as Hugging Face's Trainer,
 * whose data collator and compute_metrics differ per task while the loop does not.
 */
import type { Batch, Engine } from '../engine.js';
import { makeBatches } from '../data/index.js';

/** An evaluation's numbers: every task reports a mean loss; the rest are task metrics. */
export interface TaskEvalResults {
  /** Mean cross-entropy (nats) over what the task's loss averages (examples or target tokens). */
  loss?: number;
}

/** A resume setting: its value in this run and the flag a person would change. */
export interface TaskSetting {
  value: string | number | boolean;
  flag: string;
}

/**
 * One task of the Trainer loop.
 * @typeParam E an encoded example (or a packed row of examples) as the task's collate takes it.
 * @typeParam R what evaluate() resolves.
 */
export interface TrainingTask<E, R extends TaskEvalResults = TaskEvalResults> {
  readonly engine: Engine;
  /** Keys of R that may be metric_for_best_model (without HF's optional `eval_` prefix). */
  readonly metricNames: readonly string[];
  /** metric_for_best_model when the arguments give none. */
  readonly defaultMetric: string;
  /**
   * Called by the Trainer as each epoch starts (also the epoch a resumed run continues in), as
   * PyTorch's DistributedSampler.set_epoch: a task whose collate draws randomness (a masked LM's
   * masks) keys it by the epoch, so a resumed run draws what the uninterrupted one would.
   */
  setEpoch?(epoch: number): void;
  /**
   * What learning_rate 'auto' divides the range test's steepest rate by (default LR_FIND_DIVISOR,
   * 10, for pretrained weights that train): new LoRA adapters on a frozen base take the steepest
   * rate itself (1).
   */
  readonly lrFindDivisor?: number;
  /** Unpadded length in tokens, for group_by_length batching. */
  length(example: E): number;
  /** Pads examples into one (B, T) batch. */
  collate(examples: E[]): Batch;
  /**
   * The micro-batch's weight in an optimizer step (lossScale = weight / the step's total):
   * a classifier's example count (mean over examples), a causal LM's target-token count
   * (TRL/HF token-normalised accumulation: the step's loss is the mean over all its targets).
   */
  lossWeight(examples: E[]): number;
  /** Tokens a micro-batch feeds the model (real tokens, no padding), for tokens/s; absent: not logged. */
  tokenCount?(examples: E[]): number;
  /** Evaluates (dropout off) on `examples` in batches of at most `batchSize`. */
  evaluate(examples: E[], batchSize: number): Promise<R>;
  /**
   * Data parallel (src/train/distributed.ts): evaluate()'s numbers as sums that add over shards
   * (a classifier's loss sum, count and confusion matrix; a language model's loss × targets and
   * targets), for a shard of the examples (possibly empty); evaluationResults turns the sums of
   * every shard into what evaluate() gives. A task without them is evaluated whole on every rank.
   */
  evaluationSums?(examples: E[], batchSize: number): Promise<Float64Array>;
  evaluationResults?(sums: Float64Array): R;
  /** Writes what the run's result is made of (a model folder, or an adapter folder) into `dir`. */
  saveModel(dir: string): Promise<void>;
  /**
   * Engine parameter names a checkpoint keeps with their AdamW moments: what trains. A frozen
   * base (LoRA) has no moments, so it is neither saved nor restored (it is reloaded from the base).
   */
  checkpointParameters(): string[];
  /** The weights saveModel wrote into `dir`, by engine parameter name. @throws naming the file when missing. */
  readSavedWeights(dir: string): Promise<Map<string, Float32Array>>;
  /** Settings beyond TrainingArguments that a resumed run must share (shapes, label count, packing...). */
  resumeSettings(): Record<string, TaskSetting>;
}

/**
 * A language model's evaluation loss (dropout off) as sums: [Σ batch mean loss × its targets,
 * targets] over every target token of `examples`, in length-grouped batches of at most `batchSize`
 * (HF run_clm / run_mlm's eval loss, token-weighted). Sums add over data-parallel shards.
 * `collate` builds a batch and says how many targets it holds; batches without targets are skipped.
 */
export async function tokenWeightedSums<E>(
  engine: Engine,
  examples: readonly E[],
  length: (e: E) => number,
  batchSize: number,
  collate: (list: E[]) => { batch: Batch; targets: number },
): Promise<Float64Array> {
  let sum = 0;
  let tokens = 0;
  for (const idx of makeBatches(examples.map(length), { batchSize, shuffle: false, groupByLength: true })) {
    const { batch, targets } = collate(idx.map((i) => examples[i]));
    if (targets === 0) continue;
    const { loss } = await engine.forward(batch, { logits: false });
    sum += (loss ?? NaN) * targets;
    tokens += targets;
  }
  return Float64Array.of(sum, tokens);
}

/** tokenWeightedSums' results: loss (NaN when there is no target), perplexity exp(loss), eval_tokens. */
export function tokenWeightedResults(sums: Float64Array): { loss: number; perplexity: number; eval_tokens: number } {
  const [sum, tokens] = sums;
  const loss = tokens > 0 ? sum / tokens : NaN;
  return { loss, perplexity: Math.exp(loss), eval_tokens: tokens };
}
