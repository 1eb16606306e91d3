/**
 * The main job as one function: read and validate the data, load the model
 * with a head for the data's labels, fine-tune, evaluate, keep the best
 * checkpoint, and write the output folder (a Hugging Face model folder plus
 * eval_results.json, training_log.jsonl and report.html).
 */
import { mkdir, readFile, writeFile, rm, readdir } from 'node:fs/promises';
import { existsSync, readFileSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import { readDataset, buildLabelMap, encodeLabels, stratifiedSplit, type Dataset, type LabelMap } from '../data/index.js';
import { loadModel, saveModel, type Model } from '../model.js';
import { checkDevice } from '../engine.js';
import { readSafetensors } from '../io/safetensors.js';
import { resolveModel } from '../io/hub.js';
import { readModelConfigJson } from '../io/model-folder.js';
import { writeReport } from '../report/index.js';
import type { EvalResults } from '../metrics/index.js';
import {
  Trainer, encodeExamples, evaluateExamples, validateTrainingArguments, checkResumeSettings, resumeSettings, checkOptionKeys, pickTrainingArguments, recoverUnfinishedSaves,
  type TrainingArguments, type EncodedExample,
} from './trainer.js';
import { ClassificationTask } from '../tasks/classification.js';
import { describeLrFind, logLrFind, logLrFindProgress, lrFind, LR_FIND_DIVISOR, type LrFindResult } from './lr-find.js';
import { currentWorld, describeWorld, isMainProcess, joinWorld } from './distributed.js';

export interface FineTuneOptions extends TrainingArguments {
  /** Local Hugging Face folder or Hub repo id. */
  model: string;
  train_file: string;
  eval_file?: string;
  text_column?: string;
  text_pair_column?: string;
  label_column?: string;
  /** Tokens per example incl. [CLS]/[SEP]; default 128; capped (with a warning through `log`) at max_position_embeddings. */
  max_length?: number;
  /** Fraction of the training file held out when no eval_file is given. */
  validation_split?: number;
  label_smoothing_factor?: number;
  /** 'balanced' (n_samples / (n_classes × count), as scikit-learn) or explicit weights. */
  class_weights?: 'balanced' | number[];
  freeze_embeddings?: boolean;
  /** Freeze encoder layers 0..freeze_layers-1. */
  freeze_layers?: number;
  threads?: number;
  /**
   * 'cpu' (default), 'cuda' or 'cuda:N'. Under an MPI launcher (--nproc N) plain 'cuda' is each rank's own GPU,
   * cuda:<local rank> (resolveDevice in src/engine.ts), and NCCL sums the gradients.
   */
  device?: string;
  /** 'fp32' (default) or 'bf16' (CUDA only). */
  precision?: 'fp32' | 'bf16';
  /** Delete a previous run's outputs in output_dir first (HF overwrite_output_dir); without it (or resume) they are an error. */
  overwrite_output_dir?: boolean;
  /** Called with each log line a person should see (default: none). */
  log?: (line: string) => void;
  /** Receives the Trainer before training starts (progress bars, stop()). */
  onTrainer?: (trainer: Trainer) => void;
}

export interface FineTuneResult {
  output_dir: string;
  eval: EvalResults | null;
  best_step: number | null;
  stopped_early: boolean;
  train_examples: number;
  eval_examples: number;
  seconds: number;
  /** stop() (Ctrl-C) ended the run early: checkpoint-last is saved, the output model and eval_results.json are not written. */
  interrupted: boolean;
  /** Optimizer steps taken (in all runs, when resumed). */
  global_step: number;
}

/** max_length when none is given: HF run_glue's max_seq_length default. */
const DEFAULT_MAX_LENGTH = 128;

/** What a finished or interrupted run leaves in output_dir (checkpoint-* folders too). */
export const RUN_OUTPUTS = [
  'config.json', 'model.safetensors', 'training_log.jsonl', 'eval_results.json', 'report.html', 'onnx', 'lr_find.json',
  'tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json',
];

/**
 * HF run_glue's guard: a previous run's outputs in output_dir are an error unless the run
 * resumes or overwrite_output_dir is set (then they are deleted, so no stale onnx/ or
 * eval_results.json survives). Runs before anything is loaded or created.
 * @param outputs file names a previous run of this kind leaves (default: the classifier's RUN_OUTPUTS).
 * @throws Error naming the folder and the two flags; or output_dir is a file; or resume without a checkpoint;
 *   or, with overwrite_output_dir, `model` is output_dir or inside it (it would be deleted before it is read).
 */
export async function prepareOutputDir(
  o: Pick<FineTuneOptions, 'output_dir' | 'resume_from_checkpoint' | 'overwrite_output_dir'> & { model?: string },
  outputs: readonly string[] = RUN_OUTPUTS,
): Promise<void> {
  const dir = o.output_dir;
  if (!isMainProcess()) return; // data parallel: rank 0 alone prepares (and may delete) the folder it writes
  if (o.resume_from_checkpoint && o.overwrite_output_dir) {
    throw new Error('--resume and --overwrite-output-dir contradict each other: one continues the run in --output, the other deletes it; pass one');
  }
  // A run's own checkpoint (or a model folder) as --model with that run as --output would be deleted before it is read.
  if (o.overwrite_output_dir && o.model !== undefined && existsSync(o.model) && existsSync(dir)) {
    const from = relative(realpathSync(dir), realpathSync(o.model));
    if (from === '' || (!from.startsWith('..') && !isAbsolute(from))) {
      throw new Error(`--overwrite-output-dir would delete the model being trained: --model ${o.model} is --output ${dir} or inside it; choose another --output`);
    }
  }
  if (!existsSync(dir)) {
    if (o.resume_from_checkpoint) throw new Error(`cannot resume: --output ${dir} does not exist (no checkpoint-last to resume from)`);
    return;
  }
  if (!statSync(dir).isDirectory()) throw new Error(`--output ${dir} is a file; expected a folder (new or from a previous run)`);
  await checkNotLocked(dir); // before --overwrite-output-dir deletes a live run's files
  await recoverUnfinishedSaves(dir); // no live run holds it: a save cut short by a kill is undone
  const previous = (await readdir(dir)).filter((f) => outputs.includes(f) || /^checkpoint-/.test(f));
  if (o.resume_from_checkpoint) {
    if (!existsSync(join(dir, 'checkpoint-last', 'trainer_state.json'))) {
      throw new Error(`cannot resume: ${join(dir, 'checkpoint-last', 'trainer_state.json')} does not exist (no checkpoint-last in --output ${dir})`);
    }
    return;
  }
  if (previous.length === 0) return;
  if (!o.overwrite_output_dir) {
    throw new Error(
      `--output ${dir} already holds a previous run (${previous.join(', ')}); ` +
        'pass --resume to continue it or --overwrite-output-dir to replace it',
    );
  }
  for (const f of previous) await rm(join(dir, f), { recursive: true, force: true });
}

/** Data read and validated, labels mapped: everything before the model. */
export interface PreparedData {
  train: Dataset;
  eval: Dataset | null;
  labels: LabelMap;
}

/** Reads the train/eval files (or splits the train file) and maps labels. */
export function prepareData(o: FineTuneOptions, configLabel2id?: Record<string, number>): PreparedData {
  const cols = { textColumn: o.text_column ?? 'text', textPairColumn: o.text_pair_column, labelColumn: o.label_column ?? 'label' };
  let train = readDataset(o.train_file, cols);
  let evalSet: Dataset | null = o.eval_file ? readDataset(o.eval_file, cols) : null;
  const distinct = new Set(train.examples.map((e) => e.label));
  if (distinct.size < 2) {
    throw new Error(`${train.path}: only one label found ("${[...distinct][0]}"); classification needs at least 2 distinct labels in the training data`);
  }
  const labels = buildLabelMap(train, configLabel2id);
  if (evalSet) {
    encodeLabels(evalSet, labels); // throws on a label training never saw, naming file and line
  } else if ((o.validation_split ?? 0.1) > 0) {
    const split = stratifiedSplit(train.examples, { evalFraction: o.validation_split ?? 0.1, seed: o.seed ?? 42 });
    if (split.eval.length === 0) {
      throw new Error(
        `${train.path}: --validation-split ${o.validation_split ?? 0.1} of ${train.examples.length} examples leaves no evaluation examples; ` +
          'pass --eval FILE, a larger --validation-split, or --validation-split 0 to train without evaluation',
      );
    }
    evalSet = { path: `${train.path} (held-out split)`, examples: split.eval };
    train = { path: train.path, examples: split.train };
  }
  return { train, eval: evalSet, labels };
}

/**
 * The loss options' ranges, checked before the model loads (the engine checks
 * them too, but only once it exists): label_smoothing_factor in [0, 1] as
 * torch.nn.CrossEntropyLoss, explicit class_weights finite and ≥ 0 (their
 * count needs the label set, so classWeights checks it).
 * @throws Error naming the option (and index) and what was expected.
 */
function validateLossOptions(o: FineTuneOptions): void {
  const s = o.label_smoothing_factor;
  if (s !== undefined && !(s >= 0 && s <= 1)) throw new Error(`label_smoothing_factor ${s}: expected a number in [0, 1] (torch.nn.CrossEntropyLoss)`);
  if (Array.isArray(o.class_weights)) {
    const i = o.class_weights.findIndex((w) => !(Number.isFinite(w) && w >= 0));
    if (i >= 0) throw new Error(`class_weights[${i}] ${o.class_weights[i]}: expected a finite number ≥ 0`);
  }
}

/** scikit-learn's compute_class_weight('balanced'): n_samples / (n_classes × count). */
function classWeights(o: FineTuneOptions, data: PreparedData): Float32Array | undefined {
  if (!o.class_weights) return undefined;
  const n = data.labels.num_labels;
  if (o.class_weights !== 'balanced') {
    if (o.class_weights.length !== n) throw new Error(`class_weights has ${o.class_weights.length} values, expected one per label (${n})`);
    return Float32Array.from(o.class_weights);
  }
  const ids = encodeLabels(data.train, data.labels);
  const counts = new Float64Array(n);
  for (const y of ids) counts[y] += 1;
  return Float32Array.from(counts, (c) => (c > 0 ? ids.length / (n * c) : 0));
}

/** config.json's label2id and num_hidden_layers, read before the weights (undefined where absent). */
async function configFacts(model: string): Promise<{ label2id?: Record<string, number>; num_hidden_layers?: number }> {
  if (!existsSync(join(model, 'config.json'))) return {};
  return (await readModelConfigJson(model)) as { label2id?: Record<string, number>; num_hidden_layers?: number };
}

/** fineTune's keys besides TrainingArguments' (`satisfies` keeps the list complete and exact). */
const OWN_KEYS = Object.keys({
  model: 1, train_file: 1, eval_file: 1, text_column: 1, text_pair_column: 1, label_column: 1, max_length: 1,
  validation_split: 1, label_smoothing_factor: 1, class_weights: 1, freeze_embeddings: 1, freeze_layers: 1,
  threads: 1, device: 1, precision: 1, overwrite_output_dir: 1, log: 1, onTrainer: 1,
} satisfies Record<Exclude<keyof FineTuneOptions, keyof TrainingArguments>, 1>);

/** @throws Error when freeze_layers is not an integer in 0..num_hidden_layers. */
function checkFreezeLayers(layers: number | undefined, numHiddenLayers: number): void {
  if (layers === undefined) return;
  if (!Number.isInteger(layers) || layers < 0 || layers > numHiddenLayers) {
    throw new Error(`--freeze-layers ${layers}: expected 0..num_hidden_layers (${numHiddenLayers})`);
  }
}

/**
 * What a classifier run uses where the options leave a value out, chosen so that a run with no
 * tuning flag trains well (README, "A good model without tuning flags"): a batch of 16, a
 * learning rate from the range test ('auto', src/train/lr-find.ts) and 10% linear warmup; the rest
 * are Hugging Face TrainingArguments' defaults (3 epochs, weight decay 0.01 here as in run_glue).
 */
export const CLASSIFIER_DEFAULTS = { per_device_train_batch_size: 16, learning_rate: 'auto', warmup_ratio: 0.1 } as const;

function withClassifierDefaults(o: FineTuneOptions): FineTuneOptions {
  return { ...o, ...pickTrainingArguments(o, CLASSIFIER_DEFAULTS) };
}

/** The model loaded with a head for the data's labels, the data encoded, layers frozen: a run ready for the Trainer. */
interface ClassifierRun {
  model: Model;
  data: PreparedData;
  train: EncodedExample[];
  evalSet: EncodedExample[] | null;
}

/**
 * Resolves the model, reads and maps the data, calls `beforeWeights` (resume checks that must
 * fail before any weight loads), loads the model and encodes the data. The caller disposes the engine.
 */
async function loadClassifierRun(o: FineTuneOptions, log: (line: string) => void, beforeWeights?: (data: PreparedData) => Promise<void>): Promise<ClassifierRun> {
  // A Hub id is downloaded first: its config's label2id decides the class ids (an existing head keeps its labels).
  const folder = await resolveModel(o.model);
  const facts = await configFacts(folder);
  if (typeof facts.num_hidden_layers === 'number') checkFreezeLayers(o.freeze_layers, facts.num_hidden_layers);
  const data = prepareData(o, facts.label2id);
  const { labels } = data;
  await beforeWeights?.(data);
  const model = await loadModel(folder, {
    num_labels: labels.num_labels,
    id2label: labels.id2label,
    label2id: labels.label2id,
    seed: o.seed ?? 42,
    threads: o.threads,
    device: o.device,
    precision: o.precision,
    weight_decay: o.weight_decay ?? 0.01,
    adam_beta1: o.adam_beta1,
    adam_beta2: o.adam_beta2,
    adam_epsilon: o.adam_epsilon,
    max_grad_norm: o.max_grad_norm ?? 1.0,
    label_smoothing_factor: o.label_smoothing_factor,
    class_weights: classWeights(o, data),
    log,
  });
  try {
    const maxLength = cappedMaxLength(o.max_length, model.config.max_position_embeddings, log);
    const encode = (ds: Dataset) => encodeExamples(model.tokenizer, ds.examples, encodeLabels(ds, labels), maxLength);
    const train = encode(data.train);
    const evalSet = data.eval ? encode(data.eval) : null;
    freeze(model, o);
    return { model, data, train, evalSet };
  } catch (err) {
    await model.engine.dispose();
    throw err;
  }
}

/** Runs the whole job. @throws Error naming file/line/column for bad data, or the argument for a bad TrainingArguments value, before any training. */
export async function fineTune(options: FineTuneOptions): Promise<FineTuneResult> {
  const started = performance.now();
  const o = withClassifierDefaults(options);
  const log = o.log ?? (() => undefined);
  checkOptionKeys('fineTune', options, OWN_KEYS);
  validateTrainingArguments(o);
  validateLossOptions(o);
  checkDevice(o.device, o.precision);
  const dataParallel = describeWorld(joinWorld(o.ddp_timeout));
  if (dataParallel) log(dataParallel);
  await prepareOutputDir(o);
  const { model, data, train, evalSet } = await loadClassifierRun(o, log, async (d) => {
    // Before any weights load: a changed batch size or label set would resume into a different run.
    if (o.resume_from_checkpoint) {
      await checkResumeSettings(join(o.output_dir, 'checkpoint-last', 'trainer_state.json'), resumeSettings(o, d.train.examples.length, d.labels.num_labels));
    }
  });
  let releaseLock = async () => undefined as void;
  try {
    log(`device: ${model.engine.device()}, precision ${o.precision ?? 'fp32'}`);
    log(`train: ${train.length} examples from ${data.train.path}; eval: ${evalSet?.length ?? 0}; labels: ${data.labels.num_labels}`);
    releaseLock = await lockOutputDir(o.output_dir);
    const trainer = new Trainer(model, train, evalSet, o);
    logLrFind(trainer, log);
    o.onTrainer?.(trainer);
    const run = await trainer.trainLoop();
    const base = { output_dir: o.output_dir, train_examples: train.length, eval_examples: evalSet?.length ?? 0, global_step: trainer.globalStep };
    if (trainer.interrupted || !isMainProcess()) {
      // Data parallel: rank 0 alone saves the model, evaluates it and writes the report.
      return { ...base, eval: null, best_step: run.bestStep, stopped_early: run.stoppedEarly, seconds: (performance.now() - started) / 1000, interrupted: trainer.interrupted };
    }
    // load_best_model_at_end: the best checkpoint's weights become the result.
    if (run.bestStep !== null && existsSync(trainer.bestDir)) {
      const names = new Set(model.engine.parameterNames());
      for (const [name, t] of (await readSafetensors(join(trainer.bestDir, 'model.safetensors'))).tensors) {
        if (t.data instanceof Float32Array && names.has(name)) model.engine.setWeight(name, t.data);
      }
    }
    await saveModel(model, o.output_dir);
    const finalEval = evalSet ? await evaluateExamples(model, evalSet, o.per_device_eval_batch_size ?? 64) : null;
    if (finalEval) await writeFile(join(o.output_dir, 'eval_results.json'), JSON.stringify(finalEval, null, 1));
    const seconds = (performance.now() - started) / 1000;
    writeReport(o.output_dir, {
      title: `nodetune: ${o.model} on ${o.train_file}`,
      trainLog: run.log,
      evalHistory: run.evals.map((e) => ({ epoch: e.epoch, step: e.step, accuracy: e.accuracy, macro_f1: e.macro_f1, loss: e.loss })),
      finalEval: finalEval ?? undefined,
      lrFind: trainer.lrFound ?? undefined,
      config: { ...reportConfig(o, seconds), learning_rate: trainer.args.learning_rate },
    });
    await rm(trainer.bestDir, { recursive: true, force: true });
    return { ...base, eval: finalEval, best_step: run.bestStep, stopped_early: run.stoppedEarly, seconds, interrupted: false };
  } finally {
    await releaseLock();
    await model.engine.dispose();
  }
}

export interface ClassifierLrFindOptions extends Omit<FineTuneOptions, 'output_dir'> {
  /** Where lr_find.json and report.html (the curve) go; none: nothing is written. */
  output_dir?: string;
  min_lr?: number;
  max_lr?: number;
  num_steps?: number;
}

/**
 * `nodetune lr-find`: the learning-rate range test alone, on the data and model a `fineTune`
 * with the same options would train (same defaults: batch 16), with learning_rate 'auto''s rule.
 * Writes nothing to the model; `output_dir` receives lr_find.json and a report with the curve.
 * @throws as fineTune for bad data or options, and as lrFind for an unreadable curve.
 */
export async function findClassifierLearningRate(options: ClassifierLrFindOptions): Promise<LrFindResult> {
  const { min_lr, max_lr, num_steps, output_dir, ...rest } = options;
  const o = withClassifierDefaults({ ...rest, output_dir: output_dir ?? '' });
  const log = o.log ?? (() => undefined);
  checkOptionKeys('findClassifierLearningRate', rest, [...OWN_KEYS, 'min_lr', 'max_lr', 'num_steps']);
  if (output_dir !== undefined) checkLrFindOutput(output_dir);
  validateTrainingArguments(o);
  validateLossOptions(o);
  checkDevice(o.device, o.precision);
  const { model, train } = await loadClassifierRun(o, log);
  try {
    const result = await lrFind(new ClassificationTask(model), train, {
      min_lr, max_lr, num_steps, batch_size: o.per_device_train_batch_size!, accumulation: o.gradient_accumulation_steps, seed: o.seed,
      group_by_length: o.group_by_length, divisor: LR_FIND_DIVISOR,
      onStep: logLrFindProgress(log),
    });
    log(describeLrFind(result));
    if (output_dir) {
      await mkdir(output_dir, { recursive: true });
      await writeFile(join(output_dir, 'lr_find.json'), JSON.stringify(result));
      writeReport(output_dir, { title: `nodetune lr-find: ${o.model} on ${o.train_file}`, trainLog: [], evalHistory: [], lrFind: result, config: { ...rest, log: undefined } });
    }
    return result;
  } finally {
    await model.engine.dispose();
  }
}

/**
 * lr-find's --output must be new, or hold only a previous lr-find's files: its report.html must
 * not replace a training run's. @throws Error naming the folder (or file) and what it holds.
 */
function checkLrFindOutput(dir: string): void {
  if (!existsSync(dir)) return;
  if (!statSync(dir).isDirectory()) throw new Error(`--output ${dir} is a file; expected a folder for lr_find.json and report.html`);
  const entries = readdirSync(dir);
  const other = entries.filter((f) => f !== 'lr_find.json' && f !== 'report.html');
  if (other.length > 0 || (entries.includes('report.html') && !entries.includes('lr_find.json'))) {
    throw new Error(`--output ${dir} already holds other files (${(other.length ? other : entries).slice(0, 5).join(', ')}); lr-find writes lr_find.json and report.html into a new folder or one of its own`);
  }
}

/** The lock file of a running fine-tuning job in its output_dir, holding the owner's pid. */
export const LOCK_FILE = '.nodetune.lock';

/**
 * Claims output_dir for this process until the returned function runs: two
 * jobs writing one folder would interleave training_log.jsonl and race on
 * checkpoint renames. A lock left by a process that no longer exists (killed,
 * crashed) is taken over. Creates output_dir.
 * @throws Error naming the folder and the pid of the job that holds it.
 */
export async function lockOutputDir(dir: string): Promise<() => Promise<void>> {
  if (!isMainProcess()) return async () => undefined; // data parallel: rank 0's run holds the folder
  await mkdir(dir, { recursive: true });
  const path = join(dir, LOCK_FILE);
  for (;;) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx' });
      return () => rm(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    await checkNotLocked(dir);
    await rm(path, { force: true }); // stale: its process is gone
  }
}

/** @throws Error when a live process holds output_dir's lock (see lockOutputDir). */
async function checkNotLocked(dir: string): Promise<void> {
  const path = join(dir, LOCK_FILE);
  const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
  if (Number.isInteger(pid) && pid > 0 && processExists(pid)) {
    throw new Error(`--output ${dir} is in use by another nodetune run (pid ${pid}, ${path}); wait for it or choose another --output`);
  }
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // alive, owned by another user
  }
  // A zombie has exited (a killed MPI rank waits for its reparenting to be reaped): not a live run.
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true; // no /proc: trust kill()
  }
}

/**
 * Tokens per example: max_length (default 128, as HF run_glue) capped at
 * max_position_embeddings, warning through `log` when capped and naming the
 * value actually requested (or the default).
 */
function cappedMaxLength(requested: number | undefined, maxPositionEmbeddings: number, log: (line: string) => void): number {
  const wanted = requested ?? DEFAULT_MAX_LENGTH;
  if (wanted <= maxPositionEmbeddings) return wanted;
  const named = requested === undefined ? `max_length ${DEFAULT_MAX_LENGTH} (the default)` : `--max-length ${requested}`;
  log(`warning: ${named} is above the model's max_position_embeddings; capped at ${maxPositionEmbeddings}`);
  return maxPositionEmbeddings;
}

function freeze(model: Model, o: FineTuneOptions): void {
  const engine = model.engine;
  const layers = o.freeze_layers ?? 0;
  checkFreezeLayers(layers, model.config.num_hidden_layers);
  for (const name of engine.parameterNames()) {
    const m = /^bert\.encoder\.layer\.(\d+)\./.exec(name);
    if ((o.freeze_embeddings && name.startsWith('bert.embeddings.')) || (m && Number(m[1]) < layers)) {
      engine.setTrainable(name, false);
    }
  }
}

function reportConfig(o: FineTuneOptions, seconds: number): Record<string, unknown> {
  const { log: _l, onTrainer: _t, ...rest } = o;
  return { ...rest, world_size: currentWorld().size, wall_time_seconds: Math.round(seconds) };
}

