/**
 * Masked-language-model pre-training as a Trainer task (Hugging Face run_mlm.py's line-by-line
 * mode on its Trainer): tokenized texts masked per epoch by ./masking.ts, batches padded to their
 * longest row, micro-batches weighted by their masked tokens (an accumulated step averages the
 * loss over all of its masked tokens, as one big batch would), evaluation loss and perplexity over
 * a fixed masking of the eval texts, and checkpoints that hold every weight (a BertForMaskedLM
 * model folder).
 */
import { join } from 'node:path';
import type { Batch } from '../../engine.js';
import { saveModel, type Model } from '../../model.js';
import { readSafetensors } from '../../io/safetensors.js';
import { tokenWeightedResults, tokenWeightedSums, type TaskEvalResults, type TaskSetting, type TrainingTask } from '../task.js';
import { EVAL_EPOCH, maskExample, type MaskedExample, type MaskingOptions, type TextExample } from './masking.js';

/** Evaluation of a masked LM on its masked positions. */
export interface MaskedLMEvalResults extends TaskEvalResults {
  /** Mean cross-entropy (nats) per masked token. */
  loss: number;
  /** exp(loss). */
  perplexity: number;
  /** Masked tokens the loss averages. */
  eval_tokens: number;
}

export const MASKED_LM_METRICS = ['loss', 'perplexity'] as const;

/** Pads masked examples into one (B, T) batch with per-token labels (-100 on padding). */
export function collateMasked(examples: readonly MaskedExample[], padTokenId: number): Batch {
  const B = examples.length;
  const T = Math.max(...examples.map((e) => e.input_ids.length));
  const input_ids = new Int32Array(B * T).fill(padTokenId);
  const attention_mask = new Int32Array(B * T);
  const labels = new Int32Array(B * T).fill(-100);
  examples.forEach((e, b) => {
    input_ids.set(e.input_ids, b * T);
    attention_mask.fill(1, b * T, b * T + e.input_ids.length);
    labels.set(e.labels, b * T);
  });
  return { input_ids, attention_mask, token_type_ids: new Int32Array(B * T), labels, batchSize: B, seqLen: T };
}

/** Masking options for `model` (its tokenizer's special ids, [MASK], WordPiece continuations). @throws Error when the vocabulary has no [MASK], or its id is outside the model's vocab_size. */
export function maskingFor(model: Model, o: { mlm_probability?: number; whole_word_mask?: boolean; seed?: number }): MaskingOptions {
  const t = model.tokenizer;
  if (t.maskTokenId === undefined) throw new Error(`${model.source}: the tokenizer has no [MASK] token, which masked-LM training replaces chosen tokens with`);
  if (t.maskTokenId >= model.config.vocab_size) {
    throw new Error(`${model.source}: the tokenizer's [MASK] id ${t.maskTokenId} is outside the model's vocabulary (config.json vocab_size ${model.config.vocab_size})`);
  }
  const continuation = new Uint8Array(t.vocabSize);
  for (let i = 0; i < t.vocabSize; i++) {
    try {
      continuation[i] = t.convertIdsToTokens([i])[0].startsWith('##') ? 1 : 0;
    } catch {
      // an id no token has (a gap among added tokens) never occurs in the data
    }
  }
  return {
    mlm_probability: o.mlm_probability ?? 0.15,
    whole_word_mask: o.whole_word_mask ?? false,
    seed: o.seed ?? 42,
    specialIds: new Set(t.allSpecialIds),
    maskTokenId: t.maskTokenId,
    vocabSize: Math.min(t.vocabSize, model.config.vocab_size),
    isContinuation: (id) => continuation[id] === 1,
  };
}

/**
 * Loss, perplexity and masked-token count of `examples` masked as an evaluation masks them (the
 * same every time), in length-grouped batches of at most `batchSize`, weighted by masked tokens.
 */
export async function evaluateMaskedLM(model: Model, examples: readonly TextExample[], batchSize: number, masking: MaskingOptions): Promise<MaskedLMEvalResults> {
  return tokenWeightedResults(await maskedLMLossSums(model, examples, batchSize, masking));
}

/** evaluateMaskedLM as tokenWeightedSums (what data-parallel shards add up). */
function maskedLMLossSums(model: Model, examples: readonly TextExample[], batchSize: number, masking: MaskingOptions): Promise<Float64Array> {
  return tokenWeightedSums(model.engine, examples, (e) => e.input_ids.length, batchSize, (list) => {
    const masked = list.map((e) => maskExample(e, EVAL_EPOCH, masking));
    return { batch: collateMasked(masked, model.tokenizer.padTokenId), targets: masked.reduce((k, m) => k + m.masked, 0) };
  });
}

/** See the file comment. */
export class MaskedLMTask implements TrainingTask<TextExample, MaskedLMEvalResults> {
  readonly metricNames = MASKED_LM_METRICS;
  readonly defaultMetric = 'loss';
  private epoch = 0;

  /** @param settings what a resumed run must share (max_length, mlm_probability, ...), with their flags. */
  constructor(readonly model: Model, readonly masking: MaskingOptions, private readonly settings: Record<string, TaskSetting> = {}) {}

  get engine() {
    return this.model.engine;
  }
  setEpoch(epoch: number): void {
    this.epoch = epoch;
  }
  length(e: TextExample): number {
    return e.input_ids.length;
  }
  collate(examples: TextExample[]): Batch {
    return collateMasked(examples.map((e) => maskExample(e, this.epoch, this.masking)), this.model.tokenizer.padTokenId);
  }
  lossWeight(examples: TextExample[]): number {
    return examples.reduce((n, e) => n + maskExample(e, this.epoch, this.masking).masked, 0);
  }
  tokenCount(examples: TextExample[]): number {
    return examples.reduce((n, e) => n + e.input_ids.length, 0);
  }
  evaluate(examples: TextExample[], batchSize: number): Promise<MaskedLMEvalResults> {
    return evaluateMaskedLM(this.model, examples, batchSize, this.masking);
  }
  evaluationSums(examples: TextExample[], batchSize: number): Promise<Float64Array> {
    return maskedLMLossSums(this.model, examples, batchSize, this.masking);
  }
  evaluationResults(sums: Float64Array): MaskedLMEvalResults {
    return tokenWeightedResults(sums);
  }
  saveModel(dir: string): Promise<void> {
    return saveModel(this.model, dir);
  }
  checkpointParameters(): string[] {
    return this.engine.parameterNames();
  }
  /** The engine's weights in the saved folder (the carried pooler is not an engine weight). */
  async readSavedWeights(dir: string): Promise<Map<string, Float32Array>> {
    const names = new Set(this.engine.parameterNames());
    const out = new Map<string, Float32Array>();
    for (const [name, t] of (await readSafetensors(join(dir, 'model.safetensors'))).tensors) {
      if (names.has(name) && t.data instanceof Float32Array) out.set(name, t.data);
    }
    return out;
  }
  resumeSettings(): Record<string, TaskSetting> {
    return {
      ...this.settings,
      mlm_probability: { value: this.masking.mlm_probability, flag: '--mlm-probability' },
      whole_word_mask: { value: this.masking.whole_word_mask, flag: '--whole-word-mask' },
    };
  }
}
