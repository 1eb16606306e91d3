/**
 * Domain-adaptive pre-training of a BERT-family encoder as one function (Gururangan et al. 2020,
 * "Don't Stop Pretraining"; Hugging Face run_mlm.py's job in its line-by-line mode on nodetune's
 * {@link Trainer}): read unlabelled texts, load the model as BertForMaskedLM (a checkpoint without
 * the prediction head gets a new one, reported in transformers' words), mask them per epoch,
 * train, evaluate the masked-token loss and perplexity, and write the run folder — a Hugging Face
 * BertForMaskedLM folder (config.json, model.safetensors, tokenizer files) that `nodetune train`
 * fine-tunes directly and transformers loads, plus eval_results.json, training_log.jsonl,
 * training_args.json, report.html and checkpoint-last for --resume.
 */
import { writeFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { checkDevice } from '../../engine.js';
import { loadModel } from '../../model.js';
import { resolveModel } from '../../io/hub.js';
import { readTexts, deriveSeed, mulberry32, shuffleInPlace, type TextRecord } from '../../data/index.js';
import { writeReport } from '../../report/index.js';
import { prepareOutputDir, lockOutputDir } from '../../train/finetune.js';
import { Trainer, validateTrainingArguments, checkOptionKeys, pickTrainingArguments, type TrainingArguments, type EvalEntry } from '../../train/trainer.js';
import { logLrFind } from '../../train/lr-find.js';
import { currentWorld, describeWorld, isMainProcess, joinWorld } from '../../train/distributed.js';
import { EVAL_EPOCH, maskExample, type TextExample } from './masking.js';
import { MaskedLMTask, MASKED_LM_METRICS, evaluateMaskedLM, maskingFor, type MaskedLMEvalResults } from './task.js';

export interface PretrainOptions extends TrainingArguments {
  /** Local Hugging Face BERT folder or Hub repo id. */
  model: string;
  /** Unlabelled texts: .txt (one per non-blank line), or .csv / .tsv / .jsonl with text_column. */
  train_file: string;
  /** Evaluation texts; default: validation_split of train_file held out. */
  eval_file?: string;
  /** Column (CSV/TSV header, JSONL key) of the texts; default 'text'. */
  text_column?: string;
  /** Fraction of train_file held out for evaluation when there is no eval_file (default 0.05, run_mlm's 5%); 0: no evaluation. */
  validation_split?: number;
  /** Tokens per text at most, [CLS] and [SEP] included (default 128, capped at max_position_embeddings). */
  max_length?: number;
  /** Probability of masking a token (or a word); default 0.15. */
  mlm_probability?: number;
  /** Mask whole WordPiece words (DataCollatorForWholeWordMask). */
  whole_word_mask?: boolean;
  threads?: number;
  /** 'cpu' only: the masked-LM head has no CUDA kernels yet. */
  device?: string;
  overwrite_output_dir?: boolean;
  /** Called with each log line a person should see (default: none). */
  log?: (line: string) => void;
  /** Receives the Trainer before training starts (progress bars, stop()). */
  onTrainer?: (trainer: Trainer<TextExample, MaskedLMEvalResults>) => void;
}

export interface PretrainResult {
  output_dir: string;
  eval: (MaskedLMEvalResults & { eval_examples: number }) | null;
  best_step: number | null;
  stopped_early: boolean;
  train_examples: number;
  eval_examples: number;
  seconds: number;
  interrupted: boolean;
  global_step: number;
}

/** What a finished or interrupted pretrain run leaves in output_dir (besides checkpoint-* folders). */
export const PRETRAIN_OUTPUTS = [
  'config.json', 'model.safetensors', 'tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json',
  'training_log.jsonl', 'eval_results.json', 'training_args.json', 'report.html', 'lr_find.json',
];

/** pretrain's keys besides TrainingArguments' (`satisfies` keeps the list complete and exact). */
const OWN_KEYS = Object.keys({
  model: 1, train_file: 1, eval_file: 1, text_column: 1, validation_split: 1, max_length: 1, mlm_probability: 1,
  whole_word_mask: 1, threads: 1, device: 1, overwrite_output_dir: 1, log: 1, onTrainer: 1,
} satisfies Record<Exclude<keyof PretrainOptions, keyof TrainingArguments>, 1>);

/** @throws Error naming an unknown option key or an out-of-range value. */
function checkOptions(o: PretrainOptions): void {
  checkOptionKeys('pretrain', o, OWN_KEYS);
  const p = o.mlm_probability;
  if (p !== undefined && !(p > 0 && p < 1)) throw new Error(`mlm_probability ${p}: expected a number in (0, 1)`);
  const v = o.validation_split;
  if (v !== undefined && !(v >= 0 && v < 1)) throw new Error(`validation_split ${v}: expected a number in [0, 1)`);
  if (o.max_length !== undefined && !(Number.isInteger(o.max_length) && o.max_length >= 3)) {
    throw new Error(`max_length ${o.max_length}: expected an integer ≥ 3 ([CLS], one token, [SEP])`);
  }
}

/** Trainer arguments with pretrain's defaults (run_mlm on HF Trainer: lr 5e-5, weight decay 0; batch 32 here, loss as best metric). */
function trainerArgs(o: PretrainOptions, hasEval: boolean): TrainingArguments {
  return pickTrainingArguments(
    o,
    { per_device_train_batch_size: 32, per_device_eval_batch_size: 64, learning_rate: 5e-5, weight_decay: 0, metric_for_best_model: 'loss' },
    hasEval ? {} : { eval_strategy: 'no' },
  );
}

/** The texts of train_file and eval_file, or a seeded held-out fraction of train_file. */
function readData(o: PretrainOptions): { train: TextRecord[]; eval: TextRecord[]; evalSource: string } {
  const read = (path: string) => readTexts(path, { textColumn: o.text_column ?? 'text', skipEmpty: true });
  const train = read(o.train_file);
  if (o.eval_file) return { train, eval: read(o.eval_file), evalSource: o.eval_file };
  const fraction = o.validation_split ?? 0.05;
  const n = Math.round(train.length * fraction);
  if (fraction === 0) return { train, eval: [], evalSource: '' };
  if (n === 0 || n === train.length) {
    throw new Error(`${o.train_file}: --validation-split ${fraction} of ${train.length} texts leaves ${n === 0 ? 'no evaluation' : 'no training'} texts; pass --eval FILE, another --validation-split, or --validation-split 0`);
  }
  const order = Array.from(train, (_, i) => i);
  shuffleInPlace(order, mulberry32(deriveSeed(o.seed ?? 42, 0x5e1ec7)));
  const held = new Set(order.slice(0, n));
  return { train: train.filter((_, i) => !held.has(i)), eval: train.filter((_, i) => held.has(i)), evalSource: `${o.train_file} (held-out split)` };
}

/**
 * Runs domain-adaptive pre-training (see the file comment for what the run folder holds).
 * @throws Error before any training: naming file and line for bad data, the option for a bad
 *   value, the folder when --output holds a previous run (without resume/overwrite) or is locked
 *   by a live run, a tokenizer without [MASK]. During training: a non-finite loss or gradient
 *   (checkpoint-last kept).
 */
export async function pretrainMaskedLM(o: PretrainOptions): Promise<PretrainResult> {
  const started = performance.now();
  const log = o.log ?? (() => undefined);
  checkOptions(o);
  const data = readData(o);
  const hasEval = data.eval.length > 0;
  const args = trainerArgs(o, hasEval);
  validateTrainingArguments(args, MASKED_LM_METRICS);
  checkDevice(o.device);
  if ((o.device ?? 'cpu') !== 'cpu') throw new Error(`--device ${o.device}: masked-LM pre-training runs on the CPU only (the CUDA engine has no masked-LM head yet)`);
  const dataParallel = describeWorld(joinWorld(args.ddp_timeout));
  if (dataParallel) log(dataParallel);
  await prepareOutputDir(o, PRETRAIN_OUTPUTS);
  const folder = await resolveModel(o.model);
  const model = await loadModel(folder, {
    architecture: 'BertForMaskedLM',
    seed: o.seed ?? 42,
    threads: o.threads,
    weight_decay: args.weight_decay,
    adam_beta1: o.adam_beta1,
    adam_beta2: o.adam_beta2,
    adam_epsilon: o.adam_epsilon,
    max_grad_norm: o.max_grad_norm ?? 1.0,
    log,
  });
  let releaseLock = async () => undefined as void;
  try {
    const masking = maskingFor(model, o);
    const maxLength = Math.min(o.max_length ?? 128, model.config.max_position_embeddings);
    if (maxLength < (o.max_length ?? 128)) log(`warning: max_length ${o.max_length ?? 128} is above the model's max_position_embeddings; capped at ${maxLength}`);
    // Texts that tokenize to nothing maskable ([CLS] [SEP] only) teach nothing and are dropped.
    const encode = (texts: TextRecord[]) =>
      texts
        .map((t, index) => ({ input_ids: model.tokenizer.encode(t.text, null, { maxLength }).input_ids, index, line: t.line }))
        .filter((e) => e.input_ids.some((id) => !masking.specialIds.has(id)));
    const train = encode(data.train);
    const evalSet = encode(data.eval);
    if (train.length === 0) throw new Error(`${o.train_file}: no text has a token to mask after tokenization`);
    // An evaluation whose fixed masks choose nothing would score NaN every time.
    if (hasEval && evalSet.every((e) => maskExample(e, EVAL_EPOCH, masking).masked === 0)) {
      throw new Error(
        `${data.evalSource}: its ${evalSet.length} texts get no masked token at mlm_probability ${masking.mlm_probability}, so an evaluation would have nothing to score; ` +
          'pass more evaluation text (--eval, a larger --validation-split) or --validation-split 0',
      );
    }
    const dropped = data.train.length - train.length;
    log(`train: ${train.length} texts from ${o.train_file}${dropped ? ` (${dropped} with no maskable token dropped)` : ''}; eval: ${evalSet.length}${hasEval ? ` from ${data.evalSource}` : ''}`);
    log(`model ${o.model} as BertForMaskedLM on ${model.engine.device()}: ${model.engine.numParameters()} parameters; mlm_probability ${masking.mlm_probability}${masking.whole_word_mask ? ', whole-word masking' : ''}`);
    const task = new MaskedLMTask(model, masking, {
      max_length: { value: maxLength, flag: '--max-length' },
      base_model: { value: o.model, flag: '--model' },
    });
    releaseLock = await lockOutputDir(o.output_dir);
    const trainer = new Trainer<TextExample, MaskedLMEvalResults>(task, train, hasEval ? evalSet : null, args);
    logLrFind(trainer, log);
    o.onTrainer?.(trainer);
    const run = await trainer.trainLoop();
    const base = { output_dir: o.output_dir, train_examples: train.length, eval_examples: evalSet.length, global_step: trainer.globalStep };
    if (trainer.interrupted || !isMainProcess()) {
      // Data parallel: rank 0 alone saves the model, evaluates it and writes the report.
      return { ...base, eval: null, best_step: run.bestStep, stopped_early: run.stoppedEarly, seconds: (performance.now() - started) / 1000, interrupted: trainer.interrupted };
    }
    // load_best_model_at_end: the best evaluation's weights are the result.
    if (run.bestStep !== null && existsSync(trainer.bestDir)) {
      for (const [name, w] of await task.readSavedWeights(trainer.bestDir)) model.engine.setWeight(name, w);
    }
    await task.saveModel(o.output_dir);
    let finalEval: PretrainResult['eval'] = null;
    if (hasEval) {
      finalEval = { ...(await evaluateMaskedLM(model, evalSet, args.per_device_eval_batch_size ?? 64, masking)), eval_examples: evalSet.length };
      log(`eval loss ${finalEval.loss.toFixed(4)}, perplexity ${finalEval.perplexity.toFixed(3)} over ${finalEval.eval_tokens} masked tokens`);
      await writeFile(join(o.output_dir, 'eval_results.json'), JSON.stringify(finalEval, null, 1));
    }
    const seconds = (performance.now() - started) / 1000;
    const { log: _l, onTrainer: _t, ...options } = o;
    const config = { ...options, world_size: currentWorld().size };
    await writeFile(join(o.output_dir, 'training_args.json'), JSON.stringify({ ...config, ...args, learning_rate: trainer.args.learning_rate, max_length: maxLength, mlm_probability: masking.mlm_probability, whole_word_mask: masking.whole_word_mask }, null, 1));
    writeReport(o.output_dir, {
      title: `nodetune pretrain: ${o.model} on ${o.train_file}`,
      trainLog: run.log,
      evalHistory: run.evals.map((e: EvalEntry<MaskedLMEvalResults>) => ({ epoch: e.epoch, step: e.step, loss: e.loss, perplexity: e.perplexity })),
      lrFind: trainer.lrFound ?? undefined,
      metrics: finalEval ? [['eval loss', finalEval.loss.toFixed(4)], ['perplexity', finalEval.perplexity.toFixed(3)], ['masked tokens', String(finalEval.eval_tokens)]] : [],
      config: { ...config, learning_rate: trainer.args.learning_rate, max_length: maxLength, mlm_probability: masking.mlm_probability, whole_word_mask: masking.whole_word_mask, wall_time_seconds: Math.round(seconds) },
    });
    await rm(trainer.bestDir, { recursive: true, force: true });
    return { ...base, eval: finalEval, best_step: run.bestStep, stopped_early: run.stoppedEarly, seconds, interrupted: false };
  } finally {
    await releaseLock();
    await model.engine.dispose();
  }
}
