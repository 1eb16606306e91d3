/**
 * Supervised fine-tuning of a causal LM as one function (TRL SFTTrainer's job on Hugging Face's
 * Trainer loop, nodetune's {@link Trainer}): read and validate the data, load the model with LoRA
 * adapters (or every weight trainable), render, mask, truncate and optionally pack the examples,
 * train, evaluate (loss, perplexity, and by generation: exact match and tool-call accuracy), and
 * write the run folder — the PEFT adapter (adapter_config.json + adapter_model.safetensors), the
 * llama.cpp LoRA GGUF when the base is a GGUF file (adapter_model.gguf), eval_results.json,
 * eval_generations.jsonl, training_log.jsonl, training_args.json, report.html (loss curves and
 * sample generations before and after training) and checkpoint-last for --resume.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { checkDevice } from '../../engine.js';
import { resolveLoraConfig, type LoraConfig } from '../../models/llama.js';
import { writeLoraGguf } from '../../io/llm-export.js';
import { writeReport, type GenerationSampleRow } from '../../report/index.js';
import { prepareOutputDir, lockOutputDir } from '../../train/finetune.js';
import { Trainer, validateTrainingArguments, checkOptionKeys, pickTrainingArguments, type TrainingArguments, type EvalEntry } from '../../train/trainer.js';
import { logLrFind } from '../../train/lr-find.js';
import { currentWorld, describeWorld, isMainProcess, joinWorld } from '../../train/distributed.js';
import { readSftFile, type SftDataset, type SftRecord } from './data.js';
import { encodeSftRecords, packExamples, type EncodeStats, type SftRow } from './encode.js';
import { CausalLMTask, CAUSAL_LM_METRICS, engineTensors, evaluateCausalLMLoss, type CausalLMEvalResults } from './task.js';
import { evaluateByGeneration, referenceChoices, type GenerationMetrics, type GenerationSample } from './generation.js';
import { loadSftModel, type LoadedSftModel } from './model.js';

export interface SftOptions extends TrainingArguments {
  /** Base model: a GGUF file, a Hugging Face folder, or a Hub repo id. */
  model: string;
  /** Training data (.jsonl / .json / .txt; see src/tasks/causal-lm/data.ts). */
  train_file: string;
  /** Evaluation data; without it there is no evaluation. */
  eval_file?: string;
  /** Tokens per example at most (right truncation; TRL's default 1024). */
  max_length?: number;
  /** Pack short examples into max_length rows, each example in its own attention segment. */
  packing?: boolean;
  /** LoRA rank (default 16). */
  lora_r?: number;
  /** LoRA alpha (default 32). */
  lora_alpha?: number;
  /** Dropout on the adapters' input (default 0.05). */
  lora_dropout?: number;
  /** 'all-linear' (default) or module names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj). */
  lora_target_modules?: 'all-linear' | string[];
  /** rsLoRA scaling lora_alpha / sqrt(r). */
  use_rslora?: boolean;
  /** PEFT layers_to_transform: adapt only these decoder layers (backward stops at the lowest). */
  lora_layers_to_transform?: number[];
  /** Train every weight instead of LoRA adapters (--full). */
  full_finetune?: boolean;
  /** Recompute each layer in backward (less memory, about a third more compute). */
  gradient_checkpointing?: boolean;
  /** Evaluation loss on the first N eval examples only (HF run_clm's max_eval_samples). */
  max_eval_samples?: number;
  /** Generate answers for the eval examples after training and score them (default true). */
  eval_generation?: boolean;
  /** Generate for the first N eval examples only (default: all). */
  max_generation_samples?: number;
  /** New tokens per generated answer at most (default 256; with choices, the longest choice + 1). */
  generation_max_new_tokens?: number;
  /** Prompts per batched generation (default 32). */
  generation_batch_size?: number;
  /** Answers generation is constrained to. */
  choices?: string[];
  /** Constrain generation to the distinct final assistant answers of the training data (a label set). */
  choices_from_labels?: boolean;
  /** Examples generated before and after training for report.html (default 8; 0 = none). */
  report_samples?: number;
  threads?: number;
  device?: string;
  precision?: 'fp32' | 'bf16';
  /**
   * A Jinja chat template file that replaces the model's (a base model has none): the data is
   * rendered with it, and the run folder keeps it (tokenizer_config.json, chat_template.jinja),
   * so eval, generate and serve of the run use it too.
   */
  chat_template_file?: string;
  overwrite_output_dir?: boolean;
  /** Called with each log line a person should see (default: none). */
  log?: (line: string) => void;
  /** Receives the Trainer before training starts (progress bars, stop()). */
  onTrainer?: (trainer: Trainer<SftRow, CausalLMEvalResults>) => void;
}

/** eval_results.json of a causal LM. */
export interface SftEvalResults extends Partial<GenerationMetrics> {
  loss?: number;
  perplexity?: number;
  eval_tokens?: number;
  /** Eval examples the loss covers. */
  eval_examples?: number;
  /** Answers generation was constrained to (how many). */
  choices?: number;
}

export interface SftResult {
  output_dir: string;
  eval: SftEvalResults | null;
  best_step: number | null;
  stopped_early: boolean;
  train_examples: number;
  /** Rows trained on (packed rows when packing). */
  train_rows: number;
  eval_examples: number;
  encode: { train: EncodeStats; eval: EncodeStats | null };
  seconds: number;
  /** Seconds spent in the training loop (from the first step to the last save). */
  train_seconds: number;
  interrupted: boolean;
  global_step: number;
  files: string[];
}

/** What a finished or interrupted sft run leaves in output_dir (besides checkpoint-* folders). */
export const SFT_OUTPUTS = [
  'adapter_config.json', 'adapter_model.safetensors', 'adapter_model.gguf', 'config.json', 'model.safetensors',
  'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja',
  'training_log.jsonl', 'eval_results.json', 'eval_generations.jsonl', 'training_args.json', 'report.html', 'lr_find.json',
];

/** sft's keys besides TrainingArguments' (`satisfies` keeps the list complete and exact). */
const OWN_KEYS = Object.keys({
  model: 1, train_file: 1, eval_file: 1, max_length: 1, packing: 1, lora_r: 1, lora_alpha: 1, lora_dropout: 1,
  lora_target_modules: 1, use_rslora: 1, lora_layers_to_transform: 1, full_finetune: 1, gradient_checkpointing: 1,
  max_eval_samples: 1, eval_generation: 1, max_generation_samples: 1, generation_max_new_tokens: 1, generation_batch_size: 1,
  choices: 1, choices_from_labels: 1, report_samples: 1, threads: 1, device: 1, precision: 1, chat_template_file: 1, overwrite_output_dir: 1, log: 1, onTrainer: 1,
} satisfies Record<Exclude<keyof SftOptions, keyof TrainingArguments>, 1>);

/** A positive integer option, when given. @throws Error naming it. */
function positive(o: SftOptions, key: keyof SftOptions): void {
  const v = o[key];
  if (v !== undefined && !(Number.isInteger(v) && (v as number) >= 1)) throw new Error(`${key} ${JSON.stringify(v)}: expected a positive integer`);
}

/** The LoraConfig of the options (nodetune's sft defaults r 16, alpha 32, dropout 0.05, all-linear), or undefined for full fine-tuning. */
export function sftLoraConfig(o: SftOptions): LoraConfig | undefined {
  if (o.full_finetune) {
    const given = (['lora_r', 'lora_alpha', 'lora_dropout', 'lora_target_modules', 'use_rslora', 'lora_layers_to_transform'] as const).filter((k) => o[k] !== undefined);
    if (given.length > 0) throw new Error(`full_finetune trains every weight; ${given.join(', ')} only apply to LoRA`);
    return undefined;
  }
  return {
    r: o.lora_r ?? 16,
    lora_alpha: o.lora_alpha ?? 32,
    lora_dropout: o.lora_dropout ?? 0.05,
    target_modules: o.lora_target_modules ?? 'all-linear',
    use_rslora: o.use_rslora ?? false,
    ...(o.lora_layers_to_transform ? { layers_to_transform: o.lora_layers_to_transform } : {}),
  };
}

/** base_model_name_or_path for the adapter: an existing local path made absolute (the run folder is read from anywhere), a Hub id as given. */
/** A resume setting for the chat template the data is rendered with: a digest, not the whole text. */
function templateDigest(template: string | undefined): string {
  return template === undefined ? 'none' : `sha256:${createHash('sha256').update(template).digest('hex').slice(0, 16)}`;
}

function baseModelName(model: string): string {
  return existsSync(model) ? resolve(model) : model;
}

/** Trainer arguments: TrainingArguments with sft's defaults (HF/TRL: no eval without eval data; LoRA lr 2e-4, full 2e-5; weight decay 0). */
function trainerArgs(o: SftOptions, hasEval: boolean): TrainingArguments {
  return pickTrainingArguments(
    o,
    { per_device_train_batch_size: 8, per_device_eval_batch_size: 16, learning_rate: o.full_finetune ? 2e-5 : 2e-4, weight_decay: 0, metric_for_best_model: 'loss' },
    hasEval ? {} : { eval_strategy: 'no' },
  );
}

function describeStats(what: string, s: EncodeStats, maxLength: number): string {
  const skipped = s.skipped > 0
    ? `; ${s.skipped} skipped with no target token left within max_length ${maxLength} (first: ${s.skippedSources.map((r) => `${r.path}:${r.line}`).join(', ')})`
    : '';
  return `${what}: ${s.examples - s.skipped} examples, ${s.tokens} tokens, ${s.targetTokens} target tokens; ${s.truncated} truncated at max_length ${maxLength}${skipped}`;
}

/** The generation options of `o` and the choices (given, or the training labels). */
function generationOptions(o: SftOptions, train: SftDataset): { choices?: string[]; maxNewTokens?: number; batchSize?: number } {
  let choices = o.choices;
  if (o.choices_from_labels) {
    if (choices) throw new Error('choices and choices_from_labels contradict each other: pass one');
    choices = referenceChoices(train.records);
    if (choices.length === 0) throw new Error(`choices_from_labels: ${train.path} has no text answers to take choices from (tool calls and text records give none)`);
  }
  return { choices, maxNewTokens: o.generation_max_new_tokens, batchSize: o.generation_batch_size };
}

async function writeJsonl(path: string, rows: readonly unknown[]): Promise<void> {
  await writeFile(path, rows.map((r) => JSON.stringify(r) + '\n').join(''));
}

/**
 * Runs supervised fine-tuning (see the file comment for what the run folder holds).
 * @throws Error before any training: naming file, line and field for bad data; the option for a
 *   bad value; the folder when --output holds a previous run (without resume/overwrite) or is
 *   locked by a live run. During training: a non-finite loss or gradient (checkpoint-last kept).
 */
export async function fineTuneCausalLM(o: SftOptions): Promise<SftResult> {
  const started = performance.now();
  const log = o.log ?? (() => undefined);
  checkOptionKeys('sft', o, OWN_KEYS);
  if (o.max_length !== undefined && !(Number.isInteger(o.max_length) && o.max_length >= 2)) throw new Error(`max_length ${o.max_length}: expected an integer ≥ 2`);
  for (const k of ['max_eval_samples', 'max_generation_samples', 'generation_max_new_tokens', 'generation_batch_size'] as const) positive(o, k);
  if (o.report_samples !== undefined && !(Number.isInteger(o.report_samples) && o.report_samples >= 0)) throw new Error(`report_samples ${o.report_samples}: expected an integer ≥ 0`);
  const lora = sftLoraConfig(o);
  const resolvedLora = lora ? resolveLoraConfig(lora) : undefined;
  const hasEval = o.eval_file !== undefined;
  const args = trainerArgs(o, hasEval);
  validateTrainingArguments(args, CAUSAL_LM_METRICS);
  if (o.precision === 'bf16' && (o.device ?? 'cpu') === 'cpu' && !lora)
    throw new Error('--precision bf16 on the CPU keeps the base frozen in bf16, so it needs LoRA: drop --full, or --precision bf16');
  checkDevice(o.device, o.precision, true);
  const dataParallel = describeWorld(joinWorld(args.ddp_timeout));
  if (dataParallel) log(dataParallel);
  await prepareOutputDir(o, SFT_OUTPUTS);
  const train = readSftFile(o.train_file);
  const evalData = o.eval_file ? readSftFile(o.eval_file) : null;
  const gen = generationOptions(o, train);
  const maxLength = o.max_length ?? 1024;
  const lm = await loadSftModel(o.model, {
    seed: o.seed ?? 42, threads: o.threads, device: o.device, precision: o.precision,
    weight_decay: args.weight_decay, adam_beta1: o.adam_beta1, adam_beta2: o.adam_beta2, adam_epsilon: o.adam_epsilon,
    max_grad_norm: o.max_grad_norm ?? 1.0, lora, gradient_checkpointing: o.gradient_checkpointing,
    chatTemplateFile: o.chat_template_file,
  });
  if (lm.adapter) {
    await lm.engine.dispose();
    throw new Error(`--model ${o.model} is a run folder with an adapter; fine-tune its base (${lm.base}), or export the merged model first (nodetune export --format hf)`);
  }
  let releaseLock = async () => undefined as void;
  try {
    if (maxLength > lm.config.max_position_embeddings) throw new Error(`max_length ${maxLength} is above the model's max_position_embeddings ${lm.config.max_position_embeddings}`);
    const enc = encodeSftRecords(lm.tokenizer, train.records, { maxLength });
    log(describeStats(`train ${train.path}`, enc.stats, maxLength));
    if (enc.examples.length === 0) throw new Error(`${train.path}: no training example has a target token within max_length ${maxLength}; raise --max-length`);
    const evalEnc = evalData ? encodeSftRecords(lm.tokenizer, evalData.records, { maxLength }) : null;
    if (evalEnc && evalData) log(describeStats(`eval ${evalData.path}`, evalEnc.stats, maxLength));
    const rows: SftRow[] = o.packing ? packExamples(enc.examples, maxLength) : enc.examples;
    if (o.packing) log(`packing: ${enc.examples.length} examples into ${rows.length} rows of at most ${maxLength} tokens`);
    const evalRows = evalEnc ? evalEnc.examples.slice(0, o.max_eval_samples ?? evalEnc.examples.length) : null;
    const genRecords = evalData ? evalData.records.slice(0, o.max_generation_samples ?? evalData.records.length) : [];
    const baseModel = baseModelName(o.model);
    const task = new CausalLMTask(lm, {
      lora: resolvedLora,
      baseModel,
      settings: {
        max_length: { value: maxLength, flag: '--max-length' },
        packing: { value: o.packing === true, flag: '--packing' },
        base_model: { value: baseModel, flag: '--model' },
        precision: { value: o.precision ?? 'fp32', flag: '--precision' },
        chat_template: { value: templateDigest(lm.tokenizer.chatTemplate), flag: '--chat-template-file (or the model\'s own template)' },
      },
    });
    const trainable = task.checkpointParameters();
    const trainableCount = trainable.reduce((n, name) => n + lm.engine.parameterShape(name).reduce((a, b) => a * b, 1), 0);
    log(`model ${o.model} (${lm.config.model_type}, ${lm.config.num_hidden_layers} layers) on ${lm.engine.device()}${o.precision === 'bf16' && lm.engine.device() === 'cpu' ? ' (bf16 base)' : ''}; ${lora ? `LoRA r ${resolvedLora!.r}, alpha ${resolvedLora!.lora_alpha}, ${resolvedLora!.target_modules.join(',')}${resolvedLora!.layers_to_transform ? `, layers ${resolvedLora!.layers_to_transform.join(',')}` : ''}` : 'full fine-tuning'}: ${trainableCount} trainable parameters`);
    if (gen.choices) log(`generation constrained to ${gen.choices.length} choices`);
    releaseLock = await lockOutputDir(o.output_dir);

    // Report samples spread over the eval set (files are often sorted by label).
    const reportN = o.report_samples ?? 8;
    const pool = (genRecords.length > 0 ? genRecords : train.records).filter((r) => r.kind !== 'text');
    const stride = Math.max(1, Math.floor(pool.length / Math.max(1, reportN)));
    const picks = pool.map((_, i) => i).filter((i) => i % stride === 0).slice(0, reportN);
    const sampleRecords = picks.map((i) => pool[i]);
    const before = sampleRecords.length > 0 && !o.resume_from_checkpoint && isMainProcess() ? (await evaluateByGeneration(lm, sampleRecords, gen)).samples : null;

    const trainer = new Trainer<SftRow, CausalLMEvalResults>(task, rows, evalRows, args);
    logLrFind(trainer, log);
    o.onTrainer?.(trainer);
    const trainStart = performance.now();
    const run = await trainer.trainLoop();
    const trainSeconds = (performance.now() - trainStart) / 1000;
    const base = {
      output_dir: o.output_dir, train_examples: enc.examples.length, train_rows: rows.length, eval_examples: evalRows?.length ?? 0,
      encode: { train: enc.stats, eval: evalEnc?.stats ?? null }, global_step: trainer.globalStep, train_seconds: trainSeconds,
    };
    if (trainer.interrupted || !isMainProcess()) {
      // Data parallel: rank 0 alone saves the adapter, evaluates it and writes the report.
      return { ...base, eval: null, best_step: run.bestStep, stopped_early: run.stoppedEarly, seconds: (performance.now() - started) / 1000, interrupted: trainer.interrupted, files: [] };
    }
    // load_best_model_at_end, as the classifier pipeline does: the best evaluation's weights are the result.
    if (run.bestStep !== null && existsSync(trainer.bestDir)) {
      for (const [name, w] of await task.readSavedWeights(trainer.bestDir)) lm.engine.setWeight(name, w);
    }
    const files: string[] = [];
    await task.saveModel(o.output_dir);
    files.push(...(lora ? ['adapter_config.json', 'adapter_model.safetensors'] : ['config.json', 'model.safetensors']));
    if (lora && lm.source.kind === 'gguf') {
      await writeLoraGguf(join(o.output_dir, 'adapter_model.gguf'), { baseGguf: lm.source.path, tensors: engineTensors(lm, trainable), lora: resolvedLora!, name: `${o.output_dir} (nodetune sft)` });
      files.push('adapter_model.gguf');
    }
    let finalEval: SftEvalResults | null = null;
    let samples: GenerationSample[] = [];
    if (evalRows && evalData) {
      finalEval = {};
      if (evalRows.length > 0) {
        const loss = await evaluateCausalLMLoss(lm, evalRows, args.per_device_eval_batch_size ?? 16, task.padTokenId);
        finalEval = { ...loss, eval_examples: evalRows.length };
        log(`eval loss ${loss.loss.toFixed(4)}, perplexity ${loss.perplexity.toFixed(3)} over ${loss.eval_tokens} target tokens`);
      }
      if (o.eval_generation !== false && genRecords.length > 0) {
        const g = await evaluateByGeneration(lm, genRecords, {
          ...gen,
          onProgress: (d, n) => log(`generating: ${d}/${n}`),
        });
        samples = g.samples;
        finalEval = { ...finalEval, ...g.metrics, ...(gen.choices ? { choices: gen.choices.length } : {}) };
        log(`exact match ${(100 * g.metrics.exact_match).toFixed(2)}% on ${g.metrics.generated} generated answers (${g.metrics.seconds.toFixed(1)} s)`);
        await writeJsonl(join(o.output_dir, 'eval_generations.jsonl'), samples);
        files.push('eval_generations.jsonl');
      }
      await writeFile(join(o.output_dir, 'eval_results.json'), JSON.stringify(finalEval, null, 1));
      files.push('eval_results.json');
    }
    // The eval answers already hold the samples' (same records, same order of non-text records).
    const after = before ? (samples.length === pool.length && genRecords.length > 0 ? picks.map((i) => samples[i]) : (await evaluateByGeneration(lm, sampleRecords, gen)).samples) : null;
    const seconds = (performance.now() - started) / 1000;
    const { log: _l, onTrainer: _t, ...options } = o;
    const config = { ...options, world_size: currentWorld().size };
    await writeFile(join(o.output_dir, 'training_args.json'), JSON.stringify({ ...config, ...args, learning_rate: trainer.args.learning_rate, lora: resolvedLora ?? null, max_length: maxLength }, null, 1));
    files.push('training_args.json');
    writeReport(o.output_dir, {
      title: `nodetune sft: ${o.model} on ${o.train_file}`,
      trainLog: run.log,
      evalHistory: run.evals.map((e: EvalEntry<CausalLMEvalResults>) => ({ epoch: e.epoch, step: e.step, loss: e.loss, perplexity: e.perplexity })),
      metrics: reportMetrics(finalEval),
      lrFind: trainer.lrFound ?? undefined,
      samples: before && after ? before.map((b, i): GenerationSampleRow => ({ source: b.source, prompt: b.prompt, reference: b.reference, before: b.prediction, after: after[i]?.prediction ?? '' })) : [],
      config: { ...config, learning_rate: trainer.args.learning_rate, lora: resolvedLora ?? 'full fine-tuning', max_length: maxLength, train: enc.stats, eval: evalEnc?.stats, wall_time_seconds: Math.round(seconds) },
    });
    files.push('report.html');
    await rm(trainer.bestDir, { recursive: true, force: true });
    return { ...base, eval: finalEval, best_step: run.bestStep, stopped_early: run.stoppedEarly, seconds, interrupted: false, files };
  } finally {
    await releaseLock();
    await lm.engine.dispose();
  }
}

function reportMetrics(e: SftEvalResults | null): Array<[string, string]> {
  if (!e) return [];
  const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
  const out: Array<[string, string]> = [];
  if (e.exact_match !== undefined) out.push(['exact match', `${pct(e.exact_match)} of ${e.generated}`]);
  if (e.tool_call_examples) {
    out.push(['parseable calls', pct(e.parseable_call_rate ?? NaN)], ['function name', pct(e.function_name_accuracy ?? NaN)], ['arguments', pct(e.arguments_accuracy ?? NaN)]);
  }
  if (e.loss !== undefined) out.push(['eval loss', e.loss.toFixed(4)], ['perplexity', (e.perplexity ?? NaN).toFixed(3)]);
  return out;
}

/** Re-exported for callers that only need the records' generation targets. */
export type { SftRecord };
