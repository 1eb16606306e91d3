/**
 * The causal LM as a Trainer task (TRL SFTTrainer on Hugging Face's Trainer): rows of token ids
 * with per-token labels, batches padded to their longest row, micro-batches weighted by their
 * target tokens (so an accumulated optimizer step averages the loss over all of its targets, as
 * one big batch would), evaluation loss and perplexity over target tokens, and checkpoints that
 * hold only what trains — a LoRA run's adapters (a PEFT folder), a full run's every weight (a
 * Hugging Face folder).
 */
import { join } from 'node:path';
import type { Batch } from '../../engine.js';
import type { CausalLM } from '../../llm/load.js';
import { readSafetensors } from '../../io/safetensors.js';
import { ADAPTER_WEIGHTS_FILE, savePeftAdapter, type NamedTensors, type ResolvedLoraConfig } from '../../io/peft.js';
import { saveHfCausalLM } from '../../io/llm-export.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { tokenWeightedResults, tokenWeightedSums, type TaskSetting, type TrainingTask, type TaskEvalResults } from '../task.js';
import { collateSft, type SftRow } from './encode.js';

/** Evaluation of a causal LM on target tokens. */
export interface CausalLMEvalResults extends TaskEvalResults {
  /** Mean cross-entropy (nats) per target token. */
  loss: number;
  /** exp(loss). */
  perplexity: number;
  /** Target tokens the loss averages. */
  eval_tokens: number;
}

export const CAUSAL_LM_METRICS = ['loss', 'perplexity'] as const;

export interface CausalLMTaskOptions {
  /** The adapters' LoraConfig (a LoRA run); absent: every weight trains (--full). */
  lora?: ResolvedLoraConfig;
  /** base_model_name_or_path written into adapter_config.json. */
  baseModel: string;
  /** Settings a resumed run must share (max_length, packing, ...), with their flags. */
  settings?: Record<string, TaskSetting>;
}

/** Engine weights by name, shaped as the engine reports them. */
export function engineTensors(lm: CausalLM, names: readonly string[]): NamedTensors {
  const out: NamedTensors = new Map();
  for (const name of names) out.set(name, { shape: lm.engine.parameterShape(name), data: lm.engine.getWeight(name) });
  return out;
}

/** The tokenizer as Hugging Face folder files (tokenizer.json, tokenizer_config.json), for saveHfCausalLM. */
export function tokenizerFolderFiles(lm: CausalLM): Record<string, string> {
  const files = lm.tokenizer.toFiles();
  return {
    'tokenizer.json': JSON.stringify(files.tokenizerJson),
    'tokenizer_config.json': `${JSON.stringify(files.tokenizerConfig, null, 2)}\n`,
  };
}

/**
 * Loss, perplexity and target count of `rows` (dropout off), in length-grouped batches of at
 * most `batchSize` rows: the per-batch mean losses weighted by their target tokens, so the
 * result is the mean over every target token (HF run_clm's eval loss, token-weighted).
 */
export async function evaluateCausalLMLoss(lm: CausalLM, rows: readonly SftRow[], batchSize: number, padTokenId: number): Promise<CausalLMEvalResults> {
  return tokenWeightedResults(await causalLMLossSums(lm, rows, batchSize, padTokenId));
}

/** evaluateCausalLMLoss as tokenWeightedSums (what data-parallel shards add up). */
function causalLMLossSums(lm: CausalLM, rows: readonly SftRow[], batchSize: number, padTokenId: number): Promise<Float64Array> {
  return tokenWeightedSums(lm.engine, rows, (r) => r.input_ids.length, batchSize, (list) => ({
    batch: collateSft(list, padTokenId),
    targets: list.reduce((k, r) => k + r.numTargets, 0),
  }));
}

/** See the file comment. */
export class CausalLMTask implements TrainingTask<SftRow, CausalLMEvalResults> {
  readonly metricNames = CAUSAL_LM_METRICS;
  readonly defaultMetric = 'loss';
  readonly padTokenId: number;

  constructor(readonly lm: CausalLM, readonly options: CausalLMTaskOptions) {
    const t = lm.tokenizer;
    // Any id works under attention_mask 0; the pad token when there is one, as HF collators do.
    this.padTokenId = t.padTokenId ?? t.eosTokenId ?? t.eosTokenIds[0] ?? 0;
  }

  get engine() {
    return this.lm.engine;
  }
  /** LoRA: the steepest rate itself (measured: SmolLM2-135M, Banking77 chat, steepest 3.9e-3 where 3e-3 is tuned); full fine-tuning: the default. */
  get lrFindDivisor(): number | undefined {
    return this.options.lora ? 1 : undefined;
  }
  length(r: SftRow): number {
    return r.input_ids.length;
  }
  collate(rows: SftRow[]): Batch {
    return collateSft(rows, this.padTokenId);
  }
  lossWeight(rows: SftRow[]): number {
    return rows.reduce((n, r) => n + r.numTargets, 0);
  }
  tokenCount(rows: SftRow[]): number {
    return rows.reduce((n, r) => n + r.input_ids.length, 0);
  }
  evaluate(rows: SftRow[], batchSize: number): Promise<CausalLMEvalResults> {
    return evaluateCausalLMLoss(this.lm, rows, batchSize, this.padTokenId);
  }
  evaluationSums(rows: SftRow[], batchSize: number): Promise<Float64Array> {
    return causalLMLossSums(this.lm, rows, batchSize, this.padTokenId);
  }
  evaluationResults(sums: Float64Array): CausalLMEvalResults {
    return tokenWeightedResults(sums);
  }
  checkpointParameters(): string[] {
    return this.engine.parameterNames().filter((n) => this.engine.isTrainable(n));
  }
  /**
   * A LoRA run: the PEFT adapter folder and the tokenizer files (TRL's SFTTrainer saves its
   * tokenizer beside the adapter too), so the run keeps the chat template it was trained with
   * (useRunChatTemplate); a full run: the Hugging Face model folder with the tokenizer.
   */
  async saveModel(dir: string): Promise<void> {
    const { lora, baseModel } = this.options;
    if (lora) {
      await savePeftAdapter(dir, { lora, tensors: engineTensors(this.lm, this.checkpointParameters()), baseModel, config: this.lm.config });
      for (const [name, text] of Object.entries(tokenizerFolderFiles(this.lm))) await writeFileAtomic(join(dir, name), text);
      return;
    }
    await saveHfCausalLM(dir, {
      config: this.lm.config,
      tensors: engineTensors(this.lm, this.engine.parameterNames()),
      tokenizerFiles: tokenizerFolderFiles(this.lm),
      chatTemplate: this.lm.tokenizer.chatTemplate,
    });
  }
  async readSavedWeights(dir: string): Promise<Map<string, Float32Array>> {
    const file = join(dir, this.options.lora ? ADAPTER_WEIGHTS_FILE : 'model.safetensors');
    const out = new Map<string, Float32Array>();
    for (const [name, t] of (await readSafetensors(file)).tensors) if (t.data instanceof Float32Array) out.set(name, t.data);
    return out;
  }
  resumeSettings(): Record<string, TaskSetting> {
    const lora = this.options.lora;
    return {
      ...this.options.settings,
      adapter: { value: lora ? JSON.stringify(lora) : 'full', flag: lora ? '--lora-* (the LoRA configuration)' : '--full' },
    };
  }
}
