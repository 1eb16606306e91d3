/**
 * Sequence classification as a Trainer task (Hugging Face BertForSequenceClassification with
 * run_glue's data handling): WordPiece-encoded texts, one class id per example, batches padded
 * to their longest row, accuracy / F1s / confusion matrix as the metrics.
 */
import { join } from 'node:path';
import type { Batch } from '../engine.js';
import { saveModel, type Model } from '../model.js';
import { makeBatches, type Example } from '../data/index.js';
import { computeMetrics, type EvalResults } from '../metrics/index.js';
import { readSafetensors } from '../io/safetensors.js';
import type { BertTokenizer, Encoding } from '../tokenizer/index.js';
import type { TaskSetting, TrainingTask } from './task.js';

/** One tokenized, labelled example. */
export interface EncodedExample extends Encoding {
  label: number;
}

/** Metrics a classifier evaluation has, any of which may be metric_for_best_model. */
export const CLASSIFICATION_METRICS = ['accuracy', 'macro_f1', 'micro_f1', 'weighted_f1', 'loss'] as const;

/** Tokenizes each example (truncated to maxLength tokens) and attaches its class id labelIds[i]. */
export function encodeExamples(
  tokenizer: BertTokenizer,
  examples: readonly Example[],
  labelIds: ArrayLike<number>,
  maxLength: number,
): EncodedExample[] {
  return examples.map((e, i) => ({ ...tokenizer.encode(e.text, e.textPair ?? null, { maxLength }), label: labelIds[i] }));
}

/** Pads encoded examples into one (B, T) batch (T = the longest); labels (B). */
export function collate(examples: EncodedExample[], padTokenId: number): Batch {
  const B = examples.length;
  const T = Math.max(...examples.map((e) => e.input_ids.length));
  const input_ids = new Int32Array(B * T).fill(padTokenId);
  const attention_mask = new Int32Array(B * T);
  const token_type_ids = new Int32Array(B * T);
  const labels = new Int32Array(B);
  examples.forEach((e, b) => {
    input_ids.set(e.input_ids, b * T);
    attention_mask.set(e.attention_mask, b * T);
    token_type_ids.set(e.token_type_ids, b * T);
    labels[b] = e.label;
  });
  return { input_ids, attention_mask, token_type_ids, labels, batchSize: B, seqLen: T };
}

/** Forward passes over `examples` (dropout off): mean loss, predictions and logits (N, num_labels). */
export async function predictExamples(
  model: Model,
  examples: EncodedExample[],
  batchSize = 64,
): Promise<{ loss: number; predictions: Int32Array; logits: Float32Array }> {
  const L = model.config.num_labels;
  const logits = new Float32Array(examples.length * L);
  const predictions = new Int32Array(examples.length);
  let lossSum = 0;
  const batches = makeBatches(examples.map((e) => e.input_ids.length), { batchSize, shuffle: false, groupByLength: true });
  for (const idx of batches) {
    const out = await model.engine.forward(collate(idx.map((i) => examples[i]), model.tokenizer.padTokenId));
    lossSum += (out.loss ?? 0) * idx.length;
    idx.forEach((ex, r) => {
      const row = out.logits.subarray(r * L, (r + 1) * L);
      logits.set(row, ex * L);
      let best = 0;
      for (let c = 1; c < L; c++) if (row[c] > row[best]) best = c;
      predictions[ex] = best;
    });
  }
  return { loss: lossSum / Math.max(1, examples.length), predictions, logits };
}

/** Accuracy, F1s, per-class report and confusion matrix of `model` on `examples`. */
export async function evaluateExamples(model: Model, examples: EncodedExample[], batchSize = 64): Promise<EvalResults> {
  const { loss, predictions } = await predictExamples(model, examples, batchSize);
  const labels = Int32Array.from(examples.map((e) => e.label));
  return computeMetrics(labels, predictions, id2labelOf(model), loss);
}

function id2labelOf(model: Model): Record<string, string> {
  const id2label: Record<string, string> = {};
  for (let i = 0; i < model.config.num_labels; i++) id2label[String(i)] = model.config.id2label?.[String(i)] ?? `LABEL_${i}`;
  return id2label;
}

/**
 * evaluateExamples as sums that add over data-parallel shards: [loss sum, examples, the (L, L)
 * count of (label, prediction) pairs, row-major]. Every metric is a function of these counts.
 */
export async function evaluationSums(model: Model, examples: EncodedExample[], batchSize = 64): Promise<Float64Array> {
  const L = model.config.num_labels;
  const sums = new Float64Array(2 + L * L);
  if (examples.length === 0) return sums;
  const { loss, predictions } = await predictExamples(model, examples, batchSize);
  sums[0] = loss * examples.length;
  sums[1] = examples.length;
  examples.forEach((e, i) => (sums[2 + e.label * L + predictions[i]] += 1));
  return sums;
}

/** The EvalResults of evaluationSums added over shards (the same as evaluateExamples on the whole set). */
export function evaluationResults(model: Model, sums: Float64Array): EvalResults {
  const L = model.config.num_labels;
  const labels: number[] = [];
  const predictions: number[] = [];
  for (let y = 0; y < L; y++) {
    for (let p = 0; p < L; p++) {
      for (let k = 0; k < sums[2 + y * L + p]; k++) {
        labels.push(y);
        predictions.push(p);
      }
    }
  }
  return computeMetrics(Int32Array.from(labels), Int32Array.from(predictions), id2labelOf(model), sums[0] / Math.max(1, sums[1]));
}

/**
 * The classifier task: a micro-batch weighs its example count (the loss is a mean over
 * examples), checkpoints hold every parameter with its moments, and the saved model is the
 * Hugging Face folder saveModel writes.
 */
export class ClassificationTask implements TrainingTask<EncodedExample, EvalResults> {
  readonly metricNames = CLASSIFICATION_METRICS;
  readonly defaultMetric = 'accuracy';

  constructor(readonly model: Model) {}

  get engine() {
    return this.model.engine;
  }
  length(e: EncodedExample): number {
    return e.input_ids.length;
  }
  collate(examples: EncodedExample[]): Batch {
    return collate(examples, this.model.tokenizer.padTokenId);
  }
  lossWeight(examples: EncodedExample[]): number {
    return examples.length;
  }
  evaluate(examples: EncodedExample[], batchSize: number): Promise<EvalResults> {
    return evaluateExamples(this.model, examples, batchSize);
  }
  evaluationSums(examples: EncodedExample[], batchSize: number): Promise<Float64Array> {
    return evaluationSums(this.model, examples, batchSize);
  }
  evaluationResults(sums: Float64Array): EvalResults {
    return evaluationResults(this.model, sums);
  }
  saveModel(dir: string): Promise<void> {
    return saveModel(this.model, dir);
  }
  checkpointParameters(): string[] {
    return this.engine.parameterNames();
  }
  async readSavedWeights(dir: string): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const [name, t] of (await readSafetensors(join(dir, 'model.safetensors'))).tensors) {
      if (t.data instanceof Float32Array) out.set(name, t.data);
    }
    return out;
  }
  resumeSettings(): Record<string, TaskSetting> {
    return { num_labels: { value: this.model.config.num_labels, flag: 'num_labels' } };
  }
}
