/**
 * `nodetune eval` for causal LMs: any model — a base (GGUF, folder, Hub id) or an sft run folder
 * (its adapter on its base) — on any SFT data file, with the same loss, perplexity and
 * generation metrics as the end of `nodetune sft`, so a base model and its fine-tuned run are
 * compared by one command on one file.
 */
import { readSftFile } from './data.js';
import { encodeSftRecords, type EncodeStats } from './encode.js';
import { evaluateCausalLMLoss } from './task.js';
import { evaluateByGeneration, referenceChoices, type GenerationSample } from './generation.js';
import { loadSftModel } from './model.js';
import type { SftEvalResults } from './sft.js';
import type { Precision } from '../../engine.js';

export interface EvaluateCausalLMOptions {
  /** A GGUF file, a Hugging Face folder, a Hub id, or an sft run folder (adapter_config.json). */
  model: string;
  /** SFT data (.jsonl / .json / .txt). */
  data: string;
  /** Tokens per example for the loss (default 1024). */
  max_length?: number;
  /** Rows per loss batch (default 16). */
  batch_size?: number;
  /** Loss on the first N examples only. */
  max_eval_samples?: number;
  /** Skip the loss (generation only). */
  skip_loss?: boolean;
  /** Generate and score answers (default true). */
  generation?: boolean;
  max_generation_samples?: number;
  max_new_tokens?: number;
  generation_batch_size?: number;
  choices?: string[];
  /** Constrain to the distinct reference answers of `data`. */
  choices_from_labels?: boolean;
  threads?: number;
  /** Weights: 'fp32' (default), 'bf16' or 'q8_0' (EngineOptions.precision). */
  precision?: Precision;
  /** A Jinja chat template file that replaces the model's (LoadCausalLMOptions.chatTemplateFile). */
  chat_template_file?: string;
  /** Progress lines. */
  log?: (line: string) => void;
}

/**
 * Loads the model, reads the data, and evaluates.
 * @returns the metrics (as eval_results.json holds them), every generated sample, and the encoding counts.
 * @throws Error naming file, line and field for bad data; as loadSftModel for a bad model.
 */
export async function evaluateCausalLM(o: EvaluateCausalLMOptions): Promise<{ results: SftEvalResults; samples: GenerationSample[]; encode: EncodeStats }> {
  const log = o.log ?? (() => undefined);
  const data = readSftFile(o.data);
  let choices = o.choices;
  if (o.choices_from_labels) {
    if (choices) throw new Error('choices and choices_from_labels contradict each other: pass one');
    choices = referenceChoices(data.records);
    if (choices.length === 0) throw new Error(`choices_from_labels: ${data.path} has no text answers to take choices from`);
  }
  const lm = await loadSftModel(o.model, { threads: o.threads, trainable: false, precision: o.precision, chatTemplateFile: o.chat_template_file });
  try {
    const maxLength = Math.min(o.max_length ?? 1024, lm.config.max_position_embeddings);
    const { examples, stats } = encodeSftRecords(lm.tokenizer, data.records, { maxLength });
    let results: SftEvalResults = {};
    if (!o.skip_loss) {
      const rows = examples.slice(0, o.max_eval_samples ?? examples.length);
      const pad = lm.tokenizer.padTokenId ?? lm.tokenizer.eosTokenIds[0] ?? 0;
      results = { ...(await evaluateCausalLMLoss(lm, rows, o.batch_size ?? 16, pad)), eval_examples: rows.length };
      log(`loss ${results.loss!.toFixed(4)} over ${results.eval_tokens} target tokens of ${rows.length} examples`);
    }
    let samples: GenerationSample[] = [];
    if (o.generation !== false) {
      const g = await evaluateByGeneration(lm, data.records.slice(0, o.max_generation_samples ?? data.records.length), {
        choices, maxNewTokens: o.max_new_tokens, batchSize: o.generation_batch_size, onProgress: (d, n) => log(`generating: ${d}/${n}`),
      });
      samples = g.samples;
      results = { ...results, ...g.metrics, ...(choices ? { choices: choices.length } : {}) };
    }
    return { results, samples, encode: stats };
  } finally {
    await lm.engine.dispose();
  }
}
